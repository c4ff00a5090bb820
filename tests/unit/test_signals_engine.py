"""The phase engine, step by step on the example intersections."""

from __future__ import annotations

import pytest

from controller.signals.engine import EngineOutput, PhaseEngine, Request
from controller.signals.model import (
    GroupKind,
    Intersection,
    IntersectionConfig,
    Signal,
    SignalGroupConfig,
    StageConfig,
)
from controller.signals.safety import SafetyMonitor
from tests.unit.signals_fixtures import four_arm, t_junction

G, Y, R, P = Signal.GREEN, Signal.YELLOW, Signal.RED, Signal.PED_CLEARANCE
FY, D = Signal.FLASH_YELLOW, Signal.DARK
HOLD = Request()


class Bench:
    """An engine on a 0.1 s clock (integer ticks, so times are exact) with a safety monitor."""

    def __init__(self, x: Intersection, **kw: object) -> None:
        self.x = x
        self.tick = 0
        self.engine = PhaseEngine(x, now=0.0, **kw)  # type: ignore[arg-type]
        self.monitor = SafetyMonitor(x)
        self.trace: list[EngineOutput] = [self.engine.output]
        assert self.monitor.check(0.0, self.engine.output.signals) == []

    @property
    def now(self) -> float:
        return self.tick / 10

    def run(self, seconds: float, request: Request = HOLD) -> EngineOutput:
        for _ in range(round(seconds * 10)):
            self.tick += 1
            out = self.engine.step(self.now, request)
            assert self.monitor.check(self.now, out.signals) == [], out
            self.trace.append(out)
        return self.engine.output

    def until(self, cond: object, request: Request = HOLD, limit: float = 300) -> float:
        for _ in range(round(limit * 10)):
            self.run(0.1, request)
            if callable(cond) and cond(self.engine.output):
                return self.now
        raise AssertionError("condition never met")

    def sig(self, out: EngineOutput, gid: str) -> Signal:
        return out.signals[self.x.index[gid]]

    def when(self, gid: str, signal: Signal, after: float = 0.0) -> float:
        """First time ``gid`` shows ``signal`` at or after ``after``."""
        k = self.x.index[gid]
        for out in self.trace:
            if out.t >= after - 1e-9 and out.signals[k] is signal:
                return out.t
        raise AssertionError(f"{gid} never {signal.name} after {after}")

    def count(self, gid: str, signal: Signal) -> int:
        k = self.x.index[gid]
        return sum(1 for out in self.trace if out.signals[k] is signal)


def _four() -> Bench:
    return Bench(Intersection.build(four_arm()))


def _groups(b: Bench, out: EngineOutput, signal: Signal) -> set[str]:
    return {g.id for g, s in zip(b.x.groups, out.signals, strict=True) if s is signal}


NS_T = {"N_T", "S_T", "P_E", "P_W"}


def test_startup_is_all_red_then_the_first_stage() -> None:
    b = _four()
    assert b.engine.output.phase == "startup"
    assert b.engine.output.next_stage == "NS_T"
    assert b.engine.startup_s == 3.0
    b.run(2.9)
    assert all(out.signals == (R,) * 12 for out in b.trace)
    assert all(out.phase == "startup" and out.stage is None for out in b.trace)
    out = b.run(0.1)
    assert out.phase == "green" and out.stage == "NS_T" and out.t == 3.0
    assert _groups(b, out, G) == NS_T
    assert out.green_elapsed == 0.0
    assert out.green_since[b.x.index["N_T"]] == 3.0
    assert out.green_since[b.x.index["E_T"]] is None


def test_startup_lasts_at_least_the_largest_all_red() -> None:
    x = Intersection.build(four_arm())
    e = PhaseEngine(x, now=100.0, startup_red_s=0.5)
    assert e.startup_s == pytest.approx(2.2)  # E-W at 40 km/h over 18 m
    assert e.step(102.1, Request()).phase == "startup"
    assert e.step(102.2, Request()).phase == "green"


def test_start_stage_and_its_validation() -> None:
    x = Intersection.build(four_arm())
    e = PhaseEngine(x, now=0.0, start_stage="EW_L")
    assert e.step(3.0, Request()).stage == "EW_L"
    with pytest.raises(ValueError, match="start_stage: unknown stage 'nope'"):
        PhaseEngine(x, now=0.0, start_stage="nope")


NO_PEDS = frozenset[str]()


