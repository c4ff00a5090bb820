"""Sun times: checked against two references implemented here, independently of astral.

* ``noaa_*``: the NOAA Solar Calculator spreadsheet (NOAA_Solar_Calculations_day.xls, General
  Solar Position), with its standard zenith of 90.833° for sunrise/sunset and −6° below the
  horizon for civil twilight. The spreadsheet evaluates the sun's position at one time of day;
  here it is re-evaluated at the event itself (two passes), which is what makes it good to
  seconds rather than a minute.
* ``usno_*``: the sunrise/sunset algorithm of the Nautical Almanac Office's "Almanac for
  Computers" (1990), a different low-precision solar theory (±1–2 min).

astral implements NOAA's formulas too, but through its own code, iteration and refraction
model; agreement to a minute with both references is the point.
"""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import pytest

from schedules.model import Anchor, Location
from schedules.sun import SunEvent, event_elevation, solar_noon, sun_elevation, sun_event

PHU_LY = Location(name="Phu Ly", latitude=20.54, longitude=105.91, timezone="Asia/Ho_Chi_Minh")
TROMSO = Location(name="Tromsø", latitude=69.65, longitude=18.96, timezone="Europe/Oslo")

# ---- reference 1: NOAA spreadsheet --------------------------------------------------------


def _noaa_sun(jd: float) -> tuple[float, float]:
    """(declination in degrees, equation of time in minutes) at Julian day ``jd``."""
    jc = (jd - 2451545.0) / 36525.0
    geom_mean_long = (280.46646 + jc * (36000.76983 + jc * 0.0003032)) % 360.0
    geom_mean_anom = 357.52911 + jc * (35999.05029 - 0.0001537 * jc)
    eccent = 0.016708634 - jc * (0.000042037 + 0.0000001267 * jc)
    r = math.radians
    eq_ctr = (
        math.sin(r(geom_mean_anom)) * (1.914602 - jc * (0.004817 + 0.000014 * jc))
        + math.sin(r(2 * geom_mean_anom)) * (0.019993 - 0.000101 * jc)
        + math.sin(r(3 * geom_mean_anom)) * 0.000289
    )
    true_long = geom_mean_long + eq_ctr
    omega = 125.04 - 1934.136 * jc
    app_long = true_long - 0.00569 - 0.00478 * math.sin(r(omega))
    mean_obliq = 23 + (26 + (21.448 - jc * (46.815 + jc * (0.00059 - jc * 0.001813))) / 60) / 60
    obliq_corr = mean_obliq + 0.00256 * math.cos(r(omega))
    declination = math.degrees(math.asin(math.sin(r(obliq_corr)) * math.sin(r(app_long))))
    var_y = math.tan(r(obliq_corr / 2)) ** 2
    l0, m = r(geom_mean_long), r(geom_mean_anom)
    eq_time = 4 * math.degrees(
        var_y * math.sin(2 * l0)
        - 2 * eccent * math.sin(m)
        + 4 * eccent * var_y * math.sin(m) * math.cos(2 * l0)
        - 0.5 * var_y * var_y * math.sin(4 * l0)
        - 1.25 * eccent * eccent * math.sin(2 * m)
    )
    return declination, eq_time


def _julian_day(day: dt.date, minutes_utc: float) -> float:
    # The spreadsheet: date serial (days since 1899-12-30) + 2415018.5 + time fraction.
    serial = (day - dt.date(1899, 12, 30)).days
    return serial + 2415018.5 + minutes_utc / 1440.0


def noaa_event(loc: Location, day: dt.date, setting: bool, zenith: float = 90.833) -> dt.datetime:
    """Sunrise/sunset (or civil dawn/dusk with zenith 96) by the NOAA spreadsheet formulas."""
    minutes = 720.0 - 4 * loc.longitude  # first guess: solar noon, in minutes UTC
    for _ in range(3):  # re-evaluate the sun at the event found, as the sheet does at its time
        decl, eqt = _noaa_sun(_julian_day(day, minutes))
        lat = math.radians(loc.latitude)
        d = math.radians(decl)
        ha = math.degrees(
            math.acos(
                math.cos(math.radians(zenith)) / (math.cos(lat) * math.cos(d))
                - math.tan(lat) * math.tan(d)
            )
        )
        noon = 720.0 - 4 * loc.longitude - eqt
        minutes = noon + (4 * ha if setting else -4 * ha)
    utc = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC) + dt.timedelta(minutes=minutes)
    return utc.astimezone(loc.tz)


