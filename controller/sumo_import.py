"""A SUMO network's traffic lights as cityctl intersections.

:func:`import_lights` turns each :class:`~simulator.sumo.network.TlsDescription` into an
:class:`~controller.signals.model.IntersectionConfig` that a person can read and edit, plus the
wiring the SUMO bridge needs (which state-string indices each signal group drives, where the
detectors go). The translation follows what the network's engineer wrote, with cityctl's floors:

**Signal groups.** Controlled links (one per index of SUMO's state string) that are green in
exactly the same phases of the network's program, come from the same approach (edge) and are
of the same kind (vehicle or pedestrian crossing) form one group. Links green in every phase
(free right turns, unsignalled slip lanes) and links never green are not signal groups: the
bridge keeps showing what the program shows for them.

**Conflicts.** Two groups conflict when the program never shows them green together. Movements
the program lets run together — a permitted left turn (``g``) with the oncoming through
movement, a right turn with the parallel crossing — stay allowed exactly as the network allows
them, and keep their yielding ``g`` when the bridge shows them.

**Stages.** Every green phase of the program (some link green, none in yellow) is a stage: the
groups it shows green. Phases with the same groups merge. The character each link shows in a
stage (``G`` priority or ``g`` yield) is the one of that phase; a group green outside its
stages' phases shows ``g`` (yield is always the safe choice).

**Clearances.** Yellow is the shortest yellow the program gives the group, at least the 3 s
floor (the ITE yellow from the lane speed where the program has none); all-red is the
program's shortest red between the group's yellow and a conflicting green, at least the 1 s
floor; a pair the program separates by more keeps its longer intergreen. Minimum green is the
program's shortest green of the group, at most 5 s; maximum green the program's longest, at
least 60 s. Pedestrian crossings walk at least 4 s (as long as the program's green) and clear
at 1.2 m/s over the crossing's length.

**Detectors**, as a real site would have them, on every incoming lane: a stop-line loop
(1.5 m before the stop line), an upstream loop 50 m back (on lanes long enough), and a camera
zone over the last 80 m. A shared lane feeds every group it carries. Crossings get a push
button. Cabinet channels are limited to 64; upstream loops are dropped first when a junction
needs more.

Everything here is pure; what cannot be imported is refused with the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from controller.signals.model import (
    ALL_RED_FLOOR_S,
    YELLOW_FLOOR_S,
    CabinetConfig,
    DetectorConfig,
    DetectorKind,
    FixedPlanConfig,
    GroupKind,
    Intersection,
    IntersectionConfig,
    Signal,
    SignalGroupConfig,
    StageConfig,
    StrategyConfig,
)
from simulator.sumo.network import (
    GREEN_CHARS,
    TlsDescription,
    TlsLink,
    TlsProgram,
    choose_program,
    is_green_phase,
)

__all__ = [
    "ImportResult",
    "ImportedLight",
    "PlacedArea",
    "PlacedButton",
    "PlacedLoop",
    "SignalMapping",
    "import_light",
    "import_lights",
    "to_yaml",
]

MAX_CHANNELS = 64
MAX_GROUPS = 32
MIN_GREEN_CAP_S = 5.0
MAX_GREEN_FLOOR_S = 60.0
MAX_GREEN_CAP_S = 120.0
STOPLINE_SETBACK_M = 1.5
UPSTREAM_M = 50.0
CAMERA_ZONE_M = 80.0
_EPS = 1e-6


# -- the wiring the bridge needs ---------------------------------------------------------------


@dataclass(frozen=True)
class PlacedLoop:
    """An induction loop (SUMO E1) feeding one or more cabinet channels."""

    id: str
    lane: str
    pos_m: float
    channels: tuple[int, ...]
    kind: DetectorKind


@dataclass(frozen=True)
class PlacedArea:
    """A camera zone (SUMO E2 lane-area detector) over the last metres of a lane.

    ``detectors`` are the config's camera detectors it feeds; the count of vehicles over the
    stop line comes from ``stopline_loop`` (the camera sees the same line).
    """

    id: str
    lane: str
    start_m: float
    end_m: float
    detectors: tuple[str, ...]
    stopline_loop: str


@dataclass(frozen=True)
class PlacedButton:
    """A pedestrian push button: pressed by people waiting to enter ``crossing``."""

    channel: int
    crossing: str
    """The crossing lane (``:J_c0_0``)."""
    walkingareas: tuple[str, ...]
    """The walking-area lanes people wait on."""


@dataclass(frozen=True)
class SignalMapping:
    """How the controller's signal groups drive one SUMO state string."""

    tls_id: str
    program_id: str
    n_links: int
    group_links: tuple[tuple[int, ...], ...]
    """Per group (config order), the state indices it drives."""
    stage_chars: dict[str, dict[int, str]]
    """Per stage, the green character of each of its links (``G`` or ``g``)."""
    fixed: dict[int, str]
    """Indices that are not signal groups, with the character they always show."""
    pedestrian: tuple[bool, ...]
    """Per group: a pedestrian crossing."""

    def state(self, signals: Sequence[int], stage: str | None) -> str:
        """The state string for what the groups show (``Signal`` codes) in ``stage``."""
        out = ["r"] * self.n_links
        for idx, ch in self.fixed.items():
            out[idx] = ch
        chars = self.stage_chars.get(stage or "", {})
        for links, code, ped in zip(self.group_links, signals, self.pedestrian, strict=True):
            c = _CHAR.get(code, "r")
            if code == Signal.GREEN:
                for idx in links:
                    out[idx] = chars.get(idx, "g")
                continue
            if ped and c in "yo":
                c = "r"  # a crossing has no yellow: clearing, nobody may start
            for idx in links:
                out[idx] = c
        return "".join(out)