def test_min_green_is_honoured() -> None:
    b = _four()
    b.run(3.0, Request(peds=NO_PEDS))  # no crossing called: the through groups alone
    assert _groups(b, b.engine.output, G) == {"N_T", "S_T"}
    # ask to leave at once: the through groups need 8 s
    out = b.run(7.9, Request("EW_T", end_green=True))
    assert out.phase == "green" and _groups(b, out, G) == {"N_T", "S_T"}
    assert out.green_elapsed == pytest.approx(7.9)
    assert out.next_stage == "EW_T"
    out = b.run(0.1, Request("EW_T", end_green=True))
    assert out.phase == "clearance" and out.stage == "EW_T" and out.t == 11.0
    assert b.sig(out, "N_T") is Y and b.sig(out, "P_E") is R


def test_a_served_crossing_walks_clears_and_holds_its_stage() -> None:
    b = _four()
    b.run(3.0)  # the start stage with its crossings (no ``peds``: a pedestrian recall)
    assert _groups(b, b.engine.output, G) == NS_T
    b.until(lambda o: o.phase == "clearance", Request("EW_T", end_green=True))
    # the walk is exactly 7 s, the clearance 12 m / 1.2 m/s = 10 s, then red: the vehicles
    # keep their green meanwhile and end in the same output in which the crossing turns red
    for gid in ("P_E", "P_W"):
        assert b.when(gid, P) == 10.0 and b.count(gid, P) == 100
        assert b.when(gid, R, after=10.0) == 20.0
    assert b.when("N_T", Y) == pytest.approx(20.0)
    assert b.monitor.total == 0


def test_a_crossing_called_late_is_served_in_the_running_stage() -> None:
    b = _four()
    b.run(3.0, Request(peds=NO_PEDS))
    b.run(5.0, Request(peds=NO_PEDS))
    assert b.sig(b.engine.output, "P_E") is R
    b.run(0.1, Request(peds=frozenset({"P_E"})))
    assert b.sig(b.engine.output, "P_E") is G and b.sig(b.engine.output, "P_W") is R
    assert b.engine.served_peds == {"P_E"}
    # served once per stage: after its walk and clearance it stays red, however often named
    b.run(30.0, Request(peds=frozenset({"P_E"})))
    assert b.count("P_E", G) == 70 and b.sig(b.engine.output, "P_E") is R
    # an unknown crossing makes the request refused
    before = b.engine.stats.refused_requests
    b.run(0.1, Request(peds=frozenset({"P_X"})))
    assert b.engine.stats.refused_requests == before + 1


def test_clearance_sequence_is_exact_to_the_step() -> None:
    b = _four()
    b.run(3.0, Request(peds=NO_PEDS))
    b.until(lambda o: o.phase == "green" and o.stage == "EW_T", Request("EW_T", end_green=True))
    end = 11.0
    # yellow exactly as long as the model says, then red
    for gid, clear in (("N_T", 4.2), ("S_T", 3.8)):
        assert b.when(gid, Y) == end
        assert b.count(gid, Y) == round(clear * 10)
        assert b.when(gid, R, after=end) == pytest.approx(end + clear)
    # new greens: each at the end of the largest intergreen from the groups that were open
    x = b.x
    for gid in ("P_N", "P_S", "E_T", "W_T"):
        need = max(x.intergreen[x.index[i]][x.index[gid]] for i in ("N_T", "S_T"))
        assert b.when(gid, G) == pytest.approx(end + need), gid
    assert b.when("P_N", G) == pytest.approx(end + 5.9)  # after N_T: 4.2 + 1.7
    out = b.engine.output
    assert out.t == pytest.approx(16.9) and out.stage == "EW_T"
    assert [o.phase for o in b.trace if 11.0 <= o.t < 16.9 - 1e-9] == ["clearance"] * 59


def test_intergreen_is_respected_for_every_pair() -> None:
    x = Intersection.build(four_arm())
    stages = [s for s, _ in x.stages]
    b = Bench(x)
    # visit every ordered pair of stages
    for a in stages:
        for c in stages:
            if a == c:
                continue
            b.until(lambda o, a=a: o.phase == "green" and o.stage == a, Request(a, True))
            b.until(lambda o, c=c: o.phase == "green" and o.stage == c, Request(c, True))
    # every start of green versus every end of a conflicting green before it
    ends: list[tuple[float, int]] = []
    prev = b.trace[0].signals
    for out in b.trace[1:]:
        for k, (p, s) in enumerate(zip(prev, out.signals, strict=True)):
            if p is G and s is not G:
                ends.append((out.t, k))
            if p is not G and s is G:
                for t_end, i in ends:
                    if x.conflict[i][k]:
                        assert out.t - t_end >= x.intergreen[i][k] - 1e-9, (i, k)
        prev = out.signals
    changes = {
        (a.stage, c.stage)
        for a, c in zip(b.trace, b.trace[1:], strict=False)
        if a.phase == "green" and c.phase == "clearance"
    }
    assert len(changes) == 12  # every ordered pair was driven
    assert b.engine.stats.stage_changes >= 12


