"""Incidents: every fault the controller sees and every problem a person reports, as one case an
operations center acknowledges, resolves and counts (pure; the clock is injected).

**Where incidents come from.** The runtime calls :meth:`IncidentEngine.sync` about once a second
with a :class:`FaultSnapshot`: every alarm active *now* (lighting ``FaultDetector.active``, each
intersection runner's ``alarms``, the telemetry service's ``alarms``; see :func:`runtime_faults`).
The engine compares it with the faults it knows and calls :meth:`~IncidentEngine.observe` for the
differences. Nothing is replayed: after a restart the store gives back every incident (with the
faults that were active), and the next snapshots say what is true now. Because the sources need
a while to re-judge after a restart (a node is only called offline after ``stale_after_s`` of
silence), a fault carried over from before the restart that is missing from the snapshots is only
cleared once ``restart_grace_s`` has passed since the first sync (new faults clear at once).

**Severity by fault kind** (the part before ``:``; ``detector:D3`` is kind ``detector``):

=====================  ========  ==============================================================
kind                   severity  why
=====================  ========  ==============================================================
``safety_violation``   critical  the controller's own monitor caught a conflict: it flashes
``cabinet_fault``      critical  the cabinet latched a monitor fault and flashes until a reset
``cabinet_flash``      critical  the cabinet flashes for another reason (heartbeat lost)
``cabinet_down``       major     no answer from the cabinet: it runs its local fixed plan
``node_offline``       major     a light point we cannot reach (it runs its fallback program)
``lamp_failure``       major     a dark lamp
``supply_lost``        major     the node reports no mains supply (the lamp is dark)
``driver_failure``     major     the node reports a failed LED driver
``wrong_group``        major     the node says it is in another group: it follows that group's
                                 commands, not its own (a commissioning error)
``database_down``      major     telemetry is only buffered on disk
``outbox_full``        major     telemetry points are being dropped
``outbox_error``       major     the outbox file cannot be written
``detector``           minor     one detector failed; the phase gets a constant call
``cabinet_fallback``   minor     the cabinet left our outputs; a hand-over follows
``register_error``     minor     the cabinet answers with bad registers
``day_burner``         minor     lit in daytime: wasted energy
``power_out_of_band``  minor     draws far more or less than the lamp's rating
``outbox_expired``     minor     old telemetry points were dropped
anything else          major     an alarm this table does not know yet is worth a look
=====================  ========  ==============================================================

A person's report takes the severity of its hint (:data:`REPORT_HINTS`); a report never lowers an
incident's severity, it may raise it.

**States.**

==================  ====  ==================================================================
state               open  reached by
==================  ====  ==================================================================
``open``            yes   a fault became active, or a person reported a problem
``acknowledged``    yes   :meth:`~IncidentEngine.acknowledge` (a person has seen it)
``cleared``         no    the device's fault went away by itself (resolution "fault cleared")
``resolved``        no    :meth:`~IncidentEngine.resolve` (a person's resolution and note)
==================  ====  ==================================================================

Rules:

* one open incident at most per device and fault kind; the same fault again while it is open
  changes nothing;
* a fault that comes back within ``reopen_window_s`` of going away re-opens its last incident
  (state ``acknowledged`` if it had been acknowledged, else ``open``) instead of opening a new
  one, so a flapping lamp is one incident; time-to-resolve then runs to the final closing;
* a person may not resolve an incident whose fault the device still reports
  (:class:`FaultStillActive`) unless ``force=True``: then it is closed although the fault
  persists, and no new incident opens for that fault until it has cleared and come back;
* acknowledging twice, or acting on a closed incident, is refused (:class:`AlreadyAcknowledged`,
  :class:`IncidentClosed`); resolving an incident nobody acknowledged acknowledges it too (for
  time-to-acknowledge: the person has looked at it);
* closing times are never before the opening time (a clock stepped back is clamped).

**Reports.** :meth:`IncidentEngine.report` matches a report to the device named (``node:QL-001``
or ``QL-001``), else to the nearest node, group or intersection with a location within
``match_radius_m`` (haversine; the hint restricts the search to light points or intersections).
Nodes have a location only when ``lighting.nodes[].location`` gives one; otherwise their group's
``location`` stands for all of them and the report is matched to the group. Intersections use
``signals.intersections[].location`` (``{lat, lon}``). The report joins the matched place's open
incident that fits its hint (the most severe, then the oldest); else it opens a ``reported``
incident there. Such an incident is *bound* to a fault when the device reports one that fits the
hint (at once, or later: the fault then joins the report instead of opening its own incident), and
it closes when that fault clears; while it is bound to nothing it stays open for a person to
resolve. A report with nothing within the radius is kept as an incident without a device.

**Events** (``incident_events``): ``opened``, ``reported``, ``linked`` (a fault joined a reported
incident), ``acked``, ``cleared``, ``resolved``, ``reopened`` and ``fault_cleared`` (the fault of
an incident a person had already closed went away) — each with who, when and a note.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from controller.config import CityConfig
    from controller.runtime import Controller

__all__ = [
    "DEVICE_KINDS",
    "REPORT_HINTS",
    "SEVERITY",
    "AlreadyAcknowledged",
    "BadReport",
    "Directory",
    "EventKind",
    "FaultKey",
    "FaultSnapshot",
    "FaultStillActive",
    "Incident",
    "IncidentClosed",
    "IncidentEngine",
    "IncidentError",
    "IncidentEvent",
    "IncidentJournal",
    "IncidentSettings",
    "IncidentStats",
    "KindStats",
    "Place",
    "ReportHint",
    "ReportOutcome",
    "Severity",
    "State",
    "UnknownIncident",
    "base_kind",
    "haversine_m",
    "intersection_faults",
    "lighting_faults",
    "runtime_faults",
    "severity_of",
    "telemetry_faults",
]

#: What a device can be: a light point, a group of them (reports only), an intersection's
#: cabinet, or the controller itself (telemetry alarms).
DEVICE_KINDS = ("node", "group", "intersection", "controller")

SYSTEM = "system"
"""``who`` of the changes the engine makes by itself."""


class Severity(StrEnum):
    """How urgent an incident is."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"

    @property
    def rank(self) -> int:
        """3 for critical … 1 for minor (for sorting and ``max``)."""
        return _RANK[self.value]


