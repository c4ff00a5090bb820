"""An independent check of the signal states SUMO displayed.

This is the benchmark's own safety layer, written apart from the controller's monitor (it
imports nothing from ``controller/``): it reads the state strings SUMO showed — from
:func:`simulator.sumo.outputs.read_tls_states` or recorded step by step — and counts what
should never have been shown, whoever drove the light (cityctl, SUMO's own programs).

Semantics, kept simple and strict:

* A link is **green** while its character is ``G`` or ``g``, **yellow** while it is ``y``,
  and **closed** otherwise (``r``, ``s``, ``u`` red+yellow, ``o``, ``O``, anything else).
  It is **open** while green or yellow. ``G`` ↔ ``g`` does not end a green.
* Only ``rules.monitored`` links are looked at; a pair with an unmonitored link is ignored.
* Records are ``(time, state)``; a state holds from its time until the next record's time
  (the last one until ``end_s``). Records at the same time: only the last was displayed.
  Times must not decrease nor pass ``end_s``; every state must have ``rules.n`` characters.
* ``conflicts``: each *onset* of a conflicting pair being open together — the pair counts
  once when it becomes both-open (or is both-open in the first record) and again only after
  it stopped being so.
* ``short_yellow``: a link with ``yellow_min_s > 0`` left green, and the yellow that followed
  lasted less than ``yellow_min_s`` (− 1e-6 s). Going straight from green to closed is a
  yellow of 0 s. A yellow still showing at ``end_s`` is not judged; nor is a yellow that did
  not follow a green seen in the records (the first record, or red → yellow).
* ``short_all_red``: when link *j* turns green at *t*, every conflicting *i* whose open period
  ended before (at its end of yellow, or for a crossing its end of green) must have ended at
  least ``all_red_min_s[(i, j)]`` (− 1e-6 s; a missing pair needs 0) before *t*; each
  violating ``(i, j, t)`` counts once. A link never seen closing from open imposes nothing;
  one still open at *t* is a conflict, not a short all-red.
* ``min_green_cut``: a green run that both started and ended inside the records and lasted
  less than ``min_green_s`` (− 1e-6 s). The run already green in the first record (it may
  have begun before the recording) and a run still green at ``end_s`` are not judged.

:func:`rules_from_program` derives the rules a network's own program is measured against.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from simulator.sumo.network import GREEN_CHARS, TlsDescription, TlsProgram

__all__ = [
    "EPS_S",
    "MAX_DETAILS",
    "LinkRules",
    "SafetyCounts",
    "check_displayed",
    "rules_from_program",
]

EPS_S: Final = 1e-6
"""A timed interval may be this much shorter than required (float noise of step times)."""

MAX_DETAILS: Final = 20
"""How many events :class:`SafetyCounts` describes in words."""

_GREEN: Final = 0
_YELLOW: Final = 1
_CLOSED: Final = 2


def _kind(c: str) -> int:
    if c in GREEN_CHARS:
        return _GREEN
    if c == "y":
        return _YELLOW
    return _CLOSED


@dataclass(frozen=True)
class LinkRules:
    """What the displayed states of one light are held to, per index of its state string."""

    n: int
    """Length of the state string."""
    conflicts: frozenset[tuple[int, int]]
    """Link index pairs ``(i, j)``, ``i < j``, that may never be open together."""
    yellow_min_s: tuple[float, ...]
    """Per link; 0 for links that need no yellow (pedestrian crossings, unsignalled)."""
    all_red_min_s: dict[tuple[int, int], float]
    """``(i, j)`` ordered: least time from the end of *i*'s open period to *j*'s green."""
    min_green_s: tuple[float, ...]
    """Per link."""
    monitored: frozenset[int]
    """Link indices to check; the others are ignored (always green, ``O`` links, ...)."""

    def __post_init__(self) -> None:
        if len(self.yellow_min_s) != self.n or len(self.min_green_s) != self.n:
            raise ValueError(
                f"yellow_min_s and min_green_s need {self.n} entries, got "
                f"{len(self.yellow_min_s)} and {len(self.min_green_s)}"
            )
        bad = [i for i in self.monitored if not 0 <= i < self.n]
        if bad:
            raise ValueError(f"monitored links {sorted(bad)} outside 0..{self.n - 1}")
        for i, j in self.conflicts:
            if not 0 <= i < j < self.n:
                raise ValueError(f"conflict pair {(i, j)} must have 0 <= i < j < {self.n}")


@dataclass(frozen=True)
class SafetyCounts:
    """How many times each rule was broken, and the first events in words."""

    conflicts: int = 0
    short_yellow: int = 0
    short_all_red: int = 0
    min_green_cut: int = 0
    details: tuple[str, ...] = field(default=(), compare=False)
    """Short descriptions of the first :data:`MAX_DETAILS` events, in time order."""

    def as_dict(self) -> dict[str, int]:
        """The four counters by name."""
        return {
            "conflicts": self.conflicts,
            "short_yellow": self.short_yellow,
            "short_all_red": self.short_all_red,
            "min_green_cut": self.min_green_cut,
        }

    @property
    def total(self) -> int:
        """All events together (0 means nothing unsafe was displayed)."""
        return sum(self.as_dict().values())

    def __add__(self, other: SafetyCounts) -> SafetyCounts:
        """Counts of two lights (or two runs) together; details stay capped."""
        return SafetyCounts(
            conflicts=self.conflicts + other.conflicts,
            short_yellow=self.short_yellow + other.short_yellow,
            short_all_red=self.short_all_red + other.short_all_red,
            min_green_cut=self.min_green_cut + other.min_green_cut,
            details=(self.details + other.details)[:MAX_DETAILS],
        )


class _Tally:
    """Counters plus the first few events in words."""

    def __init__(self) -> None:
        self.counts = {"conflicts": 0, "short_yellow": 0, "short_all_red": 0, "min_green_cut": 0}
        self.details: list[str] = []

    def add(self, counter: str, text: str) -> None:
        self.counts[counter] += 1
        if len(self.details) < MAX_DETAILS:
            self.details.append(text)

    def result(self) -> SafetyCounts:
        return SafetyCounts(**self.counts, details=tuple(self.details))


def _s(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _collapse(
    changes: Sequence[tuple[float, str]], n: int, end_s: float
) -> list[tuple[float, str]]:
    """Validated records, same-time records reduced to the last (the only one displayed)."""
    out: list[tuple[float, str]] = []
    for time_s, state in changes:
        t = float(time_s)
        if not math.isfinite(t):
            raise ValueError(f"record time {time_s!r} is not a finite number")
        if len(state) != n:
            raise ValueError(f"state {state!r} at {_s(t)} s has {len(state)} links, rules say {n}")
        if out and t < out[-1][0]:
            raise ValueError(f"record times go back: {_s(t)} s after {_s(out[-1][0])} s")
        if t > end_s:
            raise ValueError(f"record at {_s(t)} s is after end_s={_s(end_s)} s")
        if out and out[-1][0] == t:
            out[-1] = (t, state)
        else:
            out.append((t, state))
    return out


def check_displayed(
    changes: Sequence[tuple[float, str]], rules: LinkRules, end_s: float
) -> SafetyCounts:
    """Count what the displayed ``changes`` of one light broke of ``rules`` (see module notes).

    ``changes`` are ``(time, state)`` records in time order (consecutive repeats allowed);
    ``end_s`` is when the recording ended. Raises ValueError for a state of the wrong length,
    times that go back or pass ``end_s``.
    """
    records = _collapse(changes, rules.n, end_s)
    tally = _Tally()
    if not records:
        return tally.result()
    links = sorted(rules.monitored)
    foes: dict[int, list[int]] = {i: [] for i in links}
    pairs: list[tuple[int, int]] = []
    for i, j in sorted(rules.conflicts):
        if i in rules.monitored and j in rules.monitored:
            foes[i].append(j)
            foes[j].append(i)
            pairs.append((i, j))

    t0, first = records[0]
    kind = {i: _kind(first[i]) for i in links}
    # When the current green run began; None while not green or when it began before the
    # records (the first record), which is then not judged.
    green_since: dict[int, float | None] = dict.fromkeys(links)
    # When the current yellow began, only for a yellow seen to follow a green.
    yellow_since: dict[int, float | None] = dict.fromkeys(links)
    # When the link's last open period ended; None until it is seen closing from open.
    closed_at: dict[int, float | None] = dict.fromkeys(links)
    both_open: set[tuple[int, int]] = set()

    def note_conflicts(t: float) -> None:
        nonlocal both_open
        now = {(i, j) for i, j in pairs if kind[i] != _CLOSED and kind[j] != _CLOSED}
        for i, j in sorted(now - both_open):
            tally.add("conflicts", f"{_s(t)} s: links {i} and {j} open together")
        both_open = now

    note_conflicts(t0)
    previous = first
    for t, state in records[1:]:
        if state == previous:
            continue
        previous = state
        turned_green: list[int] = []
        for i in links:
            old, new = kind[i], _kind(state[i])
            if old == new:
                continue
            kind[i] = new
            if old == _GREEN:
                start = green_since[i]
                if start is not None and t - start < rules.min_green_s[i] - EPS_S:
                    tally.add(
                        "min_green_cut",
                        f"{_s(t)} s: link {i} green {_s(t - start)} s < "
                        f"{_s(rules.min_green_s[i])} s minimum",
                    )
                green_since[i] = None
                if new == _YELLOW:
                    yellow_since[i] = t
                elif rules.yellow_min_s[i] > 0:
                    tally.add(
                        "short_yellow",
                        f"{_s(t)} s: link {i} green to {state[i]!r} without yellow "
                        f"(needs {_s(rules.yellow_min_s[i])} s)",
                    )
            elif old == _YELLOW:
                start = yellow_since[i]
                if start is not None and t - start < rules.yellow_min_s[i] - EPS_S:
                    tally.add(
                        "short_yellow",
                        f"{_s(t)} s: link {i} yellow {_s(t - start)} s < "
                        f"{_s(rules.yellow_min_s[i])} s",
                    )
                yellow_since[i] = None
            if new == _CLOSED:
                closed_at[i] = t  # old was open: its open period ends now
            elif new == _GREEN:
                green_since[i] = t
                turned_green.append(i)
        # All links' closings of this instant are known before judging the new greens, so a
        # foe that closes at the very instant j opens shows an all-red of 0 s.
        for j in turned_green:
            for i in foes[j]:
                ended = closed_at[i]
                if ended is None or kind[i] != _CLOSED:
                    continue  # never seen closing, or still open (a conflict)
                need = rules.all_red_min_s.get((i, j), 0.0)
                if t - ended < need - EPS_S:
                    tally.add(
                        "short_all_red",
                        f"{_s(t)} s: link {j} green {_s(t - ended)} s after link {i} "
                        f"closed < {_s(need)} s all-red",
                    )
        note_conflicts(t)
    return tally.result()


def rules_from_program(
    desc: TlsDescription,
    program: TlsProgram,
    *,
    yellow_floor_s: float = 3.0,
    all_red_floor_s: float = 1.0,
    min_green_cap_s: float = 5.0,
) -> LinkRules:
    """The rules a network's own ``program`` of light ``desc`` is measured against.

    * monitored: links green in some phase but not in every phase;
    * conflicts: pairs of monitored links never green together in any phase;
    * yellow_min_s: ``yellow_floor_s`` for vehicle links, 0 for pedestrian crossings;
    * all_red_min_s: ``all_red_floor_s`` for every ordered conflicting pair;
    * min_green_s: ``min(min_green_cap_s, shortest cyclic green run)`` of each monitored
      link (a run may span several phases and wrap round the cycle's end); 0 for the rest.

    Raises ValueError for a program without phases or with states of the wrong length.
    """
    n = desc.n_links
    if not program.phases:
        raise ValueError(f"traffic light {desc.id!r}: program {program.program_id!r} is empty")
    for phase in program.phases:
        if len(phase.state) != n:
            raise ValueError(
                f"traffic light {desc.id!r}: phase state {phase.state!r} has "
                f"{len(phase.state)} links, the light {n}"
            )
    green = [[c in GREEN_CHARS for c in p.state] for p in program.phases]
    monitored = frozenset(
        i for i in range(n) if any(g[i] for g in green) and not all(g[i] for g in green)
    )
    conflicts = frozenset(
        (i, j)
        for i in sorted(monitored)
        for j in sorted(monitored)
        if i < j and not any(g[i] and g[j] for g in green)
    )
    pedestrian = [bool(row) and all(link.pedestrian for link in row) for row in desc.links]
    durations = [p.duration for p in program.phases]
    min_green = tuple(
        min(min_green_cap_s, _shortest_cyclic_run([g[i] for g in green], durations))
        if i in monitored
        else 0.0
        for i in range(n)
    )
    all_red: dict[tuple[int, int], float] = {}
    for i, j in conflicts:
        all_red[(i, j)] = all_red_floor_s
        all_red[(j, i)] = all_red_floor_s
    return LinkRules(
        n=n,
        conflicts=conflicts,
        yellow_min_s=tuple(0.0 if pedestrian[i] else yellow_floor_s for i in range(n)),
        all_red_min_s=all_red,
        min_green_s=min_green,
        monitored=monitored,
    )


def _shortest_cyclic_run(flags: Sequence[bool], durations: Iterable[float]) -> float:
    """The shortest total duration of consecutive True phases, round the cycle.

    Needs at least one True and one False flag.
    """
    durs = list(durations)
    start = flags.index(False)  # rotate so that a run never straddles the list's end
    order = list(range(start, len(flags))) + list(range(start))
    runs: list[float] = []
    current: float | None = None
    for k in order:
        if flags[k]:
            current = (current or 0.0) + durs[k]
        elif current is not None:
            runs.append(current)
            current = None
    if current is not None:
        runs.append(current)
    return min(runs)
