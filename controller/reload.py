"""Reading ``config.yaml`` again while the controller runs (SIGHUP, ``systemctl reload``).

All or nothing. The file is read and validated with the rules of ``cityctl validate``; a file
with any error is refused, every problem logged with its path in the file, and the running
config stays as it was. A valid file runs as a whole or not at all:

* what can change live — the lighting schedule (``lighting.programs``, ``lighting.calendars``,
  each group's ``program`` or ``calendar``), ``lighting.overrides`` and
  ``controller.log_level`` — is applied at once; a changed schedule becomes a new schedule
  version by ``config.yaml`` (the API's history shows it), exactly as at a start;
* any other change (the broker, intersections, groups and their nodes, telemetry, the API,
  the controller's id or state directory, …) is read once at start: such a file is refused,
  naming every field that needs a restart, and nothing of it runs.

:class:`controller.runtime.Controller` does the applying (``reload``, ``reload_async``); this
module holds the parts that need no running controller: reading, the restart check, results.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.config import (
    CityConfig,
    ConfigError,
    ConfigIssue,
    _resolve_paths,
    parse_config,
)
from controller.workbench.schedules import (
    ScheduleDocument,
    Validated,
    document_of,
    validate_document,
)

__all__ = [
    "LIVE_FIELDS",
    "ReloadPlan",
    "ReloadResult",
    "plan_reload",
    "read_config",
    "restart_changes",
]

#: What a reload applies without a restart; every other field needs one.
LIVE_FIELDS = (
    "lighting.programs",
    "lighting.calendars",
    "lighting.groups[].program",
    "lighting.groups[].calendar",
    "lighting.overrides",
    "controller.log_level",
)

_RESTART = (
    "changed; only a restart applies this (systemctl restart cityctl), so nothing was reloaded"
)


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did: applied (and what changed) or refused (and why)."""

    applied: bool
    at: dt.datetime
    source: str
    problems: tuple[ConfigIssue, ...] = ()
    changes: tuple[str, ...] = ()
    schedule_version: int | None = None
    """The schedule version running after the reload (None when refused)."""
    log_level: str | None = None
    """``controller.log_level`` of the file that now runs (None when refused)."""

    def as_json(self) -> dict[str, Any]:
        """The short form for the health answer: no messages (they are in the log)."""
        return {
            "at": self.at.isoformat(),
            "result": "applied" if self.applied else "refused",
            "problems": len([p for p in self.problems if p.severity == "error"]),
            "changes": list(self.changes),
            "schedule_version": self.schedule_version,
        }


@dataclass(frozen=True)
class ReloadPlan:
    """A config file read, validated and checked, ready to be applied in one step."""

    source: str
    city: CityConfig
    """The file as read (every district, when it declares some)."""
    own: CityConfig
    """What this controller runs of it (its district)."""
    checked: dict[str, Validated] = field(default_factory=dict)
    """Schedule documents already validated against ``own``, by digest."""
    warnings: tuple[ConfigIssue, ...] = ()


def read_config(config: Path | str) -> tuple[CityConfig, list[ConfigIssue]]:
    """A config and its warnings from a file (relative paths are relative to it, as
    :func:`controller.config.load_config` reads them) or from YAML text (paths as written);
    :class:`ConfigError` lists every problem."""
    if isinstance(config, Path):
        try:
            text = config.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([ConfigIssue(str(config), f"cannot read: {exc.strerror}")]) from None
        cfg, warnings = parse_config(text, source=str(config))
        return _resolve_paths(cfg, config.parent), warnings
    return parse_config(config)


def restart_changes(old: CityConfig, new: CityConfig) -> list[ConfigIssue]:
    """Every field that differs between ``old`` and ``new`` and cannot change live, by path."""
    paths = _differences(_restart_only(old), _restart_only(new), "")
    return [ConfigIssue(p, _RESTART) for p in paths]


def plan_reload(
    current: CityConfig,
    config: Path | str,
    *,
    district: str | None = None,
    running: ScheduleDocument | None = None,
) -> ReloadPlan:
    """Read ``config`` and check that it can replace ``current`` (the file that runs) live.

    Pure and slow (validation computes a year of sun times): meant for a worker thread.
    ``running`` is the schedule document running now; it is validated against the new file
    too, because it stays when the file's schedule did not change (see
    :meth:`ScheduleStore.reload`). Raises :class:`ConfigError` naming every problem.
    """
    city, warnings = read_config(config)
    own = city.instance(district)
    issues = restart_changes(current, city)
    if issues:
        raise ConfigError(issues)
    from_file = validate_document(own, document_of(own))
    checked = {from_file.document.digest: from_file}
    if running is not None and running.digest not in checked:
        # One that no longer fits is left out: the store then imports the file's schedule.
        with contextlib.suppress(ConfigError):
            checked[running.digest] = validate_document(own, running)
    source = config.name if isinstance(config, Path) else "config.yaml"
    return ReloadPlan(source, city, own, checked, tuple(warnings))


def _restart_only(cfg: CityConfig) -> dict[str, Any]:
    """The config without what a reload can apply live."""
    data = cfg.model_dump(mode="json")
    lighting = data["lighting"]
    for key in ("programs", "calendars", "overrides"):
        lighting.pop(key, None)
    for group in lighting["groups"]:
        group.pop("program", None)
        group.pop("calendar", None)
    data["controller"].pop("log_level", None)
    return data


_ABSENT = object()


def _differences(old: Any, new: Any, path: str) -> list[str]:
    """Paths (``mqtt.url``, ``signals.intersections[1].cabinet.port``) where two JSON trees
    differ; a list whose length changed is named as a whole."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{key}" if path else str(key)
            out += _differences(old.get(key, _ABSENT), new.get(key, _ABSENT), sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            p
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for p in _differences(a, b, f"{path}[{i}]")
        ]
    return [path]
