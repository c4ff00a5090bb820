"""What level a group of lights should show at an instant, and when that changes.

Everything here is a pure function of a :class:`GroupSchedule` and an instant the caller
passes in: nothing reads the clock, so the controller, the simulator and the tests all get the
same answer for the same instant (DESIGN.md, "pure core, one clock").

How a night is resolved
=======================
A *night* belongs to the day it starts on and runs from 12:00 local on that day D to 12:00
local on D+1 (:func:`night_of`, :func:`night_bounds`). The calendar picks one program per night.
Each step of that program gets an instant (:func:`resolve_steps`):

* a clock step at HH:MM ≥ 12:00 is on D, one before 12:00 on D+1, in local wall time.
  DST: a wall time in the hour that is skipped in spring (02:30 in Berlin on the last Sunday
  of March) happens at the instant the clocks jump (03:00 CEST); a wall time that occurs twice
  in autumn uses its first occurrence, so the step happens once, never twice.
* an evening sun step (sunset, dusk) uses the event of D, a morning one (sunrise, dawn) the
  event of D+1, plus the step's offset. When the event does not happen that day
  (:mod:`schedules.sun`): if the sun stays below, an evening anchor is the night's start and
  a morning anchor the night's end (lights on all night); if the sun stays above, both are the
  night's end (lights off all night). The offset is *not* applied then — there is no event to
  be "10 min after", and keeping the night's edges exact keeps the lights on across noon in a
  polar night.
* Steps are then made monotonic in the order they are listed: a step that falls before the
  previous one is moved to the previous one's instant (and, at equal instants, the later-listed
  step wins). Finally every instant is clamped to [night start, night end].

The level
=========
Walking the night's steps in order from the level the previous night ended with, a step at T
with ramp R moves linearly from the level at T to its level over [T, T+R]; a step that starts
while a ramp is running starts from the level reached. A ramp still running at noon carries on
into the next night. The previous night is itself evaluated from the level its own previous
night's program ends with (its last step's level): one night of look-back is enough, because a
night's end level depends on its start level only when ramps overlap across noon.

Overrides: among the group's overrides active at the instant, the one with the largest
:attr:`~schedules.model.Override.newest_key` sets the level at once (no ramp). Last, the lamp
driver's minimum dim level is applied (:func:`clamp_min_dim`).
"""

from __future__ import annotations

import datetime as dt
import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from types import MappingProxyType
from typing import Literal
from zoneinfo import ZoneInfo

from schedules.model import Anchor, LightingCalendar, LightingProgram, Location, Override, Step
from schedules.sun import SunEvent, sun_event

__all__ = [
    "NOON",
    "GroupSchedule",
    "LevelAt",
    "LevelSegment",
    "ResolvedStep",
    "Transition",
    "clamp_min_dim",
    "evaluate",
    "level_at",
    "level_segments",
    "local_instant",
    "next_change_after",
    "night_bounds",
    "night_of",
    "resolve_steps",
    "transitions",
]

#: Nights turn over at local noon: the lights are off then everywhere but in a polar night.
NOON = dt.time(12, 0)
_DAY = dt.timedelta(days=1)
#: Levels closer than this are equal (they come out of float ramps).
_EPS = 1e-9
#: Plans kept per GroupSchedule before the memo is cleared (a few years of nights).
_MEMO_MAX = 4096


# ---- levels ---------------------------------------------------------------------------------


def clamp_min_dim(level: float, min_level: float) -> float:
    """The level a lamp driver can actually show for a wanted ``level``.

    0 stays 0 (off); any other level below ``min_level`` (the driver's lowest dim level) is
    raised to it, because a driver asked for less than it can do either flickers or goes off,
    and a dark street where the schedule wants light is the unsafe side. Levels are capped at
    100 %.
    """
    if not level > 0.0:  # also catches NaN, which must never reach a lamp
        return 0.0
    return min(100.0, max(level, min_level))


