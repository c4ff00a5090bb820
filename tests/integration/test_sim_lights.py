"""The light simulator over a real Mosquitto: scale, fan-out, faults, floods, stale commands."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import pytest

from devices.lights import (
    CommandAck,
    FallbackProgram,
    FallbackStep,
    LightCommand,
    NodeFault,
    NodeState,
    SimFault,
    Topics,
    decode,
    encode,
)
from devices.mqtt import MqttLink, MqttSettings
from simulator.lights import LightSimulator, NodeSpec
from tests.helpers import Mosquitto, wait_for

N_NODES = 200
GROUPS = ("g0", "g1", "g2", "g3")


class Observer:
    """What a controller would see: retained states, availability and acks of every node."""

    def __init__(self, broker: Mosquitto, topics: Topics) -> None:
        self.topics = topics
        self.states: dict[str, NodeState] = {}
        self.availability: dict[str, str] = {}
        self.acks: dict[str, list[CommandAck]] = defaultdict(list)
        settings = MqttSettings.from_url(
            broker.url, client_id=f"obs-{uuid.uuid4().hex[:6]}", reconnect_min_s=0.05
        )
        self.link = MqttLink(settings, name="observer")
        self.link.subscribe(topics.node_state("+"), self._on_state)
        self.link.subscribe(topics.node_availability("+"), self._on_availability)
        self.link.subscribe(topics.node_ack("+"), self._on_ack)
        self.task = asyncio.create_task(self.link.run())

    def _node(self, topic: str) -> str:
        parsed = self.topics.node_from(topic)
        assert parsed is not None, topic
        return parsed[0]

    def _on_state(self, topic: str, payload: bytes, retained: bool) -> None:
        self.states[self._node(topic)] = decode(NodeState, payload)

    def _on_availability(self, topic: str, payload: bytes, retained: bool) -> None:
        self.availability[self._node(topic)] = payload.decode()

    def _on_ack(self, topic: str, payload: bytes, retained: bool) -> None:
        self.acks[self._node(topic)].append(decode(CommandAck, payload))

    def count(self, predicate: Callable[[NodeState], bool]) -> int:
        return sum(1 for s in self.states.values() if predicate(s))

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self.link.publish(topic, payload, qos=1, retain=retain)

    async def close(self) -> None:
        await self.link.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class Bench:
    def __init__(self, broker: Mosquitto, prefix: str) -> None:
        self.broker = broker
        self.topics = Topics(prefix)
        self.prefix = prefix
        self.sims: list[LightSimulator] = []
        self.observers: list[Observer] = []

    def specs(self, n: int, groups: tuple[str, ...] = GROUPS) -> list[NodeSpec]:
        return [NodeSpec(f"n{i:04d}", groups[i % len(groups)]) for i in range(n)]

    async def simulator(self, specs: list[NodeSpec], **kw: float) -> LightSimulator:
        kw.setdefault("fallback_after_s", 120.0)
        sim = LightSimulator(
            MqttSettings.from_url(self.broker.url, reconnect_min_s=0.05, reconnect_max_s=0.5),
            specs,
            prefix=self.prefix,
            **kw,  # type: ignore[arg-type]
        )
        self.sims.append(sim)
        await sim.start(wait_s=20)
        return sim

    async def observer(self) -> Observer:
        obs = Observer(self.broker, self.topics)
        self.observers.append(obs)
        assert await obs.link.wait_connected(5)
        return obs

    def command(self, level: float, *, age_s: float = 0.0, cmd_id: str | None = None) -> bytes:
        return encode(
            LightCommand(
                cmd_id=cmd_id or f"c-{uuid.uuid4().hex[:8]}",
                level=level,
                issued=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s),
            )
        )

    async def close(self) -> None:
        for sim in self.sims:
            await sim.stop()
        for obs in self.observers:
            await obs.close()


@pytest.fixture
async def bench(mosquitto: Mosquitto, mqtt_prefix: str) -> AsyncIterator[Bench]:
    b = Bench(mosquitto, mqtt_prefix)
    yield b
    await b.close()


async def test_200_nodes_start_and_obey_a_group_command(bench: Bench) -> None:
    obs = await bench.observer()
    t0 = time.monotonic()
    sim = await bench.simulator(bench.specs(N_NODES))
    connect_s = time.monotonic() - t0
    assert sim.stats.online == N_NODES
    assert connect_s < 10.0, f"200 nodes took {connect_s:.2f} s to connect"
    await wait_for(
        lambda: (
            len(obs.states) == N_NODES
            and sum(1 for v in obs.availability.values() if v == "online") == N_NODES
        ),
        10,
        what="every node online with a retained state",
    )

    ids = {g: f"on-{g}" for g in GROUPS}
    t1 = time.monotonic()
    for g in GROUPS:
        await obs.publish(
            bench.topics.group_set(g), bench.command(75.0, cmd_id=ids[g]), retain=True
        )
    await wait_for(
        lambda: obs.count(lambda s: s.cmd_id == ids[s.group] and s.level == 75.0) == N_NODES,
        2.0,
        what="all 200 nodes reporting the group command",
    )
    fan_out_s = time.monotonic() - t1
    print(f"\n200 nodes: connected in {connect_s:.2f} s, group command fan-out {fan_out_s:.3f} s")
    assert sim.stats.commands_applied == N_NODES
    assert all(sim.node(n).target == 75.0 for n in sim.node_ids)

    # A command to one node is acknowledged by that node only.
    await obs.publish(bench.topics.node_set("n0007"), bench.command(20.0, cmd_id="just-7"))
    await wait_for(lambda: obs.acks.get("n0007"), 2, what="the ack of n0007")
    assert obs.acks["n0007"] == [CommandAck(node="n0007", cmd_id="just-7", status="applied")]
    await wait_for(lambda: obs.states["n0007"].cmd_id == "just-7", 2, what="state of n0007")
    assert obs.states["n0007"].level == 20.0 and len(obs.acks) == 1


async def test_node_offline_fires_the_will_and_comes_back(bench: Bench) -> None:
    obs = await bench.observer()
    sim = await bench.simulator(bench.specs(20))
    await wait_for(lambda: obs.availability.get("n0003") == "online", 5, what="n0003 online")

    sim.inject("n0003", "node_offline")
    await wait_for(lambda: obs.availability["n0003"] == "offline", 5, what="the will of n0003")
    # Offline means deaf: a group command does not reach it.
    await obs.publish(bench.topics.group_set("g3"), bench.command(50.0, cmd_id="while-off"))
    await wait_for(lambda: obs.states["n0007"].cmd_id == "while-off", 3, what="n0007 obeying")
    assert sim.node("n0003").cmd_id is None

    sim.clear("n0003", "node_offline")
    await wait_for(lambda: obs.availability["n0003"] == "online", 5, what="n0003 back online")

    # The same through the simulator's fault topic (how a demo or another process injects).
    fault = bench.topics.sim_fault("n0005")
    await obs.publish(fault, encode(SimFault(fault="node_offline")))
    await wait_for(lambda: obs.availability["n0005"] == "offline", 5, what="n0005 offline")
    await obs.publish(fault, encode(SimFault(fault="node_offline", active=False)))
    await wait_for(lambda: obs.availability["n0005"] == "online", 5, what="n0005 back online")
    assert sim.link("n0005") is not None and sim.link("n0005").stats.connects == 2  # type: ignore[union-attr]


async def test_faults_show_in_the_reported_state(bench: Bench) -> None:
    obs = await bench.observer()
    sim = await bench.simulator(bench.specs(8, ("g0",)))
    await obs.publish(bench.topics.group_set("g0"), bench.command(60.0, cmd_id="lit"), retain=True)
    await wait_for(lambda: obs.count(lambda s: s.cmd_id == "lit") == 8, 3, what="all lit")
    full = obs.states["n0000"].power_w

    sim.inject("n0001", "lamp_failure")
    sim.inject("n0002", "driver_failure")
    sim.inject("n0003", "day_burner")
    await wait_for(
        lambda: (
            obs.states["n0001"].power_w < 1.0
            and obs.states["n0002"].faults == [NodeFault.DRIVER_FAILURE]
            and obs.states["n0003"].level == 100.0
        ),
        3,
        what="the three faults reported",
    )
    assert obs.states["n0001"].level == 60.0  # a broken lamp does not know it is dark
    assert obs.states["n0002"].level == 0.0 and obs.states["n0002"].power_w < 1.0
    assert obs.states["n0003"].power_w > full

    # Supply lost: one last report on the backup battery, then the node is gone.
    sim.inject("n0004", "supply_lost")
    await wait_for(lambda: obs.availability.get("n0004") == "offline", 5, what="n0004 gone")
    last = obs.states["n0004"]
    assert last.faults == [NodeFault.SUPPLY_LOST] and last.power_w == 0.0 and last.level == 0.0
    sim.clear("n0004", "supply_lost")
    await wait_for(
        lambda: obs.availability["n0004"] == "online" and obs.states["n0004"].faults == [],
        5,
        what="n0004 powered again",
    )


def garbage(topics: Topics, n: int) -> list[bytes]:
    """Every kind of bad payload a broken or hostile publisher could send."""
    now = dt.datetime.now(dt.UTC).isoformat()
    kinds: list[bytes] = [
        b"not json at all",
        b"{",
        b"[1, 2, 3]",
        b'"just a string"',
        b"null",
        b"\x00\xff\xfe\x80garbage\x9c",
        bytes(range(256)),
        b'{"cmd_id": "bad-type", "level": "high", "issued": "%s"}' % now.encode(),
        b'{"cmd_id": "huge", "level": 1e308, "issued": "%s"}' % now.encode(),
        b'{"cmd_id": "neg", "level": -5, "issued": "%s"}' % now.encode(),
        b'{"cmd_id": "inf", "level": Infinity, "issued": "%s"}' % now.encode(),
        b'{"cmd_id": "ramp", "level": 50, "ramp_s": 1e9, "issued": "%s"}' % now.encode(),
        b'{"v": 2, "cmd_id": "v2", "level": 50, "issued": "%s"}' % now.encode(),
        b'{"cmd_id": "naive", "level": 50, "issued": "2026-01-01T00:00:00"}',
        b'{"cmd_id": "", "level": 50, "issued": "%s"}' % now.encode(),
        b'{"cmd_id": "' + b"x" * 500 + b'", "level": 50}',
        b'{"level": 50}',
        b"{" + b'"a": 1, ' * 20_000 + b'"b": 2}',  # 160 kB
        b"9" * 5000,  # past Python's int-string limit: json.loads raises ValueError
        b"[" * 100_000,  # json.loads raises RecursionError
        '{"cmd_id": "ünï", "level": "五十"}'.encode(),
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


async def test_malformed_flood_is_survived_counted_and_nodes_still_obey(bench: Bench) -> None:
    obs = await bench.observer()
    sim = await bench.simulator(bench.specs(N_NODES), reject_burst=5)
    victim = "n0000"
    node_flood = garbage(bench.topics, 1200)
    group_flood = garbage(bench.topics, 40)  # to g1: 50 nodes each, 2,000 deliveries
    for payload in node_flood:
        await obs.publish(bench.topics.node_set(victim), payload)
    for payload in group_flood:
        await obs.publish(bench.topics.group_set("g1"), payload)
    for payload in garbage(bench.topics, 20):
        await obs.publish(bench.topics.group_fallback("g2"), payload)
        await obs.publish(bench.topics.sim_fault("n0006"), payload)
    members = N_NODES // len(GROUPS)
    expected = len(node_flood) + 40 * members + 20 * members + 20
    await wait_for(lambda: sim.stats.invalid == expected, 10, what=f"{expected} rejections")
    stats = sim.stats
    assert stats.invalid_by_node[victim] == len(node_flood)
    assert stats.invalid_by_node["n0001"] == 40  # a member of g1
    assert stats.invalid_by_node["n0006"] == 20 + 20  # g2's fallback topic and its fault topic
    assert stats.commands_applied == 0
    assert stats.acks_suppressed > 0, "a flood must not turn into a flood of acks"

    # The victim said why, with the cmd_id when it could find one.
    await wait_for(lambda: len(obs.acks.get(victim, [])) >= 5, 3, what="rejection acks")
    acks = obs.acks[victim]
    assert all(a.status == "rejected" and a.reason for a in acks)
    assert acks[0].reason.startswith("not JSON")

    # Nothing changed, and every node still obeys the next valid command.
    assert all(sim.node(n).cmd_id is None for n in sim.node_ids)
    for g in GROUPS:
        await obs.publish(bench.topics.group_set(g), bench.command(40.0, cmd_id="after"))
    await wait_for(
        lambda: obs.count(lambda s: s.cmd_id == "after" and s.level == 40.0) == N_NODES,
        5,
        what="all 200 nodes obeying after the flood",
    )
    assert sim.stats.online == N_NODES


async def test_stale_retained_group_command_is_ignored_by_a_new_node(bench: Bench) -> None:
    obs = await bench.observer()
    # A controller died 10 minutes ago and left its command retained on g0; g1's is fresh.
    stale = bench.command(100.0, age_s=600.0, cmd_id="from-the-dead")
    await obs.publish(bench.topics.group_set("g0"), stale, retain=True)
    await obs.publish(
        bench.topics.group_set("g1"), bench.command(30.0, cmd_id="fresh"), retain=True
    )

    sim = await bench.simulator(bench.specs(6, ("g0", "g1")), fallback_after_s=300.0)
    await wait_for(lambda: obs.count(lambda s: s.cmd_id == "fresh") == 3, 5, what="g1 obeys")
    await wait_for(lambda: len(obs.acks) == 3, 5, what="rejections of the stale command")
    for n in ("n0000", "n0002", "n0004"):  # the g0 nodes
        assert obs.states[n].cmd_id is None and obs.states[n].level == 0.0
        assert sim.node(n).target == 0.0
        (ack,) = obs.acks[n]
        assert ack.status == "rejected" and ack.cmd_id == "from-the-dead"
        assert "stale" in ack.reason
    assert sim.stats.commands_stale == 3 and sim.stats.commands_applied == 3


async def test_fallback_program_is_stored_from_its_retained_topic(bench: Bench) -> None:
    obs = await bench.observer()
    program = FallbackProgram(
        group="g0",
        issued=dt.datetime.now(dt.UTC),
        timezone="Asia/Ho_Chi_Minh",
        steps=[FallbackStep(at=dt.time(0), level=70.0)],
    )
    await obs.publish(bench.topics.group_fallback("g0"), encode(program), retain=True)
    sim = await bench.simulator(bench.specs(2, ("g0",)), fallback_after_s=1.0, fallback_ramp_s=0.2)
    await wait_for(lambda: sim.stats.fallback_programs == 2, 5, what="programs stored")
    # Nobody commands the nodes: after 1 s of silence they run the program.
    await wait_for(
        lambda: obs.count(lambda s: s.mode == "fallback" and s.level == 70.0) == 2,
        6,
        what="both nodes in fallback at 70 %",
    )
    await obs.publish(bench.topics.group_set("g0"), bench.command(10.0, cmd_id="hello"))
    await wait_for(
        lambda: obs.count(lambda s: s.mode == "remote" and s.cmd_id == "hello") == 2,
        3,
        what="both nodes back to remote",
    )


async def test_periodic_reports_carry_the_meters(bench: Bench) -> None:
    obs = await bench.observer()
    await bench.simulator(bench.specs(3, ("g0",)), report_interval_s=0.3)
    await obs.publish(bench.topics.group_set("g0"), bench.command(100.0, cmd_id="full"))
    await wait_for(lambda: obs.count(lambda s: s.cmd_id == "full") == 3, 3, what="all at 100 %")
    first = obs.states["n0000"]
    await wait_for(
        lambda: (
            obs.states["n0000"].energy_wh > first.energy_wh
            and obs.states["n0000"].burn_h > first.burn_h
        ),
        3,
        what="a later periodic report with more energy and burning time",
    )
    assert obs.states["n0000"].switches == 1


async def test_nodes_reannounce_after_a_broker_restart(bench: Bench, mosquitto: Mosquitto) -> None:
    sim = await bench.simulator(bench.specs(20))
    mosquitto.restart()  # no persistence: the broker forgot every retained message
    obs = await bench.observer()
    await wait_for(
        lambda: (
            sum(1 for v in obs.availability.values() if v == "online") == 20
            and len(obs.states) == 20
        ),
        10,
        what="all 20 nodes online again with a retained state",
    )
    assert await sim.wait_connected(5)
    await obs.publish(bench.topics.group_set("g2"), bench.command(55.0, cmd_id="again"))
    await wait_for(lambda: obs.count(lambda s: s.cmd_id == "again") == 5, 3, what="g2 obeys")


async def test_run_lights_runs_a_district_for_a_while(
    mosquitto: Mosquitto, mqtt_prefix: str
) -> None:
    from simulator.lights import run_lights

    seen: list[LightSimulator] = []
    stats = await run_lights(
        mosquitto.host,
        mosquitto.port,
        count=12,
        group_of=lambda i: f"road-{i // 4}",
        prefix=mqtt_prefix,
        duration_s=0.3,
        ready=seen.append,
    )
    (sim,) = seen
    assert sim.node_ids[0] == "lamp-0001" and sim.node("lamp-0012").group == "road-2"
    assert stats.nodes == 12 and stats.connect_s is not None and stats.states_published >= 12