def test_non_conflicting_new_groups_start_at_once() -> None:
    cfg = IntersectionConfig(
        id="three",
        groups=[SignalGroupConfig(id=g) for g in "ABC"],
        conflicts=[("A", "B")],
        stages=[StageConfig(id="a", groups=["A"]), StageConfig(id="bc", groups=["B", "C"])],
    )
    b = Bench(Intersection.build(cfg))
    b.run(3.0)
    b.until(lambda o: o.phase == "green" and o.stage == "bc", Request("bc", True))
    assert b.when("A", Y) == 8.0  # min green 5 s
    assert b.when("C", G) == 8.0  # no conflict: at once
    assert b.when("B", G) == pytest.approx(8.0 + b.x.intergreen[0][1])


def test_overlap_groups_stay_green() -> None:
    b = Bench(Intersection.build(t_junction()))
    b.run(3.0)
    x = b.x
    et = x.index["E_T"]
    started = b.engine.output.green_since[et]
    b.until(lambda o: o.phase == "green" and o.stage == "main_left", Request("main_left", True))
    assert all(out.signals[et] is G for out in b.trace if out.t >= 3.0)
    assert b.engine.output.green_since[et] == started == 3.0
    # the stage ends when the main road had its min green (10 s) and the crossing P_S had its
    # walk and clearance; the crossing starts its clearance at the end of its walk
    ps = x.groups[x.index["P_S"]]
    assert b.when("P_S", P) == pytest.approx(3.0 + ps.walk_s)
    ped_done = 3.0 + ps.walk_s + x.clearance[x.index["P_S"]]
    end = max(13.0, round(ped_done, 1))
    assert b.when("W_T", Y) == pytest.approx(end)
    # E_L waits for W_T's intergreen; the crossing's intergreen has long run out
    el, wt = x.index["E_L"], x.index["W_T"]
    assert b.when("E_L", G) == pytest.approx(end + x.intergreen[wt][el])


def test_max_out_needs_someone_waiting() -> None:
    b = _four()
    b.run(3.0)
    out = b.run(200.0)  # nobody waiting: the stage is held
    assert out.stage == "NS_T" and out.phase == "green"
    assert out.green_elapsed == pytest.approx(200.0)
    b2 = _four()
    b2.run(3.0)
    b2.until(lambda o: o.phase != "green", Request("EW_L"))
    assert b2.now == pytest.approx(63.0)  # the stage max green is 60 s
    assert b2.engine.stats.max_outs == 1
    assert b2.engine.output.stage == "EW_L"


def test_max_green_is_the_least_of_the_stage() -> None:
    b = _four()
    b.run(3.0)
    b.until(lambda o: o.stage == "NS_L" and o.phase == "green", Request("NS_L", True))
    start = b.now
    b.until(lambda o: o.phase == "clearance", Request("EW_T"))
    assert b.now - start == pytest.approx(25.0)  # the lefts' max_green_s


def test_hold_on_the_current_stage() -> None:
    b = _four()
    b.run(3.0)
    out = b.run(100.0, Request("NS_T", end_green=True))
    assert out.phase == "green" and out.stage == "NS_T" and out.next_stage is None
    assert b.engine.stats.max_outs == 0


def test_requests_during_clearance_are_remembered_and_never_shorten_it() -> None:
    b = _four()
    b.run(3.0, Request(peds=NO_PEDS))
    b.run(8.1, Request("EW_T", end_green=True, peds=NO_PEDS))
    assert b.engine.output.phase == "clearance"
    out = b.run(0.1, Request("NS_L", end_green=True))
    assert out.stage == "EW_T" and out.next_stage == "NS_L" and out.phase == "clearance"
    b.until(lambda o: o.phase == "green", Request("NS_L", end_green=True))
    assert b.now == pytest.approx(16.9)  # the same clearance as without the request
    # then NS_L as soon as the E-W through min greens (6 s) are served (no crossing walks:
    # the stage was entered without any)
    b.until(lambda o: o.phase == "clearance", Request("NS_L", end_green=True))
    assert b.now == pytest.approx(16.9 + 6.0)


