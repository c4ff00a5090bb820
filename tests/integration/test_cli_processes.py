"""The real commands as separate processes: `cityctl run` on the machine's clock, `cityctl sim`.

`cityctl run` is started with a long tick (1 h), so the only thing that can switch the lights on
a few seconds later is the APScheduler wake-up at the program's transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from devices.lights import NodeState, Topics, decode
from devices.mqtt import MqttLink, MqttSettings
from simulator.lights import LightSimulator, NodeSpec
from tests.helpers import Mosquitto, wait_for

CITYCTL = [sys.executable, "-m", "controller.cli"]
ROOT = Path(__file__).resolve().parents[2]


def evening_zone(now: dt.datetime) -> str:
    """A fixed-offset zone in which it is now between 15:00 and 20:59, far from noon and midnight."""
    for k in range(-12, 15):
        if 15 <= (now.hour + k) % 24 <= 20:
            # Etc/GMT zones have inverted signs: Etc/GMT-7 is UTC+7.
            return f"Etc/GMT{-k:+d}" if k else "Etc/GMT"
    raise AssertionError("unreachable")


@pytest.fixture
async def observer(
    mosquitto: Mosquitto, mqtt_prefix: str
) -> AsyncIterator[tuple[MqttLink, dict[str, bytes]]]:
    seen: dict[str, bytes] = {}
    link = MqttLink(
        MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id=f"obs-{mqtt_prefix}")
    )
    link.subscribe(f"{mqtt_prefix}/#", lambda t, p, r: seen.__setitem__(t, p))
    task = asyncio.create_task(link.run())
    assert await link.wait_connected(10)
    yield link, seen
    await link.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_cityctl_run_wakes_at_the_transition_and_says_goodbye(
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    observer: tuple[MqttLink, dict[str, bytes]],
    tmp_path: Path,
) -> None:
    _, seen = observer
    now_utc = dt.datetime.now(dt.UTC)
    zone = evening_zone(now_utc)
    local = now_utc.astimezone(ZoneInfo(zone))
    on_at = (local + dt.timedelta(seconds=6)).replace(microsecond=0)
    off_at = on_at + dt.timedelta(hours=1)
    cfg = {
        "site": {"name": "Test", "latitude": 20.54, "longitude": 105.91, "timezone": zone},
        "controller": {"id": "ctl-test"},
        "mqtt": {"url": mosquitto.url, "prefix": mqtt_prefix},
        "lighting": {
            "tick_s": 3600,
            "refresh_s": 300,
            "programs": [
                {
                    "name": "p",
                    "steps": [
                        {"at": on_at.strftime("%H:%M:%S"), "level": 70},
                        {"at": off_at.strftime("%H:%M:%S"), "level": 0},
                    ],
                }
            ],
            "groups": [
                {
                    "id": "g",
                    "road": "test road",
                    "lighting_class": "M4",
                    "program": "p",
                    "lamp_w": 100,
                    "nodes": ["N-1..N-5"],
                }
            ],
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sim = LightSimulator(
        mosquitto.url, [NodeSpec(f"N-{i}", "g", 100) for i in range(1, 6)], prefix=mqtt_prefix
    )
    await sim.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        *CITYCTL,
        "run",
        "--config",
        str(path),
        "--log-level",
        "INFO",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    topics = Topics(mqtt_prefix)
    try:
        await wait_for(
            lambda: seen.get(topics.controller_availability("ctl-test")) == b"online", 15
        )

        def levels() -> list[float]:
            out = []
            for i in range(1, 6):
                raw = seen.get(topics.node_state(f"N-{i}"))
                out.append(decode(NodeState, raw).level if raw else -1)
            return out

        await wait_for(lambda: levels() == [0.0] * 5, 10, what="nodes off before the transition")
        remaining = (on_at - dt.datetime.now(dt.UTC)).total_seconds()
        assert remaining > 0.5, "the transition passed before the controller was up; rerun"
        await wait_for(
            lambda: levels() == [70.0] * 5, remaining + 3, what="nodes on after the transition"
        )
        late = (dt.datetime.now(dt.UTC) - on_at).total_seconds()
        assert late < 3.0, f"nodes reached 70 % {late:.2f} s after the transition"
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 15)
        assert rc == 0
        await wait_for(
            lambda: seen.get(topics.controller_availability("ctl-test")) == b"offline", 5
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sim.stop()
    assert proc.stdout is not None
    out = (await proc.stdout.read()).decode()
    assert "group g" in out and "70.0 %" in out, out


async def test_cityctl_sim_lights_and_fault(
    mosquitto: Mosquitto, mqtt_prefix: str, observer: tuple[MqttLink, dict[str, bytes]]
) -> None:
    _, seen = observer
    topics = Topics(mqtt_prefix)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        *CITYCTL,
        "sim",
        "lights",
        "--count",
        "5",
        "--broker",
        mosquitto.url,
        "--prefix",
        mqtt_prefix,
        "--fault",
        "SIM-0002=lamp_failure",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        await wait_for(
            lambda: all(
                seen.get(topics.node_availability(f"SIM-{i:04d}")) == b"online" for i in range(1, 6)
            ),
            15,
        )
        fault = await asyncio.create_subprocess_exec(
            *CITYCTL,
            "sim",
            "fault",
            "--broker",
            mosquitto.url,
            "--prefix",
            mqtt_prefix,
            "--node",
            "SIM-0004",
            "--fault",
            "node_offline",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert await asyncio.wait_for(fault.wait(), 15) == 0
        await wait_for(lambda: seen.get(topics.node_availability("SIM-0004")) == b"offline", 10)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 15)
    assert rc == 0


async def test_cityctl_run_drives_simulated_cabinets_over_modbus(
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    observer: tuple[MqttLink, dict[str, bytes]],
    tmp_path: Path,
) -> None:
    """Three processes: `cityctl sim cabinets` (Modbus TCP + cameras on MQTT), `cityctl run`
    pointed at them with --cabinet, and this test reading the retained status topics."""
    import json
    import socket

    _, seen = observer
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["mqtt"] = {"url": mosquitto.url, "prefix": mqtt_prefix}
    path = tmp_path / "city.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    xids = [x["id"] for x in cfg["signals"]["intersections"]]
    # two consecutive free ports for the cabinets
    base = 0
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            cand = s.getsockname()[1]
        if cand + len(xids) < 65535:
            ok = True
            for k in range(len(xids)):
                with socket.socket() as s2:
                    try:
                        s2.bind(("127.0.0.1", cand + k))
                    except OSError:
                        ok = False
            if ok:
                base = cand
                break
    assert base
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sim = await asyncio.create_subprocess_exec(
        *CITYCTL,
        "sim",
        "cabinets",
        "--config",
        str(path),
        "--port-base",
        str(base),
        "--broker",
        mosquitto.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    flags = [a for k, xid in enumerate(xids) for a in ("--cabinet", f"{xid}=127.0.0.1:{base + k}")]
    run = await asyncio.create_subprocess_exec(
        *CITYCTL,
        "run",
        "--config",
        str(path),
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    topics = Topics(mqtt_prefix)

    def status(xid: str) -> dict[str, object]:
        raw = seen.get(f"{topics.root}/signals/{xid}/status")
        return json.loads(raw) if raw else {}

    try:
        assert await wait_for(lambda: all(status(x).get("sync") == "control" for x in xids), 30), {
            x: status(x).get("sync") for x in xids
        }
        # cameras publish on the broker and the controller counts their messages
        assert await wait_for(
            lambda: any("/camera/" in t for t in seen), 20, what="a camera message"
        )

        def cameras_fed() -> bool:
            st = status(xids[0]).get("stats")
            return isinstance(st, dict) and int(st.get("camera_messages", 0)) > 0

        assert await wait_for(cameras_fed, 20)
        st = status(xids[0])
        print(
            f"{xids[0]}: sync {st['sync']}, cabinet {st['cabinet']}, stage {st['stage']}, "
            f"strategy {st['strategy']}, alarms {st['alarms']}"
        )
        assert st["cabinet"] == {"up": True, "mode": "FOLLOWING", "fault": None}
        control = st["control"]
        assert isinstance(control, dict) and control["violations"] == 0
    finally:
        run.send_signal(signal.SIGINT)
        rc_run = await asyncio.wait_for(run.wait(), 20)
        sim.send_signal(signal.SIGINT)
        rc_sim = await asyncio.wait_for(sim.wait(), 20)
        if rc_run or rc_sim:
            for proc in (run, sim):
                assert proc.stdout is not None
                print((await proc.stdout.read()).decode()[-3000:])
    assert rc_run == 0 and rc_sim == 0
