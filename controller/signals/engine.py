"""The phase engine: the only code that decides what every signal group shows.

A strategy *asks* (:class:`Request`: which stage next, end the current one now); the engine
decides what is legal and when. It is a pure state machine with an injected clock: every call
takes ``now`` (seconds, any origin, never decreasing) and nothing here sleeps or does I/O.

The rules, in the order they bite:

* **Startup** — all groups RED for ``max(startup_red_s, largest all-red)``, then the start
  stage goes green. The same happens after :meth:`PhaseEngine.leave_flash`.
* **Green** — the current stage's vehicle groups are GREEN. The stage ends when the strategy
  asks (``end_green`` with a ``next_stage``) or, when somebody else is waiting, at the stage's
  max green (the least ``max_green_s`` of its vehicle groups: a *max-out*). Either way it ends
  only once every vehicle group that must turn off has had its minimum green and every
  pedestrian crossing that must turn off has finished its walk and its clearance.
* **Pedestrians** — a crossing of a stage shows its walk (GREEN) only when it is *served*:
  the request's ``peds`` names the crossings to serve (``None``: all of the stage's, a
  pedestrian recall). The walk lasts exactly the group's walk time (its minimum green); then
  the crossing shows PED_CLEARANCE for its clearance time and RED for the rest of the stage,
  while the vehicles keep their green — as a NEMA controller times a pedestrian phase inside
  its vehicle phase. So a long crossing clearance never stretches the intergreen to the next
  stage; it holds the stage instead. A crossing called after its stage started can still be
  served while the stage runs (once per stage), if the request names it.
* **Clearance** — vehicle groups in both stages stay GREEN (overlap); vehicle groups leaving
  show YELLOW for exactly their clearance, then RED. A group of the next stage turns GREEN only
  when it shows RED, no conflicting group is open and, for every conflicting group *i*,
  ``now - end_of_green(i) >= intergreen[i][j]`` and ``now - turned_red(i) >= all_red(i, j)``
  (the all-red also counts from the moment *i* really showed red: at steps of ``dt`` a
  clearance can run up to one step long, and that must not shorten the all-red a cabinet's
  monitor measures). Non-conflicting new groups
  start at once. When every vehicle group and every served crossing of the next stage has
  turned green the engine is back in *green* with the new stage. A clearance is never
  shortened; requests made meanwhile are remembered.
* **Flash** — :meth:`PhaseEngine.enter_flash` turns vehicles to FLASH_YELLOW and pedestrians
  DARK at once (flash is the safe state); :meth:`PhaseEngine.leave_flash` goes back through the
  startup all-red.
* **Adoption** — :meth:`PhaseEngine.adopt` replaces the startup all-red with what the heads
  *already* show (a controller restarted while the cabinet still follows the previous one's
  outputs): a stage's green (:func:`shown_stage` recognises a clean one;
  :meth:`PhaseEngine.start_in` names it), and also a display caught in a transition — a
  yellow, a pedestrian clearance, the all-red of a stage change (:func:`shown_state` tells
  which stage it is in or on its way to). Nothing changes on the heads; the history that
  nobody knows any more is assumed at its worst: every green started at the adoption (its
  minimum green, the max green and the walk count from there — the green may already have
  run, which only lengthens it), every clearance in progress started at the adoption (it runs
  its full time from there, and the intergreen to a conflicting group counts from there), and
  every red group ended its clearance at the adoption (the all-red and intergreen to a
  conflicting group count from there). A transition taken over goes on to its stage by the
  ordinary rules; the first transition out of a stage is an ordinary one, with the model's
  full clearances.
* **Confirmation** — :meth:`PhaseEngine.confirm` moves the changes of the latest output from
  the step's ``now`` to the moment the cabinet acknowledged them, so that a write that reached
  the heads late never shortens the clearance or all-red that follows it.

Requests are *level-triggered*: the latest valid request stands until the next one (a strategy
states what it wants at every step). A request naming an unknown stage or an unknown crossing
is refused and counted, and the previous request keeps standing. A request for the current
stage is a hold.

Time comparisons use a tolerance of ``1e-9`` s so that float noise of summed steps
(``0.1 + 0.2 != 0.3``) does not add a whole extra step; nothing is ever rounded, and the
tolerance is three orders of magnitude inside the ``1e-6`` s that the independent
:mod:`controller.signals.safety` monitor allows. The engine works at any step size; at steps of
``dt`` every timed interval lasts at least its nominal time and less than that plus ``dt``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from controller.signals.model import (
    ALL_RED_FLOOR_S,
    GroupKind,
    Intersection,
    Signal,
)

__all__ = [
    "TIME_EPS",
    "EngineOutput",
    "EngineStats",
    "NotAdoptable",
    "Phase",
    "PhaseEngine",
    "Request",
    "ShownState",
    "shown_stage",
    "shown_state",
]

TIME_EPS = 1e-9
"""Float-noise tolerance for "has this much time passed" (see the module docstring)."""

Phase = Literal["startup", "green", "clearance", "flash"]

# Members as module constants: the per-step loops compare many of them.
_GREEN: Final = Signal.GREEN
_YELLOW: Final = Signal.YELLOW
_RED: Final = Signal.RED
_PED_CLEARANCE: Final = Signal.PED_CLEARANCE
# Signal.is_open by code (the property is a Python call; the clearance loop asks often).
_IS_OPEN: Final = {s: s.is_open for s in Signal}


def _reached(elapsed: float, need: float) -> bool:
    """``elapsed >= need`` up to float noise of the summed clock."""
    return elapsed + TIME_EPS >= need


class NotAdoptable(ValueError):
    """A display that cannot be taken over as it stands; the message says why."""


def shown_stage(x: Intersection, signals: Sequence[int]) -> tuple[str, frozenset[str]]:
    """The stage a display shows *cleanly*, and its crossings that walk; else :class:`NotAdoptable`.

    Clean means a state the engine itself holds in the green of that stage, with nothing in
    transition: every vehicle group of the stage GREEN, each of its crossings GREEN (walking)
    or RED, every other group RED — so no YELLOW, pedestrian clearance, red-amber, flash, dark
    or unknown code anywhere, and at least one GREEN (all red is a start-up, not a stage).
    When several stages fit (a crossing showing RED belongs to one of them and not the other),
    the first in config order is taken; the engine's rules are per group, so any fit is the
    same state.
    """
    if len(signals) != x.n:
        raise NotAdoptable(f"signals: {len(signals)} codes for {x.n} groups")
    codes: list[Signal] = []
    for i, code in enumerate(signals):
        try:
            sig = Signal(int(code))
        except ValueError:
            raise NotAdoptable(f"signals[{x.groups[i].id}]: {code!r} is no signal code") from None
        if sig not in (Signal.GREEN, Signal.RED):
            raise NotAdoptable(
                f"signals[{x.groups[i].id}]: {sig.name} is a transition or flash, not a stage"
            )
        codes.append(sig)
    green = [i for i, c in enumerate(codes) if c is Signal.GREEN]
    if not green:
        raise NotAdoptable("signals: all red is a start-up, not a stage")
    # With greens and reds only, shown_state's green is exactly this: a stage's vehicle groups
    # all green, every green one of its groups.
    try:
        state: ShownState | None = shown_state(x, codes)
    except NotAdoptable:
        state = None
    if state is None or state.phase != "green":
        shown = ", ".join(x.groups[i].id for i in green)
        raise NotAdoptable(f"signals: the greens {shown} are no stage of {x.id}")
    return state.stage, state.walking


class ShownState(NamedTuple):
    """How the engine can take over a display (:func:`shown_state`)."""

    stage: str
    """The stage shown (``phase`` green) or being entered (``phase`` clearance)."""
    phase: Literal["green", "clearance"]
    walking: frozenset[str]
    """The crossings showing their walk (GREEN)."""


_TAKEN_OVER: Final = {
    GroupKind.VEHICLE: (Signal.GREEN, Signal.RED, Signal.YELLOW),
    GroupKind.PEDESTRIAN: (Signal.GREEN, Signal.RED, Signal.PED_CLEARANCE),
}


def shown_state(x: Intersection, signals: Sequence[int]) -> ShownState:
    """The engine state a display can be taken over as; else :class:`NotAdoptable` saying why.

    Every group must show a code the engine itself shows outside flash — vehicles GREEN,
    YELLOW or RED, crossings GREEN (walk), PED_CLEARANCE or RED; no two conflicting groups
    open (GREEN, YELLOW, PED_CLEARANCE) at once; not all RED (a start-up, not a stage). Then:

    * **green** of stage *S* — the vehicle greens are exactly *S*'s vehicle groups, no
      vehicle shows YELLOW and every walking crossing is one of *S*'s (a clean stage, as
      :func:`shown_stage` reads it, or one whose crossing is in its pedestrian clearance);
    * else **clearance** towards stage *T* — every vehicle green is one of *T*'s groups (the
      ones that stay green through a stage change, or already opened), no YELLOW vehicle is
      (a group of *T* does not clear on the way to *T*), and every walking crossing is one
      of *T*'s: the display is a stage change on its way to *T*.

    The first stage in config order that fits is taken, a green before a clearance; the
    engine's rules are per group, so any fit is a state it can run safely from.
    """
    if len(signals) != x.n:
        raise NotAdoptable(f"signals: {len(signals)} codes for {x.n} groups")
    codes: list[Signal] = []
    for i, code in enumerate(signals):
        g = x.groups[i]
        try:
            sig = Signal(int(code))
        except ValueError:
            raise NotAdoptable(f"signals[{g.id}]: {code!r} is no signal code") from None
        if sig not in _TAKEN_OVER[g.kind]:
            raise NotAdoptable(
                f"signals[{g.id}]: {sig.name} is not shown by a {g.kind.value} group outside flash"
            )
        codes.append(sig)
    if all(c is Signal.RED for c in codes):
        raise NotAdoptable("signals: all red is a start-up, not a stage")
    open_ = [c is not Signal.RED for c in codes]
    for i in range(x.n):
        for j in range(i + 1, x.n):
            if open_[i] and open_[j] and (x.conflict[i][j] or x.conflict[j][i]):
                raise NotAdoptable(
                    f"signals: {x.groups[i].id} {codes[i].name} and {x.groups[j].id} "
                    f"{codes[j].name} conflict"
                )
    is_ped = [g.kind is GroupKind.PEDESTRIAN for g in x.groups]
    green_v = frozenset(i for i, c in enumerate(codes) if c is Signal.GREEN and not is_ped[i])
    yellow_v = frozenset(i for i, c in enumerate(codes) if c is Signal.YELLOW)
    walking = frozenset(i for i, c in enumerate(codes) if c is Signal.GREEN and is_ped[i])
    walk_ids = frozenset(x.groups[i].id for i in walking)
    stages = [
        (sid, members, frozenset(i for i in members if not is_ped[i])) for sid, members in x.stages
    ]
    for sid, members, vehicles in stages:
        if not yellow_v and green_v == vehicles and walking <= members:
            return ShownState(sid, "green", walk_ids)
    for sid, members, vehicles in stages:
        if green_v <= vehicles and not (yellow_v & vehicles) and walking <= members:
            return ShownState(sid, "clearance", walk_ids)
    shown = ", ".join(
        f"{x.groups[i].id} {c.name}" for i, c in enumerate(codes) if c is not Signal.RED
    )
    raise NotAdoptable(f"signals: {shown} is no stage of {x.id}, nor a change to one")


class Request(NamedTuple):
    """What a strategy asks at one step; the engine decides what is legal.

    Immutable; a named tuple rather than a frozen dataclass, which costs several times as
    much to build (strategies build one nearly every step). ``_replace`` derives a variant.
    """

    next_stage: str | None = None
    """Stage to serve next (None: nobody else is waiting)."""
    end_green: bool = False
    """End the current stage as soon as legal and go to ``next_stage``."""
    peds: frozenset[str] | None = None
    """Pedestrian crossings to serve (walk) in the stage being entered, and late in the running
    stage; None serves every crossing of a stage when it is entered (pedestrian recall)."""


class EngineOutput(NamedTuple):
    """What the engine shows at ``t``.

    Immutable; a named tuple rather than a frozen dataclass, which costs several times as
    much to build (the engine builds one every step). ``_replace`` derives a variant (tests
    do, to fake a broken engine).
    """

    t: float
    signals: tuple[Signal, ...]
    """One per group, in config order."""
    phase: Phase
    stage: str | None
    """Stage whose greens are shown (green) or being entered (clearance); None otherwise."""
    next_stage: str | None
    """The standing request's stage (startup: the start stage), if it differs from ``stage``."""
    green_elapsed: float
    """Seconds since the current stage's green started (0 outside green)."""
    green_since: tuple[float | None, ...]
    """Per group: when its current green started, else None."""
    release_at: tuple[float, ...] = ()
    """Per group: the earliest time it stops holding its stage — a vehicle green its minimum
    green, a walking or clearing crossing the end of its clearance; ``-inf`` when it holds
    nothing. A strategy reads how soon the running stage can end from it."""