# ---- reference 2: Almanac for Computers -----------------------------------------------------


def usno_event(loc: Location, day: dt.date, setting: bool, zenith: float = 90.833) -> dt.datetime:
    """Sunrise/sunset by the Almanac for Computers (1990) algorithm, in local time."""
    r, d = math.radians, math.degrees
    n = day.timetuple().tm_yday
    lng_hour = loc.longitude / 15.0
    t = n + ((18 if setting else 6) - lng_hour) / 24.0
    m = 0.9856 * t - 3.289
    lon = (m + 1.916 * math.sin(r(m)) + 0.020 * math.sin(r(2 * m)) + 282.634) % 360.0
    ra = d(math.atan(0.91764 * math.tan(r(lon)))) % 360.0
    ra += math.floor(lon / 90) * 90 - math.floor(ra / 90) * 90  # same quadrant as lon
    ra /= 15.0
    sin_dec = 0.39782 * math.sin(r(lon))
    cos_dec = math.cos(math.asin(sin_dec))
    cos_h = (math.cos(r(zenith)) - sin_dec * math.sin(r(loc.latitude))) / (
        cos_dec * math.cos(r(loc.latitude))
    )
    h = d(math.acos(cos_h)) if setting else 360 - d(math.acos(cos_h))
    local_mean = h / 15.0 + ra - 0.06571 * t - 6.622
    ut = (local_mean - lng_hour) % 24.0
    utc = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC) + dt.timedelta(hours=ut)
    # ``ut`` is taken modulo a day: put it on the local date asked for.
    local = utc.astimezone(loc.tz)
    if local.date() > day:
        local -= dt.timedelta(days=1)
    elif local.date() < day:
        local += dt.timedelta(days=1)
    return local


DATES = [
    dt.date(2026, 1, 15),
    dt.date(2026, 3, 20),  # equinox
    dt.date(2026, 6, 21),  # solstice
    dt.date(2026, 8, 10),
    dt.date(2026, 9, 23),  # equinox
    dt.date(2026, 11, 5),
    dt.date(2026, 12, 21),  # solstice
]


def _at(event: SunEvent) -> dt.datetime:
    assert event.at is not None, event
    return event.at


@pytest.mark.parametrize("day", DATES, ids=str)
def test_phu_ly_sunset_and_sunrise_match_noaa_within_a_minute(day: dt.date) -> None:
    sunset = _at(sun_event(PHU_LY, day, Anchor.SUNSET))
    sunrise = _at(sun_event(PHU_LY, day, Anchor.SUNRISE))
    assert abs((sunset - noaa_event(PHU_LY, day, setting=True)).total_seconds()) < 60
    assert abs((sunrise - noaa_event(PHU_LY, day, setting=False)).total_seconds()) < 60
    # Local times in the site's zone, on the asked date, in a plausible range for 20.5° N.
    assert sunset.tzinfo == ZoneInfo("Asia/Ho_Chi_Minh") or sunset.utcoffset() == dt.timedelta(
        hours=7
    )
    assert sunset.date() == day and sunrise.date() == day
    assert dt.time(17, 10) < sunset.time() < dt.time(18, 50)
    assert dt.time(5, 10) < sunrise.time() < dt.time(6, 40)


@pytest.mark.parametrize("day", DATES, ids=str)
def test_phu_ly_sunset_and_sunrise_match_the_almanac_algorithm(day: dt.date) -> None:
    sunset = _at(sun_event(PHU_LY, day, Anchor.SUNSET))
    sunrise = _at(sun_event(PHU_LY, day, Anchor.SUNRISE))
    assert abs((sunset - usno_event(PHU_LY, day, setting=True)).total_seconds()) < 120
    assert abs((sunrise - usno_event(PHU_LY, day, setting=False)).total_seconds()) < 120


