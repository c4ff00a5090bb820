"""The deployment's configuration: ``config.yaml`` read into validated pydantic models.

Every mistake a person can make in the file is reported with its path in the file
(``lighting.groups[3].program: unknown program 'nigth'``) and, where known, the line; the
loader collects all of them instead of stopping at the first, and a config with any error is
never half-applied.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.signals.model import Intersection, SignalsSettings
from devices.mqtt import MqttSettings, TlsSettings, Will
from schedules.evaluate import GroupSchedule
from schedules.model import LightingCalendar, LightingProgram, Location, Override
from schedules.validate import check_calendar, check_program

__all__ = [
    "ApiConfig",
    "ApiToken",
    "CityConfig",
    "ConfigError",
    "ConfigIssue",
    "ControllerSettings",
    "District",
    "InfluxConfig",
    "LightGroup",
    "LightNodeSpec",
    "LightingClass",
    "LightingSettings",
    "MqttConfig",
    "OutboxConfig",
    "TelemetryConfig",
    "TelemetryIntervals",
    "TrafficSettings",
    "expand_node_ids",
    "load_config",
    "parse_config",
    "validate_data",
]


STATE_DIR_ENV = "CITYCTL_STATE_DIR"
"""Overrides ``controller.state_dir`` (systemd's ``StateDirectory=``, tests, the demo)."""

DISTRICT_ENV = "CITYCTL_DISTRICT"
"""Overrides ``controller.district``: the district of ``districts`` this instance runs."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ID = r"^[A-Za-z0-9_.-]{1,64}$"
Ident = Annotated[str, Field(pattern=_ID)]


class LightingClass(StrEnum):
    """EN 13201-2 M classes for motorised traffic, brightest (M1) to dimmest (M6)."""

    M1 = "M1"
    M2 = "M2"
    M3 = "M3"
    M4 = "M4"
    M5 = "M5"
    M6 = "M6"

    @property
    def luminance(self) -> float:
        """Minimum maintained average road-surface luminance, cd/m² (EN 13201-2 table 1)."""
        return _LUMINANCE[self]

    @property
    def number(self) -> int:
        """1 for M1 … 6 for M6."""
        return int(self.value[1])

    @classmethod
    def from_number(cls, number: int) -> LightingClass:
        """The class with this number (clamped to 1..6)."""
        return cls(f"M{min(6, max(1, number))}")


_LUMINANCE = {
    LightingClass.M1: 2.0,
    LightingClass.M2: 1.5,
    LightingClass.M3: 1.0,
    LightingClass.M4: 0.75,
    LightingClass.M5: 0.5,
    LightingClass.M6: 0.3,
}


class GeoPoint(_Strict):
    """A WGS84 position."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class SiteConfig(Location):
    """Where the controller is; sun times and local time come from here."""


class ControllerSettings(_Strict):
    """The controller itself."""

    id: Ident = Field(default="cityctl-1", description="Unique id; part of MQTT topics.")
    state_dir: Path = Field(
        default=Path("./state"),
        validate_default=True,
        description="Where the controller keeps state across restarts (relative: to the config"
        f" file). The environment variable {STATE_DIR_ENV} overrides it.",
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    district: Ident | None = Field(
        default=None,
        validate_default=True,
        description="The district (of `districts`) this instance runs, so one file serves every"
        f" box. The environment variable {DISTRICT_ENV} and `cityctl run --district` override it.",
    )

    @field_validator("state_dir")
    @classmethod
    def _state_dir_env(cls, v: Path) -> Path:
        # The variable wins over the file: systemd's StateDirectory=, tests and the demo set it.
        env = os.environ.get(STATE_DIR_ENV)
        return Path(env) if env else v

    @field_validator("district", mode="before")
    @classmethod
    def _district_env(cls, v: object) -> object:
        # Before the pattern check, so a mistyped variable is reported like a mistyped file.
        env = os.environ.get(DISTRICT_ENV)
        return env if env else v


class TlsConfig(_Strict):
    """TLS towards the broker (PEM files)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(default=False, description="Skip certificate checks (testing only).")


class MqttConfig(_Strict):
    """The MQTT broker. ``url: null`` in the demo means: start an embedded broker."""

    url: str | None = Field(default="mqtt://127.0.0.1:1883", description="mqtt:// or mqtts://")
    client_id: Ident | None = Field(default=None, description="Default: the controller id.")
    prefix: str = Field(default="cityctl", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    username: str | None = None
    password_env: str | None = Field(
        default=None, description="Read the password from this env var."
    )
    password_file: Path | None = Field(
        default=None, description="Read the password from this file."
    )
    tls: TlsConfig | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_max_s: float = Field(
        default=2.0,
        ge=0.2,
        le=300,
        description="Longest wait between reconnect attempts after the broker is lost (the "
        "wait starts at 0.2 s, doubles, and is jittered). The controller is one client of a "
        "broker usually on its own network: a short cap brings it back soon after the broker.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^mqtts?://[^/:\s]+(:\d{1,5})?/?$", url):
            raise ValueError(f"{url!r} is not mqtt://host[:port] or mqtts://host[:port]")
        return url

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        return self

    def password(self) -> str | None:
        """The password from the environment or the file; a clear error if it is missing."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    [
                        ConfigIssue(
                            "mqtt.password_env",
                            f"environment variable {self.password_env} is not set",
                        )
                    ]
                )
            return value
        if self.password_file:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    [
                        ConfigIssue(
                            "mqtt.password_file",
                            f"cannot read {self.password_file}: {exc.strerror}",
                        )
                    ]
                ) from None
        return None

    def settings(self, client_id: str, will: Will | None = None) -> MqttSettings:
        """Connection settings for :class:`devices.mqtt.MqttLink`."""
        if self.url is None:
            raise ValueError("mqtt.url is null: no broker configured")
        tls = None
        if self.tls is not None:
            tls = TlsSettings(
                ca_file=str(self.tls.ca_file) if self.tls.ca_file else None,
                cert_file=str(self.tls.cert_file) if self.tls.cert_file else None,
                key_file=str(self.tls.key_file) if self.tls.key_file else None,
                insecure=self.tls.insecure,
            )
        kwargs: dict[str, Any] = {
            "client_id": client_id,
            "username": self.username,
            "password": self.password(),
            "keepalive_s": self.keepalive_s,
            "reconnect_max_s": self.reconnect_max_s,
            "will": will,
        }
        if tls is not None:
            kwargs["tls"] = tls
        return MqttSettings.from_url(self.url, **kwargs)


