"""The lighting loop's asyncio shell: carries :class:`LightingCore` inputs and outputs over MQTT.

Wake-ups come from three places, and any of them may be missed without harm because every
wake-up recomputes from scratch: APScheduler at each schedule transition (production), a
regular tick, and inputs that change what is wanted (a traffic count, a reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from controller.aio import cancel_and_wait
from controller.clock import Clock
from controller.config import CityConfig, LightingClass
from controller.diagnostics import DropCounter
from controller.lighting.core import LightingCore
from controller.lighting.fanout import FanoutTracker
from controller.telemetry.recorder import Recorder
from controller.telemetry.schema import (
    alarm_mask,
    light_fault,
    light_group,
    light_node_online,
    light_node_state,
    record,
)
from devices.lights import (
    OFFLINE,
    ONLINE,
    AlarmEntry,
    CommandAck,
    GroupStatusEntry,
    LightingStatus,
    NodeAlarms,
    NodeMode,
    NodeState,
    PayloadError,
    Topics,
    TrafficCount,
    decode,
    encode,
)
from devices.mqtt import LinkDown, MqttLink
from schedules.evaluate import GroupSchedule, next_change_after
from schedules.model import Override

__all__ = ["LightingService", "LightingStats"]

log = logging.getLogger("cityctl.lighting")


@dataclass
class LightingStats:
    """Counters of the loop for operations and tests."""

    steps: int = 0
    group_commands: int = 0
    node_retries: int = 0
    announces: int = 0
    states: int = 0
    #: Of ``states``: retained copies (delivered on (re)subscribing, not freshly published).
    states_retained: int = 0
    counts: int = 0
    rejections: int = 0
    #: Messages about other districts' nodes and segments, ignored (not drops: not bad input).
    foreign: int = 0


class LightingService:
    """Runs the street-lighting control loop over one :class:`MqttLink`.

    ``foreign_nodes`` and ``foreign_segments`` are what other instances of a district-sharded
    city own (``docs/scaling.md``): their messages reach this one through the wildcard
    subscriptions and are counted in ``stats.foreign``, not logged or dropped as bad input.
    """

    def __init__(
        self,
        cfg: CityConfig,
        link: MqttLink,
        clock: Clock,
        *,
        topics: Topics,
        telemetry: Recorder | None = None,
        foreign_nodes: Collection[str] = frozenset(),
        foreign_segments: Collection[str] = frozenset(),
    ) -> None:
        self.cfg = cfg
        self.link = link
        self.foreign_nodes = frozenset(foreign_nodes)
        self.foreign_segments = frozenset(foreign_segments)
        self.clock = clock
        self.topics = topics
        self.core = LightingCore(cfg, controller_id=cfg.controller.id)
        self.stats = LightingStats()
        #: Publish of a new group command → its last node's acknowledging state (real time).
        self.fanout = FanoutTracker()
        self.drops = DropCounter(log, "payload")
        self._wake = asyncio.Event()
        self._announce = False
        self._connected_mono: float | None = None
        #: The last instant (clock's monotonic) at which the link's inbox was seen empty: the
        #: retry deadlines are judged then (see LightingCore.plan's ``as_of``).
        self._drained_mono: float | None = None
        self._last_levels: dict[str, tuple[float, str]] = {}
        self._last_summary = float("-inf")
        self._last_summary_text = ""
        self._last_status = float("-inf")
        self._lock = asyncio.Lock()
        self._scheduler: object | None = None
        self._scheduled_for: dt.datetime | None = None
        #: (schedule generation, next transition, computed at): see :meth:`_next_change`.
        self._next_cache: tuple[int, dt.datetime | None, dt.datetime] | None = None
        self._schedule_gen = 0
        #: group → (its schedule object, next transition, computed at): see _group_next_change.
        self._next_by_group: dict[str, tuple[GroupSchedule, dt.datetime | None, dt.datetime]] = {}
        self._wake_timer: asyncio.TimerHandle | None = None
        #: Where node states, faults and group summaries are recorded (``docs/telemetry.md``);
        #: None records nothing.
        self.telemetry = telemetry
        self._alarm_kinds: dict[str, frozenset[str]] = {}
        #: Alarm changes found but not yet published (the link dropped meanwhile).
        self._alarms_due: dict[str, list[AlarmEntry]] = {}
        root = topics.root
        link.subscribe(f"{root}/lights/node/+/state", self._on_node_message)
        link.subscribe(f"{root}/lights/node/+/availability", self._on_node_message)
        link.subscribe(f"{root}/lights/node/+/ack", self._on_node_message)
        link.subscribe(f"{root}/traffic/segment/+/count", self._on_count)

    # -- wake-ups ---------------------------------------------------------------------------
    def wake(self) -> None:
        """Ask the loop to recompute now."""
        self._wake.set()

    def _wake_soon(self, delay_s: float = 0.25) -> None:
        """Ask the loop to recompute within ``delay_s`` (real seconds), once for all the
        requests made meanwhile."""
        if self._wake_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the loop (a unit test): at once
            self.wake()
            return

        def fire() -> None:
            self._wake_timer = None
            self.wake()

        self._wake_timer = loop.call_later(delay_s, fire)

    async def on_connect(self) -> None:
        """Called by the link after every (re)connect: announce and re-send what is wanted now."""
        self._connected_mono = self.clock.monotonic()
        await self.link.publish(
            self.topics.controller_availability(self.cfg.controller.id), ONLINE, qos=1, retain=True
        )
        self.stats.announces += 1
        self._announce = True
        log.info("connected to the broker: announcing and re-sending the wanted levels")
        await self.step()

    async def run(self) -> None:
        """Loop until cancelled: recompute at every wake-up and at least every ``tick_s``.

        On the machine's clock APScheduler wakes the loop at each transition. On a manual
        clock (tests) only :meth:`wake` does; on a scaled clock (demo) the loop computes
        its own timeout from the next transition.
        """
        self._start_scheduler()
        intervals: asyncio.Task[None] | None = None
        if self.telemetry is not None and self.clock.speed > 0:
            intervals = asyncio.create_task(self._record_intervals(), name="lighting telemetry")
        try:
            while True:
                timeout = self._timeout()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=timeout)
                self._wake.clear()
                await self.step()
        finally:
            self._stop_scheduler()
            if intervals is not None:
                await cancel_and_wait([intervals])

    def _timeout(self) -> float | None:
        speed = self.clock.speed
        if speed <= 0:
            return None
        wait = self.cfg.lighting.tick_s
        if not self.clock.is_real:
            now = self.clock.now()
            nxt = self._next_change(now)
            if nxt is not None:
                wait = min(wait, max(0.0, (nxt - now).total_seconds()))
        return max(0.01, wait / speed)

    # -- the step ---------------------------------------------------------------------------
    async def step(self) -> None:
        """One recompute: plan, publish, check faults. Safe to call at any time."""
        async with self._lock:
            await self._step()

    async def _step(self) -> None:
        now = self.clock.now()
        mono = self.clock.monotonic()
        lt = self.cfg.lighting
        announce, self._announce = self._announce, False
        self.stats.steps += 1
        self.fanout.expire(time.monotonic())
        if self.link.inbox_empty():
            self._drained_mono = mono
        cmds, retries = self.core.plan(
            now,
            mono,
            refresh_s=lt.refresh_s,
            retry_after_s=lt.retry_after_s,
            announce=announce,
            as_of=self._drained_mono,
        )
        if not self.link.connected:
            # Nothing can be sent; the next connect re-announces what is wanted then.
            if cmds:
                self._announce = True
            return
        # The fault check looks at every node (≈50 ms at 10,000 nodes): done before the
        # commands go out, so that it does not hold up the nodes' acknowledgements of them.
        up_for = 0.0 if self._connected_mono is None else mono - self._connected_mono
        for node, alarms in self.core.check_faults(now, mono, link_up_for_s=up_for).items():
            if self.telemetry is not None:
                self._record_faults(node, alarms)
            if alarms:
                kinds = ", ".join(f"{a.kind} ({a.detail})" for a in alarms)
                log.warning("node %s: %s", node, kinds)
            else:
                log.info("node %s: all alarms cleared", node)
            self._alarms_due[node] = alarms  # published below, or at the next step
        try:
            for fb in self.core.fallback_programs(now, force=announce):
                await self.link.publish(
                    self.topics.group_fallback(fb.group), encode(fb), qos=1, retain=True
                )
            for gc in cmds:
                if gc.reason == "change":
                    waiting = self.core.online_count(gc.group)
                    self.fanout.sent(gc.group, gc.command.cmd_id, waiting, time.monotonic())
                await self.link.publish(
                    self.topics.group_set(gc.group), encode(gc.command), qos=1, retain=True
                )
                self.stats.group_commands += 1
                self._log_level(gc.group, gc.command.level, gc.command.ramp_s, gc.reason)
            for r in retries:
                await self.link.publish(self.topics.node_set(r.node), encode(r.command), qos=1)
                self.stats.node_retries += 1
                log.debug("node %s lags its group: retry %d", r.node, r.attempt)
            while self._alarms_due:
                node, alarms = next(iter(self._alarms_due.items()))
                payload = NodeAlarms(node=node, alarms=alarms)
                await self.link.publish(
                    self.topics.node_alarms(node), encode(payload), qos=1, retain=True
                )
                # Only once it is out: a change the link dropped goes out at the next step.
                if self._alarms_due.get(node) is alarms:
                    del self._alarms_due[node]
        except LinkDown:
            self._announce = True  # re-send everything once the broker is back
            return
        self._maybe_summary(mono)
        if mono - self._last_status >= max(60.0, 10.0 * self.clock.speed) or announce:
            self._last_status = mono
            with contextlib.suppress(LinkDown):
                await self.link.publish(
                    self.topics.controller_lighting(self.cfg.controller.id),
                    encode(self.status(now)),
                    qos=1,
                    retain=True,
                )
        self._schedule_next(now)

    def status(self, now: dt.datetime) -> LightingStatus:
        """The controller's lighting status as published on its status topic."""
        return LightingStatus(
            controller=self.cfg.controller.id,
            ts=now,
            groups=[
                GroupStatusEntry(
                    group=s.group,
                    level=s.level,
                    source=s.source,
                    detail=s.detail,
                    lighting_class=s.lighting_class,
                    nodes_total=s.nodes_total,
                    nodes_following=s.nodes_converged,
                    nodes_offline=s.nodes_offline,
                    energy_wh=max(0.0, s.energy_wh),
                )
                for s in self.core.status()
            ],
            nodes_with_alarms=len(self.core.faults.alarms()),
            dropped_payloads=self.drops.total,
        )

    def _log_level(self, group: str, level: float, ramp_s: float, reason: str) -> None:
        # The group's own wanted level, not core.status(): that counts every node's state.
        want = self.core.wanted_of(group)
        detail = want.detail if want else ""
        source = want.source if want else ""
        prev = self._last_levels.get(group)
        self._last_levels[group] = (level, source)
        if reason == "change" or prev is None:
            log.info(
                "group %-18s → %5.1f %% (ramp %3.0f s) %s: %s", group, level, ramp_s, source, detail
            )

    def _maybe_summary(self, mono: float) -> None:
        # At most every minute of clock time, and every 10 real seconds on a fast demo clock;
        # an unchanged summary is repeated only every 15 minutes.
        every = max(60.0, 10.0 * self.clock.speed)
        if mono - self._last_summary < every:
            return
        parts = []
        for s in self.core.status():
            parts.append(
                f"{s.group} {s.level:.0f}% {s.nodes_converged}/{s.nodes_total} ok"
                + (f" {s.nodes_offline} offline" if s.nodes_offline else "")
            )
        alarms = self.core.faults.alarms()
        text = "; ".join(parts) + (f" — alarms on {len(alarms)} node(s)" if alarms else "")
        if text == self._last_summary_text and mono - self._last_summary < 15 * every:
            return
        self._last_summary = mono
        self._last_summary_text = text
        log.info("nodes: %s", text)
        if self.drops.total:
            log.info("%s", self.drops.summary())

    # -- telemetry --------------------------------------------------------------------------
    def record_groups(self, at: float | None = None) -> None:
        """Record every group's ``light_group`` point (``at``: seconds since the epoch; None:
        now). The interval task calls this with the interval's boundary."""
        rec = self.telemetry
        if rec is None:
            return
        for t in self.core.totals():
            cls = None
            if t.lighting_class is not None:
                with contextlib.suppress(ValueError):
                    cls = LightingClass(t.lighting_class).number
            record(
                rec,
                light_group(
                    t.group,
                    level_pct=t.level,
                    source=t.source,
                    nodes=t.nodes,
                    nodes_following=t.nodes_following,
                    nodes_offline=t.nodes_offline,
                    nodes_alarm=t.nodes_alarm,
                    power_w=t.power_w,
                    energy_wh=t.energy_wh,
                    lighting_class=cls,
                ),
                at,
            )

    async def _record_intervals(self) -> None:
        """Record the group summaries every ``telemetry.intervals.group_s`` of clock time, on
        multiples of it (a 60 s interval records on the minute)."""
        every = self.cfg.telemetry.intervals.group_s
        last = -math.inf
        while True:
            now = self.clock.now().timestamp()
            # A timer may fire a hair early: never the same boundary twice.
            boundary = max((math.floor(now / every) + 1) * every, last + every)
            await asyncio.sleep(max(0.01, (boundary - now) / self.clock.speed))
            self.record_groups(at=boundary)
            last = boundary

    def _record_state(self, state: NodeState) -> None:
        assert self.telemetry is not None
        # The node's own time is when it measured; a node clock ahead of ours is not trusted.
        at = min(state.ts.timestamp(), self.clock.now().timestamp())
        active = self.core.faults.active.get(state.node, {})
        sample = light_node_state(
            self.core.node_group(state.node),
            state.node,
            level_pct=state.level,
            power_w=state.power_w,
            energy_wh=state.energy_wh,
            burn_h=state.burn_h,
            switches=state.switches,
            fallback=state.mode is NodeMode.FALLBACK,
            faults=alarm_mask(f.value for f in state.faults),
            alarms=alarm_mask(active),
        )
        record(self.telemetry, sample, at)

    def _record_faults(self, node: str, alarms: list[AlarmEntry]) -> None:
        assert self.telemetry is not None
        kinds = frozenset(a.kind for a in alarms)
        old = self._alarm_kinds.get(node, frozenset())
        if kinds:
            self._alarm_kinds[node] = kinds
        else:
            self._alarm_kinds.pop(node, None)
        group = self.core.node_group(node)
        for kind in sorted(old - kinds):
            record(self.telemetry, light_fault(group, node, kind, False))
        for kind in sorted(kinds - old):
            record(self.telemetry, light_fault(group, node, kind, True))

    # -- scheduling -------------------------------------------------------------------------
    def _start_scheduler(self) -> None:
        if not self.clock.is_real:
            return  # tests and benches move time themselves and call wake()/step()
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        sched = AsyncIOScheduler(timezone=dt.UTC)
        sched.start()
        self._scheduler = sched

    def _stop_scheduler(self) -> None:
        self._scheduled_for = None  # a new scheduler has no job yet
        sched = self._scheduler
        if sched is not None:
            with contextlib.suppress(Exception):
                sched.shutdown(wait=False)  # type: ignore[attr-defined]
            self._scheduler = None

    def _schedule_next(self, now: dt.datetime) -> None:
        sched = self._scheduler
        if sched is None:
            return
        nxt = self._next_change(now)
        if nxt is None or nxt == self._scheduled_for:
            return
        self._scheduled_for = nxt
        # One job, replaced each time: a missed or duplicate wake-up only costs a recompute.
        sched.add_job(  # type: ignore[attr-defined]
            self.wake,
            "date",
            run_date=nxt,
            id="lighting-transition",
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
        )

    def _next_change(self, now: dt.datetime) -> dt.datetime | None:
        # The next transition stays the same until it passes or the schedules change: at
        # 100 groups working it out again at every step cost more than the step itself.
        cached = self._next_cache
        if cached is not None and cached[0] == self._schedule_gen:
            _, value, computed = cached
            if value is not None and computed <= now < value:
                return value
            if value is None and computed <= now < computed + dt.timedelta(hours=1):
                return None
        value = self._compute_next_change(now)
        self._next_cache = (self._schedule_gen, value, now)
        return value

    def _compute_next_change(self, now: dt.datetime) -> dt.datetime | None:
        nxt: dt.datetime | None = None
        for g in self.cfg.lighting.groups:
            t = self._group_next_change(g.id, now)
            if t is not None and (nxt is None or t < nxt):
                nxt = t
        return nxt

    def _group_next_change(self, group: str, now: dt.datetime) -> dt.datetime | None:
        # Per group too: an override set through the API changes one group's schedule, and
        # the core keeps the schedule objects of the others, so only that one is worked out.
        gs = self.core.schedule(group)
        cached = self._next_by_group.get(group)
        if cached is not None and cached[0] is gs:
            _, value, computed = cached
            if value is not None and computed <= now < value:
                return value
            if value is None and computed <= now < computed + dt.timedelta(hours=1):
                return None
        value = next_change_after(gs, now)
        self._next_by_group[group] = (gs, value, now)
        return value

    # -- inputs -----------------------------------------------------------------------------
    def _on_node_message(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = self.topics.node_from(topic)
        if parsed is None:
            self.drops.drop(topic, "topic outside the protocol")
            return
        node, leaf = parsed
        if not self.core.knows_node(node):
            if node in self.foreign_nodes:
                self.stats.foreign += 1  # another district's node: its own instance judges it
            elif payload:  # an empty retained message is someone clearing a topic: fine
                self.drops.drop(topic, f"unknown node {node!r} (not in config)")
            return
        mono = self.clock.monotonic()
        try:
            if leaf == "state":
                if not payload:
                    return
                state = decode(NodeState, payload)
                if state.node != node:
                    raise PayloadError("node", f"{state.node!r} does not match the topic's node")
                prev_cmd_id = self.core.node_cmd_id(node)
                changed = self.core.on_node_state(state, mono)
                self.stats.states += 1
                if retained:
                    self.stats.states_retained += 1
                cmd_id = state.cmd_id
                if cmd_id is not None and self.fanout.pending and prev_cmd_id != cmd_id:
                    # The node's first state with this cmd_id: its acknowledgement.
                    self.fanout.acked(self.core.node_group(node), cmd_id, time.monotonic())
                if self.telemetry is not None and changed:
                    # The same state again is a retained copy (a reconnect): recorded once.
                    self._record_state(state)
                if self.link.inbox_empty():
                    # Every acknowledgement that had arrived by now has been read.
                    self._drained_mono = mono
            elif leaf == "availability":
                text = payload.decode("utf-8", "replace").strip()
                if text not in (ONLINE, OFFLINE):
                    if payload:
                        raise PayloadError(
                            "", f"availability must be 'online' or 'offline', got {text[:40]!r}"
                        )
                    return
                was = self.core.node_online(node)
                self.core.on_node_availability(node, text == ONLINE, mono)
                if self.telemetry is not None and was is not (text == ONLINE):
                    group = self.core.node_group(node)
                    record(self.telemetry, light_node_online(group, node, text == ONLINE))
                if text == ONLINE:
                    # A node came back: it may need a retry. Once for a burst: 10,000 nodes
                    # coming online must not cost 10,000 recomputes of the whole city.
                    self._wake_soon()
            elif leaf == "ack":
                ack = decode(CommandAck, payload)
                if ack.node != node:
                    raise PayloadError("node", f"{ack.node!r} does not match the topic's node")
                if ack.status == "rejected":
                    self.stats.rejections += 1
                    log.warning("node %s rejected command %s: %s", node, ack.cmd_id, ack.reason)
        except PayloadError as exc:
            self.drops.drop(topic, str(exc))

    def _on_count(self, topic: str, payload: bytes, retained: bool) -> None:
        segment = self.topics.segment_from(topic)
        if not payload:
            return
        if segment is None:  # an empty segment id: the subscription's + matches it
            self.drops.drop(topic, "topic outside the protocol")
            return
        if segment in self.foreign_segments:
            self.stats.foreign += 1  # counts for another district's roads: not ours to judge
            return
        try:
            count = decode(TrafficCount, payload)
            if count.segment != segment:
                raise PayloadError("segment", f"{count.segment!r} does not match the topic")
        except PayloadError as exc:
            self.drops.drop(topic, str(exc))
            return
        if not self.core.knows_segment(segment):
            return  # counters for roads this controller does not light are not an error
        self.stats.counts += 1
        if self.core.on_traffic(segment, count.per_hour, self.clock.monotonic()):
            self.wake()

    # -- configuration ----------------------------------------------------------------------
    def apply_config(self, cfg: CityConfig) -> None:
        """Run a new schedule (programs, calendars, assignments) at once, without a restart.

        Raises (``ValueError``) and changes nothing when the config cannot be applied; see
        :meth:`LightingCore.reconfigure`. Otherwise the loop wakes and the nodes follow.
        """
        self.core.reconfigure(cfg)
        self.cfg = cfg
        self._schedule_gen += 1
        self.wake()

    # -- overrides --------------------------------------------------------------------------
    def set_overrides(self, overrides: Iterable[Override]) -> None:
        """Replace the active overrides and recompute at once."""
        self.core.set_overrides(overrides)
        self._schedule_gen += 1
        self.wake()
