"""The intersection model: ITE clearances, floors, the derived matrices and validation."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from controller.signals.model import (
    ALL_RED_FLOOR_S,
    YELLOW_FLOOR_S,
    DetectorConfig,
    DetectorKind,
    GroupKind,
    Intersection,
    IntersectionConfig,
    RingBarrierConfig,
    Signal,
    SignalGroupConfig,
    StageConfig,
    all_red_s,
    ite_yellow_s,
)
from tests.unit.signals_fixtures import FOUR_ARM_STAGES, T_JUNCTION_STAGES, four_arm, t_junction


def _problems(cfg: IntersectionConfig) -> list[str]:
    with pytest.raises(ValueError) as info:
        Intersection.build(cfg)
    return str(info.value).splitlines()


def _with(**changes: Any) -> IntersectionConfig:
    return four_arm().model_copy(update=changes)


# -- ITE clearances ----------------------------------------------------------------------------


def test_ite_yellow_at_50_kmh_level_is_3_3_s() -> None:
    # 1.0 + 13.89 / (2 × 3.05) = 3.277 → 3.3
    assert ite_yellow_s(50.0) == pytest.approx(3.3)


@pytest.mark.parametrize(
    ("speed", "grade", "expected"),
    [
        (60.0, 0.0, 3.8),  # 1 + 16.67 / 6.1 = 3.73
        (60.0, -4.0, 4.2),  # downhill: 1 + 16.67 / (6.1 - 0.785) = 4.14
        (60.0, 4.0, 3.5),  # uphill shortens: 1 + 16.67 / (6.1 + 0.785) = 3.42
        (70.0, 0.0, 4.2),
        (80.0, 0.0, 4.7),
        (30.0, 0.0, YELLOW_FLOOR_S),  # 2.37 s → the 3 s floor
        (40.0, 0.0, YELLOW_FLOOR_S),  # 2.82 s → the 3 s floor
    ],
)
def test_ite_yellow_table(speed: float, grade: float, expected: float) -> None:
    assert ite_yellow_s(speed, grade) == pytest.approx(expected)


def test_downhill_yellow_is_longer_than_level() -> None:
    assert ite_yellow_s(60.0, -4.0) > ite_yellow_s(60.0) > ite_yellow_s(60.0, 4.0)


def test_yellow_is_rounded_up_never_down() -> None:
    for speed in range(10, 131, 3):
        for grade in (-10, -5, 0, 5, 10):
            v = speed / 3.6
            exact = 1.0 + v / (2 * 3.05 + 2 * 9.81 * grade / 100)
            y = ite_yellow_s(speed, grade)
            assert y + 1e-9 >= exact
            assert y < max(exact, YELLOW_FLOOR_S) + 0.1 + 1e-9


def test_all_red_and_its_floor() -> None:
    # (15 + 6.1) / 13.89 = 1.519 → 1.6
    assert all_red_s(50.0, 15.0) == pytest.approx(1.6)
    assert all_red_s(60.0, 22.0) == pytest.approx(1.7)  # 28.1 / 16.67 = 1.686
    assert all_red_s(100.0, 1.0) == ALL_RED_FLOOR_S  # 0.26 s → floor


def test_group_clearances_overrides_and_pedestrians() -> None:
    g = SignalGroupConfig(id="A", speed_kmh=50.0, clear_width_m=15.0)
    assert (g.clearance_s, g.red_clearance_s) == (pytest.approx(3.3), pytest.approx(1.6))
    g = SignalGroupConfig(id="A", yellow_s=4.5, all_red_s=2.5)
    assert (g.clearance_s, g.red_clearance_s) == (4.5, 2.5)
    p = SignalGroupConfig(id="P", kind=GroupKind.PEDESTRIAN, crossing_m=12.0, walk_s=7.0)
    assert p.clearance_s == pytest.approx(10.0)  # 12 m / 1.2 m/s
    assert p.red_clearance_s == ALL_RED_FLOOR_S
    assert p.min_green_total_s == 7.0  # the walk beats min_green_s 5
    short = SignalGroupConfig(id="P", kind=GroupKind.PEDESTRIAN, crossing_m=2.0)
    assert short.clearance_s == YELLOW_FLOOR_S
    odd = SignalGroupConfig(id="P", kind=GroupKind.PEDESTRIAN, crossing_m=16.0)
    assert odd.clearance_s == pytest.approx(13.4)  # 13.33 rounded up


def test_overrides_below_floor_are_rejected() -> None:
    with pytest.raises(ValidationError, match="yellow_s"):
        SignalGroupConfig(id="A", yellow_s=2.5)
    with pytest.raises(ValidationError, match="all_red_s"):
        SignalGroupConfig(id="A", all_red_s=0.5)
    with pytest.raises(ValidationError, match="below min_green_s"):
        SignalGroupConfig(id="A", min_green_s=10, max_green_s=8)


def test_signal_is_open() -> None:
    opened = {s for s in Signal if s.is_open}
    assert opened == {Signal.GREEN, Signal.YELLOW, Signal.PED_CLEARANCE, Signal.RED_AMBER}


# -- the derived model -------------------------------------------------------------------------


def test_fixtures_build() -> None:
    x = Intersection.build(four_arm())
    assert x.n == 12
    assert tuple(s for s, _ in x.stages) == FOUR_ARM_STAGES
    assert {x.groups[i].id for i in x.stages[x.stage_index("NS_T")][1]} == {
        "N_T",
        "S_T",
        "P_E",
        "P_W",
    }
    assert [d.channel for d in x.config.detectors] == list(range(20))
    t = Intersection.build(t_junction())
    assert tuple(s for s, _ in t.stages) == T_JUNCTION_STAGES
    assert t.n == 6


def test_conflict_matrix_is_symmetric_and_stages_are_conflict_free() -> None:
    for cfg in (four_arm(), t_junction()):
        x = Intersection.build(cfg)
        for i in range(x.n):
            assert not x.conflict[i][i]
            for j in range(x.n):
                assert x.conflict[i][j] == x.conflict[j][i]
        for _, members in x.stages:
            for i in members:
                for j in members:
                    assert not x.conflict[i][j]


def test_intergreen_is_clearance_plus_all_red() -> None:
    x = Intersection.build(four_arm())
    nt, et, pe, sl = (x.index[k] for k in ("N_T", "E_T", "P_E", "S_L"))
    assert x.clearance[nt] == pytest.approx(4.2)  # 60 km/h, 4 % downhill
    assert x.intergreen[nt][et] == pytest.approx(4.2 + 1.7)
    assert x.all_red(nt, et) == pytest.approx(1.7)
    assert x.intergreen[et][nt] == pytest.approx(3.0 + 2.2)  # 40 km/h: floor yellow
    assert x.intergreen[pe][et] == pytest.approx(10.0 + 1.0)
    assert x.intergreen[nt][sl] == pytest.approx(5.9)
    assert x.intergreen[nt][x.index["S_T"]] == 0.0  # no conflict, no intergreen
    with pytest.raises(KeyError):
        x.stage_index("nope")


def test_intergreen_is_never_rounded_down() -> None:
    """Regression: ``round(3.25 + 1.0, 1)`` is 4.2 and cut the all-red to 0.95 s."""
    groups = [
        SignalGroupConfig(id="A", yellow_s=3.25, all_red_s=1.0),
        SignalGroupConfig(id="B", yellow_s=3.05, all_red_s=1.04),
    ]
    cfg = IntersectionConfig(
        id="odd",
        groups=groups,
        conflicts=[("A", "B")],
        stages=[StageConfig(id="a", groups=["A"]), StageConfig(id="b", groups=["B"])],
    )
    x = Intersection.build(cfg)
    assert x.intergreen[0][1] >= 4.25
    assert x.intergreen[1][0] >= 3.05 + 1.04
    assert x.all_red(0, 1) + 1e-9 >= ALL_RED_FLOOR_S
    # the usual 0.1 s values stay clean
    y = Intersection.build(four_arm())
    assert y.intergreen[y.index["S_T"]][y.index["E_T"]] == 5.5


def test_intergreen_override_at_or_above_the_floor_is_used() -> None:
    x = Intersection.build(_with(intergreens={"N_T": {"E_T": 5.2, "W_T": 8.0}}))
    nt = x.index["N_T"]
    assert x.intergreen[nt][x.index["E_T"]] == 5.2  # = 4.2 + the 1 s floor
    assert x.intergreen[nt][x.index["W_T"]] == 8.0
    assert x.intergreen[x.index["E_T"]][nt] == pytest.approx(5.2)  # other direction untouched


# -- validation messages with their paths ------------------------------------------------------


def test_conflict_inside_a_stage() -> None:
    stages = [*four_arm().stages]
    stages[0] = StageConfig(id="NS_T", groups=["N_T", "S_T", "P_E", "P_W", "S_L"])
    assert _problems(_with(stages=stages)) == [
        "stages[0]: groups N_T and S_L conflict and cannot be green in the same stage",
        "stages[0]: groups S_L and P_W conflict and cannot be green in the same stage",
    ]


def test_intergreen_override_below_floor() -> None:
    assert _problems(_with(intergreens={"N_T": {"E_T": 5.0}})) == [
        "intergreens.N_T.E_T: 5 s is below the floor 5.2 s (clearance 4.2 s + all-red 1 s)"
    ]


def test_intergreen_override_needs_a_conflict_and_known_groups() -> None:
    assert _problems(_with(intergreens={"N_T": {"S_T": 9.0}, "Q": {"E_T": 9.0}})) == [
        "intergreens.N_T.S_T: N_T and S_T do not conflict; an intergreen needs a conflict",
        "intergreens.Q.E_T: unknown group 'Q'",
    ]


def test_unknown_group_in_conflicts_stages_detectors() -> None:
    cfg = four_arm()
    stages = [*cfg.stages]
    stages[1] = StageConfig(id="NS_L", groups=["N_L", "S_L", "X_L"])
    detectors = [
        *cfg.detectors,
        DetectorConfig(id="ghost", group="GHOST", kind=DetectorKind.STOPLINE, channel=30),
    ]
    bad = _with(conflicts=[*cfg.conflicts, ("N_T", "NOPE")], stages=stages, detectors=detectors)
    problems = _problems(bad)
    k = len(cfg.conflicts)
    assert f"conflicts[{k}][1]: unknown group 'NOPE'" in problems
    assert "stages[1].groups[2]: unknown group 'X_L'" in problems
    assert f"detectors[{len(cfg.detectors)}].group: unknown group 'GHOST'" in problems
    assert len(problems) == 3


def test_group_in_no_stage() -> None:
    stages = [*four_arm().stages]
    stages[3] = StageConfig(id="EW_L", groups=["E_L"])
    assert _problems(_with(stages=stages)) == [
        "groups[7]: group 'W_L' is in no stage and would never get green"
    ]


def test_duplicate_channel() -> None:
    detectors = [*four_arm().detectors]
    detectors[5] = detectors[5].model_copy(update={"channel": 0})
    assert _problems(_with(detectors=detectors)) == [
        "detectors[5].channel: channel 0 is already 'N_T_sl'"
    ]


def test_duplicate_group_and_stage_ids() -> None:
    cfg = four_arm()
    groups = [*cfg.groups, cfg.groups[0]]
    stages = [*cfg.stages, cfg.stages[0]]
    problems = _problems(_with(groups=groups, stages=stages))
    assert "groups[12].id: duplicate group 'N_T'" in problems
    assert "stages[4].id: duplicate stage 'NS_T'" in problems


def test_every_problem_is_listed_at_once() -> None:
    stages = [*four_arm().stages]
    stages[0] = StageConfig(id="NS_T", groups=["N_T", "S_T", "P_E", "P_W", "S_L"])
    problems = _problems(_with(stages=stages, intergreens={"N_T": {"E_T": 1.0}}))
    assert len(problems) == 3
    assert problems[0].startswith("intergreens.N_T.E_T: 1 s is below the floor")


def test_self_conflict_is_rejected_by_the_config() -> None:
    with pytest.raises(ValidationError, match="cannot conflict with itself"):
        _with_validation(conflicts=[("N_T", "N_T")])


def _with_validation(**changes: Any) -> IntersectionConfig:
    data = four_arm().model_dump()
    data.update(changes)
    return IntersectionConfig.model_validate(data)


def test_config_round_trips_through_a_dict() -> None:
    cfg = four_arm()
    again = IntersectionConfig.model_validate(cfg.model_dump())
    x, y = Intersection.build(cfg), Intersection.build(again)
    assert x.intergreen == y.intergreen and x.conflict == y.conflict and x.stages == y.stages
    assert all(math.isfinite(c) for c in x.clearance)


# -- NEMA ring-barrier layout ------------------------------------------------------------------


def _nema(**over: object) -> IntersectionConfig:
    """Eight vehicle phases on the standard dual ring: protected lefts (1, 5, 3, 7) and
    throughs (2, 6, 4, 8); a left conflicts with the opposing through and with every movement
    of the cross street."""
    g = [
        SignalGroupConfig(id=gid, movement="left" if gid.endswith("L") else "through")
        for gid in ("N_L", "S_T", "S_L", "N_T", "E_L", "W_T", "W_L", "E_T")
    ]
    ns = ["N_L", "S_T", "S_L", "N_T"]
    ew = ["E_L", "W_T", "W_L", "E_T"]
    conflicts = [(a, b) for a in ns for b in ew]
    conflicts += [("N_L", "S_T"), ("S_L", "N_T"), ("E_L", "W_T"), ("W_L", "E_T")]
    rb = RingBarrierConfig(
        phases={
            "1": ["N_L"],
            "2": ["S_T"],
            "5": ["S_L"],
            "6": ["N_T"],
            "3": ["E_L"],
            "4": ["W_T"],
            "7": ["W_L"],
            "8": ["E_T"],
        },
        rings=[[["1", "2"], ["3", "4"]], [["5", "6"], ["7", "8"]]],
    )
    data: dict[str, object] = {
        "id": "nema",
        "groups": g,
        "conflicts": conflicts,
        "ring_barrier": rb,
    }
    data.update(over)
    return IntersectionConfig(**data)  # type: ignore[arg-type]


def test_a_ring_barrier_layout_gives_the_nema_stages() -> None:
    x = Intersection.build(_nema())
    assert [s for s, _ in x.stages] == ["1_5", "1_6", "2_5", "2_6", "3_7", "3_8", "4_7", "4_8"]
    members = dict(x.stages)
    assert {x.groups[i].id for i in members["1_6"]} == {"N_L", "N_T"}  # leading left + through
    assert {x.groups[i].id for i in members["2_6"]} == {"S_T", "N_T"}
    # the engine runs it like any stage list
    from controller.signals.engine import PhaseEngine, Request
    from controller.signals.safety import SafetyMonitor

    e, m, t = PhaseEngine(x, now=0.0), SafetyMonitor(x), 0.0
    for target in ["2_6", "3_7", "4_8", "1_5"]:
        for _ in range(600):
            t = round(t + 0.1, 6)
            out = e.step(t, Request(target, end_green=True))
            assert m.check(t, out.signals) == []
        assert out.stage == target and out.phase == "green"


def test_a_ring_barrier_layout_is_validated() -> None:
    bad = _nema(
        ring_barrier=RingBarrierConfig(
            phases={"1": ["N_L"], "2": ["S_T"], "5": ["E_T"], "6": ["N_T", "X"]},
            rings=[[["1", "2"]], [["5", "6"], ["9"]]],
        )
    )
    problems = _problems(bad)
    assert "ring_barrier.phases.6[1]: unknown group 'X'" in problems
    assert "ring_barrier.rings: every ring needs the same barrier groups" in problems
    assert "ring_barrier.rings[1][1][0]: unknown phase '9'" in problems
    assert any(
        p.startswith("ring_barrier (stage 1_5): groups N_L and E_T conflict") for p in problems
    )
    both = _nema(stages=[StageConfig(id="a", groups=["N_T"]), StageConfig(id="b", groups=["E_T"])])
    assert "ring_barrier: give either stages or ring_barrier, not both" in _problems(both)
