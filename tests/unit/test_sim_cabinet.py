"""The simulated signal cabinet (simulator/cabinet.py): monitor, local plan, core, TCP shell.

The pure layers run on exact clocks: times are multiples of 0.25 s (exact in binary floating
point), so every boundary below is the real boundary, not one blurred by rounding. The monitor
tests use ``timing_tolerance_s = 0.25`` so that "at the minimum less the tolerance" passes and
one step (0.25 s) earlier fails. The shell tests run a real pymodbus server on a free loopback
port and talk to it through :class:`devices.modbus.CabinetLink`, in real time, with short
timers (``heartbeat_timeout_s = 0.5``, ``startup_all_red_s = 0.2``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from devices.cabinet import (
    HR,
    IR,
    MAP_VERSION,
    CabinetMode,
    CabinetStatus,
    Command,
    FaultCode,
    RegisterError,
    SignalCode,
    decode_status,
    encode_outputs,
    encode_status,
    next_heartbeat,
)
from devices.modbus import CabinetError, CabinetLink
from simulator.cabinet import (
    CabinetCore,
    CabinetSpec,
    ConflictMonitor,
    GroupSpec,
    LocalPlan,
    MonitorFault,
    SimulatedCabinet,
)
from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]

D = int(SignalCode.DARK)
R = int(SignalCode.RED)
RA = int(SignalCode.RED_AMBER)
G = int(SignalCode.GREEN)
Y = int(SignalCode.YELLOW)
FY = int(SignalCode.FLASH_YELLOW)
PC = int(SignalCode.PED_CLEARANCE)

Outputs = tuple[int, ...]


def _grid(start: float, end: float, step: float = 0.25) -> Iterator[float]:
    """``start, start + step, ...`` below ``end`` (exact for quarter seconds)."""
    k = 0
    while start + k * step < end - 1e-9:
        yield start + k * step
        k += 1


# -- the monitor -----------------------------------------------------------------------------

# A: vehicle, min green 6, clearance 4.  B: vehicle, min green 5, clearance 2 (→ the 3 s floor).
# P: pedestrian, min green 4, clearance 5.  C: vehicle, conflicts with nobody.
# A–B conflict with all-red A→B 2 s (B→A: the 1 s floor) and intergreen A→B 7 s;
# B–P conflict with all-red P→B 1.5 s.
A_, B_, P_, C_ = 0, 1, 2, 3
MON = CabinetSpec(
    groups=[
        GroupSpec("A", min_green_s=6.0, clearance_s=4.0),
        GroupSpec("B", min_green_s=5.0, clearance_s=2.0),
        GroupSpec("P", kind="pedestrian", min_green_s=4.0, clearance_s=5.0),
        GroupSpec("C", min_green_s=5.0),
    ],
    conflicts=[("A", "B"), ("B", "P")],
    all_red_s={("A", "B"): 2.0, ("P", "B"): 1.5},
    intergreen_s={("A", "B"): 7.0},
    local_plan=[({A_, P_, C_}, 10.0), ({B_}, 8.0)],
    timing_tolerance_s=0.25,
)
ALL_RED4: Outputs = (R, R, R, R)


def _outputs(**shown: int) -> Outputs:
    """All red except the groups named, e.g. ``_outputs(A=G)``."""
    out = list(ALL_RED4)
    for gid, code in shown.items():
        out[MON.index(gid)] = code
    return tuple(out)


def _accept(mon: ConflictMonitor, *changes: tuple[float, Outputs]) -> None:
    """Each change must pass the monitor."""
    for t, out in changes:
        fault = mon.check(t, out)
        assert fault is None, f"at {t}: {out} rejected: {fault}"


def _fault(
    mon: ConflictMonitor, t: float, out: Outputs, code: FaultCode, groups: tuple[int, ...]
) -> MonitorFault:
    fault = mon.check(t, out)
    assert fault is not None, f"at {t}: {out} accepted, expected {code.name}"
    assert (fault.code, fault.groups, fault.t) == (code, groups, t), fault
    return fault


def test_spec_applies_the_floors() -> None:
    assert [g.min_clearance_s for g in MON.groups] == [4.0, 3.0, 5.0, 3.0]
    assert [g.clearance_code for g in MON.groups] == [Y, Y, PC, Y]
    assert [g.flash_code for g in MON.groups] == [FY, FY, D, FY]
    assert MON.index("P") == 2
    with pytest.raises(KeyError):
        MON.index("Z")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conflicts": [("A", "Z")]}, "unknown group"),
        ({"conflicts": [("A", "A")]}, "cannot conflict with itself"),
        ({"all_red_s": {("A", "C"): 2.0}}, "do not conflict"),
        ({"local_plan": [({0, 1}, 10.0)]}, "A and B conflict"),
        ({"local_plan": []}, "needs at least one stage"),
        ({"channels": [16]}, "not below n_channels"),
    ],
)
def test_spec_rejects_inconsistent_configuration(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "groups": [GroupSpec("A"), GroupSpec("B"), GroupSpec("C")],
        "conflicts": [("A", "B")],
        "local_plan": [({0}, 10.0)],
    }
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        CabinetSpec(**fields)  # type: ignore[arg-type]


def test_first_green_after_construction_needs_only_the_all_red_minimum() -> None:
    # Power-up at 10: B's all-red minimum from A is 2 s (less 0.25 tolerance). The intergreen
    # A→B of 7 s is not asked: A's end of green is unknown, not "now".
    mon = ConflictMonitor(MON, 10.0)
    _fault(mon, 11.5, _outputs(B=G), FaultCode.SHORT_ALL_RED, (A_, B_))
    _accept(mon, (11.75, _outputs(B=G)))
    # A needs the 1 s floor after B (0.75 with the tolerance).
    mon = ConflictMonitor(MON, 10.0)
    _fault(mon, 10.5, _outputs(A=G), FaultCode.SHORT_ALL_RED, (B_, A_))
    _accept(mon, (10.75, _outputs(A=G)))
    # C conflicts with nobody: green at once.
    _accept(ConflictMonitor(MON, 10.0), (10.0, _outputs(C=G)))


def test_reset_starts_all_red_again_and_forgets_the_end_of_green() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (1.0, _outputs(A=G)), (7.0, _outputs(A=Y)), (11.0, ALL_RED4))
    # Without a reset, B waits for the intergreen: A's green ended at 7, so 13.75 at the earliest.
    _fault(mon, 13.5, _outputs(B=G), FaultCode.SHORT_ALL_RED, (A_, B_))
    mon.reset(11.0)
    assert mon.shown == ALL_RED4
    # After the reset only the all-red minimum from 11 counts.
    _fault(mon, 12.5, _outputs(B=G), FaultCode.SHORT_ALL_RED, (A_, B_))
    _accept(mon, (13.5, _outputs(B=G)))


def test_conflicting_groups_open_together() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _fault(mon, 5.0, _outputs(A=G, B=G), FaultCode.CONFLICT, (A_, B_))
    # Groups that do not conflict may be green together.
    _accept(mon, (5.0, _outputs(A=G, P=G, C=G)))
    # Yellow and red-amber are open too (conflict outranks the short all-red).
    fault = _fault(mon, 11.0, _outputs(A=Y, B=RA, P=G, C=G), FaultCode.CONFLICT, (A_, B_))
    assert "open together" in fault.reason
    _fault(mon, 11.0, _outputs(A=G, B=G, P=G), FaultCode.CONFLICT, (A_, B_))
    _accept(mon, (11.0, _outputs(A=G, P=PC, C=G)))
    # A conflict outranks the other faults of the same output (here P's short clearance).
    _fault(mon, 12.0, _outputs(A=G, B=RA, C=G), FaultCode.CONFLICT, (A_, B_))


def test_clearance_minimum_and_green_ending_without_clearance() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (1.0, _outputs(A=G)))
    # Green straight to red, or to dark, skips the clearance.
    _fault(mon, 7.0, ALL_RED4, FaultCode.SHORT_CLEARANCE, (A_,))
    _fault(mon, 7.0, _outputs(A=D), FaultCode.SHORT_CLEARANCE, (A_,))
    _fault(mon, 7.0, _outputs(A=FY), FaultCode.SHORT_CLEARANCE, (A_,))
    # A's yellow is 4 s: 3.75 passes with the tolerance, 3.5 does not.
    _accept(mon, (7.0, _outputs(A=Y)))
    _fault(mon, 10.5, ALL_RED4, FaultCode.SHORT_CLEARANCE, (A_,))
    _accept(mon, (10.75, ALL_RED4))


def test_a_clearance_below_the_yellow_floor_is_raised_to_it() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (2.0, _outputs(B=G)), (7.0, _outputs(B=Y)))
    # B's configured 2 s are below the 3 s floor: 2.5 s of yellow is short.
    _fault(mon, 9.5, ALL_RED4, FaultCode.SHORT_CLEARANCE, (B_,))
    _accept(mon, (9.75, ALL_RED4))


def test_pedestrian_clearance_and_walk() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (1.0, _outputs(P=G)))
    _fault(mon, 4.5, _outputs(P=PC), FaultCode.SHORT_GREEN, (P_,))
    _accept(mon, (4.75, _outputs(P=PC)))
    _fault(mon, 9.25, ALL_RED4, FaultCode.SHORT_CLEARANCE, (P_,))
    _accept(mon, (9.5, ALL_RED4))


def test_yellow_cut_short_back_to_green_is_a_short_clearance() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (1.0, _outputs(A=G)), (7.0, _outputs(A=Y)))
    _fault(mon, 8.0, _outputs(A=G), FaultCode.SHORT_CLEARANCE, (A_,))
    _fault(mon, 8.0, _outputs(A=RA), FaultCode.SHORT_CLEARANCE, (A_,))


def test_all_red_minimum_after_a_clearance() -> None:
    mon = ConflictMonitor(MON, 0.0)
    # B → A: the 1 s floor.
    _accept(mon, (2.0, _outputs(B=G)), (7.0, _outputs(B=Y)), (10.0, ALL_RED4))
    fault = _fault(mon, 10.5, _outputs(A=G), FaultCode.SHORT_ALL_RED, (B_, A_))
    assert "all-red minimum" in fault.reason
    _accept(mon, (10.75, _outputs(A=G)))
    # Red-amber opens the group as well.
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (2.0, _outputs(B=G)), (7.0, _outputs(B=Y)), (10.0, ALL_RED4))
    _fault(mon, 10.5, _outputs(A=RA), FaultCode.SHORT_ALL_RED, (B_, A_))
    # P → B: 1.5 s configured.
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (1.0, _outputs(P=G)), (5.0, _outputs(P=PC)), (10.0, ALL_RED4))
    _fault(mon, 11.0, _outputs(B=G), FaultCode.SHORT_ALL_RED, (P_, B_))
    _accept(mon, (11.25, _outputs(B=G)))


def test_intergreen_minimum_from_the_end_of_green() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (1.0, _outputs(A=G)), (7.0, _outputs(A=Y)), (11.0, ALL_RED4))
    # 2.5 s of all red satisfy the 2 s all-red, but only 6.5 s since A's green ended (< 7).
    fault = _fault(mon, 13.5, _outputs(B=G), FaultCode.SHORT_ALL_RED, (A_, B_))
    assert "intergreen" in fault.reason
    _accept(mon, (13.75, _outputs(B=G)))


def test_short_green() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (1.0, _outputs(A=G)))
    fault = _fault(mon, 6.5, _outputs(A=Y), FaultCode.SHORT_GREEN, (A_,))
    assert "minimum 6" in fault.reason
    _accept(mon, (6.75, _outputs(A=Y)))


def test_priority_of_simultaneous_faults() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (1.0, _outputs(A=G)))
    # Green → red after 2 s: no clearance *and* short green; the clearance is reported.
    _fault(mon, 3.0, ALL_RED4, FaultCode.SHORT_CLEARANCE, (A_,))
    # An illegal code outranks everything, even a conflict in the same output.
    _fault(mon, 3.0, (G, G, 9, R), FaultCode.ILLEGAL_CODE, (P_,))


@pytest.mark.parametrize("code", [7, 8, 0xFFFF, -1])
def test_illegal_code(code: int) -> None:
    mon = ConflictMonitor(MON, 0.0)
    fault = _fault(mon, 5.0, (R, code, R, R), FaultCode.ILLEGAL_CODE, (B_,))
    assert f"{code} is no signal code" in fault.reason


def test_a_rejected_state_is_not_taken_over() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (1.0, _outputs(A=G)))
    _fault(mon, 3.0, _outputs(A=Y), FaultCode.SHORT_GREEN, (A_,))
    assert mon.shown == _outputs(A=G)
    timing = mon.timing()
    assert (timing.since[A_], timing.end_green[A_]) == (1.0, float("-inf"))
    # The timers still count from the accepted state.
    _accept(mon, (7.0, _outputs(A=Y)), (11.0, ALL_RED4))
    assert mon.timing().end_green[A_] == 7.0
    assert mon.timing().end_open[A_] == 11.0


def test_flash_codes_are_not_open() -> None:
    mon = ConflictMonitor(MON, 0.0)
    _accept(mon, (0.0, (FY, FY, D, FY)), (0.5, ALL_RED4))
    with pytest.raises(ValueError, match="3 outputs for 4 groups"):
        mon.check(1.0, (R, R, R))


def test_default_tolerance_is_a_tenth_of_a_second() -> None:
    spec = CabinetSpec(
        groups=[GroupSpec("A", min_green_s=5.0), GroupSpec("B")],
        conflicts=[("A", "B")],
        local_plan=[({0}, 10.0)],
    )
    assert spec.timing_tolerance_s == 0.1
    mon = ConflictMonitor(spec, 0.0)
    _accept(mon, (1.0, (G, R)))
    _fault(mon, 5.85, (Y, R), FaultCode.SHORT_GREEN, (0,))
    _accept(mon, (5.95, (Y, R)))


# -- the local plan --------------------------------------------------------------------------

# A and B conflict; all-red A→B 2 s, B→A the 1 s floor; both min green 5, yellow 3.
# Plan: A 10 s, then B 8 s.
PLAN = CabinetSpec(
    groups=[GroupSpec("A"), GroupSpec("B")],
    conflicts=[("A", "B")],
    all_red_s={("A", "B"): 2.0},
    local_plan=[({0}, 10.0), ({1}, 8.0)],
)


def _run(
    plan: LocalPlan,
    start: float,
    end: float,
    mon: ConflictMonitor | None = None,
    *,
    step: float = 0.25,
) -> list[tuple[float, Outputs]]:
    """Step the plan; the changes it shows as ``(t, outputs)``, each checked by ``mon``."""
    changes: list[tuple[float, Outputs]] = []
    last: Outputs | None = None
    for t in _grid(start, end, step):
        out = plan.step(t)
        if mon is not None and out != mon.shown:
            fault = mon.check(t, out)
            assert fault is None, f"monitor rejects the plan at {t}: {fault}"
        if out != last:
            changes.append((t, out))
            last = out
    return changes


def test_plan_from_all_red_serves_its_stages_in_order() -> None:
    mon = ConflictMonitor(PLAN, 0.0)
    plan = LocalPlan(PLAN, 0.0, mon.timing())
    assert plan.shown == (R, R) and plan.all_red
    assert _run(plan, 0.0, 60.0, mon) == [
        (0.0, (R, R)),
        (1.0, (G, R)),  # the 1 s all-red floor B→A from power-up
        (11.0, (Y, R)),  # 10 s green
        (14.0, (R, R)),  # 3 s yellow
        (16.0, (R, G)),  # 2 s all-red A→B
        (24.0, (R, Y)),  # 8 s green
        (27.0, (R, R)),
        (28.0, (G, R)),  # 1 s all-red B→A; cycle 27 s
        (38.0, (Y, R)),
        (41.0, (R, R)),
        (43.0, (R, G)),
        (51.0, (R, Y)),
        (54.0, (R, R)),
        (55.0, (G, R)),
    ]


def test_plan_greens_last_at_least_their_minimum_and_pedestrians_clear_with_their_code() -> None:
    spec = CabinetSpec(
        groups=[GroupSpec("V", min_green_s=6.0), GroupSpec("P", "pedestrian", 7.0, 4.0)],
        conflicts=[("V", "P")],
        local_plan=[({0}, 2.0), ({1}, 3.0)],
    )
    mon = ConflictMonitor(spec, 0.0)
    plan = LocalPlan(spec, 0.0)
    assert _run(plan, 0.0, 26.0, mon) == [
        (0.0, (R, R)),
        (1.0, (G, R)),
        (7.0, (Y, R)),  # stage green 2 s < the 6 s minimum
        (10.0, (R, R)),
        (11.0, (R, G)),
        (18.0, (R, PC)),  # 7 s walk
        (22.0, (R, R)),  # 4 s pedestrian clearance
        (23.0, (G, R)),
    ]


def test_plan_started_with_a_green_open_respects_its_minimum_then_clears() -> None:
    # The controller showed B green from 20; the cabinet takes over at 22.
    mon = ConflictMonitor(PLAN, 0.0)
    _accept(mon, (20.0, (R, G)))
    plan = LocalPlan(PLAN, 22.0, mon.timing())
    assert _run(plan, 22.0, 57.0, mon) == [
        (22.0, (R, G)),
        (25.0, (R, Y)),  # B's 5 s minimum counted from 20, not from the takeover
        (28.0, (R, R)),
        (29.0, (G, R)),  # stage 0 after the 1 s all-red
        (39.0, (Y, R)),
        (42.0, (R, R)),
        (44.0, (R, G)),
        (52.0, (R, Y)),
        (55.0, (R, R)),
        (56.0, (G, R)),
    ]


def test_plan_clears_an_open_group_even_when_the_first_stage_serves_it() -> None:
    # A green from 20 and A is stage 0: the plan still ends it, clears it and passes through
    # all red (its docstring: "the plan always passes through all red first").
    mon = ConflictMonitor(PLAN, 0.0)
    _accept(mon, (20.0, (G, R)))
    plan = LocalPlan(PLAN, 22.0, mon.timing())
    changes = _run(plan, 22.0, 45.0, mon)
    assert changes[:3] == [(22.0, (G, R)), (25.0, (Y, R)), (28.0, (R, R))]
    assert changes[3:] == [(29.0, (G, R)), (39.0, (Y, R)), (42.0, (R, R)), (44.0, (R, G))]


def test_plan_started_in_a_clearance_runs_it_out_before_anything_opens() -> None:
    # A yellow from 20 (after 6 s of green) when the plan takes over at 21; A is stage 0.
    mon = ConflictMonitor(PLAN, 0.0)
    _accept(mon, (14.0, (G, R)), (20.0, (Y, R)))
    plan = LocalPlan(PLAN, 21.0, mon.timing())
    assert _run(plan, 21.0, 35.0, mon) == [
        (21.0, (Y, R)),
        (23.0, (R, R)),  # the whole 3 s yellow, never back to green
        (24.0, (G, R)),
        (34.0, (Y, R)),
    ]


def test_plan_takes_over_a_red_amber_as_green() -> None:
    mon = ConflictMonitor(PLAN, 0.0)
    _accept(mon, (20.0, (R, RA)))
    plan = LocalPlan(PLAN, 20.5, mon.timing())
    assert _run(plan, 20.5, 30.0, mon) == [
        (20.5, (R, G)),
        (25.5, (R, Y)),  # the 5 s minimum from the green at 20.5
        (28.5, (R, R)),
        (29.5, (G, R)),
    ]


def test_wind_down_ends_in_all_red_and_resume_cycles_on() -> None:
    mon = ConflictMonitor(PLAN, 0.0)
    plan = LocalPlan(PLAN, 0.0)
    assert _run(plan, 0.0, 3.0, mon)[-1] == (1.0, (G, R))
    plan.wind_down()
    assert plan.winding_down
    # A's green ends at its 5 s minimum, not the stage's 10 s; then all red for good.
    assert _run(plan, 3.0, 40.0, mon) == [(3.0, (G, R)), (6.0, (Y, R)), (9.0, (R, R))]
    assert plan.all_red
    plan.resume()
    assert not plan.winding_down
    # The next stage is B's.
    assert _run(plan, 40.0, 60.0, mon) == [
        (40.0, (R, G)),
        (48.0, (R, Y)),
        (51.0, (R, R)),
        (52.0, (G, R)),
    ]


def test_wind_down_between_stages_stays_in_all_red() -> None:
    mon = ConflictMonitor(PLAN, 0.0)
    plan = LocalPlan(PLAN, 0.0)
    _run(plan, 0.0, 15.0, mon)  # A cleared at 14; B is due at 16
    plan.wind_down()
    assert _run(plan, 15.0, 40.0, mon) == [(15.0, (R, R))]


def test_wind_down_ends_a_green_carried_into_the_next_stage() -> None:
    # C is in both stages, so it stays green while A clears for B. Asked to wind down in that
    # gap, the plan must still end C's green: a carried green is no reason to stop short of
    # all red (the cabinet would never hand control back).
    spec = CabinetSpec(
        groups=[GroupSpec("A"), GroupSpec("B"), GroupSpec("C")],
        conflicts=[("A", "B")],
        local_plan=[({0, 2}, 10.0), ({1, 2}, 10.0)],
    )
    mon = ConflictMonitor(spec, 0.0)
    plan = LocalPlan(spec, 0.0)
    assert _run(plan, 0.0, 12.0, mon) == [(0.0, (R, R, R)), (1.0, (G, R, G)), (11.0, (Y, R, G))]
    plan.wind_down()
    assert _run(plan, 12.0, 30.0, mon) == [
        (12.0, (Y, R, Y)),
        (14.0, (R, R, Y)),
        (15.0, (R, R, R)),
    ]


def test_a_group_in_consecutive_stages_stays_green() -> None:
    spec = CabinetSpec(
        groups=[GroupSpec("A"), GroupSpec("B"), GroupSpec("C")],
        conflicts=[("A", "B")],
        local_plan=[({0, 2}, 10.0), ({1, 2}, 10.0)],
    )
    mon = ConflictMonitor(spec, 0.0)
    assert _run(LocalPlan(spec, 0.0), 0.0, 40.0, mon) == [
        (0.0, (R, R, R)),
        (1.0, (G, R, G)),
        (11.0, (Y, R, G)),
        (14.0, (R, R, G)),
        (15.0, (R, G, G)),
        (25.0, (R, Y, G)),
        (28.0, (R, R, G)),
        (29.0, (G, R, G)),
        (39.0, (Y, R, G)),
    ]


def test_plan_of_the_shipped_intersections_passes_the_monitor_and_winds_down() -> None:
    from controller.config import load_config
    from controller.sim_signals import cabinet_spec

    cfg = load_config(ROOT / "config.yaml")
    for x in cfg.intersections():
        spec = cabinet_spec(x, cfg.signals)
        mon = ConflictMonitor(spec, 0.0)
        plan = LocalPlan(spec, 0.0)
        changes = _run(plan, 0.0, 400.0, mon, step=0.1)
        # Every stage's groups are green together at some point, in order, and again.
        served = [
            k
            for t, out in changes
            for k, (members, _) in enumerate(spec.local_plan)
            if all(out[i] == G for i in members)
            and not any(out[i] == G for i in set(range(spec.n_groups)) - set(members))
        ]
        order = [k for n, k in enumerate(served) if n == 0 or served[n - 1] != k]
        n_stages = len(spec.local_plan)
        assert order[: 2 * n_stages] == list(range(n_stages)) * 2, (x.id, order)
        # Wind down in the middle of every stage change: always all red within a stage's worth
        # of minimum green + clearance + all-red.
        for t_wind in (t for t, _ in changes[1:12]):
            mon = ConflictMonitor(spec, 0.0)
            plan = LocalPlan(spec, 0.0)
            _run(plan, 0.0, t_wind + 0.05, mon, step=0.1)
            plan.wind_down()
            after = _run(plan, t_wind + 0.05, t_wind + 60.0, mon, step=0.1)
            assert after[-1][1] == (R,) * spec.n_groups, (x.id, t_wind, after)


# -- the cabinet core ------------------------------------------------------------------------

CORE = CabinetSpec(
    groups=[GroupSpec("A"), GroupSpec("B")],
    conflicts=[("A", "B")],
    local_plan=[({0}, 10.0), ({1}, 8.0)],
    heartbeat_timeout_s=1.0,
    startup_all_red_s=2.0,
)
RR: Outputs = (R, R)


class Controller:
    """Writes frames the way :class:`devices.modbus.CabinetLink` does: one write of HR 0..,
    a fresh heartbeat each time, commit = heartbeat."""

    def __init__(self, core: CabinetCore) -> None:
        self.core = core
        self.hb = 0

    def frame(self, outputs: Sequence[int], command: Command = Command.FOLLOW) -> list[int]:
        self.hb = next_heartbeat(self.hb)
        return encode_outputs(outputs, self.hb, int(command))

    def send(self, t: float, outputs: Sequence[int], command: Command = Command.FOLLOW) -> None:
        self.core.write_holding(t, HR.HEARTBEAT, self.frame(outputs, command))

    def drive(
        self,
        start: float,
        end: float,
        outputs: Sequence[int],
        command: Command = Command.FOLLOW,
    ) -> None:
        """Send and tick every 0.25 s from ``start`` to before ``end``."""
        for t in _grid(start, end):
            self.send(t, outputs, command)
            self.core.tick(t)


def _ticks(core: CabinetCore, start: float, end: float) -> list[tuple[float, Outputs]]:
    """Tick without writes; the changes of what the heads show."""
    changes: list[tuple[float, Outputs]] = []
    last = core.shown
    for t in _grid(start, end):
        core.tick(t)
        if core.shown != last:
            changes.append((t, core.shown))
            last = core.shown
    return changes


def _modes(core: CabinetCore) -> list[tuple[float, CabinetMode, FaultCode]]:
    return [(c.t, c.mode, c.fault) for c in core.transitions]


def _following(spec: CabinetSpec = CORE) -> tuple[CabinetCore, Controller]:
    """A core that handed over to an all-red controller at 2.0 (sent 0.0 .. 2.0)."""
    core = CabinetCore(spec, 0.0)
    ctl = Controller(core)
    ctl.drive(0.0, 2.25, (R,) * spec.n_groups)
    assert core.mode is CabinetMode.FOLLOWING
    return core, ctl


def test_startup_lasts_startup_all_red_s_then_hands_over_to_an_all_red_follow() -> None:
    core = CabinetCore(CORE, 0.0)
    ctl = Controller(core)
    ctl.drive(0.0, 2.0, RR)
    assert core.mode is CabinetMode.STARTUP and core.shown == RR
    ctl.drive(2.0, 2.25, RR)
    assert _modes(core) == [
        (0.0, CabinetMode.STARTUP, FaultCode.NONE),
        (2.0, CabinetMode.FOLLOWING, FaultCode.NONE),
    ]
    assert core.stats.handovers == 1
    assert core.stats.commits == 9 and core.stats.heartbeats == 9


def test_startup_waits_for_an_all_red_commit() -> None:
    core = CabinetCore(CORE, 0.0)
    ctl = Controller(core)
    ctl.drive(0.0, 4.0, (G, R))  # the controller wants green: the cabinet stays all red
    assert core.mode is CabinetMode.STARTUP and core.shown == RR
    ctl.send(4.0, RR)  # the handover happens on the commit itself
    assert _modes(core)[-1] == (4.0, CabinetMode.FOLLOWING, FaultCode.NONE)
    ctl.send(4.25, (G, R))
    assert core.shown == (G, R)


def test_no_handover_without_a_commit() -> None:
    core = CabinetCore(CORE, 0.0)
    ctl = Controller(core)
    for t in _grid(0.0, 3.0):  # heartbeats only
        core.write_holding(t, HR.HEARTBEAT, [next_heartbeat(ctl.hb)])
        ctl.hb = next_heartbeat(ctl.hb)
        core.tick(t)
    assert (core.mode, core.heartbeat_alive) == (CabinetMode.STARTUP, True)
    assert core.stats.commits == 0
    ctl.send(3.0, RR)
    assert core.mode is CabinetMode.FOLLOWING


def test_commit_register_semantics() -> None:
    core, ctl = _following()
    commits = core.stats.commits
    # Outputs written without touching the commit register are not applied ...
    core.write_holding(2.25, HR.OUTPUTS, [G, R])
    assert core.shown == RR and core.stats.commits == commits
    # ... until the commit register is written with the heartbeat's value.
    core.write_holding(2.5, HR.COMMIT, [ctl.hb])
    assert core.shown == (G, R) and core.stats.commits == commits + 1
    # A frame whose commit register is not its heartbeat is no complete set: the heartbeat
    # counts, nothing else does (not even its command).
    frame = ctl.frame((G, R), Command.FLASH)
    frame[HR.COMMIT] = (frame[HR.HEARTBEAT] - 1) & 0xFFFF
    core.write_holding(3.0, HR.HEARTBEAT, frame)
    assert (core.mode, core.shown) == (CabinetMode.FOLLOWING, (G, R))
    assert core.stats.commits_ignored == 1 and core.last_heartbeat_t == 3.0
    regs = core.input_registers(3.0)
    assert regs[IR.LAST_HEARTBEAT] == ctl.hb
    assert regs[IR.LAST_COMMIT] == ctl.hb - 1  # the previous frame's
    assert core.holding_registers()[: HR.COMMIT + 1] == [ctl.hb, Command.FLASH, ctl.hb - 1]
    # Writing the commit register alone applies what the registers hold, command included.
    core.write_holding(3.25, HR.COMMIT, [ctl.hb])
    assert core.mode is CabinetMode.FLASH_REQUESTED
    assert core.input_registers(3.25)[IR.LAST_COMMIT] == ctl.hb


def test_write_off_the_map_is_refused() -> None:
    core = CabinetCore(CORE, 0.0)
    with pytest.raises(ValueError, match="off the map"):
        core.write_holding(0.0, HR.END - 1, [0, 0])


def test_heartbeat_silence_falls_back_to_the_local_plan_from_what_is_shown() -> None:
    core, ctl = _following()
    ctl.drive(2.25, 4.25, (G, R))  # A green from 2.25, last heartbeat at 4.0
    assert core.heartbeat_deadline() == 5.0
    assert _ticks(core, 4.25, 5.0) == []
    assert core.mode is CabinetMode.FOLLOWING
    core.tick(5.0)
    assert _modes(core)[-1] == (5.0, CabinetMode.LOCAL_PLAN, FaultCode.HEARTBEAT_LOST)
    assert not core.heartbeat_alive and core.heartbeat_deadline() is None
    assert core.stats.heartbeat_losses == 1 and core.stats.local_plan_entries == 1
    regs = core.input_registers(5.0)
    assert (regs[IR.STATUS], regs[IR.FAULT]) == (CabinetMode.LOCAL_PLAN, FaultCode.HEARTBEAT_LOST)
    # A keeps its 5 s minimum (from 2.25), clears, and the plan cycles from stage 0.
    assert _ticks(core, 5.25, 30.0) == [
        (7.25, (Y, R)),
        (10.25, RR),
        (11.25, (G, R)),
        (21.25, (Y, R)),
        (24.25, RR),
        (25.25, (R, G)),
    ]


def test_heartbeat_silence_with_the_flash_fallback() -> None:
    spec = CabinetSpec(
        groups=[GroupSpec("V"), GroupSpec("P", kind="pedestrian")],
        conflicts=[("V", "P")],
        fallback="flash",
        heartbeat_timeout_s=1.0,
    )
    core, ctl = _following(spec)
    ctl.drive(2.25, 3.0, (G, R))  # last heartbeat 2.75
    core.tick(3.5)
    assert core.mode is CabinetMode.FOLLOWING
    core.tick(3.75)
    assert (core.mode, core.fault) == (CabinetMode.FLASH, FaultCode.HEARTBEAT_LOST)
    assert core.shown == (FY, D)  # vehicles flash yellow, pedestrians go dark
    assert not core.latched
    # The heartbeat comes back: start-up all red, then the controller's all red takes over.
    ctl.drive(6.0, 8.0, RR)
    assert _modes(core)[-2:] == [
        (3.75, CabinetMode.FLASH, FaultCode.HEARTBEAT_LOST),
        (6.0, CabinetMode.STARTUP, FaultCode.NONE),
    ]
    assert core.shown == RR
    ctl.drive(8.0, 8.25, RR)
    assert _modes(core)[-1] == (8.0, CabinetMode.FOLLOWING, FaultCode.NONE)


def _lost_with_a_green() -> tuple[CabinetCore, Controller]:
    """FOLLOWING with A green from 2.25; heartbeat lost at 5.0, the plan keeps A green."""
    core, ctl = _following()
    ctl.drive(2.25, 4.25, (G, R))
    _ticks(core, 4.25, 6.0)
    assert (core.mode, core.shown) == (CabinetMode.LOCAL_PLAN, (G, R))
    return core, ctl


def test_heartbeat_back_with_follow_all_red_winds_the_plan_down_and_hands_over() -> None:
    core, ctl = _lost_with_a_green()
    ctl.drive(6.0, 10.25, RR)
    # Still the plan until it is all red; the fault says why until then.
    assert (core.mode, core.fault) == (CabinetMode.LOCAL_PLAN, FaultCode.HEARTBEAT_LOST)
    assert core.shown == (Y, R)  # from 7.25, when A's minimum green (from 2.25) ran out
    assert core.stats.heartbeat_resumes == 1
    ctl.drive(10.25, 10.5, RR)
    # The yellow runs out at 10.25 and that tick hands over.
    assert _modes(core)[-1] == (10.25, CabinetMode.FOLLOWING, FaultCode.NONE)
    assert core.stats.handovers == 2


def test_heartbeat_back_during_a_plan_stage_cuts_the_stage_to_its_minimum() -> None:
    core, _ = _lost_with_a_green()
    assert _ticks(core, 6.0, 12.0) == [(7.25, (Y, R)), (10.25, RR), (11.25, (G, R))]
    ctl = Controller(core)  # a restarted controller: heartbeats from 1 again
    ctl.drive(12.0, 19.5, RR)
    # Stage 0 (10 s from 11.25) ends at A's 5 s minimum instead: yellow 16.25 .. 19.25.
    assert core.shown == RR
    assert _modes(core)[-1] == (19.25, CabinetMode.FOLLOWING, FaultCode.NONE)


@pytest.mark.parametrize(("t_green", "accepted"), [(10.75, False), (11.25, True)])
def test_the_monitor_keeps_its_clearance_timers_across_the_handover(
    t_green: float, accepted: bool
) -> None:
    core, ctl = _lost_with_a_green()
    ctl.drive(6.0, 10.5, RR)  # handed over at 10.25, A red since 10.25
    assert core.mode is CabinetMode.FOLLOWING
    ctl.send(t_green, (R, G))
    if accepted:
        assert (core.mode, core.shown) == (CabinetMode.FOLLOWING, (R, G))
    else:
        assert (core.mode, core.fault, core.fault_groups) == (
            CabinetMode.FLASH,
            FaultCode.SHORT_ALL_RED,
            (0, 1),
        )


def test_heartbeat_back_without_a_new_commit_does_not_hand_over() -> None:
    core, ctl = _following()
    ctl.drive(2.25, 4.25, RR)  # the last commit (4.0) is all red
    _ticks(core, 4.25, 6.0)
    assert core.mode is CabinetMode.LOCAL_PLAN
    for t in _grid(6.0, 16.0):  # heartbeats only: the plan winds down, but no handover
        ctl.hb = next_heartbeat(ctl.hb)
        core.write_holding(t, HR.HEARTBEAT, [ctl.hb])
        core.tick(t)
    assert core.heartbeat_alive and core.shown == RR
    assert core.mode is CabinetMode.LOCAL_PLAN
    ctl.send(16.0, RR)  # a commit made after the heartbeat came back
    assert _modes(core)[-1] == (16.0, CabinetMode.FOLLOWING, FaultCode.NONE)


def test_heartbeat_back_with_outputs_not_all_red_keeps_the_plan_in_all_red() -> None:
    core, ctl = _lost_with_a_green()
    ctl.drive(6.0, 20.0, (G, R))  # the controller insists on its green
    assert (core.mode, core.shown) == (CabinetMode.LOCAL_PLAN, RR)
    ctl.drive(20.0, 20.25, RR)
    assert core.mode is CabinetMode.FOLLOWING


def test_flash_command_and_leaving_it() -> None:
    core, ctl = _following()
    ctl.drive(2.25, 3.0, (G, R))
    ctl.drive(3.0, 6.0, (G, R), Command.FLASH)
    assert core.shown == (FY, FY)
    ctl.drive(6.0, 8.25, RR)
    assert _modes(core)[-3:] == [
        (3.0, CabinetMode.FLASH_REQUESTED, FaultCode.NONE),
        (6.0, CabinetMode.STARTUP, FaultCode.NONE),
        (8.0, CabinetMode.FOLLOWING, FaultCode.NONE),
    ]
    # Leaving flash resets the monitor: the first green waits for the all-red floor from 6.0 ...
    # which has passed; a green at once is fine.
    ctl.send(8.25, (G, R))
    assert core.shown == (G, R)


def test_heartbeat_lost_in_requested_flash_is_flash_with_the_fault() -> None:
    core, ctl = _following()
    ctl.drive(2.25, 3.0, RR, Command.FLASH)
    _ticks(core, 3.0, 4.0)
    assert (core.mode, core.fault) == (CabinetMode.FLASH, FaultCode.HEARTBEAT_LOST)
    # The controller asks for flash again: requested flash, no fault.
    ctl.send(4.0, RR, Command.FLASH)
    assert (core.mode, core.fault) == (CabinetMode.FLASH_REQUESTED, FaultCode.NONE)


def test_a_conflict_latches_flash_ignores_outputs_and_reset_is_edge_triggered() -> None:
    core, ctl = _following()
    ctl.send(3.0, (G, G))
    assert (core.mode, core.fault, core.fault_groups) == (
        CabinetMode.FLASH,
        FaultCode.CONFLICT,
        (0, 1),
    )
    assert core.latched and core.shown == (FY, FY)
    assert core.last_fault is not None and core.last_fault.code is FaultCode.CONFLICT
    regs = core.input_registers(3.0)
    assert regs[IR.STATUS : IR.FAULT_GROUP_B + 1] == [CabinetMode.FLASH, FaultCode.CONFLICT, 1, 2]
    assert regs[IR.DISPLAYED : IR.DISPLAYED + 2] == [FY, FY]
    # Legal outputs, follow commands, even a dead heartbeat: still the latched fault.
    ctl.drive(3.25, 5.0, (G, R))
    _ticks(core, 5.0, 8.0)
    assert (core.mode, core.fault, core.shown) == (CabinetMode.FLASH, FaultCode.CONFLICT, (FY, FY))
    # The reset commit clears it: start-up all red, then the handover.
    ctl.drive(8.0, 10.25, RR, Command.RESET_FAULT)
    assert _modes(core)[-3:] == [
        (3.0, CabinetMode.FLASH, FaultCode.CONFLICT),
        (8.0, CabinetMode.STARTUP, FaultCode.NONE),
        (10.0, CabinetMode.FOLLOWING, FaultCode.NONE),  # a standing reset counts as follow
    ]
    assert not core.latched and core.last_fault is None
    assert core.stats.faults == 1 and core.stats.fault_resets == 1
    # A new fault while the reset still stands is not cleared by it.
    ctl.send(10.25, (G, R), Command.RESET_FAULT)
    ctl.send(10.5, RR, Command.RESET_FAULT)
    assert (core.mode, core.fault) == (CabinetMode.FLASH, FaultCode.SHORT_CLEARANCE)
    ctl.drive(10.75, 13.0, RR, Command.RESET_FAULT)
    assert core.mode is CabinetMode.FLASH and core.latched
    # Follow, then reset: an edge.
    ctl.send(13.0, RR)
    assert core.mode is CabinetMode.FLASH
    ctl.send(13.25, RR, Command.RESET_FAULT)
    assert (core.mode, core.fault) == (CabinetMode.STARTUP, FaultCode.NONE)
    assert core.stats.fault_resets == 2


def test_an_illegal_code_latches_with_its_group() -> None:
    core, ctl = _following()
    frame = ctl.frame(RR)
    frame[HR.OUTPUTS + 1] = 7  # encode_outputs refuses it; a broken controller might not
    core.write_holding(3.0, HR.HEARTBEAT, frame)
    assert (core.mode, core.fault, core.fault_groups) == (
        CabinetMode.FLASH,
        FaultCode.ILLEGAL_CODE,
        (1,),
    )
    status = decode_status(core.input_registers(3.0), 2, CORE.n_channels)
    assert status.fault_groups == (1,) and status.flashing


def test_an_unknown_command_keeps_the_previous_one() -> None:
    core, ctl = _following()
    frame = ctl.frame((G, R))
    frame[HR.COMMAND] = 9
    core.write_holding(3.0, HR.HEARTBEAT, frame)
    assert core.stats.bad_commands == 1
    assert (core.mode, core.shown) == (CabinetMode.FOLLOWING, (G, R))
    # ... also when the previous command was flash.
    ctl.send(4.0, (G, R), Command.FLASH)
    frame = ctl.frame(RR)
    frame[HR.COMMAND] = 9
    core.write_holding(5.0, HR.HEARTBEAT, frame)
    assert core.mode is CabinetMode.FLASH_REQUESTED


def test_local_plan_command_from_following_and_back() -> None:
    core, ctl = _following()
    ctl.drive(2.25, 3.0, (G, R))
    ctl.send(3.0, (G, R), Command.LOCAL_PLAN)
    assert _modes(core)[-1] == (3.0, CabinetMode.LOCAL_PLAN, FaultCode.NONE)
    assert core.stats.local_plan_entries == 1
    ctl.drive(3.25, 12.0, (G, R), Command.LOCAL_PLAN)
    # The plan took A's green over (5 s minimum from 2.25) and cycles on.
    assert core.shown == (G, R)  # stage 0 from 11.25
    # Follow with all red: wind down (A's minimum from 11.25), hand over.
    ctl.drive(12.0, 20.0, RR)
    assert _modes(core)[-1] == (19.25, CabinetMode.FOLLOWING, FaultCode.NONE)


def test_local_plan_command_in_startup() -> None:
    core = CabinetCore(CORE, 0.0)
    ctl = Controller(core)
    ctl.drive(0.0, 2.25, RR, Command.LOCAL_PLAN)
    assert _modes(core) == [
        (0.0, CabinetMode.STARTUP, FaultCode.NONE),
        (2.0, CabinetMode.LOCAL_PLAN, FaultCode.NONE),
    ]
    assert core.shown == (G, R)  # stage 0: all red since power-up, so at once
    # The heartbeat stops while the plan runs on request: now it is a fault.
    _ticks(core, 2.25, 3.25)
    assert (core.mode, core.fault) == (CabinetMode.LOCAL_PLAN, FaultCode.HEARTBEAT_LOST)
    ctl.send(5.0, RR, Command.LOCAL_PLAN)
    assert (core.mode, core.fault) == (CabinetMode.LOCAL_PLAN, FaultCode.NONE)


def test_local_plan_command_without_a_plan_flashes_steadily() -> None:
    spec = CabinetSpec(
        groups=[GroupSpec("A"), GroupSpec("B")],
        conflicts=[("A", "B")],
        fallback="flash",
        heartbeat_timeout_s=1.0,
    )
    core, ctl = _following(spec)
    ctl.drive(2.25, 12.0, RR, Command.LOCAL_PLAN)
    # No plan to run: requested flash, and it stays there (no blinking through start-up).
    assert _modes(core)[-1] == (2.25, CabinetMode.FLASH_REQUESTED, FaultCode.NONE)
    assert core.shown == (FY, FY)
    ctl.drive(12.0, 14.25, RR)
    assert _modes(core)[-2:] == [
        (12.0, CabinetMode.STARTUP, FaultCode.NONE),
        (14.0, CabinetMode.FOLLOWING, FaultCode.NONE),
    ]


def test_shipped_cabinet_hands_back_when_the_heartbeat_returns_between_stages() -> None:
    # ql1a-thd's plan keeps N_T green from its first stage into its second. If the controller
    # comes back while the plan is between those stages, the cabinet must still wind down to
    # all red and hand over.
    from controller.config import load_config
    from controller.sim_signals import cabinet_spec

    cfg = load_config(ROOT / "config.yaml")
    x = next(x for x in cfg.intersections() if x.id == "ql1a-thd")
    spec = cabinet_spec(x, cfg.signals)
    n = spec.n_groups
    first, second = (frozenset(members) for members, _ in spec.local_plan[:2])
    (carried,) = first & second
    core, ctl = _following(spec)
    t = 2.25
    while core.mode is not CabinetMode.LOCAL_PLAN:
        core.tick(t)
        t += 0.25
    # Run the plan until the carried group is green and another group of stage 0 clears.
    while not (
        core.shown[carried] == G and any(core.shown[i] in (Y, PC) for i in first - {carried})
    ):
        core.tick(t)
        t += 0.25
        assert t < 200.0
    ctl.drive(t, t + 30.0, (R,) * n)
    assert (core.mode, core.fault) == (CabinetMode.FOLLOWING, FaultCode.NONE)


def test_status_registers() -> None:
    core, ctl = _following()
    ctl.drive(2.25, 3.0, (G, R))
    regs = core.input_registers(70_000.5)
    assert regs[IR.MAP_VERSION] == MAP_VERSION
    assert regs[IR.N_GROUPS : IR.N_CHANNELS + 1] == [2, 16]
    assert regs[IR.LAST_HEARTBEAT] == regs[IR.LAST_COMMIT] == ctl.hb == 12
    assert (regs[IR.UPTIME_HI], regs[IR.UPTIME_LO]) == (1, 70_000 - 65_536)
    status = decode_status(regs, 2, 16)
    assert status.following and status.displayed == (SignalCode.GREEN, SignalCode.RED)
    assert core.holding_registers()[: HR.COMMIT + 1] == [12, 0, 12]


def test_heartbeat_wraps() -> None:
    core, ctl = _following()
    ctl.hb = 0xFFFE
    ctl.drive(2.25, 10.0, RR)  # 65535, 0, 1, ...: every one a heartbeat
    assert core.mode is CabinetMode.FOLLOWING and core.heartbeat_alive


# -- detectors -------------------------------------------------------------------------------


class ScriptedDetectors:
    """A detector source whose readings the test sets; it records what it was shown."""

    def __init__(self) -> None:
        self.values: dict[int, tuple[int, float, bool]] = {}
        self.steps: list[tuple[float, float, dict[str, int]]] = []
        self.fail = False

    def step(self, t: float, dt: float, shown: Mapping[str, int]) -> None:
        if self.fail:
            raise RuntimeError("traffic model broke")
        self.steps.append((t, dt, dict(shown)))

    def detector(self, channel: int) -> tuple[int, float, bool]:
        return self.values.get(channel, (0, 0.0, False))


DET = CabinetSpec(
    groups=[GroupSpec("A"), GroupSpec("B")],
    conflicts=[("A", "B")],
    local_plan=[({0}, 10.0)],
    channels=(0, 1, 17),
    n_channels=20,
    heartbeat_timeout_s=1000.0,
)


def _det(core: CabinetCore, t: float, ch: int) -> tuple[int, int, bool]:
    regs = core.input_registers(t)
    present = bool(regs[IR.PRESENCE + ch // 16] >> (ch % 16) & 1)
    return regs[IR.DET_COUNT + ch], regs[IR.DET_OCCUPANCY + ch], present


def test_detector_registers_follow_the_source_and_wrap_at_16_bits() -> None:
    src = ScriptedDetectors()
    core = CabinetCore(DET, 0.0, src)
    src.values = {0: (65_530, 2.5, False), 1: (0, 6553.5, True), 17: (3, 0.0, True)}
    core.tick(0.25)
    assert _det(core, 0.25, 0) == (65_530, 25, False)  # occupancy in 0.1 s
    assert _det(core, 0.25, 1) == (0, 65_535, True)
    assert _det(core, 0.25, 17) == (3, 0, True)
    assert core.input_registers(0.25)[IR.PRESENCE : IR.PRESENCE + 2] == [0b10, 0b10]
    src.values = {0: (65_540, 2.5, False), 1: (0, 6553.75, True), 17: (3, 0.0, False)}
    core.tick(0.5)
    assert _det(core, 0.5, 0) == (4, 25, False)
    assert _det(core, 0.5, 1) == (0, 1, True)
    assert _det(core, 0.5, 17) == (3, 0, False)
    status = decode_status(core.input_registers(0.5), 2, 20)
    assert [d.count for d in status.detectors[:2]] == [4, 0]
    # The source saw what the heads show, and the time steps.
    assert src.steps == [(0.25, 0.25, {"A": R, "B": R}), (0.5, 0.25, {"A": R, "B": R})]


def test_detector_registers_never_run_backwards() -> None:
    src = ScriptedDetectors()
    core = CabinetCore(DET, 0.0, src)
    for t, value in ((0.25, (10, 4.0, True)), (0.5, (3, 1.0, False)), (0.75, (5, 1.5, True))):
        src.values = {0: value}
        core.tick(t)
    assert _det(core, 0.75, 0) == (12, 45, True)


def test_a_failing_source_is_counted_and_the_registers_kept() -> None:
    src = ScriptedDetectors()
    core = CabinetCore(DET, 0.0, src)
    src.values = {0: (4, 1.0, True)}
    core.tick(0.25)
    src.fail = True
    src.values = {0: (9, 2.0, False)}
    core.tick(0.5)
    assert core.stats.traffic_errors == 1
    assert _det(core, 0.5, 0) == (4, 10, True)


def test_stuck_detector_shows_presence_and_growing_occupancy_until_it_frees() -> None:
    src = ScriptedDetectors()
    core = CabinetCore(DET, 0.0, src)
    src.values = {1: (5, 1.0, False)}
    core.tick(0.25)
    core.stick_detector(1, until=2.0)
    for t in _grid(0.5, 2.0):
        core.tick(t)
        src.values = {1: (9, 1.0, False)}  # counts while stuck are lost, as on a real loop
    assert _det(core, 1.75, 1) == (5, 25, True)  # 1.0 + six ticks of 0.25 s
    core.tick(2.0)
    assert _det(core, 2.0, 1) == (5, 25, False)
    src.values = {1: (11, 1.5, True)}
    core.tick(2.25)
    assert _det(core, 2.25, 1) == (7, 30, True)


def test_stuck_detector_without_a_source_frees_too() -> None:
    core = CabinetCore(DET, 0.0)
    core.stick_detector(3, until=1.0)
    core.stick_detector(19)
    for t in _grid(0.25, 3.0):
        core.tick(t)
    assert _det(core, 3.0, 3) == (0, 7, False)  # three ticks of 0.25 s before 1.0
    assert _det(core, 3.0, 19) == (0, 27, True)
    core.clear_injections()
    core.tick(3.0)
    assert _det(core, 3.0, 19) == (0, 27, False)


def test_stuck_channel_the_source_does_not_feed_frees_after_clearing() -> None:
    src = ScriptedDetectors()
    core = CabinetCore(DET, 0.0, src)
    core.stick_detector(5)
    core.tick(0.5)
    assert _det(core, 0.5, 5) == (0, 5, True)
    core.clear_injections()
    core.tick(0.75)
    assert _det(core, 0.75, 5) == (0, 5, False)


def test_garbage_register_shows_for_its_duration() -> None:
    core = CabinetCore(DET, 0.0)
    core.put_garbage(IR.STATUS, 99, until=3.0)
    core.put_garbage(IR.DET_COUNT + 2, 0xBEEF, until=3.0)
    regs = core.input_registers(2.0)
    assert regs[IR.STATUS] == 99 and regs[IR.DET_COUNT + 2] == 0xBEEF
    with pytest.raises(RegisterError) as err:
        decode_status(regs, 2, 20)
    assert err.value.register == IR.STATUS
    assert core.garbage_in(0, IR.STATUS + 1)
    assert not core.garbage_in(0, IR.STATUS)
    assert not core.garbage_in(IR.STATUS + 1, 10)
    assert core.status(2.0).mode is CabinetMode.STARTUP  # the core itself is fine
    regs = core.input_registers(3.0)
    assert regs[IR.STATUS] == CabinetMode.STARTUP and regs[IR.DET_COUNT + 2] == 0
    assert not core.garbage_in(0, IR.END)
    # Presence garbage reaches the discrete inputs too.
    core.put_garbage(IR.PRESENCE, 0x8001)
    assert core.presence_registers(4.0) == [0x8001, 0, 0, 0]
    core.clear_injections()
    assert core.presence_registers(4.0) == [0, 0, 0, 0]


def test_injections_are_checked() -> None:
    core = CabinetCore(DET, 0.0)
    with pytest.raises(ValueError, match="no channel 20"):
        core.stick_detector(20)
    with pytest.raises(ValueError, match="no input register"):
        core.put_garbage(IR.END, 1)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        core.put_garbage(IR.STATUS, 0x10000)


# -- the TCP shell ---------------------------------------------------------------------------

SOCK = CabinetSpec(
    groups=[GroupSpec("A", min_green_s=1.0), GroupSpec("B", min_green_s=1.0)],
    conflicts=[("A", "B")],
    local_plan=[({0}, 1.0), ({1}, 1.0)],
    n_channels=4,
    heartbeat_timeout_s=0.5,
    startup_all_red_s=0.2,
)


class Driver:
    """A minimal controller: writes its outputs every 0.1 s with a fresh heartbeat."""

    def __init__(self, link: CabinetLink, n_groups: int) -> None:
        self.link = link
        self.outputs: Sequence[int] = (R,) * n_groups
        self.command = Command.FOLLOW
        self.hb = 0
        self.ok = 0
        self.errors = 0

    async def run(self) -> None:
        while True:
            self.hb = next_heartbeat(self.hb)
            try:
                await self.link.write_outputs(self.outputs, self.hb, int(self.command))
                self.ok += 1
            except CabinetError:
                self.errors += 1
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _bench(
    spec: CabinetSpec = SOCK,
) -> AsyncIterator[tuple[SimulatedCabinet, CabinetLink, Driver]]:
    # A port below the ephemeral range: the refused-link test closes the listener while the
    # driver reconnects, and an ephemeral port could be taken meanwhile (see tests/proxy.py).
    cab = SimulatedCabinet(spec, "127.0.0.1", free_port())
    await cab.start()
    assert cab.running and cab.port != 0
    link = CabinetLink(
        "127.0.0.1",
        cab.port,
        1,
        n_groups=spec.n_groups,
        n_channels=spec.n_channels,
        timeout_s=0.25,
        backoff_min_s=0.05,
        backoff_max_s=0.1,
        down_after=1000,
        occupancy_every=1,  # these tests look at the occupancy registers at every read
    )
    driver = Driver(link, spec.n_groups)
    task = asyncio.create_task(driver.run())
    try:
        yield cab, link, driver
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await link.close()
        await cab.stop()


async def _status(
    link: CabinetLink, want: Callable[[CabinetStatus], bool], timeout: float = 3.0
) -> CabinetStatus:
    """The first status read over the link that satisfies ``want``."""

    async def poll() -> CabinetStatus | None:
        try:
            status = await link.read_status()
        except (CabinetError, RegisterError):
            return None
        return status if want(status) else None

    result = await wait_for(poll, timeout, 0.05)
    assert result is not None
    return result


async def _until_uptime(cab: SimulatedCabinet, seconds: float) -> None:
    """Sleep until the cabinet's core has run ``seconds`` (its monitor counts from then)."""
    delay = cab.core.transitions[0].t + seconds - cab.clock()
    if delay > 0:
        await asyncio.sleep(delay)


