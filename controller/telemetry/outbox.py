"""The on-disk outbox: every telemetry point is here before it is anywhere else.

Why SQLite in WAL mode (and not a log file, LMDB or RocksDB): it ships with Python, one commit
is one ``write()`` to the write-ahead log, so a point committed before a SIGKILL is there after
it; readers and the writer do not block each other; and the three things the outbox must do
besides appending — hand out the oldest unsent points, forget exactly the acknowledged ones,
drop the oldest when full — are one indexed statement each. An append-only segment log would
append faster but needs its own index, compaction and crash recovery to do the same.

Durability: ``synchronous=NORMAL``: a commit survives the process being killed at any instant;
after a *power* loss the database is consistent but may lack the commits since the last
checkpoint — :meth:`Outbox.checkpoint` (the telemetry service calls it every second) bounds
that window.

Rows are **pending** until the database acknowledged the batch that carried them; then they are
deleted, or kept as **sent** for ``keep_sent_h`` so ``cityctl telemetry export`` can still read
them. The outbox is bounded by size and age: when full it first forgets sent rows (no loss),
then drops the oldest pending ones and counts them (``dropped_full``); rows older than
``max_age_h`` are removed, pending ones counted as ``dropped_age``. The counters are stored in
the file, so they survive restarts.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Outbox", "OutboxError", "OutboxState", "PendingBatch", "iter_lines", "open_readonly"]

log = logging.getLogger("cityctl.telemetry")

ROW_OVERHEAD = 32
"""Bytes a row costs beyond its line (rowid, timestamp, flag, b-tree cell): for the size bound."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- append order; never reused; sent rows are a prefix
    ts_ms INTEGER NOT NULL,                -- the point's own timestamp
    sent INTEGER NOT NULL DEFAULT 0,       -- 0 pending, 1 acknowledged by the database
    line TEXT NOT NULL                     -- line protocol, exactly as it will be sent
);
CREATE INDEX IF NOT EXISTS points_ts ON points(ts_ms);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_COUNTERS = ("appended", "sent", "dropped_full", "dropped_age", "removed_sent")


class OutboxError(RuntimeError):
    """The outbox file cannot be opened or written (disk full, permissions, corruption)."""


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """Unsent rows ``first_id..last_id`` (``count`` of them) joined into one body."""

    first_id: int
    last_id: int
    count: int
    body: str


@dataclass(frozen=True)
class OutboxState:
    """A snapshot for health points, the CLI and tests."""

    path: str
    rows: int
    pending: int
    bytes: int
    max_bytes: int
    oldest_pending_ms: int | None
    appended: int
    sent: int
    dropped_full: int
    dropped_age: int


