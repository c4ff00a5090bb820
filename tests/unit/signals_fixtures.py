"""Example intersections shared by the signal tests (and by anyone else who needs one).

Traffic drives on the right (Vietnam, the US). Vehicle groups are named ``<approach>_<turn>``
(``N_T`` = through from the north approach, ``N_L`` = left from the north approach), pedestrian
crossings ``P_<arm>`` (``P_N`` crosses the north arm). Right turns are not signalised.

::

    from tests.unit.signals_fixtures import four_arm, t_junction
    x = Intersection.build(four_arm())

Both functions return a fresh :class:`IntersectionConfig` that passes ``Intersection.build``.
"""

from __future__ import annotations

from typing import Any

from controller.signals.model import (
    CabinetConfig,
    DetectorConfig,
    DetectorKind,
    GroupKind,
    IntersectionConfig,
    SignalGroupConfig,
    StageConfig,
)

__all__ = ["FOUR_ARM_STAGES", "T_JUNCTION_STAGES", "four_arm", "t_junction"]

FOUR_ARM_STAGES = ("NS_T", "NS_L", "EW_T", "EW_L")
T_JUNCTION_STAGES = ("main", "main_left", "side")


def _detectors(groups: list[SignalGroupConfig]) -> list[DetectorConfig]:
    """Stop line + upstream loop per vehicle group, a push button per crossing; channels 0..N."""
    out: list[DetectorConfig] = []
    channel = 0
    for g in groups:
        if g.kind is GroupKind.PEDESTRIAN:
            out.append(
                DetectorConfig(
                    id=f"{g.id}_pb", group=g.id, kind=DetectorKind.PUSHBUTTON, channel=channel
                )
            )
            channel += 1
            continue
        out.append(
            DetectorConfig(id=f"{g.id}_sl", group=g.id, kind=DetectorKind.STOPLINE, channel=channel)
        )
        out.append(
            DetectorConfig(
                id=f"{g.id}_up",
                group=g.id,
                kind=DetectorKind.UPSTREAM,
                channel=channel + 1,
                distance_m=40.0,
            )
        )
        channel += 2
    return out


