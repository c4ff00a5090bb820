"""``cityctl bench suite``: every scenario with every controller, a table and a chart.

Each run is one :func:`controller.bench.sumo.run_sumo_bench` in a worker process of its own
(``libsumo`` holds one simulation per process), as many at once as there are cores. The result
is a table of mean delay per vehicle per scenario and controller, the ratio of ``adaptive`` to
the best SUMO baseline on each scenario, and their geometric mean; the safety counters of every
run are summed per controller. :func:`write_markdown` puts the table between two markers of
``docs/benchmarks.md`` and leaves the rest of the page alone.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from controller.bench import finish_figure

__all__ = [
    "BEGIN_MARK",
    "END_MARK",
    "find_scenarios",
    "format_table",
    "plot_suite",
    "run_suite",
    "summarise",
    "write_markdown",
]

BEGIN_MARK = "<!-- bench suite: begin (written by `cityctl bench suite`) -->"
END_MARK = "<!-- bench suite: end -->"
SUITE_CONTROLLERS: tuple[str, ...] = (
    "sumo-static",
    "sumo-actuated",
    "sumo-delay_based",
    "fixed",
    "actuated",
    "adaptive",
)
BASELINES = ("sumo-static", "sumo-actuated", "sumo-delay_based")


def find_scenarios(dirs: Sequence[Path]) -> list[Path]:
    """Every ``.sumocfg`` in the given directories (recursively) or the given files."""
    out: list[Path] = []
    for d in dirs:
        if d.is_file():
            out.append(d)
        else:
            out.extend(sorted(d.rglob("*.sumocfg")))
    return out


def _one(cfg: str, controller: str, seed: int, end: float | None) -> dict[str, Any]:
    # Runs in a worker process: SUMO's chatter goes to stderr, never to the parent's stdout.
    import contextlib
    import sys

    from controller.bench.sumo import run_sumo_bench

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return run_sumo_bench(cfg, controller, seed=seed, end=end)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_suite(
    scenarios: Sequence[Path],
    *,
    controllers: Sequence[str] = SUITE_CONTROLLERS,
    seeds: Sequence[int] = (1,),
    end: float | None = None,
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Run everything; returns the raw runs and the summary (see :func:`summarise`)."""
    jobs = [(str(s), c, seed) for s in scenarios for c in controllers for seed in seeds]
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    n_workers = workers or max(1, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=n_workers) as pool:
        futures: list[tuple[tuple[str, str, int], Future[dict[str, Any]]]] = [
            (job, pool.submit(_one, job[0], job[1], job[2], end)) for job in jobs
        ]
        for k, (job, fut) in enumerate(futures, 1):
            try:
                r = fut.result()
            except Exception as exc:  # a run that fails is reported, not hidden
                r = {
                    "sumocfg": job[0],
                    "controller": job[1],
                    "seed": job[2],
                    "error": f"{type(exc).__name__}: {exc}",
                }
            r.pop("per_light", None)
            runs.append(r)
            if progress is not None:
                progress(k, len(jobs), f"{Path(job[0]).stem} {job[1]}")
    return {
        "date": dt.date.today().isoformat(),
        "machine": _machine(),
        "wall_s": round(time.perf_counter() - started, 1),
        "workers": n_workers,
        "seeds": list(seeds),
        "controllers": list(controllers),
        "runs": runs,
        "summary": summarise(runs, controllers),
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}"
    )


def summarise(runs: Sequence[dict[str, Any]], controllers: Sequence[str]) -> dict[str, Any]:
    """Mean delay per scenario × controller (mean over seeds), ratios and safety totals."""
    by: dict[str, dict[str, list[float]]] = {}
    safety: dict[str, dict[str, int]] = {c: {} for c in controllers}
    errors: list[str] = []
    for r in runs:
        name = Path(r["sumocfg"]).stem
        if "error" in r:
            errors.append(f"{name} {r['controller']}: {r['error']}")
            continue
        by.setdefault(name, {}).setdefault(r["controller"], []).append(r["mean_delay_s"])
        tot = safety.setdefault(r["controller"], {})
        for k, v in r["safety"].items():
            tot[k] = tot.get(k, 0) + int(v)
    table: dict[str, dict[str, float]] = {
        name: {c: sum(v) / len(v) for c, v in cells.items()} for name, cells in by.items()
    }
    ratios: dict[str, float] = {}
    for name, cells in table.items():
        base = [cells[b] for b in BASELINES if b in cells]
        if "adaptive" in cells and base and min(base) > 0:
            ratios[name] = cells["adaptive"] / min(base)
    geo = math.exp(sum(math.log(v) for v in ratios.values()) / len(ratios)) if ratios else math.nan
    return {
        "mean_delay_s": table,
        "adaptive_vs_best_baseline": ratios,
        "geometric_mean_ratio": geo,
        "safety": safety,
        "errors": errors,
    }