_CHAR = {
    int(Signal.DARK): "O",
    int(Signal.RED): "r",
    int(Signal.RED_AMBER): "u",
    int(Signal.GREEN): "G",
    int(Signal.YELLOW): "y",
    int(Signal.FLASH_YELLOW): "o",
    int(Signal.PED_CLEARANCE): "r",
}


@dataclass(frozen=True)
class ImportedLight:
    """One traffic light as a cityctl intersection plus its wiring in SUMO."""

    config: IntersectionConfig
    intersection: Intersection
    mapping: SignalMapping
    loops: tuple[PlacedLoop, ...]
    areas: tuple[PlacedArea, ...]
    buttons: tuple[PlacedButton, ...]
    program: TlsProgram
    program_min_green_s: tuple[float, ...]
    """Per group, the program's shortest green (inf when it never ends)."""
    program_gap_s: dict[tuple[int, int], float]
    """Per conflicting group pair, the program's shortest time from the end of i's open
    period (yellow end; a crossing's green end) to j's green."""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportResult:
    """Imported lights and the ones refused, with why."""

    lights: tuple[ImportedLight, ...]
    refused: dict[str, str] = field(default_factory=dict)


def import_lights(descs: Iterable[TlsDescription]) -> ImportResult:
    """Import every light; a light that cannot be imported is refused with the reason."""
    lights: list[ImportedLight] = []
    refused: dict[str, str] = {}
    used_ids: set[str] = set()
    for desc in descs:
        try:
            light = import_light(desc, taken=used_ids)
        except ValueError as exc:
            refused[desc.id] = str(exc)
            continue
        used_ids.add(light.config.id)
        lights.append(light)
    return ImportResult(tuple(lights), refused)


# -- the translation ---------------------------------------------------------------------------


@dataclass
class _Group:
    key: tuple[Any, ...]
    pattern: tuple[bool, ...]
    pedestrian: bool
    links: list[TlsLink] = field(default_factory=list)
    id: str = ""


