"""Group-command fan-out latency: from the controller's publish of a group command to the
arrival of the last acknowledging node state.

A node acknowledges a command by reporting a state that carries its ``cmd_id``
(``docs/protocol.md`` §1), so the controller can time a whole fan-out on its own: when it
publishes a *new* command for a group it notes the instant and how many nodes of the group are
online; each node's first state with that ``cmd_id`` counts one down; when none is left the
elapsed time is one sample. A retry that a late node needed is part of that time (the command
reached it late). A fan-out that has not completed after ``timeout_s`` (a node went offline,
or never answered) is counted as incomplete; one that a newer command for the same group
replaced before it completed is counted as superseded. Neither is a latency sample.

Pure: times are passed in (the lighting service passes real monotonic seconds, whatever clock
the control logic runs on, because the figure is about the process, not the schedule).
Allocation-light: one small record per group with a fan-out in flight, and the samples in a
fixed ring of floats.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FanoutSummary", "FanoutTracker", "percentile"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0 ≤ q ≤ 1) of already sorted values, linear between ranks.

    NaN for no values. ``percentile(v, 0.5)`` is the median; ``0.99`` the 99th percentile.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


@dataclass
class _Pending:
    cmd_id: str
    sent: float
    left: int


@dataclass(frozen=True)
class FanoutSummary:
    """The tracker's figures (latencies in milliseconds; None before the first sample)."""

    count: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    incomplete: int
    superseded: int
    pending: int
    window: int

    def as_fields(self) -> dict[str, float | int]:
        """Flat ``fanout_*`` fields for the health point and the API (no None values)."""
        out: dict[str, float | int] = {
            "fanout_count": self.count,
            "fanout_incomplete": self.incomplete,
            "fanout_superseded": self.superseded,
            "fanout_pending": self.pending,
        }
        for name in ("p50_ms", "p99_ms", "max_ms"):
            value = getattr(self, name)
            if value is not None:
                out[f"fanout_{name}"] = round(value, 2)
        return out


class FanoutTracker:
    """Times group-command fan-outs; see the module docstring.

    ``window`` samples are kept for the percentiles (the newest ones); ``count`` counts all.
    """

    def __init__(self, *, window: int = 4096, timeout_s: float = 60.0) -> None:
        if window < 1 or timeout_s <= 0:
            raise ValueError("window must be ≥ 1 and timeout_s positive")
        self.window = window
        self.timeout_s = timeout_s
        self._pending: dict[str, _Pending] = {}
        self._ring = array("d", [0.0]) * window
        self._next = 0
        self.count = 0
        self.incomplete = 0
        self.superseded = 0
        self._max = 0.0

    @property
    def pending(self) -> int:
        """Fan-outs in flight."""
        return len(self._pending)

    def sent(self, group: str, cmd_id: str, waiting: int, t: float) -> None:
        """A new command for ``group`` is being published at ``t``; ``waiting`` nodes are
        expected to acknowledge it (the online ones). With none waiting nothing is timed."""
        old = self._pending.pop(group, None)
        if old is not None:
            self.superseded += 1
        if waiting > 0:
            self._pending[group] = _Pending(cmd_id, t, waiting)

    def acked(self, group: str, cmd_id: str, t: float) -> float | None:
        """A node of ``group`` reported ``cmd_id`` for the first time at ``t``.

        Returns the fan-out latency (seconds) when this was the last node, else None.
        """
        p = self._pending.get(group)
        if p is None or p.cmd_id != cmd_id:
            return None
        p.left -= 1
        if p.left > 0:
            return None
        del self._pending[group]
        latency = max(0.0, t - p.sent)
        self._ring[self._next] = latency
        self._next = (self._next + 1) % self.window
        self.count += 1
        self._max = max(self._max, latency)
        return latency

    def expire(self, t: float) -> int:
        """Give up on fan-outs older than ``timeout_s`` (counted incomplete); how many."""
        if not self._pending:
            return 0
        late = [g for g, p in self._pending.items() if t - p.sent > self.timeout_s]
        for g in late:
            del self._pending[g]
        self.incomplete += len(late)
        return len(late)

    def samples(self) -> list[float]:
        """The kept latencies in seconds (at most ``window``), oldest first."""
        n = min(self.count, self.window)
        if self.count <= self.window:
            return list(self._ring[:n])
        return list(self._ring[self._next :]) + list(self._ring[: self._next])

    def summary(self) -> FanoutSummary:
        """Count, median, 99th percentile and maximum (ms), incomplete and superseded."""
        values = sorted(self.samples())
        has = bool(values)
        return FanoutSummary(
            count=self.count,
            p50_ms=percentile(values, 0.5) * 1000 if has else None,
            p99_ms=percentile(values, 0.99) * 1000 if has else None,
            max_ms=self._max * 1000 if has else None,
            incomplete=self.incomplete,
            superseded=self.superseded,
            pending=len(self._pending),
            window=self.window,
        )
