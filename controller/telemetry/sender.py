"""Drains the outbox into the database: batches, retries with jittered backoff, acknowledges.

A row leaves the outbox only after the database acknowledged the request that carried it
(HTTP 204). If the controller dies between the database's answer and the acknowledgement, the
batch is sent again after the restart — harmless, because a point's timestamp was fixed when it
was recorded and the database keeps one point per series and timestamp: replays are idempotent.

Failures are sorted by what can help:

* the network or the database is away, overloaded, upgrading (connection errors, 5xx, 429,
  401/403/404 while an operator fixes a token or bucket): wait and try the same batch again,
  with exponential backoff and full jitter (so a hundred edge boxes do not return in step
  after an outage), honouring ``Retry-After``;
* the request is too large (413): halve the batch;
* the database refuses the content (400, 422): halve the batch until the refused line is alone,
  then set that one line aside (counted, logged with the line) so it cannot block the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from controller.telemetry.outbox import Outbox, PendingBatch
from devices.influx import WriteFailed

__all__ = ["Backoff", "Sender", "SenderStats", "Writer"]

log = logging.getLogger("cityctl.telemetry")


class Writer(Protocol):
    """What the sender needs of the database (:class:`devices.influx.InfluxWriter`)."""

    def write(self, body: str) -> None:
        """Write one line-protocol body or raise :class:`devices.influx.WriteFailed`."""
        ...


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt *n* waits uniformly in [min, min·2ⁿ] ∧ max."""

    min_s: float = 0.5
    max_s: float = 30.0
    attempt: int = 0
    rng: random.Random | None = None

    def next_delay(self, hint_s: float | None = None) -> float:
        """The wait before the next try (at least the server's ``Retry-After`` hint)."""
        cap = min(self.max_s, self.min_s * 2**self.attempt)
        self.attempt += 1
        delay = (self.rng or random).uniform(self.min_s, max(self.min_s, cap))
        return max(delay, hint_s or 0.0)

    def reset(self) -> None:
        """After a success."""
        self.attempt = 0


@dataclass
class SenderStats:
    """What the sender did; ``db_up`` is the outcome of the last request."""

    batches: int = 0
    points: int = 0
    bytes: int = 0
    failures: int = 0
    refused: int = 0
    db_up: bool | None = None
    last_error: str = ""
    down_since: float | None = None
    last_ok: float | None = None


class Sender:
    """The task that drains one :class:`Outbox` through one :class:`Writer`."""

    def __init__(
        self,
        outbox: Outbox,
        writer: Writer,
        *,
        batch_points: int = 5000,
        concurrency: int = 2,
        linger_s: float = 1.0,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.writer = writer
        self.batch_points = batch_points
        self.concurrency = max(1, concurrency)
        self.linger_s = linger_s
        self.backoff = backoff or Backoff()
        self.monotonic = monotonic
        self.stats = SenderStats()
        self._batch = batch_points  # shrinks after 413/400, grows back after successes
        self._wake = asyncio.Event()
        self._full = asyncio.Event()

    def notify(self) -> None:
        """New rows were appended (called by the telemetry service after each commit)."""
        self._wake.set()
        if self.outbox.pending_count >= self.batch_points:
            self._full.set()

    async def run(self) -> None:
        """Send until cancelled. Cancelling never loses rows: unacknowledged ones stay."""
        while True:
            if self.outbox.pending_count == 0:
                self._wake.clear()
                await self._wake.wait()
            if self.outbox.pending_count < self.batch_points:
                # Linger so a quiet controller sends one request a second, not one per point.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), timeout=self.linger_s)
            await self.drain_once()

    async def drain_once(self) -> int:
        """Send batches until the outbox has nothing pending or a request fails.

        Returns the number of points acknowledged. Up to ``concurrency`` requests are in
        flight (a database ingests on several cores; a long uplink has latency to hide), and
        the outbox work overlaps them: the next batch is read while requests run, and a batch's
        rows are acknowledged in the outbox only once it *and every older batch* have been
        accepted — so the rows left pending after any failure or crash are always the oldest.
        """
        done = 0
        inflight: deque[tuple[PendingBatch, asyncio.Task[None]]] = deque()
        self._fill(inflight)
        while inflight:
            batch, task = inflight[0]
            try:
                await asyncio.shield(task)
            except WriteFailed as e:
                # Let the younger requests finish (their points may be stored: harmless, the
                # replay is idempotent), then start again from the oldest pending row.
                for _, younger in list(inflight)[1:]:
                    with contextlib.suppress(Exception):
                        await younger
                inflight.clear()
                if not await self._failed(e, batch):
                    return done
                self._fill(inflight)
                continue
            inflight.popleft()
            if self._batch < self.batch_points:
                # Back towards full batches once a refused point was set aside.
                self._batch = min(self.batch_points, self._batch * 2)
            self._fill(inflight, after_id=batch.last_id)  # keep the network busy first
            done += self.outbox.ack(batch.first_id, batch.last_id, batch=batch)
            self._ok(batch.count, len(batch.body))
        return done

    def _fill(
        self, inflight: deque[tuple[PendingBatch, asyncio.Task[None]]], after_id: int = 0
    ) -> None:
        """Start requests for the next pending batches until ``concurrency`` are in flight."""
        if inflight:
            after_id = max(after_id, inflight[-1][0].last_id)
        while len(inflight) < self.concurrency:
            nxt = self.outbox.pending_batch(self._batch, after_id=after_id)
            if nxt is None:
                return
            task = asyncio.create_task(asyncio.to_thread(self.writer.write, nxt.body))
            inflight.append((nxt, task))
            after_id = nxt.last_id

    def _ok(self, points: int, size: int) -> None:
        s = self.stats
        if s.db_up is False:
            log.warning(
                "telemetry database reachable again after %.0f s; sending the backlog",
                self.monotonic() - (s.down_since or self.monotonic()),
            )
        s.batches += 1
        s.points += points
        s.bytes += size
        s.db_up = True
        s.down_since = None
        s.last_ok = self.monotonic()
        self.backoff.reset()

    async def _failed(self, e: WriteFailed, batch: PendingBatch) -> bool:
        """Handle a failed request; True: try again at once with the (smaller) batch."""
        s = self.stats
        s.failures += 1
        s.last_error = str(e)
        if e.retryable:
            if s.db_up is not False:
                log.warning("telemetry database unreachable (%s); points stay in the outbox", e)
                s.down_since = self.monotonic()
            s.db_up = False
            await asyncio.sleep(self.backoff.next_delay(e.retry_after_s))
            return False
        # The database answered but refused the request itself.
        s.db_up = True
        if batch.count > 1:
            self._batch = max(1, batch.count // 2)
            log.info("database refused a batch (%s); retrying in halves of %d", e, self._batch)
            return True
        self.outbox.ack(batch.first_id, batch.last_id)
        s.refused += 1
        log.error("database refused a point; set aside: %s — %s", e, batch.body[:300])
        return True