def import_light(desc: TlsDescription, *, taken: set[str] | None = None) -> ImportedLight:
    """Import one light; raises ValueError saying why it cannot be."""
    prog = choose_program(desc)
    phases = prog.phases
    if any(len(p.state) != desc.n_links for p in phases):
        raise ValueError(
            f"traffic light {desc.id!r}: program {prog.program_id!r} has states of another "
            f"length than its {desc.n_links} links"
        )
    notes: list[str] = []
    if prog.program_id != desc.active_program:
        notes.append(
            f"program {prog.program_id!r} taken as the plan; the active program "
            f"{desc.active_program!r} has phases over 300 s (a manual program)"
        )
    durations = [p.duration for p in phases]
    groups: dict[tuple[Any, ...], _Group] = {}
    fixed: dict[int, str] = {}
    for idx, row in enumerate(desc.links):
        column = "".join(p.state[idx] for p in phases)
        pattern = tuple(c in GREEN_CHARS for c in column)
        if not row:
            fixed[idx] = column[0]
            continue
        if all(pattern) or not any(pattern):
            # Free-flow or never-green: not a group; shown as the program shows it (first phase
            # when it is constant, else the safest of its characters).
            fixed[idx] = column[0] if len(set(column)) == 1 else ("g" if all(pattern) else "r")
            continue
        link = row[0]
        ped = link.pedestrian
        if ped:
            crossing = link.to_lane if "_c" in link.to_lane else link.from_lane
            key: tuple[Any, ...] = (pattern, True, crossing)
        else:
            key = (pattern, False, desc.lanes[link.from_lane].edge)
        g = groups.setdefault(key, _Group(key=key, pattern=pattern, pedestrian=ped))
        g.links.extend(row)
    if len(groups) < 2:
        raise ValueError(
            f"traffic light {desc.id!r}: fewer than two signal groups change in program "
            f"{prog.program_id!r}; nothing to control"
        )
    if len(groups) > MAX_GROUPS:
        raise ValueError(
            f"traffic light {desc.id!r}: {len(groups)} signal groups, a cabinet drives at most "
            f"{MAX_GROUPS}"
        )
    glist = sorted(groups.values(), key=lambda g: (g.pedestrian, min(lk.index for lk in g.links)))
    _name_groups(glist, desc)
    ng = len(glist)

    # Per group timing from the program.
    green_runs = [_runs(g.pattern, durations) for g in glist]
    yellow_after = []
    for g in glist:
        idxs = sorted({lk.index for lk in g.links})
        col = ["".join(p.state[i] for i in idxs) for p in phases]
        yellow_after.append(_yellow_runs(g.pattern, col, durations))
    conflict = [[False] * ng for _ in range(ng)]
    for a in range(ng):
        for b in range(a + 1, ng):
            together = any(
                pa and pb for pa, pb in zip(glist[a].pattern, glist[b].pattern, strict=True)
            )
            conflict[a][b] = conflict[b][a] = not together

    # Time from the end of a's open period to b's next green start, where only transition
    # phases lie between (a green phase in between is sequence, not clearance).
    serving = [is_green_phase(p.state) for p in phases]
    gap: dict[tuple[int, int], float] = {}
    for a in range(ng):
        for b in range(ng):
            if a != b and conflict[a][b]:
                # A crossing clears while the vehicles beside it keep their green: its gap runs
                # through those phases.
                through = [False] * len(serving) if glist[a].pedestrian else serving
                v = _gap(glist[a].pattern, glist[b].pattern, yellow_after[a], durations, through)
                if v is not None:
                    gap[(a, b)] = v

    group_cfgs: list[SignalGroupConfig] = []
    for k, g in enumerate(glist):
        lanes_in = [desc.lanes[lk.from_lane] for lk in g.links if lk.from_lane in desc.lanes]
        speed_ms = max((ln.speed_ms for ln in lanes_in), default=13.89)
        speed_kmh = min(130.0, max(5.1, speed_ms * 3.6))
        vias = [desc.lanes[lk.via].length_m for lk in g.links if lk.via in desc.lanes]
        width = min(120.0, max(1.0, max(vias, default=15.0)))
        runs = green_runs[k]
        shortest = min(runs) if runs else math.inf
        longest = max(runs) if runs else MAX_GREEN_FLOOR_S
        min_green = max(1.0, min(MIN_GREEN_CAP_S, shortest))
        max_green = max(min_green, MAX_GREEN_FLOOR_S, min(MAX_GREEN_CAP_S, longest))
        all_reds = [v for (a, _b), v in gap.items() if a == k]
        if g.pedestrian:
            crossing_lane = next(
                (
                    desc.lanes[ln]
                    for lk in g.links
                    for ln in (lk.to_lane, lk.from_lane)
                    if "_c" in ln and ln in desc.lanes
                ),
                None,
            )
            length = crossing_lane.length_m if crossing_lane is not None else 12.0
            walk = min(60.0, max(4.0, shortest if math.isfinite(shortest) else 7.0))
            group_cfgs.append(
                SignalGroupConfig(
                    id=g.id,
                    kind=GroupKind.PEDESTRIAN,
                    approach=_edge_of(g.links[0]),
                    movement="crossing",
                    min_green_s=min(min_green, walk),
                    max_green_s=max_green,
                    walk_s=walk,
                    crossing_m=min(80.0, max(1.0, length)),
                )
            )
            continue
        # Ends of green without any yellow (straight to red) do not define the yellow: where
        # the program never shows one, the ITE yellow of the lane speed applies.
        ys = [y for y in yellow_after[k] if y > 0]
        yellow = min(10.0, max(YELLOW_FLOOR_S, min(ys))) if ys else None
        all_red = min(10.0, max(ALL_RED_FLOOR_S, min(all_reds))) if all_reds else None
        group_cfgs.append(
            SignalGroupConfig(
                id=g.id,
                approach=desc.lanes[g.links[0].from_lane].edge,
                movement=_movement({lk.direction for lk in g.links}),
                lanes=min(8, len({lk.from_lane for lk in g.links})),
                speed_kmh=round(speed_kmh, 1),
                clear_width_m=round(width, 1),
                min_green_s=min_green,
                max_green_s=max_green,
                yellow_s=yellow,
                all_red_s=all_red,
            )
        )
    conflicts = [
        (glist[a].id, glist[b].id) for a in range(ng) for b in range(a + 1, ng) if conflict[a][b]
    ]
    # Longer intergreens the program keeps for particular pairs.
    intergreens: dict[str, dict[str, float]] = {}
    for (a, b), v in gap.items():
        if glist[a].pedestrian:
            # A crossing's gap runs through the green of the vehicles beside it: sequence, not
            # clearance. Its clearance is the walking time over the crossing (model).
            continue
        gc = group_cfgs[a]
        default = gc.clearance_s + gc.red_clearance_s
        program_ig = v + _first(yellow_after[a])
        if program_ig > default + 0.05:
            intergreens.setdefault(gc.id, {})[glist[b].id] = round(min(program_ig, 60.0), 1)

    # Stages from the green phases.
    stages: list[StageConfig] = []
    stage_chars: dict[str, dict[int, str]] = {}
    seen: dict[frozenset[int], str] = {}
    greens_by_stage: dict[str, float] = {}
    order: list[str] = []
    covered: set[int] = set()
    for pi, ph in enumerate(phases):
        if not is_green_phase(ph.state):
            continue
        members = frozenset(k for k, g in enumerate(glist) if g.pattern[pi])
        if not members:
            continue
        sid = seen.get(members)
        if sid is None:
            sid = f"p{pi}"
            seen[members] = sid
            stages.append(StageConfig(id=sid, groups=[glist[k].id for k in sorted(members)]))
            stage_chars[sid] = {
                lk.index: ph.state[lk.index] for k in members for lk in glist[k].links
            }
            order.append(sid)
        greens_by_stage[sid] = greens_by_stage.get(sid, 0.0) + ph.duration
        covered |= members
    for k, g in enumerate(glist):
        if k in covered:
            continue
        # Green only inside transition phases: give it a stage of its own from such a phase.
        pi = next(i for i, on in enumerate(g.pattern) if on)
        members = frozenset(m for m, h in enumerate(glist) if h.pattern[pi])
        sid = f"p{pi}"
        if sid in stage_chars:
            sid = f"p{pi}_{g.id}"[:32]
        stages.append(StageConfig(id=sid, groups=[glist[m].id for m in sorted(members)]))
        stage_chars[sid] = {
            lk.index: "g" if phases[pi].state[lk.index] in GREEN_CHARS else "r"
            for m in members
            for lk in glist[m].links
        }
        notes.append(f"group {g.id} is green only in transition phases; stage {sid} added")
    if len(stages) < 2:
        raise ValueError(
            f"traffic light {desc.id!r}: program {prog.program_id!r} has fewer than two "
            "distinct green phases"
        )

    loops, areas, buttons, dets, channels, det_notes = _place_detectors(desc, glist, group_cfgs)
    notes += det_notes
    cycle = prog.cycle_s
    plan = FixedPlanConfig(
        name="sumo",
        cycle_s=min(300.0, max(10.01, cycle)),
        offset_s=max(0.0, prog.offset % cycle if cycle > 0 else 0.0),
        greens={sid: round(greens_by_stage[sid], 1) for sid in order},
    )
    tid = _ident(desc.id, taken or set(), limit=32)
    cfg = IntersectionConfig(
        id=tid,
        name=f"SUMO traffic light {desc.id}",
        cabinet=CabinetConfig(channels=max(1, channels)),
        groups=group_cfgs,
        conflicts=conflicts,
        intergreens=intergreens,
        stages=stages,
        detectors=dets,
        fixed_plans=[plan],
        strategy=StrategyConfig(default="adaptive", fixed_plan="sumo"),
    )
    try:
        x = Intersection.build(cfg)
    except ValueError as exc:
        raise ValueError(f"traffic light {desc.id!r}: {exc}") from exc
    mapping = SignalMapping(
        tls_id=desc.id,
        program_id=prog.program_id,
        n_links=desc.n_links,
        group_links=tuple(tuple(sorted({lk.index for lk in g.links})) for g in glist),
        stage_chars=stage_chars,
        fixed=fixed,
        pedestrian=tuple(g.pedestrian for g in glist),
    )
    prog_min = tuple(min(r) if r else math.inf for r in green_runs)
    return ImportedLight(
        config=cfg,
        intersection=x,
        mapping=mapping,
        loops=tuple(loops),
        areas=tuple(areas),
        buttons=tuple(buttons),
        program=prog,
        program_min_green_s=prog_min,
        program_gap_s=gap,
        notes=tuple(notes),
    )


