"""The city's words for lighting schedules: programs, steps, calendars, overrides.

These are pydantic models so that ``config.yaml`` is validated field by field with a path in
every error, but they hold no behaviour that touches the outside world: evaluation lives in
:mod:`schedules.evaluate` and is a pure function of a model and an instant.
"""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Anchor",
    "CalendarRule",
    "Level",
    "LightingCalendar",
    "LightingProgram",
    "Location",
    "Override",
    "Step",
    "StepTime",
]

Level = Annotated[float, Field(ge=0.0, le=100.0, description="Light level in percent, 0–100.")]


class _Strict(BaseModel):
    """Base for config models: unknown keys are errors, because a typo must not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(_Strict):
    """Where the site is; sun times are computed for this point."""

    name: str = Field(min_length=1, description="Human name of the site, e.g. 'Phu Ly'.")
    latitude: float = Field(ge=-90.0, le=90.0, description="Degrees north (negative: south).")
    longitude: float = Field(ge=-180.0, le=180.0, description="Degrees east (negative: west).")
    timezone: str = Field(description="IANA time zone, e.g. 'Asia/Ho_Chi_Minh'.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            # OSError: keys such as "America" name a directory of the tz database
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The site's time zone."""
        return ZoneInfo(self.timezone)


class Anchor(StrEnum):
    """What a step's start time is measured from."""

    TIME = "time"  # a fixed local wall-clock time
    SUNSET = "sunset"
    SUNRISE = "sunrise"
    DUSK = "dusk"  # civil dusk: sun 6° below the horizon, evening
    DAWN = "dawn"  # civil dawn: sun 6° below the horizon, morning

    @property
    def is_evening(self) -> bool:
        """Sunset and dusk belong to the evening that starts a night."""
        return self in (Anchor.SUNSET, Anchor.DUSK)

    @property
    def is_morning(self) -> bool:
        """Sunrise and dawn belong to the morning that ends a night."""
        return self in (Anchor.SUNRISE, Anchor.DAWN)


_AT_RE = re.compile(
    r"^\s*(?:(?P<clock>\d{1,2}:\d{2}(?::\d{2})?)|"
    r"(?P<sun>sunset|sunrise|dusk|dawn)\s*(?:(?P<sign>[+-])\s*(?P<off>\d+)\s*(?P<unit>s|min|h)?)?)\s*$"
)


class StepTime(_Strict):
    """When a step starts: ``anchor`` plus ``offset`` (sun anchors) or a local clock ``time``."""

    anchor: Anchor
    time: dt.time | None = None
    offset: dt.timedelta = dt.timedelta(0)

    @model_validator(mode="after")
    def _consistent(self) -> StepTime:
        if self.anchor is Anchor.TIME and self.time is None:
            raise ValueError("a clock step needs a time")
        if self.anchor is not Anchor.TIME and self.time is not None:
            raise ValueError("a sun step takes an offset, not a time")
        if self.anchor is Anchor.TIME and self.offset:
            # An offset on a clock time would silently move the step; write the time you mean.
            raise ValueError("a clock step takes a time, not an offset")
        if self.time is not None and self.time.tzinfo is not None:
            # Clock steps are wall-clock times in the site's zone, which also decides DST.
            raise ValueError("a clock step is local wall time; leave the UTC offset out")
        if abs(self.offset) > dt.timedelta(hours=6):
            raise ValueError("offset from the sun event must be within ±6 h")
        return self

    @classmethod
    def parse(cls, text: str) -> StepTime:
        """Parse ``"23:00"``, ``"01:30:00"``, ``"sunset+10min"``, ``"sunrise - 15 min"``,
        ``"dusk"``."""
        m = _AT_RE.match(text.lower())
        if not m:
            raise ValueError(
                f"cannot read start time {text!r}: use HH:MM[:SS] or "
                "sunset|sunrise|dusk|dawn with an optional ±N min offset"
            )
        if m["clock"]:
            parts = [int(p) for p in m["clock"].split(":")]
            if parts[0] > 23 or parts[1] > 59 or (len(parts) == 3 and parts[2] > 59):
                raise ValueError(f"clock time {text!r} is out of range")
            second = parts[2] if len(parts) == 3 else 0
            return cls(anchor=Anchor.TIME, time=dt.time(parts[0], parts[1], second))
        off = dt.timedelta(0)
        if m["off"]:
            n = int(m["off"])
            unit = m["unit"] or "min"
            off = {
                "s": dt.timedelta(seconds=n),
                "min": dt.timedelta(minutes=n),
                "h": dt.timedelta(hours=n),
            }[unit]
            if m["sign"] == "-":
                off = -off
        return cls(anchor=Anchor(m["sun"]), offset=off)

    def __str__(self) -> str:
        if self.anchor is Anchor.TIME:
            assert self.time is not None
            return self.time.strftime("%H:%M:%S" if self.time.second else "%H:%M")
        if not self.offset:
            return self.anchor.value
        seconds = self.offset.total_seconds()
        sign = "+" if seconds >= 0 else "-"
        # Whole minutes read best; anything finer is written in seconds so that the text
        # parses back to the same offset (``parse`` takes integers only).
        if seconds % 60 == 0:
            return f"{self.anchor.value}{sign}{abs(seconds) / 60:g}min"
        return f"{self.anchor.value}{sign}{abs(seconds):g}s"


