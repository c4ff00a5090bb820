"""The independent safety monitor: every kind of violation from a deliberately bad output."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from controller.signals.engine import PhaseEngine, Request
from controller.signals.model import GroupKind, Intersection, Signal
from controller.signals.safety import VIOLATION_KINDS, SafetyMonitor, Violation
from tests.unit.signals_fixtures import four_arm, t_junction

G, Y, R, P = Signal.GREEN, Signal.YELLOW, Signal.RED, Signal.PED_CLEARANCE
FY, D, RA = Signal.FLASH_YELLOW, Signal.DARK, Signal.RED_AMBER

X = Intersection.build(four_arm())
NS_T = {"N_T": G, "S_T": G, "P_E": G, "P_W": G}


def out(**signals: Signal) -> tuple[Signal, ...]:
    """An output of the four-arm intersection: RED unless named."""
    unknown = set(signals) - set(X.index)
    assert not unknown, unknown
    return tuple(signals.get(g.id, R) for g in X.groups)


def running() -> SafetyMonitor:
    """A monitor that saw the start-up all-red and the N-S through stage go green at t=3."""
    m = SafetyMonitor(X)
    assert m.check(0.0, out()) == []
    assert m.check(3.0, out(**NS_T)) == []
    return m


def kinds(vs: Sequence[Violation]) -> list[str]:
    return [v.kind for v in vs]


def test_legal_sequence_by_hand() -> None:
    m = running()
    # end N-S through at 11 s: yellows and pedestrian clearances
    assert m.check(11.0, out(N_T=Y, S_T=Y, P_E=P, P_W=P)) == []
    assert m.check(14.8, out(N_T=Y, P_E=P, P_W=P)) == []  # S_T: 3.8 s
    assert m.check(15.2, out(P_E=P, P_W=P)) == []  # N_T: 4.2 s
    assert m.check(16.9, out(P_E=P, P_W=P, P_N=G, P_S=G)) == []  # 4.2 + 1.7 after N_T
    assert m.check(21.0, out(P_N=G, P_S=G)) == []  # walks cleared: 10 s
    assert m.check(22.0, out(P_N=G, P_S=G, E_T=G, W_T=G)) == []  # 10 + 1 after P_E / P_W
    assert m.total == 0 and m.checks == 8
    assert m.last_change("N_T") == {"green": None, "clearance": 11.0, "red": 15.2}
    assert m.last_change("E_T")["green"] == 22.0


def test_conflict() -> None:
    m = running()
    vs = m.check(3.1, out(**NS_T, E_T=G))
    assert "conflict" in kinds(vs)
    conflicts = [v for v in vs if v.kind == "conflict"]
    assert {v.groups for v in conflicts} == {
        ("N_T", "E_T"),
        ("S_T", "E_T"),
        ("E_T", "P_E"),
        ("E_T", "P_W"),
    }
    assert "N_T GREEN and E_T GREEN conflict" in conflicts[0].detail
    assert m.counts["conflict"] == 4


def test_conflict_with_a_yellow() -> None:
    m = running()
    m.check(11.0, out(N_T=Y, S_T=G, P_E=G, P_W=G))
    vs = m.check(11.1, out(N_T=Y, S_T=G, P_E=G, P_W=G, W_L=G))
    assert ("N_T", "W_L") in [v.groups for v in vs if v.kind == "conflict"]


def test_short_clearance() -> None:
    m = running()
    assert m.check(11.0, out(N_T=Y, S_T=G, P_E=G, P_W=G)) == []
    vs = m.check(13.0, out(S_T=G, P_E=G, P_W=G))
    assert kinds(vs) == ["short_clearance"]
    assert vs[0].groups == ("N_T",)
    assert "lasted 2.000 s; needs 4.2 s" in vs[0].detail


def test_short_pedestrian_clearance() -> None:
    m = running()
    m.check(11.0, out(N_T=G, S_T=G, P_E=P, P_W=G))
    assert kinds(m.check(20.9, out(N_T=G, S_T=G, P_W=G))) == ["short_clearance"]


def test_clearance_within_the_tolerance_passes() -> None:
    m = running()
    m.check(11.0, out(N_T=Y, S_T=G, P_E=G, P_W=G))
    assert m.check(11.0 + 4.2 - 5e-7, out(S_T=G, P_E=G, P_W=G)) == []


def test_skipped_clearance() -> None:
    m = running()
    vs = m.check(11.0, out(S_T=G, P_E=G, P_W=G))
    assert kinds(vs) == ["skipped_clearance"]
    assert vs[0].groups == ("N_T",) and "GREEN → RED" in vs[0].detail


def test_green_to_dark_outside_flash_is_a_skipped_clearance() -> None:
    m = running()
    assert kinds(m.check(11.0, out(N_T=D, S_T=G, P_E=G, P_W=G))) == ["skipped_clearance"]


def test_short_intergreen() -> None:
    m = running()
    m.check(11.0, out(N_T=Y, S_T=Y, P_E=P, P_W=P))
    m.check(15.2, out(P_E=P, P_W=P))
    vs = m.check(16.0, out(P_E=P, P_W=P, P_N=G))  # needs 11 + 5.9 = 16.9
    inter = [v for v in vs if v.kind == "short_intergreen"]
    assert {v.groups for v in inter} == {("N_T", "P_N"), ("S_T", "P_N")}
    assert "needs 5.9 s" in next(v.detail for v in inter if v.groups[0] == "N_T")
    # both also turned red (15.2) less than their all-red before P_N opened
    assert kinds(vs) == ["short_intergreen", "short_all_red"] * 2


def test_short_all_red_after_a_clearance_that_ran_long() -> None:
    # N_T's yellow (4.2 s) ran 0.4 s long; P_N opens at the intergreen (5.9 s after the end
    # of green) but only 1.3 s after N_T turned red: its all-red is 1.7 s.
    m = running()
    m.check(11.0, out(N_T=Y, S_T=Y, P_E=P, P_W=P))
    m.check(14.8, out(N_T=Y, P_E=P, P_W=P))
    m.check(15.6, out(P_E=P, P_W=P))
    vs = m.check(16.9, out(P_E=P, P_W=P, P_N=G))
    assert kinds(vs) == ["short_all_red"]
    assert vs[0].groups == ("N_T", "P_N") and "needs an all-red of 1.7 s" in vs[0].detail


def test_short_min_green() -> None:
    m = running()
    vs = m.check(5.0, out(N_T=Y, S_T=G, P_E=G, P_W=G))
    assert kinds(vs) == ["short_min_green"]
    assert "green lasted 2.000 s; minimum 8 s" in vs[0].detail


def test_short_walk() -> None:
    m = running()
    assert kinds(m.check(9.0, out(**{**NS_T, "P_E": P}))) == ["short_min_green"]  # walk 7 s


@pytest.mark.parametrize(
    ("before", "after", "detail"),
    [
        (R, Y, "RED → YELLOW"),
        (R, P, "RED → PED_CLEARANCE"),
        (Y, G, "YELLOW → GREEN"),
        (G, P, "GREEN → PED_CLEARANCE"),  # a vehicle group shows the pedestrian clearance
        (RA, Y, "RED_AMBER → YELLOW"),
        (R, FY, "RED → FLASH_YELLOW outside flash"),
        (R, D, "RED → DARK outside flash"),
    ],
)
def test_illegal_transition(before: Signal, after: Signal, detail: str) -> None:
    m = SafetyMonitor(X)
    m.check(0.0, out())
    m.check(3.0, out(W_L=before) if before is not R else out())
    vs = m.check(30.0, out(W_L=after))
    assert "illegal_transition" in kinds(vs)
    assert any(detail in v.detail and v.groups == ("W_L",) for v in vs)


def test_unknown_code_and_wrong_length() -> None:
    m = running()
    codes: list[int] = [int(s) for s in out(**NS_T)]
    codes[X.index["E_L"]] = 9
    vs = m.check(4.0, codes)
    assert "illegal_transition" in kinds(vs)
    assert any(v.groups == ("E_L",) and "unknown code 9" in v.detail for v in vs)
    # an unknown code may be anything: it conflicts with whatever is open
    assert ("N_T", "E_L") in [v.groups for v in vs if v.kind == "conflict"]
    vs = m.check(5.0, [1, 1, 1])
    assert kinds(vs) == ["illegal_transition"] and "3 signals for 12 groups" in vs[0].detail


def test_red_amber_is_accepted_and_opens() -> None:
    m = running()
    m.check(11.0, out(N_T=Y, S_T=Y, P_E=P, P_W=P))
    m.check(21.0, out())
    vs = m.check(21.5, out(E_T=RA, W_T=RA))  # RED_AMBER is open: the intergreen applies
    assert set(kinds(vs)) == {"short_intergreen", "short_all_red"}
    m = running()
    m.check(11.0, out(N_T=Y, S_T=Y, P_E=P, P_W=P))
    m.check(15.2, out(P_E=P, P_W=P))
    m.check(21.0, out())
    assert m.check(22.0, out(E_T=RA, W_T=RA)) == []  # 10 + 1 after the walks' end at 11
    assert m.check(23.0, out(E_T=G, W_T=G)) == []
    assert m.last_change("E_T")["green"] == 23.0


def test_flash_is_legal_from_anything() -> None:
    m = running()
    m.check(11.0, out(N_T=Y, S_T=G, P_E=P, P_W=G))
    flash = tuple(D if g.kind is GroupKind.PEDESTRIAN else FY for g in X.groups)
    assert m.check(11.5, flash) == []
    # pedestrians may also stay RED in flash
    flash_red = tuple(R if g.kind is GroupKind.PEDESTRIAN else FY for g in X.groups)
    assert m.check(12.0, flash_red) == []


def test_leaving_flash_needs_the_largest_all_red() -> None:
    m = running()
    flash = tuple(D if g.kind is GroupKind.PEDESTRIAN else FY for g in X.groups)
    m.check(10.0, flash)
    assert m.max_all_red == pytest.approx(2.2)
    assert m.check(20.0, out()) == []
    vs = m.check(21.0, out(E_T=G))  # 1 s of all-red only
    assert kinds(vs) == ["short_intergreen"]
    assert vs[0].groups == ("E_T",) and "following flash" in vs[0].detail


def test_leaving_flash_after_enough_all_red_passes() -> None:
    m = running()
    flash = tuple(D if g.kind is GroupKind.PEDESTRIAN else FY for g in X.groups)
    m.check(10.0, flash)
    assert m.check(20.0, out()) == []
    assert m.check(22.2, out(E_T=G, W_T=G)) == []


def test_flash_straight_to_green_is_illegal() -> None:
    m = running()
    m.check(10.0, tuple(D if g.kind is GroupKind.PEDESTRIAN else FY for g in X.groups))
    vs = m.check(30.0, out(E_T=G))
    assert set(kinds(vs)) == {"illegal_transition", "short_intergreen"}


def test_start_without_all_red() -> None:
    m = SafetyMonitor(X)
    vs = m.check(0.0, out(**NS_T))
    assert kinds(vs) == ["short_intergreen"]
    m2 = SafetyMonitor(X)
    m2.check(0.0, out())
    assert kinds(m2.check(1.0, out(**NS_T))) == ["short_intergreen"]


def test_counts_per_kind() -> None:
    m = running()
    assert set(m.counts) == set(VIOLATION_KINDS) and m.total == 0
    m.check(3.1, out(**NS_T, E_T=G))  # 4 conflicts
    m.check(3.2, out(**NS_T, E_T=Y))  # 4 more conflicts + E_T's short min green (0.1 s of 6)
    assert m.counts["conflict"] == 8
    assert m.counts["short_min_green"] == 1
    assert m.total == 9 and m.checks == 4


# -- the Done-means item: real engine output, then deliberately broken ----------------------------


def _engine_trace(x: Intersection) -> list[tuple[float, tuple[Signal, ...]]]:
    """A legal trace: each stage in turn, served as soon as allowed, at 0.1 s."""
    e = PhaseEngine(x, now=0.0)
    trace = [(0.0, e.output.signals)]
    order = [s for s, _ in x.stages]
    want = 1
    for k in range(1, 1500):
        out = e.step(k / 10, Request(order[want % len(order)], end_green=True))
        if out.phase == "green" and out.stage == order[want % len(order)]:
            want += 1
        trace.append((out.t, out.signals))
    assert e.stats.stage_changes >= 4
    return trace


@pytest.mark.parametrize("cfg", [four_arm, t_junction])
def test_legal_engine_output_passes(cfg: object) -> None:
    x = Intersection.build(cfg())  # type: ignore[operator]
    m = SafetyMonitor(x)
    for t, signals in _engine_trace(x):
        assert m.check(t, signals) == []
    assert m.total == 0


def _replay(x: Intersection, trace: list[tuple[float, tuple[Signal, ...]]]) -> SafetyMonitor:
    m = SafetyMonitor(x)
    for t, signals in trace:
        m.check(t, signals)
    return m


def _first(trace: list[tuple[float, tuple[Signal, ...]]], k: int, s: Signal) -> int:
    return next(n for n, (_, sig) in enumerate(trace) if sig[k] is s)


def test_monitor_catches_a_deliberately_bad_output() -> None:
    """Take legal engine output and break it in each way; the monitor must catch every one."""
    x = X
    legal = _engine_trace(x)
    nt, et = x.index["N_T"], x.index["E_T"]

    def broken(n: int, k: int, s: Signal) -> list[tuple[float, tuple[Signal, ...]]]:
        bad = list(legal)
        t, sig = bad[n]
        bad[n] = (t, (*sig[:k], s, *sig[k + 1 :]))
        return bad

    g0 = _first(legal, nt, G)
    y0 = _first(legal, nt, Y)
    r0 = next(n for n in range(y0, len(legal)) if legal[n][1][nt] is R)
    e0 = _first(legal, et, G)
    cases = {
        # E_T green while N_T is green
        "conflict": broken(g0 + 5, et, G),
        # N_T's yellow cut one step short
        "short_clearance": broken(r0 - 1, nt, R),
        # N_T straight from green to red
        "skipped_clearance": broken(y0, nt, R),
        # E_T one step early
        "short_intergreen": broken(e0 - 1, et, G),
        # N_T's yellow one step long, E_T on time: the all-red after N_T is a step short
        "short_all_red": broken(r0, nt, Y),
        # N_T's green cut short: yellow long before its 8 s
        "short_min_green": broken(g0 + 10, nt, Y),
        # an unknown code on the wire
        "illegal_transition": broken(g0 + 20, et, 7),  # type: ignore[arg-type]
    }
    assert set(cases) == set(VIOLATION_KINDS)
    assert _replay(x, legal).total == 0
    for kind, trace in cases.items():
        m = _replay(x, trace)
        assert m.counts[kind] >= 1, (kind, m.counts)  # type: ignore[index]
