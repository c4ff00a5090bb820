"""Benchmarks that run the pure control logic over simulated time (no sockets, no sleeping).

* :mod:`controller.bench.lighting` — a year of the district's street lights with traffic
  dimming: energy against an all-night-full baseline, and proof that no group was ever
  dimmer than the lighting class its measured traffic required.

Benchmarks are tools, like the CLI that runs them: they may use the simulator's traffic
model, which the controller proper never imports. That is why this package re-exports
nothing — ``import controller.bench`` stays free of the simulator; import the module you
need (``from controller.bench.lighting import run_lighting_bench``).
"""

__all__: list[str] = []