# -- helpers -----------------------------------------------------------------------------------


def _first(xs: Sequence[float]) -> float:
    return min(xs) if xs else 0.0


def _runs(pattern: Sequence[bool], durations: Sequence[float]) -> list[float]:
    """Lengths of the cyclic green runs of a pattern (empty when always or never green)."""
    n = len(pattern)
    if all(pattern) or not any(pattern):
        return []
    start = next(i for i in range(n) if pattern[i] and not pattern[i - 1])
    runs: list[float] = []
    cur = 0.0
    for k in range(n):
        i = (start + k) % n
        if pattern[i]:
            cur += durations[i]
        elif cur > 0:
            runs.append(cur)
            cur = 0.0
    if cur > 0:
        runs.append(cur)
    return runs


def _yellow_runs(
    pattern: Sequence[bool], col: Sequence[str], durations: Sequence[float]
) -> list[float]:
    """Per end of green, the length of the yellow that follows (0 when none)."""
    n = len(pattern)
    out: list[float] = []
    for i in range(n):
        if pattern[i] and not pattern[(i + 1) % n]:
            y = 0.0
            j = (i + 1) % n
            while "y" in col[j] and not pattern[j] and j != i:
                y += durations[j]
                j = (j + 1) % n
            out.append(y)
    return out


