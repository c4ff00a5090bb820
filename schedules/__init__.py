"""Lighting schedules, pure: programs, calendars, overrides, sun times, evaluation, previews.

Nothing here reads the clock, sleeps or touches the network: every function takes the instant
it is about and returns a value (DESIGN.md, "pure core"). The only IO is writing preview PNGs
(:func:`plot_night`, :func:`plot_year`).

* :mod:`schedules.model` — the config's words: :class:`Location`, :class:`LightingProgram`,
  :class:`LightingCalendar`, :class:`Override`, …
* :mod:`schedules.sun` — sunset, sunrise, civil dusk and dawn, total at any latitude.
* :mod:`schedules.evaluate` — the level of a group at an instant and its transitions.
* :mod:`schedules.validate` — what a program or calendar does wrong over a year.
* :mod:`schedules.energy` — power of a dimmed LED lamp.
* :mod:`schedules.preview` — night tables and charts, year summaries.
"""

from schedules.energy import LampPowerModel
from schedules.evaluate import (
    GroupSchedule,
    LevelAt,
    LevelSegment,
    ResolvedStep,
    Transition,
    clamp_min_dim,
    evaluate,
    level_at,
    level_segments,
    local_instant,
    next_change_after,
    night_bounds,
    night_of,
    resolve_steps,
    transitions,
)
from schedules.model import (
    Anchor,
    CalendarRule,
    Level,
    LightingCalendar,
    LightingProgram,
    Location,
    NthWeekday,
    Override,
    Step,
    StepTime,
)
from schedules.preview import (
    NightSummary,
    YearSummary,
    format_night_table,
    format_transition,
    night_table,
    plot_night,
    plot_year,
    sample_levels,
    year_summary,
)
from schedules.sun import SunEvent, SunState, event_elevation, solar_noon, sun_elevation, sun_event
from schedules.validate import Problem, check_calendar, check_program

__all__ = [
    "Anchor",
    "CalendarRule",
    "GroupSchedule",
    "LampPowerModel",
    "Level",
    "LevelAt",
    "LevelSegment",
    "LightingCalendar",
    "LightingProgram",
    "Location",
    "NightSummary",
    "NthWeekday",
    "Override",
    "Problem",
    "ResolvedStep",
    "Step",
    "StepTime",
    "SunEvent",
    "SunState",
    "Transition",
    "YearSummary",
    "check_calendar",
    "check_program",
    "clamp_min_dim",
    "evaluate",
    "event_elevation",
    "format_night_table",
    "format_transition",
    "level_at",
    "level_segments",
    "local_instant",
    "next_change_after",
    "night_bounds",
    "night_of",
    "night_table",
    "plot_night",
    "plot_year",
    "resolve_steps",
    "sample_levels",
    "solar_noon",
    "sun_elevation",
    "sun_event",
    "transitions",
    "year_summary",
]