def _following_status(s: CabinetStatus) -> bool:
    return s.mode is CabinetMode.FOLLOWING


async def test_shell_hands_over_and_follows_over_tcp() -> None:
    async with _bench() as (cab, link, drv):
        status = await _status(link, _following_status)
        assert status.all_red and status.fault is FaultCode.NONE
        assert status.n_groups == 2 and status.n_channels == 4
        assert 0 < status.last_commit == status.last_heartbeat <= drv.hb
        start, handover = cab.core.transitions
        assert (start.mode, handover.mode) == (CabinetMode.STARTUP, CabinetMode.FOLLOWING)
        assert handover.t - start.t >= SOCK.startup_all_red_s - 1e-6
        # The first green waits for the all-red floor from power-up.
        await _until_uptime(cab, 1.1)
        drv.outputs = (G, R)
        status = await _status(link, lambda s: s.displayed == (SignalCode.GREEN, SignalCode.RED))
        assert status.following and cab.shown == (G, R)
        frame = await link.read_outputs()
        assert frame.committed and frame.outputs == (G, R)
        assert cab.stats.faults == 0 and cab.stats.handovers == 1
        assert cab.stats.commits >= 2 and cab.stats.reads >= 2


async def test_shell_silent_link_times_out_requests_and_falls_back() -> None:
    async with _bench() as (cab, link, drv):
        await _status(link, _following_status)
        cab.inject_link_down(1.0, mode="silent")
        assert cab.link_cut
        started = time.monotonic()
        with pytest.raises(CabinetError, match="TimeoutError"):
            await link.read_status()
        assert time.monotonic() - started >= 0.2  # nobody answered: the link's 0.25 s timeout
        await wait_for(lambda: cab.mode is CabinetMode.LOCAL_PLAN, 2.0)
        assert cab.fault is FaultCode.HEARTBEAT_LOST
        change = cab.core.transitions[-1]
        assert change.mode is CabinetMode.LOCAL_PLAN
        # The watchdog fires on time: the loop wakes at the deadline (slack for a busy host).
        assert 0.5 <= change.t - cab.core.last_heartbeat_t < 0.65
        assert cab.stats.dropped_requests >= 2
        # The link comes back: the plan winds down and the controller's all red takes over.
        status = await _status(link, _following_status, timeout=8.0)
        assert status.fault is FaultCode.NONE and status.all_red
        assert not cab.link_cut
        assert cab.stats.handovers == 2 and cab.stats.heartbeat_resumes == 1
        assert drv.errors >= 1  # the controller's writes timed out too