class LightNodeSpec(_Strict):
    """Per-node details that differ from the group's defaults."""

    id: Ident
    lamp_w: float | None = Field(default=None, gt=0, le=2000)
    min_dim: float | None = Field(default=None, ge=0, le=100)
    location: GeoPoint | None = None


class LightGroup(_Strict):
    """Light points that always share a level: a road section, a junction, a park path."""

    id: Ident
    name: str = ""
    road: str = Field(min_length=1, description="Road or place the group lights.")
    lighting_class: LightingClass = Field(description="Design class at full traffic (100 %).")
    lowest_class: LightingClass | None = Field(
        default=None, description="Dimmest class traffic may step down to (default: no dimming)."
    )
    never_dim: bool = Field(
        default=False, description="Junctions, crossings: never traffic-dimmed."
    )
    traffic_segment: Ident | None = Field(default=None, description="Counter feeding this group.")
    capacity_vph: float = Field(default=1800.0, gt=0, description="Road capacity, vehicles/hour.")
    program: str | None = Field(default=None, description="Program every night (or use calendar).")
    calendar: str | None = Field(default=None, description="Calendar choosing the program.")
    lamp_w: float = Field(gt=0, le=2000, description="Rated input power of one lamp, W.")
    min_dim: float = Field(default=10.0, ge=0, le=100, description="Lowest non-zero level, %.")
    location: GeoPoint | None = None
    nodes: list[str] = Field(min_length=1, description="Node ids; 'LL-001..LL-040' is a range.")

    @model_validator(mode="after")
    def _program_or_calendar(self) -> LightGroup:
        if (self.program is None) == (self.calendar is None):
            raise ValueError("give exactly one of program or calendar")
        if self.lowest_class is not None and self.lowest_class.number < self.lighting_class.number:
            raise ValueError(
                f"lowest_class {self.lowest_class} is brighter than lighting_class {self.lighting_class}"
            )
        return self

    @field_validator("nodes")
    @classmethod
    def _ranges(cls, values: list[str]) -> list[str]:
        for v in values:
            expand_node_ids(v)  # raises ValueError with a message on a bad range
        return values

    def node_ids(self) -> list[str]:
        """Every node id of the group, ranges expanded, in order."""
        out: list[str] = []
        for v in self.nodes:
            out.extend(expand_node_ids(v))
        return out

    @property
    def dims_with_traffic(self) -> bool:
        """Whether measured traffic may lower this group's class."""
        return (
            not self.never_dim
            and self.traffic_segment is not None
            and self.lowest_class is not None
            and self.lowest_class != self.lighting_class
        )


_RANGE = re.compile(r"^(?P<a>[A-Za-z0-9_.-]*?)(?P<n1>\d+)\.\.(?P<b>[A-Za-z0-9_.-]*?)(?P<n2>\d+)$")


def expand_node_ids(spec: str) -> list[str]:
    """``'LL-001..LL-040'`` → 40 ids (zero padding kept); a plain id → itself."""
    if ".." not in spec:
        if not re.match(_ID, spec):
            raise ValueError(f"node id {spec!r} may only use letters, digits, '_', '-', '.'")
        return [spec]
    m = _RANGE.match(spec)
    if not m or m["a"] != m["b"]:
        raise ValueError(f"node range {spec!r} must look like 'LL-001..LL-040' (same prefix)")
    lo, hi = int(m["n1"]), int(m["n2"])
    if hi < lo:
        raise ValueError(f"node range {spec!r} runs backwards")
    if hi - lo >= 10_000:
        raise ValueError(f"node range {spec!r} is longer than 10,000 nodes")
    width = len(m["n1"])
    return [f"{m['a']}{i:0{width}d}" for i in range(lo, hi + 1)]


class TrafficBand(_Strict):
    """Below ``max_ratio`` of capacity, the class may step down ``steps`` classes."""

    max_ratio: float = Field(gt=0, le=10)
    steps: int = Field(ge=0, le=5)


def _default_bands() -> list[TrafficBand]:
    # CEN/TR 13201-1 weights traffic volume by its share of the road's capacity:
    # very low (< 7 %), low (7–15 %), moderate (15–45 %), high (≥ 45 %). Each band below
    # "high" allows one class dimmer than the design class.
    return [
        TrafficBand(max_ratio=0.07, steps=3),
        TrafficBand(max_ratio=0.15, steps=2),
        TrafficBand(max_ratio=0.45, steps=1),
    ]