_RANK = {"critical": 3, "major": 2, "minor": 1}


def _worse(a: Severity, b: Severity) -> Severity:
    return a if a.rank >= b.rank else b


#: Severity by base fault kind (the table in the module docstring).
SEVERITY: Mapping[str, Severity] = {
    "safety_violation": Severity.CRITICAL,
    "cabinet_fault": Severity.CRITICAL,
    "cabinet_flash": Severity.CRITICAL,
    "cabinet_down": Severity.MAJOR,
    "node_offline": Severity.MAJOR,
    "lamp_failure": Severity.MAJOR,
    "supply_lost": Severity.MAJOR,
    "driver_failure": Severity.MAJOR,
    "wrong_group": Severity.MAJOR,
    "database_down": Severity.MAJOR,
    "outbox_full": Severity.MAJOR,
    "outbox_error": Severity.MAJOR,
    "detector": Severity.MINOR,
    "cabinet_fallback": Severity.MINOR,
    "register_error": Severity.MINOR,
    "day_burner": Severity.MINOR,
    "power_out_of_band": Severity.MINOR,
    "outbox_expired": Severity.MINOR,
}


def base_kind(fault_kind: str) -> str:
    """``detector:D3`` → ``detector``; other kinds unchanged."""
    return fault_kind.split(":", 1)[0]


def severity_of(fault_kind: str) -> Severity:
    """The severity table's entry for a fault kind (major for kinds it does not know)."""
    return SEVERITY.get(base_kind(fault_kind), Severity.MAJOR)


@dataclass(frozen=True)
class ReportHint:
    """What a person's report says the problem looks like."""

    #: ``node`` (light points and their groups), ``intersection``, or None (anything).
    device_kind: str | None
    #: Base fault kinds that explain it (None: any fault).
    faults: frozenset[str] | None
    severity: Severity

    def fits(self, fault_kind: str | None) -> bool:
        """Whether a fault (None: no fault yet) can be what the person saw."""
        return fault_kind is None or self.faults is None or base_kind(fault_kind) in self.faults


_SIGNAL_FAULTS = frozenset(
    {"cabinet_fault", "cabinet_flash", "safety_violation", "cabinet_down", "cabinet_fallback"}
)

#: Report kinds a person can choose (``kind=`` of :meth:`IncidentEngine.report`).
REPORT_HINTS: Mapping[str, ReportHint] = {
    "dark_lamp": ReportHint(
        "node",
        frozenset({"lamp_failure", "node_offline", "supply_lost", "driver_failure", "wrong_group"}),
        Severity.MINOR,
    ),
    "lamp_on_in_daytime": ReportHint(
        "node", frozenset({"day_burner", "wrong_group"}), Severity.MINOR
    ),
    "flickering_lamp": ReportHint(
        "node",
        frozenset({"power_out_of_band", "driver_failure", "lamp_failure"}),
        Severity.MINOR,
    ),
    "stuck_signal": ReportHint(
        "intersection", _SIGNAL_FAULTS | {"detector", "register_error"}, Severity.MAJOR
    ),
    "dark_signal": ReportHint(
        "intersection",
        frozenset({"cabinet_fault", "cabinet_flash", "cabinet_down"}),
        Severity.MAJOR,
    ),
    "flashing_signal": ReportHint(
        "intersection",
        frozenset({"cabinet_fault", "cabinet_flash", "safety_violation"}),
        Severity.MAJOR,
    ),
    "other": ReportHint(None, None, Severity.MINOR),
}


class State(StrEnum):
    """Where an incident stands (the state table in the module docstring)."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"
    RESOLVED = "resolved"

    @property
    def is_open(self) -> bool:
        """Open or acknowledged: still needs the fault to clear or a person."""
        return self in (State.OPEN, State.ACKNOWLEDGED)


class EventKind(StrEnum):
    """One line of an incident's history."""

    OPENED = "opened"
    REPORTED = "reported"
    LINKED = "linked"
    ACKED = "acked"
    CLEARED = "cleared"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    FAULT_CLEARED = "fault_cleared"


_CLOSING = (EventKind.CLEARED, EventKind.RESOLVED)


class FaultKey(NamedTuple):
    """One fault of one device: ``("node", "QL-001", "lamp_failure")``."""

    device_kind: str
    device_id: str
    fault_kind: str


# -- errors ---------------------------------------------------------------------------------


class IncidentError(Exception):
    """An action on incidents was refused; the message says why. Nothing was changed."""


class UnknownIncident(IncidentError, LookupError):
    """No incident with that id."""


class IncidentClosed(IncidentError):
    """The incident is already cleared or resolved."""


class AlreadyAcknowledged(IncidentError):
    """Somebody acknowledged the incident already."""


class FaultStillActive(IncidentError):
    """Resolving was refused: the device still reports the fault (use ``force=True``)."""


class BadReport(IncidentError, ValueError):
    """A report that cannot be taken as given (no place, unknown device or hint, bad position)."""


