"""Sanity checks on programs and calendars, beyond what pydantic can see field by field.

Pydantic already rejects a level of 120 % or a malformed time. What it cannot see is what a
program *does* on the nights of a year at one site: a clock step that falls before the sunset
step in June, a program that leaves the lights on in daylight, a calendar rule that can never
win. These checks find those, each with a path into the config, so ``cityctl validate`` can say
``programs[2].steps[3].at: 23:00 falls before sunset+10min (18:52) on 2026-06-21``.

Paths are relative to the checked object (``steps[3].at``, ``rules[1].program``) and count
from 0 like pydantic's; :meth:`Problem.under` puts a prefix in front.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

from schedules.evaluate import GroupSchedule, ResolvedStep, _plan, night_bounds, resolve_steps
from schedules.model import Anchor, CalendarRule, LightingCalendar, LightingProgram, Location

__all__ = ["Problem", "check_calendar", "check_program"]

_DAY = dt.timedelta(days=1)
#: Weekdays and dates line up again every 28 years between 1901 and 2099 (no skipped leap
#: year in that span), so 28 years of dates show everything an open-ended rule can match.
_CYCLE_YEARS = 28
_FIRST, _LAST = dt.date(1901, 1, 1), dt.date(2099, 12, 31)

#: Findings by the checks' inputs (as JSON). The checks are pure and slow (a year of sun
#: times per program, 28 years of dates per calendar), and the same programs and calendars are
#: checked again and again: at every start by ``load_config`` and then by the schedule store's
#: bootstrap, and by every API save for the parts it did not touch. Cleared when full.
_CACHE_MAX = 512
_checked: dict[tuple[object, ...], tuple[Problem, ...]] = {}


def _remembered(key: tuple[object, ...], check: Callable[[], list[Problem]]) -> list[Problem]:
    """``check()``'s findings, computed once per ``key``."""
    found = _checked.get(key)
    if found is None:
        found = tuple(check())
        if len(_checked) >= _CACHE_MAX:
            _checked.clear()
        _checked[key] = found
    return list(found)


@dataclass(frozen=True)
class Problem:
    """One finding: where (``path``), what (``message``) and how bad (``severity``)."""

    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def under(self, prefix: str) -> Problem:
        """The same problem with ``prefix`` (e.g. ``"programs[2]"``) in front of its path."""
        return Problem(
            f"{prefix}.{self.path}" if self.path else prefix, self.message, self.severity
        )


# ---- programs -------------------------------------------------------------------------------


def _real(rs: ResolvedStep) -> bool:
    """Whether the step has its own time (a clock time or a sun event that happens).

    Steps whose sun event is absent sit on the night's edge by design (polar night, midnight
    sun), and being out of order there is how the lights stay on or off all night.
    """
    return rs.event is None or rs.event.at is not None


def _when(rs: ResolvedStep, tz: dt.tzinfo, seconds: bool = False) -> str:
    if rs.step.at.anchor is Anchor.TIME:
        return str(rs.step.at)
    fmt = "%H:%M:%S" if seconds else "%H:%M"
    return f"{rs.step.at} ({rs.raw.astimezone(tz).strftime(fmt)})"


def _pair(later: ResolvedStep, earlier: ResolvedStep, tz: dt.tzinfo) -> tuple[str, str]:
    """Both times as text; with seconds when the minutes alone would read the same."""
    a, b = _when(later, tz), _when(earlier, tz)
    if later.raw.astimezone(tz).strftime("%H:%M") == earlier.raw.astimezone(tz).strftime("%H:%M"):
        a, b = _when(later, tz, seconds=True), _when(earlier, tz, seconds=True)
    return a, b


def _more(count: int, year: int) -> str:
    return f" and {count - 1} more night{'s' if count > 2 else ''} of {year}" if count > 1 else ""


def check_program(program: LightingProgram, location: Location, year: int) -> list[Problem]:
    """Problems ``program`` shows at ``location`` over the nights that start in ``year``.

    * error ``steps[i].at``: on some nights step i resolves before step i-1 (it would be moved
      to run together with it); names the first such night and both times.
    * error ``steps``: the program never turns the lights off in daytime (its last level is
      above 0, so the lights burn through the day).
    * warning ``steps``: every level is 0, the lights never come on.
    * warning ``steps[i].at``: the step falls outside its night (12:00–12:00) and is clamped.
    """
    key = ("program", program.model_dump_json(), location.model_dump_json(), year)
    return _remembered(key, lambda: _check_program(program, location, year))