class TrafficSettings(_Strict):
    """How measured traffic lowers or raises a group's lighting class."""

    hold_s: float = Field(
        default=900, ge=0, le=86_400, description="Low traffic must last this long before dimming."
    )
    stale_after_s: float = Field(
        default=900, gt=0, description="No count for this long: back to the design class."
    )
    bands: list[TrafficBand] = Field(default_factory=_default_bands)

    @field_validator("bands")
    @classmethod
    def _sorted(cls, bands: list[TrafficBand]) -> list[TrafficBand]:
        ratios = [b.max_ratio for b in bands]
        if ratios != sorted(ratios) or len(set(ratios)) != len(ratios):
            raise ValueError("bands must be sorted by max_ratio, strictly increasing")
        steps = [b.steps for b in bands]
        if steps != sorted(steps, reverse=True):
            raise ValueError("bands with more traffic must not dim more (steps must not increase)")
        return bands


class FaultSettings(_Strict):
    """Thresholds for faults the controller infers from what nodes report."""

    lamp_failure_ratio: float = Field(
        default=0.2, gt=0, lt=1, description="Power below this share of expected: lamp failed."
    )
    power_band: float = Field(
        default=0.35,
        gt=0,
        lt=5,
        description="Power off expected by more than this share: out of band.",
    )
    day_burner_level: float = Field(
        default=5.0, ge=0, le=100, description="Lit above this in daytime."
    )
    settle_s: float = Field(
        default=10.0, ge=0, description="Let a ramp settle before judging power."
    )
    stale_after_s: float = Field(default=180.0, gt=0, description="Silent this long: node offline.")


class LightingSettings(_Strict):
    """Street lighting: programs, calendars, groups, overrides and the control loop's timing."""

    tick_s: float = Field(default=30, ge=1, le=3600, description="Recompute at least this often.")
    refresh_s: float = Field(
        default=120, ge=5, le=3600, description="Re-send every group command this often."
    )
    retry_after_s: float = Field(default=3, gt=0, le=600, description="Retry nodes that lag.")
    fallback_after_s: float = Field(
        default=900, ge=30, description="Nodes run their fallback program after this silence."
    )
    programs: list[LightingProgram] = Field(min_length=1)
    calendars: list[LightingCalendar] = Field(default_factory=list)
    groups: list[LightGroup] = Field(min_length=1)
    nodes: list[LightNodeSpec] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)
    traffic: TrafficSettings = Field(default_factory=TrafficSettings)
    faults: FaultSettings = Field(default_factory=FaultSettings)

    @model_validator(mode="after")
    def _refresh_vs_fallback(self) -> LightingSettings:
        if self.refresh_s * 3 > self.fallback_after_s:
            raise ValueError(
                f"refresh_s ({self.refresh_s:g}) must be at most a third of fallback_after_s "
                f"({self.fallback_after_s:g}), or nodes fall back while the controller is alive"
            )
        return self


class InfluxConfig(_Strict):
    """An InfluxDB 2.x / 3.x database (v2 write API). Absent: telemetry stays in the outbox."""

    url: str = Field(description="http(s)://host:port of the database.")
    org: str = Field(default="", description="Organisation (InfluxDB 2.x; ignored by 3.x).")
    bucket: str = Field(min_length=1, description="Bucket (2.x) or database (3.x).")
    token_env: str | None = Field(default=None, description="Read the API token from this env var.")
    token_file: Path | None = Field(default=None, description="Read the API token from this file.")
    gzip: bool = Field(default=True, description="Compress write requests.")
    batch_points: int = Field(default=5000, ge=1, le=100_000, description="Points per request.")
    concurrency: int = Field(
        default=2, ge=1, le=8, description="Requests in flight (hides uplink latency)."
    )
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="One request's time limit.")
    retry_min_s: float = Field(default=0.5, gt=0, le=60, description="First retry delay.")
    retry_max_s: float = Field(default=30.0, gt=0, le=3600, description="Longest retry delay.")
    verify_tls: bool = Field(default=True, description="Check the server certificate (https).")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", url):
            raise ValueError(f"{url!r} is not http://host[:port] or https://host[:port]")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _one_token(self) -> InfluxConfig:
        if self.token_env and self.token_file:
            raise ValueError("give token_env or token_file, not both")
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must not be below retry_min_s")
        return self

    def token(self) -> str:
        """The API token from the environment or the file ('' when neither is given)."""
        if self.token_env:
            value = os.environ.get(self.token_env)
            if value is None:
                raise ConfigError(
                    [
                        ConfigIssue(
                            "telemetry.influx.token_env",
                            f"environment variable {self.token_env} is not set",
                        )
                    ]
                )
            return value
        if self.token_file:
            try:
                return self.token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    [
                        ConfigIssue(
                            "telemetry.influx.token_file",
                            f"cannot read {self.token_file}: {exc.strerror}",
                        )
                    ]
                ) from None
        return ""


