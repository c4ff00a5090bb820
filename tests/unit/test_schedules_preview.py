"""Lamp power model, level sampling, year summaries and the preview charts."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from schedules.energy import LampPowerModel
from schedules.evaluate import GroupSchedule, night_bounds
from schedules.model import Anchor, LightingCalendar, LightingProgram, Location, Override
from schedules.preview import (
    format_night_table,
    night_table,
    plot_night,
    plot_year,
    sample_levels,
    year_summary,
)
from schedules.sun import sun_event

PHU_LY = Location(name="Phu Ly", latitude=20.54, longitude=105.91, timezone="Asia/Ho_Chi_Minh")
TROMSO = Location(name="Tromsø", latitude=69.65, longitude=18.96, timezone="Europe/Oslo")
VN = ZoneInfo("Asia/Ho_Chi_Minh")

ARTERIAL = LightingProgram.model_validate(
    {
        "name": "arterial",
        "steps": [
            {"at": "sunset+10min", "level": 100, "ramp_s": 60},
            {"at": "23:00", "level": 80, "ramp_s": 300},
            {"at": "00:30", "level": 60, "ramp_s": 300},
            {"at": "04:30", "level": 80, "ramp_s": 300},
            {"at": "sunrise-10min", "level": 0, "ramp_s": 60},
        ],
    }
)


def group(
    location: Location = PHU_LY, program: LightingProgram = ARTERIAL, **kw: object
) -> GroupSchedule:
    return GroupSchedule(
        group="ql1a",
        location=location,
        calendar=LightingCalendar(name="c", default=program.name),
        programs={program.name: program},
        **kw,  # type: ignore[arg-type]
    )


# ---- lamp power -----------------------------------------------------------------------------


def test_lamp_power_model() -> None:
    lamp = LampPowerModel(rated_w=100)
    assert lamp.power_w(0) == 0.5  # standby only
    assert lamp.power_w(100) == pytest.approx(100.5)
    assert lamp.efficiency(100) == pytest.approx(0.92)
    assert lamp.efficiency(10) < lamp.efficiency(50) < lamp.efficiency(100)
    # Driver losses: half the light costs more than half the power, and less than all of it.
    assert 50.5 < lamp.power_w(50) < 100.5
    levels = [x / 4 for x in range(401)]
    powers = [lamp.power_w(x) for x in levels]
    assert powers == sorted(powers)  # monotonic
    assert lamp.led_power_w(100) == pytest.approx(92)
    assert lamp.power_w(150) == lamp.power_w(100) and lamp.power_w(-5) == 0.5
    with pytest.raises(ValueError):
        LampPowerModel(rated_w=100, driver_eff_full=0)


def test_energy_from_samples_and_ramps() -> None:
    lamp = LampPowerModel(rated_w=100, standby_w=0)
    t0 = dt.datetime(2026, 6, 21, 18, tzinfo=VN)
    samples = [(t0, 100.0), (t0 + dt.timedelta(hours=1), 0.0), (t0 + dt.timedelta(hours=2), 0.0)]
    assert lamp.energy_wh(samples) == pytest.approx(100)
    assert lamp.energy_wh(samples[:1], end=t0 + dt.timedelta(minutes=30)) == pytest.approx(50)
    # Simpson over a ramp against a brute-force Riemann sum.
    fine = sum(lamp.power_w(100 * (k + 0.5) / 10000) for k in range(10000)) * 0.36 / 3600
    assert lamp.ramp_energy_wh(0, 100, 3600) == pytest.approx(fine, rel=1e-4)


# ---- sampling and tables --------------------------------------------------------------------


def test_sample_levels_and_night_table() -> None:
    gs = group()
    start, end = night_bounds(dt.date(2026, 6, 21), VN)
    samples = sample_levels(gs, start, end, 600)
    assert len(samples) == 24 * 6 + 1
    assert samples[0] == (start, 0.0)
    assert dict(samples)[dt.datetime(2026, 6, 21, 22, tzinfo=VN)] == 100
    assert dict(samples)[dt.datetime(2026, 6, 22, 2, tzinfo=VN)] == 60
    rows = night_table(gs, dt.date(2026, 6, 21))
    assert [r.level for r in rows] == [100, 80, 60, 80, 0]
    text = format_night_table(gs, dt.date(2026, 6, 21))
    assert "program arterial" in text and "sunset 18:39" in text
    assert "23:00   80.0 %  ramp 300 s" in text


# ---- year summary ---------------------------------------------------------------------------


def test_year_summary_is_fast_and_matches_a_60_s_sampling() -> None:
    gs = group(min_level=10)
    lamp = LampPowerModel(rated_w=250)
    began = time.perf_counter()
    summary = year_summary(gs, 2026, 48 * 250, lamp)
    assert time.perf_counter() - began < 3.0
    assert len(summary.nights) == 365
    # Phu Ly: about 11–13 h of dark a night. The program comes on 10 min after sunset and
    # starts its 1-min switch-off ramp 10 min before sunrise: 19 min a night less than dark.
    dark = sum(n.dark_h for n in summary.nights)
    assert 4200 < dark < 4500
    assert summary.burning_hours == pytest.approx(dark - 365 * 19 / 60, abs=0.1)
    assert 10 < summary.saving_pct < 35
    assert summary.energy_kwh < summary.baseline_kwh
    for night in (summary.nights[0], summary.nights[171], summary.nights[300]):
        start, end = night_bounds(night.night, VN)
        sampled = 48 * lamp.energy_wh(sample_levels(gs, start, end, 60), end=end)
        assert night.energy_wh == pytest.approx(sampled, rel=5e-3)
        sunset = sun_event(PHU_LY, night.night, Anchor.SUNSET).at
        assert sunset is not None and night.on_at == sunset + dt.timedelta(minutes=10)
        assert night.off_at is not None and night.off_at.hour in (5, 6)


def test_year_summary_counts_overrides_and_polar_nights() -> None:
    hold = Override(
        id="dark", groups=["ql1a"], level=0, start=dt.datetime(2026, 3, 1, 12, tzinfo=VN),
        until=dt.datetime(2026, 3, 2, 12, tzinfo=VN),
    )  # fmt: skip
    with_override = year_summary(group(overrides=(hold,)), 2026, 1000)
    plain = year_summary(group(), 2026, 1000)
    march_1 = (dt.date(2026, 3, 1) - dt.date(2026, 1, 1)).days
    assert with_override.nights[march_1].energy_wh == 0
    assert with_override.nights[march_1].on_at is None
    assert plain.nights[march_1].energy_wh > 0

    polar = LightingProgram.model_validate(
        {"name": "p", "steps": [{"at": "sunset", "level": 100}, {"at": "sunrise", "level": 0}]}
    )
    summary = year_summary(group(TROMSO, polar), 2026, 1000)
    dec21 = summary.nights[354]
    assert dec21.night == dt.date(2026, 12, 21)
    assert dec21.burning_h == pytest.approx(24) and dec21.off_at is None
    assert dec21.sunset.state == "always_dark"
    jun21 = summary.nights[171]
    assert jun21.burning_h == 0 and jun21.on_at is None and jun21.baseline_wh == 0
    assert summary.saving_pct == pytest.approx(0, abs=1e-6)  # it *is* the baseline


def test_plots_write_png_files(tmp_path: Path) -> None:
    gs = group(TROMSO)
    night_png = plot_night(gs, dt.date(2026, 12, 21), tmp_path / "night.png")
    assert night_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    phu_ly_png = plot_night(group(), dt.date(2026, 6, 21), tmp_path / "phu-ly.png")
    assert phu_ly_png.stat().st_size > 10_000
    year_png = plot_year(year_summary(gs, 2026, 1000), tmp_path / "year.png")
    assert year_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
