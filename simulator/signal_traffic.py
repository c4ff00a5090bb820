"""The built-in traffic model of a signalised intersection: point queues per lane.

What it models, per signal group (a vehicle movement or a pedestrian crossing):

* **Arrivals** — a Poisson stream per lane whose rate follows ``demand(group, t)`` (veh/h per
  lane, or peds/h for a crossing). Each lane has its own random generator derived from the
  seed, the group and the lane, and the stream is drawn by accumulating the integrated rate
  against exponential thresholds, so the arrival times never depend on the signals: two runs
  with the same seed and demand see the *same* vehicles whatever the controller does.
* **Approach** — a vehicle passes the upstream loops ``distance_m / free speed`` before it
  would reach the stop line (its free-flow arrival ``a``); the queue is a *point* (vertical)
  queue at the stop line, so the spill-back of long queues over an upstream loop is not
  modelled (the loop still counts each vehicle once).
* **Discharge** — while GREEN a lane serves one vehicle per saturation headway
  ``h = 3600 / saturation_vph_per_lane`` (2 s at 1,800 veh/h). After a red the first queued
  vehicle crosses ``startup_lost_s + h`` after the start of green (HCM start-up lost time);
  vehicles keep crossing during the first ``yellow_use_s`` (2 s) of YELLOW, none after, so the
  effective green equals the displayed green. FLASH_YELLOW and DARK are uncontrolled: the
  lane discharges at ``flash_capacity`` (40 %) of the saturation flow. A vehicle crosses at
  ``d = max(a, server free)``; its delay is ``d − a``, and it *stopped* when that is over
  ``STOP_DELAY_S``.
* **Detectors** — a stop-line loop is occupied while a stopped vehicle stands on it (the head
  of a queue that waits through red) and for ``OCC_MOVING_S`` / ``OCC_FREE_S`` while a vehicle
  crosses it; it counts each crossing. ``presence`` is latched over the last step (a cabinet
  reports presence since its previous poll), ``occupied_s`` accumulates exactly. An upstream
  loop counts each passing vehicle and is occupied ``OCC_FREE_S``. A push button is pressed
  when a pedestrian arrives and the crossing does not show walk (GREEN).
* **Cameras** — per group: vehicles that crossed the stop line (cumulative) and vehicles queued
  now (arrived at the stop line, not yet crossed), like the AI cameras' per-lane messages.
* **Pedestrians** — wait from arrival until the walk (GREEN) starts; arrivals during the walk
  cross at once. DARK (flash) counts as uncontrolled: they cross at once.

:meth:`IntersectionTraffic.stats` reports vehicles, mean delay, stops and the largest queue
per group. Vehicles still queued at the end count with the delay they have had so far, so a
strategy cannot look good by leaving a queue behind.

Signal codes are plain ints with the values of the controller's ``Signal`` (RED=1, GREEN=3,
YELLOW=4, FLASH_YELLOW=5, PED_CLEARANCE=6, DARK=0): like every simulator module this one
imports nothing from ``controller``.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DARK",
    "FLASH_YELLOW",
    "GREEN",
    "OCC_FREE_S",
    "OCC_MOVING_S",
    "PED_CLEARANCE",
    "RED",
    "RED_AMBER",
    "STOP_DELAY_S",
    "YELLOW",
    "DetectorSample",
    "GroupTrafficStats",
    "IntersectionTraffic",
    "TrafficDetectorSpec",
    "TrafficGroupSpec",
    "TrafficStats",
]

# Signal codes (the controller's ``Signal`` values, the Modbus register codes).
DARK = 0
RED = 1
RED_AMBER = 2
GREEN = 3
YELLOW = 4
FLASH_YELLOW = 5
PED_CLEARANCE = 6

OCC_FREE_S = 0.5
"""A vehicle crossing a loop at speed occupies it this long (4.5 m car + 2 m loop at ~45 km/h)."""
OCC_MOVING_S = 1.0
"""A vehicle pulling away from a queue occupies the stop-line loop this long."""
STOP_DELAY_S = 2.0
"""A vehicle delayed by more than this counts as stopped."""
PRESS_OCCUPANCY_S = 0.3
"""A push-button press closes the input this long."""

_EPS = 1e-9


@dataclass(frozen=True)
class TrafficGroupSpec:
    """One signal group as the traffic model sees it."""

    id: str
    kind: Literal["vehicle", "pedestrian"] = "vehicle"
    lanes: int = 1
    saturation_vph_per_lane: float = 1800.0
    startup_lost_s: float = 2.0
    free_speed_kmh: float = 50.0
    yellow_use_s: float = 2.0
    """Vehicles keep crossing during this much of the yellow."""
    flash_capacity: float = 0.4
    """Share of the saturation flow that crosses an uncontrolled (flashing / dark) approach."""


@dataclass(frozen=True)
class TrafficDetectorSpec:
    """One detector: a cabinet channel (loops, push buttons) or a camera zone."""

    id: str
    group: str
    kind: Literal["stopline", "upstream", "pushbutton", "camera"]
    channel: int | None = None
    distance_m: float = 0.0
    camera: str | None = None
    lanes: tuple[int, ...] | None = None
    """Lanes (1-based) the detector covers; None: all lanes of the group."""


@dataclass(frozen=True)
class DetectorSample:
    """What a cabinet channel reports: cumulative count and occupancy, presence since the last step.

    It unpacks as ``count, occupied_s, presence``, as the cabinet's ``DetectorSource`` expects.
    """

    count: int
    occupied_s: float
    presence: bool

    def __iter__(self) -> Iterator[int | float | bool]:
        return iter((self.count, self.occupied_s, self.presence))


@dataclass(frozen=True)
class GroupTrafficStats:
    """One group over the run so far."""

    arrived: int
    departed: int
    queued: int
    mean_delay_s: float
    stops_per_vehicle: float
    max_queue: int


@dataclass(frozen=True)
class TrafficStats:
    """The whole intersection over the run so far (vehicles, then pedestrians)."""

    t: float
    vehicles_arrived: int
    vehicles_departed: int
    vehicles_queued: int
    mean_delay_s: float
    """Per vehicle that reached the stop line; queued vehicles count with their delay so far."""
    stops_per_vehicle: float
    max_queue: dict[str, int]
    peds_arrived: int
    peds_served: int
    ped_mean_wait_s: float
    """Person delay per pedestrian; those still waiting count with their wait so far."""
    groups: dict[str, GroupTrafficStats] = field(default_factory=dict)


class _Lane:
    """One lane: its arrival stream, vehicles in transit, the queue, the loop intervals."""

    __slots__ = (
        "busy",
        "free_at",
        "hazard",
        "queue",
        "rng",
        "standing_since",
        "transit",
    )

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.hazard = rng.expovariate(1.0)  # integrated rate left until the next arrival
        self.transit: deque[float] = deque()  # free-flow stop-line arrival times, ascending
        self.queue: deque[float] = deque()  # arrival times of vehicles at the stop line
        self.free_at = -math.inf  # earliest time the next vehicle may cross
        self.standing_since: float | None = None  # head of queue stopped on the loop since
        self.busy: list[tuple[float, float]] = []  # stop-line loop occupied intervals


class _Group:
    __slots__ = (
        "arrived",
        "delay",
        "departed",
        "detectors",
        "green_since",
        "headway",
        "lanes",
        "max_queue",
        "prev",
        "spec",
        "stops",
        "travel_s",
        "yellow_since",
    )

    def __init__(self, spec: TrafficGroupSpec, lanes: list[_Lane], travel_s: float) -> None:
        self.spec = spec
        self.lanes = lanes
        self.travel_s = travel_s
        self.headway = 3600.0 / spec.saturation_vph_per_lane
        self.prev = RED
        self.green_since = -math.inf
        self.yellow_since = -math.inf
        self.arrived = 0
        self.departed = 0
        self.delay = 0.0
        self.stops = 0
        self.max_queue = 0
        self.detectors: list[_Detector] = []


class _Detector:
    __slots__ = ("busy", "count", "lanes", "occupied", "pending", "presence", "spec", "travel_s")

    def __init__(self, spec: TrafficDetectorSpec, lanes: list[int], travel_s: float) -> None:
        self.spec = spec
        self.lanes = lanes
        self.travel_s = travel_s  # upstream loops: from the loop to the stop line
        self.count = 0
        self.occupied = 0.0
        self.presence = False
        self.pending: deque[float] = deque()  # upstream loops: pass times still to come
        self.busy: list[tuple[float, float]] = []  # upstream loops: occupied intervals


class _Crossing:
    __slots__ = ("arrived", "served", "wait", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[float] = deque()
        self.arrived = 0
        self.served = 0
        self.wait = 0.0


def _union_in(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` inside ``[lo, hi)``."""
    spans = sorted((max(s, lo), min(e, hi)) for s, e in intervals if e > lo and s < hi)
    total = 0.0
    cur_s = cur_e = -math.inf
    for s, e in spans:
        if s > cur_e:
            if cur_e > cur_s:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        elif e > cur_e:
            cur_e = e
    if cur_e > cur_s:
        total += cur_e - cur_s
    return total