class OutboxConfig(_Strict):
    """The on-disk outbox every point goes through (SQLite in WAL mode)."""

    path: Path | None = Field(
        default=None, description="Outbox file; default: <controller.state_dir>/telemetry.sqlite."
    )
    max_mb: float = Field(
        default=1024.0, gt=0, le=1_000_000, description="Size bound; when full, oldest go first."
    )
    max_age_h: float = Field(
        default=24.0 * 30, gt=0, le=24.0 * 3650, description="Points older than this are removed."
    )
    keep_sent_h: float = Field(
        default=24.0,
        ge=0,
        le=24.0 * 3650,
        description="Keep sent points this long for `cityctl telemetry export` (0: delete on ack).",
    )
    commit_every_s: float = Field(
        default=0.05,
        ge=0,
        le=5,
        description="Commit recorded points this often, in one transaction (0: every loop turn);"
        " a crash loses at most this window.",
    )


class TelemetryIntervals(_Strict):
    """How often the aggregated measurements are recorded (events are recorded as they happen)."""

    group_s: float = Field(default=60.0, ge=1, le=86_400, description="Group level and energy.")
    detector_s: float = Field(
        default=60.0, ge=1, le=86_400, description="Detector counts and occupancy."
    )
    health_s: float = Field(default=10.0, ge=1, le=86_400, description="Controller health.")


class TelemetryConfig(_Strict):
    """Telemetry: what is recorded, where it is kept, where it is sent (docs/telemetry.md)."""

    enabled: bool = Field(default=True, description="Record telemetry at all.")
    influx: InfluxConfig | None = Field(
        default=None, description="Send to this database; absent: keep the data locally."
    )
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    intervals: TelemetryIntervals = Field(default_factory=TelemetryIntervals)

    def outbox_path(self, state_dir: Path) -> Path:
        """Where the outbox file lives."""
        return self.outbox.path if self.outbox.path is not None else state_dir / "telemetry.sqlite"


class ApiToken(_Strict):
    """One API token: who it is, what it may do, where its secret is (never in the file)."""

    name: Ident = Field(description="Who uses it; written in the audit log.")
    role: Literal["viewer", "engineer", "admin"] = Field(
        description="viewer: reads; engineer: schedules, overrides, incidents; admin: everything."
    )
    token_env: str | None = Field(default=None, description="Read the token from this env var.")
    token_file: Path | None = Field(default=None, description="Read the token from this file.")
    token_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Or: only the SHA-256 (hex) of the token is kept here.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ApiToken:
        given = [x for x in (self.token_env, self.token_file, self.token_sha256) if x]
        if len(given) != 1:
            raise ValueError("give exactly one of token_env, token_file, token_sha256")
        return self


class ApiConfig(_Strict):
    """The HTTP API and the engineers' web page, served from the controller's own loop."""

    enabled: bool = Field(default=True, description="Serve the API and the page.")
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port (0: any free one).")
    open_reads: bool = Field(
        default=False, description="Allow reads without a token (writes always need one)."
    )
    tokens: list[ApiToken] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ApiConfig:
        names = [t.name for t in self.tokens]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate token names: {', '.join(dup)}")
        return self


class District(_Strict):
    """One controller instance's share of the city: the groups and intersections it owns.

    Every instance reads the same ``config.yaml`` and runs only its district
    (``docs/scaling.md``): it commands its own groups and cabinets and nothing else, so each
    group's commands have exactly one writer.
    """

    name: str = Field(default="", description="For people, e.g. 'North bank'.")
    groups: list[Ident] = Field(
        default_factory=list, description="Lighting groups it owns (lighting.groups[].id)."
    )
    intersections: list[Ident] = Field(
        default_factory=list, description="Intersections it owns (signals.intersections[].id)."
    )
    api_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="api.port for this instance (instances sharing a box need their own).",
    )


