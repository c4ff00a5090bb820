"""The controller runs the shipped intersections against simulated cabinets over real Modbus TCP.

Each test starts a pymodbus cabinet per intersection on a free loopback port (port 0), with the
built-in traffic model feeding its detectors, and the controller's :class:`SignalsService`
talking to them through :class:`devices.modbus.CabinetLink`. Everything runs in real time: the
cabinets keep real heartbeat watchdogs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.config import CityConfig, load_config
from controller.signals.engine import NotAdoptable, shown_stage
from controller.signals.model import Intersection, Signal
from controller.signals.service import SignalsService, link_for
from controller.sim_signals import SignalDemand, cabinet_spec, group_demand, traffic_specs
from devices.cabinet import HR, IR, CabinetMode, FaultCode, encode_outputs
from devices.cameras import CameraCounts, LaneCount, camera_topic
from devices.lights import Topics, encode
from devices.mqtt import MqttLink, MqttSettings
from simulator.cabinet import SimulatedCabinet
from simulator.signal_traffic import IntersectionTraffic
from tests.helpers import Mosquitto, wait_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Site:
    cfg: CityConfig
    xs: list[Intersection]
    cabinets: dict[str, SimulatedCabinet]
    service: SignalsService
    task: asyncio.Task[None]


def _local() -> dt.datetime:
    return dt.datetime(2026, 11, 25, 10, 0)


def with_port(x: Intersection, port: int) -> Intersection:
    cab = x.config.cabinet.model_copy(update={"port": port, "host": "127.0.0.1"})
    return Intersection.build(x.config.model_copy(update={"cabinet": cab}))


@contextlib.asynccontextmanager
async def site(*, level: float = 0.6, heartbeat_timeout_s: float = 2.0) -> AsyncIterator[Site]:
    cfg = load_config(ROOT / "config.yaml")
    settings = cfg.signals.model_copy(update={"heartbeat_timeout_s": heartbeat_timeout_s})
    xs = cfg.intersections()
    cabinets: dict[str, SimulatedCabinet] = {}
    links = {}
    t0 = time.monotonic()
    for x in xs:
        groups, dets = traffic_specs(x)
        demand = SignalDemand(group_demand(x), level)
        traffic = IntersectionTraffic(groups, dets, demand, seed=7)
        # The traffic model runs on the cabinet's clock from 0.
        cab = SimulatedCabinet(
            cabinet_spec(x, settings),
            "127.0.0.1",
            0,
            traffic=traffic,
            clock=lambda: time.monotonic() - t0,
        )
        await cab.start()
        cabinets[x.id] = cab
        links[x.id] = link_for(with_port(x, cab.port))
    service = SignalsService(
        settings,
        xs,
        time.monotonic,
        links,
        mqtt=None,
        topics=Topics("t"),
        local_time=_local,
    )
    task = asyncio.create_task(service.run())
    try:
        yield Site(cfg, xs, cabinets, service, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for cab in cabinets.values():
            await cab.stop()


async def test_two_intersections_run_with_no_fault_on_either_side() -> None:
    async with site() as s:
        runners = s.service.runners
        assert await wait_for(lambda: all(r.sync == "control" for r in runners.values()), 10)
        started = {xid: r.control.stats.stage_changes for xid, r in runners.items()}
        await asyncio.sleep(25)
        for xid, r in runners.items():
            cab = s.cabinets[xid]
            print(
                f"{xid}: {r.stats.control_steps} control steps, "
                f"{r.control.stats.stage_changes - started[xid]} stage changes in 25 s, "
                f"cabinet {cab.mode.name} fault {cab.fault.name}, "
                f"{cab.stats.commits} commits, lag max {r.stats.max_step_lag_s:.3f} s"
            )
            assert r.sync == "control"
            assert cab.mode is CabinetMode.FOLLOWING and cab.fault is FaultCode.NONE
            assert cab.stats.faults == 0
            assert r.control.stats.violations == 0 and r.control.monitor.total == 0
            assert r.control.stats.stage_changes - started[xid] >= 2
            # the heads show what the controller wrote
            assert (
                tuple(int(c) for c in cab.shown) == tuple(int(c) for c in r.control.output.signals)
                or r.stats.display_mismatches == 0
            )
            # the controller sees traffic through the loops
            assert sum(r.control.detectors.counts().values()) > 0


async def test_cut_link_falls_back_within_2_s_and_the_controller_resynchronises() -> None:
    async with site() as s:
        xid = s.xs[0].id
        r = s.service.runners[xid]
        cab = s.cabinets[xid]
        assert await wait_for(lambda: r.sync == "control", 10)
        await asyncio.sleep(3)
        cut_at = time.monotonic()
        cab.inject_link_down(6.0, mode="silent")
        assert await wait_for(lambda: cab.mode is CabinetMode.LOCAL_PLAN, 4)
        fell_back = time.monotonic() - cut_at
        # the heartbeat timeout is 2 s; the cabinet wakes at its deadline
        assert fell_back <= 2.3, fell_back
        assert cab.fault is FaultCode.HEARTBEAT_LOST
        assert await wait_for(lambda: r.sync == "down", 4)
        # the other intersection is not disturbed by the dead link
        other = s.service.runners[s.xs[1].id]
        assert other.sync == "control"
        assert await wait_for(lambda: not cab.link_cut, 8)
        restored = time.monotonic()
        assert await wait_for(lambda: r.sync == "control", 40)
        back = time.monotonic() - restored
        await asyncio.sleep(5)
        print(
            f"{xid}: cabinet fell back after {fell_back:.2f} s, controller in control again "
            f"{back:.1f} s after the link returned (local plan wound down), "
            f"handovers {r.stats.handovers}, cabinet faults {cab.stats.faults}"
        )
        assert cab.mode is CabinetMode.FOLLOWING and cab.fault is FaultCode.NONE
        assert cab.stats.faults == 0
        assert r.control.stats.violations == 0
        assert r.stats.resyncs >= 1 and r.stats.handovers >= 2


async def test_garbage_registers_and_a_stuck_detector_are_handled() -> None:
    async with site() as s:
        x = s.xs[0]
        r = s.service.runners[x.id]
        cab = s.cabinets[x.id]
        assert await wait_for(lambda: r.sync == "control", 10)
        # a status register with a value the map does not know: the poll is refused, counted,
        # the controller keeps writing (the heartbeat goes on) and nothing falls back
        cab.inject_garbage(IR.STATUS, 77, seconds=1.0)
        assert await wait_for(lambda: r.stats.register_errors >= 3, 5)
        assert await wait_for(lambda: "register_error" in r.alarms, 5)
        assert await wait_for(lambda: "register_error" not in r.alarms, 5)
        assert r.sync == "control" and cab.mode is CabinetMode.FOLLOWING
        # a detector counter that jumps around: erratic → failed → constant call
        ch = next(d.channel for d in x.config.detectors if d.id == "E_T-stop")
        assert ch is not None
        for value in (9000, 100, 40000, 7):
            cab.inject_garbage(IR.DET_COUNT + ch, value, seconds=0.4)
            await asyncio.sleep(0.5)
        assert await wait_for(lambda: r.control.detectors.failed("E_T-stop"), 5)
        assert "detector:E_T-stop" in r.alarms
        view = r.control.view
        assert view is not None and view.group("E_T").failed
        # its movement is never starved: E_T keeps a call and is served
        e_t = x.index["E_T"]
        served = r.control.stats.stage_changes

        def e_t_green() -> bool:
            return r.control.output.signals[e_t] == 3

        assert await wait_for(e_t_green, 60)
        assert r.control.stats.stage_changes > served
        assert cab.stats.faults == 0 and r.control.stats.violations == 0


@dataclass
class Restart:
    """A second controller started on the same cabinets, watched every 10 ms: when each
    runner first read its cabinet and first was in control, and every change of the heads."""

    service: SignalsService
    task: asyncio.Task[None]
    cabinets: dict[str, SimulatedCabinet]
    started: float = field(default_factory=time.monotonic)
    first_read: dict[str, float] = field(default_factory=dict)
    control_at: dict[str, float] = field(default_factory=dict)
    #: When the engine's greens started, as first seen in control (adoption: its moment).
    green_from: dict[str, float | None] = field(default_factory=dict)
    stage: dict[str, str | None] = field(default_factory=dict)
    changes: dict[str, list[tuple[float, tuple[int, ...]]]] = field(default_factory=dict)
    _watch: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = {xid: cab.shown for xid, cab in self.cabinets.items()}
        while True:
            now = time.monotonic()
            for xid, r in self.service.runners.items():
                if r.stats.reads and xid not in self.first_read:
                    self.first_read[xid] = now
                if r.sync == "control" and xid not in self.control_at:
                    self.control_at[xid] = now
                    since = [t for t in r.control.output.green_since if t is not None]
                    self.green_from[xid] = min(since, default=None)
                    self.stage[xid] = r.control.output.stage
                shown = self.cabinets[xid].shown
                if shown != last[xid]:
                    self.changes.setdefault(xid, []).append((now, shown))
                    last[xid] = shown
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        for t in (self._watch, self.task):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t


async def kill_when(s: Site, ready: Callable[[str, tuple[int, ...]], bool], within: float) -> None:
    """Cancel the first controller (a crash: it writes nothing more) at a moment when
    ``ready(xid, shown)`` holds for every cabinet that it drives and that shows exactly the
    controller's latest outputs — so no write still in flight can change the heads after."""
    runners = s.service.runners

    def now_ready() -> bool:
        for xid, cab in s.cabinets.items():
            shown = cab.shown
            ours = tuple(int(c) for c in runners[xid].control.output.signals)
            if cab.mode is not CabinetMode.FOLLOWING or shown != ours or not ready(xid, shown):
                return False
        return True

    assert await wait_for(lambda: all(r.sync == "control" for r in runners.values()), 10)
    assert await wait_for(now_ready, within, 0.005), {
        xid: cab.shown for xid, cab in s.cabinets.items()
    }
    s.task.cancel()  # no await between the check and the cancel
    with contextlib.suppress(asyncio.CancelledError):
        await s.task


