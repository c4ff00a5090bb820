"""Controller + 200 simulated nodes over a real Mosquitto: convergence, restarts, faults, floods.

The controller runs on a manual clock (we decide when a transition happens); the simulated
nodes share its wall clock so command ages are consistent, and ramp on real time. What the
nodes do is observed by an independent MQTT client, not through the controller's own view.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from controller.clock import ManualClock
from controller.config import CityConfig, parse_config
from controller.runtime import Controller
from devices.lights import LightingStatus, NodeAlarms, NodeState, Topics, decode
from devices.mqtt import MqttLink, MqttSettings
from schedules.evaluate import level_at, transitions
from simulator.lights import LightSimulator, NodeSpec
from tests.helpers import Mosquitto, wait_for

ROOT = Path(__file__).resolve().parents[2]


def district(prefix: str, *, ramps: bool = False) -> CityConfig:
    """The shipped district (200 nodes) under a test prefix; ramps off so levels are exact."""
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["mqtt"]["prefix"] = prefix
    data["lighting"]["overrides"] = []
    if not ramps:
        for p in data["lighting"]["programs"]:
            for s in p["steps"]:
                s["ramp_s"] = 0
    cfg, _ = parse_config(yaml.safe_dump(data, allow_unicode=True))
    return cfg


@dataclass
class SharedWall:
    """Simulator clock: the controller's wall clock, real monotonic time for ramps."""

    clock: ManualClock

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> dt.datetime:
        return self.clock.now()


@dataclass
class Observer:
    """An independent client that records every node's retained state and alarms."""

    link: MqttLink
    topics: Topics
    states: dict[str, NodeState] = field(default_factory=dict)
    availability: dict[str, str] = field(default_factory=dict)
    alarms: dict[str, set[str]] = field(default_factory=dict)
    retained: dict[str, bytes] = field(default_factory=dict)

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = self.topics.node_from(topic)
        self.retained[topic] = payload
        if parsed is None:
            return
        node, leaf = parsed
        if leaf == "state" and payload:
            with contextlib.suppress(ValueError):
                self.states[node] = decode(NodeState, payload)
        elif leaf == "availability":
            self.availability[node] = payload.decode()
        elif leaf == "alarms" and payload:
            self.alarms[node] = {a.kind for a in decode(NodeAlarms, payload).alarms}

    def levels(self, nodes: list[str]) -> dict[float, int]:
        out: dict[float, int] = {}
        for n in nodes:
            st = self.states.get(n)
            key = round(st.level, 1) if st else -1.0
            out[key] = out.get(key, 0) + 1
        return out


@dataclass
class Rig:
    cfg: CityConfig
    clock: ManualClock
    sim: LightSimulator
    controller: Controller
    observer: Observer
    broker: Mosquitto

    @property
    def nodes(self) -> list[str]:
        return [n for _, n, _, _ in self.cfg.nodes()]

    def wanted(self) -> dict[str, float]:
        now = self.clock.now()
        out = {}
        for g, n, _, _ in self.cfg.nodes():
            out[n] = level_at(self.cfg.group_schedule(g.id, overrides=()), now)
        return out

    def mismatched(self) -> list[str]:
        want = self.wanted()
        return [
            n
            for n in self.nodes
            if n not in self.observer.states or abs(self.observer.states[n].level - want[n]) > 0.5
        ]

    async def converge(self, timeout: float) -> float:
        t0 = time.monotonic()
        await wait_for(
            lambda: not self.mismatched(), timeout, what="every node at the wanted level"
        )
        return time.monotonic() - t0

    async def tick(self, seconds: float) -> None:
        """Move the shared clock and let the controller recompute."""
        self.clock.advance(seconds)
        await self.controller.lighting.step()


LOCAL = dt.timezone(dt.timedelta(hours=7))


@pytest.fixture
async def rig(mosquitto: Mosquitto, mqtt_prefix: str) -> AsyncIterator[Rig]:
    cfg = district(mqtt_prefix)
    clock = ManualClock(dt.datetime(2026, 11, 25, 16, 30, tzinfo=LOCAL))
    settings = MqttSettings(
        host=mosquitto.host, port=mosquitto.port, reconnect_min_s=0.1, reconnect_max_s=0.5
    )
    specs = [NodeSpec(n, g.id, w, m) for g, n, w, m in cfg.nodes()]
    sim = LightSimulator(
        settings,
        specs,
        prefix=mqtt_prefix,
        fallback_after_s=cfg.lighting.fallback_after_s,
        report_interval_s=30.0,
        clock=SharedWall(clock),
    )
    topics = Topics(mqtt_prefix)
    obs_link = MqttLink(
        MqttSettings(
            host=mosquitto.host,
            port=mosquitto.port,
            client_id=f"obs-{mqtt_prefix}",
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
        )
    )
    observer = Observer(obs_link, topics)
    obs_link.subscribe(f"{topics.root}/#", observer.on_message)
    obs_task = asyncio.create_task(obs_link.run())
    controller = Controller(cfg, clock=clock, mqtt=settings, signals=False)
    await sim.start(wait_s=30)
    await controller.start()
    assert await obs_link.wait_connected(10)
    assert await controller.link.wait_connected(10)
    rig = Rig(cfg, clock, sim, controller, observer, mosquitto)
    try:
        yield rig
    finally:
        await controller.stop()
        await sim.stop()
        await obs_link.close()
        obs_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await obs_task


