"""The intersection model: signal groups, detectors, conflicts, intergreens, stages.

These are the config models for ``signals.intersections[]`` in ``config.yaml`` plus the
derived, validated :class:`Intersection` that the phase engine, the safety monitor and the
strategies share. Everything here is pure.

Clearance times follow the ITE kinematic formula::

    yellow  y = t + v / (2a + 2 g G)        t = 1.0 s perception-reaction, a = 3.05 m/s²,
                                            g = 9.81 m/s², G = grade (+ uphill, decimal)
    all-red r = (W + L) / v                 W = width to clear (m), L = 6.1 m vehicle length

with floors: yellow ≥ 3 s, all-red ≥ 1 s (unless configured higher). Pedestrian clearance is
crossing length / 1.2 m/s (walking speed of the MUTCD) and it takes the place of the yellow.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ALL_RED_FLOOR_S",
    "YELLOW_FLOOR_S",
    "CabinetConfig",
    "DetectorConfig",
    "DetectorKind",
    "GroupKind",
    "Intersection",
    "IntersectionConfig",
    "RingBarrierConfig",
    "Signal",
    "SignalGroupConfig",
    "SignalsSettings",
    "StageConfig",
    "StrategyConfig",
    "all_red_s",
    "ite_yellow_s",
]

YELLOW_FLOOR_S = 3.0
ALL_RED_FLOOR_S = 1.0
PERCEPTION_REACTION_S = 1.0
DECELERATION = 3.05  # m/s², ITE
GRAVITY = 9.81
VEHICLE_LENGTH_M = 6.1
PED_WALKING_SPEED = 1.2  # m/s


class Signal(IntEnum):
    """What a signal group shows. The values are the Modbus register codes (docs/protocol.md)."""

    DARK = 0
    RED = 1
    RED_AMBER = (
        2  # not used by the engine (Vietnam and the US go red → green); accepted on the wire
    )
    GREEN = 3
    YELLOW = 4  # vehicle clearance
    FLASH_YELLOW = 5  # flash mode, vehicles
    PED_CLEARANCE = 6  # pedestrian clearance (flashing green / flashing don't-walk)

    @property
    def is_open(self) -> bool:
        """Traffic of this group may be in the conflict area: green, yellow, pedestrian clearance."""
        return self in (Signal.GREEN, Signal.YELLOW, Signal.PED_CLEARANCE, Signal.RED_AMBER)


class GroupKind(StrEnum):
    """A vehicle movement or a pedestrian crossing."""

    VEHICLE = "vehicle"
    PEDESTRIAN = "pedestrian"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ID = r"^[A-Za-z0-9_.-]{1,32}$"
Ident = Annotated[str, Field(pattern=_ID)]


class SignalGroupConfig(_Strict):
    """One signal group: a vehicle movement (approach + turn) or a pedestrian crossing."""

    id: Ident
    kind: GroupKind = GroupKind.VEHICLE
    approach: str = Field(default="", description="Approach, e.g. N, S, E, W or a street name.")
    movement: Literal[
        "through", "left", "right", "through-right", "through-left", "all", "crossing"
    ] = "through"
    lanes: int = Field(default=1, ge=1, le=8)
    speed_kmh: float = Field(
        default=50.0, gt=5, le=130, description="85th-percentile approach speed."
    )
    grade_pct: float = Field(default=0.0, ge=-10, le=10, description="Approach grade, + uphill.")
    clear_width_m: float = Field(
        default=15.0, gt=0, le=120, description="Width to clear (stop line to far side)."
    )
    min_green_s: float = Field(default=5.0, ge=1, le=120)
    max_green_s: float = Field(default=60.0, ge=1, le=300)
    yellow_s: float | None = Field(
        default=None, ge=YELLOW_FLOOR_S, le=10, description="Override the ITE yellow."
    )
    all_red_s: float | None = Field(
        default=None, ge=ALL_RED_FLOOR_S, le=10, description="Override the all-red."
    )
    walk_s: float = Field(default=7.0, ge=4, le=60, description="Pedestrian walk time.")
    crossing_m: float = Field(default=12.0, gt=0, le=80, description="Pedestrian crossing length.")

    @model_validator(mode="after")
    def _greens(self) -> SignalGroupConfig:
        if self.max_green_s < self.min_green_s:
            raise ValueError(
                f"max_green_s {self.max_green_s:g} is below min_green_s {self.min_green_s:g}"
            )
        return self

    @property
    def clearance_s(self) -> float:
        """Yellow (vehicles) or pedestrian clearance time, with floors applied."""
        if self.kind is GroupKind.PEDESTRIAN:
            return max(YELLOW_FLOOR_S, math.ceil(self.crossing_m / PED_WALKING_SPEED * 10) / 10)
        if self.yellow_s is not None:
            return self.yellow_s
        return ite_yellow_s(self.speed_kmh, self.grade_pct)

    @property
    def red_clearance_s(self) -> float:
        """All-red after this group's clearance, before a conflicting green."""
        if self.all_red_s is not None:
            return self.all_red_s
        if self.kind is GroupKind.PEDESTRIAN:
            return ALL_RED_FLOOR_S
        return all_red_s(self.speed_kmh, self.clear_width_m)

    @property
    def min_green_total_s(self) -> float:
        """Minimum green: for a pedestrian crossing, at least the walk time."""
        return (
            max(self.min_green_s, self.walk_s)
            if self.kind is GroupKind.PEDESTRIAN
            else self.min_green_s
        )


