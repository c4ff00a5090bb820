"""Simulated street-light nodes speaking the real MQTT protocol (``devices.lights``).

One process runs N nodes. Each node is a pure :class:`~simulator.lights_node.LightNode` (the
physics and rules, see that module) plus its own :class:`~devices.mqtt.MqttLink`: client id
``sim-<node>``, last will = retained ``offline`` on its availability topic, and on every
(re)connect it publishes retained ``online`` and its retained state. Over its own link a node
subscribes to exactly what a real node would: its ``node/{id}/set`` and its group's
``group/{g}/set`` and ``group/{g}/fallback``. The broker therefore fans a group command out to
every node, retained commands reach a node when it (re)connects, and a node whose link is down
hears nothing — all as in the field.

**Gateway mode** (``gateway_size=K``): K nodes share one connection, as the light points of a
street segment share their segment controller (a gateway on the pole or in the feeder pillar,
talking to the lamps over power line or radio). On the wire nothing changes: each node still
publishes its own retained state, acks and availability on its own topics, and the gateway
subscribes to exactly its nodes' ``node/{id}/set`` and its groups' ``set``/``fallback``
topics, so the controller cannot tell the difference. What changes is the fan-out: the broker
sends a group command once per gateway instead of once per node, and the gateway hands it to
its nodes — which is how large installations keep a broker and a simulator (10,000 nodes on a
2-core machine) out of the way of what is measured. One connection has one last will, so a
node's availability is the gateway's word: it publishes ``offline`` for a node it lost
(``node_offline``, ``supply_lost``) and for all its nodes when it shuts down; a gateway that
dies without a word leaves its nodes' availability as it was, and the controller's fault
detector finds them silent after ``lighting.faults.stale_after_s``.

Fault injection (``sim/lights/node/{id}/fault``) is out of band: one control link per simulator
subscribes to ``sim/lights/node/+/fault`` and dispatches by node id (a dict lookup). It cannot
ride on the node's own link, because ``node_offline`` and ``supply_lost`` take that link down
and the message that clears them would never arrive.

Efficiency notes (the simulator must scale to thousands of nodes in one process):

- handlers are bound per node at start-up: no per-message search over nodes;
- a group command reaches every node of the group as the same bytes, so decoded payloads are
  cached by their bytes (one pydantic validation per distinct payload, not per node);
- a command's new state is published straight from the node's message handler (no task, no
  queue); behind a gateway, every node takes the command at once and their states leave as
  batches on the shared connection (:meth:`~devices.mqtt.MqttLink.send_many`, twenty per
  event-loop turn, confirmed together: a publish awaited per node cost aiomqtt a task, an
  event and a wait each, and the simulator, not the controller, set a fan-out's pace); other
  changes (ticks, ramp ends, faults, periodic reports) mark the node dirty and one publisher
  task sends the latest state of every dirty node, coalescing repeats, one batch per
  connection;
- one ticker task advances every node at ``tick_hz``, in up to ten slices spread over the
  period (real nodes are not synchronised); rejections are acknowledged at most
  ``reject_burst`` at a time per node (refilled at ``reject_rate_hz``), the rest are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from devices.lights import (
    CommandAck,
    FallbackProgram,
    LightCommand,
    PayloadError,
    SimFault,
    Topics,
    decode,
    encode,
)
from devices.mqtt import LinkDown, MqttLink, MqttSettings, Will
from simulator.lights_node import CommandOutcome, InjectedFault, LampModel, LightNode

__all__ = [
    "CommandOutcome",
    "InjectedFault",
    "LampModel",
    "LightNode",
    "LightSimulator",
    "NodeSpec",
    "SimClock",
    "SimStats",
    "SystemClock",
    "run_lights",
]

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CACHE_MAX_ENTRIES = 1024
_CACHE_MAX_PAYLOAD = 16 * 1024
#: A gateway sends its nodes' answers to a group command this many per event-loop turn.
_GATEWAY_CHUNK = 20

M = TypeVar("M", bound=BaseModel)


#: A simulated node's longest wait between reconnect attempts (jittered, doubling from 0.2 s),
#: unless the broker is given as full :class:`MqttSettings`: a node is back at most this long
#: after its broker returns, like a street-light node firmware with a short retry cap.
NODE_RECONNECT_MAX_S = 3.0


class SimClock(Protocol):
    """Where the simulator gets its time: monotonic seconds and an aware wall clock."""

    def monotonic(self) -> float:
        """Monotonic seconds (drives ramps, meters and the silence timer)."""
        ...

    def wall(self) -> dt.datetime:
        """Aware wall-clock time (command age, fallback time of day, state ``ts``)."""
        ...


@dataclass(frozen=True)
class SystemClock:
    """The real clock; ``wall_offset_s`` shifts the wall clock (a node with a wrong clock)."""

    wall_offset_s: float = 0.0

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def wall(self) -> dt.datetime:
        """Now in UTC, shifted by ``wall_offset_s``."""
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.wall_offset_s)


@dataclass(frozen=True)
class NodeSpec:
    """One simulated light point."""

    node: str
    group: str
    rated_w: float = 100.0
    min_dim: float = 10.0

    def __post_init__(self) -> None:
        for name in ("node", "group"):
            value = getattr(self, name)
            if not _ID.match(value):
                raise ValueError(f"{name} {value!r} must match {_ID.pattern}")

    def lamp(self) -> LampModel:
        """The lamp model of this node."""
        return LampModel(rated_w=self.rated_w, min_dim=self.min_dim)


@dataclass
class SimStats:
    """Counters of a simulator run (a snapshot; see :attr:`LightSimulator.stats`)."""

    nodes: int = 0
    online: int = 0
    connect_s: float | None = None  # start() until every node was connected (real seconds)
    commands_applied: int = 0
    commands_duplicate: int = 0
    commands_stale: int = 0
    commands_unpowered: int = 0
    fallback_programs: int = 0
    invalid: int = 0
    invalid_by_node: dict[str, int] = field(default_factory=dict)
    empty_payloads: int = 0
    acks_published: int = 0
    acks_suppressed: int = 0
    states_published: int = 0
    publish_failed: int = 0
    #: Of ``publish_failed``: sent on a live connection but not confirmed (the PUBACK did not
    #: come in time); the broker may well have it, and pass it on.
    publish_unconfirmed: int = 0
    faults_changed: int = 0
    unknown_fault_targets: int = 0
    received: int = 0  # messages delivered to node links (all nodes)


@dataclass(eq=False)
class _Node:
    """A node's runtime: model, link, topics and counters."""

    spec: NodeSpec
    model: LightNode
    state_topic: str
    ack_topic: str
    availability_topic: str
    next_report: float
    link: MqttLink | None = None
    task: asyncio.Task[None] | None = None
    invalid: int = 0
    tokens: float = 0.0
    tokens_at: float = 0.0
    cut: bool = False  # link deliberately down (node_offline / supply_lost)
    gateway: _Gateway | None = None  # gateway mode: the connection this node shares