def _check_program(program: LightingProgram, location: Location, year: int) -> list[Problem]:
    tz = location.tz
    problems: list[Problem] = []
    order: dict[int, tuple[str, int]] = {}
    outside: dict[int, tuple[str, int]] = {}
    night = dt.date(year, 1, 1)
    while night.year == year:
        steps = resolve_steps(program, location, night)
        start, end = night_bounds(night, tz)
        for i, rs in enumerate(steps):
            if _real(rs) and not start.timestamp() <= rs.raw.timestamp() <= end.timestamp():
                first = outside.get(i)
                text = (
                    f"{_when(rs, tz)} falls outside the night of {night} (12:00 to 12:00) "
                    f"and runs at {rs.at:%H:%M} instead"
                )
                outside[i] = (first[0] if first else text, (first[1] if first else 0) + 1)
            if i == 0:
                continue
            prev = steps[i - 1]
            if _real(rs) and _real(prev) and rs.raw.timestamp() < prev.raw.timestamp():
                first = order.get(i)
                later, earlier = _pair(rs, prev, tz)
                text = f"{later} falls before {earlier} on {prev.raw.astimezone(tz).date()}"
                order[i] = (first[0] if first else text, (first[1] if first else 0) + 1)
        night += _DAY
    for i, (text, count) in sorted(order.items()):
        problems.append(
            Problem(
                f"steps[{i}].at",
                f"{text}{_more(count, year)}; it then runs together with the step before",
            )
        )
    for i, (text, count) in sorted(outside.items()):
        problems.append(Problem(f"steps[{i}].at", f"{text}{_more(count, year)}", "warning"))

    # The level a night ends with is where the last step heads for (steps are kept in order,
    # so the last one listed acts last). Check it through the evaluator anyway, so that this
    # stays true to whatever evaluation does.
    gs = GroupSchedule(
        group="check",
        location=location,
        calendar=LightingCalendar(name="check", default=program.name),
        programs={program.name: program},
    )
    end_level = _plan(gs, dt.date(year, 1, 1)).final.target
    if end_level > 0.0:
        problems.append(
            Problem(
                "steps",
                f"never turns the lights off in daytime: the last step leaves them at "
                f"{end_level:g} % until the next evening (end with a step to 0, e.g. "
                "'sunrise-10min')",
            )
        )
    if all(s.level == 0.0 for s in program.steps):
        problems.append(
            Problem("steps", "keeps the lights off all night: every step is 0 %", "warning")
        )
    return problems


# ---- calendars ------------------------------------------------------------------------------


def _window(rules: list[CalendarRule]) -> tuple[dt.date, dt.date]:
    """Dates enough to see every rule's behaviour: all explicit dates, plus a whole 28-year
    cycle before and after them for the open-ended rules."""
    explicit = [d for r in rules for d in (*r.dates, r.from_date, r.to_date) if d is not None]
    if not explicit:
        return dt.date(2000, 1, 1), dt.date(2000 + _CYCLE_YEARS, 1, 1) - _DAY
    lo, hi = min(explicit), max(explicit)
    lo = max(_FIRST, lo.replace(year=max(_FIRST.year, lo.year - _CYCLE_YEARS), day=1))
    hi = min(_LAST, hi.replace(year=min(_LAST.year, hi.year + _CYCLE_YEARS), day=28))
    return lo, hi


def _matching(rule: CalendarRule, window: tuple[dt.date, dt.date]) -> set[dt.date]:
    if rule.dates:
        return {d for d in rule.dates if rule.matches(d)}
    day = max(rule.from_date or window[0], window[0])
    last = min(rule.to_date or window[1], window[1])
    out = set()
    while day <= last:
        if rule.matches(day):
            out.add(day)
        day += _DAY
    return out


def _unconditional(rule: CalendarRule) -> bool:
    return not (
        rule.dates
        or rule.from_date
        or rule.to_date
        or rule.yearless
        or rule.weekdays
        or rule.nth_weekday
    )


def _rule_name(rule: CalendarRule, i: int) -> str:
    return f"rules[{i}]" + (f" ({rule.name})" if rule.name else "")


def check_calendar(calendar: LightingCalendar, programs: Collection[str]) -> list[Problem]:
    """Problems in ``calendar`` given the known program names (a mapping by name works too).

    * error ``default`` / ``rules[i].program``: unknown program.
    * warning ``rules[i]``: the rule never decides a night — it matches no date at all, or
      every night it matches is taken first by earlier rules (first match wins).
    * warning ``default``: a rule without conditions matches every night, so the default is
      never used.
    """
    # Only the program names matter (a mapping by name gives its keys).
    key = ("calendar", calendar.model_dump_json(), tuple(sorted(programs)))
    return _remembered(key, lambda: _check_calendar(calendar, programs))


def _check_calendar(calendar: LightingCalendar, programs: Collection[str]) -> list[Problem]:
    problems: list[Problem] = []
    known = ", ".join(sorted(programs)) or "none"
    if calendar.default not in programs:
        problems.append(
            Problem("default", f"unknown program {calendar.default!r} (known: {known})")
        )
    for i, rule in enumerate(calendar.rules):
        if rule.program not in programs:
            problems.append(
                Problem(f"rules[{i}].program", f"unknown program {rule.program!r} (known: {known})")
            )

    window = _window(calendar.rules)
    taken: set[dt.date] = set()
    takers: list[tuple[int, set[dt.date]]] = []
    for i, rule in enumerate(calendar.rules):
        mine = _matching(rule, window)
        if not mine:
            problems.append(
                Problem(f"rules[{i}]", "never matches: no date meets all its conditions", "warning")
            )
        elif mine <= taken:
            earlier = [_rule_name(calendar.rules[k], k) for k, won in takers if won & mine]
            problems.append(
                Problem(
                    f"rules[{i}]",
                    "never applies: every night it matches is taken first by "
                    + ", ".join(earlier)
                    + " (the first matching rule wins)",
                    "warning",
                )
            )
        takers.append((i, mine - taken))  # the nights this rule actually decides
        taken |= mine
    for i, rule in enumerate(calendar.rules):
        if _unconditional(rule):
            problems.append(
                Problem(
                    "default",
                    f"never used: {_rule_name(rule, i)} has no conditions and matches every night",
                    "warning",
                )
            )
            break
    return problems
