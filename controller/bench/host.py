"""How fast this machine runs the controller's kind of Python, right now.

The scale bench's figures move with the host: on the project's 2-core VM the same code measured
38.9–47.7 % of a core on one day and 52.9–64.0 % on another, and the simulated cabinets'
process, whose work does not change, moved with it (``docs/benchmarks.md``, *Scale*). A bench
result that carries a reading of the host's speed, taken just before and just after the run,
can be compared with one from another hour or another machine.

:func:`host_speed` times a fixed piece of work shaped like the controller's own: validating
node states from JSON with pydantic (the lighting side) and a loop of attribute, float and
dict work like a detector bank's step (the signal side). It reports CPU time, not wall time,
of the median of a few repetitions, so that a moment of waiting for a core does not count;
what it does count is what a slower core, or a neighbour sharing its caches, costs the
controller.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from devices.lights import NodeState, decode

__all__ = ["host_speed"]

_STATE = (
    b'{"node": "N-00001", "group": "g001", "ts": "2026-12-03T18:00:00+00:00", "level": 60.0, '
    b'"target": 60.0, "cmd_id": "6750a1b2-ab12-42", "mode": "remote", "power_w": 92.5, '
    b'"energy_wh": 1234.5, "burn_h": 210.25, "switches": 31, "faults": []}'
)


class _Det:
    __slots__ = ("last_on", "occupied", "presence", "queue")

    def __init__(self, k: int) -> None:
        self.presence = k % 3 == 0
        self.last_on = float(k)
        self.queue = 0.0
        self.occupied = 0.0


def _work(states: int, steps: int) -> float:
    """The fixed work; returns a checksum so that nothing is optimised away."""
    acc = 0.0
    for _ in range(states):
        acc += decode(NodeState, _STATE).level
    dets = [_Det(k) for k in range(20)]
    seen: dict[int, float] = {}
    for i in range(steps):
        now = i * 0.1
        for k, d in enumerate(dets):
            d.presence = (i + k) % 7 == 0
            if d.presence:
                d.last_on = now
                d.occupied += 0.1
                d.queue = max(0.0, d.queue + 0.5)
            elif now - d.last_on > 3.0:
                d.queue = 0.0
            seen[k] = d.queue
        acc += max(seen.values())
    return acc


def host_speed(repeats: int = 7, *, states: int = 5_000, steps: int = 2_000) -> dict[str, Any]:
    """CPU milliseconds of the fixed work (the median of ``repeats``; lower is faster), with
    the spread of the repetitions."""
    _work(states // 10, steps // 10)  # warm: imports, caches
    runs = []
    for _ in range(repeats):
        t0 = time.thread_time()
        _work(states, steps)
        runs.append((time.thread_time() - t0) * 1000.0)
    return {
        "cpu_ms": round(statistics.median(runs), 1),
        "min_ms": round(min(runs), 1),
        "max_ms": round(max(runs), 1),
        "repeats": repeats,
    }