@dataclass(eq=False)
class _Gateway:
    """Gateway mode: one connection carrying several nodes (see the module docstring)."""

    name: str
    nodes: list[_Node]
    by_group: dict[str, list[_Node]] = field(default_factory=dict)
    link: MqttLink | None = None
    task: asyncio.Task[None] | None = None


Broker = str | tuple[str, int] | MqttSettings | Callable[[str], MqttSettings]


class LightSimulator:
    """N simulated light nodes over MQTT in one process.

    ``broker`` is a URL (``mqtt://host:port``), a ``(host, port)`` pair, an
    :class:`MqttSettings` template, or a factory ``client_id -> MqttSettings``; the simulator
    sets each node's client id and last will itself.

    Use::

        sim = LightSimulator("mqtt://127.0.0.1:1883", [NodeSpec("n1", "main-road")])
        await sim.start()
        ...
        await sim.stop()
    """

    def __init__(
        self,
        broker: Broker,
        nodes: Iterable[NodeSpec],
        *,
        prefix: str = "cityctl",
        fallback_after_s: float = 300.0,
        fallback_ramp_s: float = 2.0,
        report_interval_s: float = 30.0,
        tick_hz: float = 5.0,
        clock: SimClock | None = None,
        client_prefix: str = "sim-",
        state_qos: int = 1,
        reject_burst: int = 20,
        reject_rate_hz: float = 5.0,
        gateway_size: int | None = None,
    ) -> None:
        if report_interval_s <= 0 or tick_hz <= 0:
            raise ValueError("report_interval_s and tick_hz must be positive")
        if gateway_size is not None and gateway_size < 1:
            raise ValueError(f"gateway_size must be at least 1, got {gateway_size!r}")
        #: Nodes per connection in gateway mode; None: one connection per node.
        self.gateway_size = gateway_size
        self._broker = broker
        self.topics = Topics(prefix)
        self.fallback_after_s = fallback_after_s
        self.report_interval_s = report_interval_s
        self.tick_hz = tick_hz
        self.clock: SimClock = clock or SystemClock()
        self.client_prefix = client_prefix
        self.state_qos = state_qos
        self.reject_burst = reject_burst
        self.reject_rate_hz = reject_rate_hz

        now = self.clock.monotonic()
        wall = self._wall
        self._nodes: dict[str, _Node] = {}
        specs = list(nodes)
        for i, spec in enumerate(specs):
            if spec.node in self._nodes:
                raise ValueError(f"node {spec.node!r} listed twice")
            model = LightNode(
                spec.node,
                spec.group,
                spec.lamp(),
                now=now,
                wall=wall,
                fallback_after_s=fallback_after_s,
                fallback_ramp_s=fallback_ramp_s,
            )
            self._nodes[spec.node] = _Node(
                spec=spec,
                model=model,
                state_topic=self.topics.node_state(spec.node),
                ack_topic=self.topics.node_ack(spec.node),
                availability_topic=self.topics.node_availability(spec.node),
                # Spread the periodic reports over the interval instead of one burst.
                next_report=now + report_interval_s * (i + 1) / max(1, len(specs)),
                tokens=float(reject_burst),
                tokens_at=now,
            )
        self._counters = SimStats(nodes=len(self._nodes))
        self._gateways: list[_Gateway] = []
        if gateway_size is not None:
            rts = list(self._nodes.values())
            for k in range(0, len(rts), gateway_size):
                chunk = rts[k : k + gateway_size]
                gw = _Gateway(name=f"gw-{chunk[0].spec.node}", nodes=chunk)
                for rt in chunk:
                    rt.gateway = gw
                    gw.by_group.setdefault(rt.spec.group, []).append(rt)
                self._gateways.append(gw)
        self._decoded: dict[tuple[type[BaseModel], bytes], BaseModel | PayloadError] = {}
        self._logged_topics: set[str] = set()
        self._dirty: dict[str, _Node] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._control: MqttLink | None = None
        self._control_task: asyncio.Task[None] | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._publisher_task: asyncio.Task[None] | None = None
        self._started_at: float | None = None
        self._running = False

    # -- public API -----------------------------------------------------------------------
    @property
    def node_ids(self) -> list[str]:
        """Ids of all simulated nodes."""
        return list(self._nodes)

    def node(self, node_id: str) -> LightNode:
        """The model of one node (for tests and the demo UI)."""
        return self._nodes[node_id].model

    def link(self, node_id: str) -> MqttLink | None:
        """The MQTT link of one node (None before :meth:`start`)."""
        return self._nodes[node_id].link

    @property
    def stats(self) -> SimStats:
        """A snapshot of the counters."""
        snap = dataclasses.replace(self._counters)
        snap.invalid_by_node = {n: rt.invalid for n, rt in self._nodes.items() if rt.invalid}
        snap.online = sum(
            1
            for rt in self._nodes.values()
            if rt.link and rt.link.connected and not (rt.gateway is not None and rt.cut)
        )
        snap.received = sum(link.stats.received for link in self._links())
        return snap

    @property
    def connections(self) -> int:
        """Broker connections of the nodes: one per node, or one per gateway."""
        return len(self._gateways) if self._gateways else len(self._nodes)

    def _links(self) -> list[MqttLink]:
        """Every node connection once (a gateway's link is shared by its nodes)."""
        if self._gateways:
            return [gw.link for gw in self._gateways if gw.link is not None]
        return [rt.link for rt in self._nodes.values() if rt.link is not None]

    async def start(self, *, wait_s: float | None = 30.0) -> None:
        """Connect every node (and the fault-injection link) and start ticking.

        Waits up to ``wait_s`` seconds for all nodes to be connected (None: do not wait); nodes
        that are not connected by then keep trying in the background (a warning is logged).
        """
        if self._running:
            return
        self._running = True
        self._started_at = time.perf_counter()  # real seconds, even under a scaled clock
        boot = self.clock.monotonic()
        self._control = MqttLink(
            self._settings(f"{self.client_prefix}ctl-{uuid.uuid4().hex[:8]}", None),
            name="sim-control",
        )
        self._control.subscribe(self.topics.sim_fault("+"), self._on_fault)
        self._control_task = asyncio.create_task(self._control.run(), name="sim-control")
        for rt in self._nodes.values():
            rt.model.boot(boot)
            rt.model.changed = False  # the connect announcement publishes the state anyway
            if rt.gateway is not None:
                continue  # its gateway's link, below
            rt.link = self._node_link(rt)
            if rt.cut:
                rt.link.abort()  # injected before start: the node comes up cut off (or dead)
            rt.task = asyncio.create_task(rt.link.run(), name=f"sim-{rt.spec.node}")
        for gw in self._gateways:
            gw.link = self._gateway_link(gw)
            for rt in gw.nodes:
                rt.link = gw.link
            gw.task = asyncio.create_task(gw.link.run(), name=f"sim-{gw.name}")
        self._publisher_task = asyncio.create_task(self._publisher(), name="sim-publisher")
        self._ticker_task = asyncio.create_task(self._ticker(), name="sim-ticker")
        if wait_s is not None and not await self.wait_connected(wait_s):
            log.warning(
                "light simulator: %d of %d nodes connected after %.1f s; the rest keep trying",
                self.stats.online,
                len(self._nodes),
                wait_s,
            )

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until every node that should be up (and the control link) is connected."""
        if self._gateways:
            waits: list[Awaitable[bool]] = [
                gw.link.wait_connected() for gw in self._gateways if gw.link
            ]
        else:
            waits = [
                rt.link.wait_connected() for rt in self._nodes.values() if rt.link and not rt.cut
            ]
        if self._control is not None:
            waits.append(self._control.wait_connected())
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except TimeoutError:
            return False
        if self._counters.connect_s is None and self._started_at is not None:
            self._counters.connect_s = time.perf_counter() - self._started_at
        return True

    async def stop(self) -> None:
        """Say goodbye (retained ``offline``) on every node link and disconnect."""
        if not self._running:
            return
        self._running = False
        for task in (self._ticker_task, self._publisher_task):
            if task is not None:
                task.cancel()
        for task in (self._ticker_task, self._publisher_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Publishes already under way finish first (briefly): cut off mid-flight, a state
        # could reach the broker without the simulator ever counting it as published.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        closes = [
            rt.link.close(goodbye=(rt.availability_topic, b"offline"))
            for rt in self._nodes.values()
            if rt.link is not None and rt.gateway is None
        ]
        closes += [self._close_gateway(gw) for gw in self._gateways]
        if self._control is not None:
            closes.append(self._control.close())
        await asyncio.gather(*closes, return_exceptions=True)
        tasks = [rt.task for rt in self._nodes.values()] + [gw.task for gw in self._gateways]
        for task in tasks:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _close_gateway(self, gw: _Gateway) -> None:
        """The gateway says goodbye for each of its nodes, then disconnects."""
        link = gw.link
        if link is None:
            return
        if link.connected:
            await asyncio.gather(
                *(
                    link.publish(rt.availability_topic, b"offline", qos=1, retain=True)
                    for rt in gw.nodes
                ),
                return_exceptions=True,
            )
        await link.close()

    def inject(self, node_id: str, fault: InjectedFault | str) -> None:
        """Switch a fault on (``node_offline`` cuts the node's link so its will fires)."""
        self._set_fault(self._nodes[node_id], InjectedFault(fault), True)

    def clear(self, node_id: str, fault: InjectedFault | str) -> None:
        """Switch a fault off (a node whose link was cut reconnects)."""
        self._set_fault(self._nodes[node_id], InjectedFault(fault), False)

    def publish_state_now(self, node_id: str) -> None:
        """Queue a state report of one node (for tests and the demo)."""
        self._mark_dirty(self._nodes[node_id])

    # -- wiring ---------------------------------------------------------------------------
    def _wall(self, _now: float) -> dt.datetime:
        return self.clock.wall()

    def _settings(self, client_id: str, will: Will | None) -> MqttSettings:
        b = self._broker
        if isinstance(b, MqttSettings):
            base = b
        elif isinstance(b, str):
            base = MqttSettings.from_url(b, reconnect_max_s=NODE_RECONNECT_MAX_S)
        elif isinstance(b, tuple):
            base = MqttSettings(host=b[0], port=b[1], reconnect_max_s=NODE_RECONNECT_MAX_S)
        else:
            base = b(client_id)
        return dataclasses.replace(base, client_id=client_id, will=will)

    def _node_link(self, rt: _Node) -> MqttLink:
        spec = rt.spec
        settings = self._settings(
            f"{self.client_prefix}{spec.node}", Will(rt.availability_topic, b"offline")
        )
        link = MqttLink(settings, on_connect=partial(self._announce, rt), name=spec.node)
        link.subscribe(self.topics.node_set(spec.node), partial(self._on_command, rt, True))
        link.subscribe(self.topics.group_set(spec.group), partial(self._on_command, rt, False))
        link.subscribe(self.topics.group_fallback(spec.group), partial(self._on_fallback, rt))
        return link

    def _gateway_link(self, gw: _Gateway) -> MqttLink:
        # No last will: one connection has one, and it cannot say which nodes went quiet.
        settings = dataclasses.replace(
            self._settings(f"{self.client_prefix}{gw.name}", None),
            # Each node's state and availability at once, as on a connect: all in flight.
            max_inflight=max(20, 2 * len(gw.nodes) + 10),
        )
        link = MqttLink(settings, on_connect=partial(self._announce_gateway, gw), name=gw.name)
        for rt in gw.nodes:
            link.subscribe(self.topics.node_set(rt.spec.node), partial(self._on_command, rt, True))
        for group, members in gw.by_group.items():
            link.subscribe(self.topics.group_set(group), partial(self._on_gateway_command, members))
            link.subscribe(
                self.topics.group_fallback(group), partial(self._on_gateway_fallback, members)
            )
        return link

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- message handlers ------------------------------------------------------------------
    async def _announce(self, rt: _Node) -> None:
        assert rt.link is not None
        await rt.link.publish(rt.availability_topic, b"online", qos=1, retain=True)
        await self._publish_state(rt)

    async def _announce_gateway(self, gw: _Gateway) -> None:
        """A gateway's (re)connect: every node's availability, then the live nodes' states,
        each as one batch (the same order per node as a node's own link)."""
        assert gw.link is not None
        link = gw.link
        availability = [
            (rt.availability_topic, b"offline" if rt.cut else b"online") for rt in gw.nodes
        ]
        await link.send_many(availability, qos=1, retain=True)
        await self._publish_states(link, [rt for rt in gw.nodes if not rt.cut])

    async def _on_gateway_command(
        self, nodes: list[_Node], topic: str, payload: bytes, retained: bool
    ) -> None:
        """A group command reaching a gateway: every node of the group behind it takes it."""
        if not payload:
            self._counters.empty_payloads += 1
            return
        cmd = self._decode(LightCommand, payload)
        live = [rt for rt in nodes if not rt.cut]  # a cut-off node hears nothing
        if isinstance(cmd, PayloadError):
            await asyncio.gather(*(self._reject(rt, topic, payload, cmd) for rt in live))
            return
        # Every node takes the command at once; their states leave in slices of
        # _GATEWAY_CHUNK, one event-loop turn apart, all confirmed together: a real segment
        # controller's nodes answer one after the other, the first at once — and queueing
        # the whole segment before the first write held the first state back by the time
        # it takes to build them all.
        now = self.clock.monotonic()
        changed: list[_Node] = []
        stale: list[_Node] = []
        for rt in live:
            if self._apply(rt, cmd, topic, now) is CommandOutcome.STALE:
                stale.append(rt)
            if rt.model.changed:
                self._dirty.pop(rt.spec.node, None)
                changed.append(rt)
        link = live[0].link if live else None
        waits: list[asyncio.Future[int]] = []
        for k in range(0, len(changed), _GATEWAY_CHUNK):
            if k:
                await asyncio.sleep(0)
            sent = (
                None if link is None else self._send_states(link, changed[k : k + _GATEWAY_CHUNK])
            )
            if sent is not None:
                waits.append(sent)
        if waits:
            await asyncio.wait(waits)
        for rt in stale:
            await self._reject_stale(rt, cmd, topic, now)

    async def _on_gateway_fallback(
        self, nodes: list[_Node], topic: str, payload: bytes, retained: bool
    ) -> None:
        for rt in nodes:
            if not rt.cut:
                await self._on_fallback(rt, topic, payload, retained)

    async def _on_command(
        self, rt: _Node, addressed: bool, topic: str, payload: bytes, retained: bool
    ) -> None:
        if not payload:
            self._counters.empty_payloads += 1  # a retained command being cleared
            return
        if rt.gateway is not None and rt.cut:
            return  # behind a gateway: the node's own line is cut
        cmd = self._decode(LightCommand, payload)
        if isinstance(cmd, PayloadError):
            await self._reject(rt, topic, payload, cmd)
            return
        await self._command(rt, addressed, cmd, topic)

    async def _command(self, rt: _Node, addressed: bool, cmd: LightCommand, topic: str) -> None:
        """Apply a decoded command to one node, publish its state and (addressed) its ack."""
        now = self.clock.monotonic()
        outcome = self._apply(rt, cmd, topic, now)
        if outcome is CommandOutcome.STALE:
            await self._reject_stale(rt, cmd, topic, now)
        if rt.model.changed:
            # Straight from the handler: no task, no queue hop. State first, so a controller
            # that sees the ack finds the new state already delivered (same connection, in
            # order).
            self._dirty.pop(rt.spec.node, None)
            await self._publish_state(rt)
        if addressed and outcome in (CommandOutcome.APPLIED, CommandOutcome.DUPLICATE):
            await self._ack(rt, CommandAck(node=rt.spec.node, cmd_id=cmd.cmd_id, status="applied"))

    def _apply(self, rt: _Node, cmd: LightCommand, topic: str, now: float) -> CommandOutcome:
        """The node's model takes the command; counted. Publishes nothing."""
        outcome = rt.model.command(cmd, now)
        c = self._counters
        if outcome is CommandOutcome.APPLIED:
            c.commands_applied += 1
        elif outcome is CommandOutcome.DUPLICATE:
            c.commands_duplicate += 1
        elif outcome is CommandOutcome.UNPOWERED:
            c.commands_unpowered += 1
        else:
            c.commands_stale += 1
        return outcome

    async def _reject_stale(self, rt: _Node, cmd: LightCommand, topic: str, now: float) -> None:
        age = rt.model.command_age(cmd, now) or 0.0
        when = f"{age:.0f} s ago" if age > 0 else f"{-age:.0f} s in the future"
        log.debug("%s: stale command %s on %s (issued %s)", rt.spec.node, cmd.cmd_id, topic, when)
        reason = f"stale: issued {when} (limit {self.fallback_after_s:g} s)"
        await self._send_rejection(rt, cmd.cmd_id, reason, now)

    async def _on_fallback(self, rt: _Node, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            self._counters.empty_payloads += 1
            return
        program = self._decode(FallbackProgram, payload)
        if isinstance(program, PayloadError):
            await self._reject(rt, topic, payload, program)
            return
        if InjectedFault.SUPPLY_LOST in rt.model.faults:
            self._counters.commands_unpowered += 1
            return
        try:
            stored = rt.model.set_fallback(program, self.clock.monotonic())
        except PayloadError as exc:
            await self._reject(rt, topic, payload, exc)
            return
        if stored:
            self._counters.fallback_programs += 1
        if rt.model.changed:
            self._mark_dirty(rt)

    async def _on_fault(self, topic: str, payload: bytes, retained: bool) -> None:
        node = self._fault_target(topic)
        rt = self._nodes.get(node) if node else None
        if rt is None:
            self._counters.unknown_fault_targets += 1
            self._log_once(topic, "fault injection for an unknown node on %s", topic)
            return
        if not payload:
            self._counters.empty_payloads += 1
            return
        fault = self._decode(SimFault, payload)
        if isinstance(fault, PayloadError):
            await self._reject(rt, topic, payload, fault)
            return
        self._set_fault(rt, InjectedFault(fault.fault), fault.active)

    def _fault_target(self, topic: str) -> str | None:
        head, tail = self.topics.sim_fault(""), "/fault"
        head = head[: -len(tail)]
        if topic.startswith(head) and topic.endswith(tail):
            node = topic[len(head) : -len(tail)]
            return node if node and "/" not in node else None
        return None

    # -- faults ----------------------------------------------------------------------------
    def _set_fault(self, rt: _Node, fault: InjectedFault, active: bool) -> None:
        now = self.clock.monotonic()
        changed = rt.model.inject(fault, now) if active else rt.model.clear(fault, now)
        if not changed:
            return
        self._counters.faults_changed += 1
        log.info("%s: %s %s", rt.spec.node, fault.value, "injected" if active else "cleared")
        faults = rt.model.faults
        want_down = InjectedFault.NODE_OFFLINE in faults or InjectedFault.SUPPLY_LOST in faults
        link = rt.link
        if want_down and not rt.cut:
            rt.cut = True
            if link is None:
                pass
            elif rt.gateway is not None:
                # Behind a gateway the node's own line goes quiet; the gateway notices and
                # reports the node offline (after its last state, when the supply went).
                self._spawn(self._power_down(rt), f"sim-power-down-{rt.spec.node}")
            elif InjectedFault.NODE_OFFLINE in faults:
                link.abort()  # the cable is cut: the broker fires the will
            else:
                # Supply lost: the backup battery lasts just long enough to report.
                self._spawn(self._power_down(rt), f"sim-power-down-{rt.spec.node}")
        elif not want_down and rt.cut:
            rt.cut = False
            if link is not None and rt.gateway is not None:
                if link.connected:
                    self._spawn(self._announce_safely(rt), f"sim-announce-{rt.spec.node}")
            elif link is not None:
                link.resume()  # on_connect publishes online + state
        if not rt.cut:
            self._mark_dirty(rt)

    async def _power_down(self, rt: _Node) -> None:
        if rt.gateway is not None and InjectedFault.NODE_OFFLINE in rt.model.faults:
            pass  # a cut line: no last state gets through
        else:
            await self._publish_state(rt)
        if not rt.cut or rt.link is None:
            return
        if rt.gateway is None:
            rt.link.abort()
            return
        with contextlib.suppress(LinkDown):
            await rt.link.publish(rt.availability_topic, b"offline", qos=1, retain=True)

    async def _announce_safely(self, rt: _Node) -> None:
        with contextlib.suppress(LinkDown):
            await self._announce(rt)

    # -- publishing ------------------------------------------------------------------------
    def _mark_dirty(self, rt: _Node) -> None:
        self._dirty[rt.spec.node] = rt
        self._wake.set()

    async def _publisher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                batch = list(self._dirty.values())
                self._dirty.clear()
                # Sending is fire-and-forget per connection: a link that is just dropping (a
                # QoS 1 publish then waits for its timeout) must not hold up the others. A
                # gateway's nodes go out together, as one batch on their shared link.
                by_link: dict[MqttLink, list[_Node]] = {}
                for rt in batch:
                    link = rt.link
                    if link is not None and link.connected and not rt.cut:
                        by_link.setdefault(link, []).append(rt)
                for link, rts in by_link.items():
                    self._spawn(self._publish_states(link, rts), "sim-state")
                await asyncio.sleep(0)

    async def _publish_state(self, rt: _Node) -> None:
        if rt.link is not None:
            await self._publish_states(rt.link, [rt])

    async def _publish_states(self, link: MqttLink, rts: list[_Node]) -> None:
        """Publish the current state of ``rts`` (nodes on ``link``); return once the broker
        confirmed them or gave up."""
        sent = self._send_states(link, rts)
        if sent is not None:
            await sent

    def _send_states(self, link: MqttLink, rts: list[_Node]) -> asyncio.Future[int] | None:
        """Send the current state of ``rts`` (nodes on ``link``) *now*; they are counted
        once the broker confirmed them (see :class:`SimStats`) — the returned future (None
        when the link is down) completes then."""
        now = self.clock.monotonic()
        next_report = now + self.report_interval_s
        out: list[tuple[str, bytes]] = []
        for rt in rts:
            out.append((rt.state_topic, encode(rt.model.state(now))))
            rt.model.changed = False
            rt.next_report = next_report
        c = self._counters
        was_up = link.connected
        try:
            future = link.send_many(out, qos=self.state_qos, retain=True)
        except LinkDown:
            c.publish_failed += len(out)  # the next connect announces the states anew
            return None

        def count(done: asyncio.Future[int]) -> None:
            confirmed = done.result()
            c.states_published += confirmed
            missing = len(out) - confirmed
            if missing:
                c.publish_failed += missing
                if was_up:
                    c.publish_unconfirmed += missing

        future.add_done_callback(count)
        return future

    async def _ack(self, rt: _Node, ack: CommandAck) -> None:
        if rt.link is None:
            return
        try:
            await rt.link.publish(rt.ack_topic, encode(ack), qos=1)
        except LinkDown:
            self._counters.publish_failed += 1
            return
        self._counters.acks_published += 1

    async def _reject(self, rt: _Node, topic: str, payload: bytes, exc: PayloadError) -> None:
        rt.invalid += 1
        self._counters.invalid += 1
        self._log_once(
            topic,
            "%s: rejected a payload on %s: %s (%d bytes; later rejections on this topic are "
            "only counted)",
            rt.spec.node,
            topic,
            exc,
            len(payload),
        )
        await self._send_rejection(rt, _guess_cmd_id(payload), str(exc), self.clock.monotonic())

    async def _send_rejection(self, rt: _Node, cmd_id: str, reason: str, now: float) -> None:
        # Token bucket: a flood of bad payloads must not turn into a flood of acks.
        rt.tokens = min(
            float(self.reject_burst), rt.tokens + (now - rt.tokens_at) * self.reject_rate_hz
        )
        rt.tokens_at = now
        if rt.tokens < 1.0:
            self._counters.acks_suppressed += 1
            return
        rt.tokens -= 1.0
        ack = CommandAck(node=rt.spec.node, cmd_id=cmd_id, status="rejected", reason=reason)
        await self._ack(rt, ack)

    def _log_once(self, topic: str, msg: str, *args: object) -> None:
        if topic in self._logged_topics:
            return
        if len(self._logged_topics) < 100_000:
            self._logged_topics.add(topic)
        log.warning(msg, *args)

    def _decode(self, model: type[M], payload: bytes) -> M | PayloadError:
        """Decode, caching by payload bytes: a group command is the same bytes for every node."""
        if len(payload) > _CACHE_MAX_PAYLOAD:
            return _safe_decode(model, payload)
        key = (model, payload)
        hit = self._decoded.get(key)
        if hit is None:
            hit = _safe_decode(model, payload)
            if len(self._decoded) >= _CACHE_MAX_ENTRIES:
                self._decoded.clear()
            self._decoded[key] = hit
        return hit  # type: ignore[return-value]  # keyed by model: hit is an M or an error

    # -- ticking ---------------------------------------------------------------------------
    async def _ticker(self) -> None:
        period = 1.0 / self.tick_hz
        nodes = list(self._nodes.values())
        # Every node is ticked once a period, but in slices spread over the period: real nodes
        # are not synchronised, and ticking 10,000 at once sent their periodic reports to the
        # controller in one lump a second (hundreds in the same 100 ms), a burst no street
        # makes. At most ten slices, each of at least 50 nodes.
        slices = max(1, min(10, len(nodes) // 50))
        while True:
            for k in range(slices):
                await asyncio.sleep(period / slices)
                now = self.clock.monotonic()
                for i, rt in enumerate(nodes[k::slices]):
                    changed = rt.model.tick(now)
                    if (changed or now >= rt.next_report) and not rt.cut:
                        link = rt.link
                        if link is not None and link.connected:
                            self._mark_dirty(rt)
                    if i % 500 == 499:
                        # Ticking takes ~10 µs a node: let commands in between, or every
                        # command would wait for the tick (the controller measures that wait).
                        await asyncio.sleep(0)


def _safe_decode(model: type[M], payload: bytes) -> M | PayloadError:
    try:
        return decode(model, payload)
    except PayloadError as exc:
        return exc
    except (ValueError, RecursionError) as exc:
        # json.loads raises these past devices.lights.decode: a 5,000-digit integer exceeds
        # Python's int-string limit (ValueError), deeply nested brackets recurse too deep.
        return PayloadError("", f"not JSON ({type(exc).__name__}: {str(exc)[:80]})")


def _guess_cmd_id(payload: bytes) -> str:
    """The ``cmd_id`` of a rejected payload if it has a usable one, so the sender can match."""
    if len(payload) > _CACHE_MAX_PAYLOAD:
        return ""
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        return ""
    cmd_id = raw.get("cmd_id") if isinstance(raw, dict) else None
    return cmd_id if isinstance(cmd_id, str) and len(cmd_id) <= 64 else ""


GroupOf = Callable[[int], str] | Mapping[int, str] | str


async def run_lights(
    host: str = "127.0.0.1",
    port: int = 1883,
    count: int = 10,
    group_of: GroupOf = "main-road",
    prefix: str = "cityctl",
    *,
    node_prefix: str = "lamp-",
    first: int = 0,
    rated_w: float = 100.0,
    min_dim: float = 10.0,
    fallback_after_s: float = 300.0,
    report_interval_s: float = 30.0,
    settings: MqttSettings | None = None,
    duration_s: float | None = None,
    ready: Callable[[LightSimulator], object] | None = None,
) -> SimStats:
    """Run ``count`` simulated nodes until cancelled (or for ``duration_s``); return the stats.

    Nodes are named ``{node_prefix}0001`` … ; ``group_of`` gives the group of node *i*
    (0-based): a function, a mapping, or one group name for all. ``first`` shifts the
    numbering, so several processes can share a large district (``first=0, count=2500`` and
    ``first=2500, count=2500``). ``settings`` (TLS, passwords) overrides ``host``/``port``.
    ``ready(sim)`` is called once the nodes are connected.
    """
    width = max(4, len(str(first + count)))
    specs = []
    for i in range(first, first + count):
        if isinstance(group_of, str):
            group = group_of
        elif callable(group_of):
            group = group_of(i)
        else:
            group = group_of[i]
        specs.append(NodeSpec(f"{node_prefix}{i + 1:0{width}d}", group, rated_w, min_dim))
    broker: Broker = settings if settings is not None else (host, port)
    sim = LightSimulator(
        broker,
        specs,
        prefix=prefix,
        fallback_after_s=fallback_after_s,
        report_interval_s=report_interval_s,
    )
    await sim.start()
    log.info(
        "light simulator: %d nodes, %d connected in %.2f s",
        count,
        sim.stats.online,
        sim.stats.connect_s or -1.0,
    )
    try:
        if ready is not None:
            ready(sim)
        if duration_s is None:
            await asyncio.Event().wait()  # until cancelled
        else:
            await asyncio.sleep(duration_s)
    finally:
        await sim.stop()
    return sim.stats
