"""What the control loops record: measurement names, codes and pure point builders.

Every measurement, tag and field is documented for users in ``docs/telemetry.md``; this
module is the one place the names are spelled. Builders are pure: they return a
:class:`Sample` (measurement, tags, fields) and :func:`record` hands it to a
:class:`~controller.telemetry.recorder.Recorder`.

Rules the builders keep (see :mod:`controller.telemetry.lineproto`):

* fields are numbers or booleans only — states and reasons are small integer codes
  (tables below), because VictoriaMetrics stores a string field as 0;
* tags carry identifiers with a bounded number of values (node, group, intersection,
  detector, fault kind) and never a measured value, so the series count stays fixed;
* an optional value that is unknown is left out of the point, never written as a sentinel.

Signal events follow the *Indiana Traffic Signal Hi Resolution Data Logger Enumerations*
(Sturdevant et al., INDOT/Purdue 2012), the event log that signal performance measures
(ATSPM: split failures, arrivals on green, Purdue coordination diagrams, pedestrian delay)
are built from: :class:`EventCode`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import Final, NamedTuple

from controller.telemetry.lineproto import FieldValue
from controller.telemetry.recorder import Recorder

__all__ = [
    "CONTROLLER_HEALTH",
    "DECISION_REASONS",
    "DETECTOR_FAULT_CODES",
    "LIGHT_ALARM_BITS",
    "LIGHT_FAULT",
    "LIGHT_GROUP",
    "LIGHT_NODE",
    "LIGHT_SOURCES",
    "MEASUREMENTS",
    "SIGNAL_DECISION",
    "SIGNAL_DETECTOR",
    "SIGNAL_EVENT",
    "SIGNAL_INTERSECTION",
    "STRATEGIES",
    "SYNC_STATES",
    "TELEMETRY_OUTBOX",
    "EventCode",
    "Sample",
    "alarm_mask",
    "light_fault",
    "light_group",
    "light_node_online",
    "light_node_state",
    "record",
    "signal_decision",
    "signal_detector",
    "signal_event",
    "signal_intersection",
    "strategy_code",
]

# -- measurement names -----------------------------------------------------------------------

LIGHT_NODE: Final = "light_node"
"""One point per node state received (and per availability change)."""
LIGHT_GROUP: Final = "light_group"
"""One point per lighting group every ``telemetry.intervals.group_s``."""
LIGHT_FAULT: Final = "light_fault"
"""One point when an alarm on a node is raised and one when it clears."""
SIGNAL_EVENT: Final = "signal_event"
"""The high-resolution event log: one point per Indiana event."""
SIGNAL_DETECTOR: Final = "signal_detector"
"""Counts and occupancy per detector every ``telemetry.intervals.detector_s``."""
SIGNAL_DECISION: Final = "signal_decision"
"""One point whenever the strategy's request changes during a green."""
SIGNAL_INTERSECTION: Final = "signal_intersection"
"""State of an intersection and its cabinet: on change and every detector interval."""
CONTROLLER_HEALTH: Final = "controller_health"
"""Recorded by the telemetry service (event-loop lag, links, queues) every ``health_s``."""
TELEMETRY_OUTBOX: Final = "telemetry_outbox"
"""Recorded by the telemetry service (the outbox's state) every ``health_s``."""

MEASUREMENTS: Final = (
    LIGHT_NODE,
    LIGHT_GROUP,
    LIGHT_FAULT,
    SIGNAL_EVENT,
    SIGNAL_DETECTOR,
    SIGNAL_DECISION,
    SIGNAL_INTERSECTION,
    CONTROLLER_HEALTH,
    TELEMETRY_OUTBOX,
)

# -- codes -----------------------------------------------------------------------------------


