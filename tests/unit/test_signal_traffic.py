"""The built-in traffic model of a signalised intersection (``simulator/signal_traffic.py``).

Most tests step the model on a grid of ``DT = 0.25 s``: every step boundary and every
saturation-headway time (2 s, 4 s, ...) is then an exact binary float, so "vehicle k crosses at
``t_green + startup_lost_s + k·h``" can be checked to the step, not to a tolerance.

A *burst* is a known queue: for one tiny step of ``2**-10 s`` at a grid time the demand is
huge, so a Poisson number of vehicles (fixed by the seed) arrives within ``2**-10 s`` of that
time; the camera tells how many. Their free-flow arrival time is then known to ``2**-10 s``,
which is the tolerance of the delay checks.

Statistical checks use a fixed seed (so they are deterministic) and a tolerance of four
standard deviations derived from the Poisson variance, so that they would also hold for
almost every other seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from simulator.signal_traffic import (
    DARK,
    FLASH_YELLOW,
    GREEN,
    OCC_FREE_S,
    OCC_MOVING_S,
    PED_CLEARANCE,
    RED,
    STOP_DELAY_S,
    YELLOW,
    DetectorSample,
    IntersectionTraffic,
    TrafficDetectorSpec,
    TrafficGroupSpec,
)

DT = 0.25
"""Step of most tests: exact in binary, and 2 s (the saturation headway) is 8 steps."""
BURST_W = 2.0**-10
"""Width of a burst step: the burst's vehicles arrive within this of the burst time."""

Demand = Callable[[str, float], float]
Shown = Mapping[str, int]


def _no_demand(group: str, t: float) -> float:
    return 0.0


class Run:
    """An :class:`IntersectionTraffic` on the ``DT`` grid that records every step.

    ``departures[g]`` lists ``(step start, vehicles that crossed in the step)`` for the steps
    in which vehicles of group ``g`` crossed.
    """

    def __init__(
        self,
        groups: Sequence[TrafficGroupSpec],
        detectors: Sequence[TrafficDetectorSpec] = (),
        demand: Demand = _no_demand,
        seed: int | str = 0,
    ) -> None:
        self._base = demand
        self._burst: dict[str, float] = {}
        self.tr = IntersectionTraffic(groups, detectors, self._demand, seed=seed)
        self.vehicles = [g.id for g in groups if g.kind == "vehicle"]
        self.t = 0.0
        self.departures: dict[str, list[tuple[float, int]]] = {g: [] for g in self.vehicles}

    def _demand(self, group: str, t: float) -> float:
        return self._base(group, t) + self._burst.get(group, 0.0)

    def step(self, dt: float, shown: Shown) -> None:
        before = {g: self.tr.camera(g)[0] for g in self.vehicles}
        self.tr.step(self.t, dt, shown)
        for g in self.vehicles:
            n = self.tr.camera(g)[0] - before[g]
            if n:
                self.departures[g].append((self.t, n))
        self.t += dt

    def run(self, until: float, shown: Shown) -> None:
        """Step on the ``DT`` grid with ``shown`` held until ``until``."""
        while self.t < until - 1e-12:
            self.step(DT, shown)

    def burst(self, means: Mapping[str, float], shown: Shown) -> None:
        """Vehicles (or peds) arriving within ``BURST_W`` of now: ``means[g]`` on average."""
        self._burst = {g: m / BURST_W * 3600.0 for g, m in means.items()}
        self.step(BURST_W, shown)
        self._burst = {}
        self.step(DT - BURST_W, shown)

    def crossing_times(self, group: str) -> list[float]:
        """Step start of every crossing (one entry per vehicle)."""
        return [t for t, n in self.departures[group] for _ in range(n)]


def _one(gid: str = "A", **kw: Any) -> TrafficGroupSpec:
    return TrafficGroupSpec(gid, **kw)


def _queue_at(run: Run, group: str, at: float, mean: float, shown: Shown) -> int:
    """Run to ``at``, burst there, return how many arrived (all queued at a red)."""
    run.run(at, shown)
    before = run.tr.stats().groups[group].arrived
    run.burst({group: mean}, shown)
    return run.tr.stats().groups[group].arrived - before


# -- small things ------------------------------------------------------------------------------


def test_detector_sample_unpacks_as_count_occupancy_presence() -> None:
    s = DetectorSample(7, 2.5, True)
    count, occupied_s, presence = s
    assert (count, occupied_s, presence) == (7, 2.5, True)
    assert tuple(s) == (7, 2.5, True)