def ite_yellow_s(speed_kmh: float, grade_pct: float = 0.0) -> float:
    """ITE kinematic yellow, rounded up to 0.1 s, at least the 3 s floor."""
    v = speed_kmh / 3.6
    y = PERCEPTION_REACTION_S + v / (2 * DECELERATION + 2 * GRAVITY * grade_pct / 100)
    return max(YELLOW_FLOOR_S, math.ceil(y * 10 - 1e-9) / 10)


def all_red_s(speed_kmh: float, width_m: float) -> float:
    """All-red to clear the intersection, rounded up to 0.1 s, at least the 1 s floor."""
    v = speed_kmh / 3.6
    r = (width_m + VEHICLE_LENGTH_M) / v
    return max(ALL_RED_FLOOR_S, math.ceil(r * 10 - 1e-9) / 10)


class DetectorKind(StrEnum):
    """Where a detector sits and what it measures."""

    STOPLINE = "stopline"  # loop at the stop line: presence, counts departures
    UPSTREAM = "upstream"  # loop some tens of metres back: counts arrivals
    PUSHBUTTON = "pushbutton"  # pedestrian push button: counts presses
    CAMERA = "camera"  # AI camera zone over MQTT: counts and queue per interval


class DetectorConfig(_Strict):
    """A detector feeding one signal group."""

    id: Ident
    group: Ident
    kind: DetectorKind
    channel: int | None = Field(
        default=None, ge=0, le=63, description="Cabinet input channel (loops, buttons)."
    )
    distance_m: float = Field(
        default=0.0, ge=0, le=500, description="Distance upstream of the stop line."
    )
    camera: Ident | None = Field(default=None, description="Camera id (camera zones).")
    lane: int = Field(default=1, ge=1, le=8)

    @model_validator(mode="after")
    def _wiring(self) -> DetectorConfig:
        if self.kind is DetectorKind.CAMERA:
            if self.camera is None:
                raise ValueError("a camera detector needs a camera id")
        elif self.channel is None:
            raise ValueError(f"a {self.kind.value} detector needs a cabinet channel")
        return self


class StageConfig(_Strict):
    """Signal groups that are green together."""

    id: Ident
    groups: list[Ident] = Field(min_length=1)


class RingBarrierConfig(_Strict):
    """A NEMA-style dual-ring layout, as an alternative to listing the stages.

    ``phases`` names each phase (``"1"`` … ``"8"`` by NEMA habit) and the signal groups it
    drives; ``rings`` lists, per ring, its barrier groups in order, each a list of phases in
    their sequence. Every barrier group must exist in every ring. The stages are then all
    combinations of one phase per ring within the same barrier group (phases 1+5, 1+6, 2+5, 2+6
    for the standard layout), in barrier order, with ids such as ``"1_5"``.
    """

    phases: dict[Ident, list[Ident]] = Field(min_length=2)
    rings: list[list[list[Ident]]] = Field(min_length=1, max_length=4)

    def stages(self) -> list[StageConfig]:
        """The stages this layout allows (not yet checked for conflicts)."""
        out: list[StageConfig] = []
        n_barriers = max(len(r) for r in self.rings)
        for b in range(n_barriers):
            per_ring = [ring[b] for ring in self.rings if b < len(ring) and ring[b]]
            for combo in itertools.product(*per_ring):
                groups: list[str] = []
                for ph in combo:
                    for g in self.phases.get(ph, []):
                        if g not in groups:
                            groups.append(g)
                if groups:
                    out.append(StageConfig(id="_".join(combo), groups=groups))
        return out


