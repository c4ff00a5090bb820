"""What a SUMO network says about its traffic lights, as plain data.

:func:`describe_traffic_lights` asks a running SUMO (``libsumo`` or ``traci``, anything with
their module layout) for every traffic light: the links it controls, one per index of the
signal state string, with the lanes they join and the turn they make; its programs; and the
geometry of the lanes involved (length, speed limit, width). Everything after that — turning
a light into cityctl's intersection model, placing detectors, checking what SUMO displayed —
works on these dataclasses and never on SUMO itself, so it is pure and testable without SUMO.

SUMO's signal characters (``state`` strings): ``G`` green with priority, ``g`` green that
yields, ``y`` yellow, ``r`` red, ``u`` red+yellow, ``s`` green right-turn arrow that requires a
stop, ``o`` blinking (off, yield), ``O`` off (no signal).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "GREEN_CHARS",
    "LaneInfo",
    "TlsDescription",
    "TlsLink",
    "TlsPhase",
    "TlsProgram",
    "choose_program",
    "describe_traffic_lights",
    "is_green_phase",
]

GREEN_CHARS = frozenset("Gg")
"""State characters that let traffic enter the junction."""

MAX_SANE_PHASE_S = 300.0
"""A phase longer than this is a 'manual' (game or hand-switched) program, not a plan."""


@dataclass(frozen=True)
class TlsLink:
    """One controlled link: the connection behind one index of the state string."""

    index: int
    from_lane: str
    to_lane: str
    via: str
    """The internal lane the link crosses the junction on ('' when SUMO has none)."""
    direction: str
    """SUMO's turn code: s straight, l left, r right, t turn-around, L / R partial turns."""
    pedestrian: bool = False
    """A pedestrian crossing (from a walking area or crossing lane)."""


@dataclass(frozen=True)
class TlsPhase:
    """One phase of a program."""

    state: str
    duration: float
    min_dur: float | None = None
    max_dur: float | None = None
    name: str = ""


@dataclass(frozen=True)
class TlsProgram:
    """One signal program of a traffic light."""

    program_id: str
    type: Literal["static", "actuated", "delay_based", "other"]
    offset: float
    phases: tuple[TlsPhase, ...]

    @property
    def cycle_s(self) -> float:
        """Sum of the phase durations."""
        return sum(p.duration for p in self.phases)


@dataclass(frozen=True)
class LaneInfo:
    """Geometry of a lane that takes part in a controlled link."""

    id: str
    edge: str
    length_m: float
    speed_ms: float
    width_m: float
    allows_cars: bool = True


@dataclass(frozen=True)
class TlsDescription:
    """A traffic light as SUMO has it: links by index, programs, the active program."""

    id: str
    links: tuple[tuple[TlsLink, ...], ...]
    """Per state index, the links it controls (usually one; none for an unused index)."""
    programs: tuple[TlsProgram, ...]
    active_program: str
    lanes: dict[str, LaneInfo] = field(default_factory=dict)
    junctions: tuple[str, ...] = ()
    """The junctions this light controls (several junctions under one light happen)."""

    @property
    def n_links(self) -> int:
        """Length of the state string."""
        return len(self.links)

    def program(self, program_id: str) -> TlsProgram:
        """The program with this id."""
        for p in self.programs:
            if p.program_id == program_id:
                return p
        raise KeyError(program_id)


def is_green_phase(state: str) -> bool:
    """A phase that serves traffic: some link green, none in a yellow transition."""
    return any(c in GREEN_CHARS for c in state) and not any(c in "yu" for c in state)


MANUAL_GREEN_S = 30.0
"""The green given to each phase of a manual program when it is taken as a plan."""


def choose_program(tls: TlsDescription) -> TlsProgram:
    """The program that is the network's signal plan.

    That is the active program when its phases are of sane length. SUMO's traffic-light game
    ships 'manual' programs, switched by hand, that hold greens for 10,000 s: their phases are
    still the junction's design, so such a program is taken with every phase over
    :data:`MAX_SANE_PHASE_S` shortened to :data:`MANUAL_GREEN_S` (program id ``<id>:manual``).
    Where each program holds a single green phase (the game switches *programs*), the programs
    are joined in order into one cycle (program id ``joined``). Raises ValueError, saying why,
    when there is no plan to take over.
    """
    if not any(prog.phases for prog in tls.programs):
        raise ValueError(
            f"traffic light {tls.id!r}: its programs have no phases (a rail signal or a light "
            "that is switched off); there is no signal plan to take over"
        )
    ordered = sorted(tls.programs, key=lambda p: p.program_id != tls.active_program)
    greens = [sum(is_green_phase(p.state) for p in prog.phases) for prog in ordered]
    for prog, n in zip(ordered, greens, strict=True):
        if n and all(p.duration <= MAX_SANE_PHASE_S for p in prog.phases):
            return prog
    for prog, n in zip(ordered, greens, strict=True):
        if n >= 2:
            return TlsProgram(
                program_id=f"{prog.program_id}:manual",
                type=prog.type,
                offset=prog.offset,
                phases=tuple(_shortened(p) for p in prog.phases),
            )
    single = [
        prog for prog in tls.programs if sum(is_green_phase(p.state) for p in prog.phases) == 1
    ]
    if len(single) >= 2 and len({len(p.phases[0].state) for p in single}) == 1:
        return TlsProgram(
            program_id="joined",
            type="static",
            offset=0.0,
            phases=tuple(_shortened(p) for prog in single for p in prog.phases),
        )
    raise ValueError(
        f"traffic light {tls.id!r}: no program with two or more green phases "
        "(a single signal, e.g. a ramp meter or a rail signal, is not an intersection)"
    )