def _gap(
    pa: Sequence[bool],
    pb: Sequence[bool],
    yellows: Sequence[float],
    durations: Sequence[float],
    serving: Sequence[bool],
) -> float | None:
    """Shortest time from the end of a's yellow to b's next green, through transitions only."""
    n = len(pa)
    best: float | None = None
    ends = [i for i in range(n) if pa[i] and not pa[(i + 1) % n]]
    for e, y in zip(ends, yellows, strict=False):
        t = 0.0
        j = (e + 1) % n
        for _ in range(n):
            if pb[j]:
                v = t - y
                best = v if best is None else min(best, v)
                break
            if pa[j] or serving[j]:
                break
            t += durations[j]
            j = (j + 1) % n
    return None if best is None else max(0.0, best)


def _movement(dirs: set[str]) -> str:
    d = {"L": "l", "R": "r"}
    s = {d.get(x, x) for x in dirs} - {"t"}
    if not s:
        return "left"  # a turn-around lane behaves like a left turn
    table = {
        frozenset("s"): "through",
        frozenset("l"): "left",
        frozenset("r"): "right",
        frozenset("sr"): "through-right",
        frozenset("sl"): "through-left",
    }
    return table.get(frozenset(s), "all")


def _edge_of(link: TlsLink) -> str:
    lane = link.to_lane if "_c" in link.to_lane else link.from_lane
    return lane.lstrip(":").rsplit("_", 1)[0]