async def test_shell_refused_link_closes_connections_and_the_listener_comes_back() -> None:
    async with _bench(dataclasses.replace(SOCK, heartbeat_timeout_s=3.0)) as (cab, link, drv):
        await _status(link, _following_status)
        port = cab.port
        cab.inject_link_down(1.0, mode="refuse")
        started = time.monotonic()
        with pytest.raises(CabinetError):
            await link.read_status()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        status = await _status(link, lambda s: True)
        assert time.monotonic() - started >= 0.95
        assert cab.port == port and cab.running
        # The cut was shorter than the watchdog: the cabinet never stopped following.
        assert status.following and cab.stats.heartbeat_losses == 0
        assert cab.stats.link_cuts == 1 and drv.errors >= 1
        # restore_link() ends a cut early.
        cab.inject_link_down(60.0, mode="refuse")
        cab.restore_link()
        started = time.monotonic()
        await _status(link, _following_status, timeout=2.0)
        assert time.monotonic() - started < 1.0
        with pytest.raises(ValueError, match="unknown link failure"):
            cab.inject_link_down(1.0, mode="bogus")  # type: ignore[arg-type]


async def test_shell_power_cycle_clears_a_latched_fault() -> None:
    async with _bench() as (cab, link, drv):
        await _status(link, _following_status)
        drv.outputs = (G, G)
        status = await _status(link, lambda s: s.mode is CabinetMode.FLASH)
        assert (status.fault, status.fault_groups) == (FaultCode.CONFLICT, (0, 1))
        assert status.displayed == (SignalCode.FLASH_YELLOW, SignalCode.FLASH_YELLOW)
        drv.outputs = (R, R)
        await asyncio.sleep(0.4)
        assert (cab.mode, cab.fault) == (CabinetMode.FLASH, FaultCode.CONFLICT)
        await cab.stop()
        assert not cab.running
        with pytest.raises(CabinetError):
            await link.read_status()
        await cab.start()
        assert cab.running and cab.stats.restarts == 1
        assert (cab.mode, cab.fault, cab.core.latched) == (
            CabinetMode.STARTUP,
            FaultCode.NONE,
            False,
        )
        status = await _status(link, _following_status)
        assert status.fault is FaultCode.NONE and status.uptime_s == 0
        assert cab.stats.faults == 1  # the stats survive the power cycle


