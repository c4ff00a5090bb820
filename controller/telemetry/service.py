"""The telemetry shell: outbox, recorder, sender and upkeep, started with the controller.

Alarms (logged once per episode, in :attr:`TelemetryService.alarms`, in the retained
``…/controller/<id>/telemetry`` status and in the ``telemetry_outbox`` points):

* ``outbox_full``: unsent points were dropped because the outbox reached ``max_mb``;
* ``outbox_expired``: unsent points were dropped because they were older than ``max_age_h``;
* ``database_down``: the database has not accepted a batch for ``down_alarm_s``;
* ``outbox_error``: the outbox file cannot be written (disk full, permissions): points are held
  in memory, up to a bound, and written when the disk takes them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from controller.aio import cancel_and_wait
from controller.config import TelemetryConfig
from controller.telemetry.lineproto import FieldValue
from controller.telemetry.outbox import Outbox, OutboxError, OutboxState
from controller.telemetry.recorder import Telemetry
from controller.telemetry.sender import Backoff, Sender, Writer
from devices.influx import InfluxSettings, InfluxWriter

__all__ = ["TelemetryService"]

log = logging.getLogger("cityctl.telemetry")

HealthProbe = Callable[[], Mapping[str, FieldValue]]


class TelemetryService:
    """Owns the telemetry pipeline of one controller (see the module docstring).

    ``now`` gives seconds since the epoch for timestamps (the controller's clock);
    ``writer`` replaces the InfluxDB writer (tests, benches); ``health`` returns the
    controller's own health fields, recorded every ``intervals.health_s`` together with the
    event-loop lag measured here.
    """

    def __init__(
        self,
        cfg: TelemetryConfig,
        *,
        state_dir: Path,
        controller_id: str,
        now: Callable[[], float] = time.time,
        writer: Writer | None = None,
        health: HealthProbe | None = None,
        down_alarm_s: float = 60.0,
        max_memory_rows: int = 1_000_000,
    ) -> None:
        self.cfg = cfg
        self.controller_id = controller_id
        self.now = now
        self.health = health
        self.down_alarm_s = down_alarm_s
        self.max_memory_rows = max_memory_rows
        self.alarms: dict[str, str] = {}
        self.path = cfg.outbox_path(state_dir)
        ob = cfg.outbox
        # With no database a "sent" state never comes: max_age_h is then the local retention.
        self.outbox = Outbox(
            self.path,
            max_bytes=int(ob.max_mb * 2**20),
            max_age_ms=int(ob.max_age_h * 3_600_000),
            keep_sent_ms=int(ob.keep_sent_h * 3_600_000),
        )
        self.recorder = Telemetry(self, now, commit_every_s=ob.commit_every_s)
        self.sender: Sender | None = None
        self._own_writer: InfluxWriter | None = None
        if cfg.influx is not None or writer is not None:
            if writer is None:
                ix = cfg.influx
                assert ix is not None
                self._own_writer = InfluxWriter(
                    InfluxSettings(
                        url=ix.url,
                        bucket=ix.bucket,
                        org=ix.org,
                        token=ix.token(),
                        gzip=ix.gzip,
                        timeout_s=ix.timeout_s,
                        verify_tls=ix.verify_tls,
                    )
                )
                writer = self._own_writer
            ix_batch = cfg.influx.batch_points if cfg.influx else 5000
            backoff = (
                Backoff(cfg.influx.retry_min_s, cfg.influx.retry_max_s) if cfg.influx else None
            )
            self.sender = Sender(
                self.outbox,
                writer,
                batch_points=ix_batch,
                concurrency=cfg.influx.concurrency if cfg.influx else 2,
                backoff=backoff,
            )
        self._held: list[tuple[int, str]] = []  # rows the disk refused, retried on next append
        self.held_dropped = 0
        self._seen_full = self.outbox.state().dropped_full
        self._seen_age = self.outbox.state().dropped_age
        self._lag_max_ms = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.after_stop = 0
        """Points recorded after :meth:`stop` (by tasks still winding down): not kept."""

    # -- the recorder's sink ----------------------------------------------------------------
    def append(self, rows: Sequence[tuple[int, str]]) -> None:
        """Commit rows to the outbox (the recorder calls this once per commit window)."""
        if self._closed:
            # A task torn down after the telemetry stopped (a swallowed cancellation lets a
            # last step finish): nothing can take the rows now. Counted, said once.
            if not self.after_stop:
                log.warning("telemetry already stopped: %d late point(s) not kept", len(rows))
            self.after_stop += len(rows)
            return
        if self._held:
            rows = [*self._held, *rows]
        try:
            self.outbox.append(rows)
        except OutboxError as e:
            self._held = list(rows)
            if len(self._held) > self.max_memory_rows:
                over = len(self._held) - self.max_memory_rows
                del self._held[:over]
                self.held_dropped += over
            self._alarm("outbox_error", f"{e}; {len(self._held)} points held in memory")
            return
        self._held = []
        self._clear("outbox_error")
        if self.sender is not None:
            self.sender.notify()
        st = self.outbox
        if st.dropped_full > self._seen_full:
            self._seen_full = st.dropped_full
            self._alarm(
                "outbox_full",
                f"outbox reached {st.max_bytes // 2**20} MB: {self._seen_full} unsent points"
                " dropped (oldest first)",
            )

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the sender, the upkeep and the health sampling."""
        self._tasks = [
            asyncio.create_task(self._upkeep(), name="telemetry-upkeep"),
            asyncio.create_task(self._lag_probe(), name="telemetry-lag"),
        ]
        if self.sender is not None:
            self._tasks.append(asyncio.create_task(self.sender.run(), name="telemetry-sender"))
        log.info(
            "telemetry: outbox %s (%d points waiting), %s",
            self.path,
            self.outbox.pending_count,
            f"sending to {self.cfg.influx.url} bucket {self.cfg.influx.bucket}"
            if self.cfg.influx
            else "no database configured: kept locally"
            if self.sender is None
            else "sending to a custom writer",
        )

    async def stop(self) -> None:
        """Stop the tasks, commit what is pending, close the outbox (unsent rows stay)."""
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self.recorder.flush()
        self.outbox.close()
        self._closed = True
        if self._own_writer is not None:
            self._own_writer.close()

    async def _upkeep(self) -> None:
        last_expire = float("-inf")
        last_health = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            mono = time.monotonic()
            try:
                self.outbox.checkpoint()
                if mono - last_expire >= 60.0:
                    last_expire = mono
                    self.outbox.expire(int(self.now() * 1000))
                    dropped_age = self.outbox.state().dropped_age
                    if dropped_age > self._seen_age:
                        self._seen_age = dropped_age
                        self._alarm(
                            "outbox_expired",
                            f"{dropped_age} unsent points dropped: older than"
                            f" {self.cfg.outbox.max_age_h:g} h",
                        )
            except OutboxError as e:
                self._alarm("outbox_error", str(e))
            s = self.sender.stats if self.sender else None
            if s is not None and s.db_up is False and s.down_since is not None:
                down = mono - s.down_since
                if down >= self.down_alarm_s:
                    self._alarm(
                        "database_down", f"no batch accepted for {down:.0f} s: {s.last_error}"
                    )
            elif s is not None and s.db_up:
                self._clear("database_down")
            if mono - last_health >= self.cfg.intervals.health_s:
                last_health = mono
                self.record_health()

    async def _lag_probe(self) -> None:
        # How late the loop wakes a sleeper: the controller's responsiveness in one number.
        period = 0.25
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(period)
            lag = (time.monotonic() - t0 - period) * 1000
            self._lag_max_ms = max(self._lag_max_ms, lag)

    # -- health -----------------------------------------------------------------------------
    def record_health(self) -> None:
        """Record ``controller_health`` and ``telemetry_outbox`` now."""
        tags = {"controller": self.controller_id}
        fields: dict[str, FieldValue] = {"loop_lag_ms": round(self._lag_max_ms, 3)}
        self._lag_max_ms = 0.0
        if self.health is not None:
            try:
                fields.update(self.health())
            except Exception:  # a broken probe must not stop telemetry
                log.exception("health probe failed")
        rs = self.recorder.stats
        fields["recorded"] = rs.recorded
        fields["rejected_points"] = rs.rejected
        self.recorder.record("controller_health", tags, fields)
        st = self.outbox.state()
        s = self.sender.stats if self.sender else None
        now_ms = int(self.now() * 1000)
        ob: dict[str, FieldValue] = {
            "rows": st.pending,
            "bytes": st.bytes,
            "oldest_unsent_s": (now_ms - st.oldest_pending_ms) / 1000
            if st.oldest_pending_ms is not None
            else 0.0,
            "sent": st.sent,
            "dropped_full": st.dropped_full,
            "dropped_age": st.dropped_age,
            "send_failures": s.failures if s else 0,
            "alarms": len(self.alarms),
        }
        if s is not None and s.db_up is not None:
            ob["db_up"] = s.db_up
        self.recorder.record("telemetry_outbox", tags, ob)

    def status(self) -> dict[str, Any]:
        """For the retained status topic and the API: outbox, database, alarms."""
        st: OutboxState = self.outbox.state()
        s = self.sender.stats if self.sender else None
        return {
            "outbox": {
                "path": st.path,
                "pending": st.pending,
                "rows": st.rows,
                "bytes": st.bytes,
                "max_bytes": st.max_bytes,
                "appended": st.appended,
                "sent": st.sent,
                "dropped_full": st.dropped_full,
                "dropped_age": st.dropped_age,
            },
            "database": None
            if s is None
            else {
                "up": s.db_up,
                "batches": s.batches,
                "points": s.points,
                "failures": s.failures,
                "refused": s.refused,
                "last_error": s.last_error,
            },
            "alarms": dict(self.alarms),
        }

    # -- alarms -----------------------------------------------------------------------------
    def _alarm(self, key: str, detail: str) -> None:
        if self.alarms.get(key) is None:
            log.error("telemetry alarm %s: %s", key, detail)
        self.alarms[key] = detail

    def _clear(self, key: str) -> None:
        if self.alarms.pop(key, None) is not None:
            log.warning("telemetry alarm %s cleared", key)

    def clear_alarm(self, key: str) -> bool:
        """Acknowledge an alarm (an operator saw the dropped points); True if it was raised."""
        with contextlib.suppress(KeyError):
            del self.alarms[key]
            return True
        return False