def restart(s: Site) -> Restart:
    """A fresh controller on the same cabinets (new links, new runners, heartbeat from 0)."""
    links = {x.id: link_for(with_port(x, s.cabinets[x.id].port)) for x in s.xs}
    fresh = SignalsService(
        s.cfg.signals,
        s.xs,
        time.monotonic,
        links,
        mqtt=None,
        topics=Topics("t"),
        local_time=_local,
    )
    r = Restart(fresh, asyncio.create_task(fresh.run()), s.cabinets)
    r._watch = asyncio.create_task(r._run())
    return r


def _clean(x: Intersection, shown: tuple[int, ...]) -> bool:
    try:
        shown_stage(x, shown)
    except NotAdoptable:
        return False
    return True


async def test_a_controller_restart_while_the_cabinet_still_follows_adopts_the_stage_shown() -> (
    None
):
    """The controller dies while both cabinets show a clean stage (its greens, the rest red)
    and a new one starts within the heartbeat timeout: it takes the stage over at its first
    read — in control at once, the same outputs written with its own heartbeat, nothing
    changing on the heads and no local plan — and runs on from there with no fault on either
    side; the stage's greens end no sooner than their minimum after the adoption."""
    async with site() as s:
        xs = {x.id: x for x in s.xs}
        plan_entries = {xid: cab.stats.local_plan_entries for xid, cab in s.cabinets.items()}
        await kill_when(s, lambda xid, shown: _clean(xs[xid], shown), 30)
        killed_at = time.monotonic()
        shown_at_kill = {xid: cab.shown for xid, cab in s.cabinets.items()}
        modes_at_kill = {xid: len(cab.core.transitions) for xid, cab in s.cabinets.items()}
        again = restart(s)
        try:
            assert await wait_for(lambda: len(again.control_at) == len(xs), 5), again.control_at
            # Until the engine's first own change on every cabinet (the adopted stage ends
            # through its clearance at the earliest at its minimum green after the adoption).
            assert await wait_for(lambda: len(again.changes) == len(xs), 30), again.changes
            await asyncio.sleep(1)
            for xid, r in again.service.runners.items():
                cab = s.cabinets[xid]
                x = xs[xid]
                first_read, control_at = again.first_read[xid], again.control_at[xid]
                adopted_at = again.green_from[xid]
                assert adopted_at is not None and first_read - 0.2 <= adopted_at <= control_at
                changes = again.changes.get(xid, [])
                first_change = changes[0][0] if changes else math.inf
                greens = [i for i, c in enumerate(shown_at_kill[xid]) if c == int(Signal.GREEN)]
                least_min = min(x.groups[i].min_green_total_s for i in greens)
                print(
                    f"{xid}: killed showing {shown_at_kill[xid]}; new controller's first read "
                    f"{first_read - again.started:.2f} s after its start "
                    f"({first_read - killed_at:.2f} s after the kill), in control "
                    f"{control_at - first_read:.2f} s after it in stage {again.stage[xid]}; "
                    f"first change on the heads "
                    f"{first_change - control_at:.1f} s after that"
                )
                assert r.stats.adoptions == 1 and r.stats.handovers == 0, r.stats
                assert again.stage[xid] == shown_stage(x, shown_at_kill[xid])[0]
                assert control_at - first_read <= 0.5
                # Nothing changed on the heads, the cabinet never left following.
                assert first_change - adopted_at >= least_min - 1e-3, changes
                assert cab.stats.local_plan_entries == plan_entries[xid]
                assert len(cab.core.transitions) == modes_at_kill[xid], cab.core.transitions
                assert cab.mode is CabinetMode.FOLLOWING and r.sync == "control"
                assert cab.stats.faults == 0 and cab.fault is FaultCode.NONE
                assert r.control.stats.violations == 0 and r.control.monitor.total == 0
        finally:
            await again.stop()