@pytest.mark.parametrize("day", DATES[::2], ids=str)
def test_civil_dusk_and_dawn_match_noaa(day: dt.date) -> None:
    dusk = _at(sun_event(PHU_LY, day, Anchor.DUSK))
    dawn = _at(sun_event(PHU_LY, day, Anchor.DAWN))
    assert abs((dusk - noaa_event(PHU_LY, day, True, zenith=96.0)).total_seconds()) < 60
    assert abs((dawn - noaa_event(PHU_LY, day, False, zenith=96.0)).total_seconds()) < 60
    assert _at(sun_event(PHU_LY, day, Anchor.SUNSET)) < dusk
    assert dawn < _at(sun_event(PHU_LY, day, Anchor.SUNRISE))


def test_the_references_agree_with_each_other() -> None:
    # If both references drifted the same way the tests above would prove little.
    for day in DATES:
        for setting in (True, False):
            a, b = noaa_event(PHU_LY, day, setting), usno_event(PHU_LY, day, setting)
            assert abs((a - b).total_seconds()) < 120


def test_polar_night_and_midnight_sun_in_tromso() -> None:
    winter, summer = dt.date(2026, 12, 21), dt.date(2026, 6, 21)
    for anchor in (Anchor.SUNSET, Anchor.SUNRISE):
        assert sun_event(TROMSO, winter, anchor) == SunEvent(anchor, winter, "always_dark")
        assert sun_event(TROMSO, summer, anchor) == SunEvent(anchor, summer, "always_light")
    # At the winter solstice the sun still climbs to about −3°, so civil twilight happens.
    assert sun_event(TROMSO, winter, Anchor.DUSK).occurs
    assert sun_event(TROMSO, winter, Anchor.DAWN).occurs
    assert sun_event(TROMSO, summer, Anchor.DUSK).state == "always_light"
    assert "stays below" in sun_event(TROMSO, winter, Anchor.SUNSET).describe()


def _crosses(loc: Location, event: SunEvent) -> bool:
    at = _at(event)
    minute = dt.timedelta(minutes=1)
    threshold = event_elevation(event.anchor)
    before = sun_elevation(loc, at - minute, refraction=False) - threshold
    after = sun_elevation(loc, at + minute, refraction=False) - threshold
    return before > 0 > after if event.anchor.is_evening else before < 0 < after


def test_events_at_the_edge_of_polar_night_are_real_crossings() -> None:
    # astral alone reports no sunrise on 15 January in Tromsø although the sun does rise.
    for day in (dt.date(2026, 1, 15), dt.date(2026, 1, 16), dt.date(2026, 11, 26)):
        for anchor in (Anchor.SUNSET, Anchor.SUNRISE):
            event = sun_event(TROMSO, day, anchor)
            assert event.occurs and _crosses(TROMSO, event), event


def test_an_evening_event_after_midnight_belongs_to_the_evening_before() -> None:
    # Late July in Tromsø the sun sets after midnight: the sunset "of 25 July" is the one that
    # ends the day of the 25th, early on the 26th, not the one early on the 25th.
    day = dt.date(2026, 7, 25)
    sunset = _at(sun_event(TROMSO, day, Anchor.SUNSET))
    assert sunset.date() == dt.date(2026, 7, 26) and sunset.hour == 0
    assert _crosses(TROMSO, sun_event(TROMSO, day, Anchor.SUNSET))
    assert sunset > solar_noon(TROMSO, day)


@pytest.mark.parametrize("lat", [-89.0, -75.0, -66.6, -40.0, 0.0, 45.0, 66.6, 72.0, 89.0, 90.0])
def test_total_at_every_latitude(lat: float) -> None:
    loc = Location(name="x", latitude=lat, longitude=10.0, timezone="UTC")
    day = dt.date(2026, 1, 1)
    for _ in range(0, 365, 7):
        for anchor in (Anchor.SUNSET, Anchor.SUNRISE, Anchor.DUSK, Anchor.DAWN):
            event = sun_event(loc, day, anchor)
            assert event.occurs == (event.state == "occurs")
            if event.at is not None:
                assert _crosses(loc, event)
        day += dt.timedelta(days=7)


def test_sun_elevation_needs_an_aware_instant() -> None:
    noon = solar_noon(PHU_LY, dt.date(2026, 6, 21))
    assert 85 < sun_elevation(PHU_LY, noon) <= 90  # the sun is nearly overhead in June
    with pytest.raises(ValueError, match="time zone"):
        sun_elevation(PHU_LY, dt.datetime(2026, 6, 21, 12))
    with pytest.raises(ValueError):
        sun_event(PHU_LY, dt.date(2026, 6, 21), Anchor.TIME)
