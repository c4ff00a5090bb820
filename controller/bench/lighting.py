"""A year of the district's street lights, with traffic dimming: energy and class safety.

:func:`run_lighting_bench` plays every group of a config through a calendar year in simulated
time, using the same pure pieces the controller runs:

* the **program level** comes from :mod:`schedules.evaluate`: evaluating it every step would
  be slow (sun times, calendars), so :func:`~schedules.evaluate.level_segments` gives it for
  the whole span as exact linear pieces (steps, ramps, overrides) once. A sample of random
  instants is checked against :func:`~schedules.evaluate.level_at`
  (``check.max_program_error`` in the result);
* **traffic** for each group's ``traffic_segment`` comes from the built-in demand model
  (:mod:`simulator.traffic`): a count every ``count_interval_s``, Poisson noise, fixed seed.
  The config says nothing about the road type or its peak, and nothing is added to it: the
  bench derives them from what a lighting engineer already wrote — the design class says the
  road type (M1–M3 arterial, M4 collector, M5–M6 residential) and the peak hour is 75 % of
  ``capacity_vph`` (a busy urban road runs at about three quarters of capacity in its peak
  hour). A segment shared by several groups takes the brightest group's type and the largest
  capacity;
* each traffic-dimmed group has a :class:`~controller.lighting.traffic_class.ClassSelector`
  fed with those counts; the wanted level is ``min(program, cap)`` and then the min-dim
  clamp, exactly as the controller does. Overrides are human orders and are not capped;
* **energy** uses :class:`schedules.energy.LampPowerModel` per lamp rating and per-node
  min-dim (``CityConfig.nodes()``), integrated exactly on constant stretches and with
  Simpson's rule on ramps. The **baseline** is the same lamps at 100 % from sunset to sunrise
  and at standby power by day, so the saving compares like with like.

The class can only change when a count arrives or a hold expires; the simulation steps every
``step_s`` seconds (counts arrive on the same grid when ``count_interval_s == step_s``) and
holds the class for the step, which can only delay a step-down, never a step-up. Class
changes are taken as instant (the controller ramps dimming over a minute, so the real saving
is a hair smaller). "Below required" compares the wanted level at every stretch with
``min(program, level of the class the latest count required)`` and must be zero.

The bench prints nothing; ``cityctl bench lighting`` prints its result.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.bench import finish_figure
from controller.config import CityConfig, LightGroup, LightingClass
from controller.lighting.traffic_class import ClassSelector, class_level
from schedules.energy import LampPowerModel
from schedules.evaluate import GroupSchedule, clamp_min_dim, level_at, level_segments
from schedules.model import Anchor, Location
from schedules.sun import sun_event

__all__ = ["PEAK_SHARE_OF_CAPACITY", "format_table", "road_kind_for", "run_lighting_bench"]

#: Peak-hour flow as a share of the road's capacity, for the simulated counters.
PEAK_SHARE_OF_CAPACITY = 0.75
_EPS = 1e-9


def road_kind_for(design: LightingClass) -> str:
    """The demand model's road type for a design class.

    M1–M3 arterial, M4 collector, M5–M6 residential.
    """
    if design.number <= 3:
        return "arterial"
    if design.number == 4:
        return "collector"
    return "residential"


@dataclass
class _Piece:
    """The program level on ``[start, end)``: linear from ``v0`` to ``v1``."""

    start: float
    end: float
    v0: float
    v1: float
    override: bool

    def at(self, t: float) -> float:
        if self.v0 == self.v1 or self.end <= self.start:
            return self.v0
        return self.v0 + (self.v1 - self.v0) * (t - self.start) / (self.end - self.start)


@dataclass
class _GroupRun:
    group: LightGroup
    gs: GroupSchedule
    pieces: list[_Piece]
    kinds: list[tuple[int, LampPowerModel, float]]  # (nodes, model, node min-dim)
    selector: ClassSelector | None
    segment: str | None
    kind: str | None
    peak_vph: float | None
    power_memo: dict[float, float] = field(default_factory=dict)
    energy_ws: float = 0.0
    program_ws: float = 0.0
    burning_s: float = 0.0
    below_s: float = 0.0
    dimmed_s: float = 0.0
    stale_s: float = 0.0
    class_s: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def power(self, level: float) -> float:
        """Watts of the whole group at a group level (per-node min-dim applied)."""
        key = round(level, 6)
        p = self.power_memo.get(key)
        if p is None:
            p = sum(n * m.power_w(clamp_min_dim(key, mind)) for n, m, mind in self.kinds)
            if len(self.power_memo) < 100_000:
                self.power_memo[key] = p
        return p

    @property
    def nodes(self) -> int:
        return sum(n for n, _, _ in self.kinds)


def _local_midnight(day: dt.date, tz: dt.tzinfo) -> float:
    return dt.datetime.combine(day, dt.time(0), tzinfo=tz).timestamp()


def _program_pieces(gs: GroupSchedule, t0: float, t1: float, tz: dt.tzinfo) -> list[_Piece]:
    """The program level over ``[t0, t1)`` as linear pieces (before the min-dim clamp)."""
    own = [o for o in gs.overrides if gs.group in o.groups]
    pieces: list[_Piece] = []
    for seg in level_segments(
        gs, dt.datetime.fromtimestamp(t0, tz), dt.datetime.fromtimestamp(t1, tz)
    ):
        a, b = seg.start.timestamp(), seg.end.timestamp()
        override = any(o.active_at(seg.start) for o in own)
        p = _Piece(a, b, float(seg.start_level), float(seg.end_level), override)
        q = pieces[-1] if pieces else None
        # Merge neighbours that hold the same constant level (fewer pieces, faster stepping).
        if q is not None and q.v0 == q.v1 == p.v0 == p.v1 and q.override == p.override:
            q.end = p.end
        else:
            pieces.append(p)
    return pieces


def _dark_seconds(location: Location, t0: float, t1: float) -> float:
    """Seconds between sunset and sunrise within ``[t0, t1)`` (polar days and nights handled)."""
    tz = location.tz
    day = dt.datetime.fromtimestamp(t0, tz).date()
    end_day = dt.datetime.fromtimestamp(t1, tz).date()
    dark = 0.0
    while day <= end_day:
        d0 = max(t0, _local_midnight(day, tz))
        d1 = min(t1, _local_midnight(day + dt.timedelta(days=1), tz))
        if d1 > d0:
            rise = sun_event(location, day, Anchor.SUNRISE)
            sset = sun_event(location, day, Anchor.SUNSET)
            if rise.at is not None:
                r = rise.at.timestamp()
            else:
                r = d1 if rise.state == "always_dark" else d0
            if sset.at is not None:
                s = sset.at.timestamp()
            else:
                s = d0 if sset.state == "always_dark" else d1
            morning = max(0.0, min(r, d1) - d0)
            evening = max(0.0, d1 - max(s, d0))
            dark += min(d1 - d0, morning + evening)
        day += dt.timedelta(days=1)
    return dark


def _round(x: float, n: int = 2) -> float:
    return round(x, n) if math.isfinite(x) else x


def run_lighting_bench(
    cfg: CityConfig,
    year: int,
    step_s: float = 300,
    seed: int = 2026,
    *,
    count_interval_s: int = 300,
    tet: bool = True,
    days: int | None = None,
    start: dt.date | None = None,
    checks: int = 24,
) -> dict[str, Any]:
    """Simulate a year (or ``days`` from ``start``) of every group; a JSON-able result.

    Per group and in total: energy (kWh), the all-night-full baseline (kWh), saving (%),
    burning hours, hours below the class the measured traffic required (must be 0), hours
    traffic-dimmed, hours per lighting class; and the runtime. Deterministic for a seed.
    """
    # The bench is a tool like the CLI: it may use the simulator's demand model, which the
    # controller proper never imports (design: "nothing imports simulator except the CLI").
    from simulator.traffic import count_series

    wall0 = time.perf_counter()
    if step_s <= 0:
        raise ValueError("step_s must be positive")
    if not 0 < count_interval_s <= 3600:
        raise ValueError("count_interval_s must be in 1..3600")
    tz = cfg.location.tz
    first_day = start if start is not None else dt.date(year, 1, 1)
    last_day = (
        first_day + dt.timedelta(days=days)
        if days is not None
        else dt.date(first_day.year + 1, 1, 1)
    )
    t0 = _local_midnight(first_day, tz)
    t1 = _local_midnight(last_day, tz)
    traffic = cfg.lighting.traffic

    # -- segments: road type and peak derived from the groups that use them ------------------
    seg_groups: dict[str, list[LightGroup]] = {}
    for g in cfg.lighting.groups:
        if g.dims_with_traffic and g.traffic_segment is not None:
            seg_groups.setdefault(g.traffic_segment, []).append(g)
    seg_model: dict[str, tuple[str, float]] = {}
    for seg, gs_ in seg_groups.items():
        brightest = min(gs_, key=lambda g: g.lighting_class.number)
        peak = PEAK_SHARE_OF_CAPACITY * max(g.capacity_vph for g in gs_)
        seg_model[seg] = (road_kind_for(brightest.lighting_class), peak)

    # -- counts: start early enough that the selectors know the traffic at t0 -----------------
    warm = (math.ceil((traffic.hold_s + 2 * count_interval_s) / count_interval_s) + 1) * (
        count_interval_s
    )
    c_start = dt.datetime.fromtimestamp(t0 - warm, tz)
    c_end = dt.datetime.fromtimestamp(t1, tz)
    seg_counts: dict[str, tuple[list[float], list[float]]] = {}
    for seg, (kind, peak) in seg_model.items():
        times: list[float] = []
        flows: list[float] = []
        for ts, vehicles in count_series(
            seg, kind, peak, c_start, c_end, count_interval_s, seed, tet=tet
        ):
            times.append(ts.timestamp())
            flows.append(vehicles * 3600.0 / count_interval_s)
        seg_counts[seg] = (times, flows)

    # -- groups --------------------------------------------------------------------------------
    node_kinds: dict[str, Counter[tuple[float, float]]] = {}
    for g, _node, lamp_w, mind in cfg.nodes():
        node_kinds.setdefault(g.id, Counter())[(lamp_w, mind)] += 1
    models: dict[float, LampPowerModel] = {}
    runs: list[_GroupRun] = []
    for g in cfg.lighting.groups:
        gs = cfg.group_schedule(g.id)
        kinds = []
        for (lamp_w, mind), n in sorted(node_kinds.get(g.id, Counter()).items()):
            model = models.get(lamp_w)
            if model is None:
                model = models[lamp_w] = LampPowerModel(rated_w=lamp_w)
            kinds.append((n, model, mind))
        sel = None
        if g.dims_with_traffic and g.traffic_segment is not None:
            sel = ClassSelector(g, traffic, start=t0 - warm)
        seg_info = seg_model.get(g.traffic_segment or "") if sel is not None else None
        runs.append(
            _GroupRun(
                group=g,
                gs=gs,
                pieces=_program_pieces(gs, t0, t1, tz),
                kinds=kinds,
                selector=sel,
                segment=g.traffic_segment if sel is not None else None,
                kind=seg_info[0] if seg_info else None,
                peak_vph=seg_info[1] if seg_info else None,
            )
        )

    # -- the check: pieces against level_at at random instants ---------------------------------
    rng = random.Random(f"bench-check:{seed}")
    max_err = 0.0
    for run in runs:
        for _ in range(checks):
            x = rng.uniform(t0, t1)
            i = bisect.bisect_right([p.start for p in run.pieces], x) - 1
            got = clamp_min_dim(run.pieces[i].at(x), run.gs.min_level)
            want = level_at(run.gs, dt.datetime.fromtimestamp(x, tz))
            max_err = max(max_err, abs(got - want))

    # -- the simulation ------------------------------------------------------------------------
    seg_ptr = dict.fromkeys(seg_counts, 0)
    # counts that arrive before t0 warm the selectors up
    for seg, (times, flows) in seg_counts.items():
        i = 0
        while i < len(times) and times[i] <= t0:
            for run in runs:
                if run.segment == seg and run.selector is not None:
                    run.selector.observe(flows[i], times[i])
            i += 1
        seg_ptr[seg] = i
    piece_ptr = [0] * len(runs)
    n_steps = math.ceil((t1 - t0) / step_s)
    for k in range(n_steps):
        t = t0 + k * step_s
        t_next = min(t1, t + step_s)
        for seg, (times, flows) in seg_counts.items():
            i = seg_ptr[seg]
            while i < len(times) and times[i] <= t:
                for run in runs:
                    if run.segment == seg and run.selector is not None:
                        run.selector.observe(flows[i], times[i])
                i += 1
            seg_ptr[seg] = i
        for r_i, run in enumerate(runs):
            _step(run, r_i, piece_ptr, t, t_next)

    # -- results -------------------------------------------------------------------------------
    dark_s = _dark_seconds(cfg.location, t0, t1)
    span_s = t1 - t0
    groups_out: list[dict[str, Any]] = []
    tot: defaultdict[str, float] = defaultdict(float)
    for run in runs:
        p100 = sum(n * m.power_w(100.0) for n, m, _ in run.kinds)
        p0 = sum(n * m.power_w(0.0) for n, m, _ in run.kinds)
        base_wh = (p100 * dark_s + p0 * (span_s - dark_s)) / 3600.0
        e_kwh = run.energy_ws / 3600 / 1000
        b_kwh = base_wh / 1000
        g = run.group
        groups_out.append(
            {
                "group": g.id,
                "name": g.name,
                "nodes": run.nodes,
                "rated_kw": round(
                    sum(n * lamp for (lamp, _), n in node_kinds[g.id].items()) / 1000, 3
                ),
                "design_class": g.lighting_class.value,
                "lowest_class": (g.lowest_class or g.lighting_class).value
                if g.dims_with_traffic
                else g.lighting_class.value,
                "dims_with_traffic": g.dims_with_traffic,
                "traffic_segment": run.segment,
                "road_kind": run.kind,
                "peak_vph": run.peak_vph,
                "capacity_vph": g.capacity_vph,
                "energy_kwh": _round(e_kwh, 1),
                "program_only_kwh": _round(run.program_ws / 3600 / 1000, 1),
                "baseline_kwh": _round(b_kwh, 1),
                "saving_pct": _round(100 * (1 - e_kwh / b_kwh) if b_kwh > 0 else 0.0, 1),
                "traffic_saving_pct": _round(
                    100 * (1 - run.energy_ws / run.program_ws) if run.program_ws > 0 else 0.0, 1
                ),
                "burning_h": _round(run.burning_s / 3600, 1),
                "baseline_burning_h": _round(dark_s / 3600, 1),
                "below_required_h": _round(run.below_s / 3600, 3),
                "traffic_dimmed_h": _round(run.dimmed_s / 3600, 1),
                "stale_h": _round(run.stale_s / 3600, 1),
                "class_hours": {c: _round(s / 3600, 1) for c, s in sorted(run.class_s.items())},
            }
        )
        tot["energy_wh"] += run.energy_ws / 3600
        tot["program_wh"] += run.program_ws / 3600
        tot["baseline_wh"] += base_wh
        tot["burning_s"] += run.burning_s
        tot["burning_node_s"] += run.burning_s * run.nodes
        tot["below_s"] += run.below_s
        tot["dimmed_s"] += run.dimmed_s
        tot["nodes"] += run.nodes
    runtime = time.perf_counter() - wall0
    return {
        "site": cfg.site.name,
        "year": year,
        "from": first_day.isoformat(),
        "to": last_day.isoformat(),
        "step_s": step_s,
        "count_interval_s": count_interval_s,
        "seed": seed,
        "hold_s": traffic.hold_s,
        "stale_after_s": traffic.stale_after_s,
        "dark_h": _round(dark_s / 3600, 1),
        "groups": groups_out,
        "total": {
            "groups": len(runs),
            "nodes": int(tot["nodes"]),
            "energy_kwh": _round(tot["energy_wh"] / 1000, 1),
            "program_only_kwh": _round(tot["program_wh"] / 1000, 1),
            "baseline_kwh": _round(tot["baseline_wh"] / 1000, 1),
            "saving_pct": _round(
                100 * (1 - tot["energy_wh"] / tot["baseline_wh"]) if tot["baseline_wh"] else 0.0, 1
            ),
            "traffic_saving_pct": _round(
                100 * (1 - tot["energy_wh"] / tot["program_wh"]) if tot["program_wh"] else 0.0, 1
            ),
            "burning_h": _round(tot["burning_s"] / 3600, 1),
            "burning_node_h": _round(tot["burning_node_s"] / 3600, 0),
            "below_required_h": _round(tot["below_s"] / 3600, 3),
            "traffic_dimmed_h": _round(tot["dimmed_s"] / 3600, 1),
        },
        "check": {"program_samples": checks * len(runs), "max_program_error": _round(max_err, 6)},
        "model": {
            "segments": {s: {"road_kind": k, "peak_vph": p} for s, (k, p) in seg_model.items()},
            "road_kind": "design class M1-M3 arterial, M4 collector, M5-M6 residential",
            "peak": f"{PEAK_SHARE_OF_CAPACITY:g} x capacity_vph",
            "baseline": "same lamps at 100 % from sunset to sunrise, standby by day",
        },
        "runtime_s": round(runtime, 2),
    }


def _step(run: _GroupRun, r_i: int, piece_ptr: list[int], t: float, t_next: float) -> None:
    """Account one step ``[t, t_next)`` of one group (energy in watt-seconds)."""
    pieces = run.pieces
    i = piece_ptr[r_i]
    while i + 1 < len(pieces) and pieces[i].end <= t:
        i += 1
    piece_ptr[r_i] = i
    p = pieces[i]
    if p.v0 == p.v1 == 0.0 and p.end >= t_next:
        # Off for the whole step (daytime): standby power only, nothing else to account.
        e = run.power(0.0) * (t_next - t)
        run.energy_ws += e
        run.program_ws += e
        return
    sel = run.selector
    min_level = run.gs.min_level
    a = t
    while a < t_next and i < len(pieces):
        p = pieces[i]
        b = min(p.end, t_next)
        if b > a:
            _stretch(run, p, a, b, sel, min_level, t)
            a = b
        if b >= p.end:
            i += 1
    piece_ptr[r_i] = min(i, len(pieces) - 1)


def _stretch(
    run: _GroupRun,
    p: _Piece,
    a: float,
    b: float,
    sel: ClassSelector | None,
    min_level: float,
    t: float,
) -> None:
    """Account ``[a, b)`` inside one piece; the class is the one in force at step start ``t``."""
    la, lb = p.at(a), p.at(b)
    dur = b - a
    lit = la > 0 or lb > 0
    traffic = sel is not None and lit and not p.override
    if traffic:
        assert sel is not None
        current = sel.current(t)
        cap = sel.cap_level(t)
        req_level = class_level(sel.required(t), run.group.lighting_class)
    else:
        cap = req_level = math.inf
    if la == lb:
        prog = clamp_min_dim(la, min_level)
        want = clamp_min_dim(min(la, cap), min_level)
        run.energy_ws += run.power(want) * dur
        run.program_ws += run.power(prog) * dur
        xs: tuple[float, ...] = (la,)
    else:
        m = (la + lb) / 2
        xs = (la, m, lb)
        # Simpson's rule over the ramp (the lamp's power need not be linear in its level)
        run.energy_ws += (
            run.power(clamp_min_dim(min(la, cap), min_level))
            + 4 * run.power(clamp_min_dim(min(m, cap), min_level))
            + run.power(clamp_min_dim(min(lb, cap), min_level))
        ) * dur / 6  # fmt: skip
        run.program_ws += (
            run.power(clamp_min_dim(la, min_level))
            + 4 * run.power(clamp_min_dim(m, min_level))
            + run.power(clamp_min_dim(lb, min_level))
        ) * dur / 6  # fmt: skip
    if not lit:
        return
    run.burning_s += dur
    if not traffic:
        return
    assert sel is not None
    run.class_s[current.value] += dur
    if sel.stale(t):
        run.stale_s += dur
    # traffic-dimmed: the program asks for more than the class allows
    hi, lo = max(la, lb), min(la, lb)
    if hi > cap + _EPS:
        run.dimmed_s += dur if lo > cap + _EPS else dur * (hi - cap) / (hi - lo)
    # below required: dimmer than min(program, level of the class the latest count required)
    for x in xs:
        want = clamp_min_dim(min(x, cap), min_level)
        if want < min(clamp_min_dim(x, min_level), req_level) - _EPS:
            run.below_s += dur
            break


def format_table(result: dict[str, Any]) -> str:
    """The bench result as a plain-text table for people."""
    head = (
        f"{'group':<20} {'class':<7} {'nodes':>5} {'energy':>9} {'baseline':>9} {'saving':>7} "
        f"{'traffic':>7} {'burning':>8} {'dimmed':>7} {'below':>6}"
    )
    units = (
        f"{'':<20} {'':<7} {'':>5} {'kWh':>9} {'kWh':>9} {'%':>7} {'%':>7} {'h':>8} {'h':>7} "
        f"{'h':>6}"
    )
    lines = [
        f"{result['site']}: lighting bench {result['from']} .. {result['to']} "
        f"(step {result['step_s']:g} s, counts every {result['count_interval_s']} s, "
        f"hold {result['hold_s']:g} s, seed {result['seed']})",
        "",
        head,
        units,
        "-" * len(head),
    ]
    for g in result["groups"]:
        cls = g["design_class"]
        if g["dims_with_traffic"]:
            cls += "-" + g["lowest_class"][1]
        lines.append(
            f"{g['group'][:20]:<20} {cls:<7} {g['nodes']:>5} {g['energy_kwh']:>9,.0f} "
            f"{g['baseline_kwh']:>9,.0f} {g['saving_pct']:>7.1f} {g['traffic_saving_pct']:>7.1f} "
            f"{g['burning_h']:>8,.0f} {g['traffic_dimmed_h']:>7,.0f} {g['below_required_h']:>6g}"
        )
    t = result["total"]
    lines.append("-" * len(head))
    lines.append(
        f"{'total':<20} {'':<7} {t['nodes']:>5} {t['energy_kwh']:>9,.0f} "
        f"{t['baseline_kwh']:>9,.0f} "
        f"{t['saving_pct']:>7.1f} {t['traffic_saving_pct']:>7.1f} {t['burning_h']:>8,.0f} "
        f"{t['traffic_dimmed_h']:>7,.0f} {t['below_required_h']:>6g}"
    )
    lines += [
        "",
        "saving: against the same lamps at 100 % from sunset to sunrise "
        f"({result['dark_h']:,.0f} h dark); traffic: the part traffic dimming adds to the program",
        "burning and dimmed are group-hours; below = hours dimmer than the class the measured "
        "traffic required (must be 0)",
        f"program check: {result['check']['program_samples']} samples, "
        f"max error {result['check']['max_program_error']:g} %; "
        f"runtime {result['runtime_s']:.1f} s",
    ]
    return "\n".join(lines)


def plot_result(result: dict[str, Any], path: str | Path) -> Path:
    """Bar chart per group: all-night full-on, the program alone, program + traffic dimming."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = result["groups"]
    names = [g["group"] for g in groups]
    base = [g["baseline_kwh"] / 1000 for g in groups]
    prog = [g["program_only_kwh"] / 1000 for g in groups]
    real = [g["energy_kwh"] / 1000 for g in groups]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    x = range(len(names))
    w = 0.27
    ax.bar([i - w for i in x], base, w, label="all night at 100 %", color="#bbbbbb")
    ax.bar(list(x), prog, w, label="program", color="#e0a030")
    ax.bar([i + w for i in x], real, w, label="program + traffic dimming", color="#2f7fbf")
    for i, g in enumerate(groups):
        ax.text(i + w, real[i], f"−{g['saving_pct']:.0f} %", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), names, rotation=20, ha="right")
    ax.set_ylabel("MWh per year")
    total = result["total"]
    ax.set_title(
        f"{result['site']} {result['year']}: {total['energy_kwh'] / 1000:.1f} MWh against "
        f"{total['baseline_kwh'] / 1000:.1f} MWh all-night full-on "
        f"({total['saving_pct']:.1f} % saved, {total['below_required_h']:g} h below the required class)",
        fontsize=10,
    )
    return finish_figure(fig, ax, path)
