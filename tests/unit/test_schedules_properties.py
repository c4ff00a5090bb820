"""Properties of evaluation that must hold for any program, calendar, override and place.

Locations include polar ones (latitudes −89…89) and zones that are far from the location's
solar time (a site at 105° E on Los Angeles time), which is where sun events land at odd
hours. Instants span 1901–2099 in any of a set of zones with DST quirks.
"""

from __future__ import annotations

import datetime as dt
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedules.evaluate import (
    GroupSchedule,
    evaluate,
    level_at,
    next_change_after,
    night_bounds,
    night_of,
    transitions,
)
from schedules.model import LightingCalendar, LightingProgram, Location, Override

ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/Oslo",
    "Asia/Ho_Chi_Minh",
    "America/Los_Angeles",
    "America/St_Johns",  # −3:30 with DST
    "Australia/Lord_Howe",  # 30-minute DST
    "Pacific/Apia",  # skipped a whole day in 2011
    "Pacific/Kiritimati",  # UTC+14
    "Antarctica/Troll",  # +0 / +2 DST
    "America/Santiago",  # southern DST, changes at midnight
    "Asia/Kathmandu",  # +5:45
]
PROGRAMS = ["p0", "p1", "p2"]
ANCHORS = ["sunset", "sunrise", "dusk", "dawn"]

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def step_times(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        t = draw(st.times())
        return f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    offset = draw(st.integers(-360, 360))
    anchor = draw(st.sampled_from(ANCHORS))
    return f"{anchor}{'+' if offset >= 0 else '-'}{abs(offset)}min"


steps = st.fixed_dictionaries(
    {
        "at": step_times(),
        "level": st.one_of(st.sampled_from([0.0, 100.0]), st.floats(0, 100)),
        "ramp_s": st.one_of(st.just(0.0), st.floats(0, 3600)),
    }
)


def programs(name: str) -> st.SearchStrategy[LightingProgram]:
    return st.lists(steps, min_size=1, max_size=6).map(
        lambda s: LightingProgram.model_validate({"name": name, "steps": s})
    )


dates = st.dates(min_value=dt.date(1901, 1, 1), max_value=dt.date(2099, 12, 31))

weekdays = st.lists(st.sampled_from(["mon", "fri", "sat", "sun"]), min_size=1, unique=True)
yearless = st.lists(st.sampled_from(["01-01", "02-29", "09-02", "12-31"]), min_size=1, unique=True)
nth = st.fixed_dictionaries(
    {"weekday": st.sampled_from(["thu", "sun"]), "n": st.sampled_from([1, 2, 4, -1])}
)
rule_conditions = st.one_of(
    st.fixed_dictionaries({"weekdays": weekdays}),
    st.fixed_dictionaries({"yearless": yearless}),
    st.fixed_dictionaries({"nth_weekday": nth}),
    st.fixed_dictionaries({"dates": st.lists(dates, min_size=1, max_size=3)}),
    dates.map(lambda d: {"from_date": d, "to_date": d + dt.timedelta(days=40)}),
    st.just({}),
)


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    return {"program": draw(st.sampled_from(PROGRAMS)), **draw(rule_conditions)}


zones = st.sampled_from([ZoneInfo(z) for z in ZONES])
instants = st.datetimes(
    min_value=dt.datetime(1901, 1, 1), max_value=dt.datetime(2099, 12, 31, 23, 59), timezones=zones
)


@st.composite
def overrides(draw: st.DrawFn, near: dt.datetime) -> Override:
    start = near + dt.timedelta(minutes=draw(st.integers(-3 * 1440, 3 * 1440)))
    until = draw(st.one_of(st.none(), st.integers(1, 3 * 1440)))
    created = draw(st.one_of(st.none(), st.integers(-1440, 0)))
    return Override(
        id=f"o{draw(st.integers(0, 99))}",
        groups=draw(st.sampled_from([["g"], ["other"], ["g", "other"]])),
        level=draw(st.floats(0, 100)),
        start=start,
        until=None if until is None else start + dt.timedelta(minutes=until),
        created=None if created is None else start + dt.timedelta(minutes=created),
    )


@st.composite
def schedules(draw: st.DrawFn, near: dt.datetime) -> GroupSchedule:
    location = Location(
        name="somewhere",
        latitude=draw(st.floats(-89, 89)),
        longitude=draw(st.floats(-180, 180)),
        timezone=draw(st.sampled_from(ZONES)),
    )
    calendar = LightingCalendar.model_validate(
        {"name": "cal", "default": "p0", "rules": draw(st.lists(rules(), max_size=4))}
    )
    return GroupSchedule(
        group="g",
        location=location,
        calendar=calendar,
        programs={name: draw(programs(name)) for name in PROGRAMS},
        overrides=tuple(draw(st.lists(overrides(near), max_size=3))),
        min_level=draw(st.sampled_from([0.0, 0.0, 10.0, 35.5])),
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[GroupSchedule, dt.datetime]:
    instant = draw(instants)
    return draw(schedules(instant)), instant


@PROPS
@given(cases())
def test_level_is_total_and_within_0_to_100(case: tuple[GroupSchedule, dt.datetime]) -> None:
    gs, instant = case
    level = level_at(gs, instant)
    assert 0.0 <= level <= 100.0
    ev = evaluate(gs, instant)
    assert ev.level == level
    assert 0.0 <= ev.target <= 100.0
    if level > 0:
        assert level >= gs.min_level
    start, end = night_bounds(ev.night, gs.tz)
    assert start.timestamp() <= instant.timestamp() < end.timestamp()
    assert night_of(instant, gs.tz) == ev.night


@PROPS
@given(cases())
def test_transitions_are_sorted_within_the_night_and_take_effect(
    case: tuple[GroupSchedule, dt.datetime],
) -> None:
    gs, instant = case
    night = night_of(instant, gs.tz)
    start, end = night_bounds(night, gs.tz)
    trs = transitions(gs, night)
    stamps = [t.at.timestamp() for t in trs]
    assert stamps == sorted(set(stamps))  # strictly increasing: duplicates merged
    assert all(start.timestamp() <= s < end.timestamp() for s in stamps)
    for tr, nxt in pairwise([*trs, None]):
        assert 0.0 <= tr.level <= 100.0 and tr.ramp_s >= 0.0
        if tr.ramp_s == 0.0 and evaluate(gs, tr.at).source == "program":
            # Nothing changes between two transitions but ramps; a zero-ramp step holds.
            assert level_at(gs, tr.at) == tr.level
            until = end.timestamp() if nxt is None else nxt.at.timestamp()
            later = dt.datetime.fromtimestamp((tr.at.timestamp() + until) / 2, gs.tz)
            assert level_at(gs, later) == tr.level
        if tr.kind == "override_start":
            assert evaluate(gs, tr.at).source == "override"


@PROPS
@given(cases())
def test_next_change_is_the_first_transition_after(case: tuple[GroupSchedule, dt.datetime]) -> None:
    gs, instant = case
    nxt = next_change_after(gs, instant)
    if nxt is None:
        return
    assert nxt.timestamp() > instant.timestamp()
    # No transition hides between the instant and the one found.
    night = night_of(instant, gs.tz)
    between = [
        t
        for k in range(3)
        for t in transitions(gs, night + dt.timedelta(days=k))
        if instant.timestamp() < t.at.timestamp() < nxt.timestamp()
    ]
    assert between == []