class CityConfig(_Strict):
    """The whole deployment."""

    site: SiteConfig
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    lighting: LightingSettings
    signals: SignalsSettings = Field(default_factory=SignalsSettings)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    districts: dict[Ident, District] = Field(
        default_factory=dict,
        description="Scale-out: district id → the groups and intersections one controller"
        " instance owns. Absent: one instance runs everything (docs/scaling.md).",
    )

    def intersections(self) -> list[Intersection]:
        """Every intersection, validated and derived (the config loader already checked them)."""
        return [Intersection.build(x) for x in self.signals.intersections]

    # -- districts (scale-out) -------------------------------------------------------------
    def instance(self, district: str | None = None) -> CityConfig:
        """The config one controller process runs.

        Without ``districts`` that is the whole config (``district`` must then be None). With
        them, the district is ``district`` (``cityctl run --district``), else
        ``controller.district`` (the file or ``$CITYCTL_DISTRICT``); running none of them is
        an error, because a second instance commanding every group would fight the district
        instances over the same lights. Returns :meth:`for_district` of it.
        """
        chosen = district or self.controller.district
        if not self.districts:
            if district is not None:
                raise ConfigError(
                    [ConfigIssue("--district", f"{district!r}: no districts are declared")]
                )
            return self
        if district is not None and district not in self.districts:
            known = ", ".join(self.districts)
            raise ConfigError(
                [ConfigIssue("--district", f"unknown district {district!r} (known: {known})")]
            )
        if chosen is None:
            raise ConfigError(
                [
                    ConfigIssue(
                        "controller.district",
                        f"this config declares districts ({', '.join(self.districts)}): choose"
                        f" the one this instance runs with `cityctl run --district D`,"
                        f" {DISTRICT_ENV} or controller.district",
                    )
                ]
            )
        return self.for_district(chosen)

    def for_district(self, district: str) -> CityConfig:
        """The config of the instance that runs ``district``: a config without districts.

        Only the district's groups (their per-node details, the overrides naming them) and
        intersections remain; programs and calendars all stay. The instance gets its own
        identity and files: controller id ``<id>.<district>`` (client id, availability and
        status topics, the telemetry's ``controller`` tag), MQTT client id and username
        suffixed likewise (``<client_id>.<district>``, ``<username>-<district>``), state in
        ``<state_dir>/<district>``, the district's ``api_port``. The result is an ordinary
        single-instance config, so the control loops, the API and the workbench need not know
        about districts, and applying this twice is impossible (it has no districts left).
        """
        spec = self.districts.get(district)
        if spec is None:
            known = ", ".join(self.districts) or "none declared"
            raise ConfigError(
                [
                    ConfigIssue(
                        "controller.district", f"unknown district {district!r} (known: {known})"
                    )
                ]
            )
        groups = set(spec.groups)
        xs = set(spec.intersections)
        lt = self.lighting
        kept = [g for g in lt.groups if g.id in groups]
        own_nodes = {n for g in kept for n in g.node_ids()}
        overrides = []
        for o in lt.overrides:
            mine = [gid for gid in o.groups if gid in groups]
            if mine:
                overrides.append(
                    o if len(mine) == len(o.groups) else o.model_copy(update={"groups": mine})
                )
        lighting = lt.model_copy(
            update={
                "groups": kept,
                "nodes": [n for n in lt.nodes if n.id in own_nodes],
                "overrides": overrides,
            }
        )
        signals = self.signals.model_copy(
            update={"intersections": [x for x in self.signals.intersections if x.id in xs]}
        )
        ctl = self.controller.model_copy(
            update={
                "id": f"{self.controller.id}.{district}",
                "state_dir": self.controller.state_dir / district,
                "district": None,
            }
        )
        mq = self.mqtt
        mqtt = mq.model_copy(
            update={
                "client_id": f"{mq.client_id}.{district}" if mq.client_id else None,
                "username": f"{mq.username}-{district}" if mq.username else None,
            }
        )
        outbox = self.telemetry.outbox
        if outbox.path is not None:
            # An explicit outbox file would be shared by two instances on one box.
            outbox = outbox.model_copy(
                update={"path": outbox.path.parent / district / outbox.path.name}
            )
        telemetry = self.telemetry.model_copy(update={"outbox": outbox})
        api = self.api
        if spec.api_port is not None:
            api = api.model_copy(update={"port": spec.api_port})
        return self.model_copy(
            update={
                "controller": ctl,
                "mqtt": mqtt,
                "lighting": lighting,
                "signals": signals,
                "telemetry": telemetry,
                "api": api,
                "districts": {},
            }
        )

    def district_of_intersection(self) -> dict[str, str]:
        """Intersection id → the district that owns it (empty without districts)."""
        return {x: d for d, spec in self.districts.items() for x in spec.intersections}

    def whole_city(self) -> CityConfig:
        """This config run by one instance, districts ignored (the demo runs the whole city)."""
        if not self.districts and self.controller.district is None:
            return self
        ctl = self.controller.model_copy(update={"district": None})
        return self.model_copy(update={"districts": {}, "controller": ctl})

    # -- derived views -------------------------------------------------------------------
    @property
    def location(self) -> Location:
        """The site as a schedules Location."""
        return Location(
            name=self.site.name,
            latitude=self.site.latitude,
            longitude=self.site.longitude,
            timezone=self.site.timezone,
        )

    def program_map(self) -> MappingProxyType[str, LightingProgram]:
        """Programs by name."""
        return MappingProxyType({p.name: p for p in self.lighting.programs})

    def group(self, group_id: str) -> LightGroup:
        """A group by id; KeyError names the known ones."""
        for g in self.lighting.groups:
            if g.id == group_id:
                return g
        known = ", ".join(g.id for g in self.lighting.groups)
        raise KeyError(f"unknown group {group_id!r} (known: {known})")

    def calendar_for(self, group: LightGroup) -> LightingCalendar:
        """The group's calendar; a group with a single program gets a one-line calendar."""
        if group.calendar is not None:
            for c in self.lighting.calendars:
                if c.name == group.calendar:
                    return c
            raise KeyError(group.calendar)
        assert group.program is not None
        return LightingCalendar(name=f"{group.id}-fixed", default=group.program)

    def group_schedule(
        self, group_id: str, overrides: Iterable[Override] | None = None
    ) -> GroupSchedule:
        """The pure schedule of one group, with the config's overrides or the ones given."""
        group = self.group(group_id)
        ovs = tuple(
            o
            for o in (self.lighting.overrides if overrides is None else overrides)
            if group.id in o.groups
        )
        return GroupSchedule(
            group=group.id,
            location=self.location,
            calendar=self.calendar_for(group),
            programs=self.program_map(),
            overrides=ovs,
            min_level=group.min_dim,
        )

    def nodes(self) -> Iterator[tuple[LightGroup, str, float, float]]:
        """``(group, node id, lamp watts, min dim)`` for every node, per-node details applied."""
        specs = {n.id: n for n in self.lighting.nodes}
        for g in self.lighting.groups:
            for nid in g.node_ids():
                spec = specs.get(nid)
                lamp = spec.lamp_w if spec and spec.lamp_w else g.lamp_w
                mind = spec.min_dim if spec and spec.min_dim is not None else g.min_dim
                yield g, nid, lamp, mind