def test_unknown_stage_is_refused_and_the_standing_request_kept() -> None:
    b = _four()
    b.run(3.0)
    b.run(1.0, Request("EW_T"))
    out = b.run(1.0, Request("bogus", end_green=True))
    assert b.engine.stats.refused_requests == 10
    assert out.phase == "green" and out.next_stage == "EW_T"
    # the standing request (EW_T, no end) still maxes out
    b.until(lambda o: o.phase == "clearance", Request("bogus"))
    assert b.now == pytest.approx(63.0)


def test_a_group_still_in_clearance_waits_for_red_before_green_again() -> None:
    groups = [
        SignalGroupConfig(id="A"),
        SignalGroupConfig(id="B"),
        SignalGroupConfig(id="P", kind=GroupKind.PEDESTRIAN, crossing_m=40.0, walk_s=4.0),
    ]
    cfg = IntersectionConfig(
        id="slow_ped",
        groups=groups,
        conflicts=[("A", "B")],
        stages=[StageConfig(id="ap", groups=["A", "P"]), StageConfig(id="b", groups=["B"])],
    )
    b = Bench(Intersection.build(cfg))
    b.run(3.0)
    b.until(lambda o: o.stage == "b" and o.phase == "green", Request("b", True))
    b.until(lambda o: o.stage == "ap" and o.phase == "green", Request("ap", True))
    # P's clearance (40 / 1.2 → 33.4 s) ran to the end, then at least one RED, then GREEN
    p_end = b.when("P", P)
    assert b.count("P", P) == 334
    assert b.when("P", G, after=p_end) > b.when("P", R, after=p_end)


def test_flash_in_and_out() -> None:
    b = _four()
    b.run(10.0)
    b.engine.enter_flash(b.now, "conflict monitor tripped")
    out = b.engine.output
    assert out.phase == "flash" and out.stage is None and out.next_stage is None
    assert b.engine.flash_reason == "conflict monitor tripped"
    expected = tuple(D if g.kind is GroupKind.PEDESTRIAN else FY for g in b.x.groups)
    assert out.signals == expected
    assert b.monitor.check(b.now, out.signals) == []  # flash is legal from a green
    out = b.run(5.0, Request("EW_T", True))
    assert out.signals == expected and out.phase == "flash"
    assert all(s is None for s in out.green_since)
    b.engine.leave_flash(b.now)
    left = b.now
    out = b.engine.output
    assert out.phase == "startup" and out.signals == (R,) * 12 and out.next_stage == "NS_T"
    assert b.engine.flash_reason == ""
    assert b.monitor.check(b.now, out.signals) == []
    b.until(lambda o: o.phase == "green")
    assert b.now == pytest.approx(left + 3.0)
    assert b.engine.output.stage == "NS_T"  # the start stage again
    assert b.engine.stats.flashes == 1
    b.engine.leave_flash(b.now)  # no-op outside flash
    assert b.engine.output.phase == "green"


def test_time_must_not_go_back() -> None:
    e = PhaseEngine(Intersection.build(four_arm()), now=5.0)
    e.step(5.0, Request())  # the same instant is fine
    with pytest.raises(ValueError, match="before the previous step"):
        e.step(4.9, Request())
    with pytest.raises(ValueError, match="finite"):
        e.step(float("nan"), Request())


def test_stats_are_a_copy() -> None:
    e = PhaseEngine(Intersection.build(four_arm()), now=0.0)
    e.step(0.1, Request("nope"))
    s = e.stats
    s.refused_requests = 99
    assert e.stats.refused_requests == 1


def test_any_step_size_up_to_a_tenth() -> None:
    x = Intersection.build(four_arm())
    for dt in (0.01, 0.03, 0.07, 0.1):
        e = PhaseEngine(x, now=0.0)
        m = SafetyMonitor(x)
        assert m.check(0.0, e.output.signals) == []
        t, k, seen = 0.0, 0, set()
        order = ["EW_T", "EW_L", "NS_T", "NS_L"]
        while t < 200:
            k += 1
            t = k * dt
            out = e.step(t, Request(order[len(seen) % 4], end_green=True))
            if out.phase == "green":
                seen.add((out.stage, round(t)))
            assert m.check(t, out.signals) == []
        assert e.stats.stage_changes >= 8, dt