class EventCode(IntEnum):
    """Indiana hi-res event codes this controller logs (``param`` in brackets).

    Phase and pedestrian events carry the signal group's number (position in the
    intersection's ``groups`` list, from 1); detector events the cabinet input (``channel``
    + 1, as Indiana numbers detector channels from 1).
    """

    PHASE_BEGIN_GREEN = 1  # [group] the heads show green
    PHASE_GAP_OUT = 4  # [group] green ended because the traffic gapped out
    PHASE_MAX_OUT = 5  # [group] green ended at its maximum
    PHASE_FORCE_OFF = 6  # [group] green ended by the strategy (cycle plan, adaptive choice)
    PHASE_BEGIN_YELLOW = 8  # [group] yellow (vehicle clearance) begins
    PHASE_END_YELLOW = 9  # [group] yellow ends
    PHASE_BEGIN_RED_CLEARANCE = 10  # [group] red after the yellow: the all-red begins
    PHASE_END_RED_CLEARANCE = 11  # [group] the group's longest all-red has run out
    PED_BEGIN_WALK = 21  # [group] a crossing shows walk
    PED_BEGIN_CLEARANCE = 22  # [group] flashing don't walk (pedestrian clearance)
    PED_BEGIN_DONT_WALK = 23  # [group] steady don't walk
    PED_DARK = 24  # [group] pedestrian heads dark (flash)
    PHASE_CALL_REGISTERED = 43  # [group] a vehicle group starts calling for green
    PHASE_CALL_DROPPED = 44  # [group] its call ends (served or gone)
    PED_CALL_REGISTERED = 45  # [group] a crossing starts calling for its walk
    DETECTOR_OFF = 81  # [channel] a loop's presence ends
    DETECTOR_ON = 82  # [channel] a loop's presence begins
    DETECTOR_RESTORED = 83  # [channel] a failed loop works again
    DETECTOR_FAULT_OTHER = 84  # [channel] camera zone stale
    DETECTOR_FAULT_WATCHDOG = 85  # [channel] silent: no actuation for too long
    DETECTOR_FAULT_SHORTED = 87  # [channel] stuck: presence without a break
    DETECTOR_FAULT_EXCESSIVE_CHANGE = 88  # [channel] erratic counts or chattering presence
    PED_DETECTOR_OFF = 89  # [channel] push button released
    PED_DETECTOR_ON = 90  # [channel] push button pressed
    PED_DETECTOR_FAILED = 91  # [channel] a push button failed (any kind)
    PED_DETECTOR_RESTORED = 92  # [channel] it works again


DETECTOR_FAULT_CODES: Final[Mapping[str, EventCode]] = {
    "silent": EventCode.DETECTOR_FAULT_WATCHDOG,
    "stuck": EventCode.DETECTOR_FAULT_SHORTED,
    "erratic": EventCode.DETECTOR_FAULT_EXCESSIVE_CHANGE,
    "chattering": EventCode.DETECTOR_FAULT_EXCESSIVE_CHANGE,
    "stale": EventCode.DETECTOR_FAULT_OTHER,
}
"""Detector diagnosis (``controller.signals.detectors.FaultKind``) → Indiana fault code."""

LIGHT_ALARM_BITS: Final[Mapping[str, int]] = {
    "lamp_failure": 1,
    "day_burner": 2,
    "node_offline": 4,
    "power_out_of_band": 8,
    "driver_failure": 16,
    "supply_lost": 32,
    "wrong_group": 64,
}
"""Bit of each lighting alarm kind in the ``faults`` / ``alarms`` bitmask fields."""

LIGHT_SOURCES: Final[Mapping[str, int]] = {"program": 0, "override": 1, "traffic": 2}
"""What set a group's level (``light_group.source``)."""

SYNC_STATES: Final[Mapping[str, int]] = {
    "down": 0,
    "handover": 1,
    "control": 2,
    "cabinet_fault": 3,
    "flash": 4,
}
"""Where a runner stands with its cabinet (``signal_intersection.sync``)."""

STRATEGIES: Final[Mapping[str, int]] = {"fixed": 1, "actuated": 2, "adaptive": 3}
"""Strategy kinds (``strategy`` fields); a fixed-time plan is ``fixed:<plan>``."""

DECISION_REASONS: Final[Mapping[str, int]] = {
    "other": 0,
    "rest": 1,
    "extend": 2,
    "gap_out": 3,
    "scheduled": 4,
    "force_off": 5,
    "guard": 6,
    "early": 7,
    "hold": 8,
    "switch": 9,
}
"""Why the strategy asked what it asked (``signal_decision.reason``); see the docs."""