# -- incidents and events -------------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    """One case: a fault of a device, a person's report, or both."""

    id: str
    origin: str  # "fault" or "reported": what opened it
    device_kind: str | None  # None: a report matched to no device
    device_id: str | None
    fault_kind: str | None  # None: a report not (yet) explained by a fault
    hint: str | None  # the report kind of the first report, if any
    severity: Severity
    state: State
    detail: str  # the fault's detail, or the first report's note
    opened_at: dt.datetime
    location: tuple[float, float] | None = None  # (lat, lon): the report's or the device's
    acked_at: dt.datetime | None = None
    acked_by: str | None = None
    closed_at: dt.datetime | None = None
    closed_by: str | None = None
    resolution: str | None = None
    fault_active: bool = False  # the device reports the fault now
    fault_cleared_at: dt.datetime | None = None
    reopened: int = 0
    reports: int = 0

    @property
    def is_open(self) -> bool:
        """Open or acknowledged."""
        return self.state.is_open

    @property
    def kind(self) -> str:
        """What the figures are counted by: the base fault kind, or ``report:<hint>``."""
        if self.fault_kind is not None:
            return base_kind(self.fault_kind)
        return f"report:{self.hint or 'other'}"

    @property
    def fault_key(self) -> FaultKey | None:
        """The fault this incident is bound to, if any."""
        if self.device_kind is None or self.device_id is None or self.fault_kind is None:
            return None
        return FaultKey(self.device_kind, self.device_id, self.fault_kind)

    @property
    def time_to_resolve_s(self) -> float | None:
        """Opened → closed (the last closing), seconds; None while open."""
        if self.closed_at is None or self.is_open:
            return None
        return (self.closed_at - self.opened_at).total_seconds()

    @property
    def time_to_acknowledge_s(self) -> float | None:
        """Opened → acknowledged, seconds."""
        return None if self.acked_at is None else (self.acked_at - self.opened_at).total_seconds()

    def as_json(self) -> dict[str, Any]:
        """JSON-able, for the API."""
        return {
            "id": self.id,
            "origin": self.origin,
            "device_kind": self.device_kind,
            "device_id": self.device_id,
            "fault_kind": self.fault_kind,
            "kind": self.kind,
            "hint": self.hint,
            "severity": self.severity.value,
            "state": self.state.value,
            "open": self.is_open,
            "detail": self.detail,
            "opened_at": self.opened_at.isoformat(),
            "location": (
                {"lat": self.location[0], "lon": self.location[1]} if self.location else None
            ),
            "acked_at": _iso(self.acked_at),
            "acked_by": self.acked_by,
            "closed_at": _iso(self.closed_at),
            "closed_by": self.closed_by,
            "resolution": self.resolution,
            "fault_active": self.fault_active,
            "fault_cleared_at": _iso(self.fault_cleared_at),
            "reopened": self.reopened,
            "reports": self.reports,
            "time_to_resolve_s": self.time_to_resolve_s,
            "time_to_acknowledge_s": self.time_to_acknowledge_s,
        }


@dataclass(frozen=True)
class IncidentEvent:
    """One line of an incident's history."""

    seq: int
    incident_id: str
    at: dt.datetime
    kind: EventKind
    who: str
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        """JSON-able, for the API."""
        return {
            "seq": self.seq,
            "incident_id": self.incident_id,
            "at": self.at.isoformat(),
            "kind": self.kind.value,
            "who": self.who,
            "note": self.note,
        }


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _utc(t: dt.datetime, what: str = "at") -> dt.datetime:
    if t.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware, got {t.isoformat()}")
    return t.astimezone(dt.UTC)


# -- places: where devices are, for reports ------------------------------------------------

_EARTH_RADIUS_M = 6_371_008.8


def haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lon) points, metres."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class Place:
    """A device a report can be matched to."""

    kind: str  # one of DEVICE_KINDS
    id: str
    location: tuple[float, float] | None = None  # (lat, lon)
    group: str | None = None  # a node's group


class Directory:
    """Every device by kind and id, with locations (from the config: :meth:`from_config`)."""

    def __init__(self, places: Iterable[Place] = ()) -> None:
        self._places: dict[tuple[str, str], Place] = {}
        self._members: dict[str, list[str]] = {}
        for p in places:
            if p.kind not in DEVICE_KINDS:
                raise ValueError(f"place {p.id!r}: kind {p.kind!r} is not one of {DEVICE_KINDS}")
            self._places[(p.kind, p.id)] = p
            if p.kind == "node" and p.group is not None:
                self._members.setdefault(p.group, []).append(p.id)

    @classmethod
    def from_config(cls, cfg: CityConfig) -> Directory:
        """Nodes (own location if ``lighting.nodes`` gives one), groups, intersections, and the
        controller (matchable by id only)."""
        specs = {n.id: n for n in cfg.lighting.nodes}
        places: list[Place] = [Place("controller", cfg.controller.id)]
        for g in cfg.lighting.groups:
            gl = (g.location.lat, g.location.lon) if g.location else None
            places.append(Place("group", g.id, gl))
            for nid in g.node_ids():
                spec = specs.get(nid)
                loc = (spec.location.lat, spec.location.lon) if spec and spec.location else None
                places.append(Place("node", nid, loc, g.id))
        for x in cfg.signals.intersections:
            xl = x.location or {}
            lat, lon = xl.get("lat"), xl.get("lon")
            places.append(
                Place(
                    "intersection",
                    x.id,
                    (float(lat), float(lon)) if lat is not None and lon is not None else None,
                )
            )
        return cls(places)

    def get(self, kind: str, device_id: str) -> Place | None:
        """The place of a device, if known."""
        return self._places.get((kind, device_id))

    def members(self, group: str) -> list[str]:
        """Node ids of a group."""
        return list(self._members.get(group, ()))

    def find(self, ref: str) -> Place:
        """``kind:id`` or a bare id; :class:`BadReport` if unknown or ambiguous."""
        kind, sep, ident = ref.partition(":")
        if sep and kind in DEVICE_KINDS:
            place = self._places.get((kind, ident))
            if place is None:
                raise BadReport(f"device_id: no {kind} {ident!r} in the configuration")
            return place
        found = [p for (_, pid), p in self._places.items() if pid == ref]
        if not found:
            raise BadReport(
                f"device_id: no node, group or intersection {ref!r} in the configuration"
            )
        if len(found) > 1:
            kinds = ", ".join(f"{p.kind}:{p.id}" for p in found)
            raise BadReport(f"device_id: {ref!r} is ambiguous, say which: {kinds}")
        return found[0]

    def nearest(
        self, at: tuple[float, float], radius_m: float, device_kind: str | None = None
    ) -> tuple[Place, float] | None:
        """The closest place with a location within ``radius_m`` (``device_kind`` ``node`` also
        takes groups); ties go to the more specific place (a node before its group)."""
        if device_kind is None:
            kinds: tuple[str, ...] = ("node", "group", "intersection")
        elif device_kind == "node":
            kinds = ("node", "group")
        else:
            kinds = (device_kind,)
        best: tuple[float, int, str, Place] | None = None
        for p in self._places.values():
            if p.location is None or p.kind not in kinds:
                continue
            d = haversine_m(at, p.location)
            if d > radius_m:
                continue
            cand = (d, 1 if p.kind == "group" else 0, p.id, p)
            if best is None or cand[:3] < best[:3]:
                best = cand
        return None if best is None else (best[3], best[0])


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultSnapshot:
    """Every fault active now (key → detail), and which device kinds the snapshot speaks for:
    a fault of a kind not covered (a loop that does not run) is left as it is."""

    faults: Mapping[FaultKey, str]
    covers: frozenset[str] = frozenset(DEVICE_KINDS)


