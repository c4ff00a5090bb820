"""A broken config.yaml reloaded into a running `cityctl run` (SIGHUP, as `systemctl reload`).

The real command runs as its own process against a real Mosquitto with five simulated nodes.
Someone saves a broken config.yaml and sends SIGHUP: the controller refuses it, logging every
problem with its field at ERROR, and keeps running the old config (the nodes stay where they
were, the API's health counts one refused reload). Then the file is fixed and SIGHUP sent
again: the new schedule runs at once as a new version by config.yaml, and the nodes follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from devices.lights import NodeState, Topics, decode
from devices.mqtt import MqttLink, MqttSettings
from simulator.lights import LightSimulator, NodeSpec
from tests.faults import report
from tests.helpers import Mosquitto, free_port, wait_for
from tests.integration.test_cli_processes import evening_zone

CITYCTL = [sys.executable, "-m", "controller.cli"]
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "viewer-token-of-the-reload-test"
NODES = [f"N-{i}" for i in range(1, 6)]


def config(prefix: str, mqtt_url: str, api_port: int, level: float, zone: str) -> dict[str, Any]:
    """One group of five nodes at ``level`` from a minute ago for a few hours."""
    local = dt.datetime.now(ZoneInfo(zone))
    on_at = (local - dt.timedelta(minutes=1)).strftime("%H:%M:%S")
    off_at = (local + dt.timedelta(hours=3)).strftime("%H:%M:%S")
    return {
        "site": {"name": "Test", "latitude": 20.54, "longitude": 105.91, "timezone": zone},
        "controller": {"id": "ctl-reload", "log_level": "INFO"},
        "mqtt": {"url": mqtt_url, "prefix": prefix},
        "lighting": {
            "tick_s": 3600,
            "refresh_s": 300,
            "programs": [
                {
                    "name": "evening",
                    "steps": [{"at": on_at, "level": level}, {"at": off_at, "level": 0}],
                }
            ],
            "groups": [
                {
                    "id": "g",
                    "road": "test road",
                    "lighting_class": "M4",
                    "program": "evening",
                    "lamp_w": 100,
                    "nodes": ["N-1..N-5"],
                }
            ],
        },
        "api": {
            "port": api_port,
            "tokens": [{"name": "ops", "role": "viewer", "token_env": "CITYCTL_RELOAD_TOKEN"}],
        },
    }


@pytest.fixture
async def seen(mosquitto: Mosquitto, mqtt_prefix: str) -> AsyncIterator[dict[str, bytes]]:
    """The last message on every topic under the prefix, as an independent client sees it."""
    out: dict[str, bytes] = {}
    link = MqttLink(MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id="obs"))
    link.subscribe(f"{mqtt_prefix}/#", lambda t, p, r: out.__setitem__(t, p))
    task = asyncio.create_task(link.run())
    assert await link.wait_connected(10)
    yield out
    await link.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.faults
async def test_sighup_refuses_a_broken_config_and_applies_a_fixed_one(
    mosquitto: Mosquitto, mqtt_prefix: str, seen: dict[str, bytes], tmp_path: Path
) -> None:
    topics = Topics(mqtt_prefix)
    zone = evening_zone(dt.datetime.now(dt.UTC))
    port = free_port()
    good = config(mqtt_prefix, mosquitto.url, port, 70, zone)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(good))
    sim = LightSimulator(mosquitto.url, [NodeSpec(n, "g", 100) for n in NODES], prefix=mqtt_prefix)
    await sim.start()
    log_path = tmp_path / "cityctl.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    proc = await asyncio.create_subprocess_exec(
        *CITYCTL,
        "run",
        "--config",
        str(path),
        stdout=log_file,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CITYCTL_RELOAD_TOKEN": TOKEN},
        cwd=tmp_path,
    )

    def levels() -> list[float]:
        out = []
        for n in NODES:
            raw = seen.get(topics.node_state(n))
            out.append(decode(NodeState, raw).level if raw else -1.0)
        return out

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    api = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    try:
        await wait_for(lambda: levels() == [70.0] * 5, 20, what="nodes at 70 % from the start")

        async def api_up() -> bool:
            try:
                return (await api.get("/api/v1/health")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(api_up, 15, interval=0.1, what="the API")
        v1 = (await api.get("/api/v1/schedules")).json()["version"]

        # 1. A broken file: a level out of range and a misspelt key. SIGHUP: refused.
        broken = config(mqtt_prefix, mosquitto.url, port, 150, zone)
        broken["lighting"]["groups"][0]["lamp_W"] = broken["lighting"]["groups"][0].pop("lamp_w")
        path.write_text(yaml.safe_dump(broken))
        proc.send_signal(signal.SIGHUP)
        await wait_for(
            lambda: "the running config is unchanged" in log_text(), 15, what="the refusal"
        )
        errors = [
            ln.split("config reload refused: ", 1)[1]
            for ln in log_text().splitlines()
            if " ERROR " in ln and "config reload refused: " in ln
        ]
        assert any(e.startswith("lighting.programs[0].steps[0].level") for e in errors), errors
        assert any(
            e.startswith("lighting.groups[0].lamp_W") and "unknown field" in e for e in errors
        )
        assert any(e.startswith("lighting.groups[0].lamp_w") and "missing" in e for e in errors)
        await asyncio.sleep(1.0)  # whatever a wrongly applied file would do, it would do now
        assert proc.returncode is None, "the controller died on a broken config"
        assert levels() == [70.0] * 5
        health = (await api.get("/api/v1/health")).json()["config_reload"]
        assert (health["applied"], health["refused"]) == (0, 1)
        assert (await api.get("/api/v1/schedules")).json()["version"] == v1

        # 2. The file fixed (a new level). SIGHUP: applied live, as a new schedule version.
        path.write_text(yaml.safe_dump(config(mqtt_prefix, mosquitto.url, port, 40, zone)))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: levels() == [40.0] * 5, 15, what="nodes at the reloaded 40 %")
        took = time.monotonic() - t0
        versions = (await api.get("/api/v1/schedules/versions")).json()
        newest = versions[0]
        assert newest["version"] == v1 + 1
        assert (newest["author"], newest["source"]) == ("config.yaml", "config")
        health = (await api.get("/api/v1/health")).json()["config_reload"]
        assert (health["applied"], health["refused"]) == (1, 1)
        assert health["last"]["result"] == "applied"
        assert re.search(r"INFO +cityctl: config reloaded from config\.yaml", log_text())

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    except BaseException:
        print(log_text()[-4000:])
        raise
    finally:
        await api.aclose()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log_file.close()
        await sim.stop()
    first = errors[0]
    report(
        "bad config.yaml reload",
        recovery_s=None,
        lost=0,
        detail=(
            f"refused: {first} (+{len(errors) - 1} more); old config kept (nodes at 70 %,"
            f" schedule version {v1}); good reload applied as version {v1 + 1},"
            f" nodes at 40 % {took:.2f} s after SIGHUP"
        ),
    )