def format_table(result: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    s = result["summary"]
    ctrls = [c for c in result["controllers"]]
    head = "| scenario | " + " | ".join(ctrls) + " | adaptive ÷ best SUMO |"
    sep = "|---|" + "---:|" * len(ctrls) + "---:|"
    lines = [head, sep]
    for name, cells in s["mean_delay_s"].items():
        base = [cells[b] for b in BASELINES if b in cells]
        best = min(base) if base else None
        row = []
        for c in ctrls:
            v = cells.get(c)
            if v is None:
                row.append("—")
            elif c == "adaptive" or (best is not None and v == best):
                row.append(f"**{v:.1f}**")
            else:
                row.append(f"{v:.1f}")
        ratio = s["adaptive_vs_best_baseline"].get(name)
        lines.append(
            f"| {name} | " + " | ".join(row) + f" | {ratio:.2f} |"
            if ratio is not None
            else f"| {name} | " + " | ".join(row) + " | — |"
        )
    geo = s["geometric_mean_ratio"]
    lines.append("| **geometric mean** | " + " | ".join("" for _ in ctrls) + f" | **{geo:.2f}** |")
    safety_rows = []
    for c in ctrls:
        tot = s["safety"].get(c, {})
        safety_rows.append(
            f"| {c} | "
            + " | ".join(
                str(tot.get(k, 0))
                for k in ("conflicts", "short_yellow", "short_all_red", "min_green_cut")
            )
            + " |"
        )
    return "\n".join(
        [
            *lines,
            "",
            "Safety counters on what SUMO displayed, summed over every run:",
            "",
            "| controller | conflicts | short yellow | short all-red | min green cut |",
            "|---|---:|---:|---:|---:|",
            *safety_rows,
        ]
    )


def plot_suite(result: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars: mean delay per scenario and controller."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]["mean_delay_s"]
    names = list(s)
    ctrls = list(result["controllers"])
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(names) + 2), 4.2))
    width = 0.8 / max(1, len(ctrls))
    colors = {
        "sumo-static": "#9e9e9e",
        "sumo-actuated": "#6d8fb3",
        "sumo-delay_based": "#3b5b80",
        "fixed": "#e0b36a",
        "actuated": "#d08a3c",
        "adaptive": "#2e8b57",
    }
    for k, c in enumerate(ctrls):
        xs = [i + (k - (len(ctrls) - 1) / 2) * width for i in range(len(names))]
        ys = [s[n].get(c, math.nan) for n in names]
        ax.bar(xs, ys, width, label=c, color=colors.get(c))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_ylabel("mean delay per vehicle, s")
    geo = result["summary"]["geometric_mean_ratio"]
    ax.set_title(f"SUMO scenarios: adaptive ÷ best SUMO baseline, geometric mean {geo:.2f}")
    return finish_figure(fig, ax, path)


def write_markdown(result: dict[str, Any], doc: Path, image: Path | None) -> None:
    """Replace the suite's section of ``doc`` (between the markers), or append it."""
    rel = os.path.relpath(image, doc.parent) if image is not None else None
    body = [
        BEGIN_MARK,
        "",
        f"Measured {result['date']} on {result['machine']}: {len(result['runs'])} runs in "
        f"{result['wall_s']:.0f} s ({result['workers']} at a time), SUMO seeds "
        f"{', '.join(str(s) for s in result['seeds'])}. Mean delay per vehicle, s "
        "(`timeLoss + max(0, departDelay)` over every vehicle of SUMO's tripinfo, unfinished "
        "and undeparted ones included); bold: adaptive and the best SUMO baseline.",
        "",
        format_table(result),
        "",
    ]
    if rel is not None:
        body += [f"![mean delay per scenario and controller]({rel})", ""]
    if result["summary"]["errors"]:
        body += ["Runs that failed:", ""] + [f"* {e}" for e in result["summary"]["errors"]] + [""]
    body.append(END_MARK)
    section = "\n".join(body)
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        _, tail = rest.split(END_MARK, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n## SUMO scenarios: cityctl against SUMO's controllers\n\n"
        text += section + "\n"
    doc.write_text(text, encoding="utf-8")
