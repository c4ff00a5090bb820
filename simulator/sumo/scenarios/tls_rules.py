"""The rules every traffic-light program of the scenario set obeys, checked on a ``.net.xml``.

A program is read link by link: each index of the ``state`` strings is one controlled link
(a lane-to-lane connection, or a pedestrian crossing), and following one index around the
cycle gives that link's sequence of green, yellow and red intervals. The rules:

``min-green``
    every green interval of every link lasts at least ``min_green_s`` (5 s);
``yellow``
    every green interval of a vehicle link ends in a yellow interval of at least
    ``min_yellow_s`` (3 s), and a yellow interval always ends in red, never back in green
    (pedestrian crossings have no yellow: netconvert ends their green early instead, by
    ``--tls.crossing-clearance.time``);
``all-red``
    no link starts a green interval during a yellow or less than ``min_all_red_s`` (1 s) after
    the end of one: after every yellow comes at least 1 s in which nothing new turns green.
    A link that was already green before the yellow may stay green (or turn from ``g`` to
    ``G``, as a protected left does after the permissive phase) since it never conflicted with
    the traffic that just got yellow in a way the junction did not already handle;
``conflict``
    two links that are foes at their junction (crossing or merging paths, as SUMO's junction
    logic ``<request foes=...>`` says) are never both ``G`` (green with priority) in one phase;
    a movement that must yield shows ``g``;
``served``
    every link is green somewhere in the cycle, and states use only ``G g y r``.

The check is pure XML reading (no SUMO needed), so the tests and the builder can both use it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_RULES",
    "ProgramSummary",
    "RuleViolation",
    "SignalRules",
    "check_programs",
    "summarise_programs",
]

GREEN = frozenset("Gg")
YELLOW = frozenset("y")
RED = frozenset("r")
_KNOWN = GREEN | YELLOW | RED


@dataclass(frozen=True)
class SignalRules:
    """The thresholds of the rules (seconds)."""

    min_yellow_s: float = 3.0
    min_all_red_s: float = 1.0
    min_green_s: float = 5.0


DEFAULT_RULES = SignalRules()
"""The scenario set's rules: yellow ≥ 3 s, all-red ≥ 1 s after every yellow, green ≥ 5 s."""


@dataclass(frozen=True)
class RuleViolation:
    """One broken rule in one program."""

    tls_id: str
    program_id: str
    rule: str
    """``min-green``, ``yellow``, ``all-red``, ``conflict`` or ``served``."""
    detail: str

    def __str__(self) -> str:
        return f"tls {self.tls_id!r} program {self.program_id!r}: {self.rule}: {self.detail}"


@dataclass(frozen=True)
class ProgramSummary:
    """The shape of one program, for documentation and reports."""

    tls_id: str
    program_id: str
    type: str
    junctions: tuple[str, ...]
    """The junctions the traffic light controls (more than one for a joined light)."""
    links: int
    pedestrian_links: int
    phases: int
    green_phases: int
    """Phases in which some link is green and none is yellow."""
    cycle_s: float


@dataclass(frozen=True)
class _Phase:
    duration: float
    state: str


@dataclass(frozen=True)
class _Program:
    tls_id: str
    program_id: str
    type: str
    phases: tuple[_Phase, ...]


@dataclass(frozen=True)
class _Link:
    junction: str
    request: int | None
    """The link's index in its junction's ``<request>`` list; None when the net has no
    internal lanes to tell it."""
    pedestrian: bool


@dataclass
class _NetSignals:
    programs: list[_Program]
    links: dict[str, dict[int, _Link]]
    foes: dict[str, dict[int, str]]