class _HasDetail(Protocol):
    @property
    def detail(self) -> str: ...


def lighting_faults(active: Mapping[str, Mapping[str, _HasDetail]]) -> dict[FaultKey, str]:
    """From ``FaultDetector.active`` (node → alarm kind → entry)."""
    return {
        FaultKey("node", node, kind): entry.detail
        for node, kinds in active.items()
        for kind, entry in kinds.items()
    }


def intersection_faults(
    intersection_id: str, alarms: Mapping[str, str], *, cabinet_flashing: str | None = None
) -> dict[FaultKey, str]:
    """From an ``IntersectionRunner.alarms`` (key → detail; ``detector:<id>`` stays as it is).

    ``cabinet_flashing`` (a detail, e.g. the cabinet's mode and fault) adds ``cabinet_flash``
    when the cabinet flashes and no ``cabinet_fault``/``safety_violation`` explains it already.
    """
    out = {FaultKey("intersection", intersection_id, k): v for k, v in alarms.items()}
    if cabinet_flashing and not ({"cabinet_fault", "safety_violation"} & alarms.keys()):
        out[FaultKey("intersection", intersection_id, "cabinet_flash")] = cabinet_flashing
    return out


def telemetry_faults(controller_id: str, alarms: Mapping[str, str]) -> dict[FaultKey, str]:
    """From ``TelemetryService.alarms``: faults of the controller itself."""
    return {FaultKey("controller", controller_id, k): v for k, v in alarms.items()}


def runtime_faults(ctrl: Controller) -> FaultSnapshot:
    """Every alarm of a running :class:`~controller.runtime.Controller`, as one snapshot."""
    from devices.cabinet import FaultCode

    faults: dict[FaultKey, str] = lighting_faults(ctrl.lighting.core.faults.active)
    covers = {"node", "group"}
    if ctrl.signals is not None:
        covers.add("intersection")
        for xid, r in ctrl.signals.runners.items():
            cab = r.cabinet
            flashing = None
            if r.link.up and r.sync != "down" and cab is not None and cab.flashing:
                flashing = f"cabinet in {cab.mode.name}" + (
                    f" ({cab.fault.name})" if cab.fault is not FaultCode.NONE else ""
                )
            faults.update(intersection_faults(xid, r.alarms, cabinet_flashing=flashing))
    if ctrl.telemetry is not None:
        covers.add("controller")
        faults.update(telemetry_faults(ctrl.cfg.controller.id, ctrl.telemetry.alarms))
    return FaultSnapshot(faults, frozenset(covers))


# -- the engine -----------------------------------------------------------------------------


class IncidentJournal(Protocol):
    """Where changes go (the SQLite store): all of one call in one transaction, or none."""

    def save(self, incidents: Sequence[Incident], events: Sequence[IncidentEvent]) -> None:
        """Persist new and changed incidents and new events atomically; raise on failure."""
        ...


@dataclass(frozen=True)
class IncidentSettings:
    """Tunables of the engine."""

    reopen_window_s: float = 600.0  # a fault back within this re-opens its incident
    match_radius_m: float = 150.0  # a report matches places this close
    restart_grace_s: float = 240.0  # faults carried over a restart wait this long to clear

    def __post_init__(self) -> None:
        for name in ("reopen_window_s", "match_radius_m", "restart_grace_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")


@dataclass(frozen=True)
class ReportOutcome:
    """What a report became."""

    incident: Incident
    matched: Place | None  # None: nothing within the radius (an incident without a device)
    distance_m: float | None  # from the report's location to the matched place
    joined: bool  # it joined an open incident (else it opened one)


@dataclass(frozen=True)
class KindStats:
    """Figures of one kind (or of all) over a window, as an operations center reports them."""

    opened: int  # opened in the window
    closed: int  # closed (cleared + resolved) in the window, whenever opened
    cleared: int  # … of which by the fault clearing
    resolved: int  # … of which by a person
    resolution_rate: float | None  # of those opened in the window, the share closed by `until`
    median_ttr_s: float | None  # time-to-resolve of those closed in the window
    p90_ttr_s: float | None  # nearest-rank 90th percentile
    acknowledged: int  # acknowledged in the window
    mean_tta_s: float | None  # mean time-to-acknowledge of those

    def as_json(self) -> dict[str, Any]:
        """JSON-able."""
        return dict(vars(self))


@dataclass(frozen=True)
class IncidentStats:
    """:meth:`IncidentEngine.stats`: overall, by kind, by severity; open at ``until``."""

    since: dt.datetime
    until: dt.datetime
    total: KindStats
    by_kind: dict[str, KindStats]
    by_severity: dict[str, KindStats]
    open_at_until: int

    def as_json(self) -> dict[str, Any]:
        """JSON-able."""
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "total": self.total.as_json(),
            "by_kind": {k: v.as_json() for k, v in self.by_kind.items()},
            "by_severity": {k: v.as_json() for k, v in self.by_severity.items()},
            "open_at_until": self.open_at_until,
        }