async def test_shell_detector_injections_reach_the_registers() -> None:
    async with _bench() as (cab, link, _drv):
        cab.inject_stuck_detector(2)
        first = await _status(link, lambda s: s.detectors[2].presence)
        later = await _status(
            link, lambda s: s.detectors[2].occupancy > first.detectors[2].occupancy
        )
        assert later.detectors[2].count == 0
        assert [d.presence for d in later.detectors] == [False, False, True, False]
        client = AsyncModbusTcpClient("127.0.0.1", port=cab.port)
        await client.connect()
        try:
            rr = await client.read_discrete_inputs(0, count=16, device_id=1)
            assert rr.bits[:4] == [False, False, True, False]
        finally:
            client.close()
        cab.inject_garbage(IR.STATUS, 99, 0.3)
        with pytest.raises(RegisterError):
            await link.read_status()
        assert cab.stats.garbage_reads >= 1 and link.stats.decode_errors == 1
        await asyncio.sleep(0.3)
        await link.read_status()
        cab.clear_injections()
        await _status(link, lambda s: not any(d.presence for d in s.detectors))


class _RandomLoops:
    """A detector source whose counts, occupancy and presence move at random (counts past
    the 16-bit wrap included)."""

    def __init__(self, n: int, draws: list[tuple[int, float, bool]]) -> None:
        self.n = n
        self.draws = draws
        self.k = 0
        self.state = [(65_530, 0.0, False)] * n

    def step(self, t: float, dt: float, shown: Mapping[str, int]) -> None:
        for ch in range(self.n):
            add, occ, on = self.draws[self.k % len(self.draws)]
            self.k += 1
            count, occupied, _ = self.state[ch]
            self.state[ch] = (count + add, occupied + occ, on)

    def detector(self, channel: int) -> tuple[int, float, bool]:
        return self.state[channel]