# ---- errors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in the config: where (dotted path), what, and the line when known."""

    path: str
    message: str
    line: int | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line else self.path
        tag = "" if self.severity == "error" else f"{self.severity}: "
        return f"{where}: {tag}{self.message}"


class ConfigError(ValueError):
    """The config cannot be used; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        errors = [i for i in issues if i.severity == "error"]
        head = f"{len(errors)} error(s) in config"
        super().__init__(head + "\n" + "\n".join(f"  {i}" for i in issues))


def _fmt_loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML has it (its wheels do): a city's config of 10,000 nodes
parses in a fraction of the time and memory of the pure-Python one, and the controller's
peak memory is set at start-up by this parse."""


class _LazyLines(Mapping[str, int]):
    """:func:`_yaml_lines` of a text, composed only when an issue needs a line number (the
    node graph of a large config costs more memory than the config itself)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: dict[str, int] | None = None

    def _get(self) -> dict[str, int]:
        if self._lines is None:
            self._lines = _yaml_lines(self._text)
        return self._lines

    def __getitem__(self, key: str) -> int:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _yaml_lines(text: str) -> dict[str, int]:
    """Map dotted paths to 1-based line numbers, so errors can point into the file."""
    try:
        root = yaml.compose(text, Loader=_SAFE_LOADER)  # a safe loader (libyaml when present)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, path: str) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = str(k.value)
                p = f"{path}.{key}" if path else key
                lines[p] = k.start_mark.line + 1
                walk(v, p)
                lines[p] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    if root is not None:
        walk(root, "")
    return lines


def _line_for(lines: Mapping[str, int], path: str) -> int | None:
    p = path
    while p:
        if p in lines:
            return lines[p]
        cut = max(p.rfind("."), p.rfind("["))
        p = p[:cut] if cut > 0 else ""
    return None


def _localise_overrides(data: Any, tz: str | None) -> None:
    """Overrides may be written in local time without an offset: read them in the site's zone."""
    if not tz or not isinstance(data, dict):
        return
    lighting = data.get("lighting")
    if not isinstance(lighting, dict) or not isinstance(lighting.get("overrides"), list):
        return
    try:
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(tz)
    except Exception:
        return
    for ov in lighting["overrides"]:
        if not isinstance(ov, dict):
            continue
        for key in ("start", "until", "created"):
            value = ov.get(key)
            if isinstance(value, str):
                try:
                    value = dt.datetime.fromisoformat(value)
                except ValueError:
                    continue
            if isinstance(value, dt.datetime) and value.tzinfo is None:
                ov[key] = value.replace(tzinfo=zone)


def _cross_checks(cfg: CityConfig) -> list[ConfigIssue]:
    """Checks that need the whole file: names that refer to each other, schedule sanity."""
    issues: list[ConfigIssue] = []
    lt = cfg.lighting
    programs = {p.name: p for p in lt.programs}
    calendars = {c.name: c for c in lt.calendars}

    def dup(items: list[str], path: str, what: str) -> None:
        seen: set[str] = set()
        for i, name in enumerate(items):
            if name in seen:
                issues.append(ConfigIssue(f"{path}[{i}]", f"duplicate {what} {name!r}"))
            seen.add(name)

    dup([p.name for p in lt.programs], "lighting.programs", "program name")
    dup([c.name for c in lt.calendars], "lighting.calendars", "calendar name")
    dup([g.id for g in lt.groups], "lighting.groups", "group id")
    dup([o.id for o in lt.overrides], "lighting.overrides", "override id")

    def unknown(kind: str, name: str, known: Iterable[str]) -> str:
        hint = sorted(known)
        close = [k for k in hint if _similar(k, name)]
        extra = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(hint)})"
        return f"unknown {kind} {name!r}{extra}"

    for i, c in enumerate(lt.calendars):
        for prob in check_calendar(c, programs):
            issues.append(
                ConfigIssue(
                    f"lighting.calendars[{i}].{prob.path}", prob.message, severity=prob.severity
                )
            )

    used_programs: set[str] = set()
    owner: dict[str, str] = {}
    group_ids = {g.id for g in lt.groups}
    for i, g in enumerate(lt.groups):
        if g.program is not None:
            if g.program not in programs:
                issues.append(
                    ConfigIssue(
                        f"lighting.groups[{i}].program", unknown("program", g.program, programs)
                    )
                )
            else:
                used_programs.add(g.program)
        if g.calendar is not None:
            if g.calendar not in calendars:
                issues.append(
                    ConfigIssue(
                        f"lighting.groups[{i}].calendar", unknown("calendar", g.calendar, calendars)
                    )
                )
            else:
                cal = calendars[g.calendar]
                used_programs.update([cal.default, *(r.program for r in cal.rules)])
        for nid in g.node_ids():
            if nid in owner:
                issues.append(
                    ConfigIssue(
                        f"lighting.groups[{i}].nodes",
                        f"node {nid!r} is already in group {owner[nid]!r}; a node belongs to one group",
                    )
                )
            owner[nid] = g.id
    for i, n in enumerate(lt.nodes):
        if n.id not in owner:
            issues.append(ConfigIssue(f"lighting.nodes[{i}].id", f"node {n.id!r} is in no group"))
    for i, o in enumerate(lt.overrides):
        for j, gid in enumerate(o.groups):
            if gid not in group_ids:
                issues.append(
                    ConfigIssue(
                        f"lighting.overrides[{i}].groups[{j}]", unknown("group", gid, group_ids)
                    )
                )

    seen_x: set[str] = set()
    for k, x in enumerate(cfg.signals.intersections):
        base = f"signals.intersections[{k}]"
        if x.id in seen_x:
            issues.append(ConfigIssue(f"{base}.id", f"duplicate intersection {x.id!r}"))
        seen_x.add(x.id)
        try:
            Intersection.build(x)
        except ValueError as exc:
            for line in str(exc).splitlines():
                where, _, why = line.partition(": ")
                issues.append(ConfigIssue(f"{base}.{where}", why))

    issues += _district_checks(cfg, unknown)

    year = dt.date.today().year
    for i, p in enumerate(lt.programs):
        if p.name not in used_programs:
            issues.append(
                ConfigIssue(
                    f"lighting.programs[{i}]", f"program {p.name!r} is not used", severity="warning"
                )
            )
        for prob in check_program(p, cfg.location, year):
            issues.append(
                ConfigIssue(
                    f"lighting.programs[{i}].{prob.path}", prob.message, severity=prob.severity
                )
            )
    return issues