_OpenKey = tuple[str, str, str | None]


@dataclass
class _Txn:
    touched: list[str] = field(default_factory=list)
    events: list[IncidentEvent] = field(default_factory=list)
    saved: tuple[Any, ...] | None = None


def _num(incident_id: str) -> int:
    tail = incident_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class IncidentEngine:
    """Incidents in memory, every change written through ``journal`` in one transaction.

    ``now`` is the clock (``Clock.now``); every method takes ``at=`` to say when instead.
    ``incidents`` and ``events`` are what a store loaded (:meth:`IncidentStore.load`). A change
    the journal refuses raises and leaves the engine as it was.
    """

    def __init__(
        self,
        directory: Directory | None = None,
        *,
        now: Callable[[], dt.datetime],
        journal: IncidentJournal | None = None,
        settings: IncidentSettings | None = None,
        incidents: Iterable[Incident] = (),
        events: Iterable[IncidentEvent] = (),
    ) -> None:
        self.directory = directory or Directory()
        self.now = now
        self.journal = journal
        self.settings = settings or IncidentSettings()
        self._lock = threading.RLock()
        self._incidents: dict[str, Incident] = {}
        self._open: dict[_OpenKey, str] = {}
        self._latest: dict[FaultKey, str] = {}
        self._events: dict[str, list[IncidentEvent]] = {}
        self._next_id = 1
        self._next_seq = 1
        for inc in sorted(incidents, key=lambda i: _num(i.id)):
            self._incidents[inc.id] = inc
            self._next_id = max(self._next_id, _num(inc.id) + 1)
        for ev in sorted(events, key=lambda e: e.seq):
            self._events.setdefault(ev.incident_id, []).append(ev)
            self._next_seq = max(self._next_seq, ev.seq + 1)
        self._reindex()
        #: Faults active before a restart, not yet seen again (see the module docstring).
        self._carried: set[FaultKey] = set(self.active_faults())
        self._first_sync: dt.datetime | None = None

    # -- reads -------------------------------------------------------------------------------
    def get(self, incident_id: str) -> Incident:
        """One incident; :class:`UnknownIncident` if there is none."""
        with self._lock:
            inc = self._incidents.get(incident_id)
        if inc is None:
            raise UnknownIncident(f"no incident {incident_id!r}")
        return inc

    def incidents(
        self,
        *,
        open_only: bool = False,
        device_kind: str | None = None,
        device_id: str | None = None,
    ) -> list[Incident]:
        """Incidents, newest first, optionally only open ones or one device's."""
        with self._lock:
            out = [
                i
                for i in self._incidents.values()
                if (not open_only or i.is_open)
                and (device_kind is None or i.device_kind == device_kind)
                and (device_id is None or i.device_id == device_id)
            ]
        return sorted(out, key=lambda i: _num(i.id), reverse=True)

    def history(self, incident_id: str) -> list[IncidentEvent]:
        """An incident's events, oldest first."""
        self.get(incident_id)
        with self._lock:
            return list(self._events.get(incident_id, ()))

    def active_faults(self) -> dict[FaultKey, str]:
        """Faults the engine believes active, → the incident that carries each."""
        with self._lock:
            return {k: i for k, i in self._latest.items() if self._incidents[i].fault_active}

    # -- inputs from the devices -------------------------------------------------------------
    def observe(
        self,
        device_kind: str,
        device_id: str,
        fault_kind: str,
        active: bool,
        detail: str = "",
        at: dt.datetime | None = None,
    ) -> Incident | None:
        """A fault of a device is (still) active or has cleared; returns the incident it
        opened, re-opened, joined or closed, or None when nothing changed."""
        if device_kind not in DEVICE_KINDS:
            raise ValueError(f"device_kind {device_kind!r} is not one of {DEVICE_KINDS}")
        if not device_id or not fault_kind:
            raise ValueError("device_id and fault_kind must not be empty")
        t = _utc(at) if at is not None else _utc(self.now(), "now()")
        key = FaultKey(device_kind, device_id, fault_kind)
        with self._txn() as txn:
            inc_id = self._raise(txn, key, detail, t) if active else self._drop(txn, key, t)
            if not active:
                self._carried.discard(key)
        return None if inc_id is None else self._incidents[inc_id]

    def sync(self, snapshot: FaultSnapshot, at: dt.datetime | None = None) -> list[Incident]:
        """Bring the incidents in line with every fault active now (once a second is fine;
        without a difference it writes nothing). Returns the incidents that changed."""
        t = _utc(at) if at is not None else _utc(self.now(), "now()")
        with self._txn() as txn:
            if self._first_sync is None:
                self._first_sync = t
            in_grace = (t - self._first_sync).total_seconds() < self.settings.restart_grace_s
            known = self.active_faults()
            for key in sorted(snapshot.faults):
                self._carried.discard(key)
                if key not in known:
                    self._raise(txn, key, snapshot.faults[key], t)
            for key in sorted(known):
                if key in snapshot.faults or key.device_kind not in snapshot.covers:
                    continue
                if in_grace and key in self._carried:
                    continue
                self._drop(txn, key, t)
            if not in_grace:
                self._carried.clear()
            changed = list(dict.fromkeys(txn.touched))
        return [self._incidents[i] for i in changed]

    # -- people ------------------------------------------------------------------------------
    def acknowledge(
        self, incident_id: str, who: str, note: str = "", at: dt.datetime | None = None
    ) -> Incident:
        """A person has seen the incident (refused when closed or acknowledged already)."""
        _person(who)
        t = _utc(at) if at is not None else _utc(self.now(), "now()")
        with self._txn() as txn:
            inc = self.get(incident_id)
            if not inc.is_open:
                raise IncidentClosed(
                    f"incident {inc.id} is {inc.state.value} since {_iso(inc.closed_at)}: "
                    "nothing to acknowledge"
                )
            if inc.state is State.ACKNOWLEDGED:
                raise AlreadyAcknowledged(
                    f"incident {inc.id} was acknowledged by {inc.acked_by} at {_iso(inc.acked_at)}"
                )
            t = max(t, inc.opened_at)
            self._put(txn, replace(inc, state=State.ACKNOWLEDGED, acked_at=t, acked_by=who))
            self._event(txn, inc.id, t, EventKind.ACKED, who, note)
        return self._incidents[incident_id]

    def resolve(
        self,
        incident_id: str,
        who: str,
        note: str,
        *,
        force: bool = False,
        at: dt.datetime | None = None,
    ) -> Incident:
        """A person closes the incident with a note (see the rules in the module docstring)."""
        _person(who)
        if not note.strip():
            raise IncidentError("note: say what was done (a resolution needs a note)")
        t = _utc(at) if at is not None else _utc(self.now(), "now()")
        with self._txn() as txn:
            inc = self.get(incident_id)
            if not inc.is_open:
                raise IncidentClosed(
                    f"incident {inc.id} is already {inc.state.value} "
                    f"({inc.closed_by}, {_iso(inc.closed_at)})"
                )
            if inc.fault_active and not force:
                raise FaultStillActive(
                    f"incident {inc.id}: {inc.device_kind} {inc.device_id} still reports "
                    f"{inc.fault_kind} ({inc.detail}); it closes by itself when the fault "
                    "clears, or resolve with force=True to close it while the fault persists"
                )
            t = max(t, inc.opened_at)
            self._put(
                txn,
                replace(
                    inc,
                    state=State.RESOLVED,
                    closed_at=t,
                    closed_by=who,
                    resolution=note,
                    acked_at=inc.acked_at or t,
                    acked_by=inc.acked_by or who,
                ),
            )
            forced = " (forced: the fault is still active)" if inc.fault_active else ""
            self._event(txn, inc.id, t, EventKind.RESOLVED, who, note + forced)
        return self._incidents[incident_id]

    def report(
        self,
        location: tuple[float, float] | None = None,
        device_id: str | None = None,
        note: str = "",
        reporter: str = "",
        *,
        kind: str | None = None,
        at: dt.datetime | None = None,
    ) -> ReportOutcome:
        """A person reports a problem at ``location`` (lat, lon) or on ``device_id``."""
        if not reporter.strip():
            raise BadReport("reporter: say who reports (a name, a phone number, a hotline id)")
        hint_name = kind or "other"
        hint = REPORT_HINTS.get(hint_name)
        if hint is None:
            raise BadReport(f"kind: {kind!r} is not one of {', '.join(REPORT_HINTS)}")
        loc: tuple[float, float] | None = None
        if location is not None:
            lat, lon = float(location[0]), float(location[1])
            if not (math.isfinite(lat) and -90 <= lat <= 90):
                raise BadReport(f"location.lat: {location[0]!r} is not a latitude (-90…90)")
            if not (math.isfinite(lon) and -180 <= lon <= 180):
                raise BadReport(f"location.lon: {location[1]!r} is not a longitude (-180…180)")
            loc = (lat, lon)
        t = _utc(at) if at is not None else _utc(self.now(), "now()")
        place: Place | None = None
        distance: float | None = None
        if device_id:
            place = self.directory.find(device_id)
            if loc is not None and place.location is not None:
                distance = haversine_m(loc, place.location)
        elif loc is not None:
            found = self.directory.nearest(loc, self.settings.match_radius_m, hint.device_kind)
            if found is not None:
                place, distance = found
        else:
            raise BadReport("give a location (lat, lon) or a device_id")
        text = note.strip() or hint_name
        where = f" at {loc[0]:.6f},{loc[1]:.6f}" if loc else ""
        ev_note = f"{hint_name}{where}: {text}"
        with self._txn() as txn:
            joined = False
            if place is None:
                inc_id = self._new(
                    txn,
                    origin="reported",
                    device=None,
                    fault_kind=None,
                    detail=text,
                    at=t,
                    note=ev_note,
                    who=reporter,
                    hint_name=hint_name,
                    loc=loc,
                )
            else:
                target = self._join_target(place, hint)
                if target is not None:
                    joined = True
                    inc = self._incidents[target]
                    self._put(
                        txn,
                        replace(
                            inc,
                            reports=inc.reports + 1,
                            severity=_worse(inc.severity, hint.severity),
                        ),
                    )
                    self._event(txn, inc.id, t, EventKind.REPORTED, reporter, ev_note)
                    inc_id = inc.id
                else:
                    inc_id = self._open_report(
                        txn, place, hint_name, text, loc, t, ev_note, reporter
                    )
        return ReportOutcome(self._incidents[inc_id], place, distance, joined)

    # -- figures -----------------------------------------------------------------------------
    def stats(self, since: dt.datetime, until: dt.datetime | None = None) -> IncidentStats:
        """Figures over ``[since, until)`` (``until`` default now), from the event history, so a
        past window is reported as it stood then (see :class:`KindStats`)."""
        since = _utc(since, "since")
        until = _utc(until, "until") if until is not None else _utc(self.now(), "now()")
        if until < since:
            raise ValueError("until is before since")
        rows: list[tuple[Incident, tuple[dt.datetime, EventKind] | None]] = []
        with self._lock:
            for inc in self._incidents.values():
                if inc.opened_at >= until:
                    continue
                rows.append((inc, _closure_as_of(self._events.get(inc.id, ()), until)))

        def figures(sel: list[tuple[Incident, tuple[dt.datetime, EventKind] | None]]) -> KindStats:
            opened = [(i, c) for i, c in sel if since <= i.opened_at]
            closed = [(i, c) for i, c in sel if c is not None and since <= c[0]]
            ttr = sorted((c[0] - i.opened_at).total_seconds() for i, c in closed if c is not None)
            acked = [
                (i.acked_at - i.opened_at).total_seconds()
                for i, _ in sel
                if i.acked_at is not None and since <= i.acked_at < until
            ]
            return KindStats(
                opened=len(opened),
                closed=len(closed),
                cleared=sum(1 for _, c in closed if c is not None and c[1] is EventKind.CLEARED),
                resolved=sum(1 for _, c in closed if c is not None and c[1] is EventKind.RESOLVED),
                resolution_rate=(
                    sum(1 for _, c in opened if c is not None) / len(opened) if opened else None
                ),
                median_ttr_s=statistics.median(ttr) if ttr else None,
                p90_ttr_s=ttr[math.ceil(0.9 * len(ttr)) - 1] if ttr else None,
                acknowledged=len(acked),
                mean_tta_s=statistics.fmean(acked) if acked else None,
            )

        by_kind: dict[str, list[tuple[Incident, tuple[dt.datetime, EventKind] | None]]] = {}
        by_sev: dict[str, list[tuple[Incident, tuple[dt.datetime, EventKind] | None]]] = {}
        for row in rows:
            by_kind.setdefault(row[0].kind, []).append(row)
            by_sev.setdefault(row[0].severity.value, []).append(row)
        return IncidentStats(
            since=since,
            until=until,
            total=figures(rows),
            by_kind={k: figures(v) for k, v in sorted(by_kind.items())},
            by_severity={
                k: figures(v) for k, v in sorted(by_sev.items(), key=lambda kv: -_RANK[kv[0]])
            },
            open_at_until=sum(1 for _, c in rows if c is None),
        )

    # -- internals ---------------------------------------------------------------------------
    @contextmanager
    def _txn(self) -> Iterator[_Txn]:
        """Everything inside is one transaction: written together, or undone together."""
        with self._lock:
            txn = _Txn()
            try:
                yield txn
                if txn.touched and self.journal is not None:
                    ids = list(dict.fromkeys(txn.touched))
                    self.journal.save([self._incidents[i] for i in ids], txn.events)
            except BaseException:
                if txn.saved is not None:
                    (self._incidents, self._open, self._latest, self._next_id, self._next_seq) = (
                        txn.saved
                    )
                raise
            for ev in txn.events:
                self._events.setdefault(ev.incident_id, []).append(ev)

    def _put(self, txn: _Txn, inc: Incident) -> None:
        if txn.saved is None:
            txn.saved = (
                dict(self._incidents),
                dict(self._open),
                dict(self._latest),
                self._next_id,
                self._next_seq,
            )
        old = self._incidents.get(inc.id)
        if old is not None:
            self._unindex(old)
        self._incidents[inc.id] = inc
        self._index(inc)
        txn.touched.append(inc.id)

    def _event(
        self, txn: _Txn, incident_id: str, at: dt.datetime, kind: EventKind, who: str, note: str
    ) -> None:
        txn.events.append(IncidentEvent(self._next_seq, incident_id, at, kind, who, note))
        self._next_seq += 1

    def _open_key(self, inc: Incident) -> _OpenKey | None:
        if inc.device_kind is None or inc.device_id is None:
            return None
        return (inc.device_kind, inc.device_id, inc.fault_kind)

    def _index(self, inc: Incident) -> None:
        ok = self._open_key(inc)
        if ok is not None and inc.is_open:
            self._open[ok] = inc.id
        fk = inc.fault_key
        if fk is not None:
            cur = self._latest.get(fk)
            if (
                cur is None
                or cur == inc.id
                or _latest_rank(inc) >= _latest_rank(self._incidents[cur])
            ):
                self._latest[fk] = inc.id

    def _unindex(self, inc: Incident) -> None:
        ok = self._open_key(inc)
        if ok is not None and self._open.get(ok) == inc.id:
            del self._open[ok]

    def _reindex(self) -> None:
        self._open.clear()
        self._latest.clear()
        for inc in self._incidents.values():
            self._index(inc)

    def _new(
        self,
        txn: _Txn,
        *,
        origin: str,
        device: Place | None,
        fault_kind: str | None,
        detail: str,
        at: dt.datetime,
        note: str,
        who: str,
        hint_name: str | None = None,
        loc: tuple[float, float] | None = None,
    ) -> str:
        """Open a new incident; a bound one (``fault_kind``) carries the active fault."""
        sev = severity_of(fault_kind) if fault_kind is not None else Severity.MINOR
        if hint_name is not None:
            sev = _worse(sev, REPORT_HINTS[hint_name].severity)
        inc = Incident(
            id=f"INC-{self._next_id:06d}",
            origin=origin,
            device_kind=device.kind if device else None,
            device_id=device.id if device else None,
            fault_kind=fault_kind,
            hint=hint_name,
            severity=sev,
            state=State.OPEN,
            detail=detail,
            opened_at=at,
            location=loc or (device.location if device else None),
            fault_active=fault_kind is not None,
            reports=1 if origin == "reported" else 0,
        )
        self._next_id += 1
        self._put(txn, inc)
        kind = EventKind.REPORTED if origin == "reported" else EventKind.OPENED
        self._event(txn, inc.id, at, kind, who, note)
        return inc.id

    def _place_of(self, kind: str, device_id: str) -> Place:
        return self.directory.get(kind, device_id) or Place(kind, device_id)

    def _raise(self, txn: _Txn, key: FaultKey, detail: str, at: dt.datetime) -> str | None:
        latest_id = self._latest.get(key)
        latest = self._incidents[latest_id] if latest_id is not None else None
        if latest is not None and latest.fault_active:
            return None  # known already: idempotent (open, or closed by a person with force)
        note = f"{key.fault_kind}: {detail}" if detail else key.fault_kind
        adopt = self._unbound_report_for(key)
        if adopt is not None:
            self._put(
                txn,
                replace(
                    adopt,
                    device_kind=key.device_kind,
                    device_id=key.device_id,
                    fault_kind=key.fault_kind,
                    fault_active=True,
                    severity=_worse(adopt.severity, severity_of(key.fault_kind)),
                    detail=detail or adopt.detail,
                ),
            )
            self._event(txn, adopt.id, at, EventKind.LINKED, SYSTEM, note)
            return adopt.id
        if latest is not None and not latest.is_open:
            gone = latest.fault_cleared_at or latest.closed_at or latest.opened_at
            if (at - gone).total_seconds() <= self.settings.reopen_window_s:
                self._put(
                    txn,
                    replace(
                        latest,
                        state=State.ACKNOWLEDGED if latest.acked_at else State.OPEN,
                        closed_at=None,
                        closed_by=None,
                        resolution=None,
                        fault_active=True,
                        fault_cleared_at=None,
                        reopened=latest.reopened + 1,
                        detail=detail or latest.detail,
                    ),
                )
                self._event(txn, latest.id, at, EventKind.REOPENED, SYSTEM, note)
                return latest.id
        place = self._place_of(key.device_kind, key.device_id)
        return self._new(
            txn,
            origin="fault",
            device=place,
            fault_kind=key.fault_kind,
            detail=detail or key.fault_kind,
            at=at,
            note=note,
            who=SYSTEM,
        )

    def _drop(self, txn: _Txn, key: FaultKey, at: dt.datetime) -> str | None:
        inc_id = self._latest.get(key)
        if inc_id is None or not self._incidents[inc_id].fault_active:
            return None
        inc = self._incidents[inc_id]
        if inc.is_open:
            t = max(at, inc.opened_at)
            self._put(
                txn,
                replace(
                    inc,
                    state=State.CLEARED,
                    closed_at=t,
                    closed_by=SYSTEM,
                    resolution="fault cleared",
                    fault_active=False,
                    fault_cleared_at=t,
                ),
            )
            self._event(txn, inc.id, t, EventKind.CLEARED, SYSTEM, f"{key.fault_kind} cleared")
        else:
            t = max(at, inc.closed_at or inc.opened_at)
            self._put(txn, replace(inc, fault_active=False, fault_cleared_at=t))
            self._event(
                txn, inc.id, t, EventKind.FAULT_CLEARED, SYSTEM, f"{key.fault_kind} cleared"
            )
        return inc.id

    def _unbound_report_for(self, key: FaultKey) -> Incident | None:
        """The oldest open report on this device (or its group) that this fault explains."""
        places = [(key.device_kind, key.device_id)]
        if key.device_kind == "node":
            p = self.directory.get("node", key.device_id)
            if p is not None and p.group is not None:
                places.append(("group", p.group))
        found = [
            self._incidents[i]
            for dk, did in places
            if (i := self._open.get((dk, did, None))) is not None
        ]
        found = [i for i in found if REPORT_HINTS.get(i.hint or "other", _ANY).fits(key.fault_kind)]
        return min(found, key=lambda i: (i.opened_at, _num(i.id))) if found else None

    def _devices_of(self, place: Place) -> list[tuple[str, str]]:
        if place.kind == "group":
            return [("group", place.id)] + [("node", n) for n in self.directory.members(place.id)]
        if place.kind == "node" and place.group is not None:
            return [("node", place.id), ("group", place.group)]
        return [(place.kind, place.id)]

    def _join_target(self, place: Place, hint: ReportHint) -> str | None:
        devices = set(self._devices_of(place))
        cands = [
            self._incidents[i]
            for (dk, did, fk), i in self._open.items()
            if (dk, did) in devices and hint.fits(fk)
        ]
        if not cands:
            return None
        best = min(cands, key=lambda i: (-i.severity.rank, i.opened_at, _num(i.id)))
        return best.id

    def _open_report(
        self,
        txn: _Txn,
        place: Place,
        hint_name: str,
        text: str,
        loc: tuple[float, float] | None,
        at: dt.datetime,
        note: str,
        who: str,
    ) -> str:
        """No open incident fits: bind to an active fault of the place that fits, else open
        an unbound report."""
        hint = REPORT_HINTS[hint_name]
        devices = set(self._devices_of(place))
        active = [
            (k, i)
            for k, i in self.active_faults().items()
            if (k.device_kind, k.device_id) in devices and hint.fits(k.fault_kind)
        ]
        if active:
            key, old_id = min(active, key=lambda ki: (-severity_of(ki[0].fault_kind).rank, ki[0]))
            old = self._incidents[old_id]
            # The fault now belongs to the new incident (one incident carries a fault).
            self._put(txn, replace(old, fault_active=False))
            return self._new(
                txn,
                origin="reported",
                device=self._place_of(key.device_kind, key.device_id),
                fault_kind=key.fault_kind,
                detail=text,
                at=at,
                note=note,
                who=who,
                hint_name=hint_name,
                loc=loc,
            )
        return self._new(
            txn,
            origin="reported",
            device=place,
            fault_kind=None,
            detail=text,
            at=at,
            note=note,
            who=who,
            hint_name=hint_name,
            loc=loc,
        )


_ANY = ReportHint(None, None, Severity.MINOR)


def _latest_rank(inc: Incident) -> tuple[bool, bool, dt.datetime, int]:
    """Which incident speaks for a fault: the open one, else the one carrying the active
    fault, else the last closed."""
    return (
        inc.is_open,
        inc.fault_active,
        inc.closed_at or inc.opened_at,
        _num(inc.id),
    )


def _closure_as_of(
    events: Iterable[IncidentEvent], until: dt.datetime
) -> tuple[dt.datetime, EventKind] | None:
    """When and how an incident stood closed at ``until`` (None: open then)."""
    closed: tuple[dt.datetime, EventKind] | None = None
    for ev in events:
        if ev.at >= until:
            continue
        if ev.kind in _CLOSING:
            closed = (ev.at, ev.kind)
        elif ev.kind is EventKind.REOPENED:
            closed = None
    return closed


def _person(who: str) -> None:
    if not who.strip():
        raise IncidentError("who: say who acts (the API passes the token's name)")
