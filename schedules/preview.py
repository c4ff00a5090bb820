"""Previews of a group's schedule for people: a night as a table or a chart, a year in numbers
and as a chart of transition times through the seasons.

The only IO in :mod:`schedules` is here, in :func:`plot_night` and :func:`plot_year`, which
write PNG files (or, given a binary file object and ``fmt``, any format matplotlib writes, such
as the SVG the HTTP API serves). They draw on a matplotlib ``Figure`` with the Agg canvas
directly, not through ``pyplot``: no GUI backend, no global figure state, safe to call from any
thread of the controller's process. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, overload

from schedules.energy import LampPowerModel
from schedules.evaluate import (
    NOON,
    GroupSchedule,
    ResolvedStep,
    Transition,
    _plan,
    _segments_ts,
    clamp_min_dim,
    level_at,
    night_bounds,
    resolve_steps,
    transitions,
)
from schedules.model import Anchor, LightingProgram, Step, StepTime
from schedules.sun import SunEvent, sun_event

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "NightSummary",
    "YearSummary",
    "format_night_table",
    "format_transition",
    "night_table",
    "plot_night",
    "plot_year",
    "sample_levels",
    "year_summary",
]

_DAY = dt.timedelta(days=1)
#: Ramps are integrated at this resolution (the brief's 60 s sampling; flat parts are exact).
_SAMPLE_S = 60.0
#: The reference a dimming schedule is measured against: full light from sunset to sunrise.
_BASELINE = LightingProgram(
    name="baseline",
    description="Full light from sunset to sunrise, no dimming.",
    steps=[
        Step(at=StepTime(anchor=Anchor.SUNSET), level=100.0),
        Step(at=StepTime(anchor=Anchor.SUNRISE), level=0.0),
    ],
)


# ---- tables ---------------------------------------------------------------------------------


def night_table(group: GroupSchedule, night: dt.date) -> list[Transition]:
    """The night's transitions (the rows of a night table); see :func:`format_night_table`."""
    return transitions(group, night)


def format_transition(tr: Transition, tz: dt.tzinfo) -> str:
    """One table row: ``"23:00  80 %  ramp 300 s  step  arterial step 2/5 (23:00)"``."""
    local = tr.at.astimezone(tz)
    ramp = f"ramp {tr.ramp_s:g} s" if tr.ramp_s else "at once"
    return f"{local:%H:%M}  {tr.level:5.1f} %  {ramp:<12} {tr.kind:<14} {tr.source}"


def format_night_table(group: GroupSchedule, night: dt.date) -> str:
    """The night as text: a header with the program and sun times, then one transition a line."""
    tz = group.tz
    program = group.calendar.program_for(night)
    events = [
        sun_event(group.location, night, Anchor.SUNSET),
        sun_event(group.location, night, Anchor.DUSK),
        sun_event(group.location, night + _DAY, Anchor.DAWN),
        sun_event(group.location, night + _DAY, Anchor.SUNRISE),
    ]
    lines = [
        f"night of {night} — group {group.group}, program {program} "
        f"({group.location.name}, {group.location.timezone})",
        " · ".join(f"{e.anchor.value} {e.describe()}" for e in events),
    ]
    rows = night_table(group, night)
    lines += [format_transition(tr, tz) for tr in rows] or ["(no change of level this night)"]
    return "\n".join(lines)


def sample_levels(
    group: GroupSchedule, start: dt.datetime, end: dt.datetime, step_s: float
) -> list[tuple[dt.datetime, float]]:
    """The level every ``step_s`` seconds from ``start`` up to and including ``end`` (aware),
    instants in the site's zone."""
    if step_s <= 0:
        raise ValueError(f"step_s must be > 0, not {step_s}")
    tz = group.tz
    t0, t1 = start.timestamp(), end.timestamp()
    out = []
    k = 0
    while (t := t0 + k * step_s) <= t1 + 1e-9:
        at = dt.datetime.fromtimestamp(t, tz)
        out.append((at, level_at(group, at)))
        k += 1
    return out


# ---- a year in numbers ----------------------------------------------------------------------