def _require_aware(instant: dt.datetime, what: str = "instant") -> None:
    if not isinstance(instant, dt.datetime):
        raise TypeError(f"{what} must be a datetime, not {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(
            f"{what} {instant.isoformat()} is naive; pass a timezone-aware datetime "
            "(a naive time could be read in any zone, and the schedule must not guess)"
        )


# ---- local time -----------------------------------------------------------------------------


def local_instant(day: dt.date, wall: dt.time, tz: dt.tzinfo) -> dt.datetime:
    """The instant the wall clock in ``tz`` shows ``wall`` on ``day``, aware in ``tz``.

    A wall time that is skipped (spring forward) resolves to the instant the clocks jump — the
    first instant after the gap; one that occurs twice (fall back) resolves to the first
    occurrence. So every wall time maps to exactly one instant.
    """
    naive = dt.datetime.combine(day, wall.replace(tzinfo=None))
    first = naive.replace(tzinfo=tz, fold=0)
    back = first.astimezone(dt.UTC).astimezone(tz)
    if back.replace(tzinfo=None) == naive:
        return back
    # In a gap: fold=0 reads the time with the offset from before the jump (an instant after
    # it), fold=1 with the offset from after (an instant before it). The jump lies in between;
    # find it to the second by bisection (zones switch on whole seconds).
    before = math.floor(naive.replace(tzinfo=tz, fold=1).timestamp())
    after = math.ceil(first.timestamp())
    if before >= after:  # not a forward jump after all; keep the plain reading
        return back
    offset_before = dt.datetime.fromtimestamp(before, tz).utcoffset()
    while after - before > 1:
        mid = (before + after) // 2
        if dt.datetime.fromtimestamp(mid, tz).utcoffset() == offset_before:
            before = mid
        else:
            after = mid
    return dt.datetime.fromtimestamp(after, tz)


@lru_cache(maxsize=8192)
def _night_span(night: dt.date, tz: dt.tzinfo) -> tuple[float, float]:
    return (
        local_instant(night, NOON, tz).timestamp(),
        local_instant(night + _DAY, NOON, tz).timestamp(),
    )


