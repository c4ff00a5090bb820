"""Telemetry store-and-forward against a real VictoriaMetrics: database outages, a controller
killed with SIGKILL in the middle of sending, and a full outbox.

Each test compares *every* point kept in the controller's outbox file (acknowledged points are
kept there for ``keep_sent_h``) with every sample in the database, and prints one line of what
it measured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.bench.telemetry import make_points
from controller.bench.victoria import VictoriaMetrics
from controller.clock import SystemClock
from controller.config import CityConfig, parse_config
from controller.runtime import Controller
from controller.telemetry.outbox import Outbox
from controller.telemetry.sender import Backoff, Sender
from devices.influx import InfluxSettings, InfluxWriter
from devices.lights import Topics
from devices.mqtt import MqttLink, MqttSettings
from simulator.lights import LightSimulator, NodeSpec
from tests.faults import report
from tests.helpers import Mosquitto, compare_outbox_with_db, wait_for

ROOT = Path(__file__).resolve().parents[2]
CITYCTL = [sys.executable, "-m", "controller.cli"]


def config(prefix: str, mqtt_url: str, db_url: str, **outbox: Any) -> dict[str, Any]:
    """The shipped district, its telemetry sent to ``db_url`` quickly and often."""
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["mqtt"]["prefix"] = prefix
    data["mqtt"]["url"] = mqtt_url
    data["lighting"]["overrides"] = []
    data.pop("signals", None)
    data["telemetry"] = {
        "influx": {
            "url": db_url,
            "bucket": "cityctl",
            "org": "city",
            "batch_points": 500,
            "retry_min_s": 0.1,
            "retry_max_s": 0.5,
            "timeout_s": 2,
        },
        "outbox": {"keep_sent_h": 240, **outbox},
        "intervals": {"group_s": 1, "detector_s": 1, "health_s": 1},
    }
    return data


def parsed(data: dict[str, Any]) -> CityConfig:
    cfg, _ = parse_config(yaml.safe_dump(data, allow_unicode=True))
    return cfg


async def drain_rest(path: Path, url: str) -> int:
    """What a restarted controller does first: send the outbox's backlog."""
    ob = Outbox(path, keep_sent_ms=240 * 3_600_000)
    writer = InfluxWriter(InfluxSettings(url=url, bucket="cityctl"))
    try:
        return await Sender(ob, writer, backoff=Backoff(0.1, 0.5)).drain_once()
    finally:
        writer.close()
        ob.close()


def _count(path: Path, sent: int) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM points WHERE sent = ?", (sent,)).fetchone()[0])
    finally:
        db.close()


def pending(path: Path) -> int:
    """Points in the outbox file not yet acknowledged by the database."""
    return _count(path, 0)


def sent(path: Path) -> int:
    """Points acknowledged and kept (keep_sent_h)."""
    return _count(path, 1)


@pytest.mark.faults
async def test_database_outage_loses_nothing_and_duplicates_nothing(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, mqtt_prefix: str, _state_dir: Path
) -> None:
    cfg = parsed(config(mqtt_prefix, mosquitto.url, victoria.url))
    specs = [NodeSpec(n, g.id, w, m) for g, n, w, m in cfg.nodes()]
    sim = LightSimulator(mosquitto.url, specs, prefix=mqtt_prefix, report_interval_s=1.0)
    await sim.start(wait_s=30)
    ctl = Controller(cfg, clock=SystemClock(), signals=False)
    await ctl.start()
    tel = ctl.telemetry
    assert tel is not None and tel.sender is not None
    path = tel.path
    try:
        await wait_for(lambda: tel.outbox.state().sent > 500, 20, what="points reach the database")
        victoria.stop()
        down_at = time.monotonic()
        recorded_before = tel.recorder.stats.recorded
        await asyncio.sleep(5.0)
        assert tel.sender.stats.db_up is False
        backlog = tel.outbox.pending_count
        recorded_during = tel.recorder.stats.recorded - recorded_before
        victoria.start()
        back_at = time.monotonic()
        outage = back_at - down_at
        await wait_for(lambda: tel.outbox.pending_count < 500, 30, what="the backlog drained")
        drained_s = time.monotonic() - back_at
        assert tel.sender.stats.db_up is True
    finally:
        await ctl.stop()
        await sim.stop()
    await drain_rest(path, victoria.url)  # what was recorded while stopping
    r = compare_outbox_with_db(path, victoria)
    print(
        f"\nDB outage {outage:.1f} s: {recorded_during} points recorded meanwhile, backlog"
        f" {backlog}, {tel.sender.stats.failures} failed requests; {r.summary()}"
    )
    report(
        "time-series DB down",
        # From the database back to the backlog sent (below one batch: points keep coming).
        recovery_s=drained_s,
        lost=len(r.missing),
        detail=f"outage {outage:.1f} s, backlog {backlog} points, drained in {drained_s:.2f} s;"
        f" {r.summary()}",
    )
    assert recorded_during > 500 and backlog > 500
    assert r.exact, r
    assert r.points > 1000


