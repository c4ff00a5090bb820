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
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from controller.config import CityConfig, load_config
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


async def test_a_controller_restart_while_the_cabinet_still_follows_hands_over_safely() -> None:
    """The controller process dies and a new one starts within the heartbeat timeout: the
    cabinet still shows the old controller's outputs (greens included). The new controller
    must not jump to its own all-red start (green → red with no yellow): it asks for the local
    plan, which clears those greens properly, then takes over through all red."""
    async with site() as s:
        runners = s.service.runners
        assert await wait_for(lambda: all(r.sync == "control" for r in runners.values()), 10)
        await asyncio.sleep(6)  # some greens are showing
        s.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await s.task
        showing = {xid: tuple(cab.shown) for xid, cab in s.cabinets.items()}
        assert any(3 in shown for shown in showing.values())  # a green stays up meanwhile
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
        task = asyncio.create_task(fresh.run())
        try:
            assert await wait_for(
                lambda: all(r.sync == "control" for r in fresh.runners.values()), 40
            )
            await asyncio.sleep(3)
            for xid, r in fresh.runners.items():
                cab = s.cabinets[xid]
                print(
                    f"{xid}: restarted controller in control after {r.stats.handovers} hand-over, "
                    f"cabinet local-plan entries {cab.stats.local_plan_entries}, faults {cab.stats.faults}"
                )
                assert cab.stats.faults == 0 and cab.fault is FaultCode.NONE
                assert r.control.stats.violations == 0
                assert cab.stats.local_plan_entries >= 1 or all(c == 1 for c in showing[xid])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
            return replace(out, signals=sig)

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