def test_time_starts_at_zero_and_follows_the_steps() -> None:
    tr = IntersectionTraffic([_one()], [], _no_demand)
    assert tr.t == 0.0
    assert tr.stats().t == 0.0
    tr.step(5.0, 0.5, {})
    assert tr.t == 5.5
    assert tr.stats().t == 5.5


def test_channels_are_the_detectors_with_a_cabinet_channel() -> None:
    dets = [
        TrafficDetectorSpec("sl", "A", "stopline", channel=4),
        TrafficDetectorSpec("up", "A", "upstream", channel=2, distance_m=40.0),
        TrafficDetectorSpec("cam", "A", "camera", camera="c1"),
        TrafficDetectorSpec("pb", "P", "pushbutton", channel=9),
    ]
    tr = IntersectionTraffic([_one(), _one("P", kind="pedestrian")], dets, _no_demand)
    assert tr.channels == (4, 2, 9)
    assert tr.detector(9) == DetectorSample(0, 0.0, False)
    with pytest.raises(KeyError):
        tr.detector(3)


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("dt", [0.0, -0.1])
def test_a_step_must_be_positive(dt: float) -> None:
    tr = IntersectionTraffic([_one()], [], _no_demand)
    with pytest.raises(ValueError, match=r"dt: .* must be positive"):
        tr.step(0.0, dt, {})
    assert tr.t == 0.0


def test_duplicate_groups_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate group 'A'"):
        IntersectionTraffic([_one(), _one(lanes=2)], [], _no_demand)


def test_a_detector_of_an_unknown_group_is_refused() -> None:
    det = TrafficDetectorSpec("sl", "B", "stopline", channel=0)
    with pytest.raises(ValueError, match=r"detectors\.sl: unknown group 'B'"):
        IntersectionTraffic([_one()], [det], _no_demand)


def test_a_channel_used_twice_is_refused() -> None:
    dets = [
        TrafficDetectorSpec("sl", "A", "stopline", channel=3),
        TrafficDetectorSpec("up", "A", "upstream", channel=3, distance_m=30.0),
    ]
    with pytest.raises(ValueError, match=r"detectors\.up: channel 3 is used twice"):
        IntersectionTraffic([_one()], dets, _no_demand)


@pytest.mark.parametrize(
    "kw", [{"lanes": 0}, {"saturation_vph_per_lane": 0.0}, {"free_speed_kmh": -5.0}]
)
def test_lanes_saturation_and_speed_must_be_positive(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"groups\.A: lanes, saturation and speed"):
        IntersectionTraffic([TrafficGroupSpec("A", **kw)], [], _no_demand)  # type: ignore[arg-type]


def test_a_zero_flash_capacity_is_refused_or_handled() -> None:
    try:
        tr = IntersectionTraffic([_one(flash_capacity=0.0)], [], _no_demand)
    except ValueError:
        return
    tr.step(0.0, DT, {"A": FLASH_YELLOW})


# -- arrivals ----------------------------------------------------------------------------------

GROUPS = [
    TrafficGroupSpec("A", free_speed_kmh=36.0),
    TrafficGroupSpec("B", lanes=2),
    TrafficGroupSpec("P", kind="pedestrian"),
]
DETS = [
    TrafficDetectorSpec("A_up", "A", "upstream", channel=0, distance_m=50.0),
    TrafficDetectorSpec("A_sl", "A", "stopline", channel=1),
    TrafficDetectorSpec("P_pb", "P", "pushbutton", channel=2),
]


def _steady(group: str, t: float) -> float:
    return {"A": 500.0, "B": 700.0, "P": 150.0}[group]


def _arrival_trace(signals: Callable[[float], Shown], seed: int = 11) -> list[tuple[int, ...]]:
    """Per step: arrivals at the stop line per group, and the upstream loop's count."""
    run = Run(GROUPS, DETS, _steady, seed=seed)
    trace: list[tuple[int, ...]] = []
    while run.t < 600.0:
        run.step(DT, signals(run.t))
        s = run.tr.stats()
        trace.append((*(s.groups[g].arrived for g in ("A", "B", "P")), run.tr.detector(0).count))
    return trace