async def test_a_controller_restart_during_a_clearance_takes_the_stage_change_over() -> None:
    """The controller dies while a cabinet shows a yellow, and a new one starts within the
    heartbeat timeout: it takes the stage change over as it stands — in control at its first
    read, the same outputs written, no local plan, no all-red start of its own (which would cut
    the yellow short) — and the yellow lasts its full clearance from the adoption; no fault on
    either side."""
    async with site() as s:
        target = s.xs[0]
        yellow = int(Signal.YELLOW)
        plan_entries = s.cabinets[target.id].stats.local_plan_entries
        await kill_when(s, lambda xid, shown: xid != target.id or yellow in shown, 40)
        shown_at_kill = s.cabinets[target.id].shown
        clearing = [i for i, c in enumerate(shown_at_kill) if c == yellow]
        again = restart(s)
        try:
            assert await wait_for(lambda: len(again.control_at) == len(s.xs), 30)
            assert await wait_for(
                lambda: any(
                    sh[clearing[0]] != yellow for _, sh in again.changes.get(target.id, [])
                ),
                15,
            ), again.changes
            await asyncio.sleep(1)
            r, cab = again.service.runners[target.id], s.cabinets[target.id]
            first_read, control_at = again.first_read[target.id], again.control_at[target.id]
            ended = [t for t, sh in again.changes[target.id] if sh[clearing[0]] != yellow]
            print(
                f"{target.id}: killed showing {shown_at_kill}; in control "
                f"{control_at - first_read:.2f} s after the first read (adopted, "
                f"{cab.stats.local_plan_entries - plan_entries} local-plan entries); the yellow "
                f"ended {ended[0] - control_at:.1f} s after that (clearance "
                f"{target.clearance[clearing[0]]:g} s)"
            )
            assert r.stats.adoptions == 1 and r.stats.handovers == 0, r.stats
            assert control_at - first_read <= 0.5
            assert cab.stats.local_plan_entries == plan_entries
            # The first change on the heads after the kill is the yellow's end, no sooner
            # than its full clearance after the adoption.
            assert ended[0] - first_read >= target.clearance[clearing[0]] - 0.15, again.changes
            for xid, rr in again.service.runners.items():
                c = s.cabinets[xid]
                assert rr.sync == "control" and c.mode is CabinetMode.FOLLOWING, xid
                assert c.stats.faults == 0 and c.fault is FaultCode.NONE, xid
                assert rr.control.stats.violations == 0, xid
        finally:
            await again.stop()