class Outbox:
    """SQLite-backed outbox of line-protocol rows; see the module docstring.

    Not thread-safe by design: the controller uses it from its event loop only (the sender
    hands the *text* of a batch to a worker thread, never the connection). A lock still guards
    each method so a benchmark or CLI that uses a thread cannot corrupt the counters.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = 1024 * 1024 * 1024,
        max_age_ms: int = 30 * 86_400_000,
        keep_sent_ms: int = 86_400_000,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self.keep_sent_ms = keep_sent_ms
        self._lock = threading.Lock()
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            for name in _COUNTERS:
                self._db.execute(
                    "INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (name,)
                )
            rows, pending, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(sent = 0), 0),"
                f" COALESCE(SUM(LENGTH(line) + {ROW_OVERHEAD}), 0) FROM points"
            ).fetchone()
        except (sqlite3.Error, OSError) as e:
            raise OutboxError(f"cannot open the telemetry outbox {path}: {e}") from e
        self._rows = int(rows)
        self._pending = int(pending)
        self._bytes = int(size)
        self._counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        # Rows are sent oldest first and acknowledged in id ranges, so every row up to the last
        # acknowledged id is sent: this low-water mark replaces an index on the sent flag
        # (which would cost a third of the append and acknowledge time).
        low = self._db.execute("SELECT MIN(id) FROM points WHERE sent = 0").fetchone()[0]
        if low is None:
            low = (self._db.execute("SELECT MAX(id) FROM points").fetchone()[0] or 0) + 1
        self._low = int(low) - 1

    # -- writing ----------------------------------------------------------------------------
    def append(self, rows: Sequence[tuple[int, str]]) -> None:
        """Commit ``(ts_ms, line)`` rows in one transaction; make room first if full."""
        if not rows:
            return
        added = sum(len(line) + ROW_OVERHEAD for _, line in rows)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if self._bytes + added > self.max_bytes:
                    self._make_room(added)
                self._db.executemany("INSERT INTO points(ts_ms, line) VALUES (?, ?)", rows)
                self._bump("appended", len(rows))
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise OutboxError(f"cannot write the telemetry outbox {self.path}: {e}") from e
            self._rows += len(rows)
            self._pending += len(rows)
            self._bytes += added

    def _make_room(self, incoming: int) -> None:
        # Free down to 90 % of the bound so a full outbox does not delete on every append.
        target = int(self.max_bytes * 0.9) - incoming
        need = self._bytes - target
        # Sent rows first: forgetting them loses nothing the database does not have.
        freed, n = self._delete_oldest(f"id <= {self._low} AND sent = 1", need)
        self._rows -= n
        self._bytes -= freed
        self._bump("removed_sent", n)
        if self._bytes > target:
            freed, n = self._delete_oldest(f"id > {self._low} AND sent = 0", self._bytes - target)
            self._rows -= n
            self._pending -= n
            self._bytes -= freed
            self._bump("dropped_full", n)
            if n:
                log.error(
                    "telemetry outbox full (%d MB): dropped the %d oldest unsent points"
                    " (%d dropped so far)",
                    self.max_bytes // 2**20,
                    n,
                    self._counters["dropped_full"],
                )

    def _delete_oldest(self, where: str, need: int) -> tuple[int, int]:
        """Delete the oldest rows matching ``where`` until ``need`` bytes are freed."""
        if need <= 0:
            return 0, 0
        freed = n = 0
        while freed < need:
            # Walk the oldest rows in chunks; the running total decides where to cut.
            chunk = self._db.execute(
                f"SELECT id, LENGTH(line) + {ROW_OVERHEAD} FROM points WHERE {where}"
                " ORDER BY id LIMIT 2000"
            ).fetchall()
            if not chunk:
                break
            last = chunk[-1][0]
            for row_id, size in chunk:
                freed += size
                n += 1
                if freed >= need:
                    last = row_id
                    break
            self._db.execute(f"DELETE FROM points WHERE {where} AND id <= ?", (last,))
        return freed, n

    # -- sending ----------------------------------------------------------------------------
    @property
    def dropped_full(self) -> int:
        """Unsent rows dropped so far because the outbox was full (kept in the file)."""
        return int(self._counters["dropped_full"])

    @property
    def pending_count(self) -> int:
        """Rows not yet acknowledged by the database."""
        return self._pending

    def pending(self, limit: int, after_id: int = 0) -> list[tuple[int, str]]:
        """The oldest unsent ``(id, line)`` rows with ``id > after_id``, at most ``limit``."""
        with self._lock:
            return self._db.execute(
                "SELECT id, line FROM points WHERE id > ? AND sent = 0 ORDER BY id LIMIT ?",
                (max(after_id, self._low), limit),
            ).fetchall()

    def pending_batch(self, limit: int, after_id: int = 0) -> PendingBatch | None:
        """The oldest unsent rows after ``after_id`` as one request body, or None.

        SQLite joins the lines itself (``group_concat``): no Python object per row, which is
        what makes draining about as fast as posting lines held in memory.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(id), MAX(id), COUNT(*), group_concat(line, char(10)) FROM"
                " (SELECT id, line FROM points WHERE id > ? AND sent = 0 ORDER BY id LIMIT ?)",
                (max(after_id, self._low), limit),
            ).fetchone()
        if not row or not row[2]:
            return None
        return PendingBatch(int(row[0]), int(row[1]), int(row[2]), str(row[3]))

    def ack(self, first_id: int, last_id: int, *, batch: PendingBatch | None = None) -> int:
        """The database has the pending rows ``first_id..last_id``: forget or keep them as sent.

        Rows of that range dropped meanwhile (a full outbox) are simply not there any more.
        ``batch``, the batch that carried them, saves re-reading their sizes. Returns how many
        rows were acknowledged.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                freed, recounted = 0, False
                size_sql = (
                    f"SELECT COALESCE(SUM(LENGTH(line) + {ROW_OVERHEAD}), 0) FROM points"
                    " WHERE sent = 0 AND id BETWEEN ? AND ?"
                )
                if self.keep_sent_ms > 0:
                    cur = self._db.execute(
                        "UPDATE points SET sent = 1 WHERE sent = 0 AND id BETWEEN ? AND ?",
                        (first_id, last_id),
                    )
                    n = cur.rowcount
                else:
                    known = batch is not None and (batch.first_id, batch.last_id) == (
                        first_id,
                        last_id,
                    )
                    if not known:
                        freed = self._db.execute(size_sql, (first_id, last_id)).fetchone()[0]
                    cur = self._db.execute(
                        "DELETE FROM points WHERE sent = 0 AND id BETWEEN ? AND ?",
                        (first_id, last_id),
                    )
                    n = cur.rowcount
                    if batch is not None and known:
                        if n == batch.count:
                            # The body is the lines joined by newlines: its length tells.
                            freed = len(batch.body) - (n - 1) + n * ROW_OVERHEAD
                        else:  # some were dropped meanwhile: recount what is left
                            self._recount()
                            recounted = True
                self._bump("sent", n)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise OutboxError(f"cannot write the telemetry outbox {self.path}: {e}") from e
            self._low = max(self._low, last_id)
            if not recounted:
                self._pending -= n
                if self.keep_sent_ms <= 0:
                    self._rows -= n
                    self._bytes -= int(freed)
            return n

    # -- upkeep -----------------------------------------------------------------------------
    def expire(self, now_ms: int) -> tuple[int, int]:
        """Remove sent rows older than ``keep_sent`` and any row older than ``max_age``.

        Returns ``(sent rows removed, unsent rows dropped)``; the latter are counted as
        ``dropped_age``.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                old_sent = self._delete_where(
                    "sent = 1 AND ts_ms < ?", now_ms - min(self.keep_sent_ms, self.max_age_ms)
                )
                old_pending = self._delete_where("sent = 0 AND ts_ms < ?", now_ms - self.max_age_ms)
                self._bump("removed_sent", old_sent[0])
                self._bump("dropped_age", old_pending[0])
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise OutboxError(f"cannot write the telemetry outbox {self.path}: {e}") from e
        self._rows -= old_sent[0] + old_pending[0]
        self._pending -= old_pending[0]
        self._bytes -= old_sent[1] + old_pending[1]
        if old_pending[0]:
            log.error(
                "telemetry outbox: dropped %d unsent points older than %.0f h",
                old_pending[0],
                self.max_age_ms / 3_600_000,
            )
        return old_sent[0], old_pending[0]

    def _delete_where(self, where: str, arg: int) -> tuple[int, int]:
        n, size = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(LENGTH(line) + {ROW_OVERHEAD}), 0) FROM points"
            f" WHERE {where}",
            (arg,),
        ).fetchone()
        if n:
            self._db.execute(f"DELETE FROM points WHERE {where}", (arg,))
        return int(n), int(size)

    def checkpoint(self) -> None:
        """Write the WAL into the database file and sync it (bounds what a power loss takes)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as e:
                raise OutboxError(f"cannot checkpoint the telemetry outbox {self.path}: {e}") from e

    # -- reading ----------------------------------------------------------------------------
    def state(self) -> OutboxState:
        """Sizes and counters now."""
        with self._lock:
            oldest = self._db.execute(
                "SELECT ts_ms FROM points WHERE id > ? AND sent = 0 ORDER BY id LIMIT 1",
                (self._low,),
            ).fetchone()
            return OutboxState(
                path=str(self.path),
                rows=self._rows,
                pending=self._pending,
                bytes=self._bytes,
                max_bytes=self.max_bytes,
                oldest_pending_ms=int(oldest[0]) if oldest else None,
                appended=self._counters["appended"],
                sent=self._counters["sent"],
                dropped_full=self._counters["dropped_full"],
                dropped_age=self._counters["dropped_age"],
            )

    def lines(
        self, since_ms: int = 0, until_ms: int | None = None, *, chunk: int = 10_000
    ) -> Iterator[tuple[int, str]]:
        """Every stored ``(ts_ms, line)`` (sent or not) in ``[since, until)``, in time order."""
        return iter_lines(self._db, since_ms, until_ms, chunk=chunk, lock=self._lock)

    def close(self) -> None:
        """Checkpoint and close the file."""
        with self._lock:
            # Closing anyway if this fails: the WAL is replayed on the next open.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    # -- internals --------------------------------------------------------------------------
    def _bump(self, name: str, n: int) -> None:
        if n:
            self._counters[name] += n
            self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
        # The in-memory figures may now be ahead of the file: reread them.
        with contextlib.suppress(sqlite3.Error):
            self._counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            self._recount()

    def _recount(self) -> None:
        rows, pending, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(sent = 0), 0),"
            f" COALESCE(SUM(LENGTH(line) + {ROW_OVERHEAD}), 0) FROM points"
        ).fetchone()
        self._rows, self._pending, self._bytes = int(rows), int(pending), int(size)


def open_readonly(path: Path | str) -> sqlite3.Connection:
    """Open an outbox file for reading only (export while the controller runs: WAL allows it)."""
    p = Path(path)
    if not p.exists():
        raise OutboxError(f"no telemetry outbox at {p}")
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, isolation_level=None)
        db.execute("SELECT 1 FROM points LIMIT 1").fetchall()
    except sqlite3.Error as e:
        raise OutboxError(f"cannot read the telemetry outbox {p}: {e}") from e
    return db


def iter_lines(
    db: sqlite3.Connection,
    since_ms: int = 0,
    until_ms: int | None = None,
    *,
    chunk: int = 10_000,
    lock: threading.Lock | None = None,
) -> Iterator[tuple[int, str]]:
    """``(ts_ms, line)`` of every stored row in ``[since, until)``, by time, in chunks."""
    until = until_ms if until_ms is not None else 2**62
    last_ts, last_id = since_ms - 1, 0
    while True:
        with lock or contextlib.nullcontext():
            rows = db.execute(
                "SELECT id, ts_ms, line FROM points"
                " WHERE ((ts_ms = ? AND id > ?) OR ts_ms > ?) AND ts_ms < ?"
                " ORDER BY ts_ms, id LIMIT ?",
                (last_ts, last_id, last_ts, until, chunk),
            ).fetchall()
        if not rows:
            return
        for row_id, ts, line in rows:
            yield ts, line
            last_ts, last_id = ts, row_id
