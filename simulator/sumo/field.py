"""The street side of the SUMO bridge: detectors SUMO measures, signal heads SUMO shows.

:class:`SumoField` is to a SUMO run what the simulated cabinets and cameras are to the built-in
traffic model: it owns the detectors placed in the network and turns what they measured into
what field devices report — 16-bit wrapping count and occupancy registers and presence bits
per loop, per-interval counts and queues per camera zone, push-button presses — and it shows
the state strings it is given. It never reads a vehicle's position: the controller must see the
street only through its detectors (design principle 5).

Loops are SUMO induction loops (E1): a vehicle is counted when it enters the loop (its entry
time falls within the last step) — at a stop-line loop when it *leaves* it, so that a car that
stops on the loop at red counts as a departure only when it drives off; occupancy is SUMO's occupied share of the step. Camera zones
are lane-area detectors (E2): the queue is the number of halting vehicles in the zone, the count is the vehicles over the stop line in the interval (the stop-line loop the
camera looks at). A push button is pressed when someone waits on a walking area to enter its
crossing.

Works with ``libsumo`` (in-process, fast) or ``traci``: the module is passed in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

__all__ = ["AreaSite", "ButtonSite", "LoopSite", "LoopState", "SumoField", "detectors_additional"]

_U16 = 0xFFFF


@dataclass(frozen=True)
class LoopSite:
    """An induction loop at ``pos_m`` along ``lane``.

    ``count_on_exit``: count a vehicle when it leaves the loop rather than when it enters. A
    stop-line loop counts *departures*: a car that stops on it at red is counted when it
    drives off at green, not while it waits.
    """

    id: str
    lane: str
    pos_m: float
    count_on_exit: bool = False


@dataclass(frozen=True)
class AreaSite:
    """A camera zone from ``start_m`` to ``end_m`` along ``lane``."""

    id: str
    lane: str
    start_m: float
    end_m: float


@dataclass(frozen=True)
class ButtonSite:
    """A push button at a crossing, pressed from the walking areas at its ends."""

    id: str
    crossing: str
    walkingareas: tuple[str, ...]


@dataclass
class LoopState:
    """Cumulative readings of one loop, as its cabinet registers hold them."""

    count: int = 0
    occupancy_ds: float = 0.0
    """Occupied time in 0.1 s units (kept as a float; the register is its integer part)."""
    presence: bool = False

    @property
    def registers(self) -> tuple[int, int, bool]:
        """``(count, occupancy)`` wrapped to 16 bits, and the presence bit."""
        return self.count & _U16, int(self.occupancy_ds) & _U16, self.presence


def detectors_additional(loops: Sequence[LoopSite], areas: Sequence[AreaSite]) -> str:
    """The additional file that places the detectors (their own outputs are discarded)."""
    null = quoteattr(os.devnull)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<additional>"]
    for lp in loops:
        lines.append(
            f"    <inductionLoop id={quoteattr(lp.id)} lane={quoteattr(lp.lane)} "
            f'pos="{lp.pos_m:.2f}" period="3600" file={null}/>'
        )
    for ar in areas:
        lines.append(
            f"    <laneAreaDetector id={quoteattr(ar.id)} lane={quoteattr(ar.lane)} "
            f'pos="{ar.start_m:.2f}" endPos="{ar.end_m:.2f}" period="3600" file={null}/>'
        )
    lines.append("</additional>")
    return "\n".join(lines) + "\n"


class SumoField:
    """Detectors and signal heads of a running simulation."""

    def __init__(
        self,
        sumo: Any,
        loops: Sequence[LoopSite] = (),
        areas: Sequence[AreaSite] = (),
        buttons: Sequence[ButtonSite] = (),
    ) -> None:
        self._sumo = sumo
        self._loops = list(loops)
        self._areas = list(areas)
        self._buttons = list(buttons)
        self.loops: dict[str, LoopState] = {lp.id: LoopState() for lp in self._loops}
        self.presses: dict[str, int] = {b.id: 0 for b in self._buttons}
        self.waiting: dict[str, bool] = {b.id: False for b in self._buttons}
        self._shown: dict[str, str] = {}
        self.dt = float(sumo.simulation.getDeltaT())
        self.t = float(sumo.simulation.getTime())

    # -- time --------------------------------------------------------------------------------

    def step(self) -> float:
        """Advance SUMO by one step, then read every loop and button; returns the new time."""
        self._sumo.simulation.step()
        self.t = float(self._sumo.simulation.getTime())
        self._read_loops()
        if self._buttons:
            self._read_buttons()
        return self.t

    def expected_vehicles(self) -> int:
        """Vehicles running or still to come (SUMO's own end-of-demand test)."""
        return int(self._sumo.simulation.getMinExpectedNumber())

    # -- detectors ---------------------------------------------------------------------------

    def _read_loops(self) -> None:
        il = self._sumo.inductionloop
        since = self.t - self.dt - 1e-6
        dt_ds = self.dt * 10.0
        for lp in self._loops:
            st = self.loops[lp.id]
            data = il.getVehicleData(lp.id)
            if data:
                # (vehicle, length, entry time, leave time (-1: still on it), type): count the
                # entries (or exits) that happened within the step.
                if lp.count_on_exit:
                    st.count += sum(1 for d in data if d[3] > since)
                else:
                    st.count += sum(1 for d in data if d[2] > since)
                st.presence = any(d[3] < 0 for d in data) or il.getLastStepVehicleNumber(lp.id) > 0
                st.occupancy_ds += il.getLastStepOccupancy(lp.id) / 100.0 * dt_ds
            else:
                st.presence = False

    def area_queue(self, area_id: str) -> int:
        """Vehicles standing (halting) in the camera zone now.

        SUMO's jam length would miss a single waiting car (a jam needs two), which is exactly
        the car an actuated or adaptive controller must not forget.
        """
        return int(self._sumo.lanearea.getLastStepHaltingNumber(area_id))

    def _read_buttons(self) -> None:
        edge = self._sumo.edge
        person = self._sumo.person
        for b in self._buttons:
            crossing_edge = b.crossing.rsplit("_", 1)[0]
            waiting = False
            for wa in b.walkingareas:
                for pid in edge.getLastStepPersonIDs(wa.rsplit("_", 1)[0]):
                    if person.getNextEdge(pid) == crossing_edge and person.getSpeed(pid) < 0.1:
                        waiting = True
                        break
                if waiting:
                    break
            if waiting and not self.waiting[b.id]:
                self.presses[b.id] += 1
            self.waiting[b.id] = waiting

    # -- signal heads ------------------------------------------------------------------------

    def show(self, tls_id: str, state: str) -> None:
        """Show a state string at a light (sent to SUMO only when it changes)."""
        if self._shown.get(tls_id) != state:
            self._sumo.trafficlight.setRedYellowGreenState(tls_id, state)
            self._shown[tls_id] = state
