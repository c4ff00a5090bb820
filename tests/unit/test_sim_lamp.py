"""The simulated light node as a pure state machine: lamp physics, ramps, meters, modes, faults."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.lights import (
    FallbackProgram,
    FallbackStep,
    LightCommand,
    NodeFault,
    NodeMode,
    NodeState,
    PayloadError,
)
from simulator.lights_node import CommandOutcome, InjectedFault, LampModel, LightNode

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)  # 19:00 in Ho Chi Minh City


def wall(now: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=now)


def mode(node: LightNode) -> NodeMode:
    return node.mode  # a function call: keeps mypy from narrowing node.mode across steps


def make_node(lamp: LampModel | None = None, **kw: float) -> LightNode:
    kw.setdefault("fallback_after_s", 300.0)
    kw.setdefault("fallback_ramp_s", 0.0)
    return LightNode("n1", "main", lamp or LampModel(rated_w=100.0), now=0.0, wall=wall, **kw)


def cmd(level: float, at: float, *, ramp_s: float = 0.0, cmd_id: str | None = None) -> LightCommand:
    return LightCommand(
        cmd_id=cmd_id or f"c-{level}-{at}", level=level, ramp_s=ramp_s, issued=wall(at)
    )


def program(*steps: tuple[int, float], issued: float = 0.0, group: str = "main") -> FallbackProgram:
    return FallbackProgram(
        group=group,
        issued=wall(issued),
        timezone="Asia/Ho_Chi_Minh",
        steps=[FallbackStep(at=dt.time(h), level=lv) for h, lv in steps],
    )


# -- lamp physics ------------------------------------------------------------------------------
@given(st.floats(0.0, 100.0), st.floats(0.0, 100.0))
def test_power_is_monotone_and_bounded(a: float, b: float) -> None:
    lamp = LampModel(rated_w=120.0, standby_w=0.5)
    lo, hi = sorted((a, b))
    assert lamp.standby_w <= lamp.power_w(lo) <= lamp.power_w(hi) <= lamp.rated_w + 1e-9


def test_power_end_points_and_driver_losses() -> None:
    lamp = LampModel(rated_w=100.0, standby_w=0.5)
    assert lamp.power_w(0.0) == 0.5
    assert lamp.power_w(100.0) == pytest.approx(100.0)
    assert lamp.power_w(150.0) == pytest.approx(100.0)  # clamped
    # The driver's no-load loss: 10 % of the light costs clearly more than 10 % of the power.
    assert lamp.power_w(10.0) > 0.1 * lamp.power_w(100.0) + 3.0
    # Efficacy falls at low load (real drivers peak somewhere between half and full load).
    assert lamp.efficiency(5.0) < lamp.efficiency(10.0) < lamp.efficiency(30.0)
    assert lamp.efficiency(10.0) < lamp.efficiency(100.0)
    assert lamp.efficiency(100.0) == pytest.approx(1.0)


def test_output_respects_min_dim() -> None:
    lamp = LampModel(min_dim=10.0)
    assert [lamp.output(x) for x in (0.0, 3.0, 10.0, 55.0, 100.0)] == [0.0, 10.0, 10.0, 55.0, 100.0]


@pytest.mark.parametrize(
    "kwargs",
    [{"rated_w": 0.0}, {"rated_w": 1e6}, {"standby_w": 200.0}, {"min_dim": 120.0}],
)
def test_lamp_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LampModel(**kwargs)


# -- ramps ----------------------------------------------------------------------------------
def test_ramp_is_linear_and_ends_at_target() -> None:
    node = make_node()
    assert node.command(cmd(80.0, 0.0, ramp_s=10.0), 0.0) is CommandOutcome.APPLIED
    assert node.target == 80.0
    assert node.level(5.0) == pytest.approx(40.0)
    node.changed = False
    node.tick(5.0)
    assert node.ramping and not node.changed
    node.tick(10.0)
    assert not node.ramping and node.changed, "the end of a ramp is reported"
    assert node.level(10.0) == 80.0


def test_new_command_mid_ramp_starts_from_current_level() -> None:
    node = make_node()
    node.command(cmd(100.0, 0.0, ramp_s=10.0), 0.0)
    node.command(cmd(0.0, 4.0, ramp_s=4.0), 4.0)  # at 40 %
    assert node.level(6.0) == pytest.approx(20.0)
    assert node.level(7.9) == pytest.approx(10.0)  # min_dim holds a lit driver at 10 %
    assert node.level(8.0) == 0.0


def test_ramp_from_off_starts_at_min_dim() -> None:
    node = make_node(LampModel(min_dim=20.0))
    node.command(cmd(60.0, 0.0, ramp_s=6.0), 0.0)
    assert node.level(0.0) == 0.0
    assert node.level(1.0) == pytest.approx(20.0)  # raw 10 %
    assert node.level(3.0) == pytest.approx(30.0)


def test_level_below_min_dim_is_raised() -> None:
    node = make_node(LampModel(min_dim=10.0))
    node.command(cmd(4.0, 0.0), 0.0)
    assert node.level(1.0) == node.target == 10.0


# -- meters ---------------------------------------------------------------------------------
def test_energy_at_constant_level_and_standby() -> None:
    lamp = LampModel(rated_w=100.0, standby_w=0.5)
    node = make_node(lamp, fallback_after_s=1e9)
    node.tick(3600.0)  # one hour off
    assert node.energy_wh == pytest.approx(0.5)
    node.command(cmd(100.0, 3600.0, cmd_id="on"), 3600.0)
    node.tick(7200.0)  # one hour at 100 %
    assert node.energy_wh == pytest.approx(100.5)
    assert node.burn_h == pytest.approx(1.0)


def fine_energy(lamp: LampModel, level_at: object, t_end: float, steps: int) -> float:
    assert callable(level_at)
    h = t_end / steps
    total = 0.0
    for i in range(steps):
        total += lamp.power_w(level_at((i + 0.5) * h)) * h  # midpoint rule
    return total / 3600.0


def test_energy_over_ramps_matches_a_fine_integration() -> None:
    lamp = LampModel(rated_w=150.0, min_dim=10.0)
    node = make_node(lamp, fallback_after_s=1e9)
    node.command(cmd(90.0, 0.0, ramp_s=60.0), 0.0)
    node.tick(100.0)  # one big step through the ramp, the min_dim crossing and the hold
    node.command(cmd(0.0, 100.0, ramp_s=50.0), 100.0)
    node.tick(200.0)

    def level_at(t: float) -> float:
        if t < 100.0:
            return lamp.output(90.0 * min(t, 60.0) / 60.0)
        return lamp.output(90.0 * max(0.0, 1.0 - (t - 100.0) / 50.0))

    assert node.energy_wh == pytest.approx(fine_energy(lamp, level_at, 200.0, 200_000), rel=1e-6)


def test_energy_does_not_depend_on_the_tick_rate() -> None:
    coarse, fine = make_node(fallback_after_s=1e9), make_node(fallback_after_s=1e9)
    for node in (coarse, fine):
        node.command(cmd(70.0, 0.0, ramp_s=33.0), 0.0)
    coarse.tick(50.0)
    for i in range(1, 251):
        fine.tick(i * 0.2)
    assert coarse.energy_wh == pytest.approx(fine.energy_wh, rel=1e-12)
    assert coarse.burn_s == pytest.approx(fine.burn_s)


def test_burning_hours_and_switch_count() -> None:
    node = make_node(fallback_after_s=1e9)
    node.command(cmd(50.0, 0.0), 0.0)  # on
    node.command(cmd(80.0, 600.0), 600.0)  # still on: not a switch
    node.command(cmd(0.0, 1800.0, ramp_s=10.0), 1800.0)  # off at 1810
    node.command(cmd(30.0, 3600.0, ramp_s=5.0), 3600.0)  # on again
    node.tick(5400.0)
    assert node.switches == 2
    assert node.burn_s == pytest.approx(1810.0 + 1800.0)


# -- commands -------------------------------------------------------------------------------
def test_stale_command_is_ignored() -> None:
    node = make_node(fallback_after_s=300.0)
    node.command(cmd(40.0, 1000.0), 1000.0)
    old = LightCommand(cmd_id="old", level=100.0, issued=wall(1000.0 - 301.0))
    assert node.command(old, 1000.0) is CommandOutcome.STALE
    future = LightCommand(cmd_id="future", level=100.0, issued=wall(1000.0 + 3600.0))
    assert node.command(future, 1000.0) is CommandOutcome.STALE
    assert node.level(1000.0) == 40.0 and node.cmd_id == "c-40.0-1000.0"
    assert node.command_age(old, 1000.0) == pytest.approx(301.0)


def test_same_cmd_id_is_idempotent() -> None:
    node = make_node()
    first = cmd(60.0, 0.0, ramp_s=10.0, cmd_id="x")
    assert node.command(first, 0.0) is CommandOutcome.APPLIED
    assert node.command(first, 5.0) is CommandOutcome.DUPLICATE
    assert node.level(10.0) == 60.0  # the ramp was not restarted
    assert node.switches == 1


# -- fallback -------------------------------------------------------------------------------
def test_fallback_after_silence_then_back_to_remote() -> None:
    node = make_node(fallback_after_s=300.0)
    # T0 is 19:00 local; the program says 18:00 → 100 %, 22:00 → 50 %, 05:00 → 0 %.
    assert node.set_fallback(program((18, 100.0), (22, 50.0), (5, 0.0)), 0.0)
    node.command(cmd(30.0, 0.0), 0.0)
    node.tick(299.0)
    assert mode(node) is NodeMode.REMOTE and node.level(299.0) == 30.0
    node.changed = False
    node.tick(300.0)
    assert mode(node) is NodeMode.FALLBACK and node.changed
    assert node.level(300.0) == 100.0
    node.tick(3 * 3600.0 + 1.0)  # 22:00 local
    assert node.level(3 * 3600.0 + 1.0) == 50.0
    assert node.state(3 * 3600.0 + 1.0).mode is NodeMode.FALLBACK
    # A fresh command: back to REMOTE.
    back = cmd(70.0, 3 * 3600.0 + 2.0)
    assert node.command(back, 3 * 3600.0 + 2.0) is CommandOutcome.APPLIED
    assert mode(node) is NodeMode.REMOTE and node.level(3 * 3600.0 + 2.0) == 70.0


def test_repeated_cmd_id_brings_a_fallen_back_node_home_when_fresh() -> None:
    skewed = make_node(fallback_after_s=60.0)
    first = LightCommand(cmd_id="x", level=40.0, issued=wall(50.0))  # controller clock ahead
    skewed.command(first, 0.0)
    skewed.tick(61.0)
    assert mode(skewed) is NodeMode.FALLBACK
    assert skewed.command(first, 62.0) is CommandOutcome.APPLIED
    assert mode(skewed) is NodeMode.REMOTE


def test_fallback_without_program_keeps_the_last_level() -> None:
    node = make_node(fallback_after_s=60.0)
    node.command(cmd(45.0, 0.0), 0.0)
    node.tick(61.0)
    assert mode(node) is NodeMode.FALLBACK
    assert node.level(61.0) == 45.0


def test_program_arriving_while_in_fallback_takes_effect() -> None:
    node = make_node(fallback_after_s=60.0)
    node.tick(61.0)
    assert mode(node) is NodeMode.FALLBACK and node.level(61.0) == 0.0
    node.set_fallback(program((18, 80.0)), 62.0)
    assert node.level(62.0) == 80.0


def test_fallback_program_checks() -> None:
    node = make_node()
    with pytest.raises(PayloadError, match="group"):
        node.set_fallback(program((18, 80.0), group="other"), 0.0)
    for zone in ("Mars/Olympus", "America", "x" * 300, "../etc/passwd", ""):
        bad_zone = program((18, 80.0)).model_copy(update={"timezone": zone})
        with pytest.raises(PayloadError, match="time zone"):
            node.set_fallback(bad_zone, 0.0)
    assert node.set_fallback(program((18, 80.0), issued=100.0), 0.0)
    assert not node.set_fallback(program((18, 20.0), issued=50.0), 0.0), "older program kept out"
    assert node.fallback is not None and node.fallback.steps[0].level == 80.0


# -- faults ---------------------------------------------------------------------------------
def lit_node() -> LightNode:
    node = make_node(LampModel(rated_w=100.0, standby_w=0.5), fallback_after_s=1e9)
    node.command(cmd(60.0, 0.0), 0.0)
    return node


def test_lamp_failure_reports_commanded_level_but_draws_standby() -> None:
    node = lit_node()
    node.inject(InjectedFault.LAMP_FAILURE, 10.0)
    state = node.state(20.0)
    assert state.level == 60.0 and state.power_w == pytest.approx(0.5) and state.faults == []


def test_driver_failure_is_diagnosed_and_light_goes_out() -> None:
    node = lit_node()
    node.inject("driver_failure", 10.0)
    state = node.state(20.0)
    assert state.level == state.target == 0.0 and node.target == 60.0
    assert state.power_w == pytest.approx(0.5)
    assert state.faults == [NodeFault.DRIVER_FAILURE]


def test_supply_lost_means_dark_unpowered_and_deaf() -> None:
    node = lit_node()
    node.inject(InjectedFault.SUPPLY_LOST, 10.0)
    energy = node.energy_wh
    state = node.state(3610.0)
    assert state.level == 0.0 and state.power_w == 0.0
    assert state.faults == [NodeFault.SUPPLY_LOST]
    assert node.energy_wh == pytest.approx(energy)
    assert node.command(cmd(90.0, 3610.0), 3610.0) is CommandOutcome.UNPOWERED


def test_day_burner_burns_at_full_power_whatever_the_command() -> None:
    node = lit_node()
    node.command(cmd(0.0, 5.0), 5.0)
    node.inject(InjectedFault.DAY_BURNER, 10.0)
    state = node.state(20.0)
    assert state.level == state.target == 100.0 and node.target == 0.0
    assert state.power_w == pytest.approx(100.0)
    assert node.switches == 2  # it came on again, against the command


def test_clearing_a_fault_restores_the_planned_level() -> None:
    node = lit_node()
    node.inject(InjectedFault.DRIVER_FAILURE, 10.0)
    node.command(cmd(20.0, 15.0), 15.0)  # the node still hears commands
    assert node.level(16.0) == 0.0
    assert node.clear(InjectedFault.DRIVER_FAILURE, 20.0)
    assert not node.clear(InjectedFault.DRIVER_FAILURE, 21.0)
    assert node.level(20.0) == 20.0 and node.diagnosed_faults() == []


def test_node_offline_has_no_physical_effect() -> None:
    node = lit_node()
    node.inject(InjectedFault.NODE_OFFLINE, 10.0)
    state = node.state(20.0)
    assert state.level == 60.0 and state.faults == []


def test_state_is_a_valid_payload_with_wall_clock_ts() -> None:
    node = lit_node()
    state = node.state(42.0)
    assert isinstance(state, NodeState)
    assert state.ts == wall(42.0) and state.node == "n1" and state.group == "main"
    assert state.cmd_id == "c-60.0-0.0" and state.switches == 1