async def test_a_controller_restart_after_the_heartbeat_timeout_hands_over_through_all_red() -> (
    None
):
    """The new controller comes after the cabinets' watchdog fired: they run their local plan
    (fault HEARTBEAT_LOST). Nothing is adopted; each cabinet winds its plan down and hands the
    heads over in all red, with no fault on either side."""
    async with site() as s:
        await kill_when(s, lambda xid, shown: True, 10)
        handovers = {xid: cab.stats.handovers for xid, cab in s.cabinets.items()}
        assert await wait_for(
            lambda: all(c.mode is CabinetMode.LOCAL_PLAN for c in s.cabinets.values()), 3
        )
        again = restart(s)
        try:
            assert await wait_for(lambda: len(again.control_at) == len(s.xs), 40)
            await asyncio.sleep(2)
            for xid, r in again.service.runners.items():
                cab = s.cabinets[xid]
                print(
                    f"{xid}: in control {again.control_at[xid] - again.first_read[xid]:.1f} s "
                    f"after the first read, through all red"
                )
                assert r.stats.adoptions == 0 and r.stats.adoptions_refused == 0
                assert r.stats.handovers == 1 and cab.stats.handovers == handovers[xid] + 1
                assert cab.stats.faults == 0 and cab.fault is FaultCode.NONE
                assert r.control.stats.violations == 0 and r.sync == "control"
        finally:
            await again.stop()