def _district_checks(
    cfg: CityConfig, unknown: Callable[[str, str, Iterable[str]], str]
) -> list[ConfigIssue]:
    """Every group and intersection in exactly one district; the instance's district known."""
    issues: list[ConfigIssue] = []
    chosen = cfg.controller.district
    if not cfg.districts:
        if chosen is not None:
            issues.append(
                ConfigIssue(
                    "controller.district",
                    f"{chosen!r}{_from_env(chosen)}: no districts are declared",
                )
            )
        return issues
    if chosen is not None and chosen not in cfg.districts:
        issues.append(
            ConfigIssue(
                "controller.district",
                unknown("district", chosen, cfg.districts) + _from_env(chosen),
            )
        )
    group_ids = [g.id for g in cfg.lighting.groups]
    x_ids = [x.id for x in cfg.signals.intersections]
    for kind, items, field, known in (
        ("group", "groups", "lighting.groups", group_ids),
        ("intersection", "intersections", "signals.intersections", x_ids),
    ):
        owner: dict[str, str] = {}
        for d, spec in cfg.districts.items():
            for j, item in enumerate(getattr(spec, items)):
                path = f"districts.{d}.{items}[{j}]"
                if item not in known:
                    issues.append(ConfigIssue(path, unknown(kind, item, known)))
                elif item in owner:
                    where = "this district" if owner[item] == d else f"district {owner[item]!r}"
                    issues.append(
                        ConfigIssue(
                            path,
                            f"{kind} {item!r} is already in {where}; a {kind} belongs to one"
                            f" district, or two instances would command it",
                        )
                    )
                else:
                    owner[item] = d
        for i, item in enumerate(known):
            if item not in owner:
                issues.append(
                    ConfigIssue(
                        f"{field}[{i}]",
                        f"{kind} {item!r} is in no district: with districts declared, every"
                        f" {kind} belongs to exactly one (add it to one of"
                        f" {', '.join(cfg.districts)})",
                    )
                )
    for d, spec in cfg.districts.items():
        if not spec.groups:
            # The lighting loop and the schedule workbench run in every instance.
            issues.append(
                ConfigIssue(f"districts.{d}.groups", "a district needs at least one lighting group")
            )
        for what, base in (
            ("controller.id", cfg.controller.id),
            ("mqtt.client_id", cfg.mqtt.client_id),
        ):
            if base is not None and len(f"{base}.{d}") > 64:
                issues.append(
                    ConfigIssue(
                        f"districts.{d}",
                        f"the instance's {what} {base}.{d} would be longer than 64 characters",
                    )
                )
    by_x = cfg.district_of_intersection()
    for k, x in enumerate(cfg.signals.intersections):
        coord = x.coordination
        if coord is None or coord.upstream is None:
            continue
        mine, theirs = by_x.get(x.id), by_x.get(coord.upstream)
        if mine is not None and theirs is not None and mine != theirs:
            issues.append(
                ConfigIssue(
                    f"signals.intersections[{k}].coordination.upstream",
                    f"{coord.upstream!r} is in district {theirs!r}, {x.id!r} in {mine!r}: its"
                    " greens are known only to its own instance, so this intersection runs"
                    " uncoordinated",
                    severity="warning",
                )
            )
    return issues


def _from_env(value: str) -> str:
    return f" (from {DISTRICT_ENV})" if os.environ.get(DISTRICT_ENV) == value else ""


