"""systemd's notify protocol: READY, the watchdog only while healthy, STOPPING."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.clock import ManualClock
from controller.config import load_config
from controller.runtime import Controller
from controller.systemd import Notifier, watchdog_loop

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    yield path, s
    s.close()


def test_notifier_sends_to_a_path_socket(listener: tuple[str, socket.socket]) -> None:
    path, s = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert n.enabled and n.watchdog_s == 30.0
    assert n.notify("READY=1", "STATUS=running")
    assert s.recv(1024) == b"READY=1\nSTATUS=running"


def test_notifier_abstract_namespace() -> None:
    name = f"cityctl-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2.0)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("WATCHDOG=1")
        assert s.recv(64) == b"WATCHDOG=1"
    finally:
        s.close()


def test_outside_systemd_nothing_happens() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_s is None and not n.notify("READY=1")
    other = Notifier(
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    )
    assert other.watchdog_s is None  # the watchdog is meant for another process
    assert not other.notify("READY=1")  # a dead socket is not an error for the controller


async def test_watchdog_pings_only_while_healthy(listener: tuple[str, socket.socket]) -> None:
    path, s = listener
    s.setblocking(False)
    state: dict[str, str | None] = {"reason": None}
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # pings every 50 ms
    task = asyncio.create_task(watchdog_loop(n, lambda: state["reason"]))

    def drain() -> list[bytes]:
        out = []
        while True:
            try:
                out.append(s.recv(1024))
            except BlockingIOError:
                return out

    await asyncio.sleep(0.3)
    healthy = drain()
    assert healthy.count(b"WATCHDOG=1") >= 3
    state["reason"] = "intersection(s) not stepping: x1"
    await asyncio.sleep(0.06)
    drain()
    await asyncio.sleep(0.3)
    sick = drain()
    assert b"WATCHDOG=1" not in sick  # no pings while unhealthy: systemd restarts us
    state["reason"] = None
    await asyncio.sleep(0.2)
    back = drain()
    assert b"WATCHDOG=1" in back and b"STATUS=running" in back
    task.cancel()


def test_controller_is_unhealthy_when_an_intersection_stops_stepping() -> None:
    cfg = load_config(ROOT / "config.yaml")
    ctl = Controller(cfg, clock=ManualClock(dt.datetime(2026, 11, 25, 20, 0, tzinfo=dt.UTC)))
    assert ctl.signals is not None
    assert ctl.healthy() is None  # first look: nothing to compare yet
    for r in ctl.signals.runners.values():
        r.stats.steps += 3
    assert ctl.healthy() is None  # both stepped
    ctl.signals.runners["ql1a-lct"].stats.steps += 1
    reason = ctl.healthy()
    assert reason is not None and "ql1a-thd" in reason and "ql1a-lct" not in reason