def _symmetric(pairs: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Each unordered pair once, whichever side of the table names it."""
    seen: set[frozenset[str]] = set()
    out: list[tuple[str, str]] = []
    for a, others in pairs.items():
        for b in others:
            key = frozenset((a, b))
            if key not in seen:
                seen.add(key)
                out.append((a, b))
    return out


def four_arm(**overrides: Any) -> IntersectionConfig:
    """A 4-arm intersection: through + protected left per approach and 4 crossings.

    N-S is the arterial (60 km/h, the north approach runs 4 % downhill), E-W the cross street
    (40 km/h). Stages: ``NS_T`` (N/S through + crossings of the E and W arms), ``NS_L``
    (N/S lefts), ``EW_T`` (E/W through + crossings of the N and S arms), ``EW_L`` (E/W lefts).
    """
    ns = {"speed_kmh": 60.0, "clear_width_m": 22.0, "min_green_s": 8.0, "max_green_s": 60.0}
    ew = {"speed_kmh": 40.0, "clear_width_m": 18.0, "min_green_s": 6.0, "max_green_s": 40.0}
    lt = {"min_green_s": 5.0, "max_green_s": 25.0, "lanes": 1}
    groups = [
        SignalGroupConfig(id="N_T", approach="N", movement="through", lanes=2, grade_pct=-4, **ns),
        SignalGroupConfig(id="N_L", approach="N", movement="left", **{**ns, **lt}),
        SignalGroupConfig(id="S_T", approach="S", movement="through", lanes=2, **ns),
        SignalGroupConfig(id="S_L", approach="S", movement="left", **{**ns, **lt}),
        SignalGroupConfig(id="E_T", approach="E", movement="through", **ew),
        SignalGroupConfig(id="E_L", approach="E", movement="left", **{**ew, **lt}),
        SignalGroupConfig(id="W_T", approach="W", movement="through", **ew),
        SignalGroupConfig(id="W_L", approach="W", movement="left", **{**ew, **lt}),
        SignalGroupConfig(
            id="P_N", kind=GroupKind.PEDESTRIAN, approach="N", movement="crossing", crossing_m=16
        ),
        SignalGroupConfig(
            id="P_S", kind=GroupKind.PEDESTRIAN, approach="S", movement="crossing", crossing_m=16
        ),
        SignalGroupConfig(
            id="P_E", kind=GroupKind.PEDESTRIAN, approach="E", movement="crossing", crossing_m=12
        ),
        SignalGroupConfig(
            id="P_W", kind=GroupKind.PEDESTRIAN, approach="W", movement="crossing", crossing_m=12
        ),
    ]
    ew_all = ["E_T", "W_T", "E_L", "W_L"]
    conflicts = _symmetric(
        {
            # every N-S movement crosses every E-W movement
            "N_T": [*ew_all, "S_L", "P_N", "P_S"],
            "S_T": [*ew_all, "N_L", "P_N", "P_S"],
            "N_L": [*ew_all, "P_N", "P_E"],  # N left goes to the east arm
            "S_L": [*ew_all, "P_S", "P_W"],  # S left goes to the west arm
            "E_T": ["W_L", "P_E", "P_W"],
            "W_T": ["E_L", "P_E", "P_W"],
            "E_L": ["P_E", "P_S"],  # E left goes to the south arm
            "W_L": ["P_W", "P_N"],  # W left goes to the north arm
        }
    )
    stages = [
        StageConfig(id="NS_T", groups=["N_T", "S_T", "P_E", "P_W"]),
        StageConfig(id="NS_L", groups=["N_L", "S_L"]),
        StageConfig(id="EW_T", groups=["E_T", "W_T", "P_N", "P_S"]),
        StageConfig(id="EW_L", groups=["E_L", "W_L"]),
    ]
    data: dict[str, Any] = {
        "id": "x4",
        "name": "Four-arm example (arterial N-S)",
        "groups": groups,
        "conflicts": conflicts,
        "stages": stages,
        "detectors": _detectors(groups),
        "cabinet": CabinetConfig(channels=32),
    }
    data.update(overrides)
    return IntersectionConfig(**data)


def t_junction(**overrides: Any) -> IntersectionConfig:
    """A T-junction: main road W-E, side road from the south, one crossing of the side road.

    Groups: ``W_T`` (W through), ``E_T`` (E through), ``E_L`` (E left into the side road),
    ``S_L`` / ``S_R`` (side road left / right out), ``P_S`` (crossing the side road).
    Stages: ``main`` (W_T, E_T, P_S), ``main_left`` (E_T, E_L), ``side`` (S_L, S_R).
    """
    main = {"speed_kmh": 50.0, "clear_width_m": 16.0, "min_green_s": 10.0, "max_green_s": 50.0}
    side = {"speed_kmh": 30.0, "clear_width_m": 14.0, "min_green_s": 5.0, "max_green_s": 30.0}
    groups = [
        SignalGroupConfig(id="W_T", approach="W", movement="through", lanes=2, **main),
        SignalGroupConfig(id="E_T", approach="E", movement="through", lanes=2, **main),
        SignalGroupConfig(id="E_L", approach="E", movement="left", **{**main, "min_green_s": 5.0}),
        SignalGroupConfig(id="S_L", approach="S", movement="left", grade_pct=3, **side),
        SignalGroupConfig(id="S_R", approach="S", movement="right", grade_pct=3, **side),
        SignalGroupConfig(
            id="P_S", kind=GroupKind.PEDESTRIAN, approach="S", movement="crossing", crossing_m=9
        ),
    ]
    conflicts = _symmetric(
        {
            "W_T": ["E_L", "S_L", "S_R"],
            "E_T": ["S_L"],
            "E_L": ["S_L", "P_S"],
            "S_L": ["P_S"],
            "S_R": ["P_S"],
        }
    )
    stages = [
        StageConfig(id="main", groups=["W_T", "E_T", "P_S"]),
        StageConfig(id="main_left", groups=["E_T", "E_L"]),
        StageConfig(id="side", groups=["S_L", "S_R"]),
    ]
    data: dict[str, Any] = {
        "id": "t3",
        "name": "T-junction example (side road from the south)",
        "groups": groups,
        "conflicts": conflicts,
        "stages": stages,
        "detectors": _detectors(groups),
        "cabinet": CabinetConfig(channels=32),
    }
    data.update(overrides)
    return IntersectionConfig(**data)