def _cycle(t: float) -> Shown:
    c = t % 60.0
    a = GREEN if c < 25 else YELLOW if c < 29 else RED
    b = GREEN if 32 <= c < 55 else YELLOW if 55 <= c < 58 else RED
    return {"A": a, "B": b, "P": GREEN if 32 <= c < 40 else PED_CLEARANCE if c < 45 else RED}


def test_arrivals_do_not_depend_on_the_signals() -> None:
    cycled = _arrival_trace(_cycle)
    all_red = _arrival_trace(lambda t: {})
    flash = _arrival_trace(lambda t: {"A": FLASH_YELLOW, "B": FLASH_YELLOW, "P": DARK})
    assert cycled == all_red == flash
    a, b, p, up = cycled[-1]
    assert a > 50 and b > 150 and p > 10 and up >= a  # plenty of vehicles and pedestrians
    # ... but the signals did change what happened to them
    runs = []
    plans: list[Callable[[float], Shown]] = [_cycle, lambda t: {}]
    for signals in plans:
        run = Run(GROUPS, DETS, _steady, seed=11)
        while run.t < 600.0:
            run.step(DT, signals(run.t))
        runs.append(run.tr.stats())
    assert runs[0].vehicles_departed > 200 and runs[1].vehicles_departed == 0
    # another seed is another stream
    assert _arrival_trace(_cycle, seed=12) != cycled


def test_arrivals_do_not_depend_on_the_step_size_or_on_other_groups() -> None:
    """Constant demand: the exponential thresholds make the stream independent of the grid."""
    fine = IntersectionTraffic(GROUPS, DETS, _steady, seed=5)
    coarse = IntersectionTraffic(GROUPS, DETS, _steady, seed=5)
    alone = IntersectionTraffic([GROUPS[1]], [], _steady, seed=5)
    for k in range(300):  # 1.0 s steps for ``coarse``, 0.125 s steps for ``fine``
        coarse.step(float(k), 1.0, {})
        alone.step(float(k), 1.0, {})
        for m in range(8):
            fine.step(k + m / 8, 0.125, {})
        want = {g: s.arrived for g, s in coarse.stats().groups.items()}
        assert {g: s.arrived for g, s in fine.stats().groups.items()} == want
        assert alone.stats().groups["B"].arrived == want["B"]
    assert want["B"] > 50


def _count(demand: Demand, group: TrafficGroupSpec, seconds: float, seed: int = 3) -> int:
    tr = IntersectionTraffic([group], [], demand, seed=seed)
    t = 0.0
    while t < seconds:
        tr.step(t, 1.0, {})
        t += 1.0
    return tr.stats().groups[group.id].arrived


@pytest.mark.parametrize(
    ("group", "vph"),
    [
        (TrafficGroupSpec("A"), 720.0),
        (TrafficGroupSpec("A", lanes=3), 400.0),  # demand is per lane
        (TrafficGroupSpec("A", kind="pedestrian", lanes=3), 90.0),  # one stream per crossing
    ],
)
def test_mean_arrivals_match_the_demand(group: TrafficGroupSpec, vph: float) -> None:
    seconds = 20_000.0
    streams = group.lanes if group.kind == "vehicle" else 1
    mean = vph * streams * seconds / 3600.0
    n = _count(lambda g, t: vph, group, seconds)
    # Poisson: the variance is the mean; 4 sigma
    assert abs(n - mean) < 4 * math.sqrt(mean), (n, mean)


def test_mean_arrivals_follow_a_time_varying_demand() -> None:
    """A ramp 0 → 1,800 veh/h over 10,000 s, then nothing: the mean is the integral."""

    def ramp(g: str, t: float) -> float:
        return 0.18 * t if t < 10_000 else 0.0

    # the rate is held over each 1 s step from its start: sum of 0.18 k / 3600 for k < 10,000
    mean = sum(0.18 * k for k in range(10_000)) / 3600.0
    n = _count(ramp, TrafficGroupSpec("A"), 12_000.0)
    assert abs(n - mean) < 4 * math.sqrt(mean), (n, mean)
    # nothing arrives once the demand is zero
    assert _count(ramp, TrafficGroupSpec("A"), 10_000.0) == n


