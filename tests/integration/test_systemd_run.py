"""`cityctl run` under systemd's notify protocol: READY once running, watchdog pings while
healthy, STOPPING on SIGTERM — against a fake notify socket and a real Mosquitto."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import yaml

from tests.helpers import Mosquitto

ROOT = Path(__file__).resolve().parents[2]


async def test_cityctl_run_speaks_the_notify_protocol(
    mosquitto: Mosquitto, mqtt_prefix: str, tmp_path: Path
) -> None:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["mqtt"].update(url=mosquitto.url, prefix=mqtt_prefix)
    data.pop("signals", None)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data, allow_unicode=True))
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.setblocking(False)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NOTIFY_SOCKET": sock_path,
        "WATCHDOG_USEC": "1000000",  # a ping every 0.5 s
    }
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.cli",
        "run",
        "--config",
        str(cfg),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    got: list[tuple[float, str]] = []

    async def collect(until: float) -> None:
        while time.monotonic() < until:
            try:
                msg = sock.recv(4096).decode()
                got.append((time.monotonic() - t0, msg))
            except BlockingIOError:
                await asyncio.sleep(0.02)

    try:
        await collect(time.monotonic() + 6.0)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await collect(time.monotonic() + 0.3)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()
    ready = [t for t, m in got if m.startswith("READY=1")]
    pings = [t for t, m in got if m == "WATCHDOG=1"]
    print(
        f"\nnotify: READY after {ready[0]:.2f} s, {len(pings)} watchdog pings in 6 s, then STOPPING"
    )
    assert len(ready) == 1
    assert len(pings) >= 4 and all(t > ready[0] for t in pings)
    assert got[-1][1] == "STOPPING=1"
