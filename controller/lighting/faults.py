"""Faults the controller infers from what light nodes report (pure).

A node reports level, power and its own diagnoses; the controller compares that with what it
asked for and with the lamp's rating:

* ``lamp_failure``   commanded on, settled, yet drawing next to nothing;
* ``day_burner``     the schedule says off, yet the lamp is lit;
* ``node_offline``   the node's last will fired, or it has been silent too long;
* ``power_out_of_band`` lit, settled, drawing far more or less than the lamp should;
* ``driver_failure`` / ``supply_lost``  the node's own diagnosis, relayed;
* ``wrong_group``    the node reports another group than the config gives it: it listens to
  that group's commands, so it shows that group's levels, not its own (a commissioning
  error: the node's group setting or the config is wrong).

Every alarm has a ``since``; an alarm that persists keeps its first ``since`` so operators
see how long a lamp has been dark.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field

from controller.config import FaultSettings
from controller.lighting.report import NodeReport
from devices.lights import AlarmEntry, NodeFault
from schedules.energy import LampPowerModel

__all__ = ["FaultDetector", "NodeView"]

#: Alarms judged from measured power, which needs a settled node.
_POWER_ALARMS = ("lamp_failure", "power_out_of_band", "day_burner")


@functools.lru_cache(maxsize=256)
def _lamp(rated_w: float) -> LampPowerModel:
    """The power model of a rating, built once (every node is judged at every step)."""
    return LampPowerModel(rated_w=rated_w)


@dataclass(slots=True)
class NodeView:
    """What the controller knows about one node at one instant (read-only by convention).

    Not a frozen dataclass: one is built for every node at every lighting step, and a frozen
    one costs three times as much to build (23 ms against 8 ms for 10,000 nodes).
    """

    node: str
    group: str
    lamp_w: float
    online: bool | None
    state: NodeReport | None
    state_age_s: float | None
    wanted_level: float | None
    group_cmd_age_s: float


@dataclass
class FaultDetector:
    """Keeps the active alarms of every node and reports changes."""

    settings: FaultSettings
    active: dict[str, dict[str, AlarmEntry]] = field(default_factory=dict)

    def diagnose(
        self, v: NodeView, link_up_for_s: float, previous: dict[str, AlarmEntry] | None = None
    ) -> dict[str, str]:
        """Alarm kind → detail for one node.

        Power can only be judged once a node has settled (no ramp in progress, the command
        old enough). While it has not, the power alarms it already had are kept rather than
        cleared, so an alarm does not flicker off and on with every command.
        """
        s = self.settings
        previous = previous or {}
        found: dict[str, str] = {}
        st = v.state
        if v.online is False:
            found["node_offline"] = "last will: the node dropped off the broker"
        elif (
            v.state_age_s is not None
            and v.state_age_s > s.stale_after_s
            and link_up_for_s > s.stale_after_s
        ):
            # Only judge silence when we ourselves have been connected long enough to hear.
            found["node_offline"] = f"no state for {v.state_age_s:.0f} s"
        if st is None:
            return found
        if st.group != v.group:
            found["wrong_group"] = (
                f"reports group {st.group!r}; the config puts it in {v.group!r}, so it follows "
                "the other group's commands"
            )
        for fault in st.faults:
            if fault is NodeFault.DRIVER_FAILURE:
                found["driver_failure"] = "reported by the node"
            elif fault is NodeFault.SUPPLY_LOST:
                found["supply_lost"] = "reported by the node"
        if "node_offline" in found:
            return found
        lamp = _lamp(v.lamp_w)
        settled = abs(st.level - st.target) < 0.5 and v.group_cmd_age_s >= s.settle_s
        if not settled:
            for kind in _POWER_ALARMS:
                if kind in previous:
                    found[kind] = previous[kind].detail
            return found
        if v.wanted_level is not None and v.wanted_level <= 0.0:
            lit = st.level > s.day_burner_level or st.power_w > lamp.power_w(s.day_burner_level)
            if lit:
                found["day_burner"] = (
                    f"lit at {st.level:.0f} % / {st.power_w:.0f} W while the schedule says off"
                )
            return found
        if st.level <= 0.5 or "driver_failure" in found or "supply_lost" in found:
            return found
        expected = lamp.power_w(st.level)
        if st.power_w < s.lamp_failure_ratio * expected:
            found["lamp_failure"] = (
                f"at {st.level:.0f} % drawing {st.power_w:.1f} W, expected ≈{expected:.0f} W"
            )
        elif abs(st.power_w - expected) > s.power_band * expected:
            found["power_out_of_band"] = (
                f"at {st.level:.0f} % drawing {st.power_w:.1f} W, expected "
                f"{expected * (1 - s.power_band):.0f}–{expected * (1 + s.power_band):.0f} W"
            )
        return found

    def update(
        self, views: list[NodeView], now: dt.datetime, *, link_up_for_s: float
    ) -> dict[str, list[AlarmEntry]]:
        """Diagnose every node; return the full alarm list of each node whose alarms changed."""
        changed: dict[str, list[AlarmEntry]] = {}
        for v in views:
            old = self.active.get(v.node, {})
            found = self.diagnose(v, link_up_for_s, old)
            if found.keys() == old.keys():
                # Same kinds: keep the original 'since', refresh nothing.
                continue
            new = {
                kind: old[kind] if kind in old else AlarmEntry(kind=kind, since=now, detail=detail)
                for kind, detail in found.items()
            }
            if new:
                self.active[v.node] = new
            else:
                self.active.pop(v.node, None)
            changed[v.node] = list(new.values())
        return changed

    def alarms(self) -> dict[str, list[AlarmEntry]]:
        """Every node with at least one active alarm."""
        return {n: list(a.values()) for n, a in self.active.items() if a}