@dataclass(frozen=True)
class NightSummary:
    """One night of :func:`year_summary`.

    ``on_at``: when the lights first come on (``None``: never); ``off_at``: when they go off
    for the rest of the night (``None``: never on, or still on at noon as in a polar night).
    ``dark_h`` is sunset to sunrise, the baseline's burning time.
    """

    night: dt.date
    program: str
    on_at: dt.datetime | None
    off_at: dt.datetime | None
    burning_h: float
    energy_wh: float
    baseline_wh: float
    dark_h: float
    sunset: SunEvent
    sunrise: SunEvent
    steps: tuple[ResolvedStep, ...]
    dark_from: dt.datetime
    dark_until: dt.datetime


@dataclass(frozen=True)
class YearSummary:
    """Burning hours and energy of a group over the nights that start in ``year``, against the
    baseline of full light from sunset to sunrise with the same lamps."""

    group: str
    location_name: str
    timezone: str
    year: int
    rated_w_total: float
    nights: tuple[NightSummary, ...]

    @property
    def burning_hours(self) -> float:
        """Hours with the level above 0."""
        return sum(n.burning_h for n in self.nights)

    @property
    def energy_kwh(self) -> float:
        """Energy drawn by the group following its schedule, in kWh."""
        return sum(n.energy_wh for n in self.nights) / 1000.0

    @property
    def baseline_kwh(self) -> float:
        """Energy at full light from sunset to sunrise every night, in kWh."""
        return sum(n.baseline_wh for n in self.nights) / 1000.0

    @property
    def saving_pct(self) -> float:
        """Saving against the baseline, in percent (0 when the baseline is 0)."""
        base = self.baseline_kwh
        return 100.0 * (base - self.energy_kwh) / base if base > 0 else 0.0


def _integrate(power: Callable[[float], float], l0: float, l1: float, seconds: float) -> float:
    """Watt-seconds of ``power(level)`` while the level goes linearly l0 → l1 (Simpson)."""
    if seconds <= 0.0:
        return 0.0
    if l0 == l1:
        return power(l0) * seconds
    n = max(2, math.ceil(seconds / _SAMPLE_S))
    n += n % 2
    acc = power(l0) + power(l1)
    for k in range(1, n):
        acc += (4.0 if k % 2 else 2.0) * power(l0 + (l1 - l0) * k / n)
    return acc * (seconds / n) / 3.0


def _summarise_night(
    group: GroupSchedule, night: dt.date, lamp: LampPowerModel, lamps: float
) -> NightSummary:
    tz = group.tz
    start, end = night_bounds(night, tz)
    a, b = start.timestamp(), end.timestamp()

    def power(raw: float) -> float:
        # The lamps show the clamped level; energy follows what they show.
        return lamp.power_w(clamp_min_dim(raw, group.min_level))

    energy = burning = 0.0
    on: float | None = None
    off: float | None = None
    for t0, t1, l0, l1 in _segments_ts(group, a, b):
        energy += _integrate(power, l0, l1, t1 - t0)
        if max(l0, l1) > 0.0:  # linear and ≥ 0: above 0 all along but at most one end
            burning += t1 - t0
            on = t0 if on is None else on
            off = t1
    if off is not None and off >= b:
        off = None  # still on at noon: no "off" this night
    dark = resolve_steps(_BASELINE, group.location, night)
    dark_s = dark[1].at.timestamp() - dark[0].at.timestamp()  # elapsed, not wall-clock
    baseline = lamp.power_w(100.0) * dark_s + lamp.power_w(0.0) * ((b - a) - dark_s)
    return NightSummary(
        night=night,
        program=_plan(group, night).program,
        on_at=None if on is None else dt.datetime.fromtimestamp(on, tz),
        off_at=None if off is None else dt.datetime.fromtimestamp(off, tz),
        burning_h=burning / 3600.0,
        energy_wh=lamps * energy / 3600.0,
        baseline_wh=lamps * baseline / 3600.0,
        dark_h=dark_s / 3600.0,
        sunset=sun_event(group.location, night, Anchor.SUNSET),
        sunrise=sun_event(group.location, night + _DAY, Anchor.SUNRISE),
        steps=_plan(group, night).steps,
        dark_from=dark[0].at,
        dark_until=dark[1].at,
    )