def strategy_code(name: str) -> int:
    """The :data:`STRATEGIES` code of a strategy name (``fixed:<plan>`` → fixed); 0 unknown."""
    return STRATEGIES.get(name.split(":", 1)[0], 0)


def alarm_mask(kinds: Iterable[str]) -> int:
    """Alarm or fault kinds as the :data:`LIGHT_ALARM_BITS` bitmask (unknown kinds ignored)."""
    mask = 0
    for k in kinds:
        mask |= LIGHT_ALARM_BITS.get(k, 0)
    return mask


# -- samples ---------------------------------------------------------------------------------


class Sample(NamedTuple):
    """One point without its timestamp: what a builder returns."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]


def record(recorder: Recorder, sample: Sample, at: float | None = None) -> None:
    """Hand ``sample`` to ``recorder`` (``at``: seconds since the epoch; None: its now)."""
    recorder.record(sample.measurement, sample.tags, sample.fields, at)


def _put(fields: dict[str, FieldValue], name: str, value: FieldValue | None) -> None:
    if value is not None:
        fields[name] = value


# -- lighting ----------------------------------------------------------------------------------


def light_node_state(
    group: str,
    node: str,
    *,
    level_pct: float,
    power_w: float,
    energy_wh: float,
    burn_h: float,
    switches: int,
    fallback: bool,
    faults: int,
    alarms: int,
) -> Sample:
    """A node's state report.

    ``energy_wh``, ``burn_h`` and ``switches`` are the node's own cumulative counters as
    reported (a node that restarts may start them again from zero); ``faults`` is the bitmask
    of what the node diagnosed itself, ``alarms`` of the controller's active alarms on it.
    """
    return Sample(
        LIGHT_NODE,
        {"group": group, "node": node},
        {
            "level_pct": float(level_pct),
            "power_w": float(power_w),
            "energy_wh": float(energy_wh),
            "burn_h": float(burn_h),
            "switches": int(switches),
            "fallback": bool(fallback),
            "faults": int(faults),
            "alarms": int(alarms),
            "online": True,
        },
    )


def light_node_online(group: str, node: str, online: bool) -> Sample:
    """A node's availability changed (its retained ``online``, or its last will)."""
    return Sample(LIGHT_NODE, {"group": group, "node": node}, {"online": bool(online)})


def light_group(
    group: str,
    *,
    level_pct: float,
    source: str,
    nodes: int,
    nodes_following: int,
    nodes_offline: int,
    nodes_alarm: int,
    power_w: float,
    energy_wh: float,
    lighting_class: int | None = None,
) -> Sample:
    """A group's interval summary.

    ``level_pct`` is the level the controller wants (end of the current ramp), ``power_w``
    the sum of the last power its nodes reported (nodes known to be offline left out),
    ``energy_wh`` the energy the controller has counted for the group since it started.
    """
    fields: dict[str, FieldValue] = {
        "level_pct": float(level_pct),
        "source": LIGHT_SOURCES.get(source, -1),
        "nodes": int(nodes),
        "nodes_following": int(nodes_following),
        "nodes_offline": int(nodes_offline),
        "nodes_alarm": int(nodes_alarm),
        "power_w": float(power_w),
        "energy_wh": float(energy_wh),
    }
    _put(fields, "lighting_class", lighting_class)
    return Sample(LIGHT_GROUP, {"group": group}, fields)


def light_fault(group: str, node: str, fault: str, active: bool) -> Sample:
    """An alarm on a node was raised (``active``) or cleared."""
    return Sample(
        LIGHT_FAULT,
        {"group": group, "node": node, "fault": fault},
        {"active": bool(active), "code": LIGHT_ALARM_BITS.get(fault, 0)},
    )


# -- signals -----------------------------------------------------------------------------------


def signal_event(
    intersection: str,
    code: int,
    param: int,
    *,
    group: str,
    detector: str | None = None,
) -> Sample:
    """One hi-res event: Indiana ``code`` and ``param`` (group number or channel + 1).

    Tags: the intersection, the signal group the event belongs to (a detector's group for
    detector events) and, for detector events, the detector.
    """
    tags = {"intersection": intersection, "group": group}
    if detector is not None:
        tags["detector"] = detector
    return Sample(SIGNAL_EVENT, tags, {"code": int(code), "param": int(param)})