def night_bounds(night: dt.date, tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """``(start, end)`` of the night that starts on ``night``: 12:00 local on it and on the
    next day, aware in ``tz``. The night is the half-open interval [start, end)."""
    start, end = _night_span(night, tz)
    return dt.datetime.fromtimestamp(start, tz), dt.datetime.fromtimestamp(end, tz)


def _night_of_ts(t: float, tz: dt.tzinfo) -> dt.date:
    local = dt.datetime.fromtimestamp(t, tz)
    night = local.date() if local.time() >= NOON else local.date() - _DAY
    # Decide by the instants themselves, so that night_of agrees with night_bounds even in a
    # zone whose clocks change around noon.
    start, end = _night_span(night, tz)
    if t < start:
        return night - _DAY
    if t >= end:
        return night + _DAY
    return night


def night_of(instant: dt.datetime, tz: dt.tzinfo) -> dt.date:
    """The night ``instant`` belongs to: 12:00 local on D up to 12:00 on D+1 is night D.

    ``instant`` must be aware (``ValueError`` otherwise); ``tz`` is the site's zone.
    """
    _require_aware(instant)
    return _night_of_ts(instant.timestamp(), tz)


# ---- resolving a program's steps ------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedStep:
    """A program step placed on one night.

    ``raw`` is the anchor plus offset (the night's edge when the sun event does not happen),
    before the steps are put in order; ``at`` is when the step takes effect, after ordering and
    clamping to the night. ``event`` is the sun event used (``None`` for a clock step).
    """

    index: int
    step: Step
    raw: dt.datetime
    at: dt.datetime
    event: SunEvent | None = None

    @property
    def moved(self) -> bool:
        """Whether ordering or clamping moved the step away from its own time."""
        return self.at.timestamp() != self.raw.timestamp()  # instants, not wall-clock readings

    def label(self, tz: dt.tzinfo | None = None) -> str:
        """Human text for the step's time: ``"23:00"``, ``"sunset+10min = 18:52"``,
        ``"sunset: no sunset (sun stays below)"``, with ``→ HH:MM`` when it was moved."""
        zone = tz or self.at.tzinfo
        at = self.step.at
        if at.anchor is Anchor.TIME:
            text = str(at)
        elif self.event is not None and self.event.at is None:
            text = f"{at}: {self.event.describe()}"
        else:
            text = f"{at} = {self.raw.astimezone(zone):%H:%M}"
        local = self.at.astimezone(zone)
        if self.moved or (at.anchor is Anchor.TIME and _hhmm(local) != text):
            text += f" → {local:%H:%M}"
        return text


def _hhmm(t: dt.datetime) -> str:
    return t.strftime("%H:%M:%S" if t.second else "%H:%M")


def resolve_steps(
    program: LightingProgram, location: Location, night: dt.date
) -> tuple[ResolvedStep, ...]:
    """Place every step of ``program`` on ``night`` (see the module docstring for the rules).

    The result is in the program's order, and its ``at`` instants are non-decreasing and within
    [night start, night end].
    """
    tz = location.tz
    # Work in UTC: Python compares and adds datetimes that share a zone by their wall-clock
    # reading, ignoring the offset, which goes wrong in the repeated hour of a DST change.
    start, end = (t.astimezone(dt.UTC) for t in night_bounds(night, tz))
    raws: list[tuple[dt.datetime, SunEvent | None]] = []
    for step in program.steps:
        at = step.at
        if at.anchor is Anchor.TIME:
            assert at.time is not None  # guaranteed by StepTime's validator
            day = night if at.time.replace(tzinfo=None) >= NOON else night + _DAY
            raws.append((local_instant(day, at.time, tz).astimezone(dt.UTC), None))
            continue
        event = sun_event(location, night if at.anchor.is_evening else night + _DAY, at.anchor)
        if event.at is not None:
            raws.append((event.at.astimezone(dt.UTC) + at.offset, event))
        elif event.state == "always_dark" and at.anchor.is_evening:
            raws.append((start, event))  # dark all day: on from the start of the night
        else:
            raws.append((end, event))  # morning anchor, or the sun never goes down: at the end
    out: list[ResolvedStep] = []
    floor = start
    for i, (step, (raw, used)) in enumerate(zip(program.steps, raws, strict=True)):
        when = min(max(raw, floor), end)
        floor = when
        out.append(ResolvedStep(i, step, raw.astimezone(tz), when.astimezone(tz), used))
    return tuple(out)


# ---- the schedule of a group ----------------------------------------------------------------


@dataclass(frozen=True)
class _Ramp:
    """The program's level as a function of time: ``start`` at ``t0`` going linearly to
    ``target`` over ``ramp_s`` seconds (POSIX seconds; a constant when ``ramp_s`` is 0)."""

    t0: float
    start: float
    target: float
    ramp_s: float

    def level(self, t: float) -> float:
        # ``end`` treats a ramp between (nearly) equal levels as a jump; so must this.
        if t >= self.end:
            return self.target
        if t <= self.t0:
            return self.start
        return self.start + (self.target - self.start) * (t - self.t0) / self.ramp_s

    @property
    def end(self) -> float:
        """When the level stops changing."""
        if self.ramp_s <= 0.0 or abs(self.start - self.target) <= _EPS:
            return self.t0
        return self.t0 + self.ramp_s


@dataclass(frozen=True)
class _Plan:
    """One night of one program, resolved: its steps and the level function after each."""

    night: dt.date
    program: str
    start: float
    end: float
    steps: tuple[ResolvedStep, ...]
    times: tuple[float, ...]
    initial: _Ramp  # carried over from the previous night
    states: tuple[_Ramp, ...]  # states[i]: in force from steps[i] on

    @property
    def final(self) -> _Ramp:
        return self.states[-1] if self.states else self.initial

    def index(self, t: float, inclusive: bool) -> int:
        """Index of the last step applied at ``t`` (or just before it); -1 for none."""
        return (bisect_right if inclusive else bisect_left)(self.times, t) - 1

    def state(self, i: int) -> _Ramp:
        return self.states[i] if i >= 0 else self.initial


@dataclass(frozen=True)
class _OwnOverride:
    start: float
    until: float
    key: tuple[float, float, int]
    override: Override

    def active(self, t: float, inclusive: bool) -> bool:
        # inclusive: at t (start ≤ t < until); otherwise just before t (start < t ≤ until).
        if inclusive:
            return self.start <= t < self.until
        return self.start < t <= self.until


@dataclass
class _Memo:
    """The nights a :class:`GroupSchedule` has worked out. Bounded by clearing it all now and
    then: a controller only ever needs the last few nights, a year preview a year's."""

    resolved: dict[dt.date, tuple[str, tuple[ResolvedStep, ...]]] = field(default_factory=dict)
    carry: dict[dt.date, _Ramp] = field(default_factory=dict)
    plans: dict[dt.date, _Plan] = field(default_factory=dict)

    def trim(self) -> None:
        if len(self.resolved) + len(self.carry) + len(self.plans) >= _MEMO_MAX:
            self.resolved.clear()
            self.carry.clear()
            self.plans.clear()


@dataclass(frozen=True)
class GroupSchedule:
    """Everything that decides one light group's level: where, which calendar and programs,
    the group's overrides and its drivers' minimum dim level (0–100 %).

    The calendar's program names must all be in ``programs`` (``ValueError`` otherwise), so
    evaluation can never meet an unknown program. ``programs`` is stored read-only and
    ``overrides`` as a tuple; overrides for other groups are ignored. The object memoises the
    nights it has resolved, so keep one per configuration rather than building one per call.
    """

    group: str
    location: Location
    calendar: LightingCalendar
    programs: Mapping[str, LightingProgram]
    overrides: tuple[Override, ...] = ()
    min_level: float = 0.0
    _own: tuple[_OwnOverride, ...] = field(default=(), init=False, repr=False, compare=False)
    _memo: _Memo = field(default_factory=_Memo, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "programs", MappingProxyType(dict(self.programs)))
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if not 0.0 <= self.min_level <= 100.0:
            raise ValueError(f"min_level {self.min_level} is outside 0–100 %")
        names = [self.calendar.default, *(r.program for r in self.calendar.rules)]
        missing = sorted({n for n in names if n not in self.programs})
        if missing:
            raise ValueError(
                f"calendar {self.calendar.name!r} uses unknown program(s) {', '.join(missing)} "
                f"(known: {', '.join(sorted(self.programs)) or 'none'})"
            )
        own = []
        for i, ov in enumerate(self.overrides):
            if self.group not in ov.groups:
                continue
            created = (ov.created or ov.start).timestamp()
            until = math.inf if ov.until is None else ov.until.timestamp()
            own.append(
                _OwnOverride(ov.start.timestamp(), until, (created, ov.start.timestamp(), i), ov)
            )
        object.__setattr__(self, "_own", tuple(own))

    def __hash__(self) -> int:
        # The calendar and programs hold lists (unhashable); equal schedules still hash equal.
        return hash((self.group, self.location, self.calendar.name, self.min_level))

    @property
    def tz(self) -> ZoneInfo:
        """The site's time zone."""
        return self.location.tz

    def program_for(self, night: dt.date) -> LightingProgram:
        """The program the calendar picks for ``night``."""
        return self.programs[self.calendar.program_for(night)]


def _resolved(gs: GroupSchedule, night: dt.date) -> tuple[str, tuple[ResolvedStep, ...]]:
    hit = gs._memo.resolved.get(night)
    if hit is None:
        name = gs.calendar.program_for(night)
        hit = (name, resolve_steps(gs.programs[name], gs.location, night))
        gs._memo.trim()
        gs._memo.resolved[night] = hit
    return hit


def _build_plan(gs: GroupSchedule, night: dt.date, initial: _Ramp) -> _Plan:
    name, steps = _resolved(gs, night)
    start, end = _night_span(night, gs.tz)
    times = tuple(rs.at.timestamp() for rs in steps)
    states: list[_Ramp] = []
    state = initial
    for rs, t in zip(steps, times, strict=True):
        # A step starts from wherever the level is, mid-ramp included.
        state = _Ramp(t, state.level(t), rs.step.level, rs.step.ramp_s)
        states.append(state)
    return _Plan(night, name, start, end, steps, times, initial, tuple(states))


def _carry_into(gs: GroupSchedule, night: dt.date) -> _Ramp:
    """The level function the night before ``night`` ends with (one night of look-back)."""
    hit = gs._memo.carry.get(night)
    if hit is None:
        before = night - _DAY
        # The night before that is assumed to have ended at its program's last level.
        steps = gs.program_for(before - _DAY).steps
        seed = _Ramp(0.0, 0.0, steps[-1].level if steps else 0.0, 0.0)
        hit = _build_plan(gs, before, seed).final
        gs._memo.trim()
        gs._memo.carry[night] = hit
    return hit


def _plan(gs: GroupSchedule, night: dt.date) -> _Plan:
    hit = gs._memo.plans.get(night)
    if hit is None:
        hit = _build_plan(gs, night, _carry_into(gs, night))
        gs._memo.trim()
        gs._memo.plans[night] = hit
    return hit


@dataclass(frozen=True)
class _Effective:
    """What sets the level at (or just before) an instant."""

    state: _Ramp
    override: _OwnOverride | None
    plan: _Plan
    index: int  # step of ``plan`` in force, -1: the level carried from the night before


def _program_state(gs: GroupSchedule, t: float, inclusive: bool) -> tuple[_Plan, int, _Ramp]:
    plan = _plan(gs, _night_of_ts(t, gs.tz))
    i = plan.index(t, inclusive)
    if i < 0 and not inclusive and t == plan.start:
        # Just before noon: the previous night's last moments, before its end-of-night steps.
        prev = _plan(gs, plan.night - _DAY)
        j = prev.index(t, inclusive=False)
        return prev, j, prev.state(j)
    return plan, i, plan.state(i)


def _override_at(gs: GroupSchedule, t: float, inclusive: bool) -> _OwnOverride | None:
    best: _OwnOverride | None = None
    for own in gs._own:
        if own.active(t, inclusive) and (best is None or own.key > best.key):
            best = own
    return best


def _effective(gs: GroupSchedule, t: float, inclusive: bool = True) -> _Effective:
    plan, i, state = _program_state(gs, t, inclusive)
    own = _override_at(gs, t, inclusive)
    if own is not None:
        # An override holds its level from its start: a constant, no ramp.
        return _Effective(
            _Ramp(own.start, own.override.level, own.override.level, 0.0), own, plan, i
        )
    return _Effective(state, None, plan, i)


def _level_ts(gs: GroupSchedule, t: float) -> float:
    own = _override_at(gs, t, inclusive=True)
    if own is not None:
        return clamp_min_dim(own.override.level, gs.min_level)
    _, _, state = _program_state(gs, t, inclusive=True)
    return clamp_min_dim(state.level(t), gs.min_level)


# ---- public evaluation ----------------------------------------------------------------------


@dataclass(frozen=True)
class LevelAt:
    """The level a group should show at one instant, and why.

    ``target`` is where the level is heading (the end of the ramp in progress; equal to
    ``level`` when steady) and ``ramp_end`` when that ramp ends (``None`` when steady), so a
    controller can hand the remaining ramp to the lamps. Levels have the minimum dim level
    applied. ``program`` is the program that sets the level (``None`` under an override).
    """

    level: float
    source: Literal["program", "override"]
    program: str | None
    override_id: str | None
    detail: str
    target: float
    ramp_end: dt.datetime | None
    night: dt.date


def _step_text(plan: _Plan, i: int, tz: dt.tzinfo) -> str:
    if i < 0:
        return (
            f"{plan.program} before its first step: level carried over from the night of "
            f"{plan.night - _DAY}"
        )
    rs = plan.steps[i]
    return f"{plan.program} step {i + 1}/{len(plan.steps)} ({rs.label(tz)})"


def _ramp_text(state: _Ramp, t: float, tz: dt.tzinfo, min_level: float) -> str:
    if t >= state.end:
        return ""
    until = dt.datetime.fromtimestamp(state.end, tz)
    return f", ramping to {clamp_min_dim(state.target, min_level):g} % until {_hhmm(until)}"


def _override_text(own: _OwnOverride) -> str:
    ov = own.override
    return f"override {ov.id}" + (f" ({ov.reason})" if ov.reason else "")


def evaluate(group: GroupSchedule, instant: dt.datetime) -> LevelAt:
    """The level ``group`` should show at ``instant`` (aware), with its source and reason.

    ``detail`` reads like ``"night-std step 2/4 (23:00)"`` (steps are counted from 1 here;
    config paths count from 0). Naive datetimes raise ``ValueError``.
    """
    _require_aware(instant)
    tz = group.tz
    t = instant.timestamp()
    eff = _effective(group, t)
    night = _night_of_ts(t, tz)
    if eff.override is not None:
        level = clamp_min_dim(eff.override.override.level, group.min_level)
        return LevelAt(
            level=level,
            source="override",
            program=None,
            override_id=eff.override.override.id,
            detail=f"{_override_text(eff.override)}: {eff.override.override.level:g} %",
            target=level,
            ramp_end=None,
            night=night,
        )
    state = eff.state
    ramping = t < state.end
    return LevelAt(
        level=clamp_min_dim(state.level(t), group.min_level),
        source="program",
        program=eff.plan.program,
        override_id=None,
        detail=_step_text(eff.plan, eff.index, tz) + _ramp_text(state, t, tz, group.min_level),
        target=clamp_min_dim(state.target, group.min_level),
        ramp_end=dt.datetime.fromtimestamp(state.end, tz) if ramping else None,
        night=night,
    )


def level_at(group: GroupSchedule, instant: dt.datetime) -> float:
    """The level (0–100 %) ``group`` should show at ``instant``.

    Total for any aware instant in the years 1901–2099, at any latitude; a naive datetime
    raises ``ValueError``. The same as ``evaluate(group, instant).level``, only faster.
    """
    _require_aware(instant)
    return _level_ts(group, instant.timestamp())


@dataclass(frozen=True)
class Transition:
    """An instant where the wanted level starts to change.

    ``level`` is the level heading for (minimum dim level applied), reached ``ramp_s`` seconds
    after ``at`` (0: at once). ``kind`` is ``"step"`` for a program step,
    ``"override_start"`` when an override takes over and ``"override_end"`` when the program
    takes back over. ``source`` says which step or override, for people.
    """

    at: dt.datetime
    level: float
    ramp_s: float
    source: str
    kind: Literal["step", "override_start", "override_end"]


def _shape(eff: _Effective, t: float, min_level: float) -> tuple[float, float, float]:
    """What the wanted level does from ``t`` on: (level now, target, when it gets there)."""
    st = eff.state
    now, target = clamp_min_dim(st.level(t), min_level), clamp_min_dim(st.target, min_level)
    return now, target, max(st.end, t) if now != target else t


def _same(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    # Exact: both sides come out of the same arithmetic when nothing changes, and any
    # tolerance would hide a real change (1e-6 % → 0 is on → off).
    return a == b


def transitions(group: GroupSchedule, night: dt.date) -> list[Transition]:
    """Every instant in [12:00 on ``night``, 12:00 the next day) where the wanted level starts
    to change — program steps, override starts and ends — in time order.

    Events at the same instant are merged into the one that wins; a step that changes nothing
    (same level, or hidden under an override) is left out.
    """
    tz = group.tz
    plan = _plan(group, night)
    start, end = plan.start, plan.end
    candidates = {start, *(t for t in plan.times if start <= t < end)}
    for own in group._own:
        candidates.update(t for t in (own.start, own.until) if start <= t < end)
    out: list[Transition] = []
    for t in sorted(candidates):
        before = _effective(group, t, inclusive=False)
        after = _effective(group, t, inclusive=True)
        shape = _shape(after, t, group.min_level)
        if _same(_shape(before, t, group.min_level), shape):
            continue
        kind: Literal["step", "override_start", "override_end"]
        if after.override is not None:
            kind, source = "override_start", _override_text(after.override)
        elif before.override is not None:
            kind = "override_end"
            source = f"end of {_override_text(before.override)}; "
            source += _step_text(after.plan, after.index, tz)
        else:
            kind, source = "step", _step_text(after.plan, after.index, tz)
        out.append(
            Transition(
                at=dt.datetime.fromtimestamp(t, tz),
                level=shape[1],
                ramp_s=max(0.0, shape[2] - t),
                source=source,
                kind=kind,
            )
        )
    return out


def next_change_after(group: GroupSchedule, instant: dt.datetime) -> dt.datetime | None:
    """The first transition strictly after ``instant`` in this night or the next two, for
    waking the controller; ``None`` if the level does not change in that time."""
    _require_aware(instant)
    night = night_of(instant, group.tz)
    for k in range(3):
        for tr in transitions(group, night + k * _DAY):
            if tr.at.timestamp() > instant.timestamp():  # instants, whatever the zones
                return tr.at
    return None


# ---- the level as line segments (previews, energy) ------------------------------------------


@dataclass(frozen=True)
class LevelSegment:
    """On [start, end) the wanted level goes linearly from ``start_level`` to ``end_level``
    (the value approached at ``end``). Levels are *before* the minimum dim level is applied,
    which is not linear; apply :func:`clamp_min_dim` to values taken from a segment."""

    start: dt.datetime
    end: dt.datetime
    start_level: float
    end_level: float


def _segments_ts(gs: GroupSchedule, a: float, b: float) -> list[tuple[float, float, float, float]]:
    """``(t0, t1, level0, level1)`` pieces, linear in between, covering [a, b)."""
    if b <= a:
        return []
    tz = gs.tz
    first, last = _night_of_ts(a, tz), _night_of_ts(b, tz)
    points = {a, b}
    night = first
    while night <= last:
        plan = _plan(gs, night)
        points.add(plan.start)
        points.update(plan.times)
        points.update(s.end for s in (plan.initial, *plan.states))
        night += _DAY
    for own in gs._own:
        points.update((own.start, own.until))
    cuts = sorted(p for p in points if a <= p <= b)
    out = []
    for t0, t1 in pairwise(cuts):
        state = _effective(gs, t0).state
        out.append((t0, t1, state.level(t0), state.level(t1)))
    return out


def level_segments(
    group: GroupSchedule, start: dt.datetime, end: dt.datetime
) -> list[LevelSegment]:
    """The wanted level on [start, end) as consecutive linear pieces (exact, no sampling)."""
    _require_aware(start, "start")
    _require_aware(end, "end")
    tz = group.tz
    return [
        LevelSegment(dt.datetime.fromtimestamp(t0, tz), dt.datetime.fromtimestamp(t1, tz), l0, l1)
        for t0, t1, l0, l1 in _segments_ts(group, start.timestamp(), end.timestamp())
    ]