class FixedPlanConfig(_Strict):
    """A fixed-time plan: stage sequence with green times; the cycle is their sum + intergreens."""

    name: Ident
    cycle_s: float = Field(gt=10, le=300)
    offset_s: float = Field(default=0.0, ge=0)
    greens: dict[Ident, float] = Field(description="Stage id → green time, s, in this order.")


class StrategyConfig(_Strict):
    """How an intersection decides; ``schedule`` switches strategy by time of day."""

    default: Literal["fixed", "actuated", "adaptive"] = "adaptive"
    fixed_plan: Ident | None = Field(default=None, description="Plan for fixed-time control.")
    schedule: list[StrategyPeriod] = Field(default_factory=list)
    gap_s: float = Field(
        default=3.0, gt=0, le=10, description="Actuated: gap-out after this headway."
    )
    recall: list[Ident] = Field(default_factory=list, description="Groups with a constant call.")


class StrategyPeriod(_Strict):
    """From ``start`` (local HH:MM) the intersection runs ``strategy``."""

    start: str = Field(pattern=r"^\d{2}:\d{2}$")
    strategy: Literal["fixed", "actuated", "adaptive"]
    fixed_plan: Ident | None = None


StrategyConfig.model_rebuild()


class CabinetConfig(_Strict):
    """Where the intersection's cabinet is on the network (Modbus TCP)."""

    host: str = "127.0.0.1"
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=247, description="Modbus device id.")
    channels: int = Field(
        default=16, ge=0, le=64, description="Detector input channels the cabinet has."
    )
    timeout_s: float = Field(default=0.5, gt=0, le=10)
    poll_s: float = Field(default=0.1, ge=0.05, le=5)


class CoordinationConfig(_Strict):
    """Membership in a coordinated arterial."""

    arterial: Ident
    upstream: Ident | None = Field(
        default=None, description="Intersection upstream on the arterial."
    )
    travel_time_s: float = Field(default=0.0, ge=0, le=600)
    arterial_stage: Ident | None = Field(default=None, description="Stage serving the arterial.")