def _raw_reference_checks(data: dict[str, Any]) -> list[ConfigIssue]:
    """Unknown program, calendar and group names, on a config that failed validation."""
    lt = data.get("lighting")
    if not isinstance(lt, dict):
        return []

    def names(key: str, field: str) -> set[str]:
        items = lt.get(key)
        if not isinstance(items, list):
            return set()
        return {str(i[field]) for i in items if isinstance(i, dict) and field in i}

    programs = names("programs", "name")
    calendars = names("calendars", "name")
    groups = names("groups", "id")
    out: list[ConfigIssue] = []

    def check(path: str, value: object, known: set[str], kind: str) -> None:
        if isinstance(value, str) and known and value not in known:
            close = [k for k in sorted(known) if _similar(k, value)]
            hint = (
                f" (did you mean {close[0]!r}?)"
                if close
                else f" (known: {', '.join(sorted(known))})"
            )
            out.append(ConfigIssue(path, f"unknown {kind} {value!r}{hint}"))

    for i, g in enumerate(lt.get("groups") or []):
        if isinstance(g, dict):
            check(f"lighting.groups[{i}].program", g.get("program"), programs, "program")
            check(f"lighting.groups[{i}].calendar", g.get("calendar"), calendars, "calendar")
    for i, c in enumerate(lt.get("calendars") or []):
        if not isinstance(c, dict):
            continue
        check(f"lighting.calendars[{i}].default", c.get("default"), programs, "program")
        for j, r in enumerate(c.get("rules") or []):
            if isinstance(r, dict):
                check(
                    f"lighting.calendars[{i}].rules[{j}].program",
                    r.get("program"),
                    programs,
                    "program",
                )
    for i, o in enumerate(lt.get("overrides") or []):
        if isinstance(o, dict) and isinstance(o.get("groups"), list):
            for j, gid in enumerate(o["groups"]):
                check(f"lighting.overrides[{i}].groups[{j}]", gid, groups, "group")
    districts = data.get("districts")
    signals = data.get("signals")
    xs = signals.get("intersections") if isinstance(signals, dict) else None
    x_ids = (
        {str(x["id"]) for x in xs if isinstance(x, dict) and "id" in x}
        if isinstance(xs, list)
        else set()
    )
    for d, spec in districts.items() if isinstance(districts, dict) else ():
        for key, known, kind in (
            ("groups", groups, "group"),
            ("intersections", x_ids, "intersection"),
        ):
            items = spec.get(key) if isinstance(spec, dict) else None
            for j, item in enumerate(items if isinstance(items, list) else []):
                check(f"districts.{d}.{key}[{j}]", item, known, kind)
    return out


def _similar(a: str, b: str) -> bool:
    """Cheap typo detector: same letters in nearly the same order."""
    if abs(len(a) - len(b)) > 2:
        return False
    if sorted(a) == sorted(b):
        return True
    # one edit apart (Levenshtein ≤ 1)
    if len(a) > len(b):
        a, b = b, a
    i = j = edits = 0
    while i < len(a) and j < len(b):
        if a[i] != b[j]:
            edits += 1
            if edits > 1:
                return False
            if len(a) == len(b):
                i += 1
            j += 1
        else:
            i += 1
            j += 1
    return edits + (len(b) - j) + (len(a) - i) <= 1


def parse_config(text: str, *, source: str = "config") -> tuple[CityConfig, list[ConfigIssue]]:
    """Parse YAML text; returns the config and its warnings, raises ConfigError on any error."""
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)  # a safe loader (libyaml when present)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue(source, f"not valid YAML: {exc}", line)]) from None
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigIssue(source, "the file must be a mapping with site, mqtt, lighting …")]
        )
    lines = _LazyLines(text)
    site = data.get("site")
    _localise_overrides(data, site.get("timezone") if isinstance(site, dict) else None)
    return validate_data(data, source=source, lines=lines)


def validate_data(
    data: dict[str, Any], *, source: str = "config", lines: Mapping[str, int] | None = None
) -> tuple[CityConfig, list[ConfigIssue]]:
    """Validate config data already read (a mapping as YAML gives it, model instances allowed).

    The same rules as :func:`parse_config` and ``cityctl validate``: field errors with their
    dotted paths, names that refer to each other, schedule sanity. Returns the config and its
    warnings; raises :class:`ConfigError` on any error. ``lines`` maps paths to line numbers.
    """
    lines = lines if lines is not None else {}
    try:
        cfg = CityConfig.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            path = _fmt_loc(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling; see `cityctl config schema`)"
            elif err["type"] == "missing":
                msg = "required field is missing"
            issues.append(ConfigIssue(path or source, msg, _line_for(lines, path)))
        # Names that refer to each other can still be checked on the raw data, so one run of
        # `cityctl validate` shows a misspelt program alongside a misspelt field.
        seen = {i.path for i in issues}
        for ref in _raw_reference_checks(data):
            if ref.path not in seen:
                issues.append(ConfigIssue(ref.path, ref.message, _line_for(lines, ref.path)))
        raise ConfigError(issues) from None
    issues = _cross_checks(cfg)
    issues = [ConfigIssue(i.path, i.message, _line_for(lines, i.path), i.severity) for i in issues]
    if any(i.severity == "error" for i in issues):
        raise ConfigError(issues)
    return cfg, issues


def load_config(path: str | Path) -> CityConfig:
    """Read and validate a config file; raises :class:`ConfigError` listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(p), f"cannot read: {exc.strerror}")]) from None
    cfg, _warnings = parse_config(text, source=str(p))
    return _resolve_paths(cfg, p.parent)


def _resolve_paths(cfg: CityConfig, base: Path) -> CityConfig:
    """Relative paths are relative to the config file; the state-dir variable wins."""
    state = cfg.controller.state_dir
    if not state.is_absolute():
        state = base / state
    outbox = cfg.telemetry.outbox
    if outbox.path is not None and not outbox.path.is_absolute():
        outbox = outbox.model_copy(update={"path": base / outbox.path})
    return cfg.model_copy(
        update={
            "controller": cfg.controller.model_copy(update={"state_dir": state}),
            "telemetry": cfg.telemetry.model_copy(update={"outbox": outbox}),
        }
    )