@pytest.mark.faults
async def test_sigkill_in_the_middle_of_sending_then_restart(
    mosquitto: Mosquitto,
    victoria: VictoriaMetrics,
    mqtt_prefix: str,
    _state_dir: Path,
    tmp_path: Path,
) -> None:
    data = config(mqtt_prefix, mosquitto.url, victoria.url)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(data, allow_unicode=True))
    outbox = _state_dir / "telemetry.sqlite"
    # A backlog as after a long outage: 100,000 points waiting when the controller starts.
    ob = Outbox(outbox, keep_sent_ms=240 * 3_600_000)
    backlog, _ = make_points(100_000, "backlog", int(time.time() * 1000) - 3_600_000)
    for k in range(0, len(backlog), 1000):
        ob.append(backlog[k : k + 1000])
    ob.close()
    cfg = parsed(data)
    specs = [NodeSpec(n, g.id, w, m) for g, n, w, m in cfg.nodes()]
    sim = LightSimulator(mosquitto.url, specs, prefix=mqtt_prefix, report_interval_s=1.0)
    await sim.start(wait_s=30)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "controller.log", "ab")  # noqa: SIM115 - both runs append to it

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *CITYCTL,
            "run",
            "--config",
            str(cfg_path),
            env=env,
            cwd=tmp_path,
            stdout=log,  # printed if the test fails
            stderr=asyncio.subprocess.STDOUT,
        )

    proc = await start()
    try:
        # Kill it while the backlog is going out: some batches acknowledged, most pending.
        await wait_for(lambda: sent(outbox) >= 2000, 30, interval=0.005, what="sending")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        sent_at_kill = sent(outbox)
        left_at_kill = pending(outbox)
        assert left_at_kill > 0, "the whole backlog went out before the kill; nothing tested"
        restart_at = time.monotonic()
        proc = await start()
        await wait_for(lambda: pending(outbox) < 1000, 60, what="backlog sent after restart")
        drained_s = time.monotonic() - restart_at
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    except BaseException:
        print((tmp_path / "controller.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
        await sim.stop()
    await drain_rest(outbox, victoria.url)
    r = compare_outbox_with_db(outbox, victoria)
    print(
        f"\nSIGKILL while sending: {sent_at_kill} points acknowledged at the kill,"
        f" {left_at_kill} still pending; after restart: {r.summary()}"
    )
    report(
        "controller SIGKILL while sending telemetry",
        # From the restart to the backlog sent (below one batch: points keep coming).
        recovery_s=drained_s,
        lost=len(r.missing),
        detail=f"{sent_at_kill} points acknowledged at the kill, {left_at_kill} pending, sent"
        f" {drained_s:.2f} s after the restart; {r.summary()}",
    )
    assert r.exact, r
    assert r.points > 100_000


async def test_full_outbox_drops_oldest_first_counts_and_reports(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, mqtt_prefix: str, _state_dir: Path
) -> None:
    victoria.stop()  # the database is away the whole time the outbox fills
    cfg = parsed(config(mqtt_prefix, mosquitto.url, victoria.url, max_mb=0.1))
    specs = [NodeSpec(n, g.id, w, m) for g, n, w, m in cfg.nodes()]
    sim = LightSimulator(mosquitto.url, specs, prefix=mqtt_prefix, report_interval_s=0.5)
    seen: dict[str, bytes] = {}
    obs = MqttLink(
        MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id=f"o-{mqtt_prefix}")
    )
    obs.subscribe(f"{mqtt_prefix}/#", lambda t, p, r: seen.__setitem__(t, p))
    obs_task = asyncio.create_task(obs.run())
    await sim.start(wait_s=30)
    ctl = Controller(cfg, clock=SystemClock(), signals=False)
    await ctl.start()
    tel = ctl.telemetry
    assert tel is not None
    topic = Topics(mqtt_prefix).controller_telemetry(cfg.controller.id)
    try:
        await wait_for(lambda: tel.outbox.state().dropped_full > 0, 30, what="the outbox full")
        await wait_for(lambda: b"outbox_full" in seen.get(topic, b""), 10, what="the alarm")
        st = tel.outbox.state()
        assert st.bytes <= st.max_bytes
        assert "outbox_full" in tel.alarms
        # What is left is the newest: one unbroken run of ids up to the last appended row.
        db = sqlite3.connect(f"file:{tel.path}?mode=ro", uri=True)
        ids = [i for (i,) in db.execute("SELECT id FROM points ORDER BY id")]
        db.close()
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert ids[-1] >= st.appended - 50  # allow rows appended since the snapshot
        assert ids[0] > st.dropped_full - 50
        victoria.start()
        await wait_for(lambda: tel.outbox.pending_count < 300, 30, what="the rest delivered")
        await asyncio.sleep(1.5)  # a telemetry_outbox point with the counter goes out too
    finally:
        await ctl.stop()
        await sim.stop()
        await obs.close()
        obs_task.cancel()
    await drain_rest(tel.path, victoria.url)
    r = compare_outbox_with_db(tel.path, victoria)
    final = Outbox(tel.path, keep_sent_ms=240 * 3_600_000).state()
    reported = [
        v
        for s in victoria.series('{__name__="telemetry_outbox_dropped_full"}')
        for v in s["values"]
    ]
    print(
        f"\nfull outbox ({st.max_bytes} bytes): {final.dropped_full} oldest unsent points dropped"
        f" of {final.appended}; alarm published; the database got the rest: {r.summary()}"
    )
    # The tiny outbox also forgot rows it had sent (to make room): the database holds those
    # too ("extra" here). Every row the outbox still has must be there, once, with its values.
    assert not (r.missing or r.duplicated or r.wrong_values), r
    assert max(reported) > 0  # the counter reached the database as well
    # Every point recorded is accounted for: delivered or counted as dropped.
    assert final.appended == final.sent + final.dropped_full + final.pending
    assert final.pending == 0