class IntersectionConfig(_Strict):
    """One signalised intersection, as written in config.yaml."""

    id: Ident
    name: str = ""
    location: dict[str, float] | None = None
    cabinet: CabinetConfig = Field(default_factory=CabinetConfig)
    groups: list[SignalGroupConfig] = Field(min_length=2)
    conflicts: list[tuple[Ident, Ident]] = Field(
        description="Pairs that may never be open together."
    )
    intergreens: dict[Ident, dict[Ident, float]] = Field(
        default_factory=dict, description="Override: end of green of A → start of green of B, s."
    )
    stages: list[StageConfig] = Field(
        default_factory=list, description="Sets of groups green together (or ring_barrier)."
    )
    ring_barrier: RingBarrierConfig | None = Field(
        default=None, description="NEMA dual-ring layout from which the stages are derived."
    )
    detectors: list[DetectorConfig] = Field(default_factory=list)
    fixed_plans: list[FixedPlanConfig] = Field(default_factory=list)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    coordination: CoordinationConfig | None = None

    @field_validator("conflicts")
    @classmethod
    def _pairs(cls, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for a, b in pairs:
            if a == b:
                raise ValueError(f"group {a!r} cannot conflict with itself")
        return pairs


class SignalsSettings(_Strict):
    """All intersections of the controller."""

    step_s: float = Field(default=0.1, ge=0.01, le=0.1, description="Engine resolution.")
    heartbeat_timeout_s: float = Field(
        default=2.0, ge=0.5, le=30, description="Cabinet falls back after this."
    )
    refresh_s: float = Field(
        default=0.5,
        ge=0.01,
        le=10,
        description=(
            "A step whose outputs equal the last ones written sends them again (with the next "
            "heartbeat) only this often; a change is written at once. At most a third of "
            "heartbeat_timeout_s."
        ),
    )
    intersections: list[IntersectionConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _refresh_within_timeout(self) -> SignalsSettings:
        if self.refresh_s > self.heartbeat_timeout_s / 3:
            raise ValueError(
                f"refresh_s: {self.refresh_s:g} s is more than a third of heartbeat_timeout_s "
                f"({self.heartbeat_timeout_s:g} s): one lost write would stop the heartbeat"
            )
        return self


# -- the derived model -----------------------------------------------------------------------


@dataclass(frozen=True)
class Intersection:
    """A validated intersection with indices, the conflict matrix and the intergreen matrix.

    ``groups`` keeps config order; ``index`` maps ids to positions. ``conflict[i][j]`` is True
    when groups i and j may never be open together. ``intergreen[i][j]`` is the least time from
    the end of i's green to the start of j's green (only meaningful where they conflict);
    ``clearance[i]`` the yellow / pedestrian clearance of i; ``all_red[i][j]`` the red time
    between them (``intergreen - clearance``).
    """

    id: str
    groups: tuple[SignalGroupConfig, ...]
    index: dict[str, int]
    conflict: tuple[tuple[bool, ...], ...]
    clearance: tuple[float, ...]
    intergreen: tuple[tuple[float, ...], ...]
    stages: tuple[tuple[str, frozenset[int]], ...]
    config: IntersectionConfig = field(repr=False)

    @property
    def n(self) -> int:
        """Number of signal groups."""
        return len(self.groups)

    def stage_index(self, stage_id: str) -> int:
        """Position of a stage."""
        for i, (sid, _) in enumerate(self.stages):
            if sid == stage_id:
                return i
        raise KeyError(stage_id)

    def all_red(self, i: int, j: int) -> float:
        """Red time between the end of i's clearance and j's green."""
        return self.intergreen[i][j] - self.clearance[i]

    @classmethod
    def build(cls, cfg: IntersectionConfig) -> Intersection:
        """Validate and derive; raises ValueError listing every problem as ``path: reason``."""
        problems: list[str] = []
        index: dict[str, int] = {}
        for k, g in enumerate(cfg.groups):
            if g.id in index:
                problems.append(f"groups[{k}].id: duplicate group {g.id!r}")
            index[g.id] = k
        n = len(cfg.groups)
        conflict = [[False] * n for _ in range(n)]
        for k, (a, b) in enumerate(cfg.conflicts):
            for side, name in (("0", a), ("1", b)):
                if name not in index:
                    problems.append(f"conflicts[{k}][{side}]: unknown group {name!r}")
            if a in index and b in index:
                conflict[index[a]][index[b]] = conflict[index[b]][index[a]] = True
        clearance = [g.clearance_s for g in cfg.groups]
        inter = [[0.0] * n for _ in range(n)]
        for i, gi in enumerate(cfg.groups):
            for j in range(n):
                if conflict[i][j]:
                    # Rounding may only lengthen: round(3.25 + 1.0, 1) == 4.2 would cut the
                    # all-red of a 3.25 s yellow override to 0.95 s. max() keeps the exact sum
                    # and only cleans float noise upwards (3.8 + 1.7 = 5.499999999999999 → 5.5).
                    total = clearance[i] + gi.red_clearance_s
                    inter[i][j] = max(total, round(total, 1))
        for a, row in cfg.intergreens.items():
            for b, value in row.items():
                path = f"intergreens.{a}.{b}"
                if a not in index or b not in index:
                    problems.append(f"{path}: unknown group {a if a not in index else b!r}")
                    continue
                i, j = index[a], index[b]
                if not conflict[i][j]:
                    problems.append(
                        f"{path}: {a} and {b} do not conflict; an intergreen needs a conflict"
                    )
                    continue
                floor = clearance[i] + ALL_RED_FLOOR_S
                if value + 1e-9 < floor:
                    problems.append(
                        f"{path}: {value:g} s is below the floor {floor:g} s "
                        f"(clearance {clearance[i]:g} s + all-red {ALL_RED_FLOOR_S:g} s)"
                    )
                    continue
                inter[i][j] = value
        stages: list[tuple[str, frozenset[int]]] = []
        seen_stage: set[str] = set()
        covered: set[int] = set()
        stage_cfgs = list(cfg.stages)
        where = "stages"
        if cfg.ring_barrier is not None:
            where = "ring_barrier"
            if cfg.stages:
                problems.append("ring_barrier: give either stages or ring_barrier, not both")
            rb = cfg.ring_barrier
            for ph, phase_groups in rb.phases.items():
                for pos, pgid in enumerate(phase_groups):
                    if pgid not in index:
                        problems.append(f"ring_barrier.phases.{ph}[{pos}]: unknown group {pgid!r}")
            barriers = {len(r) for r in rb.rings}
            if len(barriers) != 1:
                problems.append("ring_barrier.rings: every ring needs the same barrier groups")
            for r_, ring in enumerate(rb.rings):
                for bi, phases in enumerate(ring):
                    for p_, ph in enumerate(phases):
                        if ph not in rb.phases:
                            problems.append(
                                f"ring_barrier.rings[{r_}][{bi}][{p_}]: unknown phase {ph!r}"
                            )
            stage_cfgs = rb.stages()
        if len(stage_cfgs) < 2:
            problems.append(f"{where}: at least two stages are needed")
        for k, st in enumerate(stage_cfgs):
            at = f"stages[{k}]" if where == "stages" else f"ring_barrier (stage {st.id})"
            if st.id in seen_stage:
                problems.append(f"{at}.id: duplicate stage {st.id!r}")
            seen_stage.add(st.id)
            members: set[int] = set()
            for m, gid in enumerate(st.groups):
                if gid not in index:
                    if where == "stages":
                        problems.append(f"{at}.groups[{m}]: unknown group {gid!r}")
                else:
                    members.add(index[gid])
            for i, j in itertools.combinations(sorted(members), 2):
                if conflict[i][j]:
                    problems.append(
                        f"{at}: groups {cfg.groups[i].id} and {cfg.groups[j].id} conflict "
                        "and cannot be green in the same stage"
                    )
            covered |= members
            stages.append((st.id, frozenset(members)))
        for k, g in enumerate(cfg.groups):
            if k not in covered:
                problems.append(
                    f"groups[{k}]: group {g.id!r} is in no stage and would never get green"
                )
        for k, d in enumerate(cfg.detectors):
            if d.group not in index:
                problems.append(f"detectors[{k}].group: unknown group {d.group!r}")
        channels: dict[int, str] = {}
        for k, d in enumerate(cfg.detectors):
            if d.channel is not None:
                if d.channel in channels:
                    problems.append(
                        f"detectors[{k}].channel: channel {d.channel} is already {channels[d.channel]!r}"
                    )
                channels[d.channel] = d.id
                if d.channel >= cfg.cabinet.channels:
                    problems.append(
                        f"detectors[{k}].channel: channel {d.channel} is not on the cabinet "
                        f"(cabinet.channels is {cfg.cabinet.channels})"
                    )
        plan_names = {p.name for p in cfg.fixed_plans}
        for k, p in enumerate(cfg.fixed_plans):
            for sid in p.greens:
                if sid not in seen_stage:
                    problems.append(f"fixed_plans[{k}].greens.{sid}: unknown stage {sid!r}")
        st_cfg = cfg.strategy
        wanted_plans: list[tuple[str, str | None]] = [("strategy.fixed_plan", st_cfg.fixed_plan)]
        wanted_plans += [
            (f"strategy.schedule[{k}].fixed_plan", sp.fixed_plan)
            for k, sp in enumerate(st_cfg.schedule)
        ]
        for path, plan_name in wanted_plans:
            if plan_name is not None and plan_name not in plan_names:
                problems.append(f"{path}: unknown fixed plan {plan_name!r}")
        uses_fixed = st_cfg.default == "fixed" or any(
            p.strategy == "fixed" for p in st_cfg.schedule
        )
        if uses_fixed and not cfg.fixed_plans:
            problems.append("strategy: fixed-time control needs at least one entry in fixed_plans")
        for m, gid in enumerate(st_cfg.recall):
            if gid not in index:
                problems.append(f"strategy.recall[{m}]: unknown group {gid!r}")
        if problems:
            raise ValueError("\n".join(problems))
        return cls(
            id=cfg.id,
            groups=tuple(cfg.groups),
            index=index,
            conflict=tuple(tuple(r) for r in conflict),
            clearance=tuple(clearance),
            intergreen=tuple(tuple(r) for r in inter),
            stages=tuple(stages),
            config=cfg,
        )