class Step(_Strict):
    """One step of a program: from ``at`` on, go to ``level`` over ``ramp_s`` seconds."""

    at: StepTime
    level: Level
    ramp_s: float = Field(default=0.0, ge=0.0, le=3600.0, description="Ramp duration in seconds.")

    @field_validator("at", mode="before")
    @classmethod
    def _parse_at(cls, value: object) -> object:
        if isinstance(value, str):
            return StepTime.parse(value)
        return value


class LightingProgram(_Strict):
    """An ordered list of steps for one night (noon to noon)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    steps: list[Step] = Field(min_length=1)


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class CalendarRule(_Strict):
    """Picks ``program`` for a night when every condition given matches its start date.

    Conditions (all optional, all that are given must hold):
    ``dates`` single dates; ``from_date``/``to_date`` an inclusive range; ``yearless`` month-day
    pairs like ``"09-02"`` (every year); ``weekdays``; ``nth_weekday`` such as
    ``{month: 11, weekday: thu, n: 4}`` (n = -1 for the last one).
    """

    name: str = ""
    program: str = Field(min_length=1)
    dates: list[dt.date] = Field(default_factory=list)
    from_date: dt.date | None = None
    to_date: dt.date | None = None
    yearless: list[str] = Field(default_factory=list)
    weekdays: list[Weekday] = Field(default_factory=list)
    nth_weekday: NthWeekday | None = None

    @field_validator("yearless")
    @classmethod
    def _yearless(cls, values: list[str]) -> list[str]:
        for v in values:
            m = re.fullmatch(r"(\d{2})-(\d{2})", v)
            if not m:
                raise ValueError(f"yearless date {v!r} must be MM-DD")
            try:
                dt.date(2024, int(m[1]), int(m[2]))  # 2024 is a leap year: 02-29 is allowed
            except ValueError as exc:
                raise ValueError(f"yearless date {v!r} does not exist") from exc
        return values

    @model_validator(mode="after")
    def _range(self) -> CalendarRule:
        if self.from_date and self.to_date and self.from_date > self.to_date:
            raise ValueError(f"from_date {self.from_date} is after to_date {self.to_date}")
        return self

    def matches(self, day: dt.date) -> bool:
        """Whether this rule selects its program for the night that starts on ``day``."""
        if self.dates and day not in self.dates:
            return False
        if self.from_date and day < self.from_date:
            return False
        if self.to_date and day > self.to_date:
            return False
        # Formatted by hand: strftime was the calendar check's largest cost (28 years of days).
        if self.yearless and f"{day.month:02d}-{day.day:02d}" not in self.yearless:
            return False
        if self.weekdays and _WEEKDAYS[day.weekday()] not in self.weekdays:
            return False
        return not (self.nth_weekday and not self.nth_weekday.matches(day))


class NthWeekday(_Strict):
    """The n-th (1..5) or last (-1) given weekday of a month, e.g. the 4th Thursday of November."""

    month: int | None = Field(default=None, ge=1, le=12, description="None: every month.")
    weekday: Weekday
    n: int = Field(ge=-5, le=5)

    @field_validator("n")
    @classmethod
    def _nonzero(cls, n: int) -> int:
        if n == 0:
            raise ValueError("n counts from 1 (first) or -1 (last); 0 is not a position")
        return n

    def matches(self, day: dt.date) -> bool:
        """Whether ``day`` is that weekday of that month."""
        if self.month is not None and day.month != self.month:
            return False
        if _WEEKDAYS[day.weekday()] != self.weekday:
            return False
        if self.n > 0:
            return (day.day - 1) // 7 + 1 == self.n
        # Counting from the end: -1 is the last such weekday of the month.
        nxt = day.replace(day=28) + dt.timedelta(days=4)
        month_len = (nxt - dt.timedelta(days=nxt.day)).day
        return (month_len - day.day) // 7 + 1 == -self.n


CalendarRule.model_rebuild()


class LightingCalendar(_Strict):
    """Ordered rules; the first that matches a night's start date wins, else ``default``."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    default: str = Field(min_length=1, description="Program used when no rule matches.")
    rules: list[CalendarRule] = Field(default_factory=list)

    def program_for(self, night: dt.date) -> str:
        """Name of the program that runs the night starting at noon on ``night``."""
        for rule in self.rules:
            if rule.matches(night):
                return rule.program
        return self.default


class Override(_Strict):
    """A temporary level for some groups, from ``start`` until ``until`` (or until cleared).

    Among overrides active at an instant for a group, the newest (latest ``created``, then
    latest ``start``) wins. Times are timezone-aware; naive times are read in the site's zone
    by the config loader.
    """

    id: str = Field(min_length=1)
    groups: list[str] = Field(min_length=1)
    level: Level
    start: dt.datetime
    until: dt.datetime | None = None
    created: dt.datetime | None = None
    reason: str = ""

    @model_validator(mode="after")
    def _order(self) -> Override:
        for name, value in (
            ("start", self.start),
            ("until", self.until),
            ("created", self.created),
        ):
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must carry a time zone")
        if self.until is not None and self.until <= self.start:
            raise ValueError(f"until {self.until.isoformat()} is not after start")
        return self

    def active_at(self, instant: dt.datetime) -> bool:
        """Whether the override holds at ``instant`` (start inclusive, until exclusive)."""
        return self.start <= instant and (self.until is None or instant < self.until)

    @property
    def newest_key(self) -> tuple[dt.datetime, dt.datetime]:
        """Sort key: the newest override has the largest key."""
        return (self.created or self.start, self.start)
