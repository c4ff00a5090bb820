"""``cityctl sim …``: run simulated devices against any broker, and poke them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

from controller.config import CityConfig
from devices.lights import SimFault, Topics, encode
from devices.mqtt import MqttLink, MqttSettings
from simulator.lights import LightSimulator, NodeSpec

__all__ = ["parse_shard", "run_sim_cabinets", "run_sim_lights", "send_fault"]

log = logging.getLogger("cityctl.sim")


def _parse_faults(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        node, sep, kind = item.partition("=")
        if not sep or not node or not kind:
            raise SystemExit(f"--fault {item!r}: expected NODE=KIND, e.g. SIM-0003=lamp_failure")
        out.append((node, kind))
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)`` with ``1 ≤ I ≤ N``; ValueError says what is wrong."""
    i, sep, n = text.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit():
        raise ValueError(f"{text!r}: expected I/N, e.g. 2/4")
    a, b = int(i), int(n)
    if not 1 <= a <= b:
        raise ValueError(f"{text!r}: I must be 1..N")
    return a, b


def _write_stats(path: Path, sim: LightSimulator) -> None:
    """The counters as JSON, replaced atomically (a reader never sees half a file)."""
    data = dataclasses.asdict(sim.stats)
    data.pop("invalid_by_node", None)
    data["connections"] = sim.connections
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


