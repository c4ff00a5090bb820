"""``cityctl schedule preview``: what a schedule does, before it goes live."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from controller.config import CityConfig
from schedules.energy import LampPowerModel
from schedules.evaluate import evaluate, transitions
from schedules.model import Anchor
from schedules.preview import NightSummary, YearSummary, plot_night, plot_year, year_summary
from schedules.sun import sun_event

__all__ = ["preview_night", "preview_year"]


def _group_watts(cfg: CityConfig, group: str) -> tuple[int, float]:
    lamps = [w for g, _, w, _ in cfg.nodes() if g.id == group]
    return len(lamps), sum(lamps)


def preview_night(cfg: CityConfig, group: str, night: dt.date, out: str | None) -> int:
    """Print the night's transitions and levels; write a PNG of the level over the night."""
    gs = cfg.group_schedule(group)
    tz = cfg.location.tz
    g = cfg.group(group)
    prog = gs.calendar.program_for(night)
    print(f"{cfg.site.name} — group {group} ({g.road}), night of {night:%a %Y-%m-%d}")
    print(f"program: {prog}" + (f" (calendar {g.calendar})" if g.calendar else ""))
    sun = []
    for anchor in (Anchor.SUNSET, Anchor.DUSK):
        sun.append((anchor.value, sun_event(cfg.location, night, anchor)))
    for anchor in (Anchor.DAWN, Anchor.SUNRISE):
        sun.append((anchor.value, sun_event(cfg.location, night + dt.timedelta(days=1), anchor)))
    print("sun:     " + "   ".join(f"{name} {_fmt_event(ev, tz)}" for name, ev in sun))
    print()
    print(f"{'local time':<19} {'level':>6} {'ramp':>6}  source")
    trs = transitions(gs, night)
    for tr in trs:
        local = tr.at.astimezone(tz)
        print(f"{local:%Y-%m-%d %H:%M:%S} {tr.level:5.0f}% {tr.ramp_s:5.0f}s  {tr.source}")
    if not trs:
        print(
            "(no transitions: the level stays "
            f"{evaluate(gs, dt.datetime.combine(night, dt.time(12), tz)).level:.0f} % all night)"
        )
    n, watts = _group_watts(cfg, group)
    lamp = LampPowerModel(rated_w=watts / n if n else g.lamp_w)
    # Energy of this night for the whole group, sampled each minute.
    start = dt.datetime.combine(night, dt.time(12), tz)
    wh = 0.0
    lit_min = 0
    for i in range(24 * 60):
        lv = evaluate(gs, start + dt.timedelta(minutes=i)).level
        wh += lamp.power_w(lv) * n / 60.0
        lit_min += lv > 0
    print()
    print(
        f"{n} lamps, {watts / 1000:.1f} kW rated: lit {lit_min / 60:.1f} h, {wh / 1000:.1f} kWh tonight"
    )
    path = Path(out or f"preview-{group}-{night.isoformat()}.png")
    plot_night(gs, night, path)
    print(f"plot: {path}")
    return 0


def preview_year(cfg: CityConfig, group: str, year: int, out: str | None) -> int:
    """Print burning hours and energy for a year against all-night full-on, with a PNG."""
    gs = cfg.group_schedule(group)
    n, watts = _group_watts(cfg, group)
    g = cfg.group(group)
    lamp = LampPowerModel(rated_w=watts / n if n else g.lamp_w)
    summary = year_summary(gs, year, rated_w_total=watts, lamp=lamp)
    print(
        f"{cfg.site.name} — group {group} ({g.road}), year {year}, {n} lamps, {watts / 1000:.1f} kW rated"
    )
    print(format_year(summary))
    path = Path(out or f"preview-{group}-{year}.png")
    plot_year(summary, path)
    print(f"plot: {path}")
    return 0


def _fmt_event(ev: object, tz: dt.tzinfo) -> str:
    when = getattr(ev, "at", None)
    if isinstance(when, dt.datetime):
        return when.astimezone(tz).strftime("%H:%M")
    return str(getattr(ev, "kind", "none"))


def format_year(summary: YearSummary) -> str:
    """Totals and a month-by-month table of a year summary."""
    lines = [
        f"burning hours {summary.burning_hours:8.0f} h",
        f"energy        {summary.energy_kwh:8.0f} kWh   (all night at 100 %: "
        f"{summary.baseline_kwh:.0f} kWh)",
        f"saving        {summary.saving_pct:8.1f} %",
        "",
        f"{'month':<7}{'nights':>7}{'lit h':>8}{'kWh':>9}{'full-on kWh':>13}{'saving':>8}"
        f"   earliest on / latest off",
    ]
    by_month: dict[int, list[NightSummary]] = {}
    for n in summary.nights:
        by_month.setdefault(n.night.month, []).append(n)
    for month, nights in sorted(by_month.items()):
        lit = sum(n.burning_h for n in nights)
        kwh = sum(n.energy_wh for n in nights) / 1000
        base = sum(n.baseline_wh for n in nights) / 1000
        ons = [n.on_at for n in nights if n.on_at is not None]
        offs = [n.off_at for n in nights if n.off_at is not None]
        first_on = min((t.timetz() for t in ons), default=None)
        last_off = max((t.timetz() for t in offs), default=None)
        span = f"{first_on:%H:%M} / {last_off:%H:%M}" if first_on and last_off else "—"
        saving = 100 * (1 - kwh / base) if base else 0.0
        lines.append(
            f"{dt.date(summary.year, month, 1):%b}    {len(nights):>7}{lit:>8.0f}{kwh:>9.0f}"
            f"{base:>13.0f}{saving:>7.1f}%   {span}"
        )
    return "\n".join(lines)