_CODES = [int(c) for c in SignalCode]


@settings(max_examples=60, deadline=None)
@given(
    draws=st.lists(
        st.tuples(st.integers(0, 3), st.floats(0.0, 0.1), st.booleans()), min_size=1, max_size=8
    ),
    actions=st.lists(
        st.one_of(
            st.tuples(st.just("tick"), st.floats(0.01, 1.5)),
            st.tuples(st.just("send"), st.tuples(st.sampled_from(_CODES), st.sampled_from(_CODES))),
            st.tuples(st.just("follow"), st.sampled_from([(R, R), (G, R), (R, G), (Y, R)])),
        ),
        max_size=40,
    ),
)
def test_the_polled_image_is_the_encoded_status(
    draws: list[tuple[int, float, bool]], actions: list[tuple[str, Any]]
) -> None:
    """Whatever the core went through (start-up, following, bad codes, conflicting greens and
    the fault they latch, heartbeat loss and the local plan), the image a poll reads is
    exactly ``encode_status(status(t))``, the codec's own encoding."""
    core = CabinetCore(SOCK, 0.0, _RandomLoops(SOCK.n_channels, draws))
    ctl = Controller(core)
    t = 0.0
    for kind, arg in [("follow", (R, R)), ("tick", 0.3), *actions]:
        if kind == "tick":
            t = round(t + arg, 3)
            core.tick(t)
        else:
            with contextlib.suppress(RegisterError):  # a frame the codec refuses to encode
                ctl.send(t, arg, Command.FOLLOW)
        assert core._image(t) == encode_status(core.status(t)), (kind, arg, core.mode)
        assert core.input_registers(t) == encode_status(core.status(t))