def test_counts_in_disjoint_windows_have_the_poisson_dispersion() -> None:
    """Index of dispersion (variance / mean) of K window counts: (K-1)·D ~ χ²(K-1)."""
    windows, per = 400, 60.0
    tr = IntersectionTraffic([TrafficGroupSpec("A")], [], lambda g, t: 300.0, seed=8)
    counts, last, t = [], 0, 0.0
    for _ in range(windows):
        for _ in range(int(per)):
            tr.step(t, 1.0, {})
            t += 1.0
        now = tr.stats().vehicles_arrived
        counts.append(now - last)
        last = now
    mean = sum(counts) / windows
    var = sum((c - mean) ** 2 for c in counts) / (windows - 1)
    assert abs(mean - 5.0) < 4 * math.sqrt(5.0 / windows)
    sd = math.sqrt(2.0 / (windows - 1))
    assert abs(var / mean - 1.0) < 4 * sd, var / mean


# -- discharge ---------------------------------------------------------------------------------

RED_A = {"A": RED}
GREEN_A = {"A": GREEN}


def test_a_standing_queue_clears_at_the_saturation_headway() -> None:
    run = Run([_one()])
    n = _queue_at(run, "A", 10.0, 12.0, RED_A)
    assert n >= 6
    run.run(30.0, RED_A)
    assert run.departures["A"] == []  # nothing crosses on red
    run.run(80.0, GREEN_A)
    # the first crosses startup_lost_s + h after the start of green, then one per h
    assert run.crossing_times("A") == [30.0 + 2.0 + 2.0 * k for k in range(1, n + 1)]
    assert run.tr.camera("A") == (n, 0)


@pytest.mark.parametrize(
    ("saturation", "lost"), [(1800.0, 2.0), (1200.0, 3.0), (3600.0, 0.0), (1440.0, 1.0)]
)
def test_headway_and_startup_lost_time_follow_the_spec(saturation: float, lost: float) -> None:
    h = 3600.0 / saturation
    run = Run([_one(saturation_vph_per_lane=saturation, startup_lost_s=lost)])
    n = _queue_at(run, "A", 10.0, 8.0, RED_A)
    assert n >= 4
    run.run(20.0, RED_A)
    run.run(80.0, GREEN_A)
    assert run.crossing_times("A") == [20.0 + lost + h * k for k in range(1, n + 1)]


def test_vehicles_cross_in_the_first_yellow_use_s_of_yellow_and_never_on_red() -> None:
    run = Run([_one()])
    n = _queue_at(run, "A", 10.0, 20.0, RED_A)
    assert n >= 10
    run.run(30.0, RED_A)
    run.run(40.0, GREEN_A)
    run.run(44.0, {"A": YELLOW})
    run.run(100.0, RED_A)
    # green 30-40: +4, +6, +8; at 40 (yellow) +10 still crosses; +12 is the end of the
    # 2 s of yellow that are used, so that one waits: 4 vehicles for a 10 s green
    assert run.crossing_times("A") == [34.0, 36.0, 38.0, 40.0]
    assert run.tr.camera("A") == (4, n - 4)
    # the next green starts over with the start-up lost time
    run.run(110.0, GREEN_A)
    assert run.crossing_times("A")[4:] == [104.0, 106.0, 108.0]


def test_a_quarter_second_more_green_lets_one_more_through() -> None:
    run = Run([_one()])
    n = _queue_at(run, "A", 10.0, 20.0, RED_A)
    assert n >= 10
    run.run(30.0, RED_A)
    run.run(40.25, GREEN_A)
    run.run(45.0, {"A": YELLOW})
    run.run(60.0, RED_A)
    assert run.crossing_times("A") == [34.0, 36.0, 38.0, 40.0, 42.0]  # 42 < 40.25 + 2


def test_no_yellow_use_means_nothing_crosses_on_yellow() -> None:
    run = Run([_one(yellow_use_s=0.0)])
    n = _queue_at(run, "A", 10.0, 20.0, RED_A)
    assert n >= 10
    run.run(30.0, RED_A)
    run.run(40.0, GREEN_A)
    run.run(60.0, {"A": YELLOW})
    assert run.crossing_times("A") == [34.0, 36.0, 38.0]


