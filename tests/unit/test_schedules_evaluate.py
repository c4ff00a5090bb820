"""Evaluation of a group's schedule: nights, DST, polar sites, calendars, overrides, ramps."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from schedules.evaluate import (
    GroupSchedule,
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
    LightingCalendar,
    LightingProgram,
    Location,
    Override,
)
from schedules.sun import sun_event

UTC = dt.UTC
BERLIN = Location(name="Berlin", latitude=52.52, longitude=13.40, timezone="Europe/Berlin")
TROMSO = Location(name="Tromsø", latitude=69.65, longitude=18.96, timezone="Europe/Oslo")
PHU_LY = Location(name="Phu Ly", latitude=20.54, longitude=105.91, timezone="Asia/Ho_Chi_Minh")
VN = ZoneInfo("Asia/Ho_Chi_Minh")
DAY = dt.timedelta(days=1)


def prog(name: str, *steps: tuple[str, float] | tuple[str, float, float]) -> LightingProgram:
    """``prog("p", ("sunset", 100), ("23:00", 50, 300))`` — (at, level[, ramp_s])."""
    return LightingProgram.model_validate(
        {
            "name": name,
            "steps": [
                {"at": s[0], "level": s[1], "ramp_s": s[2] if len(s) > 2 else 0.0}  # type: ignore[misc]
                for s in steps
            ],
        }
    )


def sched(
    location: Location,
    programs: Sequence[LightingProgram],
    default: str | None = None,
    rules: Sequence[dict[str, Any]] = (),
    overrides: Sequence[Override] = (),
    min_level: float = 0.0,
    group: str = "g",
) -> GroupSchedule:
    calendar = LightingCalendar.model_validate(
        {"name": "cal", "default": default or programs[0].name, "rules": list(rules)}
    )
    return GroupSchedule(
        group=group,
        location=location,
        calendar=calendar,
        programs={p.name: p for p in programs},
        overrides=tuple(overrides),
        min_level=min_level,
    )


def at(tz: ZoneInfo | str, *parts: int, fold: int = 0) -> dt.datetime:
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    return dt.datetime(*parts, tzinfo=zone, fold=fold)  # type: ignore[misc]


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def u(t: dt.datetime | None) -> dt.datetime | None:
    """In UTC. Python never finds an instant inside a repeated hour equal to one in another
    zone (PEP 495), so DST tests compare in UTC."""
    return None if t is None else t.astimezone(UTC)


# ---- nights ---------------------------------------------------------------------------------


def test_a_night_runs_from_noon_to_noon() -> None:
    tz = VN
    assert night_of(at(tz, 2026, 9, 2, 12, 0), tz) == dt.date(2026, 9, 2)
    assert night_of(at(tz, 2026, 9, 2, 23, 59), tz) == dt.date(2026, 9, 2)
    assert night_of(at(tz, 2026, 9, 3, 11, 59, 59), tz) == dt.date(2026, 9, 2)
    assert night_of(at(tz, 2026, 9, 3, 12, 0), tz) == dt.date(2026, 9, 3)
    assert night_of(at(tz, 2026, 9, 2, 11, 59), tz) == dt.date(2026, 9, 1)
    # Any zone for the instant: it is the site's clock that counts.
    assert night_of(utc(2026, 9, 2, 17, 30), tz) == dt.date(2026, 9, 2)  # 00:30 on the 3rd
    assert night_of(utc(2026, 9, 3, 5, 0), tz) == dt.date(2026, 9, 3)  # 12:00 on the 3rd
    assert night_bounds(dt.date(2026, 9, 2), tz) == (at(tz, 2026, 9, 2, 12), at(tz, 2026, 9, 3, 12))


def test_naive_instants_are_refused_with_a_clear_message() -> None:
    gs = sched(PHU_LY, [prog("p", ("sunset", 100), ("sunrise", 0))])
    with pytest.raises(ValueError, match=r"naive.*timezone-aware"):
        level_at(gs, dt.datetime(2026, 6, 21, 22, 0))
    with pytest.raises(ValueError, match="naive"):
        evaluate(gs, dt.datetime(2026, 6, 21, 22, 0))
    with pytest.raises(ValueError, match="naive"):
        night_of(dt.datetime(2026, 6, 21, 22, 0), VN)


# ---- DST ------------------------------------------------------------------------------------

DST = prog("dst", ("sunset", 100), ("01:30", 70), ("02:30", 40), ("sunrise", 0))


def test_spring_forward_a_skipped_time_happens_when_the_clocks_jump() -> None:
    night = dt.date(2026, 3, 28)  # clocks jump 02:00 CET → 03:00 CEST on 29 March (01:00 UTC)
    start, end = night_bounds(night, BERLIN.tz)
    assert end.timestamp() - start.timestamp() == 23 * 3600
    steps = resolve_steps(DST, BERLIN, night)
    assert u(steps[1].at) == utc(2026, 3, 29, 0, 30)  # 01:30 CET exists
    assert u(steps[2].at) == utc(2026, 3, 29, 1, 0)  # 02:30 does not: 03:00 CEST, the jump
    assert steps[2].at.astimezone(BERLIN.tz).strftime("%H:%M %Z") == "03:00 CEST"
    assert u(local_instant(dt.date(2026, 3, 29), dt.time(2, 0), BERLIN.tz)) == utc(2026, 3, 29, 1)

    gs = sched(BERLIN, [DST])
    trs = transitions(gs, night)
    assert [t.at for t in trs] == sorted(t.at for t in trs)
    assert [t.level for t in trs] == [100, 70, 40, 0]
    assert [u(t.at) for t in trs if t.level == 40] == [utc(2026, 3, 29, 1, 0)]
    assert level_at(gs, utc(2026, 3, 29, 0, 29, 59)) == 100
    assert level_at(gs, utc(2026, 3, 29, 0, 30)) == 70
    assert level_at(gs, utc(2026, 3, 29, 0, 59, 59)) == 70
    assert level_at(gs, utc(2026, 3, 29, 1, 0)) == 40
    assert "02:30 → 03:00" in evaluate(gs, utc(2026, 3, 29, 1, 30)).detail
    assert u(next_change_after(gs, utc(2026, 3, 29, 0, 30))) == utc(2026, 3, 29, 1, 0)


def test_fall_back_a_repeated_time_happens_once_at_its_first_occurrence() -> None:
    night = dt.date(2026, 10, 24)  # clocks go 03:00 CEST → 02:00 CET on 25 October (01:00 UTC)
    start, end = night_bounds(night, BERLIN.tz)
    assert end.timestamp() - start.timestamp() == 25 * 3600
    steps = resolve_steps(DST, BERLIN, night)
    assert u(steps[1].at) == utc(2026, 10, 24, 23, 30)  # 01:30 CEST, only once
    assert u(steps[2].at) == utc(2026, 10, 25, 0, 30)  # 02:30 CEST, the first 02:30
    assert steps[2].at.astimezone(BERLIN.tz).strftime("%H:%M %Z") == "02:30 CEST"

    gs = sched(BERLIN, [DST])
    trs = transitions(gs, night)
    assert [t.level for t in trs] == [100, 70, 40, 0]
    assert [u(t.at) for t in trs if t.level == 40] == [utc(2026, 10, 25, 0, 30)]
    assert level_at(gs, utc(2026, 10, 25, 0, 29, 59)) == 70
    assert level_at(gs, utc(2026, 10, 25, 0, 30)) == 40
    # The second 02:30 (CET) changes nothing.
    second = at("Europe/Berlin", 2026, 10, 25, 2, 30, fold=1)
    assert u(second) == utc(2026, 10, 25, 1, 30)
    assert level_at(gs, second) == 40
    assert level_at(gs, second + dt.timedelta(minutes=10)) == 40
    sunrise = sun_event(BERLIN, dt.date(2026, 10, 25), Anchor.SUNRISE).at
    assert u(next_change_after(gs, second)) == u(sunrise)
    assert u(next_change_after(gs, utc(2026, 10, 25, 0, 0))) == utc(2026, 10, 25, 0, 30)


# ---- polar sites ----------------------------------------------------------------------------

POLAR = prog("polar", ("sunset+10min", 100), ("23:00", 60), ("sunrise-10min", 0))


def test_polar_night_keeps_the_lights_on_all_night_and_through_noon() -> None:
    gs = sched(TROMSO, [POLAR])
    tz = TROMSO.tz
    night = dt.date(2026, 12, 21)
    for t in (
        at(tz, 2026, 12, 21, 12, 0),
        at(tz, 2026, 12, 21, 15, 0),
        at(tz, 2026, 12, 22, 3, 0),
        at(tz, 2026, 12, 22, 11, 59, 59),
        at(tz, 2026, 12, 22, 12, 0),  # noon: next night's sunset step, on at once
    ):
        assert level_at(gs, t) > 0, t
    assert level_at(gs, at(tz, 2026, 12, 21, 22, 0)) == 100
    assert level_at(gs, at(tz, 2026, 12, 22, 3, 0)) == 60
    trs = transitions(gs, night)
    assert trs[0].at == at(tz, 2026, 12, 21, 12, 0) and trs[0].level == 100
    assert "no sunset" in trs[0].source
    assert all(t.level > 0 for t in trs)


def test_midnight_sun_keeps_a_sunset_to_sunrise_program_off() -> None:
    gs = sched(TROMSO, [POLAR])
    tz = TROMSO.tz
    night = dt.date(2026, 6, 21)
    assert transitions(gs, night) == []
    t = at(tz, 2026, 6, 21, 12, 0)
    while t < at(tz, 2026, 6, 22, 12, 0):
        assert level_at(gs, t) == 0, t
        t += dt.timedelta(minutes=20)
    # The 23:00 step cannot come before sunset, which does not happen: moved to the end.
    assert resolve_steps(POLAR, TROMSO, night)[1].at == at(tz, 2026, 6, 22, 12, 0)


def test_dusk_to_dawn_in_tromso_winter_uses_civil_twilight() -> None:
    gs = sched(TROMSO, [prog("civil", ("dusk", 100), ("dawn", 0))])
    dusk = sun_event(TROMSO, dt.date(2026, 12, 21), Anchor.DUSK).at
    dawn = sun_event(TROMSO, dt.date(2026, 12, 22), Anchor.DAWN).at
    assert dusk is not None and dawn is not None
    assert level_at(gs, dusk - dt.timedelta(seconds=1)) == 0
    assert level_at(gs, dusk) == 100
    assert level_at(gs, dawn - dt.timedelta(seconds=1)) == 100
    assert level_at(gs, dawn) == 0


# ---- calendars ------------------------------------------------------------------------------

STD = prog("std", ("sunset", 100), ("23:00", 50), ("sunrise-10min", 0))
FESTIVAL = prog("festival", ("sunset", 100), ("02:00", 80), ("sunrise-10min", 0))
WEEKEND = prog("weekend", ("sunset", 100), ("01:00", 60), ("sunrise-10min", 0))
THANKS = prog("thanks", ("sunset", 90), ("sunrise", 0))
SPRING = prog("spring", ("sunset", 70), ("sunrise", 0))
MARCH_END = prog("march-end", ("sunset", 65), ("sunrise", 0))


def test_calendar_rules_first_match_wins() -> None:
    rules = [
        {"name": "National Day", "program": "festival", "yearless": ["09-01", "09-02"]},
        {"name": "Tết", "program": "festival", "from_date": "2026-02-14", "to_date": "2026-02-22"},
        {"program": "thanks", "nth_weekday": {"month": 11, "weekday": "thu", "n": 4}},
        {"program": "march-end", "nth_weekday": {"month": 3, "weekday": "sun", "n": -1}},
        {"program": "spring", "from_date": "2026-03-01", "to_date": "2026-03-31"},
        {"name": "weekend nights", "program": "weekend", "weekdays": ["fri", "sat"]},
    ]
    gs = sched(PHU_LY, [STD, FESTIVAL, WEEKEND, THANKS, SPRING, MARCH_END], "std", rules)
    cal = gs.calendar
    assert cal.program_for(dt.date(2026, 9, 2)) == "festival"  # a Wednesday
    assert cal.program_for(dt.date(2027, 9, 2)) == "festival"  # yearless: every year
    assert cal.program_for(dt.date(2026, 9, 4)) == "weekend"  # Friday
    assert cal.program_for(dt.date(2026, 9, 7)) == "std"  # Monday
    assert cal.program_for(dt.date(2026, 2, 14)) == "festival"  # Saturday, but Tết is first
    assert cal.program_for(dt.date(2026, 2, 22)) == "festival"  # range is inclusive
    assert cal.program_for(dt.date(2026, 2, 23)) == "std"
    assert cal.program_for(dt.date(2026, 11, 26)) == "thanks"  # 4th Thursday of Nov 2026
    assert cal.program_for(dt.date(2026, 11, 19)) == "std"
    assert cal.program_for(dt.date(2026, 3, 29)) == "march-end"  # last Sunday of March
    assert cal.program_for(dt.date(2026, 3, 22)) == "spring"  # a Sunday, not the last
    assert cal.program_for(dt.date(2026, 3, 27)) == "spring"  # Friday: spring comes first
    rule = CalendarRule.model_validate({"program": "x", "nth_weekday": {"weekday": "mon", "n": -1}})
    assert rule.matches(dt.date(2026, 8, 31)) and not rule.matches(dt.date(2026, 8, 24))


def test_a_holiday_program_covers_the_morning_after_not_the_morning_of() -> None:
    rules = [{"program": "festival", "dates": ["2026-09-02"]}]
    gs = sched(PHU_LY, [STD, FESTIVAL], "std", rules)
    # 01:00 on 3 September belongs to the night of the 2nd: the holiday program, still at 100.
    after = evaluate(gs, at(VN, 2026, 9, 3, 1, 0))
    assert after.program == "festival" and after.level == 100
    # 01:00 on 2 September belongs to the night of the 1st: the normal program, dimmed.
    before = evaluate(gs, at(VN, 2026, 9, 2, 1, 0))
    assert before.program == "std" and before.level == 50
    assert evaluate(gs, at(VN, 2026, 9, 3, 2, 30)).level == 80
    assert evaluate(gs, at(VN, 2026, 9, 3, 23, 30)).program == "std"


def test_unknown_programs_are_refused_when_the_schedule_is_built() -> None:
    with pytest.raises(ValueError, match=r"unknown program.*festival"):
        sched(PHU_LY, [STD], "std", [{"program": "festival", "dates": ["2026-09-02"]}])
    with pytest.raises(ValueError, match="min_level"):
        sched(PHU_LY, [STD], min_level=120)


# ---- overrides ------------------------------------------------------------------------------


def ov(
    oid: str, level: float, start: dt.datetime, until: dt.datetime | None = None, **kw: Any
) -> Override:
    return Override(
        id=oid, groups=kw.pop("groups", ["g"]), level=level, start=start, until=until, **kw
    )


def test_the_newest_override_wins_and_expiry_returns_to_the_schedule() -> None:
    older = ov(
        "event", 100, at(VN, 2026, 6, 21, 22), at(VN, 2026, 6, 22, 2), created=at(VN, 2026, 6, 1)
    )
    newer = ov(
        "works", 30, at(VN, 2026, 6, 21, 20), at(VN, 2026, 6, 22, 0), created=at(VN, 2026, 6, 10)
    )
    other = ov("elsewhere", 0, at(VN, 2026, 6, 21, 12), groups=["h"])
    gs = sched(PHU_LY, [STD], overrides=[older, newer, other])
    assert level_at(gs, at(VN, 2026, 6, 21, 19, 59)) == 100  # the program
    ev = evaluate(gs, at(VN, 2026, 6, 21, 23))
    assert (ev.level, ev.source, ev.override_id) == (30, "override", "works")  # newer wins
    assert level_at(gs, at(VN, 2026, 6, 22, 0, 0)) == 100  # works expired: event again
    assert level_at(gs, at(VN, 2026, 6, 22, 1, 59)) == 100
    ev = evaluate(gs, at(VN, 2026, 6, 22, 2, 0))  # both expired: back to the program
    assert (ev.level, ev.source, ev.program) == (50, "program", "std")
    kinds = [(t.kind, t.level, t.at) for t in transitions(gs, dt.date(2026, 6, 21))]
    assert ("override_start", 30, at(VN, 2026, 6, 21, 20)) in kinds
    assert ("override_start", 100, at(VN, 2026, 6, 22, 0)) in kinds
    assert ("override_end", 50, at(VN, 2026, 6, 22, 2)) in kinds
    # The 23:00 step is hidden under the override: not a change of the wanted level.
    assert at(VN, 2026, 6, 21, 23) not in [k[2] for k in kinds]


def test_an_open_ended_override_holds_until_cleared() -> None:
    hold = ov("blackout-test", 0, at(VN, 2026, 6, 21, 19))
    gs = sched(PHU_LY, [STD], overrides=[hold])
    for t in (at(VN, 2026, 6, 21, 19), at(VN, 2026, 6, 22, 22), at(VN, 2027, 1, 1, 20)):
        assert evaluate(gs, t).source == "override" and level_at(gs, t) == 0
    assert [t.kind for t in transitions(gs, dt.date(2026, 6, 21))] == ["step", "override_start"]
    cleared = sched(PHU_LY, [STD])
    assert level_at(cleared, at(VN, 2026, 6, 22, 22)) == 100


def test_override_ties_go_by_start_then_listing() -> None:
    a = ov("a", 10, at(VN, 2026, 6, 21, 20), at(VN, 2026, 6, 21, 23))
    b = ov("b", 20, at(VN, 2026, 6, 21, 21), at(VN, 2026, 6, 21, 22))  # no created: by start
    gs = sched(PHU_LY, [STD], overrides=[b, a])
    assert level_at(gs, at(VN, 2026, 6, 21, 21, 30)) == 20
    assert level_at(gs, at(VN, 2026, 6, 21, 22, 30)) == 10


# ---- ramps, carry-over, min level -----------------------------------------------------------


def test_ramps_are_linear_and_a_step_mid_ramp_starts_from_the_level_reached() -> None:
    p = prog("r", ("20:00", 100, 600), ("23:00", 40, 1200), ("23:10", 80), ("sunrise", 0, 1800))
    gs = sched(PHU_LY, [p])
    assert level_at(gs, at(VN, 2026, 6, 21, 20, 0)) == 0
    assert level_at(gs, at(VN, 2026, 6, 21, 20, 5)) == pytest.approx(50)
    assert level_at(gs, at(VN, 2026, 6, 21, 20, 10)) == 100
    assert level_at(gs, at(VN, 2026, 6, 21, 23, 5)) == pytest.approx(85)  # 100 → 40 over 20 min
    assert level_at(gs, at(VN, 2026, 6, 21, 23, 10)) == 80  # cuts in at once
    sunrise = sun_event(PHU_LY, dt.date(2026, 6, 22), Anchor.SUNRISE).at
    assert sunrise is not None
    assert level_at(gs, sunrise + dt.timedelta(minutes=15)) == pytest.approx(40)
    ev = evaluate(gs, sunrise + dt.timedelta(minutes=15))
    assert ev.target == 0 and ev.ramp_end == sunrise + dt.timedelta(minutes=30)
    assert "ramping to 0 %" in ev.detail
    tr = [t for t in transitions(gs, dt.date(2026, 6, 21)) if t.at == at(VN, 2026, 6, 21, 23)]
    assert tr[0].ramp_s == 1200 and tr[0].level == 40


def test_the_level_carries_over_from_the_previous_night() -> None:
    # Night A ends at 60 % (no step to 0); night B's first step is at 02:00.
    a = prog("a", ("sunset", 100), ("23:00", 60))
    b = prog("b", ("02:00", 0))
    rules = [{"program": "b", "dates": ["2026-06-22"]}]
    gs = sched(PHU_LY, [a, b], "a", rules)
    assert level_at(gs, at(VN, 2026, 6, 22, 11, 0)) == 60
    assert level_at(gs, at(VN, 2026, 6, 22, 14, 0)) == 60  # carried into night B
    assert "carried over" in evaluate(gs, at(VN, 2026, 6, 22, 14, 0)).detail
    assert level_at(gs, at(VN, 2026, 6, 23, 2, 0)) == 0
    # Nothing changes at noon, so noon is no transition of night B.
    assert [t.at for t in transitions(gs, dt.date(2026, 6, 22))] == [at(VN, 2026, 6, 23, 2)]


def test_a_ramp_running_at_noon_carries_on_into_the_next_night() -> None:
    p = prog("late", ("sunset", 100), ("11:30", 0, 3600))
    gs = sched(PHU_LY, [p])
    assert level_at(gs, at(VN, 2026, 6, 22, 12, 0)) == pytest.approx(50)
    assert level_at(gs, at(VN, 2026, 6, 22, 12, 15)) == pytest.approx(25)
    assert level_at(gs, at(VN, 2026, 6, 22, 12, 30)) == 0


def test_min_dim_level_raises_low_levels_but_not_off() -> None:
    assert clamp_min_dim(0, 10) == 0
    assert clamp_min_dim(5, 10) == 10
    assert clamp_min_dim(50, 10) == 50
    assert clamp_min_dim(float("nan"), 10) == 0
    p = prog("dim", ("sunset", 100), ("23:00", 5), ("sunrise", 0, 600))
    gs = sched(PHU_LY, [p], min_level=10)
    assert level_at(gs, at(VN, 2026, 6, 22, 1, 0)) == 10
    sunrise = sun_event(PHU_LY, dt.date(2026, 6, 22), Anchor.SUNRISE).at
    assert sunrise is not None
    assert level_at(gs, sunrise + dt.timedelta(minutes=5)) == 10  # 2.5 % raw, shown at 10
    assert level_at(gs, sunrise + dt.timedelta(minutes=10)) == 0
    assert transitions(gs, dt.date(2026, 6, 21))[1].level == 10


def test_steps_out_of_order_are_moved_and_the_later_listed_wins() -> None:
    # 18:00 is before sunset+10min in June at Phu Ly: it runs together with it, and wins.
    p = prog("odd", ("sunset+10min", 100), ("18:00", 80), ("sunrise", 0))
    steps = resolve_steps(p, PHU_LY, dt.date(2026, 6, 21))
    assert steps[1].at == steps[0].at and steps[1].moved
    gs = sched(PHU_LY, [p])
    trs = transitions(gs, dt.date(2026, 6, 21))
    assert [t.level for t in trs] == [80, 0]
    assert trs[0].at == steps[0].at


def test_segments_and_next_change() -> None:
    gs = sched(PHU_LY, [prog("r", ("20:00", 100, 600), ("23:00", 50), ("sunrise", 0))])
    start, end = night_bounds(dt.date(2026, 6, 21), VN)
    segs = level_segments(gs, start, end)
    assert segs[0].start == start and segs[-1].end == end
    assert all(a.end == b.start for a, b in pairwise(segs))
    ramp = [s for s in segs if s.start == at(VN, 2026, 6, 21, 20)]
    assert ramp[0].end == at(VN, 2026, 6, 21, 20, 10) and ramp[0].end_level == 100
    assert next_change_after(gs, at(VN, 2026, 6, 21, 20)) == at(VN, 2026, 6, 21, 23)
    assert next_change_after(gs, at(VN, 2026, 6, 21, 19)) == at(VN, 2026, 6, 21, 20)


def test_schedules_are_hashable_and_compare_by_value() -> None:
    a, b = sched(PHU_LY, [STD]), sched(PHU_LY, [STD])
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    level_at(a, at(VN, 2026, 6, 21, 22))  # fills a's memo; still equal
    assert a == b