async def test_a_safety_violation_flashes_the_intersection_until_cleared() -> None:
    async with site() as s:
        x = s.xs[1]
        r = s.service.runners[x.id]
        cab = s.cabinets[x.id]
        assert await wait_for(lambda: r.sync == "control", 10)
        await asyncio.sleep(2)
        # a bug in the engine: it shows every vehicle group green at once
        real = r.control.engine.step

        def broken(now: float, request: object) -> object:
            out = real(now, request)  # type: ignore[arg-type]
            sig = tuple(
                Signal.GREEN if g.kind.value == "vehicle" else s_
                for g, s_ in zip(x.groups, out.signals, strict=True)
            )
            return out._replace(signals=sig)

        r.control.engine.step = broken  # type: ignore[assignment, method-assign]
        assert await wait_for(lambda: r.sync == "flash", 5)
        assert "safety_violation" in r.alarms and r.control.stats.violations >= 1
        # the cabinet was asked to flash; the bad output never reached the heads
        assert await wait_for(lambda: cab.mode is CabinetMode.FLASH_REQUESTED, 5)
        assert cab.stats.faults == 0
        r.control.engine.step = real  # type: ignore[method-assign]
        await asyncio.sleep(1)
        assert r.sync == "flash"  # it stays in flash until a person clears it
        r.clear_flash()
        assert await wait_for(lambda: r.sync == "control", 15)
        assert await wait_for(lambda: r.control.output.phase == "green", 10)
        assert cab.mode is CabinetMode.FOLLOWING and cab.stats.faults == 0
        print(
            f"{x.id}: violation → flash requested; cleared → back in control after "
            f"{r.stats.handovers} hand-overs, cabinet faults {cab.stats.faults}"
        )