_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def _ident(raw: str, taken: set[str], *, limit: int) -> str:
    base = _BAD.sub("_", raw).strip("_") or "x"
    base = base[:limit]
    out = base
    k = 2
    while out in taken:
        suffix = f"~{k}".replace("~", "_")
        out = base[: limit - len(suffix)] + suffix
        k += 1
    return out


def _name_groups(glist: list[_Group], desc: TlsDescription) -> None:
    taken: set[str] = set()
    letters = {"s": "T", "l": "L", "r": "R", "t": "U", "L": "L", "R": "R"}
    for k, g in enumerate(glist):
        if g.pedestrian:
            raw = f"ped{k}"
        else:
            edge = desc.lanes[g.links[0].from_lane].edge
            dirs = "".join(
                sorted({letters.get(lk.direction, "X") for lk in g.links}, key="TLRUX".index)
            )
            raw = f"{_BAD.sub('_', edge)[:16].strip('_') or 'e'}_{dirs}"
        g.id = _ident(raw, taken, limit=20)
        taken.add(g.id)


def _place_detectors(
    desc: TlsDescription, glist: list[_Group], cfgs: list[SignalGroupConfig]
) -> tuple[
    list[PlacedLoop],
    list[PlacedArea],
    list[PlacedButton],
    list[DetectorConfig],
    int,
    list[str],
]:
    # Incoming vehicle lanes and the groups each feeds, in a stable order.
    lane_groups: dict[str, list[int]] = {}
    for k, g in enumerate(glist):
        if g.pedestrian:
            continue
        for lk in g.links:
            if lk.from_lane.startswith(":") or lk.from_lane not in desc.lanes:
                continue
            if not desc.lanes[lk.from_lane].allows_cars:
                continue
            lst = lane_groups.setdefault(lk.from_lane, [])
            if k not in lst:
                lst.append(k)
    peds = [k for k, g in enumerate(glist) if g.pedestrian]
    n_stop = sum(len(v) for v in lane_groups.values())
    n_up = sum(
        len(v)
        for lane, v in lane_groups.items()
        if desc.lanes[lane].length_m >= UPSTREAM_M * 0.5 + 10
    )
    notes: list[str] = []
    with_upstream = n_stop + n_up + len(peds) <= MAX_CHANNELS
    if not with_upstream:
        notes.append(
            f"{n_stop + n_up + len(peds)} detector channels needed, the cabinet has "
            f"{MAX_CHANNELS}: no upstream loops (the cameras cover the approaches)"
        )
    tag = _BAD.sub("_", desc.id)
    loops: list[PlacedLoop] = []
    areas: list[PlacedArea] = []
    buttons: list[PlacedButton] = []
    dets: list[DetectorConfig] = []
    channel = 0
    lane_no: dict[int, int] = {}
    camera = _ident(f"cam_{tag}", set(), limit=32)
    for li, (lane, gks) in enumerate(lane_groups.items()):
        info = desc.lanes[lane]
        numbers = {}
        for k in gks:
            lane_no[k] = lane_no.get(k, 0) + 1
            numbers[k] = min(8, lane_no[k])
        if channel + len(gks) > MAX_CHANNELS:
            notes.append(f"lane {lane}: no channel left for its stop-line loop")
            continue

        site = _LaneSite(f"cc_{tag}", li, lane, info.length_m, gks, numbers)
        stop_id, channel = _place_loop(
            site, DetectorKind.STOPLINE, STOPLINE_SETBACK_M, channel, cfgs, dets, loops
        )
        if with_upstream and info.length_m >= UPSTREAM_M * 0.5 + 10:
            dist = min(UPSTREAM_M, info.length_m - 5.0)
            _, channel = _place_loop(site, DetectorKind.UPSTREAM, dist, channel, cfgs, dets, loops)
        cam_dets = []
        for k in gks:
            did = _ident(f"{cfgs[k].id}.c{numbers[k]}", set(), limit=32)
            dets.append(
                DetectorConfig(
                    id=did,
                    group=cfgs[k].id,
                    kind=DetectorKind.CAMERA,
                    camera=camera,
                    lane=numbers[k],
                )
            )
            cam_dets.append(did)
        areas.append(
            PlacedArea(
                id=f"cc_{tag}_c{li}",
                lane=lane,
                start_m=max(0.0, info.length_m - CAMERA_ZONE_M),
                end_m=max(0.1, info.length_m - 0.5),
                detectors=tuple(cam_dets),
                stopline_loop=stop_id,
            )
        )
    for k in peds:
        if channel >= MAX_CHANNELS:
            notes.append(f"crossing {cfgs[k].id}: no channel left for its push button")
            continue
        g = glist[k]
        crossing = next(
            (ln for lk in g.links for ln in (lk.to_lane, lk.from_lane) if "_c" in ln), ""
        )
        walks = tuple(
            sorted({ln for lk in g.links for ln in (lk.from_lane, lk.to_lane) if "_w" in ln})
        )
        dets.append(
            DetectorConfig(
                id=_ident(f"{cfgs[k].id}.button", set(), limit=32),
                group=cfgs[k].id,
                kind=DetectorKind.PUSHBUTTON,
                channel=channel,
            )
        )
        buttons.append(PlacedButton(channel=channel, crossing=crossing, walkingareas=walks))
        channel += 1
    return loops, areas, buttons, dets, channel, notes