def signal_detector(
    intersection: str,
    detector: str,
    group: str,
    kind: str,
    *,
    count: int,
    occupied_s: float,
    interval_s: float,
    failed: bool,
    fault: int = 0,
) -> Sample:
    """One detector over one interval: actuations, occupied time and health.

    Tags: the intersection, the detector, its signal group and its ``kind`` (``stopline``,
    ``upstream``, ``pushbutton``, ``camera``) — both fixed by the detector, so they add no
    series, and they let a query sum the stop-line counts of a group without a lookup.

    ``count`` is what the detector counted in the interval (vehicles, presses, or a camera
    zone's crossings), ``occupied_s`` how long its presence was on; ``occupancy_pct`` is
    derived. ``fault`` is the Indiana fault code while the detector is FAILED, else 0.
    """
    occ = 100.0 * occupied_s / interval_s if interval_s > 0 else 0.0
    return Sample(
        SIGNAL_DETECTOR,
        {"intersection": intersection, "detector": detector, "group": group, "kind": kind},
        {
            "count": int(count),
            "occupied_s": round(float(occupied_s), 3),
            "occupancy_pct": round(min(100.0, occ), 3),
            "interval_s": round(float(interval_s), 3),
            "failed": bool(failed),
            "fault": int(fault),
        },
    )


def signal_decision(
    intersection: str,
    *,
    strategy: str,
    reason: str,
    stage: int,
    next_stage: int,
    end_green: bool,
    green_s: float,
    hold_s: float | None = None,
    cost_veh_s: float | None = None,
) -> Sample:
    """What the strategy asked, when it changed: stage numbers count from 1 (0: none).

    ``green_s`` is how long the running stage had been green; ``hold_s`` (adaptive) how much
    longer the winning candidate holds it, ``cost_veh_s`` that candidate's predicted delay.
    """
    fields: dict[str, FieldValue] = {
        "strategy": strategy_code(strategy),
        "reason": DECISION_REASONS.get(reason, 0),
        "stage": int(stage),
        "next_stage": int(next_stage),
        "end_green": bool(end_green),
        "green_s": round(float(green_s), 3),
    }
    _put(fields, "hold_s", None if hold_s is None else round(float(hold_s), 3))
    _put(fields, "cost_veh_s", None if cost_veh_s is None else round(float(cost_veh_s), 1))
    return Sample(SIGNAL_DECISION, {"intersection": intersection}, fields)


def signal_intersection(
    intersection: str,
    *,
    sync: str,
    link_up: bool,
    alarms: int,
    strategy: str | None,
    plan: int = 0,
    cabinet_mode: int | None = None,
    cabinet_fault: int | None = None,
    stage_changes: int = 0,
    violations: int = 0,
    display_mismatches: int = 0,
    read_failures: int = 0,
    write_failures: int = 0,
) -> Sample:
    """An intersection's state; the counters are cumulative since the controller started.

    ``cabinet_mode`` / ``cabinet_fault`` are the cabinet's IR 3 / IR 4 codes as last read
    (left out until the cabinet has answered once); ``plan`` is the running fixed-time
    plan's number (position in ``fixed_plans``, from 1; 0 when not fixed-time).
    """
    fields: dict[str, FieldValue] = {
        "sync": SYNC_STATES.get(sync, -1),
        "link_up": bool(link_up),
        "alarms": int(alarms),
        "strategy": 0 if strategy is None else strategy_code(strategy),
        "plan": int(plan),
    }
    _put(fields, "cabinet_mode", cabinet_mode)
    _put(fields, "cabinet_fault", cabinet_fault)
    fields.update(
        stage_changes=int(stage_changes),
        violations=int(violations),
        display_mismatches=int(display_mismatches),
        read_failures=int(read_failures),
        write_failures=int(write_failures),
    )
    return Sample(SIGNAL_INTERSECTION, {"intersection": intersection}, fields)