def _shortened(p: TlsPhase) -> TlsPhase:
    if p.duration <= MAX_SANE_PHASE_S:
        return p
    return TlsPhase(
        state=p.state,
        duration=MANUAL_GREEN_S,
        min_dur=min(p.min_dur or MANUAL_GREEN_S, MANUAL_GREEN_S),
        max_dur=MANUAL_GREEN_S,
        name=p.name,
    )


_TYPES: dict[int, Literal["static", "actuated", "delay_based", "other"]] = {
    0: "static",
    3: "actuated",
    5: "delay_based",
}


def describe_traffic_lights(sumo: Any, ids: Iterable[str] | None = None) -> list[TlsDescription]:
    """Describe the traffic lights of a running simulation (``libsumo`` or ``traci`` module)."""
    tl = sumo.trafficlight
    lane_api = sumo.lane
    out: list[TlsDescription] = []
    for tid in list(ids) if ids is not None else list(tl.getIDList()):
        controlled = tl.getControlledLinks(tid)
        lanes: dict[str, LaneInfo] = {}
        links: list[tuple[TlsLink, ...]] = []
        directions: dict[tuple[str, str], str] = {}
        for index, group in enumerate(controlled):
            row: list[TlsLink] = []
            for from_lane, to_lane, via in group:
                for lid in (from_lane, to_lane):
                    if lid and lid not in lanes:
                        lanes[lid] = _lane_info(lane_api, lid)
                if (from_lane, to_lane) not in directions:
                    for link in lane_api.getLinks(from_lane):
                        # (to lane, has prio, is open, has foe, via, state, direction, length)
                        directions.setdefault((from_lane, link[0]), str(link[6]))
                pedestrian = _is_pedestrian(from_lane) or _is_pedestrian(to_lane)
                row.append(
                    TlsLink(
                        index=index,
                        from_lane=from_lane,
                        to_lane=to_lane,
                        via=via,
                        direction=directions.get((from_lane, to_lane), "s"),
                        pedestrian=pedestrian,
                    )
                )
            links.append(tuple(row))
        programs = []
        for logic in tl.getAllProgramLogics(tid):
            phases = tuple(
                TlsPhase(
                    state=p.state,
                    duration=float(p.duration),
                    min_dur=float(p.minDur),
                    max_dur=float(p.maxDur),
                    name=str(getattr(p, "name", "") or ""),
                )
                for p in logic.phases
            )
            programs.append(
                TlsProgram(
                    program_id=str(logic.programID),
                    type=_TYPES.get(int(logic.type), "other"),
                    offset=float(_param(logic, "offset", 0.0)),
                    phases=phases,
                )
            )
        junctions: list[str] = []
        for group in controlled:
            for from_lane, _t, via in group:
                # Internal lanes are ':<junction>_<k>_<lane>'; crossings have no via lane.
                inner = via or (from_lane if from_lane.startswith(":") else "")
                if inner.startswith(":"):
                    j = inner[1:].rsplit("_", 2)[0]
                    if j not in junctions:
                        junctions.append(j)
        out.append(
            TlsDescription(
                id=str(tid),
                links=tuple(links),
                programs=tuple(programs),
                active_program=str(tl.getProgram(tid)),
                lanes=lanes,
                junctions=tuple(junctions),
            )
        )
    return out


def _param(logic: Any, name: str, default: float) -> float:
    value = getattr(logic, name, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _is_pedestrian(lane_id: str) -> bool:
    # Walking areas are ':J_w0_0', crossings ':J_c0_0'; SUMO names them so and nothing else.
    if not lane_id.startswith(":"):
        return False
    parts = lane_id[1:].rsplit("_", 2)
    return len(parts) == 3 and parts[1][:1] in ("w", "c") and parts[1][1:].isdigit()


def _lane_info(lane_api: Any, lid: str) -> LaneInfo:
    allowed = lane_api.getAllowed(lid)
    disallowed = lane_api.getDisallowed(lid)
    cars = ("passenger" in allowed) if allowed else ("passenger" not in disallowed)
    return LaneInfo(
        id=lid,
        edge=str(lane_api.getEdgeID(lid)),
        length_m=float(lane_api.getLength(lid)),
        speed_ms=float(lane_api.getMaxSpeed(lid)),
        width_m=float(lane_api.getWidth(lid)),
        allows_cars=bool(cars),
    )