@dataclass
class EngineStats:
    """Counters since the engine was built."""

    stage_changes: int = 0
    """Times a new stage reached green (startup greens are not counted)."""
    max_outs: int = 0
    """Stages ended by their max green rather than by an ``end_green`` request."""
    refused_requests: int = 0
    """Requests naming an unknown stage."""
    flashes: int = 0
    """Times the engine entered flash."""


class PhaseEngine:
    """Stage-based signal sequencing inside the safety envelope of one :class:`Intersection`."""

    def __init__(
        self,
        x: Intersection,
        *,
        now: float,
        start_stage: str | None = None,
        startup_red_s: float = 3.0,
    ) -> None:
        if not x.stages:
            raise ValueError(f"intersection {x.id!r} has no stages")
        if start_stage is None:
            start_stage = x.stages[0][0]
        stage_groups = dict(x.stages)
        if start_stage not in stage_groups:
            raise ValueError(f"start_stage: unknown stage {start_stage!r}")
        if not (startup_red_s >= 0 and math.isfinite(startup_red_s)):
            raise ValueError(f"startup_red_s: {startup_red_s!r} must be a finite number >= 0")
        n = x.n
        self._x = x
        self._n = n
        self._stage_groups = stage_groups
        self._is_ped = tuple(g.kind is GroupKind.PEDESTRIAN for g in x.groups)
        self._peds_of = {
            sid: frozenset(i for i in members if self._is_ped[i]) for sid, members in x.stages
        }
        self._vehicles_of = {sid: members - self._peds_of[sid] for sid, members in x.stages}
        # Max-out: the least max green of the stage's vehicle groups (a crossing's walk is
        # fixed, its max_green_s does not limit the stage); a stage of crossings only maxes out
        # when its walks are done.
        self._stage_max = {
            sid: min(
                (x.groups[i].max_green_s for i in self._vehicles_of[sid]),
                default=0.0,
            )
            for sid, _ in x.stages
        }
        self._min_green = tuple(g.min_green_total_s for g in x.groups)
        self._conflicts_of = tuple(tuple(i for i in range(n) if x.conflict[i][j]) for j in range(n))
        all_reds = [x.all_red(i, j) for i in range(n) for j in range(n) if x.conflict[i][j]]
        self._max_all_red = max([ALL_RED_FLOOR_S, *all_reds])
        self._startup_s = max(startup_red_s, self._max_all_red)
        self._start_stage = start_stage
        self._ped_index = {x.groups[i].id: i for i in range(n) if self._is_ped[i]}
        self._ped_ids = frozenset(self._ped_index)
        self._peds = tuple(i for i in range(n) if self._is_ped[i])
        self._clearance = tuple(x.clearance)
        self._signals = [Signal.RED] * n
        self._green_since: list[float | None] = [None] * n
        self._green_end = [-math.inf] * n
        # When each group's clearance ended (it turned RED): the all-red runs from there, not
        # only from the intergreen's start — a clearance that ran one step long must not eat
        # into the all-red the cabinet's monitor measures.
        self._red_since = [-math.inf] * n
        self._all_red = tuple(
            tuple(x.all_red(i, j) if x.conflict[i][j] else 0.0 for j in range(n)) for i in range(n)
        )
        self._phase: Phase = "startup"
        self._stage: str | None = None
        self._stage_green_t: float | None = None
        self._walk: frozenset[int] = frozenset()  # crossings to serve in the stage entered
        self._served: set[int] = set()  # crossings that had their walk in this stage
        self._startup_t0 = now
        self._standing = Request()
        self._flash_reason = ""
        self._stats = EngineStats()
        self._now = now
        # _build's per-group release times, kept by a step while the signals and green starts
        # they were computed from stay the same (most steps); see _build.
        self._release_key: tuple[tuple[Signal, ...], tuple[float | None, ...]] | None = None
        self._release: tuple[float, ...] = ()
        self._out = self._build(now)

    # -- public surface ---------------------------------------------------------------------

    @property
    def intersection(self) -> Intersection:
        """The intersection this engine drives."""
        return self._x

    @property
    def output(self) -> EngineOutput:
        """The latest output (also after :meth:`enter_flash` / :meth:`leave_flash`)."""
        return self._out

    @property
    def stats(self) -> EngineStats:
        """A copy of the counters."""
        s = self._stats  # (read every step: a direct copy costs a fifth of dataclasses.replace)
        return EngineStats(s.stage_changes, s.max_outs, s.refused_requests, s.flashes)

    @property
    def startup_s(self) -> float:
        """How long the startup all-red lasts: ``max(startup_red_s, largest all-red)``."""
        return self._startup_s

    @property
    def flash_reason(self) -> str:
        """Why the engine is in flash ("" when it is not)."""
        return self._flash_reason if self._phase == "flash" else ""

    @property
    def served_peds(self) -> frozenset[str]:
        """Crossings that have had (or have) their walk in the current stage."""
        return frozenset(self._x.groups[i].id for i in self._served)

    def step(self, now: float, request: Request) -> EngineOutput:
        """Advance to ``now`` with the strategy's ``request``; returns what to show."""
        self._advance_clock(now)
        self._accept(request)
        if self._phase == "startup":
            if _reached(now - self._startup_t0, self._startup_s):
                self._green_start_stage(now)
        elif self._phase != "flash":
            self._end_walks(now)
            if self._phase == "green":
                self._late_walks(now)
                self._maybe_end_stage(now)
            if self._phase == "clearance":
                self._serve_next_stage(now)
            # After the new greens: a group that ends its clearance now shows RED for at
            # least one output before it may show GREEN again.
            self._finish_clearances(now)
        self._out = out = self._build(now, reuse=True)
        return out

    def start_in(self, now: float, stage: str, walking: Collection[str] = ()) -> None:
        """Start in ``stage``'s green, which the heads already show, instead of the all-red.

        :meth:`adopt` for a clean stage named by the caller: the vehicle groups of ``stage``
        and the crossings named in ``walking`` are GREEN from ``now``, everything else RED,
        taken over with the worst history (see :meth:`adopt`). Raises ``ValueError`` naming
        the argument and why; nothing changes then.
        """
        if self._phase != "startup":
            raise ValueError(f"start_in: the engine is in {self._phase}, not in its start-up")
        if stage not in self._stage_groups:
            raise ValueError(f"stage: unknown stage {stage!r}")
        walk: set[int] = set()
        for pid in walking:
            i = self._ped_index.get(pid)
            if i is None or i not in self._peds_of[stage]:
                raise ValueError(f"walking: {pid!r} is no crossing of stage {stage!r}")
            walk.add(i)
        green = self._vehicles_of[stage] | walk
        if not green:
            raise ValueError(f"stage: {stage!r} with no walking crossing shows no green")
        self._advance_clock(now)
        signals = [Signal.GREEN if i in green else Signal.RED for i in range(self._n)]
        self._take_over(now, signals, ShownState(stage, "green", frozenset(walking)))

    def adopt(self, now: float, signals: Sequence[int]) -> ShownState:
        """Take over heads that already show ``signals``, instead of the start-up all-red.

        For a controller that takes over a cabinet still showing its predecessor's outputs
        (see the module docstring, *Adoption*). ``signals`` must be a state the engine can run
        from (:func:`shown_state`): a stage's green, or a stage change on its way to one. Only
        an engine still in its start-up may do this (it has shown nothing but all red, so
        nothing it timed is cut short). The output is then exactly ``signals``, and the
        unknown history is assumed at its worst: the greens' minimum, the walks and the max
        green count from ``now``; every YELLOW and PED_CLEARANCE started at ``now`` (its full
        clearance from here, and the intergreen to a conflicting group too); every RED group
        ended its clearance at ``now`` (its green one clearance earlier), so the all-red and
        the intergreen to a conflicting group run from there. The crossings of the stage shown
        or entered count as served: none of them starts a late walk before the stage's next
        turn (one may have just ended its clearance). A stage change taken over opens the rest
        of its stage by the ordinary rules. Returns the state taken over; raises
        :class:`NotAdoptable` (a ``ValueError``) saying why, and changes nothing, when
        ``signals`` is no such state or the engine has left its start-up.
        """
        if self._phase != "startup":
            raise NotAdoptable(f"adopt: the engine is in {self._phase}, not in its start-up")
        state = shown_state(self._x, signals)
        self._advance_clock(now)
        self._take_over(now, [Signal(int(c)) for c in signals], state)
        return state

    def _take_over(self, now: float, signals: list[Signal], state: ShownState) -> None:
        """Set the state :meth:`adopt` describes (``signals`` and ``state`` agree)."""
        stage = state.stage
        walk = frozenset(self._ped_index[p] for p in state.walking)
        inf = math.inf
        self._signals = signals
        self._green_since = [now if s is _GREEN else None for s in signals]
        self._green_end = [
            -inf if s is _GREEN else now if s is not _RED else now - self._clearance[i]
            for i, s in enumerate(signals)
        ]
        self._red_since = [now if s is _RED else -inf for s in signals]
        self._phase = state.phase
        self._stage = stage
        self._stage_green_t = now if state.phase == "green" else None
        self._walk = walk
        self._served = set(self._peds_of[stage]) | walk
        self._out = self._build(now)

    def confirm(self, t: float) -> None:
        """The latest output reached the heads no later than ``t``: time its changes from there.

        The step decided at its ``now``, but a cabinet sees a change only when the write
        arrives, which under load can be long after — and a later write may arrive promptly.
        Timed from the decision, a clearance or an all-red would then look short to the
        cabinet's monitor. Timed from the acknowledgement ``t`` (the cabinet applied the write
        before it answered), every interval the cabinet measures is at least the one timed
        here: the next change is decided at or after its minimum counted from ``t`` and
        arrives later still. Only what changed at the latest step moves (every time stamped
        with its ``now``), always later, so every minimum can only grow. Raises ``ValueError``
        when ``t`` is not a finite time at or after the latest step; nothing changes then.
        """
        was = self._now
        if not math.isfinite(t) or t < was:
            raise ValueError(f"t: {t!r} is not a time at or after the latest step {was!r}")
        if t == was:
            return
        self._green_since = [t if v == was else v for v in self._green_since]
        self._green_end = [t if v == was else v for v in self._green_end]
        self._red_since = [t if v == was else v for v in self._red_since]
        if self._stage_green_t == was:
            self._stage_green_t = t
        if self._startup_t0 == was:
            self._startup_t0 = t
        self._now = t
        self._out = self._build(t)

    def enter_flash(self, now: float, reason: str) -> None:
        """Vehicles FLASH_YELLOW, pedestrians DARK, at once, until :meth:`leave_flash`."""
        self._advance_clock(now)
        if self._phase != "flash":
            self._stats.flashes += 1
        self._flash_reason = reason or "flash"
        self._phase = "flash"
        self._signals = [Signal.DARK if p else Signal.FLASH_YELLOW for p in self._is_ped]
        self._green_since = [None] * self._n
        self._stage = None
        self._stage_green_t = None
        self._served = set()
        self._out = self._build(now)

    def leave_flash(self, now: float) -> None:
        """All RED for :attr:`startup_s`, then the start stage. No-op outside flash."""
        self._advance_clock(now)
        if self._phase != "flash":
            return
        self._phase = "startup"
        self._startup_t0 = now
        self._signals = [Signal.RED] * self._n
        self._green_end = [-math.inf] * self._n
        self._red_since = [-math.inf] * self._n
        self._flash_reason = ""
        self._out = self._build(now)

    # -- the state machine ------------------------------------------------------------------

    def _advance_clock(self, now: float) -> None:
        if not math.isfinite(now):
            raise ValueError(f"now: {now!r} is not a finite time")
        if now < self._now:
            raise ValueError(f"now: {now!r} is before the previous step {self._now!r}")
        self._now = now

    def _accept(self, request: Request) -> None:
        if request is self._standing:
            return  # (a strategy repeats its request between decisions) accepted already
        nxt = request.next_stage
        if nxt is not None and nxt not in self._stage_groups:
            self._stats.refused_requests += 1
            return
        if request.peds is not None and not self._ped_ids.issuperset(request.peds):
            self._stats.refused_requests += 1
            return
        self._standing = request

    def _walks_for(self, stage: str) -> frozenset[int]:
        """The crossings of ``stage`` that the standing request wants served."""
        peds = self._peds_of[stage]
        wanted = self._standing.peds
        if wanted is None:
            return peds
        return frozenset(i for i in peds if self._x.groups[i].id in wanted)

    def _green_start_stage(self, now: float) -> None:
        stage = self._start_stage
        self._walk = self._walks_for(stage)
        self._served = set(self._walk)
        for i in self._vehicles_of[stage] | self._walk:
            self._signals[i] = Signal.GREEN
            self._green_since[i] = now
        self._phase = "green"
        self._stage = stage
        self._stage_green_t = now

    def _end_walks(self, now: float) -> None:
        """A walk lasts exactly the crossing's walk time; then its clearance starts."""
        sig = self._signals
        for i in self._peds:
            if sig[i] is _GREEN:
                since = self._green_since[i]
                assert since is not None
                if now - since + TIME_EPS >= self._min_green[i]:  # _reached, inlined
                    sig[i] = _PED_CLEARANCE
                    self._green_end[i] = now
                    self._green_since[i] = None

    def _late_walks(self, now: float) -> None:
        """Serve a crossing of the running stage that is named after the stage started."""
        wanted = self._standing.peds
        stage = self._stage
        if wanted is None or stage is None:
            return
        for i in self._peds_of[stage]:
            if i in self._served or self._x.groups[i].id not in wanted:
                continue
            if self._may_open(i, now):
                self._signals[i] = Signal.GREEN
                self._green_since[i] = now
                self._served.add(i)

    def _may_open(self, j: int, now: float) -> bool:
        sig = self._signals
        if sig[j] is not _RED:
            return False
        green_end, red_since = self._green_end, self._red_since
        intergreen, all_red = self._x.intergreen, self._all_red
        for i in self._conflicts_of[j]:
            # (not open, and both _reached, inlined: every clearance step asks this)
            if (
                _IS_OPEN[sig[i]]
                or not now - green_end[i] + TIME_EPS >= intergreen[i][j]
                or not now - red_since[i] + TIME_EPS >= all_red[i][j]
            ):
                return False
        return True

    def _maybe_end_stage(self, now: float) -> None:
        stage, target = self._stage, self._standing.next_stage
        if stage is None or target is None or target == stage:
            return
        assert self._stage_green_t is not None
        maxed = _reached(now - self._stage_green_t, self._stage_max[stage])
        if not (self._standing.end_green or maxed):
            return
        keep_vehicles = self._vehicles_of[target]
        leaving = [i for i in self._vehicles_of[stage] if i not in keep_vehicles]
        for i in leaving:
            since = self._green_since[i]
            assert since is not None
            if not _reached(now - since, self._min_green[i]):
                return
        walk_next = self._walks_for(target)
        for i in self._peds_of[stage]:
            # A crossing ends its stage only once its walk and clearance are done, unless it
            # walks on in the next stage. A clearance that ends at this very step counts as
            # done (it turns RED below, in the same output), so the stage runs exactly as long
            # as its crossing needs, not a step more.
            sig = self._signals[i]
            if sig is Signal.GREEN and i in walk_next:
                continue
            if sig is Signal.GREEN:
                return
            if sig is Signal.PED_CLEARANCE and not _reached(
                now - self._green_end[i], self._x.clearance[i]
            ):
                return
        if not self._standing.end_green:
            self._stats.max_outs += 1
        for i in leaving:
            self._signals[i] = Signal.YELLOW
            self._green_end[i] = now
            self._green_since[i] = None
        self._walk = walk_next
        self._served = {i for i in walk_next if self._signals[i] is Signal.GREEN}
        self._phase = "clearance"
        self._stage = target
        self._stage_green_t = None

    def _serve_next_stage(self, now: float) -> None:
        assert self._stage is not None
        sig = self._signals
        all_green = True
        for j in self._vehicles_of[self._stage] | self._walk:
            if sig[j] is Signal.GREEN or (self._is_ped[j] and j in self._served):
                continue
            if self._may_open(j, now):
                sig[j] = Signal.GREEN
                self._green_since[j] = now
                if self._is_ped[j]:
                    self._served.add(j)
            else:
                all_green = False
        if all_green:
            self._phase = "green"
            self._stage_green_t = now
            self._stats.stage_changes += 1

    def _finish_clearances(self, now: float) -> None:
        sig = self._signals
        for i, s in enumerate(sig):
            if (s is _YELLOW or s is _PED_CLEARANCE) and _reached(
                now - self._green_end[i], self._clearance[i]
            ):
                sig[i] = _RED
                self._red_since[i] = now

    def _build(self, now: float, *, reuse: bool = False) -> EngineOutput:
        """The output of the current state at ``now``.

        ``reuse`` (the step only): keep the previous build's release times when the signals
        and green starts are the same. They then are: a release time reads ``_green_end`` only
        for a clearing crossing, and a step changes that only together with the signal (GREEN
        → PED_CLEARANCE). The other builds (confirm, start-up, flash) move times without a
        signal change, so they always compute afresh.
        """
        phase, stage = self._phase, self._stage
        if phase == "startup":
            nxt: str | None = self._start_stage
        else:
            nxt = self._standing.next_stage
            if nxt == stage or phase == "flash":
                nxt = None
        elapsed = 0.0
        if phase == "green" and self._stage_green_t is not None:
            elapsed = now - self._stage_green_t
        signals = tuple(self._signals)
        green_since = tuple(self._green_since)
        key = (signals, green_since)
        if not reuse or key != self._release_key:
            self._release = self._release_at()
            self._release_key = key
        return EngineOutput(
            now,
            signals,
            phase,
            stage if phase == "green" or phase == "clearance" else None,
            nxt,
            elapsed,
            green_since,
            self._release,
        )

    def _release_at(self) -> tuple[float, ...]:
        out: list[float] = []
        green_since, green_end = self._green_since, self._green_end
        min_green, clearance, is_ped = self._min_green, self._clearance, self._is_ped
        for i, s in enumerate(self._signals):
            since = green_since[i]
            if s is _GREEN and since is not None:
                hold = since + min_green[i]
                if is_ped[i]:
                    hold += clearance[i]
                out.append(hold)
            elif s is _PED_CLEARANCE:
                out.append(green_end[i] + clearance[i])
            else:
                out.append(-math.inf)
        return tuple(out)