@dataclass(frozen=True)
class _LaneSite:
    prefix: str
    index: int
    lane: str
    length_m: float
    groups: list[int]
    numbers: dict[int, int]
    """Per group, the lane's number within the group (1..8)."""


def _place_loop(
    site: _LaneSite,
    kind: DetectorKind,
    dist: float,
    channel: int,
    cfgs: list[SignalGroupConfig],
    dets: list[DetectorConfig],
    loops: list[PlacedLoop],
) -> tuple[str, int]:
    """One loop ``dist`` before the stop line, a channel per group it feeds; returns its id and
    the next free channel."""
    letter = "s" if kind is DetectorKind.STOPLINE else "u"
    chans = []
    for k in site.groups:
        dets.append(
            DetectorConfig(
                id=_ident(f"{cfgs[k].id}.{letter}{site.numbers[k]}", set(), limit=32),
                group=cfgs[k].id,
                kind=kind,
                channel=channel,
                distance_m=0.0 if kind is DetectorKind.STOPLINE else round(dist, 1),
                lane=site.numbers[k],
            )
        )
        chans.append(channel)
        channel += 1
    loop_id = f"{site.prefix}_{letter}{site.index}"
    loops.append(
        PlacedLoop(
            id=loop_id,
            lane=site.lane,
            pos_m=max(0.1, site.length_m - dist),
            channels=tuple(chans),
            kind=kind,
        )
    )
    return loop_id, channel


# -- YAML --------------------------------------------------------------------------------------


class _FlowListDumper(yaml.SafeDumper):
    """Lists of plain values on one line (``[N_T, E_T]``), everything else in block style."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(v, (str, int, float, bool)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowListDumper.add_representer(list, _represent_list)


def to_yaml(result: ImportResult, *, source: str = "") -> str:
    """The imported intersections as a ``signals.intersections`` fragment of config.yaml."""
    lines = [
        f"# Imported from {source or 'a SUMO network'} by `cityctl sumo import`.",
        "# One intersection per traffic light; groups, conflicts, intergreens and stages come",
        "# from the network's own program (see docs/sumo.md). Paste the entries into",
        "# signals.intersections of config.yaml and edit freely: `cityctl validate` checks them.",
    ]
    for tid, why in sorted(result.refused.items()):
        lines.append(f"# refused {tid}: {why}")
    body: list[dict[str, Any]] = []
    for light in result.lights:
        data = light.config.model_dump(mode="json", exclude_defaults=True)
        body.append(data)
        for note in light.notes:
            lines.append(f"# {light.config.id}: {note}")
    text = yaml.dump(
        {"signals": {"intersections": body}},
        Dumper=_FlowListDumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )
    return "\n".join(lines) + "\n" + text
