"""Sun events (sunset, sunrise, civil dusk and dawn) for a site and a local date.

A thin, total layer over :mod:`astral`: astral raises ``ValueError`` when an event does not
happen (polar night, midnight sun, civil twilight that lasts all night), and a street light
controller must never crash on a winter night in Tromsø. Here the answer is always a
:class:`SunEvent` that either carries the instant or says why there is none:

* ``always_dark`` — the sun stays below the event's elevation all day (polar night);
* ``always_light`` — the sun stays above it all day (midnight sun, white nights for dusk/dawn).

Which of the two is decided by the sun's elevation at local solar noon, the highest point of
the day: if even that is below the event's elevation, the sun never gets up to it.

Everything is a pure function of its arguments and is cached (a site has a few thousand
distinct (date, event) pairs a decade).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import astral
import astral.sun
from astral import Observer

from schedules.model import Anchor, Location

__all__ = [
    "CIVIL_DEPRESSION",
    "SunEvent",
    "SunState",
    "event_elevation",
    "solar_noon",
    "sun_elevation",
    "sun_event",
]

#: Depression of the sun's centre below the horizon at civil dusk and dawn, in degrees.
CIVIL_DEPRESSION = 6.0
#: astral's apparent radius of the sun (32 arc minutes across); sunset is when the upper
#: limb touches the horizon.
_SUN_APPARENT_RADIUS = 32.0 / (60.0 * 2.0)

SunState = Literal["occurs", "always_dark", "always_light"]


@dataclass(frozen=True)
class SunEvent:
    """The answer to "when is sunset (sunrise, dusk, dawn) on this local date?".

    ``at`` is an aware datetime in the site's zone when ``state == "occurs"``, else ``None``
    and ``state`` says whether the sun stays below (``always_dark``) or above
    (``always_light``) the event's elevation for the whole day.
    """

    anchor: Anchor
    day: dt.date
    state: SunState
    at: dt.datetime | None = None

    @property
    def occurs(self) -> bool:
        """Whether the event happens (``at`` is set)."""
        return self.at is not None

    def describe(self) -> str:
        """Short human text: ``"18:52"`` or ``"no sunset (sun stays below)"``."""
        if self.at is not None:
            return self.at.strftime("%H:%M")
        side = "below" if self.state == "always_dark" else "above"
        return f"no {self.anchor.value} (sun stays {side})"


def _zenith(anchor: Anchor) -> float:
    """Geometric zenith angle astral uses for the event, before refraction."""
    if anchor in (Anchor.SUNSET, Anchor.SUNRISE):
        return 90.0 + _SUN_APPARENT_RADIUS
    if anchor in (Anchor.DUSK, Anchor.DAWN):
        return 90.0 + CIVIL_DEPRESSION
    raise ValueError(f"{anchor.value!r} is not a sun event")


def event_elevation(anchor: Anchor) -> float:
    """Geometric (unrefracted) elevation of the sun's centre at the event, in degrees.

    About −0.79° for sunset/sunrise (radius plus refraction at the horizon, exactly as astral
    computes it, so that "the event does not happen" here agrees with astral) and about
    −6.06° for civil dusk/dawn.
    """
    zenith = _zenith(anchor)
    return 90.0 - (zenith + float(astral.refraction_at_zenith(zenith)))


def _observer(location: Location) -> Observer:
    return Observer(latitude=location.latitude, longitude=location.longitude, elevation=0.0)


@lru_cache(maxsize=8192)
def _solar_noon(location: Location, day: dt.date) -> dt.datetime:
    tz = location.tz
    obs = _observer(location)
    # astral computes noon for the UTC date; in a zone far from its longitude's solar time that
    # can land on the neighbouring local date, so look around and keep the one on ``day``.
    candidates = [astral.sun.noon(obs, day + dt.timedelta(days=k), tz) for k in (0, -1, 1)]
    for c in candidates:
        if c.astimezone(tz).date() == day:
            return c.astimezone(tz)
    return candidates[0].astimezone(tz)


def solar_noon(location: Location, day: dt.date) -> dt.datetime:
    """Local solar noon (the sun's highest point) on the local date ``day``, in the site's zone."""
    return _solar_noon(location, day)


def sun_elevation(location: Location, instant: dt.datetime, *, refraction: bool = True) -> float:
    """Elevation of the sun's centre above the horizon at ``instant``, in degrees.

    ``refraction=True`` gives the apparent elevation (what a light sensor sees); ``False`` the
    geometric one. ``instant`` must be timezone-aware.
    """
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"instant {instant.isoformat()} has no time zone; pass an aware datetime")
    return float(astral.sun.elevation(_observer(location), instant, with_refraction=refraction))


def _astral_event(obs: Observer, day: dt.date, anchor: Anchor, tz: dt.tzinfo) -> dt.datetime:
    if anchor is Anchor.SUNSET:
        return astral.sun.sunset(obs, day, tzinfo=tz)
    if anchor is Anchor.SUNRISE:
        return astral.sun.sunrise(obs, day, tzinfo=tz)
    if anchor is Anchor.DUSK:
        return astral.sun.dusk(obs, day, depression=CIVIL_DEPRESSION, tzinfo=tz)
    return astral.sun.dawn(obs, day, depression=CIVIL_DEPRESSION, tzinfo=tz)


def _window(location: Location, day: dt.date, anchor: Anchor) -> tuple[dt.datetime, dt.datetime]:
    """The half day in which the event must lie: solar noon to the following solar midnight for
    an evening event, the previous solar midnight to solar noon for a morning one.

    Between noon and midnight the sun only goes down, so there is at most one crossing; this
    is also what ties an event to a night (the sunset of 25 July in Tromsø is at 00:15 on the
    26th, not the 00:10 on the 25th that belongs to the evening before).
    """
    # In UTC: arithmetic on datetimes that share a zone is wall-clock arithmetic in Python,
    # which is an hour off across a DST change.
    noon = _solar_noon(location, day).astimezone(dt.UTC)
    half = dt.timedelta(hours=12)
    return (noon, noon + half) if anchor.is_evening else (noon - half, noon)


def _bisect(
    location: Location, lo: dt.datetime, hi: dt.datetime, threshold: float, falling: bool
) -> dt.datetime:
    """The instant in [lo, hi] where the geometric elevation crosses ``threshold`` (to ~0.1 s)."""
    a, b = lo.timestamp(), hi.timestamp()
    while b - a > 0.1:
        mid = (a + b) / 2
        above = sun_elevation(location, dt.datetime.fromtimestamp(mid, dt.UTC), refraction=False)
        if (above >= threshold) == falling:
            a = mid
        else:
            b = mid
    return dt.datetime.fromtimestamp((a + b) / 2, location.tz)


def _straddles(location: Location, at: dt.datetime, anchor: Anchor) -> bool:
    """Whether the sun really crosses the event's elevation within a minute of ``at``.

    astral iterates its formula only twice; where the sun skims the horizon (the weeks around
    the start and end of midnight sun or polar night) that can leave it several minutes off.
    """
    threshold = event_elevation(anchor)
    minute = dt.timedelta(minutes=1)
    at = at.astimezone(dt.UTC)  # real elapsed time, not wall-clock arithmetic
    before = sun_elevation(location, at - minute, refraction=False) >= threshold
    after = sun_elevation(location, at + minute, refraction=False) >= threshold
    return before == anchor.is_evening and after != anchor.is_evening


@lru_cache(maxsize=16384)
def _sun_event(location: Location, day: dt.date, anchor: Anchor) -> SunEvent:
    tz = location.tz
    obs = _observer(location)
    lo, hi = _window(location, day, anchor)
    slack = dt.timedelta(minutes=5)  # solar midnight is only roughly noon + 12 h
    # astral first; it works on local dates, so when its answer is outside the window the
    # event we want is the one of the neighbouring date.
    for k in (0, 1 if anchor.is_evening else -1):
        try:
            at = _astral_event(obs, day + dt.timedelta(days=k), anchor, tz).astimezone(tz)
        except (ValueError, ArithmeticError):
            break  # polar day or night, or astral gave up near the boundary: decide below
        if lo - slack <= at <= hi + slack:
            if _straddles(location, at, anchor):
                return SunEvent(anchor, day, "occurs", at)
            break  # astral is minutes off near the polar limits: solve it below instead
    threshold = event_elevation(anchor)
    if sun_elevation(location, _solar_noon(location, day), refraction=False) < threshold:
        return SunEvent(anchor, day, "always_dark")
    midnight = hi if anchor.is_evening else lo
    if sun_elevation(location, midnight, refraction=False) >= threshold:
        return SunEvent(anchor, day, "always_light")
    # The sun does cross, but astral's one-shot formula (declination taken at one instant)
    # missed it: this happens in the few days at the edge of polar night. Solve directly.
    return SunEvent(anchor, day, "occurs", _bisect(location, lo, hi, threshold, anchor.is_evening))


def sun_event(location: Location, day: dt.date, anchor: Anchor) -> SunEvent:
    """Sunset, sunrise, civil dusk or civil dawn at ``location`` on the local date ``day``.

    Never raises for a real place and date: when the event does not happen the result says
    ``always_dark`` or ``always_light`` (decided by the sun's elevation at local solar noon).
    ``anchor`` must be a sun anchor, not :attr:`Anchor.TIME` (``ValueError``).
    """
    if anchor is Anchor.TIME:
        raise ValueError("Anchor.TIME is a clock time, not a sun event")
    return _sun_event(location, day, anchor)
