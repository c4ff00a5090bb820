"""The light simulator's gateway mode over a real Mosquitto: many nodes per connection, the
same topics and payloads on the wire as one connection per node."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from devices.lights import LightCommand, SimFault, Topics, encode
from simulator.lights import LightSimulator, NodeSpec
from tests.helpers import Mosquitto, wait_for
from tests.integration.test_sim_lights import Observer


def _specs() -> list[NodeSpec]:
    # 30 nodes, two groups; gateways of 8 so that one gateway carries both groups.
    return [NodeSpec(f"gw-n{i:02d}", "ga" if i < 12 else "gb") for i in range(30)]


def _command(cmd_id: str, level: float) -> bytes:
    return encode(LightCommand(cmd_id=cmd_id, level=level, issued=dt.datetime.now(dt.UTC)))


async def test_gateway_mode_looks_like_nodes_on_the_wire(
    mosquitto: Mosquitto, mqtt_prefix: str
) -> None:
    topics = Topics(mqtt_prefix)
    obs = Observer(mosquitto, topics)
    sim = LightSimulator(mosquitto.url, _specs(), prefix=mqtt_prefix, gateway_size=8)
    try:
        await obs.link.wait_connected(5)
        await sim.start(wait_s=10)
        assert sim.connections == 4  # 30 nodes in gateways of 8
        assert sim.stats.online == 30
        # Every node announces itself on its own topics, as with a connection of its own.
        await wait_for(lambda: len(obs.states) == 30 and len(obs.availability) == 30, 10)
        assert set(obs.availability.values()) == {"online"}

        # A group command: the broker sends it once per gateway, every node of the group takes
        # it and reports it in its own state; the other group is untouched.
        await obs.publish(topics.group_set("ga"), _command("c-ga-1", 60))
        await wait_for(lambda: obs.count(lambda s: s.cmd_id == "c-ga-1") == 12, 10)
        assert all(obs.states[f"gw-n{i:02d}"].target == 60 for i in range(12))
        assert all(obs.states[f"gw-n{i:02d}"].cmd_id is None for i in range(12, 30))
        assert sim.stats.commands_applied == 12
        # One copy per gateway that carries ga nodes (gw 1: n00-n07, gw 2: n08-n15), not 12.
        assert sim.stats.received == 2

        # A command for one node reaches that node only, and it acknowledges it.
        await obs.publish(topics.node_set("gw-n20"), _command("c-n20", 30))
        await wait_for(lambda: obs.states["gw-n20"].cmd_id == "c-n20", 10)
        await wait_for(lambda: [a.cmd_id for a in obs.acks["gw-n20"]] == ["c-n20"], 10)
        assert obs.states["gw-n21"].cmd_id is None

        # A node cut off behind its gateway: the gateway reports it offline and it hears
        # nothing; its neighbours on the same connection go on.
        await obs.publish(topics.sim_fault("gw-n03"), encode(SimFault(fault="node_offline")))
        await wait_for(lambda: obs.availability["gw-n03"] == "offline", 10)
        assert sim.stats.online == 29
        await obs.publish(topics.group_set("ga"), _command("c-ga-2", 40))
        await wait_for(lambda: obs.count(lambda s: s.cmd_id == "c-ga-2") == 11, 10)
        assert obs.states["gw-n03"].cmd_id == "c-ga-1"

        # Back: online again with its state, and it follows the next command.
        await obs.publish(
            topics.sim_fault("gw-n03"), encode(SimFault(fault="node_offline", active=False))
        )
        await wait_for(lambda: obs.availability["gw-n03"] == "online", 10)
        await obs.publish(topics.group_set("ga"), _command("c-ga-3", 70))
        await wait_for(lambda: obs.count(lambda s: s.cmd_id == "c-ga-3") == 12, 10)

        # Stopping: the gateways say goodbye for each of their nodes.
        await sim.stop()
        await wait_for(lambda: set(obs.availability.values()) == {"offline"}, 10)
        assert sim.stats.publish_failed == 0
    finally:
        await sim.stop()
        await obs.close()


async def test_a_large_gateway_answers_a_group_command_with_every_node(
    mosquitto: Mosquitto, mqtt_prefix: str
) -> None:
    """45 nodes behind one connection: their answers are sent twenty per event-loop turn
    (the first on the wire before the last is built), confirmed as batches; every node
    still takes the command and reports it, and every report is counted once confirmed."""
    topics = Topics(mqtt_prefix)
    obs = Observer(mosquitto, topics)
    specs = [NodeSpec(f"big-n{i:02d}", "gbig") for i in range(45)]
    sim = LightSimulator(mosquitto.url, specs, prefix=mqtt_prefix, gateway_size=45)
    try:
        await obs.link.wait_connected(5)
        await sim.start(wait_s=10)
        assert sim.connections == 1
        await wait_for(lambda: len(obs.states) == 45, 10)
        published = sim.stats.states_published
        # Which turn of the event loop each node's answer is started in: a callback that
        # re-queues itself counts the turns.
        loop = asyncio.get_running_loop()
        turn = [0]

        def count_turn() -> None:
            turn[0] += 1
            handle[0] = loop.call_soon(count_turn)

        handle = [loop.call_soon(count_turn)]
        started: list[int] = []
        real_send = sim._send_states

        def send_states(link: Any, rts: list[Any]) -> Any:
            started.extend([turn[0]] * len(rts))
            return real_send(link, rts)

        sim._send_states = send_states  # type: ignore[method-assign]
        try:
            await obs.publish(topics.group_set("gbig"), _command("c-big-1", 55))
            await wait_for(lambda: obs.count(lambda s: s.cmd_id == "c-big-1") == 45, 10)
        finally:
            handle[0].cancel()
        # Twenty per turn, each piece in a later turn than the one before (so paho writes a
        # piece's states while the next is built), not all 45 in one.
        pieces = sorted(set(started))
        assert [started.count(t) for t in pieces] == [20, 20, 5]
        assert sim.stats.commands_applied == 45
        assert sim.stats.received == 1
        # Counted once the broker has confirmed each (after the observer may have seen it).
        await wait_for(lambda: sim.stats.states_published - published == 45, 10)
        assert all(st.target == 55 for st in obs.states.values())
        assert sim.stats.publish_failed == 0
    finally:
        await sim.stop()
        await obs.close()


def test_gateway_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="gateway_size"):
        LightSimulator("mqtt://127.0.0.1:1", _specs(), gateway_size=0)