async def test_200_nodes_converge_within_2s_of_a_transition(rig: Rig) -> None:
    assert len(rig.nodes) == 200
    await rig.converge(10)  # daytime: all off
    assert set(rig.observer.levels(rig.nodes)) == {0.0}
    # jump to just before the first transition of the night, then across it
    gs = rig.cfg.group_schedule("ql1a", overrides=())
    first = transitions(gs, dt.date(2026, 11, 25))[0]
    rig.clock.set(first.at - dt.timedelta(seconds=1))
    await rig.controller.lighting.step()
    await rig.tick(2)
    took = await rig.converge(2.0)
    assert rig.observer.states["QL-001"].level == 100.0
    print(f"200 nodes converged {took:.3f} s after the transition")
    # 23:00: the arterials dim to 80 %, the park to 30 %, the junction stays at 100 %
    rig.clock.set(dt.datetime(2026, 11, 25, 23, 0, 1, tzinfo=LOCAL))
    await rig.controller.lighting.step()
    took = await rig.converge(2.0)
    lv = {n: s.level for n, s in rig.observer.states.items()}
    assert (lv["QL-010"], lv["NC-003"], lv["JX-002"]) == (80.0, 30.0, 100.0)
    # the controller's retained status says every node follows, and counts energy
    await rig.tick(61)
    status_topic = rig.observer.topics.controller_lighting(rig.cfg.controller.id)

    def status() -> LightingStatus | None:
        raw = rig.observer.retained.get(status_topic)
        st = decode(LightingStatus, raw) if raw else None
        return st if st and st.ts == rig.clock.now() else None

    st = await wait_for(status, 5, what="a fresh lighting status")
    assert all(g.nodes_following == g.nodes_total for g in st.groups), st
    assert {g.group: g.level for g in st.groups}["ql1a"] == 80.0
    # every node has acknowledged its group's command id in its state
    for g in rig.cfg.lighting.groups:
        cmd = rig.controller.lighting.core._groups[g.id].cmd
        assert cmd is not None
        for n in g.node_ids():
            assert rig.observer.states[n].cmd_id == cmd.cmd_id


async def test_broker_restart_leaves_nothing_stale(rig: Rig) -> None:
    rig.clock.set(dt.datetime(2026, 11, 25, 22, 50, tzinfo=LOCAL))
    await rig.controller.lighting.step()
    await rig.converge(5)
    assert rig.observer.states["QL-005"].level == 100.0
    rig.broker.stop()
    await wait_for(
        lambda: not rig.controller.link.connected, 10, what="controller notices the broker is gone"
    )
    # while the broker is down, the schedule moves on (23:00 → 80 %, 00:30 → 60 %)
    await rig.tick(45 * 60)  # 23:35
    assert rig.controller.lighting._announce  # remembered to re-send on reconnect
    rig.observer.states.clear()
    rig.observer.retained.clear()
    rig.broker.start()  # same port, empty broker: no retained messages survive
    await wait_for(lambda: rig.controller.link.connected, 15, what="controller reconnects")
    await wait_for(lambda: rig.sim.stats.online == 200, 20, what="all 200 nodes reconnect")
    took = await rig.converge(10)
    assert rig.observer.states["QL-005"].level == 80.0
    # the controller re-announced itself and re-sent retained group commands for *now*
    topics = rig.observer.topics
    await wait_for(
        lambda: (
            rig.observer.retained.get(topics.controller_availability(rig.cfg.controller.id))
            == b"online"
        ),
        5,
    )
    retained_cmd = json.loads(rig.observer.retained[topics.group_set("ql1a")])
    assert retained_cmd["level"] == 80.0
    assert dt.datetime.fromisoformat(retained_cmd["issued"]) >= rig.clock.now() - dt.timedelta(
        seconds=1
    )
    assert topics.group_fallback("ql1a") in rig.observer.retained
    print(f"after the broker restart, 200 nodes converged in {took:.2f} s")


async def test_controller_restart_recomputes_instead_of_replaying(rig: Rig) -> None:
    rig.clock.set(dt.datetime(2026, 11, 25, 22, 55, tzinfo=LOCAL))
    await rig.controller.lighting.step()
    await rig.converge(5)
    await rig.controller.stop()
    await wait_for(
        lambda: (
            rig.observer.retained.get(
                rig.observer.topics.controller_availability(rig.cfg.controller.id)
            )
            == b"offline"
        ),
        5,
    )
    rig.clock.set(dt.datetime(2026, 11, 26, 0, 40, tzinfo=LOCAL))  # two transitions later
    fresh = Controller(rig.cfg, clock=rig.clock, mqtt=rig.controller.link.settings, signals=False)
    rig.controller = fresh
    await fresh.start()
    assert await fresh.link.wait_connected(10)
    await rig.converge(5)
    assert rig.observer.states["QL-020"].level == 60.0