def test_two_lanes_double_the_discharge() -> None:
    run = Run([_one("A"), _one("B", lanes=2)])
    shown_red = {"A": RED, "B": RED}
    run.run(10.0, shown_red)
    run.burst({"A": 30.0, "B": 30.0}, shown_red)  # 30 per lane on average
    queued = {g: run.tr.camera(g)[1] for g in ("A", "B")}
    assert queued["A"] >= 20 and queued["B"] >= 40
    run.run(30.0, shown_red)
    run.run(50.0, {"A": GREEN, "B": GREEN})
    run.run(54.0, {"A": YELLOW, "B": YELLOW})
    run.run(70.0, shown_red)
    a, b = run.crossing_times("A"), run.crossing_times("B")
    # 20 s green: k·h < 20 for k = 1..9 per lane
    assert a == [30.0 + 2.0 + 2.0 * k for k in range(1, 10)]
    assert b == [t for t in a for _ in range(2)]  # both lanes at once
    assert run.tr.camera("B")[0] == 2 * run.tr.camera("A")[0] == 18


@pytest.mark.parametrize("code", [FLASH_YELLOW, DARK])
def test_flash_and_dark_discharge_at_the_flash_capacity(code: int) -> None:
    run = Run([_one()])
    n = _queue_at(run, "A", 10.0, 10.0, RED_A)
    assert n >= 5
    run.run(30.0, RED_A)
    run.run(30.0 + 5.0 * n + 10.0, {"A": code})
    # 40 % of the saturation flow: one vehicle per 2 s / 0.4 = 5 s, the first after 5 s
    assert run.crossing_times("A") == [30.0 + 5.0 * k for k in range(1, n + 1)]


def test_flash_capacity_is_a_parameter() -> None:
    run = Run([_one(flash_capacity=0.25)])
    n = _queue_at(run, "A", 10.0, 8.0, RED_A)
    assert n >= 3
    run.run(20.0, RED_A)
    run.run(20.0 + 8.0 * n + 20.0, {"A": FLASH_YELLOW})
    assert run.crossing_times("A") == [20.0 + 8.0 * k for k in range(1, n + 1)]


# -- delay, stops, queues ---------------------------------------------------------------------


def test_delay_is_crossing_time_minus_arrival_and_queued_vehicles_count_so_far() -> None:
    run = Run([_one()])
    n = _queue_at(run, "A", 10.0, 12.0, RED_A)
    assert n >= 6
    tol = n * BURST_W
    run.run(25.0, RED_A)
    s = run.tr.stats()
    # all still queued: each has waited 15 s so far
    assert s.vehicles_queued == s.groups["A"].queued == n and s.vehicles_departed == 0
    assert s.mean_delay_s == pytest.approx(15.0, abs=BURST_W)
    assert s.groups["A"].mean_delay_s == s.mean_delay_s
    run.run(30.0, RED_A)
    run.run(39.0, GREEN_A)  # 34, 36, 38 crossed
    s = run.tr.stats()
    crossed = [34.0, 36.0, 38.0]
    total = sum(d - 10.0 for d in crossed) + (n - 3) * (39.0 - 10.0)
    assert s.vehicles_departed == 3 and s.vehicles_queued == n - 3
    assert s.mean_delay_s * n == pytest.approx(total, abs=tol)
    run.run(100.0, GREEN_A)
    s = run.tr.stats()
    total = sum(30.0 + 2.0 + 2.0 * k - 10.0 for k in range(1, n + 1))
    assert s.vehicles_queued == 0 and s.vehicles_departed == s.vehicles_arrived == n
    assert s.mean_delay_s * n == pytest.approx(total, abs=tol)
    assert s.stops_per_vehicle == 1.0


def test_a_strategy_cannot_hide_a_queue_it_leaves_behind() -> None:
    """Stopping the clock with vehicles queued: they count, with the delay they have had."""
    served, starved = Run([_one()]), Run([_one()])
    for run in (served, starved):
        _queue_at(run, "A", 10.0, 10.0, RED_A)
    served.run(20.0, RED_A)
    served.run(60.0, GREEN_A)
    starved.run(60.0, RED_A)
    assert starved.tr.stats().vehicles_departed == 0
    assert starved.tr.stats().mean_delay_s > served.tr.stats().mean_delay_s
    assert starved.tr.stats().mean_delay_s == pytest.approx(50.0, abs=BURST_W)


