"""The outbox: durable appends, exact acknowledgement, bounded by size and age, counted drops."""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path

import pytest

from controller.telemetry.export import ExportError, export, parse_when
from controller.telemetry.lineproto import encode, parse
from controller.telemetry.outbox import ROW_OVERHEAD, Outbox, OutboxError
from controller.telemetry.sender import Backoff, Sender
from devices.influx import WriteFailed


def rows(n: int, start: int = 0, t0: int = 1_000_000) -> list[tuple[int, str]]:
    return [
        (t0 + i, encode("m", {"k": f"s{i % 7}"}, {"v": i}, t0 + i)) for i in range(start, start + n)
    ]


def test_pending_ack_and_counters_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, keep_sent_ms=0)
    ob.append(rows(100))
    b = ob.pending_batch(40)
    assert b is not None and b.count == 40 and b.body.count("\n") == 39
    assert ob.ack(b.first_id, b.last_id, batch=b) == 40
    assert ob.pending_count == 60
    ob.close()
    again = Outbox(path, keep_sent_ms=0)
    st = again.state()
    assert (st.pending, st.appended, st.sent) == (60, 100, 40)
    nxt = again.pending_batch(1000)
    assert nxt is not None and parse(nxt.body.split("\n")[0]).fields == (("v", 40),)
    # The byte count kept in memory equals the file's.
    expect = sum(len(line) + ROW_OVERHEAD for _, line in rows(60, start=40))
    assert st.bytes == expect


