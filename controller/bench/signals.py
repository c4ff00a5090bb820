"""Fixed-time, actuated and adaptive control side by side on the built-in traffic model.

:func:`run_signals_bench` runs every intersection of a config at several demand levels with
each strategy, in lock-step simulated time (no sockets: one simulated hour takes seconds), with
the controller's real signal stack (:class:`~controller.signals.control.IntersectionControl`:
detector bank, strategy, phase engine, safety monitor) on one side and the simulator's traffic
model (:class:`~simulator.signal_traffic.IntersectionTraffic`) on the other. The controller
sees only what a real one sees (design principle 5):

* every ``poll_s`` the cabinet's detector registers — cumulative counts and occupancy in 0.1 s
  units, both wrapped to 16 bits as the Modbus map has them, and presence since the last poll;
* every ``camera_interval_s`` each camera zone's count of vehicles over the stop line and its
  queue, as the AI cameras publish them.

Each run of one strategy sees the *same* vehicles: the traffic model draws arrivals per lane
from a seed, independently of the signals. The comparison is fair to the baselines:

* **fixed** runs a Webster-optimal plan computed from the *true* mean demand of the run (the
  best a traffic engineer can time a fixed plan with perfect counts);
* **actuated** runs with the intersection's configured gap and recalls;
* **adaptive** runs with its defaults.

Figures per run: mean delay per vehicle (vehicles still queued at the end count with the delay
they have had), stops per vehicle, the largest queue of any group, pedestrian mean wait, and
the safety monitor's violation count (which must be zero). The bench prints nothing;
``cityctl bench signals`` prints its result.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.bench import finish_figure
from controller.config import CityConfig
from controller.signals.control import IntersectionControl
from controller.signals.model import GroupKind, Intersection, StrategyConfig
from controller.signals.strategies import AdaptiveConfig, webster_plan
from controller.sim_signals import SignalDemand, camera_detectors, group_demand, traffic_specs
from simulator.signal_traffic import IntersectionTraffic

__all__ = [
    "DEMAND_LEVELS",
    "STRATEGIES",
    "BenchRun",
    "format_table",
    "plot_result",
    "run_one",
    "run_signals_bench",
]

#: Demand levels as shares of the peak-hour demand of :func:`controller.sim_signals.group_demand`.
DEMAND_LEVELS: dict[str, float] = {"low": 0.30, "medium": 0.65, "high": 0.95}
STRATEGIES: tuple[str, ...] = ("fixed", "actuated", "adaptive")
_U16 = 0xFFFF


@dataclass(frozen=True)
class BenchRun:
    """One intersection × demand level × strategy × seed."""

    intersection: str
    demand: str
    strategy: str
    seed: int
    vehicles: int
    mean_delay_s: float
    stops_per_vehicle: float
    max_queue: int
    ped_mean_wait_s: float
    stage_changes: int
    violations: int
    wall_s: float
    plan: str = ""


def _with_strategy(
    x: Intersection, strategy: str, demand: SignalDemand, duration_s: float
) -> Intersection:
    """The intersection with one strategy all day (and, for fixed time, a Webster plan)."""
    cfg = x.config
    update: dict[str, Any] = {}
    if strategy == "fixed":
        # The mean demand of the run, all lanes, per group.
        flows = {}
        for g in x.groups:
            if g.kind is GroupKind.VEHICLE:
                mean = _mean_rate(demand, g.id, duration_s)
                flows[g.id] = mean * g.lanes
        plan = webster_plan(x, flows, name="webster")
        update["fixed_plans"] = [plan]
        update["strategy"] = StrategyConfig(
            default="fixed",
            fixed_plan="webster",
            gap_s=cfg.strategy.gap_s,
            recall=cfg.strategy.recall,
        )
    else:
        update["strategy"] = StrategyConfig(
            default=strategy,
            fixed_plan=cfg.strategy.fixed_plan,
            gap_s=cfg.strategy.gap_s,
            recall=cfg.strategy.recall,
        )
    # Coordination needs the upstream intersection, which this isolated run does not have.
    update["coordination"] = None
    return Intersection.build(cfg.model_copy(update=update))


def _mean_rate(demand: SignalDemand, gid: str, duration_s: float) -> float:
    n = 120
    return sum(demand(gid, (k + 0.5) * duration_s / n) for k in range(n)) / n


def run_one(
    x: Intersection,
    strategy: str,
    level: float,
    *,
    demand_name: str = "",
    seed: int = 1,
    duration_s: float = 3600.0,
    step_s: float = 0.1,
    poll_s: float = 0.1,
    camera_interval_s: float = 10.0,
    peak_amp: float = 0.5,
    adaptive: AdaptiveConfig | None = None,
) -> BenchRun:
    """One run; see the module docstring. ``adaptive`` tunes the adaptive strategy."""
    demand = SignalDemand(group_demand(x), level, peak_s=duration_s, peak_amp=peak_amp)
    xs = _with_strategy(x, strategy, demand, duration_s)
    groups, dets = traffic_specs(xs)
    traffic = IntersectionTraffic(groups, dets, demand, seed=seed)
    control = IntersectionControl(xs, now=0.0, adaptive=adaptive)
    channels = traffic.channels
    cams = camera_detectors(xs)
    cam_last = {did: 0 for did, _, _ in cams}
    ids = [g.id for g in xs.groups]
    started = time.perf_counter()
    steps = round(duration_s / step_s)
    poll_every = max(1, round(poll_s / step_s))
    cam_every = max(1, round(camera_interval_s / step_s))
    shown = dict(zip(ids, control.step(0.0, 720).signals, strict=True))
    for k in range(steps):
        t = k * step_s
        traffic.step(t, step_s, shown)
        now = (k + 1) * step_s
        if (k + 1) % poll_every == 0:
            for ch in channels:
                s = traffic.detector(ch)
                control.loop_reading(
                    ch, s.count & _U16, int(s.occupied_s * 10) & _U16, s.presence, now
                )
        if (k + 1) % cam_every == 0:
            for did, gid, _ in cams:
                crossed, queued = traffic.camera(gid)
                control.camera_reading(did, crossed - cam_last[did], queued, camera_interval_s, now)
                cam_last[did] = crossed
        step = control.step(now, 720)
        shown = dict(zip(ids, step.signals, strict=True))
    wall = time.perf_counter() - started
    st = traffic.stats()
    plan = ""
    if strategy == "fixed":
        p = xs.config.fixed_plans[0]
        plan = f"C={p.cycle_s:g}s " + " ".join(f"{k}:{v:g}" for k, v in p.greens.items())
    return BenchRun(
        intersection=x.id,
        demand=demand_name,
        strategy=strategy,
        seed=seed,
        vehicles=st.vehicles_departed + st.vehicles_queued,
        mean_delay_s=st.mean_delay_s,
        stops_per_vehicle=st.stops_per_vehicle,
        max_queue=max(st.max_queue.values(), default=0),
        ped_mean_wait_s=st.ped_mean_wait_s,
        stage_changes=control.stats.stage_changes,
        violations=control.stats.violations,
        wall_s=wall,
        plan=plan,
    )


def run_signals_bench(
    cfg: CityConfig,
    *,
    intersections: Sequence[str] | None = None,
    levels: Sequence[str] | None = None,
    strategies: Sequence[str] = STRATEGIES,
    seeds: Sequence[int] = (1, 2, 3),
    duration_s: float = 3600.0,
    progress: Any = None,
) -> dict[str, Any]:
    """Every intersection × level × strategy × seed; the mean per cell and the runs."""
    xs = [x for x in cfg.intersections() if intersections is None or x.id in intersections]
    lv = list(levels) if levels is not None else list(DEMAND_LEVELS)
    runs: list[BenchRun] = []
    started = time.perf_counter()
    for x in xs:
        for name in lv:
            for strategy in strategies:
                for seed in seeds:
                    r = run_one(
                        x,
                        strategy,
                        DEMAND_LEVELS[name],
                        demand_name=name,
                        seed=seed,
                        duration_s=duration_s,
                    )
                    runs.append(r)
                    if progress is not None:
                        progress(r)
    cells: list[dict[str, Any]] = []
    for x in xs:
        for name in lv:
            row: dict[str, Any] = {"intersection": x.id, "demand": name}
            for strategy in strategies:
                rs = [
                    r
                    for r in runs
                    if (r.intersection, r.demand, r.strategy) == (x.id, name, strategy)
                ]
                row[strategy] = {
                    "mean_delay_s": round(_mean([r.mean_delay_s for r in rs]), 2),
                    "stops_per_vehicle": round(_mean([r.stops_per_vehicle for r in rs]), 3),
                    "max_queue": max(r.max_queue for r in rs),
                    "ped_mean_wait_s": round(_mean([r.ped_mean_wait_s for r in rs]), 1),
                    "vehicles": round(_mean([r.vehicles for r in rs])),
                    "violations": sum(r.violations for r in rs),
                }
            if "adaptive" in strategies:
                a = row["adaptive"]["mean_delay_s"]
                others = [row[s]["mean_delay_s"] for s in strategies if s != "adaptive"]
                row["adaptive_best"] = bool(others) and all(a < o for o in others)
                row["adaptive_vs_best_other"] = round(a / min(others), 3) if others else None
            cells.append(row)
    return {
        "bench": "signals",
        "duration_s": duration_s,
        "seeds": list(seeds),
        "levels": {name: DEMAND_LEVELS[name] for name in lv},
        "strategies": list(strategies),
        "cells": cells,
        "adaptive_best_everywhere": all(c.get("adaptive_best", False) for c in cells),
        "violations": sum(r.violations for r in runs),
        "runs": [vars(r) for r in runs],
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def format_table(result: dict[str, Any]) -> str:
    """The bench result as a plain-text table for people."""
    strategies = result["strategies"]
    head = f"{'intersection':<12} {'demand':<7}" + "".join(
        f" {s + ' delay':>15} {'stops':>6} {'maxQ':>5}" for s in strategies
    )
    lines = [head, "-" * len(head)]
    for c in result["cells"]:
        line = f"{c['intersection']:<12} {c['demand']:<7}"
        for s in strategies:
            v = c[s]
            line += (
                f" {v['mean_delay_s']:>13.1f} s {v['stops_per_vehicle']:>6.2f} {v['max_queue']:>5d}"
            )
        lines.append(line)
    lines.append(
        f"mean delay per vehicle over {len(result['seeds'])} seeds × {result['duration_s'] / 60:g} min; "
        f"safety violations: {result['violations']}; adaptive best everywhere: "
        f"{'yes' if result['adaptive_best_everywhere'] else 'NO'}"
    )
    return "\n".join(lines)


def plot_result(result: dict[str, Any], path: str | Path) -> Path:
    """Bar chart: mean delay per vehicle per intersection × demand, one bar per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = result["cells"]
    strategies = result["strategies"]
    colors = {"fixed": "#bbbbbb", "actuated": "#e0a030", "adaptive": "#2f7fbf"}
    labels = [f"{c['intersection']}\n{c['demand']}" for c in cells]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    w = 0.8 / max(1, len(strategies))
    for k, s in enumerate(strategies):
        xs = [i + (k - (len(strategies) - 1) / 2) * w for i in range(len(cells))]
        ys = [c[s]["mean_delay_s"] for c in cells]
        ax.bar(xs, ys, w, label=s, color=colors.get(s))
    ax.set_xticks(list(range(len(cells))), labels)
    ax.set_ylabel("mean delay per vehicle, s")
    ax.set_title(
        f"Built-in traffic model, {len(result['seeds'])} seeds × "
        f"{result['duration_s'] / 60:g} min per cell; safety violations: {result['violations']}",
        fontsize=10,
    )
    return finish_figure(fig, ax, path)