def _read(net_file: Path) -> _NetSignals:
    root = ET.parse(net_file).getroot()
    functions = {e.get("id", ""): e.get("function", "") for e in root.iter("edge")}

    programs: list[_Program] = []
    for tl in root.iter("tlLogic"):
        phases = tuple(
            _Phase(float(p.get("duration", "0")), p.get("state", "")) for p in tl.iter("phase")
        )
        programs.append(
            _Program(tl.get("id", ""), tl.get("programID", ""), tl.get("type", ""), phases)
        )

    # Which junction, and which of its request indices, each internal lane stands for.
    lane_slot: dict[str, tuple[str, int]] = {}
    foes: dict[str, dict[int, str]] = {}
    for junction in root.iter("junction"):
        if junction.get("type") == "internal":
            continue  # the waiting positions inside a junction, not a junction of their own
        jid = junction.get("id", "")
        for position, lane in enumerate(junction.get("intLanes", "").split()):
            lane_slot[lane] = (jid, position)
        requests = {int(r.get("index", "-1")): r.get("foes", "") for r in junction.iter("request")}
        if requests:
            foes[jid] = requests

    # A turn that waits inside the junction (an internal junction) crosses it on two internal
    # lanes; the junction's intLanes lists the last one. Follow the chain to it.
    next_internal: dict[str, str] = {}
    links: dict[str, dict[int, _Link]] = {}
    for conn in root.iter("connection"):
        src = conn.get("from", "")
        via = conn.get("via")
        if functions.get(src) == "internal" and via:
            next_internal[f"{src}_{conn.get('fromLane', '0')}"] = via
    for conn in root.iter("connection"):
        tls_id = conn.get("tl")
        if tls_id is None:
            continue
        src = conn.get("from", "")
        pedestrian = functions.get(src) in ("walkingarea", "crossing")
        if pedestrian:
            lane = f"{conn.get('to', '')}_{conn.get('toLane', '0')}"
        else:
            lane = conn.get("via", "")
            seen = {lane}
            while lane in next_internal and next_internal[lane] not in seen:
                lane = next_internal[lane]
                seen.add(lane)
        at_junction, request = lane_slot.get(lane, ("", -1))
        links.setdefault(tls_id, {})[int(conn.get("linkIndex", "-1"))] = _Link(
            at_junction, request if request >= 0 else None, pedestrian
        )
    return _NetSignals(programs, links, foes)


def check_programs(net_file: Path, rules: SignalRules = DEFAULT_RULES) -> list[RuleViolation]:
    """Every violation of ``rules`` by every ``<tlLogic>`` of ``net_file`` (empty when clean)."""
    net = _read(net_file)
    violations: list[RuleViolation] = []
    for program in net.programs:
        violations.extend(_check_program(program, net, rules))
    return violations


def summarise_programs(net_file: Path) -> list[ProgramSummary]:
    """One :class:`ProgramSummary` per ``<tlLogic>`` of ``net_file``, in file order."""
    net = _read(net_file)
    out: list[ProgramSummary] = []
    for program in net.programs:
        links = net.links.get(program.tls_id, {})
        junctions = tuple(sorted({link.junction for link in links.values() if link.junction}))
        out.append(
            ProgramSummary(
                tls_id=program.tls_id,
                program_id=program.program_id,
                type=program.type,
                junctions=junctions,
                links=len(program.phases[0].state) if program.phases else 0,
                pedestrian_links=sum(link.pedestrian for link in links.values()),
                phases=len(program.phases),
                green_phases=sum(
                    1
                    for p in program.phases
                    if any(c in GREEN for c in p.state) and not any(c in YELLOW for c in p.state)
                ),
                cycle_s=sum(p.duration for p in program.phases),
            )
        )
    return out


def _check_program(
    program: _Program, net: _NetSignals, rules: SignalRules
) -> Iterable[RuleViolation]:
    def violation(rule: str, detail: str) -> RuleViolation:
        return RuleViolation(program.tls_id, program.program_id, rule, detail)

    phases = program.phases
    if not phases:
        yield violation("served", "the program has no phases")
        return
    width = len(phases[0].state)
    for k, phase in enumerate(phases):
        if len(phase.state) != width:
            yield violation("served", f"phase {k} has {len(phase.state)} signals, not {width}")
            return
        if phase.duration <= 0:
            yield violation("served", f"phase {k} lasts {phase.duration:g} s")
        unknown = sorted(set(phase.state) - _KNOWN)
        if unknown:
            yield violation("served", f"phase {k} uses states {''.join(unknown)!r}")

    links = net.links.get(program.tls_id, {})
    for index in range(width):
        link = links.get(index)
        pedestrian = link.pedestrian if link is not None else False
        yield from (
            violation(rule, f"link {index}: {detail}")
            for rule, detail in _check_link(
                [(p.state[index], p.duration) for p in phases], pedestrian, rules
            )
        )
    yield from (violation("all-red", d) for d in _check_clearance(phases, rules))
    yield from (violation("conflict", d) for d in _check_conflicts(phases, links, net.foes))


