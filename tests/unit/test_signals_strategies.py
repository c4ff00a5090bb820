"""Signal strategies: fixed time, actuated, the Webster plan, the selector, adaptive behaviour.

A strategy only *asks* (``Request``); the :class:`PhaseEngine` decides. So every run here is a
:class:`Bench`: engine + strategy + a hand-made :class:`TrafficView` per 0.1 s step (integer
ticks, so times are exact), and every output goes through the independent
:class:`SafetyMonitor` — zero violations, always. The strategy sees the previous step's
output, as in :class:`~controller.signals.control.IntersectionControl`.

Scenes (what the detectors would say) are small callables ``(now, out) -> view``:
:class:`Calls` for exact actuated scenarios (vehicle calls with locking, push-button presses,
scripted gaps), :class:`Fluid` for fluid queues that fill at an arrival rate and drain at the
saturation flow while green (adaptive scenarios).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from controller.config import load_config
from controller.signals.detectors import DetectorBank, GroupView, TrafficView
from controller.signals.engine import EngineOutput, PhaseEngine, Request
from controller.signals.model import (
    FixedPlanConfig,
    GroupKind,
    Intersection,
    IntersectionConfig,
    Signal,
    SignalGroupConfig,
    StageConfig,
    StrategyConfig,
    StrategyPeriod,
)
from controller.signals.safety import SafetyMonitor
from controller.signals.strategies import (
    Actuated,
    Adaptive,
    AdaptiveConfig,
    FixedTime,
    StageTiming,
    Strategy,
    StrategySelector,
    _share,
    _webster_delay,
    called_peds,
    stage_min_left,
    webster_plan,
)
from tests.unit.signals_fixtures import four_arm, t_junction

G, Y, R, P = Signal.GREEN, Signal.YELLOW, Signal.RED, Signal.PED_CLEARANCE
STEP = 0.1
EPS = 1e-6

FOUR = Intersection.build(four_arm())
TJ = Intersection.build(t_junction())
SHIPPED = {
    x.id: x
    for x in load_config(Path(__file__).resolve().parents[2] / "config.yaml").intersections()
}

Scene = Callable[[float, EngineOutput], TrafficView]


# -- views and the bench -----------------------------------------------------------------------


_BASE: dict[str, tuple[GroupView, ...]] = {}


def quiet_view(x: Intersection, now: float, **groups: Mapping[str, Any]) -> TrafficView:
    """Nobody anywhere, except what ``groups`` (id → GroupView fields) says."""
    base = _BASE.get(x.id)
    if base is None:
        base = tuple(
            GroupView(g.id, g.kind, False, None, math.inf, 0.0, 0.0, (), False, False)
            for g in x.groups
        )
        _BASE[x.id] = base
    views = tuple(replace(v, **groups[v.group]) if v.group in groups else v for v in base)
    return TrafficView(now, views, x.index)


def quiet(x: Intersection) -> Scene:
    return lambda now, out: quiet_view(x, now)


@dataclass
class Calls:
    """Exact demand: vehicle groups that call whenever they are not green (locking memory),
    push buttons pressed once at a time (the call holds until the crossing walks), and
    scripted gaps ``gap(now)`` of the loops of some groups (others: ``inf``)."""

    x: Intersection
    vehicles: frozenset[str] = frozenset()
    presses: Mapping[str, float] = field(default_factory=dict)
    gaps: Mapping[str, Callable[[float], float]] = field(default_factory=dict)
    _since: dict[str, float] = field(default_factory=dict)
    _walked: set[str] = field(default_factory=set)

    def __call__(self, now: float, out: EngineOutput) -> TrafficView:
        fields: dict[str, dict[str, Any]] = {}
        for i, g in enumerate(self.x.groups):
            green = out.signals[i] is G
            if g.kind is GroupKind.PEDESTRIAN:
                pressed = self.presses.get(g.id)
                if pressed is not None and now >= pressed and green:
                    self._walked.add(g.id)
                call = pressed is not None and now >= pressed and g.id not in self._walked
            else:
                call = g.id in self.vehicles and not green
            if call:
                self._since.setdefault(g.id, now)
            else:
                self._since.pop(g.id, None)
            f: dict[str, Any] = {"call": call, "call_since": self._since.get(g.id)}
            if g.id in self.gaps:
                f["gap_s"] = self.gaps[g.id](now)
            fields[g.id] = f
        return quiet_view(self.x, now, **fields)


@dataclass
class Fluid:
    """Fluid queues: arrivals at ``vph`` (all lanes), discharge at 1,800 veh/h per lane while
    GREEN; a group calls while it queues half a vehicle (crossings: while not walking);
    ``floor`` keeps a least queue on a group while it is not green (a vehicle that never
    leaves, for the starvation guard)."""

    x: Intersection
    vph: Mapping[str, float]
    floor: Mapping[str, float] = field(default_factory=dict)
    queue: dict[str, float] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)
    t: float = 0.0

    def __call__(self, now: float, out: EngineOutput) -> TrafficView:
        dt_s, self.t = now - self.t, now
        fields: dict[str, dict[str, Any]] = {}
        for i, g in enumerate(self.x.groups):
            green = out.signals[i] is G
            lam = self.vph.get(g.id, 0.0) / 3600.0
            q = self.queue.get(g.id, 0.0) + lam * dt_s
            if green:
                q = 0.0 if g.kind is GroupKind.PEDESTRIAN else max(0.0, q - g.lanes * 0.5 * dt_s)
            elif g.id in self.floor:
                q = max(q, self.floor[g.id])
            self.queue[g.id] = q
            call = q >= 0.5 and not green
            if call:
                self.since.setdefault(g.id, now)
            elif green:
                self.since.pop(g.id, None)
            fields[g.id] = {
                "call": call,
                "call_since": self.since.get(g.id) if call else None,
                "queue": q,
                "arrivals_vph": lam * 3600.0,
                "gap_s": 0.0 if green and q >= 0.5 else 10.0,
            }
        return quiet_view(self.x, now, **fields)


class Bench:
    """Engine + strategy + safety monitor on a 0.1 s clock; records everything."""

    def __init__(
        self, x: Intersection, strategy: Strategy, *, start_stage: str | None = None
    ) -> None:
        self.x = x
        self.strategy = strategy
        self.engine = PhaseEngine(x, now=0.0, start_stage=start_stage)
        self.monitor = SafetyMonitor(x)
        self.tick = 0
        self.out = self.engine.output
        self.trace: list[EngineOutput] = [self.out]
        self.requests: list[tuple[float, Request]] = []
        self.views: list[TrafficView] = []
        assert self.monitor.check(0.0, self.out.signals) == []

    @property
    def now(self) -> float:
        return self.tick / 10

    def run(self, seconds: float, scene: Scene) -> None:
        for _ in range(round(seconds / STEP)):
            self.tick += 1
            now = self.now
            view = scene(now, self.out)
            request = self.strategy.decide(now, self.out, view)
            self.out = self.engine.step(now, request)
            assert self.monitor.check(now, self.out.signals) == [], (now, self.out)
            self.trace.append(self.out)
            self.requests.append((now, request))
        assert self.monitor.total == 0
        assert self.engine.stats.refused_requests == 0

    def greens(self) -> list[tuple[float, str]]:
        """(time, stage) whenever the engine reaches green with a new stage."""
        res: list[tuple[float, str]] = []
        prev: tuple[str, str | None] | None = None
        for o in self.trace:
            key = (o.phase, o.stage)
            if o.phase == "green" and key != prev:
                assert o.stage is not None
                res.append((o.t, o.stage))
            prev = key
        return res

    def ends(self) -> list[tuple[float, str, str]]:
        """(time, stage left, stage entered) whenever a green ends."""
        res: list[tuple[float, str, str]] = []
        for a, b in itertools.pairwise(self.trace):
            if a.phase == "green" and b.phase == "clearance":
                assert a.stage is not None and b.stage is not None
                res.append((b.t, a.stage, b.stage))
        return res

    def onsets(self, gid: str, signal: Signal = G) -> list[float]:
        """Times at which ``gid`` starts showing ``signal``."""
        k = self.x.index[gid]
        return [
            b.t
            for a, b in itertools.pairwise(self.trace)
            if b.signals[k] is signal and a.signals[k] is not signal
        ]

    def ever(self, gid: str, signal: Signal = G) -> bool:
        k = self.x.index[gid]
        return any(o.signals[k] is signal for o in self.trace)


# -- StageTiming ------------------------------------------------------------------------------


def test_stage_timing_splits_stages_and_derives_their_greens() -> None:
    t = StageTiming(FOUR)
    ix = FOUR.index
    assert t.ids == ("NS_T", "NS_L", "EW_T", "EW_L")
    assert t.vehicles["NS_T"] == {ix["N_T"], ix["S_T"]}
    assert t.peds["NS_T"] == {ix["P_E"], ix["P_W"]}
    assert t.peds["NS_L"] == frozenset()
    assert t.min_green == {"NS_T": 8.0, "NS_L": 5.0, "EW_T": 6.0, "EW_L": 5.0}
    # walk 7 s + clearance 12 m / 1.2 m/s = 10 s; 16 m crossings: 13.4 s
    assert t.ped_green == pytest.approx({"NS_T": 17.0, "NS_L": 0.0, "EW_T": 20.4, "EW_L": 0.0})
    assert t.max_green == {"NS_T": 60.0, "NS_L": 25.0, "EW_T": 40.0, "EW_L": 25.0}
    assert t.min_hold("NS_T", False) == 8.0
    assert t.min_hold("NS_T", True) == pytest.approx(17.0)
    assert t.min_hold("NS_L", True) == 5.0
    assert [t.after(s) for s in t.ids] == ["NS_L", "EW_T", "EW_L", "NS_T"]


def test_a_stage_of_crossings_only_is_held_and_maxed_by_its_walks() -> None:
    x = SHIPPED["ql1a-thd"]
    t = StageTiming(x)
    # P_N: walk 7 + 18 m / 1.2 = 15 s; P_E: walk 7 + 10 s
    assert t.ped_green["PED"] == pytest.approx(22.0)
    assert t.min_green["PED"] == 0.0
    assert t.max_green["PED"] == pytest.approx(22.0)
    assert t.min_hold("PED", False) == 0.0
    assert t.min_hold("PED", True) == pytest.approx(22.0)


def _expected_start(x: Intersection, a: frozenset[int], b: frozenset[int], j: int) -> float:
    offs = [
        x.all_red(i, j) if x.groups[i].kind is GroupKind.PEDESTRIAN else x.intergreen[i][j]
        for i in a - b
        if x.conflict[i][j]
    ]
    return max(offs, default=0.0)


@pytest.mark.parametrize("x", [FOUR, TJ, *SHIPPED.values()], ids=lambda x: x.id)
def test_start_offsets_are_the_intergreens_and_a_left_crossing_its_all_red(
    x: Intersection,
) -> None:
    t = StageTiming(x)
    for a, ma in x.stages:
        for b, mb in x.stages:
            assert set(t.starts[a][b]) == set(mb - ma)
            for j, off in t.starts[a][b].items():
                assert off == pytest.approx(_expected_start(x, ma, mb, j)), (a, b, j)
            assert t.transition[a][b] == max(t.starts[a][b].values(), default=0.0)
        assert t.transition[a][a] == 0.0


def test_start_offsets_by_hand() -> None:
    t = StageTiming(TJ)
    ix = TJ.index
    # W_T and E_T end (3.3 s yellow + 1.6 s all-red); P_S only counts its 1 s all-red
    assert TJ.intergreen[ix["P_S"]][ix["S_L"]] == pytest.approx(8.5)
    assert t.starts["main"]["side"] == pytest.approx({ix["S_L"]: 4.9, ix["S_R"]: 4.9})
    # from main_left, nothing that conflicts with S_R is open: it starts at once
    assert t.starts["main_left"]["side"] == pytest.approx({ix["S_L"]: 4.9, ix["S_R"]: 0.0})
    assert t.transition["side"]["main"] == pytest.approx(5.5)
    # the four-arm N-S through groups: 60 km/h, 4 % downhill → 4.2 s yellow + 1.7 s all-red
    assert StageTiming(FOUR).transition["NS_T"]["EW_T"] == pytest.approx(5.9)


def _crossing_only_conflict() -> Intersection:
    """Stage A: a vehicle group V1 and a crossing P1; stage B: V2, which conflicts with the
    crossing only."""
    groups = [
        SignalGroupConfig(id="V1", min_green_s=5.0),
        SignalGroupConfig(id="V2", min_green_s=5.0),
        SignalGroupConfig(id="P1", kind=GroupKind.PEDESTRIAN, crossing_m=12.0, walk_s=7.0),
    ]
    cfg = IntersectionConfig(
        id="xp",
        groups=groups,
        conflicts=[("P1", "V2")],
        stages=[StageConfig(id="A", groups=["V1", "P1"]), StageConfig(id="B", groups=["V2"])],
    )
    return Intersection.build(cfg)


def test_a_crossing_of_the_stage_left_counts_only_its_all_red() -> None:
    x = _crossing_only_conflict()
    t = StageTiming(x)
    ix = x.index
    assert x.intergreen[ix["P1"]][ix["V2"]] == pytest.approx(11.0)  # 10 s clearance + 1 s
    assert t.starts["A"]["B"] == pytest.approx({ix["V2"]: 1.0})
    assert t.transition["A"]["B"] == pytest.approx(1.0)
    # and that is what the engine does: the crossing's clearance runs inside stage A
    b = Bench(x, FixedTime(x, FixedPlanConfig(name="p", cycle_s=60, greens={"A": 20, "B": 20})))
    b.run(200.0, quiet(x))
    for end, left, entered in b.ends():
        if (left, entered) == ("A", "B"):
            start = next(s for s, st in b.greens() if s >= end and st == "B")
            assert start - end <= 1.0 + EPS


# -- helpers ----------------------------------------------------------------------------------


def test_stage_min_left_reads_the_engines_release_times() -> None:
    e = PhaseEngine(FOUR, now=0.0)
    mon = SafetyMonitor(FOUR)
    ix = FOUR.index
    through = frozenset({ix["N_T"], ix["S_T"]})
    out = e.output
    assert mon.check(0.0, out.signals) == []
    assert out.release_at != ()
    assert stage_min_left(out, through, 0.0) == 0.0  # nothing green holds anything
    out = e.step(3.0, Request(peds=frozenset({"P_E"})))  # N_T, S_T green; P_E walks
    assert mon.check(3.0, out.signals) == []
    assert stage_min_left(out, through, 5.0) == pytest.approx(6.0)  # 8 s minimum green
    assert stage_min_left(out, through, 20.0) == 0.0
    # the crossing holds the stage for its walk (7 s) and clearance (10 s)
    assert stage_min_left(out, frozenset({ix["P_E"]}), 5.0) == pytest.approx(15.0)
    assert stage_min_left(out, through | {ix["P_E"]}, 5.0) == pytest.approx(15.0)
    assert stage_min_left(out, frozenset({ix["P_W"]}), 5.0) == 0.0  # not served: holds nothing
    assert stage_min_left(out, frozenset(), 5.0) == 0.0
    assert stage_min_left(out._replace(release_at=()), through, 5.0) == 0.0


def test_called_peds_are_the_crossings_with_a_call() -> None:
    call = {"call": True}
    view = quiet_view(FOUR, 0.0, P_N=call, P_E={"call": False}, N_T=call, E_L=call)
    assert called_peds(FOUR, view) == {"P_N"}
    assert called_peds(FOUR, quiet_view(FOUR, 0.0)) == frozenset()


# -- fixed time -------------------------------------------------------------------------------

PLAN = FixedPlanConfig(
    name="p", cycle_s=110, greens={"NS_T": 30, "NS_L": 10, "EW_T": 25, "EW_L": 8}
)


def test_fixed_time_greens_fill_the_cycle() -> None:
    t = StageTiming(FOUR)
    f = FixedTime(FOUR, PLAN)
    assert f.name == "fixed:p"
    assert f.sequence == ("NS_T", "NS_L", "EW_T", "EW_L")
    assert f.intergreens == pytest.approx((5.9, 5.5, 5.2, 5.2))
    assert sum(f.greens) + sum(f.intergreens) == pytest.approx(110.0)
    assert f.cycle_s == pytest.approx(110.0)
    # stretched in proportion to the plan's greens (all above their minimum holds here)
    scale = f.greens[0] / 30
    assert f.greens == pytest.approx((30 * scale, 10 * scale, 25 * scale, 8 * scale))
    assert f.starts == pytest.approx(
        (0.0, f.greens[0] + 5.9, f.greens[0] + f.greens[1] + 11.4, 110 - 5.2 - f.greens[3])
    )
    assert all(g >= t.min_hold(s, True) for s, g in zip(f.sequence, f.greens, strict=True))


def test_fixed_time_shrinks_only_above_the_minimum_holds() -> None:
    t = StageTiming(FOUR)
    mins = [t.min_hold(s, True) for s in ("NS_T", "NS_L", "EW_T", "EW_L")]  # 17, 5, 20.4, 5
    f = FixedTime(FOUR, PLAN.model_copy(update={"cycle_s": 90.0}))
    assert f.cycle_s == pytest.approx(90.0)
    spare = [g - m for g, m in zip((30, 10, 25, 8), mins, strict=True)]
    cut = (73 + 21.8) - 90.0
    want = [g - cut * s / sum(spare) for g, s in zip((30, 10, 25, 8), spare, strict=True)]
    assert f.greens == pytest.approx(want)
    # a cycle too short for the minimum holds runs at the minimum holds
    f = FixedTime(FOUR, PLAN.model_copy(update={"cycle_s": 40.0}))
    assert f.greens == pytest.approx(mins)
    assert f.cycle_s == pytest.approx(sum(mins) + 21.8)


def test_fixed_time_needs_two_known_stages() -> None:
    f = FixedTime(
        FOUR, FixedPlanConfig(name="q", cycle_s=80, greens={"NS_T": 30, "ZZ": 9, "EW_T": 30})
    )
    assert f.sequence == ("NS_T", "EW_T")
    with pytest.raises(ValueError, match="needs at least two known stages"):
        FixedTime(FOUR, FixedPlanConfig(name="q", cycle_s=80, greens={"NS_T": 30, "ZZ": 9}))


def test_fixed_time_cycle_clock_and_schedule() -> None:
    f = FixedTime(FOUR, PLAN.model_copy(update={"offset_s": 17.0}))
    assert f.cycle_time(17.0) == 0.0
    assert f.cycle_time(17.0 + 3 * 110 + 5) == pytest.approx(5.0)
    assert f.cycle_time(0.0) == pytest.approx(110 - 17.0)
    for k, sid in enumerate(f.sequence):
        start = 17.0 + f.starts[k]
        nxt = f.sequence[(k + 1) % 4]
        assert f.scheduled_stage(start + 0.01) == sid
        assert f.scheduled_stage(start + f.greens[k] - 0.01) == sid
        assert f.scheduled_stage(start + f.greens[k] + 0.01) == nxt  # the intergreen before it


def _steady(b: Bench, f: FixedTime, after: float) -> dict[str, list[tuple[float, float]]]:
    """Per stage, (green start, green length) of the greens that start after ``after``."""
    ends = {(t, s) for t, s, _ in b.ends()}
    res: dict[str, list[tuple[float, float]]] = {s: [] for s in f.sequence}
    for start, stage in b.greens():
        if start < after:
            continue
        end = min((t for t, s in ends if s == stage and t > start), default=None)
        if end is not None:
            res[stage].append((start, end - start))
    return res


def _phase_error(t: float, want: float, cycle: float) -> float:
    """Signed distance of ``t`` from ``want`` on the cycle circle."""
    return (t - want + cycle / 2) % cycle - cycle / 2


@pytest.mark.parametrize("offset", [0.0, 17.0, 93.5])
def test_fixed_time_repeats_with_its_cycle(offset: float) -> None:
    f = FixedTime(FOUR, PLAN.model_copy(update={"offset_s": offset}))
    b = Bench(FOUR, f)
    b.run(6 * f.cycle_s, quiet(FOUR))
    steady = _steady(b, f, after=1.5 * f.cycle_s)
    for k, sid in enumerate(f.sequence):
        runs = steady[sid]
        assert len(runs) >= 3
        for start, length in runs:
            # on schedule to the step: (now - offset) mod cycle = the stage's start
            err = _phase_error(start, offset + f.starts[k], f.cycle_s)
            assert -EPS <= err <= STEP + EPS, (sid, start)
            assert abs(length - f.greens[k]) <= STEP + EPS, (sid, length)
        starts = [s for s, _ in runs]
        for a, c in itertools.pairwise(starts):
            assert abs(c - a - f.cycle_s) <= STEP + EPS
    # the stage sequence is the plan's, over and over
    seq = [s for _, s in b.greens()]
    k0 = seq.index("NS_T", 1)
    assert seq[k0:] == [f.sequence[k % 4] for k in range(len(seq) - k0)]
    # a fixed plan walks every crossing every cycle
    for ped in ("P_N", "P_S", "P_E", "P_W"):
        walks = [t for t in b.onsets(ped) if t >= 1.5 * f.cycle_s]
        assert all(abs(c - a - f.cycle_s) <= STEP + EPS for a, c in itertools.pairwise(walks))
        assert len(walks) >= 4


def test_an_offset_shifts_the_whole_schedule() -> None:
    starts: dict[float, list[tuple[float, str]]] = {}
    for offset in (0.0, 17.0):
        f = FixedTime(FOUR, PLAN.model_copy(update={"offset_s": offset}))
        b = Bench(FOUR, f)
        b.run(500.0, quiet(FOUR))
        starts[offset] = [(t, s) for t, s in b.greens() if 250.0 < t < 480.0]
    for t0, s0 in starts[0.0]:
        # the same stage starts 17 s later in the shifted plan, to the step
        assert any(s1 == s0 and abs(t1 - t0 - 17.0) <= STEP + EPS for t1, s1 in starts[17.0]), (
            t0,
            s0,
        )


def test_a_stage_the_plan_does_not_use_is_left_for_the_scheduled_one() -> None:
    plan = FixedPlanConfig(name="two", cycle_s=80, greens={"NS_T": 30, "EW_T": 30})
    f = FixedTime(FOUR, plan)
    b = Bench(FOUR, f, start_stage="NS_L")
    b.run(3.0, quiet(FOUR))
    assert (b.out.phase, b.out.stage) == ("green", "NS_L")
    req = f.decide(3.1, b.out, quiet_view(FOUR, 3.1))
    assert req == Request(next_stage=f.scheduled_stage(3.1), end_green=True)
    b = Bench(FOUR, f, start_stage="NS_L")
    b.run(300.0, quiet(FOUR))
    greens = b.greens()
    assert greens[0] == (3.0, "NS_L")
    # left at its minimum green (5 s) for the stage scheduled then, never seen again
    assert b.ends()[0] == (8.0, "NS_L", f.scheduled_stage(8.0))
    assert {s for _, s in greens[1:]} == {"NS_T", "EW_T"}


def test_fixed_time_asks_for_nothing_new_in_a_clearance() -> None:
    f = FixedTime(FOUR, PLAN)
    e = PhaseEngine(FOUR, now=0.0)
    mon = SafetyMonitor(FOUR)
    assert f.decide(1.0, e.output, quiet_view(FOUR, 1.0)) == Request(next_stage=None)
    for tick in range(1, 251):
        out = e.step(tick / 10, Request("EW_T", end_green=True))
        assert mon.check(tick / 10, out.signals) == []
    assert out.phase == "clearance"  # NS_T with its crossings' walk and clearance is over
    assert f.decide(25.1, out, quiet_view(FOUR, 25.1)) == Request(next_stage="EW_T")


def test_a_plan_above_a_max_green_keeps_its_cycle() -> None:
    """EW_T is stretched past its 40 s max green: the engine maxes it out each cycle and
    NS_T, ahead of its window, holds until its scheduled end — the cycle stays 100 s."""
    f = FixedTime(FOUR, FixedPlanConfig(name="m", cycle_s=100, greens={"NS_T": 20, "EW_T": 38}))
    assert f.greens[1] > 40.0
    b = Bench(FOUR, f)
    b.run(600.0, quiet(FOUR))
    assert b.engine.stats.max_outs >= 5
    ns = [t for t, s in b.greens() if s == "NS_T" and t > 100]
    assert all(abs(c - a - 100.0) <= STEP + EPS for a, c in itertools.pairwise(ns))
    for _start, length in _steady(b, f, 100.0)["EW_T"]:
        assert length <= 40.0 + STEP + EPS


def _on_schedule(b: Bench, f: FixedTime, after: float, steps: int) -> None:
    for k, sid in enumerate(f.sequence):
        runs = _steady(b, f, after=after)[sid]
        assert runs, sid
        for start, length in runs:
            err = _phase_error(start, f.plan.offset_s + f.starts[k], f.cycle_s)
            assert -EPS <= err <= steps * STEP + EPS, (sid, start, err)
            assert abs(length - f.greens[k]) <= steps * STEP + EPS, (sid, length)


@pytest.mark.parametrize("xid", ["ql1a-lct", "ql1a-thd"])
def test_fixed_time_runs_the_shipped_day_plans(xid: str) -> None:
    """A crossing's stage ends one step after the crossing turned red (the engine's rule), so
    a stage held by its crossings runs up to two steps past its scheduled end."""
    x = SHIPPED[xid]
    f = FixedTime(x, next(p for p in x.config.fixed_plans if p.name == "day"))
    t = StageTiming(x)
    assert f.cycle_s == pytest.approx(
        next(p.cycle_s for p in x.config.fixed_plans if p.name == "day")
    )
    assert all(g >= t.min_hold(s, True) - EPS for s, g in zip(f.sequence, f.greens, strict=True))
    b = Bench(x, f)
    b.run(5 * f.cycle_s, quiet(x))
    _on_schedule(b, f, after=f.cycle_s, steps=2)


def test_fixed_time_at_the_minimum_holds_keeps_its_cycle() -> None:
    x = SHIPPED["ql1a-lct"]
    f = FixedTime(x, next(p for p in x.config.fixed_plans if p.name == "night"))
    t = StageTiming(x)
    assert list(f.greens) == pytest.approx([t.min_hold(s, True) for s in f.sequence])
    b = Bench(x, f)
    b.run(6 * f.cycle_s, quiet(x))
    ns = [t for t, s in b.greens() if s == "NS"][1:]
    periods = [round(c - a, 3) for a, c in itertools.pairwise(ns)]
    assert periods == pytest.approx([f.cycle_s] * len(periods), abs=STEP + EPS)


# -- Webster ----------------------------------------------------------------------------------


def _cross(**kw: Any) -> Intersection:
    """A symmetric two-stage crossroads with low minimum greens (Webster's textbook case)."""
    g: dict[str, Any] = {"min_green_s": 3.0, "max_green_s": 120.0, "speed_kmh": 50.0}
    g.update(kw)
    groups = [SignalGroupConfig(id=i, **g) for i in ("N", "S", "E", "W")]
    cfg = IntersectionConfig(
        id="cross",
        groups=groups,
        conflicts=[(a, b) for a in "NS" for b in "EW"],
        stages=[StageConfig(id="NS", groups=["N", "S"]), StageConfig(id="EW", groups=["E", "W"])],
    )
    return Intersection.build(cfg)


CROSS = _cross()
FLOWS_FOUR: dict[str, dict[str, float]] = {
    "light": {"N_T": 300, "S_T": 300, "E_T": 200, "W_T": 200},
    "moderate": {
        "N_T": 1300,
        "S_T": 1200,
        "E_T": 500,
        "W_T": 450,
        "N_L": 150,
        "S_L": 120,
        "E_L": 80,
        "W_L": 90,
    },
    "heavy": {
        "N_T": 2000,
        "S_T": 2000,
        "E_T": 800,
        "W_T": 800,
        "N_L": 300,
        "S_L": 300,
        "E_L": 200,
        "W_L": 200,
    },
}
FLOWS_TJ: dict[str, float] = {"W_T": 1400, "E_T": 1200, "E_L": 200, "S_L": 250, "S_R": 200}


def _lost(x: Intersection, seq: list[str]) -> tuple[float, list[float]]:
    t = StageTiming(x)
    inter = [t.transition[a][seq[(k + 1) % len(seq)]] for k, a in enumerate(seq)]
    return sum(inter), inter


def _cases() -> list[tuple[Intersection, dict[str, float], float, float]]:
    cases: list[tuple[Intersection, dict[str, float], float, float]] = []
    for flows in FLOWS_FOUR.values():
        cases.append((FOUR, flows, 30.0, 150.0))
    cases.append((FOUR, FLOWS_FOUR["moderate"], 80.0, 100.0))
    cases.append((TJ, FLOWS_TJ, 30.0, 150.0))
    cases.append((CROSS, {"N": 600, "S": 600, "E": 400, "W": 400}, 30.0, 120.0))
    cases.append((CROSS, {"N": 100, "S": 100, "E": 100, "W": 100}, 30.0, 120.0))
    for x in SHIPPED.values():
        flows = {g.id: 400.0 * g.lanes for g in x.groups if g.kind is GroupKind.VEHICLE}
        cases.append((x, flows, 30.0, 150.0))
    return cases


@pytest.mark.parametrize(("x", "flows", "lo", "hi"), _cases())
def test_webster_plan_stays_within_cycle_bounds_and_stage_limits(
    x: Intersection, flows: dict[str, float], lo: float, hi: float
) -> None:
    t = StageTiming(x)
    plan = webster_plan(x, flows, min_cycle_s=lo, max_cycle_s=hi)
    seq = list(t.ids)
    assert list(plan.greens) == seq
    lost, _ = _lost(x, seq)
    floor = lost + sum(t.min_hold(s, True) for s in seq)
    assert max(lo, floor) - 0.05 <= plan.cycle_s <= max(hi, floor) + 0.05
    for s in seq:
        assert plan.greens[s] >= t.min_hold(s, True) - EPS, s
        assert plan.greens[s] <= max(t.max_green[s], t.min_hold(s, True)) + EPS, s
    # to the rounding of the greens
    assert plan.cycle_s == pytest.approx(
        lost + sum(plan.greens.values()), abs=0.05 * len(seq) + EPS
    )
    f = FixedTime(x, plan)  # usable as it is
    assert f.cycle_s == pytest.approx(plan.cycle_s)


def _ratios(x: Intersection, seq: list[str], flows: Mapping[str, float]) -> list[float]:
    t = StageTiming(x)
    seen: set[int] = set()
    out = []
    for s in seq:
        y = 0.0
        for i in t.members[s]:
            g = x.groups[i]
            if g.kind is GroupKind.VEHICLE and i not in seen:
                y = max(y, flows.get(g.id, 0.0) / (g.lanes * 1800.0))
        seen |= t.members[s]
        out.append(y)
    return out


@pytest.mark.parametrize(("x", "flows", "lo", "hi"), _cases())
def test_webster_plan_has_the_least_delay_of_the_cycles_it_tries(
    x: Intersection, flows: dict[str, float], lo: float, hi: float
) -> None:
    t = StageTiming(x)
    seq = list(t.ids)
    lost, inter = _lost(x, seq)
    mins = [t.min_hold(s, True) for s in seq]
    maxs = [max(t.max_green[s], m) for s, m in zip(seq, mins, strict=True)]
    ratios = _ratios(x, seq, flows)
    floor = lost + sum(mins)
    c0 = max(lo, floor)
    tried = []
    c = c0
    while c <= max(hi, floor) + 1e-9:
        greens = _share(c - lost, ratios, mins, maxs)
        tried.append((_webster_delay(x, seq, t, greens, inter, flows, 1800.0), c, greens))
        c += 1.0
    plan = webster_plan(x, flows, min_cycle_s=lo, max_cycle_s=hi)
    # the plan is one of them, each green rounded up to 0.1 s (never below a minimum) ...
    chosen = [
        r
        for r in tried
        if all(-EPS <= plan.greens[s] - g < 0.1 + EPS for s, g in zip(seq, r[2], strict=True))
    ]
    assert len(chosen) == 1
    cost, _, greens = chosen[0]
    assert plan.cycle_s == pytest.approx(lost + sum(plan.greens[s] for s in seq), abs=EPS)
    # ... with the least Webster delay; the rounded plan is as good to 0.2 %
    assert all(cost <= other + 1e-9 for other, _, _ in tried)
    rounded = _webster_delay(x, seq, t, [plan.greens[s] for s in seq], inter, flows, 1800.0)
    assert rounded <= min(r[0] for r in tried) * 1.002 + 1e-9


@pytest.mark.parametrize(("q1", "q2"), [(600, 400), (800, 600), (300, 200), (500, 300)])
def test_webster_heavier_flows_get_longer_greens(q1: float, q2: float) -> None:
    plan = webster_plan(CROSS, {"N": q1, "S": q1, "E": q2, "W": q2}, min_cycle_s=20)
    g_ns, g_ew = plan.greens["NS"], plan.greens["EW"]
    assert g_ns > g_ew
    assert g_ns / g_ew == pytest.approx(q1 / q2, rel=0.02)  # equal degrees of saturation
    # the critical flow of a stage is its heaviest group
    more = webster_plan(CROSS, {"N": q1 + 200, "S": q1, "E": q2, "W": q2}, min_cycle_s=20)
    assert more.greens["NS"] / more.greens["EW"] > g_ns / g_ew


def test_webster_more_demand_means_a_longer_cycle() -> None:
    cycles = [
        webster_plan(CROSS, {"N": q, "S": q, "E": q, "W": q}, min_cycle_s=20).cycle_s
        for q in (200, 400, 600, 750)
    ]
    assert cycles == sorted(cycles) and cycles[0] < cycles[-1]


@pytest.mark.parametrize("q", [150.0, 450.0, 700.0])
def test_webster_symmetric_flows_give_symmetric_greens(q: float) -> None:
    plan = webster_plan(CROSS, {"N": q, "S": q, "E": q, "W": q}, min_cycle_s=20)
    assert plan.greens["NS"] == plan.greens["EW"]
    swapped = webster_plan(CROSS, {"N": q, "S": q / 2, "E": q / 2, "W": q / 3}, min_cycle_s=20)
    mirror = webster_plan(CROSS, {"E": q, "W": q / 2, "N": q / 2, "S": q / 3}, min_cycle_s=20)
    assert swapped.greens["NS"] == mirror.greens["EW"]
    assert swapped.greens["EW"] == mirror.greens["NS"]
    assert swapped.cycle_s == mirror.cycle_s


@pytest.mark.parametrize(("q1", "q2"), [(600, 400), (800, 600), (300, 200), (900, 700)])
def test_webster_cycle_is_near_the_classic_c0_where_no_minimum_binds(q1: float, q2: float) -> None:
    plan = webster_plan(
        CROSS, {"N": q1, "S": q1, "E": q2, "W": q2}, min_cycle_s=10, max_cycle_s=250
    )
    lost, _ = _lost(CROSS, ["NS", "EW"])
    y = q1 / 1800 + q2 / 1800
    c0 = (1.5 * lost + 5) / (1 - y)
    assert plan.cycle_s == pytest.approx(c0, rel=0.1)


def test_webster_plan_takes_name_offset_and_sequence() -> None:
    seq = ["NS_T", "EW_T", "NS_L", "EW_L"]
    plan = webster_plan(FOUR, FLOWS_FOUR["moderate"], name="am", offset_s=12.0, sequence=seq)
    assert plan.name == "am" and plan.offset_s == 12.0
    assert list(plan.greens) == seq
    lost, _ = _lost(FOUR, seq)
    assert plan.cycle_s == pytest.approx(lost + sum(plan.greens.values()), abs=0.25)
    assert FixedTime(FOUR, plan).sequence == tuple(seq)


def test_webster_plan_cycle_is_its_greens_plus_intergreens() -> None:
    plan = webster_plan(FOUR, FLOWS_FOUR["heavy"])
    lost, _ = _lost(FOUR, list(plan.greens))
    assert plan.cycle_s == pytest.approx(lost + sum(plan.greens.values()), abs=EPS)


# -- actuated ---------------------------------------------------------------------------------


def test_actuated_validates_its_gap() -> None:
    with pytest.raises(ValueError, match="gap_s"):
        Actuated(FOUR, gap_s=0.0)
    assert Actuated(FOUR).name == "actuated"


def test_actuated_rests_in_green_without_calls() -> None:
    a = Actuated(FOUR)
    b = Bench(FOUR, a)
    b.run(300.0, Calls(FOUR, gaps={"N_T": lambda t: 0.0}))  # busy, but nobody else waits
    assert b.greens() == [(3.0, "NS_T")]
    assert b.engine.stats.max_outs == 0
    assert all(r.next_stage is None and not r.end_green for t, r in b.requests if t > 3.0)


def test_actuated_next_stage_skips_stages_without_calls() -> None:
    a = Actuated(FOUR)
    v = quiet_view(FOUR, 0.0, W_L={"call": True})
    assert a.next_stage("NS_T", v) == "EW_L"
    assert a.next_stage("EW_L", v) is None  # W_L is served here
    v = quiet_view(FOUR, 0.0, N_L={"call": True}, W_L={"call": True})
    assert a.next_stage("NS_T", v) == "NS_L"
    assert a.next_stage("NS_L", v) == "EW_L"
    assert a.next_stage("EW_L", v) == "NS_L"
    assert a.next_stage("NS_T", quiet_view(FOUR, 0.0)) is None


def test_actuated_goes_straight_to_the_called_stage() -> None:
    b = Bench(FOUR, Actuated(FOUR))
    b.run(120.0, Calls(FOUR, vehicles=frozenset({"E_T"})))
    # NS_T ends at its minimum green (8 s, no crossing called), EW_T after the intergreen
    assert b.greens() == [(3.0, "NS_T"), (16.9, "EW_T")]
    assert b.ends() == [(11.0, "NS_T", "EW_T")]
    assert not b.ever("N_L") and not b.ever("P_N") and not b.ever("P_S")


def test_actuated_serves_calls_in_sequence() -> None:
    b = Bench(FOUR, Actuated(FOUR))
    b.run(200.0, Calls(FOUR, vehicles=frozenset({"N_L", "W_L"})))
    seq = [s for _, s in b.greens()]
    assert seq[:6] == ["NS_T", "NS_L", "EW_L", "NS_L", "EW_L", "NS_L"]
    assert not b.ever("E_T")
    # each ends at its minimum green: nobody actuates their loops
    for t, left, _ in b.ends()[1:]:
        start = max(s for s, st in b.greens() if s < t and st == left)
        assert t - start == pytest.approx(StageTiming(FOUR).min_green[left])


def _actuations_until(stop: float, every: float = 2.0) -> Callable[[float], float]:
    """Gap of a loop that a vehicle actuates every ``every`` s until ``stop``."""

    def gap(now: float) -> float:
        last = min(now, stop)
        return now - every * math.floor(last / every + 1e-9)

    return gap


@pytest.mark.parametrize("gap_s", [3.0, 5.0])
def test_actuated_extends_while_vehicles_come_and_gaps_out(gap_s: float) -> None:
    gaps = {"N_T": _actuations_until(30.0), "S_T": _actuations_until(24.0)}
    b = Bench(FOUR, Actuated(FOUR, gap_s=gap_s))
    b.run(80.0, Calls(FOUR, vehicles=frozenset({"E_T"}), gaps=gaps))
    # N_T's last vehicle at 30 s: the stage ends when its gap reaches gap_s
    end, left, entered = b.ends()[0]
    assert (left, entered) == ("NS_T", "EW_T")
    assert end == pytest.approx(30.0 + gap_s)
    assert b.engine.stats.max_outs == 0
    asked = [(t, r) for t, r in b.requests if 11.0 <= t < 30.0 + gap_s - 1e-9]
    assert all(r == Request("EW_T", end_green=False, peds=frozenset()) for _, r in asked)


def test_actuated_maxes_out_under_continuous_demand() -> None:
    gaps = {"N_T": lambda t: 0.0, "S_T": lambda t: 0.0, "E_T": lambda t: 0.0}
    b = Bench(FOUR, Actuated(FOUR))
    b.run(130.0, Calls(FOUR, vehicles=frozenset({"N_T", "E_T"}), gaps=gaps))
    # NS_T: 60 s max green from 3 s; EW_T: 40 s from 68.9 s
    assert b.ends()[:2] == [(63.0, "NS_T", "EW_T"), (pytest.approx(108.9), "EW_T", "NS_T")]
    assert b.engine.stats.max_outs == 2


def test_actuated_walks_called_crossings_of_the_next_stage() -> None:
    b = Bench(FOUR, Actuated(FOUR))
    b.run(120.0, Calls(FOUR, presses={"P_N": 0.0}, vehicles=frozenset({"E_L"})))
    greens = b.greens()
    assert greens[:2] == [(3.0, "NS_T"), (16.9, "EW_T")]  # the crossing alone calls EW_T
    assert b.onsets("P_N") == [16.9] and not b.ever("P_S")
    assert any(r.peds == frozenset({"P_N"}) for t, r in b.requests if t < 16.9)
    # its walk (7 s) and clearance (13.4 s) hold EW_T although E_L waits
    assert b.onsets("P_N", P) == [pytest.approx(23.9)]
    end = next(t for t, s, _ in b.ends() if s == "EW_T")
    assert end >= 16.9 + 20.4 - EPS
    assert end <= 16.9 + 20.4 + 2 * STEP + EPS


def test_actuated_walks_a_crossing_of_the_running_stage_only_while_resting() -> None:
    # resting in NS_T: a press at 20 s walks at once (a late walk)
    b = Bench(FOUR, Actuated(FOUR))
    b.run(60.0, Calls(FOUR, presses={"P_E": 20.0}))
    assert b.onsets("P_E") == [20.0] and not b.ever("P_W")
    assert b.greens() == [(3.0, "NS_T")]
    # the same press while E_T waits: NS_T is left, P_E walks when NS_T comes back
    b = Bench(FOUR, Actuated(FOUR))
    b.run(20.0, quiet(FOUR))
    scene = Calls(FOUR, presses={"P_E": 20.1}, vehicles=frozenset({"E_T"}))
    b.run(100.0, scene)
    # the press and E_T's call are seen at 20.1 s: NS_T is left at once, without a late walk
    assert b.requests[200] == (20.1, Request("EW_T", end_green=True, peds=frozenset()))
    assert b.ends()[0] == (20.1, "NS_T", "EW_T")
    back = next(t for t, s in b.greens() if s == "NS_T" and t > 20.1)
    assert b.onsets("P_E") == [back]  # it walks when NS_T comes back


def test_actuated_recall_groups_always_call() -> None:
    b = Bench(FOUR, Actuated(FOUR, recall=["N_T", "E_T"]))
    b.run(150.0, quiet(FOUR))
    greens = b.greens()
    assert [s for _, s in greens] == ["NS_T", "EW_T"] * (len(greens) // 2) + ["NS_T"] * (
        len(greens) % 2
    )
    # each at its minimum green: 8 + 5.9 + 6 + 5.2 = 25.1 s a cycle
    ns = [t for t, s in greens if s == "NS_T"]
    assert all(c - a == pytest.approx(25.1) for a, c in itertools.pairwise(ns))
    assert not b.ever("N_L") and not b.ever("E_L")


def test_actuated_recall_from_the_config_through_the_selector() -> None:
    x = Intersection.build(
        four_arm(strategy=StrategyConfig(default="actuated", gap_s=4.0, recall=["E_L"]))
    )
    s = StrategySelector(x).current(dt.time(12, 0))
    assert isinstance(s, Actuated)
    assert s.gap_s == 4.0 and s.recall == {x.index["E_L"]}
    b = Bench(x, s)
    b.run(60.0, quiet(x))
    assert [st for _, st in b.greens()] == ["NS_T", "EW_L"]  # then rests there


def test_actuated_recall_crossing_walks() -> None:
    b = Bench(FOUR, Actuated(FOUR, recall=["P_N"]))
    b.run(100.0, quiet(FOUR))
    assert [s for _, s in b.greens()][:2] == ["NS_T", "EW_T"]  # the recall calls EW_T ...
    assert b.ever("P_N")  # ... and so the crossing should walk


def test_actuated_with_a_detector_bank_serves_a_push_button() -> None:
    """The same, through the detector bank: a press on P_S's button (channel 19) calls it."""
    bank = DetectorBank(FOUR)
    a = Actuated(FOUR)
    e = PhaseEngine(FOUR, now=0.0)
    mon = SafetyMonitor(FOUR)
    out = e.output
    ch = next(d.channel for d in FOUR.config.detectors if d.group == "P_S")
    assert ch is not None
    walked = None
    for tick in range(1, 600):
        now = tick / 10
        pressed = 200 <= tick < 203
        bank.update_loop(ch, 1 if tick >= 200 else 0, None, pressed, now)
        view = bank.view(now)
        out = e.step(now, a.decide(now, out, view))
        assert mon.check(now, out.signals) == []
        bank.update_signals(out.signals, now)
        if walked is None and out.signals[FOUR.index["P_S"]] is G:
            walked = now
    assert walked is not None and 20.0 < walked < 30.0
    assert out.stage == "EW_T"


# -- adaptive (behaviour only) ----------------------------------------------------------------


def test_adaptive_rests_without_demand() -> None:
    a = Adaptive(FOUR)
    assert a.name == "adaptive"
    b = Bench(FOUR, a)
    b.run(300.0, quiet(FOUR))
    assert b.greens() == [(3.0, "NS_T")]
    assert all(r.next_stage is None and not r.end_green for _, r in b.requests)


@pytest.mark.parametrize(
    ("x", "target", "group"), [(FOUR, "EW_T", "E_T"), (FOUR, "EW_L", "W_L"), (TJ, "side", "S_R")]
)
def test_adaptive_switches_after_the_min_hold_to_the_only_demand(
    x: Intersection, target: str, group: str
) -> None:
    b = Bench(x, Adaptive(x))
    b.run(120.0, Fluid(x, {group: 400.0}, floor={group: 3.0}))
    start = x.stages[0][0]
    hold = StageTiming(x).min_hold(start, False)  # no crossing called
    assert b.ends()[0][1:] == (start, target)
    assert 3.0 + hold - EPS <= b.ends()[0][0] <= 3.0 + hold + 1.0 + STEP + EPS


def test_adaptive_serves_a_starving_group_next() -> None:
    vph = {"N_T": 1300.0, "S_T": 1300.0, "E_T": 700.0, "W_T": 700.0, "N_L": 150.0, "S_L": 150.0}
    wait = 60.0
    # without the guard, a lone E_L vehicle is never worth a stage
    b = Bench(FOUR, Adaptive(FOUR, AdaptiveConfig(max_wait_s=1e9)))
    b.run(200.0, Fluid(FOUR, vph, floor={"E_L": 0.6}))
    assert not b.ever("E_L")
    # with it: as soon as E_L has called for max_wait_s, the next stage chosen serves it
    scene = Fluid(FOUR, vph, floor={"E_L": 0.6})
    b = Bench(FOUR, Adaptive(FOUR, AdaptiveConfig(max_wait_s=wait)))
    b.run(300.0, scene)
    due = wait + 0.1  # E_L calls from the first step
    chosen = [entered for t, _, entered in b.ends() if t >= due - EPS]
    assert chosen[0] == "EW_L"
    served = b.onsets("E_L")
    assert served and served[0] <= due + 40.0 + 5.5
    # and every later wait is bounded by the guard and the stage it interrupts
    assert len(served) >= 3
    reds = b.onsets("E_L", Y)
    for red_at, green_at in zip(reds, served[1:], strict=False):
        assert green_at - red_at <= wait + 1.0 + 60.0 + 10.0


def _known(b: Bench) -> None:
    stages = {s for s, _ in b.x.stages}
    peds = {g.id for g in b.x.groups if g.kind is GroupKind.PEDESTRIAN}
    for _, r in b.requests:
        assert r.next_stage is None or r.next_stage in stages
        assert r.peds is None or r.peds <= peds
    assert b.engine.stats.refused_requests == 0


@pytest.mark.parametrize("x", [FOUR, TJ, *SHIPPED.values()], ids=lambda x: x.id)
def test_adaptive_asks_only_for_known_stages_and_crossings(x: Intersection) -> None:
    vph = {g.id: (90.0 if g.kind is GroupKind.PEDESTRIAN else 350.0 * g.lanes) for g in x.groups}
    b = Bench(x, Adaptive(x))
    b.run(300.0, Fluid(x, vph))
    _known(b)
    served = {st for _, st in b.greens()}
    assert served == {s for s, _ in x.stages}  # everybody got a turn
    assert b.monitor.total == 0


# -- the selector -----------------------------------------------------------------------------


def test_selector_follows_the_shipped_schedule_past_midnight() -> None:
    s = StrategySelector(SHIPPED["ql1a-lct"])  # 06:00 adaptive, 23:30 actuated
    assert s.choice(dt.time(3, 0)) == ("actuated", "day")  # the last period runs past midnight
    assert s.choice(dt.time(0, 0)) == ("actuated", "day")
    assert s.choice(dt.time(5, 59, 59)) == ("actuated", "day")
    assert s.choice(dt.time(6, 0)) == ("adaptive", "day")
    assert s.choice(dt.time(23, 29, 59)) == ("adaptive", "day")
    assert s.choice(dt.time(23, 30)) == ("actuated", "day")
    tz = dt.timezone(dt.timedelta(hours=7))
    assert s.choice(dt.datetime(2026, 3, 4, 5, 59, 30, tzinfo=tz)) == ("actuated", "day")
    assert s.choice(dt.datetime(2026, 3, 4, 12, 0)) == ("adaptive", "day")
    # minutes after midnight, any day
    assert s.choice(360) == ("adaptive", "day")
    assert s.choice(359.5) == ("actuated", "day")
    assert s.choice(1440 + 400) == ("adaptive", "day")
    assert s.choice(-30) == ("actuated", "day")  # 23:30 the day before


def test_selector_builds_each_strategy_once() -> None:
    x = SHIPPED["ql1a-lct"]
    s = StrategySelector(x, adaptive=AdaptiveConfig(max_wait_s=90.0))
    day = s.current(dt.time(12, 0))
    assert isinstance(day, Adaptive) and day.cfg.max_wait_s == 90.0
    night = s.current(dt.time(1, 0))
    assert isinstance(night, Actuated) and night.gap_s == 3.0
    assert s.current(dt.time(7, 0)) is day  # the adaptive one keeps its state
    assert s.current(23 * 60 + 45) is night
    assert s.current(dt.time(6, 0)) is day


def _scheduled() -> Intersection:
    plans = [
        FixedPlanConfig(
            name="day", cycle_s=100, greens={"NS_T": 36, "NS_L": 10, "EW_T": 25, "EW_L": 8}
        ),
        FixedPlanConfig(
            name="night", cycle_s=80, greens={"NS_T": 25, "NS_L": 6, "EW_T": 22, "EW_L": 6}
        ),
    ]
    strategy = StrategyConfig(
        default="fixed",
        schedule=[  # not in order of time
            StrategyPeriod(start="22:00", strategy="fixed", fixed_plan="night"),
            StrategyPeriod(start="07:00", strategy="fixed"),
            StrategyPeriod(start="01:30", strategy="actuated"),
            StrategyPeriod(start="09:00", strategy="adaptive"),
        ],
    )
    return Intersection.build(four_arm(fixed_plans=plans, strategy=strategy))


def test_selector_picks_fixed_plans_by_period() -> None:
    s = StrategySelector(_scheduled())
    assert s.choice(dt.time(7, 0)) == ("fixed", "day")  # no plan named: the first one
    assert s.choice(dt.time(8, 59)) == ("fixed", "day")
    assert s.choice(dt.time(9, 0)) == ("adaptive", "day")
    assert s.choice(dt.time(22, 0)) == ("fixed", "night")
    assert s.choice(dt.time(1, 29)) == ("fixed", "night")  # past midnight
    assert s.choice(dt.time(1, 30)) == ("actuated", "day")
    day, night = s.current(dt.time(8, 0)), s.current(dt.time(23, 0))
    assert isinstance(day, FixedTime) and isinstance(night, FixedTime)
    assert (day.name, night.name) == ("fixed:day", "fixed:night")
    assert day is not night
    assert s.current(dt.time(7, 30)) is day and s.current(dt.time(0, 30)) is night
    assert isinstance(s.current(dt.time(3, 0)), Actuated)
    assert isinstance(s.current(dt.time(12, 0)), Adaptive)


def test_selector_without_a_schedule_runs_the_default_all_day() -> None:
    s = StrategySelector(FOUR)
    for t in (dt.time(0, 0), dt.time(12, 0), dt.time(23, 59)):
        assert s.choice(t) == ("adaptive", None)
    assert isinstance(s.current(dt.time(3, 0)), Adaptive)
    x = Intersection.build(
        four_arm(
            fixed_plans=[FixedPlanConfig(name="only", cycle_s=90, greens={"NS_T": 30, "EW_T": 30})],
            strategy=StrategyConfig(default="fixed"),
        )
    )
    s = StrategySelector(x)
    assert s.choice(600) == ("fixed", "only")
    f = s.current(600)
    assert isinstance(f, FixedTime) and f.name == "fixed:only"
    assert s.current(dt.time(18, 0)) is f


def test_adaptive_keeps_the_arterial_green_for_a_platoon_from_upstream() -> None:
    """Coordination: told when the upstream intersection's arterial stage turned green, the
    adaptive strategy expects the platoon ``travel_time_s`` later and keeps (or brings) the
    arterial green for it; without the feed it does not know."""
    from controller.signals.model import CoordinationConfig

    cfg = four_arm().model_copy(
        update={
            "coordination": CoordinationConfig(
                arterial="a1", upstream="up", travel_time_s=25.0, arterial_stage="NS_T"
            )
        }
    )
    x = Intersection.build(cfg)
    ups = [10.0 + 90.0 * k for k in range(12)]  # the upstream arterial greens, every 90 s
    windows = [(u + 25.0, u + 45.0) for u in ups]  # when the platoons pass here
    vph = {"N_T": 500.0, "S_T": 500.0, "E_T": 450.0, "W_T": 450.0, "N_L": 80.0, "E_L": 80.0}

    def share_green_in_windows(feed: bool) -> float:
        def upstream() -> list[float]:
            return ups if feed else []

        b = Bench(x, Adaptive(x, upstream_greens=upstream))
        b.run(1000.0, Fluid(x, vph))
        nt = x.index["N_T"]
        inside = [o.signals[nt] is G for o in b.trace if any(w0 <= o.t < w1 for w0, w1 in windows)]
        return sum(inside) / len(inside)

    with_feed, without = share_green_in_windows(True), share_green_in_windows(False)
    # (the scene's arrivals are smooth, so the strategy also sees no platoon in its loops: the
    # feed alone moves the arterial's greens towards the windows)
    assert with_feed > without + 0.15 and with_feed > 1.5 * without, (with_feed, without)


# -- gap-out -----------------------------------------------------------------------------------


def _green_output(x: Intersection, stage: str, now: float, since: float) -> EngineOutput:
    """An engine output with ``stage`` green since ``since`` (past every minimum)."""
    e = PhaseEngine(x, now=0.0)
    members = dict(x.stages)[stage]
    signals = tuple(G if i in members else Signal.RED for i in range(x.n))
    return e.output._replace(
        t=now,
        signals=signals,
        phase="green",
        stage=stage,
        next_stage=None,
        green_elapsed=now - since,
        green_since=tuple(since if i in members else None for i in range(x.n)),
        release_at=tuple(since + 5.0 if i in members else -math.inf for i in range(x.n)),
    )


def test_adaptive_gaps_out_an_empty_green_when_a_car_waits() -> None:
    """The running stage has been empty for the gap-out time and a car waits at red: the
    stage ends at once — the fluid model would keep it for arrivals it spreads evenly."""
    a = Adaptive(FOUR)
    out = _green_output(FOUR, "NS_T", 60.0, 20.0)
    flow = {"gap_s": 5.0, "arrivals_vph": 600.0}  # a busy approach, empty right now
    waiting = {"call": True, "call_since": 55.0, "queue": 1.0, "presence": True}
    view = quiet_view(FOUR, 60.0, N_T=flow, S_T=flow, E_T=waiting)
    req = a.decide(60.0, out, view)
    assert req.end_green and req.next_stage == "EW_T"
    assert a.last_costs == {}  # decided without a rollout


@pytest.mark.parametrize(
    "running",
    [
        {"gap_s": 1.0, "arrivals_vph": 600.0},  # a vehicle passed a second ago
        {"gap_s": 5.0, "presence": True},  # one stands on the stop-line loop
        {"gap_s": 5.0, "queue": 2.0},  # a queue is still discharging
        {"gap_s": 5.0, "approaching": (3.0,)},  # counted upstream, arriving in 3 s
    ],
)
def test_adaptive_does_not_gap_out_a_stage_that_still_serves(running: dict[str, Any]) -> None:
    ac = AdaptiveConfig()
    a = Adaptive(FOUR, ac)
    out = _green_output(FOUR, "NS_T", 60.0, 20.0)
    waiting = {"call": True, "call_since": 55.0, "queue": 1.0, "presence": True}
    view = quiet_view(FOUR, 60.0, N_T=running, S_T={"gap_s": 5.0}, E_T=waiting)
    a.decide(60.0, out, view)
    assert a.last_costs, "the rollout decides"


def test_adaptive_does_not_gap_out_for_a_phantom_call_or_when_off() -> None:
    out = _green_output(FOUR, "NS_T", 60.0, 20.0)
    empty = {"gap_s": 9.0}
    phantom = {"call": True, "call_since": 50.0}  # a locked call, nobody measured there
    view = quiet_view(FOUR, 60.0, N_T=empty, S_T=empty, E_T=phantom)
    a = Adaptive(FOUR)
    a.decide(60.0, out, view)
    assert a.last_costs
    waiting = {"call": True, "call_since": 55.0, "queue": 1.0, "presence": True}
    off = Adaptive(FOUR, AdaptiveConfig(gap_out_s=0.0))
    off.decide(60.0, out, quiet_view(FOUR, 60.0, N_T=empty, S_T=empty, E_T=waiting))
    assert off.last_costs


def test_gap_out_waits_for_a_platoon_due_from_upstream() -> None:
    from controller.signals.model import CoordinationConfig

    cfg = four_arm().model_copy(
        update={
            "coordination": CoordinationConfig(
                arterial="a1", upstream="up", travel_time_s=20.0, arterial_stage="NS_T"
            )
        }
    )
    x = Intersection.build(cfg)
    out = _green_output(x, "NS_T", 100.0, 60.0)
    empty = {"gap_s": 9.0}
    waiting = {"call": True, "call_since": 95.0, "queue": 1.0, "presence": True}
    view = quiet_view(x, 100.0, N_T=empty, S_T=empty, E_T=waiting)
    due = Adaptive(x, upstream_greens=lambda: [0.0, 90.0])  # arrives at 110
    due.decide(100.0, out, view)
    assert due.last_costs, "the platoon is due: the rollout weighs it"
    gone = Adaptive(x, upstream_greens=lambda: [-40.0, 50.0])  # next one arrives at 160
    req = gone.decide(100.0, out, view)
    assert req.end_green and not gone.last_costs