def test_a_vehicle_stops_when_delayed_more_than_the_threshold() -> None:
    """h = 1 s, no start-up loss: a burst 0.5 s before green crosses at +1, +2, ... after it."""
    run = Run([_one(saturation_vph_per_lane=3600.0, startup_lost_s=0.0)])
    n = _queue_at(run, "A", 29.5, 6.0, RED_A)
    assert n >= 3
    run.run(29.75, RED_A)
    s = run.tr.stats()
    assert s.stops_per_vehicle == 0.0  # queued for 0.25 s: not (yet) stopped
    run.run(30.0, RED_A)
    run.run(60.0, GREEN_A)
    assert run.crossing_times("A") == [30.0 + k for k in range(1, n + 1)]
    s = run.tr.stats()
    # delays 1.5, 2.5, 3.5, ...: all but the first are over STOP_DELAY_S = 2 s
    assert STOP_DELAY_S == 2.0
    assert s.stops_per_vehicle * n == pytest.approx(n - 1)
    assert s.mean_delay_s * n == pytest.approx(
        sum(0.5 + k for k in range(1, n + 1)), abs=n * BURST_W
    )


def test_queued_vehicles_count_as_stops_once_they_waited_long_enough() -> None:
    run = Run([_one()])
    n = _queue_at(run, "A", 10.0, 6.0, RED_A)
    assert n >= 2
    run.run(11.75, RED_A)
    assert run.tr.stats().stops_per_vehicle == 0.0  # < 2 s so far
    run.run(12.25, RED_A)
    assert run.tr.stats().stops_per_vehicle == 1.0


def test_max_queue_is_the_largest_queue_at_a_step_end() -> None:
    groups = [_one("A"), _one("B", lanes=2), _one("P", kind="pedestrian")]
    run = Run(groups, [], _steady, seed=21)
    seen = {"A": 0, "B": 0, "P": 0}
    while run.t < 900.0:
        run.step(DT, _cycle(run.t))
        s = run.tr.stats()
        for g in seen:
            seen[g] = max(seen[g], s.groups[g].queued)
            assert s.groups[g].max_queue == seen[g]
    assert min(seen.values()) > 0
    assert s.max_queue == {"A": seen["A"], "B": seen["B"]}  # vehicles only
    # the largest queue stays the record after the queue is gone
    run.run(1200.0, {"A": GREEN, "B": GREEN, "P": GREEN})
    s = run.tr.stats()
    assert s.vehicles_queued < 5
    assert {g: s.groups[g].max_queue for g in seen} == seen


def test_camera_reports_crossed_and_queued_and_the_stats_add_up() -> None:
    run = Run(
        [_one("A", free_speed_kmh=36.0), _one("B", lanes=2)],
        [TrafficDetectorSpec("A_up", "A", "upstream", channel=0, distance_m=80.0)],
        _steady,
        seed=4,
    )
    in_transit_seen = False
    while run.t < 900.0:
        run.step(DT, _cycle(run.t))
        s = run.tr.stats()
        for g in ("A", "B"):
            crossed, queued = run.tr.camera(g)
            gs = s.groups[g]
            assert (crossed, queued) == (gs.departed, gs.queued)
            assert crossed + queued == gs.arrived
        # vehicles between the upstream loop and the stop line are neither crossed nor queued
        in_transit_seen |= run.tr.detector(0).count > s.groups["A"].arrived
        assert s.vehicles_arrived == s.groups["A"].arrived + s.groups["B"].arrived
        assert s.vehicles_departed + s.vehicles_queued == s.vehicles_arrived
    assert in_transit_seen
    assert run.tr.camera("A")[0] > 100 and run.tr.camera("B")[0] > 200


# -- detectors ---------------------------------------------------------------------------------

SL = [TrafficDetectorSpec("sl", "A", "stopline", channel=0)]


def test_stopline_loop_counts_crossings_and_shows_the_standing_head() -> None:
    run = Run([_one()], SL)
    assert run.tr.detector(0) == DetectorSample(0, 0.0, False)
    run.run(10.0, RED_A)
    assert run.tr.detector(0) == DetectorSample(0, 0.0, False)  # nobody yet
    n = _queue_at(run, "A", 10.0, 12.0, RED_A)
    assert n >= 6
    presence: list[tuple[float, bool]] = []
    counts: list[int] = []
    while run.t < 50.0:
        code = RED if run.t < 30 else GREEN if run.t < 40 else YELLOW if run.t < 44 else RED
        t0 = run.t
        run.step(DT, {"A": code})
        sample = run.tr.detector(0)
        presence.append((t0, sample.presence))
        counts.append(sample.count)
        assert sample.count == run.tr.camera("A")[0]  # every crossing counted
    on = {t for t, p in presence if p}

    # the head stands on the loop through the red and the start-up lost time, then
    # pulls away (1 s) at 34; the next heads only pass (1 s each) at 36, 38, 40;
    # after the used yellow (42) the new head stands on it through the red
    def steps(a: float, b: float) -> set[float]:
        return {a + DT * k for k in range(round((b - a) / DT))}

    assert on == steps(10.25, 35.0) | steps(36.0, 37.0) | steps(38.0, 39.0) | steps(
        40.0, 41.0
    ) | steps(42.0, 50.0)
    head = 10.0  # within BURST_W: occupancy from the head's arrival
    _, occupied, _ = run.tr.detector(0)
    assert occupied == pytest.approx((35.0 - head) + 3 * OCC_MOVING_S + (50.0 - 42.0), abs=BURST_W)
    assert counts[-1] == 4