async def test_a_latched_cabinet_fault_is_reported_and_reset_by_an_operator() -> None:
    async with site() as s:
        x = s.xs[0]
        r = s.service.runners[x.id]
        cab = s.cabinets[x.id]
        assert await wait_for(lambda: r.sync == "control", 10)
        # Something outside the controller breaks a rule at the cabinet (a second writer on
        # the Modbus network, say): its own monitor latches flash.
        n = len(x.groups)
        bad = [3] * n
        cab.core.write_holding(cab.clock(), HR.HEARTBEAT, encode_outputs(bad, 40000, 0))
        assert await wait_for(lambda: cab.mode is CabinetMode.FLASH, 5)
        assert await wait_for(lambda: r.sync == "cabinet_fault", 5)
        assert "cabinet_fault" in r.alarms and "CONFLICT" in r.alarms["cabinet_fault"]
        await asyncio.sleep(1)
        assert cab.mode is CabinetMode.FLASH  # latched: the controller does not reset it alone
        r.reset_cabinet_fault()
        assert await wait_for(lambda: r.sync == "control", 20)
        assert "cabinet_fault" not in r.alarms
        assert cab.mode is CabinetMode.FOLLOWING and cab.stats.fault_resets == 1


async def test_camera_counts_over_mqtt_feed_the_detector_bank_and_bad_ones_are_dropped(
    mosquitto: Mosquitto, mqtt_prefix: str
) -> None:
    cfg = load_config(ROOT / "config.yaml")
    xs = cfg.intersections()
    topics = Topics(mqtt_prefix)
    link = MqttLink(MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id="ctl-cam"))
    links = {x.id: link_for(with_port(x, 9)) for x in xs}  # nobody there: cameras only
    service = SignalsService(
        cfg.signals, xs, time.monotonic, links, mqtt=link, topics=topics, local_time=_local
    )
    pub = MqttLink(MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id="cam-1"))
    tasks = [asyncio.create_task(link.run()), asyncio.create_task(pub.run())]
    try:
        assert await link.wait_connected(10) and await pub.wait_connected(10)
        r = service.runners["ql1a-lct"]
        good = CameraCounts(
            intersection="ql1a-lct",
            camera="cam-lct-n",
            ts=dt.datetime.now(dt.UTC),
            interval_s=10,
            lanes=[LaneCount(lane=1, group="N_T", count=4, queue=7)],
        )
        topic = camera_topic(topics, "ql1a-lct", "cam-lct-n")
        await pub.publish(topic, encode(good))
        assert await wait_for(lambda: r.stats.camera_messages == 1, 5)
        view = r.control.detectors.view(time.monotonic())
        assert view.group("N_T").queue == 7.0
        # bad ones: not JSON, a wrong type, a queue out of range, a camera on another topic,
        # a camera nobody configured; none changes the queue, each is counted
        await pub.publish(topic, b"\x00\xff not json")
        await pub.publish(topic, encode(good).replace(b'"count":4', b'"count":"four"'))
        await pub.publish(topic, encode(good).replace(b'"queue":7', b'"queue":9999'))
        await pub.publish(camera_topic(topics, "ql1a-lct", "cam-lct-s"), encode(good))
        ghost = good.model_copy(update={"camera": "cam-ghost"})
        await pub.publish(camera_topic(topics, "ql1a-lct", "cam-ghost"), encode(ghost))
        assert await wait_for(lambda: service.drops.total == 5, 5), service.drops.by_reason
        assert r.control.detectors.view(time.monotonic()).group("N_T").queue == 7.0
    finally:
        await pub.close()
        await link.close()
        for t in tasks:
            t.cancel()