def test_keep_sent_rows_stay_for_export_but_are_not_resent(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", keep_sent_ms=3_600_000)
    ob.append(rows(10))
    b = ob.pending_batch(100)
    assert b is not None
    ob.ack(b.first_id, b.last_id, batch=b)
    assert ob.pending_batch(100) is None
    assert len(list(ob.lines())) == 10
    ob.close()
    reopened = Outbox(tmp_path / "o.sqlite", keep_sent_ms=3_600_000)
    assert reopened.pending_batch(100) is None  # the low-water mark is rebuilt from the file
    reopened.append(rows(1, start=10))
    b2 = reopened.pending_batch(100)
    assert b2 is not None and b2.count == 1


def test_full_outbox_forgets_sent_rows_first_then_drops_oldest_unsent(tmp_path: Path) -> None:
    one = max(len(line) for _, line in rows(150)) + ROW_OVERHEAD  # every row is at most this
    ob = Outbox(tmp_path / "o.sqlite", max_bytes=100 * one, keep_sent_ms=3_600_000)
    ob.append(rows(50))
    b = ob.pending_batch(20)
    assert b is not None
    ob.ack(b.first_id, b.last_id, batch=b)  # 20 sent, 30 pending
    ob.append(rows(55, start=50))  # 105 rows > 100: room is made
    st = ob.state()
    assert st.dropped_full == 0  # sent rows went first: nothing lost
    assert st.pending == 85
    assert st.rows < 105
    ob.append(rows(45, start=105))  # now unsent rows must go
    st = ob.state()
    assert st.dropped_full > 0
    assert st.bytes <= ob.max_bytes
    left = [parse(line).fields[0][1] for _, line in ob.lines()]
    # Oldest first: what is left is one contiguous run ending with the newest.
    assert left == list(range(150 - len(left), 150))
    assert st.pending + st.dropped_full + st.sent == 150


def test_expire_removes_old_rows_and_counts_unsent_ones(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", max_age_ms=1000, keep_sent_ms=500)
    ob.append(rows(10, t0=0))  # ts 0..9
    ob.append(rows(10, start=10, t0=1000))  # ts 1010..1019
    b = ob.pending_batch(5)
    assert b is not None
    ob.ack(b.first_id, b.last_id, batch=b)  # ts 0..4 sent
    removed_sent, dropped = ob.expire(now_ms=1100)
    assert (removed_sent, dropped) == (5, 5)
    st = ob.state()
    assert st.dropped_age == 5 and st.pending == 10 and st.rows == 10


def test_unwritable_outbox_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutboxError, match="cannot open"):
        Outbox(blocker / "o.sqlite")


class FlakyWriter:
    """A database that fails in scripted ways and keeps one copy per (series, timestamp)."""

    def __init__(self, script: list[WriteFailed | None]) -> None:
        self.script = script
        self.stored: dict[tuple[str, int], str] = {}
        self.requests = 0
        self.refuse: set[str] = set()

    def write(self, body: str) -> None:
        self.requests += 1
        if self.script:
            err = self.script.pop(0)
            if err is not None:
                raise err
        lines = body.split("\n")
        bad = [line for line in lines if any(r in line for r in self.refuse)]
        if bad:
            raise WriteFailed("400 bad line", retryable=False, status=400)
        for line in lines:
            p = parse(line)
            self.stored[(p.series, p.ts_ms)] = line


def _sender(ob: Outbox, w: FlakyWriter, batch: int = 10, concurrency: int = 1) -> Sender:
    return Sender(
        ob,
        w,
        batch_points=batch,
        concurrency=concurrency,
        backoff=Backoff(0.001, 0.002, rng=random.Random(1)),
    )


async def test_sender_retries_until_the_database_takes_everything(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", keep_sent_ms=0)
    ob.append(rows(35))
    down = WriteFailed("connection refused", retryable=True)
    w = FlakyWriter([down, down, None, down])
    s = _sender(ob, w)
    total = 0
    for _ in range(10):
        total += await s.drain_once()
        if ob.pending_count == 0:
            break
    assert total == 35 and len(w.stored) == 35
    assert s.stats.failures == 3 and s.stats.db_up is True


async def test_refused_point_is_isolated_and_set_aside(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", keep_sent_ms=0)
    ob.append(rows(40))
    w = FlakyWriter([])
    w.refuse = {" v=17i "}
    s = _sender(ob, w, batch=16)
    for _ in range(20):
        await s.drain_once()
        if ob.pending_count == 0:
            break
    assert ob.pending_count == 0
    assert s.stats.refused == 1
    assert len(w.stored) == 39  # every other point arrived


async def test_cancel_during_a_request_loses_nothing(tmp_path: Path) -> None:
    class Slow(FlakyWriter):
        def write(self, body: str) -> None:
            import time

            time.sleep(0.2)
            super().write(body)

    ob = Outbox(tmp_path / "o.sqlite", keep_sent_ms=0)
    ob.append(rows(20))
    w = Slow([])
    task = asyncio.create_task(_sender(ob, w).drain_once())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)  # the request finished in its thread: the database has batch 1
    assert ob.pending_count == 20  # but it was not acknowledged: sent again later
    await _sender(ob, w).drain_once()
    assert ob.pending_count == 0 and len(w.stored) == 20  # the replay did not duplicate


async def test_two_in_flight_acknowledge_only_in_order(tmp_path: Path) -> None:
    class OlderFails(FlakyWriter):
        """The first request fails after the second (younger) one succeeded."""

        def write(self, body: str) -> None:
            import time

            if self.requests == 0:
                self.requests += 1
                time.sleep(0.1)
                raise WriteFailed("timeout", retryable=True)
            super().write(body)

    ob = Outbox(tmp_path / "o.sqlite", keep_sent_ms=0)
    ob.append(rows(20))
    w = OlderFails([])
    s = _sender(ob, w, batch=10, concurrency=2)
    assert await s.drain_once() == 0
    # The younger batch reached the database, but nothing is acknowledged out of order:
    assert len(w.stored) == 10 and ob.pending_count == 20
    assert await s.drain_once() == 20  # the retry sends both; the database keeps one copy
    assert len(w.stored) == 20 and ob.pending_count == 0


def test_backoff_grows_with_full_jitter_and_honours_retry_after() -> None:
    b = Backoff(0.5, 8.0, rng=random.Random(3))
    delays = [b.next_delay() for _ in range(8)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[4:]) > max(delays[:2])
    assert b.next_delay(hint_s=20.0) == 20.0
    b.reset()
    assert b.next_delay() <= 0.5 + 1e-9


def test_export_lp_and_csv(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    ob.append([(5000, encode("a", {"x": "1"}, {"v": 1.5}, 5000))])
    ob.append([(6000, encode("b", {"y": "2"}, {"w": True, "n": 3}, 6000))])
    ob.close()
    out = io.StringIO()
    assert export(tmp_path / "o.sqlite", out, fmt="lp", since_ms=0) == 2
    assert out.getvalue().splitlines()[0] == "a,x=1 v=1.5 5000"
    out = io.StringIO()
    assert export(tmp_path / "o.sqlite", out, fmt="csv", since_ms=5500) == 1
    assert out.getvalue().splitlines() == [
        "time,measurement,y,n,w",
        "1970-01-01T00:00:06.000Z,b,2,3,true",
    ]
    out = io.StringIO()
    assert export(tmp_path / "o.sqlite", out, fmt="csv", since_ms=0, measurements=["a"]) == 1
    with pytest.raises(ExportError, match="format"):
        export(tmp_path / "o.sqlite", io.StringIO(), fmt="json", since_ms=0)


def test_parse_when() -> None:
    import datetime as dt

    now = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    tz = dt.timezone(dt.timedelta(hours=7))
    assert parse_when("2h", now=now, tz=tz) == int(now.timestamp() * 1000) - 7_200_000
    assert parse_when("now", now=now, tz=tz) == int(now.timestamp() * 1000)
    local = parse_when("2026-12-03T19:00", now=now, tz=tz)
    assert local == int(now.timestamp() * 1000)
    with pytest.raises(ExportError, match="neither"):
        parse_when("yesterday", now=now, tz=tz)
