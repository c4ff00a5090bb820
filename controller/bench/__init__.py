"""Benchmarks that run the pure control logic over simulated time (no sockets, no sleeping).

* :mod:`controller.bench.lighting` — a year of the district's street lights with traffic
  dimming: energy against an all-night-full baseline, and proof that no group was ever
  dimmer than the lighting class its measured traffic required.
* :mod:`controller.bench.signals` — fixed-time, actuated and adaptive signal control side by
  side on the built-in traffic model.

Benchmarks are tools, like the CLI that runs them: they may use the simulator's traffic
model, which the controller proper never imports. That is why this package re-exports
no benchmark — ``import controller.bench`` stays free of the simulator; import the module
you need (``from controller.bench.lighting import run_lighting_bench``).
"""

from pathlib import Path
from typing import Any

__all__ = ["finish_figure"]


def finish_figure(fig: Any, ax: Any, path: str | Path) -> Path:
    """Legend, grid, layout; write the chart as a PNG (creating its folder) and close it."""
    import matplotlib.pyplot as plt

    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
