"""Program and calendar checks: what they find, with which path and message."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from schedules.evaluate import local_instant
from schedules.model import Anchor, LightingCalendar, LightingProgram, Location, StepTime
from schedules.sun import sun_event
from schedules.validate import Problem, check_calendar, check_program

PHU_LY = Location(name="Phu Ly", latitude=20.54, longitude=105.91, timezone="Asia/Ho_Chi_Minh")
REYKJAVIK = Location(
    name="Reykjavík", latitude=64.15, longitude=-21.94, timezone="Atlantic/Reykjavik"
)
TROMSO = Location(name="Tromsø", latitude=69.65, longitude=18.96, timezone="Europe/Oslo")


def prog(name: str, *steps: tuple[str, float]) -> LightingProgram:
    return LightingProgram.model_validate(
        {"name": name, "steps": [{"at": a, "level": lv} for a, lv in steps]}
    )


def cal(default: str, *rules: dict[str, Any]) -> LightingCalendar:
    return LightingCalendar.model_validate({"name": "c", "default": default, "rules": rules})


# The programs of the example config.yaml, which must come out clean at Phu Ly.
CONFIG_PROGRAMS = [
    prog("arterial", ("sunset+10min", 100), ("23:00", 80), ("00:30", 60), ("04:30", 80),
         ("sunrise-10min", 0)),
    prog("festival", ("sunset", 100), ("02:00", 80), ("sunrise-10min", 0)),
    prog("residential", ("sunset+15min", 80), ("22:00", 50), ("04:45", 70),
         ("sunrise-15min", 0)),
    prog("dusk-to-dawn", ("sunset", 100), ("sunrise", 0)),
    prog("civil", ("dusk", 100), ("dawn", 0)),
]  # fmt: skip


@pytest.mark.parametrize("program", CONFIG_PROGRAMS, ids=lambda p: p.name)
def test_sound_programs_have_no_problems(program: LightingProgram) -> None:
    assert check_program(program, PHU_LY, 2026) == []


def test_polar_sites_are_not_flagged_for_the_polar_rules() -> None:
    # In polar night and midnight sun the sun steps sit on the night's edges by design, out of
    # order with clock steps; only nights where the sun really sets are checked.
    for p in (
        prog("plain", ("sunset", 100), ("sunrise", 0)),
        prog("civil", ("dusk", 100), ("dawn", 0)),
    ):
        assert [x for x in check_program(p, TROMSO, 2026) if x.severity == "error"] == [], p.name
    # Before the midnight sun, sunset+10min really comes after 23:00: that is reported.
    p = prog("polar", ("sunset+10min", 100), ("23:00", 60), ("sunrise-10min", 0))
    (problem,) = check_program(p, TROMSO, 2026)
    assert problem.path == "steps[1].at" and " on 2026-05-" in problem.message


def test_a_clock_step_before_the_sunset_step_is_an_error_naming_the_first_night() -> None:
    p = prog("late-sunset", ("sunset+10min", 100), ("23:00", 50), ("sunrise", 0))
    problems = check_program(p, REYKJAVIK, 2026)
    errors = [x for x in problems if x.severity == "error"]
    assert len(errors) == 1
    problem = errors[0]
    assert problem.path == "steps[1].at"
    # Work out the first such night independently of the validator.
    day = dt.date(2026, 1, 1)
    tz = REYKJAVIK.tz
    while True:
        sunset = sun_event(REYKJAVIK, day, Anchor.SUNSET).at
        eleven = local_instant(day, dt.time(23), tz)
        if sunset is not None and sunset + dt.timedelta(minutes=10) > eleven:
            break
        day += dt.timedelta(days=1)
    assert sunset is not None
    first = (sunset + dt.timedelta(minutes=10)).astimezone(tz)
    # Seconds are shown when the minutes alone would read the same as the clock step.
    shown = f"{first:%H:%M:%S}" if f"{first:%H:%M}" == "23:00" else f"{first:%H:%M}"
    expected = f"23:00 falls before sunset+10min ({shown}) on {day}"
    assert problem.message.startswith(expected), problem.message
    assert re.search(r"and \d+ more nights of 2026", problem.message)
    assert str(problem).startswith(f"steps[1].at: {expected}")
    assert str(problem.under("programs[2]")).startswith(f"programs[2].steps[1].at: {expected}")


def test_steps_out_of_order_at_phu_ly() -> None:
    p = prog("early", ("sunset+10min", 100), ("18:00", 80), ("sunrise", 0))
    (problem,) = check_program(p, PHU_LY, 2026)
    assert problem.path == "steps[1].at" and problem.severity == "error"
    assert re.match(
        r"18:00 falls before sunset\+10min \(18:0\d(:\d\d)?\) on 2026-\d\d-\d\d", problem.message
    )


def test_a_program_that_never_turns_off_in_daytime_is_an_error() -> None:
    p = prog("always", ("sunset", 100), ("06:00", 30))
    problems = check_program(p, PHU_LY, 2026)
    assert [(x.path, x.severity) for x in problems] == [("steps", "error")]
    assert "never turns the lights off in daytime" in problems[0].message
    assert "30 %" in problems[0].message


def test_a_program_that_is_dark_all_night_is_a_warning() -> None:
    p = prog("dark", ("sunset", 0), ("sunrise", 0))
    problems = check_program(p, PHU_LY, 2026)
    assert [(x.path, x.severity) for x in problems] == [("steps", "warning")]
    assert "off all night" in problems[0].message


def test_a_step_outside_its_night_is_a_warning() -> None:
    # sunrise+6h is after noon in Phu Ly's winter (sunrise ~06:35): clamped to the night's end.
    p = prog("odd", ("sunset", 100), ("sunrise", 0), ("sunrise+6h", 0))
    problems = check_program(p, PHU_LY, 2026)
    assert [(x.path, x.severity) for x in problems] == [("steps[2].at", "warning")]
    assert "outside the night" in problems[0].message


def test_calendar_unknown_programs_are_errors_with_paths() -> None:
    c = cal(
        "std",
        {"program": "festival", "dates": ["2026-09-02"]},
        {"program": "festivl", "yearless": ["09-01"]},
    )
    problems = check_calendar(c, {"std": None, "festival": None})
    assert [(x.path, x.severity) for x in problems] == [("rules[1].program", "error")]
    assert "unknown program 'festivl'" in problems[0].message
    problems = check_calendar(cal("nope"), ["std"])
    assert [(x.path, x.severity) for x in problems] == [("default", "error")]


def test_calendar_rules_that_can_never_win_are_warnings() -> None:
    c = cal(
        "std",
        {"name": "weekend", "program": "a", "weekdays": ["fri", "sat", "sun"]},
        {"name": "saturday", "program": "b", "weekdays": ["sat"]},  # shadowed by weekend
        {"program": "b", "nth_weekday": {"weekday": "sun", "n": -1}},  # every one is a Sunday
        {"program": "a", "dates": ["2026-01-05"], "weekdays": ["sat"]},  # a Monday: never
        {"program": "b", "yearless": ["09-02"]},  # fine: not always a weekend day
        {"program": "a", "from_date": "2026-09-01", "to_date": "2026-09-03", "yearless": ["09-02"]},
    )
    problems = check_calendar(c, ["std", "a", "b"])
    by_path = {x.path: x for x in problems}
    assert set(by_path) == {"rules[1]", "rules[2]", "rules[3]", "rules[5]"}
    assert all(x.severity == "warning" for x in problems)
    assert "rules[0] (weekend)" in by_path["rules[1]"].message
    assert "rules[1]" not in by_path["rules[2]"].message  # rules[1] never decides a night
    assert "never matches" in by_path["rules[3]"].message
    assert "rules[4]" in by_path["rules[5]"].message


def test_a_rule_without_conditions_makes_the_default_unused() -> None:
    problems = check_calendar(
        cal("std", {"program": "a"}, {"program": "b", "weekdays": ["mon"]}), ["a", "b", "std"]
    )
    assert {(x.path, x.severity) for x in problems} == {
        ("rules[1]", "warning"),
        ("default", "warning"),
    }


def test_problem_text() -> None:
    p = Problem("steps[2].at", "23:00 falls before sunset+10min (18:52) on 2026-06-21")
    assert str(p) == "steps[2].at: 23:00 falls before sunset+10min (18:52) on 2026-06-21"
    assert p.severity == "error"
    assert p.under("programs[0]").path == "programs[0].steps[2].at"


def test_step_time_text_round_trips() -> None:
    for text in ("23:00", "01:30:15", "sunset+10min", "sunrise-15min", "dusk", "dawn+90s"):
        assert str(StepTime.parse(text)) == text
        assert StepTime.parse(str(StepTime.parse(text))) == StepTime.parse(text)
    with pytest.raises(ValueError, match="offset"):
        StepTime(anchor=Anchor.TIME, time=dt.time(23), offset=dt.timedelta(minutes=5))
    with pytest.raises(ValueError, match="local wall time"):
        StepTime(anchor=Anchor.TIME, time=dt.time(23, tzinfo=dt.UTC))


def test_repeated_checks_give_the_same_findings_and_their_own_lists() -> None:
    # Findings are remembered by the inputs (a config is checked at load and again at the
    # schedule store's bootstrap): a repeat must equal a fresh check, a changed input must
    # be checked anew, and a caller changing its list must not change the next answer.
    bad = prog("bad", ("sunset", 100), ("12:30", 60))
    first = check_program(bad, PHU_LY, 2026)
    assert first and first == check_program(bad, PHU_LY, 2026)
    first.clear()
    assert check_program(bad, PHU_LY, 2026)
    assert check_program(bad, TROMSO, 2026) != check_program(bad, PHU_LY, 2026)
    fixed = prog("bad", ("sunset", 100), ("sunrise", 0))
    assert check_program(fixed, PHU_LY, 2026) == []
    c = cal("arterial", {"program": "festival", "yearless": ["02-29"]})
    assert check_calendar(c, ["arterial", "festival"]) == []
    assert [p.path for p in check_calendar(c, ["arterial"])] == ["rules[0].program"]


def test_yearless_rules_match_their_month_and_day_every_year() -> None:
    c = cal("arterial", {"program": "festival", "yearless": ["02-29", "09-02", "12-31"]})
    rule = c.rules[0]
    day = dt.date(2027, 1, 1)
    while day.year < 2029:
        assert rule.matches(day) == (day.strftime("%m-%d") in ("02-29", "09-02", "12-31")), day
        day += dt.timedelta(days=1)