def year_summary(
    group: GroupSchedule, year: int, rated_w_total: float, lamp: LampPowerModel | None = None
) -> YearSummary:
    """Burning hours, energy and saving of ``group`` over the nights starting in ``year``.

    ``rated_w_total`` is the group's installed power at full light. ``lamp`` is the model of
    one lamp; the group counts as ``rated_w_total / lamp.rated_w`` of them (standby included).
    Without ``lamp``, the group is one lumped lamp of ``rated_w_total`` with the default driver
    curve and no standby. The level function is exact between steps; ramps are integrated at
    60 s. Overrides of the group count too.
    """
    if not rated_w_total >= 0.0:
        raise ValueError(f"rated_w_total must be ≥ 0 W, not {rated_w_total}")
    if lamp is None:
        lamp, lamps = LampPowerModel(rated_w=rated_w_total, standby_w=0.0), 1.0
    else:
        lamps = rated_w_total / lamp.rated_w if lamp.rated_w > 0 else 0.0
    nights = []
    night = dt.date(year, 1, 1)
    while night.year == year:
        nights.append(_summarise_night(group, night, lamp, lamps))
        night += _DAY
    return YearSummary(
        group=group.group,
        location_name=group.location.name,
        timezone=group.location.timezone,
        year=year,
        rated_w_total=rated_w_total,
        nights=tuple(nights),
    )


# ---- charts ---------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    # matplotlib is heavy and only needed here; the Agg canvas renders PNGs without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


@overload
def plot_night(
    group: GroupSchedule, night: dt.date, path: str | Path, *, fmt: str = ...
) -> Path: ...
@overload
def plot_night(
    group: GroupSchedule, night: dt.date, path: BinaryIO, *, fmt: str = ...
) -> BinaryIO: ...
def plot_night(
    group: GroupSchedule, night: dt.date, path: str | Path | BinaryIO, *, fmt: str = "png"
) -> Path | BinaryIO:
    """Write a PNG of the night's level (steps and ramps) from 12:00 to 12:00 local time,
    with the sun events marked. Returns the path written.

    ``path`` may also be a binary file object (an ``io.BytesIO``); ``fmt`` is the format
    written (``"png"``, ``"svg"`` …)."""
    from matplotlib import dates

    mdates: Any = dates  # its locators and formatters carry no type hints

    tz = group.tz
    start, end = night_bounds(night, tz)
    a, b = start.timestamp(), end.timestamp()
    xs: list[dt.datetime] = []
    ys: list[float] = []
    for t0, t1, l0, l1 in _segments_ts(group, a, b):
        # A few points per ramp so the min-dim clamp (not linear) draws right.
        n = 1 if l0 == l1 else max(2, min(30, math.ceil((t1 - t0) / _SAMPLE_S)))
        for k in range(n + 1):
            t = t0 + (t1 - t0) * k / n
            xs.append(dt.datetime.fromtimestamp(t, tz))
            ys.append(clamp_min_dim(l0 + (l1 - l0) * k / n, group.min_level))

    fig = _figure(11, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xs, ys, color="#d08a00", linewidth=2, label="wanted level")
    ax.fill_between(xs, ys, color="#f5c542", alpha=0.25)
    for tr in transitions(group, night):
        ax.plot([tr.at], [tr.level], "o", color="#444444", markersize=4)
    events = [
        (sun_event(group.location, night, Anchor.SUNSET), "#c0392b"),
        (sun_event(group.location, night, Anchor.DUSK), "#8e44ad"),
        (sun_event(group.location, night + _DAY, Anchor.DAWN), "#8e44ad"),
        (sun_event(group.location, night + _DAY, Anchor.SUNRISE), "#c0392b"),
    ]
    for event, colour in events:
        if event.at is None or not a <= event.at.timestamp() <= b:
            continue
        ax.axvline(event.at, color=colour, linestyle="--", linewidth=1)
        ax.text(
            event.at,
            103,
            f"{event.anchor.value} {event.at.astimezone(tz):%H:%M}",
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
            color=colour,
        )
    absent = [e.describe() for e, _ in events if e.at is None]
    program = group.calendar.program_for(night)
    title = f"{group.group} — night of {night}, program {program}"
    ax.set_title(title + (f"\n{'; '.join(absent)}" if absent else ""), fontsize=10)
    ax.set_xlim(start, end)
    ax.set_ylim(-2, 105)
    ax.set_ylabel("level (%)")
    ax.set_xlabel(f"local time ({group.location.timezone})")
    ax.xaxis.set_major_locator(mdates.HourLocator(interval=2, tz=tz))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))
    ax.grid(True, alpha=0.3)
    return _save(fig, path, fmt)