def test_stopline_occupancy_of_vehicles_that_do_not_stop() -> None:
    """In a long green, a burst: the first rolls over the loop (OCC_FREE_S), the rest pull
    away from a short queue (OCC_MOVING_S) one headway apart."""
    run = Run([_one()], SL)
    run.run(20.0, GREEN_A)
    n = _queue_at(run, "A", 20.0, 5.0, GREEN_A)
    assert n >= 3
    run.run(40.0, GREEN_A)
    count, occupied, present = run.tr.detector(0)
    assert count == n and not present
    assert occupied == pytest.approx(OCC_FREE_S + (n - 1) * OCC_MOVING_S)
    assert run.tr.stats().mean_delay_s * n == pytest.approx(
        sum(2.0 * k for k in range(n)), abs=n * BURST_W
    )


def test_a_stopline_loop_covers_only_its_lanes() -> None:
    dets = [
        TrafficDetectorSpec("all", "A", "stopline", channel=0),
        TrafficDetectorSpec("l1", "A", "stopline", channel=1, lanes=(1,)),
        TrafficDetectorSpec("l2", "A", "stopline", channel=2, lanes=(2,)),
        TrafficDetectorSpec("none", "A", "stopline", channel=3, lanes=(3,)),  # no such lane
    ]
    run = Run([_one(lanes=2)], dets, _steady, seed=2)
    while run.t < 600.0:
        run.step(DT, {"A": GREEN if run.t % 60 < 30 else RED})
        total = run.tr.detector(0).count
        assert total == run.tr.detector(1).count + run.tr.detector(2).count
        assert total == run.tr.camera("A")[0]
        assert run.tr.detector(3) == DetectorSample(0, 0.0, False)
    assert run.tr.detector(1).count > 50 and run.tr.detector(2).count > 50


UP = [
    TrafficDetectorSpec("far", "A", "upstream", channel=0, distance_m=100.0),
    TrafficDetectorSpec("near", "A", "upstream", channel=1, distance_m=40.0),
]


def test_upstream_loops_count_each_vehicle_once_distance_over_speed_earlier() -> None:
    """36 km/h = 10 m/s: the far loop 10 s, the near loop 4 s before the stop line."""
    run = Run([_one(free_speed_kmh=36.0)], UP, lambda g, t: 900.0, seed=6)
    far: list[int] = []
    near: list[int] = []
    arrived: list[int] = []
    while run.t < 1500.0:
        # long reds: the (point) queue grows past the loops' distance, they still count once
        run.step(DT, {"A": GREEN if run.t % 200 < 40 else RED})
        far.append(run.tr.detector(0).count)
        near.append(run.tr.detector(1).count)
        arrived.append(run.tr.stats().vehicles_arrived)
    assert run.tr.stats().max_queue["A"] > 30
    k6, k10 = round(6.0 / DT), round(10.0 / DT)
    assert near[k6:] == far[:-k6]  # the near loop sees each vehicle 6 s after the far one
    assert arrived[k10:] == far[:-k10]  # the stop line 10 s after the far loop
    assert far[-1] > 300
    # each pass occupies the loop OCC_FREE_S (overlaps are counted once)
    _, occupied, _ = run.tr.detector(0)
    assert 0.8 * OCC_FREE_S * far[-1] < occupied <= OCC_FREE_S * far[-1] + 1e-9


def test_upstream_loop_presence_is_over_the_last_step() -> None:
    run = Run([_one(free_speed_kmh=36.0)], UP, lambda g, t: 600.0, seed=6)
    before = 0
    while run.t < 300.0:
        run.step(DT, GREEN_A)
        sample = run.tr.detector(0)
        if sample.count > before:
            assert sample.presence  # a vehicle passed in this step
        before = sample.count