async def test_injected_faults_are_detected_and_reported(rig: Rig) -> None:
    rig.clock.set(dt.datetime(2026, 11, 25, 20, 0, tzinfo=LOCAL))
    await rig.controller.lighting.step()
    await rig.converge(5)
    rig.sim.inject("LCT-007", "lamp_failure")
    rig.sim.inject("THD-021", "driver_failure")
    rig.sim.inject("BH-004", "supply_lost")
    rig.sim.inject("QL-013", "node_offline")
    rig.sim.inject("NC-002", "day_burner")  # lit at 70 % anyway at night; judged in the day
    await wait_for(
        lambda: rig.observer.availability.get("QL-013") == "offline", 5, what="QL-013's last will"
    )

    def seen() -> dict[str, set[str]]:
        return {n: k for n, k in rig.observer.alarms.items() if k}

    async def settle() -> dict[str, set[str]]:
        await asyncio.sleep(0.3)  # let the nodes' new states arrive
        await rig.tick(15)  # past settle_s on the controller's clock
        return seen()

    await wait_for(settle, 10, interval=0.1, what="alarms published")
    await wait_for(
        lambda: {"LCT-007", "THD-021", "BH-004", "QL-013"} <= set(seen()), 10, interval=0.1
    )
    found = seen()
    assert found["LCT-007"] == {"lamp_failure"}
    assert found["THD-021"] == {"driver_failure"}
    assert "supply_lost" in found["BH-004"]
    assert found["QL-013"] == {"node_offline"}
    assert "NC-002" not in found  # lit at night is what it should be
    # daytime: the stuck relay shows as a day burner
    rig.clock.set(dt.datetime(2026, 11, 26, 9, 0, tzinfo=LOCAL))
    await rig.controller.lighting.step()
    await wait_for(settle, 10, interval=0.1)
    await wait_for(lambda: seen().get("NC-002") == {"day_burner"}, 10, interval=0.1)
    # repairs clear the alarms (retained empty list)
    rig.sim.clear("QL-013", "node_offline")
    rig.sim.clear("LCT-007", "lamp_failure")
    rig.sim.clear("NC-002", "day_burner")
    await wait_for(lambda: rig.observer.availability.get("QL-013") == "online", 10)

    async def cleared() -> bool:
        await rig.tick(15)
        await asyncio.sleep(0.2)
        return not ({"QL-013", "LCT-007", "NC-002"} & set(seen()))

    await wait_for(cleared, 10, interval=0.1, what="repaired nodes cleared")


async def test_a_flood_of_malformed_payloads_is_survived(rig: Rig) -> None:
    rig.clock.set(dt.datetime(2026, 11, 25, 21, 0, tzinfo=LOCAL))
    await rig.controller.lighting.step()
    await rig.converge(5)
    topics = rig.observer.topics
    link = rig.observer.link
    bad = [
        b"",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[1,2,3]",
        b"null",
        b'{"v": 2}',
        b'{"v":1,"node":"QL-001","group":"ql1a","ts":"2026-11-25T21:00:00+07:00","level":"high"}',
        b'{"v":1,"node":"QL-001","group":"ql1a","ts":"2026-11-25T21:00:00","level":50}',
        b'{"v":1,"node":"QL-001","group":"ql1a","ts":"2026-11-25T21:00:00+07:00","level":1e308,'
        b'"target":1,"power_w":1,"energy_wh":1,"burn_h":1,"switches":1}',
        b"{" * 5000,
        json.dumps({"v": 1, "x": "y" * 100_000}).encode(),
    ]
    for i in range(1500):
        payload = bad[i % len(bad)]
        node = f"QL-{(i % 48) + 1:03d}" if i % 3 else f"NOPE-{i}"
        target = [
            topics.node_state(node),
            topics.node_availability(node),
            topics.node_ack(node),
            topics.traffic_count("ql1a-centre"),
            topics.group_set("ql1a"),
        ][i % 5]
        if target == topics.group_set("ql1a") and i % 2:
            target = topics.node_set(node)
        await link.publish(target, payload, qos=0)
    await asyncio.sleep(1.0)
    drops = rig.controller.lighting.drops
    assert drops.total >= 500, drops.summary()
    assert rig.controller.link.connected and rig.sim.stats.online == 200
    # the loop still works: the next transition converges
    rig.clock.set(dt.datetime(2026, 11, 25, 23, 0, 1, tzinfo=LOCAL))
    await rig.controller.lighting.step()
    await rig.converge(5)
    assert rig.observer.states["QL-001"].level == 80.0