def _save(fig: Any, path: str | Path | BinaryIO, fmt: str) -> Path | BinaryIO:
    """Save ``fig`` to a path (returned as a :class:`Path`) or a binary file object."""
    out: Path | BinaryIO = Path(path) if isinstance(path, str | Path) else path
    # No creation date in the file: the same schedule draws the same bytes.
    fig.savefig(out, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return out


def _hours_after_noon(t: dt.datetime, night: dt.date, tz: dt.tzinfo) -> float:
    """Wall-clock hours from 12:00 on ``night`` (what a person reads off the clock)."""
    local = t.astimezone(tz).replace(tzinfo=None)
    return (local - dt.datetime.combine(night, NOON)).total_seconds() / 3600.0


@overload
def plot_year(summary: YearSummary, path: str | Path, *, fmt: str = ...) -> Path: ...
@overload
def plot_year(summary: YearSummary, path: BinaryIO, *, fmt: str = ...) -> BinaryIO: ...
def plot_year(
    summary: YearSummary, path: str | Path | BinaryIO, *, fmt: str = "png"
) -> Path | BinaryIO:
    """Write a PNG of a year's transition times: x the night's date, y the local time from
    12:00 to 12:00, with sunset and sunrise, each step's resolved time and the dark hours
    (sunset to sunrise) shaded. Returns the path written.

    ``path`` may also be a binary file object; ``fmt`` is the format written."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(summary.timezone)
    nan = float("nan")
    days = [n.night for n in summary.nights]
    fig = _figure(12, 6)
    ax = fig.add_subplot(1, 1, 1)
    lo = [_hours_after_noon(n.dark_from, n.night, tz) for n in summary.nights]
    hi = [_hours_after_noon(n.dark_until, n.night, tz) for n in summary.nights]
    ax.plot(days, lo, color="#1b2a49", linewidth=0)  # keeps the date axis in step with the map
    del hi
    for attr, colour in (("sunset", "#c0392b"), ("sunrise", "#e67e22")):
        ys = []
        for n in summary.nights:
            event: SunEvent = getattr(n, attr)
            ys.append(nan if event.at is None else _hours_after_noon(event.at, n.night, tz))
        ax.plot(days, ys, color=colour, linewidth=2, label=attr)
    # The programmed level as a colour map: one column per night, one row per 5 minutes,
    # so seasonal shifts of the sun steps and calendar changes (weekends, holidays) show up.
    rows = 288
    grid: list[list[float]] = [[nan] * len(days) for _ in range(rows)]
    carry = 0.0
    for col, n in enumerate(summary.nights):
        marks = sorted((_hours_after_noon(st.at, n.night, tz), st.step.level) for st in n.steps)
        level, k = carry, 0
        for r in range(rows):
            h = (r + 0.5) / 12
            while k < len(marks) and marks[k][0] <= h:
                level = marks[k][1]
                k += 1
            grid[r][col] = level
        carry = level
    if days:
        import matplotlib.dates as mdates

        x0 = mdates.date2num(days[0])  # type: ignore[no-untyped-call]
        x1 = mdates.date2num(days[-1]) + 1  # type: ignore[no-untyped-call]
        img = ax.imshow(
            grid,
            origin="lower",
            aspect="auto",
            extent=(x0, x1, 0, 24),
            cmap="YlOrBr",
            vmin=0,
            vmax=100,
            interpolation="nearest",
            alpha=0.9,
        )
        ax.xaxis_date()
        cbar = fig.colorbar(img, ax=ax, pad=0.01)
        cbar.set_label("programmed level (%)")
    ax.set_ylim(0, 24)
    ax.set_yticks(range(0, 25, 3))
    ax.set_yticklabels([f"{(12 + h) % 24:02d}:00" for h in range(0, 25, 3)])
    ax.set_ylabel(f"local time ({summary.timezone})")
    ax.set_title(
        f"{summary.group} at {summary.location_name}, nights of {summary.year}: "
        f"{summary.burning_hours:.0f} h lit, {summary.energy_kwh:.0f} kWh, "
        f"{summary.saving_pct:.0f} % below sunset-to-sunrise at full light",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path, fmt)