async def run_sim_lights(args: argparse.Namespace, cfg: CityConfig | None) -> int:
    """Run nodes from ``--count`` or ``--config`` until Ctrl-C."""
    try:
        settings = MqttSettings.from_url(args.broker, client_id="cityctl-sim")
    except ValueError as exc:
        print(f"--broker: {exc}", file=sys.stderr)
        return 2
    if cfg is not None:
        specs = [NodeSpec(n, g.id, w, m) for g, n, w, m in cfg.nodes()]
        prefix = cfg.mqtt.prefix
        fallback = cfg.lighting.fallback_after_s
    else:
        if args.count <= 0:
            print("--count: must be at least 1", file=sys.stderr)
            return 2
        width = max(4, len(str(args.count)))
        specs = [
            NodeSpec(f"SIM-{i:0{width}d}", args.group, args.lamp_w)
            for i in range(1, args.count + 1)
        ]
        prefix = args.prefix
        fallback = args.fallback_after
    shard = getattr(args, "shard", None)
    if shard:
        try:
            i, n = parse_shard(shard)
        except ValueError as exc:
            print(f"--shard: {exc}", file=sys.stderr)
            return 2
        specs = specs[(i - 1) * len(specs) // n : i * len(specs) // n]
        if not specs:
            print(f"--shard: slice {shard} of the nodes is empty", file=sys.stderr)
            return 2
    gateway = getattr(args, "gateway_size", None)
    if gateway is not None and gateway < 1:
        print("--gateway-size: must be at least 1", file=sys.stderr)
        return 2
    report_s = getattr(args, "report_interval", 30.0)
    tick_hz = getattr(args, "tick_hz", 5.0)
    if report_s <= 0 or tick_hz <= 0:
        print("--report-interval and --tick-hz: must be positive", file=sys.stderr)
        return 2
    stats_path = Path(args.stats_file) if getattr(args, "stats_file", None) else None
    faults = _parse_faults(args.fault)
    sim = LightSimulator(
        settings,
        specs,
        prefix=prefix,
        fallback_after_s=fallback,
        report_interval_s=report_s,
        tick_hz=tick_hz,
        gateway_size=gateway,
    )
    for node, _kind in faults:
        if node not in sim.node_ids:
            print(f"--fault: no node {node!r}", file=sys.stderr)
            return 2
    await sim.start()
    from controller.cli import tune_gc

    tune_gc()  # thousands of long-lived node models: see tune_gc
    log.info(
        "%d simulated nodes online (%.2f s) on %s, prefix %s, %d connections",
        sim.stats.online,
        sim.stats.connect_s or 0,
        args.broker,
        prefix,
        sim.connections,
    )
    for node, kind in faults:
        sim.inject(node, kind)
        log.info("fault %s injected on %s", kind, node)
    try:
        tick = 0
        while True:
            await asyncio.sleep(1.0 if stats_path is not None else 60.0)
            tick += 1
            if stats_path is not None:
                _write_stats(stats_path, sim)
            if stats_path is None or tick % 60 == 0:
                s = sim.stats
                log.info(
                    "nodes online %d/%d, commands applied %d, stale %d, invalid %d",
                    s.online,
                    s.nodes,
                    s.commands_applied,
                    s.commands_stale,
                    s.invalid,
                )
    finally:
        await sim.stop()
        if stats_path is not None:
            _write_stats(stats_path, sim)  # the final count, after the goodbyes


async def send_fault(args: argparse.Namespace) -> int:
    """Publish one SimFault message and exit."""
    try:
        settings = MqttSettings.from_url(args.broker, client_id="cityctl-sim-fault")
    except ValueError as exc:
        print(f"--broker: {exc}", file=sys.stderr)
        return 2
    topics = Topics(args.prefix)
    link = MqttLink(settings)
    task = asyncio.create_task(link.run())
    try:
        if not await link.wait_connected(5.0):
            print(f"cannot reach the broker at {args.broker}", file=sys.stderr)
            return 1
        msg = SimFault(fault=args.fault, active=not args.clear)
        await link.publish(topics.sim_fault(args.node), encode(msg), qos=1)
        print(f"{'cleared' if args.clear else 'injected'} {args.fault} on {args.node}")
        return 0
    finally:
        await link.close()
        task.cancel()


async def run_sim_cabinets(args: argparse.Namespace, cfg: CityConfig) -> int:
    """Simulated cabinets (and cameras) for every intersection of ``cfg`` until Ctrl-C."""
    from controller.sim_signals import SimulatedSite

    xs = cfg.intersections()
    if not xs:
        print("the config has no intersections (signals.intersections)", file=sys.stderr)
        return 2
    if not 0 <= args.port_base <= 65535 - len(xs):
        print("--port-base: must leave room for one port per intersection", file=sys.stderr)
        return 2
    if not 0 <= args.level <= 3:
        print("--level: a share of the peak hour, 0..3", file=sys.stderr)
        return 2
    link: MqttLink | None = None
    link_task: asyncio.Task[None] | None = None
    if args.broker:
        try:
            settings = MqttSettings.from_url(args.broker, client_id="cityctl-sim-cameras")
        except ValueError as exc:
            print(f"--broker: {exc}", file=sys.stderr)
            return 2
        link = MqttLink(settings)
        link_task = asyncio.create_task(link.run())
    ports = {x.id: (args.port_base + k if args.port_base else 0) for k, x in enumerate(xs)}
    tz = cfg.location.tz
    publish = None
    if link is not None:
        mqtt = link

        async def publish_camera(topic: str, payload: bytes) -> None:
            await mqtt.publish(topic, payload, qos=0)

        publish = publish_camera
    site = SimulatedSite(
        xs,
        cfg.signals,
        host=args.host,
        ports=ports,
        level=args.level,
        start_local=dt.datetime.now(tz) if args.time_of_day else None,
        seed=args.seed,
        fallback=args.fallback,
        publish=publish,
        topics=Topics(cfg.mqtt.prefix),
    )
    try:
        await site.start()
    except OSError as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        if link is not None:
            await link.close()
        return 1
    flags = " ".join(f"--cabinet {xid}={h}:{p}" for xid, (h, p) in site.addresses.items())
    for xid, (h, p) in site.addresses.items():
        log.info("cabinet %s on modbus tcp %s:%d", xid, h, p)
    log.info("point a controller at them: cityctl run --config %s %s", args.config, flags)
    try:
        if args.duration is not None:
            await asyncio.sleep(args.duration)
        else:
            while True:
                await asyncio.sleep(60)
                for xid, cab in site.cabinets.items():
                    log.info(
                        "%s: %s (fault %s), %d commits, %d faults",
                        xid,
                        cab.mode.name,
                        cab.fault.name,
                        cab.stats.commits,
                        cab.stats.faults,
                    )
    finally:
        await site.stop()
        if link is not None:
            await link.close()
        if link_task is not None:
            link_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link_task
    return 0