def _class_of(signal: str) -> str:
    if signal in GREEN:
        return "green"
    if signal in YELLOW:
        return "yellow"
    return "red"


def _check_link(
    signals: Sequence[tuple[str, float]], pedestrian: bool, rules: SignalRules
) -> Iterable[tuple[str, str]]:
    classes = [_class_of(s) for s, _ in signals]
    if "green" not in classes:
        yield "served", "never green"
        return
    if len(set(classes)) == 1:
        return  # always green: nothing ever changes for this link
    # Rotate the cycle to start where the class changes, then cut it into intervals.
    n = len(signals)
    start = next(k for k in range(n) if classes[k] != classes[k - 1])
    runs: list[tuple[str, float]] = []
    for k in range(start, start + n):
        cls, duration = classes[k % n], signals[k % n][1]
        if runs and runs[-1][0] == cls:
            runs[-1] = (cls, runs[-1][1] + duration)
        else:
            runs.append((cls, duration))
    for r, (cls, duration) in enumerate(runs):
        after = runs[(r + 1) % len(runs)][0]
        if cls == "green":
            if duration < rules.min_green_s:
                yield "min-green", f"green for {duration:g} s < {rules.min_green_s:g} s"
            if not pedestrian and after != "yellow":
                yield "yellow", "green ends without a yellow"
        elif cls == "yellow":
            if duration < rules.min_yellow_s:
                yield "yellow", f"yellow for {duration:g} s < {rules.min_yellow_s:g} s"
            if after == "green":
                yield "yellow", "yellow is followed by green"


def _check_clearance(phases: Sequence[_Phase], rules: SignalRules) -> Iterable[str]:
    n = len(phases)
    for k, phase in enumerate(phases):
        before = phases[k - 1].state
        onsets = [i for i, s in enumerate(phase.state) if s in GREEN and before[i] not in GREEN]
        if not onsets:
            continue
        if any(s in YELLOW for s in phase.state):
            yield f"phase {k}: links {onsets} turn green while others show yellow"
            continue
        gap = 0.0
        for back in range(1, n):
            earlier = phases[(k - back) % n]
            if any(s in YELLOW for s in earlier.state):
                if gap < rules.min_all_red_s:
                    yield (
                        f"phase {k}: links {onsets} turn green {gap:g} s after a yellow "
                        f"(< {rules.min_all_red_s:g} s)"
                    )
                break
            gap += earlier.duration


def _check_conflicts(
    phases: Sequence[_Phase], links: dict[int, _Link], foes: dict[str, dict[int, str]]
) -> Iterable[str]:
    reported: set[tuple[int, int]] = set()
    for k, phase in enumerate(phases):
        major = [i for i, s in enumerate(phase.state) if s == "G"]
        for a_pos, a in enumerate(major):
            link_a = links.get(a)
            if link_a is None or link_a.request is None:
                continue
            requests = foes.get(link_a.junction, {})
            foes_a = requests.get(link_a.request, "")
            for b in major[a_pos + 1 :]:
                link_b = links.get(b)
                if (
                    link_b is None
                    or link_b.request is None
                    or link_b.junction != link_a.junction
                    or (a, b) in reported
                ):
                    continue
                bit = len(foes_a) - 1 - link_b.request
                if 0 <= bit < len(foes_a) and foes_a[bit] == "1":
                    reported.add((a, b))
                    yield f"phase {k}: links {a} and {b} are foes but both 'G'"
