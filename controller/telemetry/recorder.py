"""Where the control loops hand their telemetry: a small :class:`Recorder` interface.

The loops call :meth:`Recorder.record` and never wait: the :class:`Telemetry` recorder turns the
point into line protocol at once and commits everything recorded within ``commit_every_s`` (by
default 50 ms) to the on-disk outbox in one transaction (``loop.call_later``). So a point is on
disk at most ``commit_every_s`` after it was recorded, and a crash loses at most the points of
that last window. One transaction per message cost 10 % of the controller's busy time with
10,000 light nodes (paho reads one packet per event-loop turn, so a turn is one message);
``commit_every_s=0`` commits after every turn (``loop.call_soon``), the old behaviour.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.diagnostics import DropCounter
from controller.telemetry.lineproto import FieldValue, LineError, Point, encode, parse, series_key

__all__ = ["MemoryRecorder", "Recorder", "RecorderStats", "Telemetry"]

log = logging.getLogger("cityctl.telemetry")


class Recorder(Protocol):
    """What a control loop needs to record telemetry."""

    def record(
        self,
        measurement: str,
        tags: Mapping[str, str],
        fields: Mapping[str, FieldValue],
        at: float | None = None,
    ) -> None:
        """Record one point; ``at`` is seconds since the epoch (default: the recorder's now).

        Never raises for a bad point and never blocks: a point that cannot be encoded is
        counted and logged, not written.
        """
        ...


@dataclass
class RecorderStats:
    """What the recorder did, for the health measurement and tests."""

    recorded: int = 0
    rejected: int = 0
    bumped: int = 0
    flushes: int = 0


class _Sink(Protocol):
    def append(self, rows: Sequence[tuple[int, str]]) -> None: ...


class Telemetry:
    """The production recorder: line protocol into an outbox, committed once per ``commit_every_s``.

    ``now`` gives seconds since the epoch (the controller's clock, so a demo on a scaled clock
    records simulated time). Within one series timestamps are made strictly increasing — a
    second point in the same millisecond moves to the next one — because the database keeps
    one point per series and timestamp: without this two real events would collapse into one,
    and with it a replayed batch still collapses onto the points it repeats.
    """

    #: Pending points that trigger a commit at once, whatever the window: bounds memory and the
    #: size of one transaction when a burst comes.
    MAX_PENDING = 5000

    def __init__(
        self,
        sink: _Sink,
        now: Callable[[], float],
        *,
        max_series: int = 200_000,
        commit_every_s: float = 0.05,
    ) -> None:
        if not commit_every_s >= 0.0:  # also refuses NaN
            raise ValueError(f"commit_every_s must be ≥ 0 s, got {commit_every_s!r}")
        self.sink = sink
        self.now = now
        self.commit_every_s = commit_every_s
        self.stats = RecorderStats()
        self.drops = DropCounter(log, "telemetry point")
        self._pending: list[tuple[int, str]] = []
        self._flush_scheduled = False
        self._flush_handle: asyncio.Handle | None = None
        self._last_ts: dict[str, int] = {}
        self._max_series = max_series

    def record(
        self,
        measurement: str,
        tags: Mapping[str, str],
        fields: Mapping[str, FieldValue],
        at: float | None = None,
    ) -> None:
        """See :meth:`Recorder.record`."""
        ts = round((self.now() if at is None else at) * 1000)
        try:
            key = series_key(measurement, tags)
            last = self._last_ts.get(key)
            if last is not None and ts <= last:
                ts = last + 1
                self.stats.bumped += 1
            line = encode(measurement, tags, fields, ts)
        except LineError as e:
            self.stats.rejected += 1
            self.drops.drop(measurement if isinstance(measurement, str) else "?", str(e))
            return
        if len(self._last_ts) >= self._max_series and key not in self._last_ts:
            # Bound memory; forgetting only risks merging two points of one series that fall
            # in the same millisecond.
            self._last_ts.clear()
        self._last_ts[key] = ts
        self._pending.append((ts, line))
        self.stats.recorded += 1
        if len(self._pending) >= self.MAX_PENDING:
            self.flush()
        else:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no loop (CLI, benches): commit at once
            return
        if self.commit_every_s > 0:
            self._flush_handle = loop.call_later(self.commit_every_s, self.flush)
        else:
            self._flush_handle = loop.call_soon(self.flush)
        self._flush_scheduled = True

    def flush(self) -> None:
        """Commit what is pending to the sink now (also called at shutdown)."""
        self._flush_scheduled = False
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()  # called early (a burst, shutdown): the timer has nothing to do
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        self.sink.append(rows)
        self.stats.flushes += 1


class MemoryRecorder:
    """A recorder that keeps :class:`Point` objects in a list (tests, benches)."""

    def __init__(self, now: Callable[[], float] = lambda: 0.0) -> None:
        self.now = now
        self.points: list[Point] = []

    def record(
        self,
        measurement: str,
        tags: Mapping[str, str],
        fields: Mapping[str, FieldValue],
        at: float | None = None,
    ) -> None:
        """Encode (so bad points fail loudly in tests) and keep the point."""
        ts = round((self.now() if at is None else at) * 1000)
        self.points.append(parse(encode(measurement, tags, fields, ts)))

    def of(self, measurement: str) -> list[Point]:
        """The points of one measurement, in recording order."""
        return [p for p in self.points if p.measurement == measurement]
