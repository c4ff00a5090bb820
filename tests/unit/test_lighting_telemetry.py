"""What the lighting loop records: node states, availability, alarms raised and cleared, groups.

The service runs on a manual clock against a stand-in for the MQTT link that routes
published-to-us messages to the handlers the service subscribed (MQTT wildcards), so every
input takes the same path as over a broker; a :class:`MemoryRecorder` keeps the points.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.clock import ManualClock, ScaledClock
from controller.config import CityConfig, load_config
from controller.lighting.service import LightingService
from controller.telemetry.lineproto import Point
from controller.telemetry.recorder import MemoryRecorder
from devices.lights import NodeFault, NodeMode, NodeState, Topics, encode
from schedules.energy import LampPowerModel

ROOT = Path(__file__).resolve().parents[2]
LOCAL = dt.timezone(dt.timedelta(hours=7))
Handler = Callable[[str, bytes, bool], None]


def _matches(pattern: str, topic: str) -> bool:
    """MQTT matching for the ``+`` wildcard (all the service subscribes with)."""
    p, t = pattern.split("/"), topic.split("/")
    return len(p) == len(t) and all(a in ("+", b) for a, b in zip(p, t, strict=True))


@functools.cache
def _cfg() -> CityConfig:
    return load_config(ROOT / "config.yaml")


class Link:
    """Just enough of :class:`devices.mqtt.MqttLink`: subscriptions, publishes, connected."""

    def __init__(self) -> None:
        self.connected = True
        self.handlers: list[tuple[str, Handler]] = []
        self.published: list[tuple[str, bytes]] = []

    def subscribe(self, pattern: str, handler: Handler, qos: int = 1) -> None:
        self.handlers.append((pattern, handler))

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def inbox_empty(self) -> bool:
        return True  # deliver() hands each message over at once

    def deliver(self, topic: str, payload: bytes, retained: bool = False) -> None:
        for pattern, handler in self.handlers:
            if _matches(pattern, topic):
                handler(topic, payload, retained)


class Rig:
    def __init__(self, start: dt.datetime) -> None:
        self.cfg = _cfg()
        self.clock = ManualClock(start)
        self.link = Link()
        self.topics = Topics("t")
        self.rec = MemoryRecorder(now=lambda: self.clock.now().timestamp())
        self.service = LightingService(
            self.cfg,
            self.link,  # type: ignore[arg-type]
            self.clock,
            topics=self.topics,
            telemetry=self.rec,
        )
        self.lamp_w = {n: w for _, n, w, _ in self.cfg.nodes()}
        self.group = {n: g.id for g, n, _, _ in self.cfg.nodes()}

    def state(
        self,
        node: str,
        level: float,
        *,
        ts: dt.datetime | None = None,
        power: float | None = None,
        energy: float = 0.0,
        faults: list[NodeFault] | None = None,
        retained: bool = False,
    ) -> NodeState:
        st = NodeState(
            node=node,
            group=self.group[node],
            ts=ts or self.clock.now(),
            level=level,
            target=level,
            mode=NodeMode.REMOTE,
            power_w=LampPowerModel(rated_w=self.lamp_w[node]).power_w(level)
            if power is None
            else power,
            energy_wh=energy,
            burn_h=12.5,
            switches=3,
            faults=faults or [],
        )
        self.link.deliver(self.topics.node_state(node), encode(st), retained)
        return st

    def availability(self, node: str, online: bool) -> None:
        text = b"online" if online else b"offline"
        self.link.deliver(self.topics.node_availability(node), text, True)

    def points(self, measurement: str, **tags: str) -> list[Point]:
        return [
            p
            for p in self.rec.of(measurement)
            if all(dict(p.tags).get(k) == v for k, v in tags.items())
        ]


@pytest.fixture
def rig() -> Rig:
    return Rig(dt.datetime(2026, 11, 25, 20, 0, tzinfo=LOCAL))


def _f(p: Point) -> dict[str, float | int | bool]:
    return dict(p.fields)


def test_each_state_report_becomes_one_node_point_at_the_nodes_time(rig: Rig) -> None:
    earlier = rig.clock.now() - dt.timedelta(seconds=4)
    st = rig.state("QL-001", 80.0, ts=earlier, energy=1500.0)
    (p,) = rig.points("light_node", node="QL-001")
    assert dict(p.tags) == {"group": rig.group["QL-001"], "node": "QL-001"}
    assert p.ts_ms == round(earlier.timestamp() * 1000)
    f = _f(p)
    assert f["level_pct"] == 80.0 and f["energy_wh"] == 1500.0 and f["burn_h"] == 12.5
    assert f["online"] is True and f["fallback"] is False and f["faults"] == 0
    assert f["switches"] == 3 and f["alarms"] == 0
    # the retained copy a reconnect delivers again is not a new point
    rig.link.deliver(rig.topics.node_state("QL-001"), encode(st), True)
    assert len(rig.points("light_node", node="QL-001")) == 1


def test_a_node_clock_ahead_of_ours_is_recorded_at_our_time(rig: Rig) -> None:
    rig.state("QL-002", 100.0, ts=rig.clock.now() + dt.timedelta(hours=1))
    (p,) = rig.points("light_node", node="QL-002")
    assert p.ts_ms == round(rig.clock.now().timestamp() * 1000)


def test_availability_changes_are_recorded_once(rig: Rig) -> None:
    rig.availability("QL-003", True)
    rig.availability("QL-003", True)  # the retained copy again
    rig.availability("QL-003", False)
    points = [_f(p) for p in rig.points("light_node", node="QL-003")]
    assert points == [{"online": True}, {"online": False}]


def test_alarms_are_recorded_when_raised_and_when_cleared(rig: Rig) -> None:
    asyncio.run(rig.service.step())
    rig.state("THD-021", 0.0, power=0.5, faults=[NodeFault.DRIVER_FAILURE])
    asyncio.run(rig.service.step())
    (raised,) = rig.points("light_fault", node="THD-021")
    assert dict(raised.tags) == {
        "group": rig.group["THD-021"],
        "node": "THD-021",
        "fault": "driver_failure",
    }
    assert _f(raised) == {"active": True, "code": 16}
    # the node's own diagnosis is in its state point as a bitmask
    assert _f(rig.points("light_node", node="THD-021")[-1])["faults"] == 16
    asyncio.run(rig.service.step())  # nothing changed: nothing recorded
    assert len(rig.points("light_fault", node="THD-021")) == 1
    rig.clock.advance(5)
    level = rig.service.core.status()[0].level  # any level the group wants
    rig.state("THD-021", level)
    asyncio.run(rig.service.step())
    last = rig.points("light_fault", node="THD-021")[-1]
    assert _f(last)["active"] is False and dict(last.tags)["fault"] == "driver_failure"
    # a node state carries the controller's active alarms on that node
    rig.availability("QL-004", False)
    asyncio.run(rig.service.step())
    assert rig.points("light_fault", node="QL-004", fault="node_offline")
    rig.state("QL-004", 0.0)
    assert int(_f(rig.points("light_node", node="QL-004")[-1])["alarms"]) & 4


def test_group_summaries_add_up_over_the_nodes(rig: Rig) -> None:
    asyncio.run(rig.service.step())
    group = rig.cfg.lighting.groups[0]
    nodes = group.node_ids()
    for k, n in enumerate(nodes):
        rig.state(n, 100.0, energy=1000.0 + k)
    rig.clock.advance(60)
    for k, n in enumerate(nodes):
        rig.state(n, 100.0, energy=1010.0 + k)  # 10 Wh each in the minute
    rig.availability(nodes[0], False)
    rig.service.record_groups()
    points = {dict(p.tags)["group"]: _f(p) for p in rig.rec.of("light_group")}
    assert set(points) == {g.id for g in rig.cfg.lighting.groups}
    g = points[group.id]
    assert g["nodes"] == len(nodes) and g["nodes_offline"] == 1
    assert g["energy_wh"] == pytest.approx(10.0 * len(nodes))
    expected_w = sum(LampPowerModel(rated_w=rig.lamp_w[n]).power_w(100.0) for n in nodes[1:])
    assert g["power_w"] == pytest.approx(expected_w)
    assert g["level_pct"] == rig.service.core.status()[0].level
    assert g["source"] in (0, 1, 2)
    total = sum(int(p["nodes"]) for p in points.values())
    assert total == sum(1 for _ in rig.cfg.nodes())


def test_without_a_recorder_nothing_is_recorded_and_nothing_breaks() -> None:
    cfg = _cfg()
    clock = ManualClock(dt.datetime(2026, 11, 25, 20, 0, tzinfo=LOCAL))
    link = Link()
    service = LightingService(cfg, link, clock, topics=Topics("t"))  # type: ignore[arg-type]
    assert service.telemetry is None
    service.record_groups()
    asyncio.run(service.step())


def test_the_running_loop_records_group_summaries_on_the_minute() -> None:
    cfg = _cfg()
    # 600× real time: a minute of clock time every 0.1 s
    clock = ScaledClock(dt.datetime(2026, 11, 25, 20, 0, 30, tzinfo=LOCAL), 600.0)
    rec = MemoryRecorder(now=lambda: clock.now().timestamp())
    service = LightingService(
        cfg,
        Link(),  # type: ignore[arg-type]
        clock,
        topics=Topics("t"),
        telemetry=rec,
    )

    async def run() -> None:
        task = asyncio.create_task(service.run())
        await asyncio.sleep(0.65)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    stamps = sorted({p.ts_ms for p in rec.of("light_group")})
    assert len(stamps) >= 3
    assert all(ts % 60_000 == 0 for ts in stamps)  # on the minute, every group at once
    assert all((b - a) % 60_000 == 0 for a, b in itertools.pairwise(stamps))
    per_stamp = {ts: sum(1 for p in rec.of("light_group") if p.ts_ms == ts) for ts in stamps}
    assert set(per_stamp.values()) == {len(cfg.lighting.groups)}
