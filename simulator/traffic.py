"""The built-in traffic demand model: how many vehicles a counter sees on a road segment.

Figures are for a Vietnamese provincial city, where most vehicles are motorbikes and a counter
(camera or loop) counts *vehicles*, both directions together:

* an arterial carries ~2,000–3,000 veh/h at its peak hour, a collector ~800–1,500, a
  residential street a few hundred;
* two sharp peaks on working days — 06:30–08:00 (work and the school run, schools start at
  07:00) and 16:30–18:30 — a lunch-time bump (people ride home to eat), a busy evening until
  about 21:00 (cafés, night markets), and a deep night low of 2–5 % of the peak (01:00–04:00);
* Saturdays: a softer morning and a longer, busier evening; Sundays and public holidays: a late
  morning and a gentle evening;
* Tết (Lunar New Year): shopping rush the week before, then the roads empty out for the first
  days of the year while people stay home or visit family (``tet=False`` turns it off).

A *traffic day* runs from 04:00 to 04:00: the small hours of Saturday still belong to Friday
night (that is when they are busier). :func:`expected_flow` is the smooth mean;
:func:`counts` adds a per-day factor (weather, events) and Poisson noise, deterministic for a
seed. numpy is not a dependency, so the Poisson sampler is here too.

:func:`run_traffic_counters` plays counters on MQTT for the demo. Like every simulator module it
imports nothing from ``controller``: only the device codecs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import random
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo

from devices.lights import Topics, TrafficCount, encode

__all__ = [
    "PROFILES",
    "TET_DATES",
    "CounterStats",
    "DayType",
    "RoadKind",
    "TrafficSegment",
    "count_series",
    "counts",
    "day_factor",
    "day_type",
    "expected_flow",
    "poisson",
    "run_traffic_counters",
    "tet_factor",
]

log = logging.getLogger(__name__)


class RoadKind(StrEnum):
    """Road types with their own daily shape."""

    ARTERIAL = "arterial"
    COLLECTOR = "collector"
    RESIDENTIAL = "residential"


class DayType(StrEnum):
    """Which daily shape a traffic day follows."""

    WEEKDAY = "weekday"
    SATURDAY = "saturday"
    SUNDAY_HOLIDAY = "sunday_holiday"


# Mean flow during hour h (h = 0..23) as a share of the peak-hour flow. Hours 0–3 are the
# small hours *after* that traffic day's evening (a traffic day runs 04:00–04:00).
# fmt: off
PROFILES: dict[RoadKind, dict[DayType, tuple[float, ...]]] = {
    RoadKind.ARTERIAL: {
        DayType.WEEKDAY: (
            0.045, 0.030, 0.022, 0.022, 0.045, 0.18, 0.60, 1.00, 0.88, 0.62, 0.55, 0.62,
            0.58, 0.50, 0.55, 0.66, 0.85, 1.00, 0.92, 0.72, 0.56, 0.42, 0.26, 0.12,
        ),
        DayType.SATURDAY: (
            0.070, 0.045, 0.030, 0.025, 0.040, 0.13, 0.40, 0.68, 0.78, 0.72, 0.66, 0.66,
            0.58, 0.52, 0.56, 0.64, 0.78, 0.90, 0.92, 0.86, 0.74, 0.58, 0.38, 0.20,
        ),
        DayType.SUNDAY_HOLIDAY: (
            0.050, 0.032, 0.022, 0.020, 0.035, 0.10, 0.28, 0.48, 0.60, 0.64, 0.62, 0.58,
            0.50, 0.45, 0.50, 0.58, 0.70, 0.80, 0.82, 0.76, 0.64, 0.48, 0.28, 0.13,
        ),
    },
    RoadKind.COLLECTOR: {
        DayType.WEEKDAY: (
            0.035, 0.022, 0.016, 0.016, 0.040, 0.20, 0.72, 1.00, 0.70, 0.48, 0.45, 0.70,
            0.55, 0.40, 0.45, 0.55, 0.82, 1.00, 0.85, 0.62, 0.48, 0.34, 0.18, 0.08,
        ),
        DayType.SATURDAY: (
            0.055, 0.035, 0.022, 0.018, 0.035, 0.14, 0.45, 0.66, 0.70, 0.62, 0.58, 0.64,
            0.52, 0.44, 0.48, 0.56, 0.72, 0.86, 0.88, 0.78, 0.64, 0.48, 0.30, 0.15,
        ),
        DayType.SUNDAY_HOLIDAY: (
            0.040, 0.025, 0.016, 0.015, 0.030, 0.09, 0.26, 0.44, 0.56, 0.60, 0.56, 0.54,
            0.46, 0.40, 0.44, 0.52, 0.64, 0.74, 0.76, 0.68, 0.54, 0.38, 0.21, 0.10,
        ),
    },
    RoadKind.RESIDENTIAL: {
        DayType.WEEKDAY: (
            0.030, 0.018, 0.012, 0.012, 0.035, 0.22, 0.85, 1.00, 0.55, 0.35, 0.32, 0.62,
            0.50, 0.30, 0.32, 0.42, 0.75, 1.00, 0.88, 0.66, 0.50, 0.34, 0.16, 0.06,
        ),
        DayType.SATURDAY: (
            0.045, 0.028, 0.018, 0.014, 0.030, 0.15, 0.50, 0.70, 0.62, 0.50, 0.46, 0.60,
            0.50, 0.36, 0.38, 0.46, 0.68, 0.86, 0.90, 0.80, 0.62, 0.44, 0.24, 0.10,
        ),
        DayType.SUNDAY_HOLIDAY: (
            0.035, 0.020, 0.012, 0.011, 0.025, 0.08, 0.24, 0.42, 0.52, 0.56, 0.52, 0.54,
            0.46, 0.34, 0.36, 0.44, 0.60, 0.72, 0.76, 0.66, 0.50, 0.34, 0.17, 0.07,
        ),
    },
}
# fmt: on

#: Friday evenings (and the small hours after them) are busier than other working nights.
FRIDAY_EVENING_FACTOR = 1.12

#: Tết day 1 (mùng 1 tháng Giêng) of the lunar calendar, Gregorian dates.
TET_DATES: tuple[dt.date, ...] = (
    dt.date(2023, 1, 22),
    dt.date(2024, 2, 10),
    dt.date(2025, 1, 29),
    dt.date(2026, 2, 17),
    dt.date(2027, 2, 6),
    dt.date(2028, 1, 26),
    dt.date(2029, 2, 13),
    dt.date(2030, 2, 3),
    dt.date(2031, 1, 23),
    dt.date(2032, 2, 11),
)

#: Flow factor by traffic day relative to Tết day 1: shopping rush before, empty roads after.
# fmt: off
_TET_SHAPE: dict[int, float] = {
    -7: 1.08, -6: 1.10, -5: 1.12, -4: 1.15, -3: 1.15, -2: 1.05, -1: 0.70,
    0: 0.35, 1: 0.45, 2: 0.55, 3: 0.70, 4: 0.85, 5: 0.92, 6: 0.96,
}
# fmt: on
#: Offsets from Tết day 1 that follow the Sunday/holiday shape (the official Tết break).
_TET_HOLIDAY = range(-1, 5)

#: Fixed-date public holidays in Viet Nam (New Year, Reunification Day, Labour Day, National Day).
_FIXED_HOLIDAYS = ("01-01", "04-30", "05-01", "09-01", "09-02")


@lru_cache(maxsize=4096)
def _tet_offset(day: dt.date) -> int | None:
    for tet in TET_DATES:
        off = (day - tet).days
        if -7 <= off <= 6:
            return off
    return None


def tet_factor(day: dt.date) -> float:
    """Flow factor of a traffic day around Tết (1.0 away from it)."""
    off = _tet_offset(day)
    return 1.0 if off is None else _TET_SHAPE[off]


def day_type(day: dt.date, *, holidays: Collection[dt.date] = (), tet: bool = True) -> DayType:
    """The shape a traffic day follows: weekday, Saturday, or Sunday/public holiday."""
    if day in holidays or day.strftime("%m-%d") in _FIXED_HOLIDAYS:
        return DayType.SUNDAY_HOLIDAY
    if tet:
        off = _tet_offset(day)
        if off is not None and off in _TET_HOLIDAY:
            return DayType.SUNDAY_HOLIDAY
    wd = day.weekday()
    if wd == 5:
        return DayType.SATURDAY
    if wd == 6:
        return DayType.SUNDAY_HOLIDAY
    return DayType.WEEKDAY


def _traffic_day(local: dt.datetime) -> tuple[dt.date, float]:
    """``(traffic day, hours since its midnight)``; hours run 4.0 … 28.0."""
    hours = local.hour + local.minute / 60 + (local.second + local.microsecond / 1e6) / 3600
    if hours < 4:
        return local.date() - dt.timedelta(days=1), hours + 24
    return local.date(), hours


def _profile_value(profile: Sequence[float], hours: float) -> float:
    """Linear interpolation between hour centres (h + 0.5), wrapping round the clock."""
    x = hours - 0.5
    i = math.floor(x)
    f = x - i
    a = profile[i % 24]
    b = profile[(i + 1) % 24]
    return a + (b - a) * f


def expected_flow(
    segment_kind: RoadKind | str,
    peak_vph: float,
    local_datetime: dt.datetime,
    *,
    holidays: Collection[dt.date] = (),
    tet: bool = True,
) -> float:
    """Mean flow (veh/h, both directions) at a local wall-clock time; no noise.

    ``local_datetime`` is read as local wall-clock time (naive, or aware in the city's zone).
    """
    kind = RoadKind(segment_kind)
    day, hours = _traffic_day(local_datetime)
    dtype = day_type(day, holidays=holidays, tet=tet)
    return _flow(kind, peak_vph, day, hours, dtype, tet_factor(day) if tet else 1.0)


def _flow(
    kind: RoadKind, peak_vph: float, day: dt.date, hours: float, dtype: DayType, factor: float
) -> float:
    share = _profile_value(PROFILES[kind][dtype], hours)
    if hours >= 19 and dtype is DayType.WEEKDAY and day.weekday() == 4:
        share *= FRIDAY_EVENING_FACTOR
    return max(0.0, peak_vph * share * factor)


def day_factor(seed: int | str, segment: str, day: dt.date) -> float:
    """A traffic day's random factor (weather, events): about ±6 %, deterministic per seed."""
    rng = random.Random(f"day:{seed}:{segment}:{day.isoformat()}")
    return min(1.2, max(0.8, rng.gauss(1.0, 0.06)))


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson(``lam``) sample: Knuth's product method for small means, PTRS above 10.

    PTRS is Hörmann's transformed rejection with squeeze (1993), the method numpy uses.
    """
    if not lam > 0:
        return 0
    if lam < 10:
        limit = math.exp(-lam)
        k = 0
        p = rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + lam + 0.43) if us > 0 else -1
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b) <= (
            -lam + k * loglam - math.lgamma(k + 1)
        ):
            return k


@dataclass(frozen=True)
class TrafficSegment:
    """A counted road segment: its id (as in ``traffic_segment``), kind and peak flow."""

    id: str
    kind: RoadKind
    peak_vph: float


def count_series(
    segment: str,
    kind: RoadKind | str,
    peak_vph: float,
    start: dt.datetime,
    end: dt.datetime,
    interval_s: int,
    seed: int | str = 0,
    *,
    holidays: Collection[dt.date] = (),
    tet: bool = True,
) -> Iterator[tuple[dt.datetime, int]]:
    """``(ts, vehicles)`` for each interval ``(ts - interval_s, ts]`` with ``start < ts <= end``.

    ``start`` must be aware; its zone is the local time of the profiles. Timestamps step in
    real (UTC) seconds, so a daylight-saving change does not stretch an interval.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    tz = start.tzinfo
    kind = RoadKind(kind)
    rng = random.Random(f"counts:{seed}:{segment}:{start.isoformat()}")
    t0 = start.astimezone(dt.UTC)
    t_end = end.astimezone(dt.UTC)
    step = dt.timedelta(seconds=interval_s)
    half = dt.timedelta(seconds=interval_s / 2)
    days: dict[dt.date, tuple[DayType, float]] = {}
    k = 1
    while True:
        ts = t0 + k * step
        if ts > t_end:
            return
        mid = (ts - half).astimezone(tz)
        day, hours = _traffic_day(mid)
        info = days.get(day)
        if info is None:
            info = days[day] = (
                day_type(day, holidays=holidays, tet=tet),
                (tet_factor(day) if tet else 1.0) * day_factor(seed, segment, day),
            )
        lam = _flow(kind, peak_vph, day, hours, info[0], info[1])
        yield ts.astimezone(tz), min(100_000, poisson(rng, lam * interval_s / 3600.0))
        k += 1


def counts(
    segment: str,
    kind: RoadKind | str,
    peak_vph: float,
    start: dt.datetime,
    end: dt.datetime,
    interval_s: int,
    seed: int | str = 0,
    *,
    holidays: Collection[dt.date] = (),
    tet: bool = True,
) -> Iterator[TrafficCount]:
    """Simulated :class:`TrafficCount` messages of a segment from ``start`` to ``end``.

    Deterministic for a seed: the same arguments give the same counts.
    """
    for ts, vehicles in count_series(
        segment, kind, peak_vph, start, end, interval_s, seed, holidays=holidays, tet=tet
    ):
        yield TrafficCount(segment=segment, ts=ts, interval_s=interval_s, vehicles=vehicles)


@dataclass
class CounterStats:
    """What :func:`run_traffic_counters` did."""

    published: int = 0
    dropped: int = 0


async def run_traffic_counters(
    link_publish: Callable[[str, bytes], Awaitable[None]],
    topics: Topics,
    segments: Sequence[TrafficSegment],
    clock: Callable[[], dt.datetime],
    interval_s: int = 60,
    time_scale: float = 1.0,
    *,
    timezone: str | dt.tzinfo | None = None,
    seed: int | str = 0,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    iterations: int | None = None,
    stats: CounterStats | None = None,
) -> CounterStats:
    """Publish a :class:`TrafficCount` per segment every ``interval_s`` of simulated time.

    ``clock()`` gives the simulated now (aware); ``time_scale`` simulated seconds pass per real
    second, so the loop waits ``interval_s / time_scale`` real seconds between rounds. Each
    count covers the ``interval_s`` before ``clock()``. Profiles are read in ``timezone``
    (default: the zone of ``clock()``'s value). A publish that fails (broker away) is counted
    in ``stats.dropped`` and logged; the counter keeps counting. Runs until cancelled, or for
    ``iterations`` rounds.
    """
    if interval_s <= 0 or interval_s > 3600:
        raise ValueError("interval_s must be in 1..3600")
    if time_scale <= 0:
        raise ValueError("time_scale must be positive")
    tz: dt.tzinfo | None = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
    stats = stats if stats is not None else CounterStats()
    rngs = {s.id: random.Random(f"counter:{seed}:{s.id}") for s in segments}
    factors: dict[tuple[str, dt.date], float] = {}
    done = 0
    while iterations is None or done < iterations:
        await sleep(interval_s / time_scale)
        now = clock()
        if now.tzinfo is None:
            raise ValueError("clock() must return an aware datetime")
        local_tz = tz or now.tzinfo
        mid = (now - dt.timedelta(seconds=interval_s / 2)).astimezone(local_tz)
        day = _traffic_day(mid)[0]
        for seg in segments:
            key = (seg.id, day)
            f = factors.get(key)
            if f is None:
                f = factors[key] = day_factor(seed, seg.id, day)
            lam = expected_flow(seg.kind, seg.peak_vph, mid) * f * interval_s / 3600.0
            msg = TrafficCount(
                segment=seg.id,
                ts=now,
                interval_s=interval_s,
                vehicles=min(100_000, poisson(rngs[seg.id], lam)),
            )
            try:
                await link_publish(topics.traffic_count(seg.id), encode(msg))
                stats.published += 1
            except Exception as exc:  # the broker may be away: count it, keep counting
                stats.dropped += 1
                log.warning("traffic count for %s not published: %s", seg.id, exc)
        if len(factors) > 4 * max(1, len(segments)):
            factors = {k: v for k, v in factors.items() if k[1] >= day}
        done += 1
    return stats