class IntersectionTraffic:
    """Vehicles and pedestrians at one intersection, stepped in lock-step with the signals."""

    def __init__(
        self,
        groups: Sequence[TrafficGroupSpec],
        detectors: Sequence[TrafficDetectorSpec],
        demand: Callable[[str, float], float],
        seed: int | str = 0,
    ) -> None:
        self._demand = demand
        self._t: float | None = None
        self._groups: dict[str, _Group] = {}
        self._crossings: dict[str, _Crossing] = {}
        for g in groups:
            if g.id in self._groups:
                raise ValueError(f"groups: duplicate group {g.id!r}")
            if g.lanes < 1 or g.saturation_vph_per_lane <= 0 or g.free_speed_kmh <= 0:
                raise ValueError(f"groups.{g.id}: lanes, saturation and speed must be positive")
            if not 0 < g.flash_capacity <= 1:
                raise ValueError(f"groups.{g.id}.flash_capacity: must be in (0, 1]")
            nlanes = g.lanes if g.kind == "vehicle" else 1
            lanes = [_Lane(random.Random(f"{seed}:{g.id}:{k}")) for k in range(nlanes)]
            v = g.free_speed_kmh / 3.6
            far = max(
                (d.distance_m for d in detectors if d.group == g.id and d.kind == "upstream"),
                default=0.0,
            )
            self._groups[g.id] = _Group(g, lanes, far / v)
            if g.kind == "pedestrian":
                self._crossings[g.id] = _Crossing()
        self._channels: dict[int, _Detector] = {}
        for d in detectors:
            grp = self._groups.get(d.group)
            if grp is None:
                raise ValueError(f"detectors.{d.id}: unknown group {d.group!r}")
            n = len(grp.lanes)
            covered = list(range(n)) if d.lanes is None else [k - 1 for k in d.lanes if 1 <= k <= n]
            v = grp.spec.free_speed_kmh / 3.6
            det = _Detector(d, covered, d.distance_m / v)
            grp.detectors.append(det)
            if d.channel is not None:
                if d.channel in self._channels:
                    raise ValueError(f"detectors.{d.id}: channel {d.channel} is used twice")
                self._channels[d.channel] = det

    # -- stepping ---------------------------------------------------------------------------

    @property
    def t(self) -> float:
        """End of the last step (0 before the first)."""
        return 0.0 if self._t is None else self._t

    def step(self, t: float, dt: float, shown: Mapping[str, int]) -> None:
        """Advance from ``t`` to ``t + dt`` with ``shown`` (group id → signal code) held."""
        if dt <= 0:
            raise ValueError(f"dt: {dt!r} must be positive")
        t1 = t + dt
        for gid, grp in self._groups.items():
            code = shown.get(gid, RED)
            if grp.spec.kind == "pedestrian":
                self._step_crossing(grp, self._crossings[gid], t, t1, code)
            else:
                self._step_vehicles(grp, t, t1, code)
            grp.prev = code
        self._t = t1

    def _arrivals(self, lane: _Lane, rate_per_s: float, t: float, t1: float) -> list[float]:
        """Arrival times in ``[t, t1)`` of a Poisson stream with the given (constant) rate."""
        out: list[float] = []
        if rate_per_s <= 0:
            return out
        tau = t
        while True:
            need = lane.hazard / rate_per_s
            if tau + need >= t1:
                lane.hazard -= (t1 - tau) * rate_per_s
                return out
            tau += need
            out.append(tau)
            lane.hazard = lane.rng.expovariate(1.0)

    def _step_vehicles(self, grp: _Group, t: float, t1: float, code: int) -> None:
        spec = grp.spec
        h = grp.headway
        # When may vehicles cross during this step, and at what headway?
        if code == GREEN:
            if grp.prev not in (GREEN, YELLOW):
                grp.green_since = t
                for lane in grp.lanes:
                    lane.free_at = max(lane.free_at, t + spec.startup_lost_s + h)
            window: tuple[float, float] | None = (t, t1)
        elif code == YELLOW:
            if grp.prev != YELLOW:
                grp.yellow_since = t
            end = grp.yellow_since + spec.yellow_use_s
            window = (t, min(t1, end)) if end > t else None
        elif code in (FLASH_YELLOW, DARK):
            if grp.prev not in (FLASH_YELLOW, DARK):
                for lane in grp.lanes:
                    lane.free_at = max(lane.free_at, t + h / spec.flash_capacity)
            h = h / spec.flash_capacity
            window = (t, t1)
        else:
            window = None
        rate = max(0.0, self._demand(spec.id, t)) / 3600.0
        ups = [d for d in grp.detectors if d.spec.kind == "upstream"]
        queued = 0
        for k, lane in enumerate(grp.lanes):
            # New vehicles enter at the farthest upstream loop; they reach the stop line later.
            for e in self._arrivals(lane, rate, t, t1):
                a = e + grp.travel_s
                lane.transit.append(a)
                for d in ups:
                    if k in d.lanes:
                        # lanes are walked one after the other: keep the passes in time order
                        bisect.insort(d.pending, a - d.travel_s)
            while lane.transit and lane.transit[0] < t1:
                lane.queue.append(lane.transit.popleft())
                grp.arrived += 1
            if window is not None and lane.queue:
                self._discharge(grp, lane, k, window, h)
            if window is None and lane.queue and lane.standing_since is None and lane.queue[0] < t1:
                # The head stops on the loop; a head that moves up during discharge rolls on.
                last_clear = lane.busy[-1][1] if lane.busy else -math.inf
                lane.standing_since = max(lane.queue[0], last_clear, t)
            queued += len(lane.queue)
        grp.max_queue = max(grp.max_queue, queued)
        for d in grp.detectors:
            self._sample_detector(grp, d, t, t1)
        for lane in grp.lanes:
            if lane.busy and lane.busy[0][1] < t1 - 5.0:
                lane.busy = [iv for iv in lane.busy if iv[1] >= t1 - 5.0]

    def _discharge(
        self, grp: _Group, lane: _Lane, k: int, window: tuple[float, float], h: float
    ) -> None:
        w0, w1 = window
        stop_dets = [d for d in grp.detectors if d.spec.kind == "stopline" and k in d.lanes]
        while lane.queue:
            a = lane.queue[0]
            d = max(a, lane.free_at, w0)
            if d >= w1:
                return
            lane.queue.popleft()
            lane.free_at = d + h
            delay = d - a
            grp.departed += 1
            grp.delay += delay
            if delay > STOP_DELAY_S:
                grp.stops += 1
            occ = OCC_MOVING_S if delay > 0.5 else OCC_FREE_S
            start = lane.standing_since if lane.standing_since is not None else d
            lane.standing_since = None
            lane.busy.append((start, d + occ))
            for det in stop_dets:
                det.count += 1

    def _sample_detector(self, grp: _Group, d: _Detector, t: float, t1: float) -> None:
        kind = d.spec.kind
        if kind == "stopline":
            spans: list[tuple[float, float]] = []
            for k in d.lanes:
                lane = grp.lanes[k]
                spans.extend(lane.busy)
                if lane.standing_since is not None:
                    spans.append((lane.standing_since, t1))
            occ = _union_in(spans, t, t1)
            d.occupied += occ
            d.presence = occ > 0
        elif kind == "upstream":
            while d.pending and d.pending[0] < t1:
                p = d.pending.popleft()
                d.count += 1
                d.busy.append((p, p + OCC_FREE_S))
            occ = _union_in(d.busy, t, t1) if d.busy else 0.0
            d.occupied += occ
            d.presence = occ > 0
            if d.busy and d.busy[0][1] < t1:
                d.busy = [iv for iv in d.busy if iv[1] >= t1]
        # pushbuttons are handled with the crossing; cameras are read through camera()

    def _step_crossing(self, grp: _Group, c: _Crossing, t: float, t1: float, code: int) -> None:
        rate = max(0.0, self._demand(grp.spec.id, t)) / 3600.0
        walk = code in (GREEN, DARK)
        if walk and c.waiting:
            for a in c.waiting:
                c.wait += max(0.0, t - a)
                c.served += 1
            c.waiting.clear()
        buttons = [d for d in grp.detectors if d.spec.kind == "pushbutton"]
        spans: list[tuple[float, float]] = []
        for a in self._arrivals(grp.lanes[0], rate, t, t1):
            c.arrived += 1
            if walk:
                c.served += 1
            else:
                c.waiting.append(a)
                spans.append((a, a + PRESS_OCCUPANCY_S))
        grp.max_queue = max(grp.max_queue, len(c.waiting))
        for d in buttons:
            d.count += len(spans)
            # A press closes the input for PRESS_OCCUPANCY_S; presses that overlap close it
            # once, and a press that runs past the step is counted in the next one, so the
            # occupancy never grows faster than time (as the cabinet's input would show it).
            d.busy.extend(spans)
            on = _union_in(d.busy, t, t1)
            d.occupied += on
            d.presence = on > 0
            d.busy = [iv for iv in d.busy if iv[1] > t1]

    # -- what the field devices report -------------------------------------------------------

    def detector(self, channel: int) -> DetectorSample:
        """A cabinet channel: cumulative count and occupancy (the caller wraps them), presence."""
        d = self._channels[channel]
        return DetectorSample(d.count, d.occupied, d.presence)

    def camera(self, group: str) -> tuple[int, int]:
        """An AI camera over the group: ``(vehicles that crossed the stop line, queued now)``."""
        grp = self._groups[group]
        return grp.departed, sum(len(lane.queue) for lane in grp.lanes)

    @property
    def channels(self) -> tuple[int, ...]:
        """The cabinet channels with a detector."""
        return tuple(self._channels)

    # -- results ---------------------------------------------------------------------------

    def stats(self) -> TrafficStats:
        """Totals so far; vehicles and pedestrians still waiting count with their wait so far."""
        now = self.t
        per: dict[str, GroupTrafficStats] = {}
        arrived = departed = queued = stops = 0
        delay = 0.0
        p_arrived = p_served = 0
        p_wait = 0.0
        for gid, grp in self._groups.items():
            if grp.spec.kind == "pedestrian":
                c = self._crossings[gid]
                waiting = sum(now - a for a in c.waiting)
                p_arrived += c.arrived
                p_served += c.served
                p_wait += c.wait + waiting
                per[gid] = GroupTrafficStats(
                    c.arrived,
                    c.served,
                    len(c.waiting),
                    (c.wait + waiting) / c.arrived if c.arrived else 0.0,
                    0.0,
                    grp.max_queue,
                )
                continue
            q = [a for lane in grp.lanes for a in lane.queue]
            g_delay = grp.delay + sum(now - a for a in q)
            g_stops = grp.stops + sum(1 for a in q if now - a > STOP_DELAY_S)
            n = grp.departed + len(q)
            per[gid] = GroupTrafficStats(
                grp.arrived,
                grp.departed,
                len(q),
                g_delay / n if n else 0.0,
                g_stops / n if n else 0.0,
                grp.max_queue,
            )
            arrived += grp.arrived
            departed += grp.departed
            queued += len(q)
            delay += g_delay
            stops += g_stops
        n = departed + queued
        return TrafficStats(
            t=now,
            vehicles_arrived=arrived,
            vehicles_departed=departed,
            vehicles_queued=queued,
            mean_delay_s=delay / n if n else 0.0,
            stops_per_vehicle=stops / n if n else 0.0,
            max_queue={
                gid: g.max_queue for gid, g in self._groups.items() if g.spec.kind == "vehicle"
            },
            peds_arrived=p_arrived,
            peds_served=p_served,
            ped_mean_wait_s=p_wait / p_arrived if p_arrived else 0.0,
            groups=per,
        )
