"""One intersection's control step: detectors → strategy → engine → safety monitor."""

from __future__ import annotations

import pytest

from controller.signals.control import IntersectionControl
from controller.signals.engine import EngineOutput, PhaseEngine, Request
from controller.signals.model import (
    CoordinationConfig,
    FixedPlanConfig,
    GroupKind,
    Intersection,
    Signal,
    StrategyConfig,
)
from tests.unit.signals_fixtures import four_arm

G, R, Y = Signal.GREEN, Signal.RED, Signal.YELLOW


def _x(strategy: str = "actuated") -> Intersection:
    cfg = four_arm()
    return Intersection.build(
        cfg.model_copy(update={"strategy": StrategyConfig(default=strategy)})  # type: ignore[arg-type]
    )


def _run(c: IntersectionControl, t0: float, seconds: float) -> float:
    t = t0
    for _ in range(round(seconds * 10)):
        t = round(t + 0.1, 6)
        st = c.step(t, 600)
        assert not st.violations, st.violations
    return t


def test_a_clean_run_starts_all_red_then_serves_calls_with_no_violation() -> None:
    x = _x()
    c = IntersectionControl(x, now=0.0)
    assert set(c.output.signals) == {R}
    # a stop-line presence on E_T (channel of its stop-line loop) calls the E-W stage
    ch = next(d.channel for d in x.config.detectors if d.id == "E_T_sl")
    assert ch is not None
    t = _run(c, 0.0, 5.0)
    c.loop_reading(ch, 0, 0, True, t)
    t = _run(c, t, 40.0)
    assert c.stats.stage_changes >= 2
    assert c.stats.violations == 0 and c.monitor.total == 0
    assert c.output.phase == "green"
    names = c.signal_names()
    assert set(names) == {g.id for g in x.groups} and set(names.values()) <= {"GREEN", "RED"}


def test_a_deliberately_bad_engine_output_is_caught_flashes_and_is_counted() -> None:
    x = _x()
    c = IntersectionControl(x, now=0.0)
    t = _run(c, 0.0, 10.0)
    assert c.output.stage == "NS_T"
    # A broken engine: E_T turns green while N_T is green.
    real = c.engine.step
    et = x.index["E_T"]

    def broken(now: float, request: Request) -> EngineOutput:
        out = real(now, request)
        sig = list(out.signals)
        sig[et] = G
        return out._replace(signals=tuple(sig))

    c.engine.step = broken  # type: ignore[method-assign]
    st = c.step(round(t + 0.1, 6), 600)
    kinds = {v.kind for v in st.violations}
    assert "conflict" in kinds
    assert st.flashing and c.flash_reason is not None and "conflict" in c.flash_reason
    assert c.stats.violations == len(st.violations) and c.stats.flashes == 1
    assert c.stats.violations_by_kind["conflict"] >= 1
    flash = tuple(
        Signal.DARK if g.kind is GroupKind.PEDESTRIAN else Signal.FLASH_YELLOW for g in x.groups
    )
    assert st.output.signals == flash
    # it stays in flash, whatever the strategy would ask, until a restart
    c.engine.step = real  # type: ignore[method-assign]
    t = round(t + 0.1, 6)
    for _ in range(50):
        t = round(t + 0.1, 6)
        assert c.step(t, 600).output.signals == flash
    c.restart(t, "operator cleared the flash")
    assert c.flash_reason is None and set(c.output.signals) == {R}
    t = _run(c, t, 20.0)
    assert c.output.phase == "green" and c.stats.restarts == 1


def test_restart_keeps_counters_cumulative_and_holds_the_first_green_to_the_all_red() -> None:
    x = _x()
    c = IntersectionControl(x, now=0.0)
    t = _run(c, 0.0, 30.0)
    changes = c.stats.stage_changes
    c.restart(t)
    startup = PhaseEngine(x, now=0.0).startup_s
    # all red for the whole start-up, then the start stage
    t2 = t
    while round(t2 + 0.1 - t, 6) < startup - 1e-9:
        t2 = round(t2 + 0.1, 6)
        assert set(c.step(t2, 600).output.signals) == {R}
    t2 = _run(c, t2, 1.0)
    assert c.output.phase == "green"
    assert c.stats.stage_changes >= changes + 1
    assert c.monitor.total == 0


def test_arterial_greens_feed_coordination() -> None:
    cfg = four_arm().model_copy(
        update={
            "coordination": CoordinationConfig(
                arterial="a1", arterial_stage="NS_T", travel_time_s=30
            ),
            "strategy": StrategyConfig(default="fixed", fixed_plan="p"),
            "fixed_plans": [FixedPlanConfig(name="p", cycle_s=80, greens={"NS_T": 30, "EW_T": 20})],
        }
    )
    x = Intersection.build(cfg)
    c = IntersectionControl(x, now=0.0)
    _run(c, 0.0, 200.0)
    greens = c.arterial_greens()
    assert greens[0] == pytest.approx(3.0)  # right after the start-up, out of step
    # then, locked to the 80 s cycle clock, once a cycle
    assert greens[1:] == pytest.approx([80.0, 160.0], abs=0.15)