def test_a_multi_lane_upstream_loop_counts_what_its_lanes_count() -> None:
    dets = [
        TrafficDetectorSpec("far", "A", "upstream", channel=0, distance_m=100.0),
        TrafficDetectorSpec("near", "A", "upstream", channel=1, distance_m=31.0),
        TrafficDetectorSpec("near1", "A", "upstream", channel=2, distance_m=31.0, lanes=(1,)),
        TrafficDetectorSpec("near2", "A", "upstream", channel=3, distance_m=31.0, lanes=(2,)),
    ]
    run = Run([_one(lanes=2, free_speed_kmh=36.0)], dets, lambda g, t: 1500.0, seed=3)
    while run.t < 1000.0:
        run.step(DT, GREEN_A)
        both = run.tr.detector(1).count
        assert both == run.tr.detector(2).count + run.tr.detector(3).count, run.t


PED = [_one("P", kind="pedestrian")]
PB = [TrafficDetectorSpec("pb", "P", "pushbutton", channel=5)]


def test_push_button_is_pressed_by_pedestrians_arriving_without_walk() -> None:
    run = Run(PED, PB, lambda g, t: 400.0, seed=9)
    pressed_in_walk = 0
    last_arrived, last_count, last_occ = 0, 0, 0.0
    while run.t < 1800.0:
        c = run.t % 60.0
        code = GREEN if c < 10 else PED_CLEARANCE if c < 20 else RED
        run.step(DT, {"P": code})
        arrived = run.tr.stats().peds_arrived
        sample = run.tr.detector(5)
        count, occupied, present = sample.count, sample.occupied_s, sample.presence
        new, presses = arrived - last_arrived, count - last_count
        if code == GREEN:
            pressed_in_walk += presses
        else:
            assert presses == new  # everyone who arrives without walk presses
            if new:
                assert present
        # a press closes the input for 0.3 s; the occupancy never grows faster than time
        assert 0.0 <= occupied - last_occ <= DT + 1e-9
        last_arrived, last_count, last_occ = arrived, count, occupied
    assert pressed_in_walk == 0
    assert 100 < last_count < last_arrived
    # overlapping presses close the input once: at most 0.3 s each, and rarely less
    assert 0.25 * last_count <= last_occ <= 0.3 * last_count + 1e-9


def test_pedestrians_wait_for_the_walk_and_cross_at_once_during_it() -> None:
    run = Run(PED, PB)
    red, walk = {"P": RED}, {"P": GREEN}
    run.run(10.0, red)
    run.burst({"P": 10.0}, red)
    s = run.tr.stats()
    n = s.peds_arrived
    assert n >= 5 and s.peds_served == 0 and s.groups["P"].queued == n
    assert run.tr.detector(5).count == n
    run.run(25.0, red)
    assert run.tr.stats().ped_mean_wait_s == pytest.approx(15.0, abs=BURST_W)  # so far
    run.run(30.0, red)
    run.run(31.0, walk)  # the walk starts at 30: they waited 20 s
    s = run.tr.stats()
    assert s.peds_served == n and s.groups["P"].queued == 0
    assert s.ped_mean_wait_s == pytest.approx(20.0, abs=BURST_W)
    run.burst({"P": 10.0}, walk)  # arrive during the walk: cross at once, no press
    s = run.tr.stats()
    m = s.peds_arrived - n
    assert m >= 5 and s.peds_served == n + m and run.tr.detector(5).count == n
    assert s.ped_mean_wait_s == pytest.approx(20.0 * n / (n + m), abs=BURST_W)
    assert s.groups["P"].max_queue == n
    assert s.vehicles_arrived == 0 and s.mean_delay_s == 0.0


def test_pedestrians_cross_at_once_in_dark_and_wait_in_clearance() -> None:
    run = Run(PED, PB)
    run.run(10.0, {"P": DARK})
    run.burst({"P": 8.0}, {"P": DARK})
    s = run.tr.stats()
    assert s.peds_arrived >= 4 and s.peds_served == s.peds_arrived
    assert run.tr.detector(5).count == 0
    run.burst({"P": 8.0}, {"P": PED_CLEARANCE})
    s = run.tr.stats()
    assert s.groups["P"].queued == s.peds_arrived - s.peds_served > 0
    assert run.tr.detector(5).count == s.groups["P"].queued
