"""``cityctl demo``: the controller and a simulated district on one machine, no services needed.

It starts an embedded MQTT broker (amqtt, pure Python) on a loopback port, simulated light
nodes for every node of the config, traffic counters for every counted road segment, and the
controller — all on one accelerated clock, so a night passes in minutes. A few faults are
injected on the way so the logs show the controller detecting them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import shutil
import socket
from dataclasses import dataclass
from typing import Any

from controller.aio import cancel_and_wait
from controller.bench.mosquitto import free_port
from controller.clock import ScaledClock
from controller.config import CityConfig
from controller.runtime import Controller
from controller.sim_signals import SimulatedSite
from devices.cabinet import IR
from devices.lights import Topics
from devices.mqtt import MqttLink, MqttSettings
from schedules.model import StepTime
from schedules.sun import sun_event
from simulator.lights import LightSimulator, NodeSpec
from simulator.traffic import CounterStats, RoadKind, TrafficSegment, run_traffic_counters

__all__ = ["EmbeddedBroker", "run_demo", "segments_for"]

log = logging.getLogger("cityctl.demo")


class EmbeddedBroker:
    """An in-process MQTT broker for the demo (amqtt); tests use a real Mosquitto instead."""

    def __init__(self, port: int = 0) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._broker: Any = None

    async def start(self) -> None:
        """Listen on loopback, anonymous access (nothing leaves the machine)."""
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._broker = Broker(config)
        await self._broker.start()

    async def stop(self) -> None:
        """Shut the broker down."""
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await self._broker.shutdown()
            self._broker = None


@dataclass(frozen=True)
class _SimClockAdapter:
    """The simulator's clock interface on top of the controller's clock: one time for all."""

    clock: ScaledClock

    def monotonic(self) -> float:
        return self.clock.monotonic()

    def wall(self) -> dt.datetime:
        return self.clock.now()


def segments_for(cfg: CityConfig) -> list[TrafficSegment]:
    """Counted segments of the config with a believable demand: kind from the design class."""
    out: dict[str, TrafficSegment] = {}
    for g in cfg.lighting.groups:
        if g.traffic_segment is None or g.traffic_segment in out:
            continue
        idx = g.lighting_class.number
        kind = (
            RoadKind.ARTERIAL
            if idx <= 3
            else RoadKind.COLLECTOR
            if idx == 4
            else RoadKind.RESIDENTIAL
        )
        out[g.traffic_segment] = TrafficSegment(g.traffic_segment, kind, 0.75 * g.capacity_vph)
    return list(out.values())


def start_instant(cfg: CityConfig, start: str, today: dt.date | None = None) -> dt.datetime:
    """When the demo clock starts: ``HH:MM``, an ISO date-time, or a sun event of today
    such as ``sunset-30min``."""
    tz = cfg.location.tz
    day = today or dt.datetime.now(tz).date()
    try:
        return dt.datetime.combine(day, dt.time.fromisoformat(start), tz)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(start)
        return when if when.tzinfo else when.replace(tzinfo=tz)
    except ValueError:
        pass
    try:
        st = StepTime.parse(start)
    except ValueError:
        raise ValueError(
            f"--start {start!r}: use HH:MM, an ISO date-time or e.g. sunset-30min"
        ) from None
    ev = sun_event(cfg.location, day, st.anchor)
    if ev.at is None:
        raise ValueError(f"--start {start!r}: there is no {st.anchor.value} today at this site")
    return ev.at + st.offset


# Faults injected during the demo: (hours after start, node, fault, active).
DEMO_FAULTS: tuple[tuple[float, str, str, bool], ...] = (
    (1.5, "LCT-007", "lamp_failure", True),
    (2.5, "QL-013", "node_offline", True),
    (3.5, "QL-013", "node_offline", False),
    (4.0, "THD-021", "driver_failure", True),
    (5.0, "LCT-007", "lamp_failure", False),
)


async def run_demo(
    cfg: CityConfig,
    *,
    speed: float = 120.0,
    start: str = "sunset-30min",
    duration_s: float | None = None,
    broker_port: int = 0,
    faults: bool = True,
    api_port: int | None = None,
) -> int:
    """Run the demo until cancelled or for ``duration_s`` real seconds."""
    # One process simulates the whole city, so a config's districts do not apply here.
    cfg = cfg.whole_city()
    clock = ScaledClock(start_instant(cfg, start), speed)
    # Nodes report on a 5 Hz real-time tick; at a high speed-up that is minutes of clock
    # time, so the "silent node" threshold is stretched to at least 10 real seconds, and the
    # nodes' periodic report to at least every 3 real seconds: 200 nodes reporting every
    # clock minute at 900× would be 3,000 messages a second, more than the pure-Python
    # embedded broker carries, and every command would then arrive stale.
    # The same holds for the per-node retry: give a node one real second to answer (within
    # the 600 s the config allows: two thirds of a second at 900×).
    lt = cfg.lighting
    faults_cfg = lt.faults.model_copy(
        update={"stale_after_s": max(lt.faults.stale_after_s, 10 * speed)}
    )
    lt = lt.model_copy(
        update={
            "faults": faults_cfg,
            "retry_after_s": min(600.0, max(lt.retry_after_s, 1.0 * speed)),
        }
    )
    # A demo keeps its state (telemetry in simulated time, overrides, the audit log) in a
    # directory of its own, started afresh each run; its telemetry never goes to a database.
    demo_state = cfg.controller.state_dir / "demo"
    shutil.rmtree(demo_state, ignore_errors=True)
    demo_outbox = demo_state / "telemetry.sqlite"
    tel = cfg.telemetry.model_copy(
        update={"influx": None, "outbox": cfg.telemetry.outbox.model_copy(update={"path": None})}
    )
    cfg = cfg.model_copy(
        update={
            "lighting": lt,
            "telemetry": tel,
            "controller": cfg.controller.model_copy(update={"state_dir": demo_state}),
        }
    )
    tz = cfg.location.tz
    started = clock.now()
    broker = EmbeddedBroker(broker_port)
    await broker.start()
    log.info(
        "embedded MQTT broker on mqtt://%s:%d — clock starts %s, %g× real time",
        broker.host,
        broker.port,
        clock.now().astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"),
        speed,
    )
    settings = MqttSettings(host=broker.host, port=broker.port, reconnect_max_s=2.0)
    specs = [NodeSpec(node, g.id, lamp_w, min_dim) for g, node, lamp_w, min_dim in cfg.nodes()]
    sim = LightSimulator(
        settings,
        specs,
        prefix=cfg.mqtt.prefix,
        fallback_after_s=cfg.lighting.fallback_after_s,
        report_interval_s=max(60.0, 3.0 * speed),
        clock=_SimClockAdapter(clock),
    )
    counters_link = MqttLink(
        MqttSettings(host=broker.host, port=broker.port, client_id="demo-counters")
    )

    async def publish(topic: str, payload: bytes) -> None:
        await counters_link.publish(topic, payload, qos=0)

    # The intersections: simulated cabinets on free loopback ports, traffic that follows the
    # demo clock's time of day, cameras on the embedded broker. Signals run in real time (the
    # cabinets' heartbeat watchdogs count real seconds); only the time of day is accelerated.
    xs = cfg.intersections()
    # Ports chosen up front, and the controller built before the cabinets: a cabinet's
    # heartbeat watchdog runs from the moment it is created, and building the controller
    # (validating the schedule) takes a moment the cabinet must not count.
    controller: Controller | None = None
    site: SimulatedSite | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        await sim.start()
        log.info(
            "%d simulated light nodes online in %.1f s", sim.stats.online, sim.stats.connect_s or 0
        )
        token = secrets.token_urlsafe(18)
        for attempt in range(3):
            # A port found free can be taken by another program before the cabinet binds it;
            # then the whole pair is built again on new ports.
            ports = {x.id: free_port() for x in xs}
            controller = Controller(
                cfg,
                clock=clock,
                mqtt=settings,
                cabinets={xid: ("127.0.0.1", port) for xid, port in ports.items()},
                api_tokens={"demo": ("admin", token)},
                api_port=api_port if api_port is not None else _free_or(8080),
            )
            if controller.signals is not None:
                controller.signals.summary_s = 10.0
            site = SimulatedSite(
                xs,
                cfg.signals,
                level=0.8,
                start_local=clock.now().astimezone(tz),
                time_scale=speed,
                seed="demo",
                publish=publish,
                topics=Topics(cfg.mqtt.prefix),
                ports=ports,
            )
            try:
                await site.start()
                break
            except (OSError, RuntimeError) as exc:  # pymodbus: "Could not start listen"
                await site.stop()
                controller.close()
                controller, site = None, None
                if attempt == 2:
                    raise
                log.warning("simulated cabinets could not listen (%s): new ports", exc)
        assert controller is not None and site is not None
        for xid, (h, p) in site.addresses.items():
            log.info("simulated cabinet %s on modbus tcp %s:%d", xid, h, p)
        await controller.start()
        if controller.api is not None:
            log.info(
                "engineers' page: %s/ — token (admin): %s   (API: curl -H 'Authorization:"
                " Bearer %s' %s/api/v1/groups)",
                controller.api.url,
                token,
                token,
                controller.api.url,
            )
        tasks.append(asyncio.create_task(counters_link.run(), name="counters-link"))

        tasks.append(
            asyncio.create_task(
                run_traffic_counters(
                    publish,
                    controller.topics,
                    segments_for(cfg),
                    clock.now,
                    interval_s=300,
                    time_scale=speed,
                    timezone=tz,
                    seed="demo",
                    stats=CounterStats(),
                ),
                name="traffic-counters",
            )
        )
        if faults:
            tasks.append(asyncio.create_task(_inject_faults(sim, clock, controller), name="faults"))
            tasks.append(asyncio.create_task(_signal_faults(site), name="signal-faults"))
        if duration_s is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration_s)
    finally:
        # Who drove the heads when the demo ended (stopping the controller ends that).
        syncs = (
            {xid: r.sync for xid, r in controller.signals.runners.items()}
            if controller is not None and controller.signals is not None
            else {}
        )
        await cancel_and_wait(tasks)
        if controller is not None:
            await controller.stop()
        if site is not None:
            await site.stop()  # its cameras publish through the counters link: stop them first
        await counters_link.close()
        await sim.stop()
        await broker.stop()
    if controller is None or site is None:
        return 1
    if controller.signals is not None:
        for xid, r in controller.signals.runners.items():
            cab = site.cabinets[xid]
            log.info(
                "demo over, %s: %s, %d stage changes, %d controller safety violations, "
                "%d cabinet monitor faults, %d hand-overs",
                xid,
                syncs.get(xid, r.sync),
                r.control.stats.stage_changes,
                r.control.stats.violations,
                cab.stats.faults,
                r.stats.handovers,
            )
    st = controller.lighting.stats
    status = controller.lighting.core.status()
    following = sum(g.nodes_converged for g in status)
    log.info("demo over: %d of %d nodes follow their group's level", following, len(specs))
    log.info(
        "demo over at %s: %d group commands, %d node retries, %d node states, %d counts, "
        "%d bad payloads dropped",
        clock.now().astimezone(tz).strftime("%H:%M"),
        st.group_commands,
        st.node_retries,
        st.states,
        st.counts,
        controller.lighting.drops.total,
    )
    if controller.telemetry is not None:
        ts = controller.telemetry.recorder.stats
        log.info(
            "demo over: %d telemetry points recorded in %s — see them with: cityctl telemetry"
            " export --outbox %s --since %s --format csv",
            ts.recorded,
            demo_outbox,
            demo_outbox,
            started.astimezone(tz).strftime("%Y-%m-%dT%H:%M"),
        )
    return 0


async def _inject_faults(sim: LightSimulator, clock: ScaledClock, controller: Controller) -> None:
    for hours, node, fault, active in DEMO_FAULTS:
        if node not in sim.node_ids:
            continue
        wait = hours * 3600 - clock.monotonic()
        if wait > 0:
            await asyncio.sleep(wait / clock.speed)
        verb = "injecting" if active else "clearing"
        log.info("demo: %s %s on %s", verb, fault, node)
        if active:
            sim.inject(node, fault)
        else:
            sim.clear(node, fault)


# Signal faults injected during the demo: (real seconds after start, intersection, what).
DEMO_SIGNAL_FAULTS: tuple[tuple[float, str, str], ...] = (
    (45.0, "ql1a-thd", "cut the cabinet link for 6 s"),
    (90.0, "ql1a-lct", "scramble the counter of detector W_T-stop"),
)


async def _signal_faults(site: SimulatedSite) -> None:
    started = asyncio.get_running_loop().time()
    for at, xid, what in DEMO_SIGNAL_FAULTS:
        cab = site.cabinets.get(xid)
        if cab is None:
            continue
        wait = at - (asyncio.get_running_loop().time() - started)
        if wait > 0:
            await asyncio.sleep(wait)
        log.info("demo: %s: %s", xid, what)
        if what.startswith("cut"):
            cab.inject_link_down(6.0, mode="silent")
            continue
        det = what.split()[-1]
        x = next(x for x in site.intersections if x.id == xid)
        ch = next(d.channel for d in x.config.detectors if d.id == det)
        if ch is None:
            continue
        # Counts that jump by thousands: erratic three times in a row, and the detector
        # bank declares the loop failed (its movement then gets a constant call).
        for value in (9000, 120, 40000):
            cab.inject_garbage(IR.DET_COUNT + ch, value, 0.5)
            await asyncio.sleep(0.7)


def _free_or(port: int) -> int:
    """``port`` if nothing listens there, else 0 (any free port)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port
