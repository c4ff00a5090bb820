"""``cityctl``: the one command-line entry point.

Subcommands::

    cityctl validate FILE                      check a config, print every problem
    cityctl config schema                      JSON Schema of config.yaml for editors
    cityctl schedule preview --group G --date D | --year Y
    cityctl run [--config FILE] [--cabinet ID=HOST:PORT] [--district D]
                                               run the controller against the configured broker
    cityctl demo                               controller + simulated district, embedded broker
    cityctl sim lights --count N | --config F  simulated light nodes on a broker
    cityctl sim fault --node N --fault KIND    inject (or --clear) a fault in a simulated node
    cityctl sim cabinets [--config F]          simulated signal cabinets (Modbus TCP) + cameras
    cityctl bench lighting --year Y [--json]   a year of the district: energy and class safety
    cityctl bench signals [--json]             fixed vs actuated vs adaptive on the traffic model
    cityctl bench sumo --sumocfg F --controller NAME [--json] [--keep DIR]
    cityctl bench scale --lights N --intersections M [--duration S] [--json]
                                               the system at scale: CPU, RSS, fan-out, lost
                                               one SUMO scenario: delay and displayed safety
    cityctl sumo import NET                    a SUMO network's traffic lights as config.yaml
    cityctl sumo scenarios [--out DIR]         build the project's SUMO scenario set
    cityctl check faults [--json]              the fault-survival suite as a table
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.runtime import Controller

__all__ = ["main"]

DEFAULT_CONFIG = "config.yaml"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Library chatter is noise for operators; our own loggers say what matters.
    for noisy in ("transitions", "apscheduler", "matplotlib", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The embedded broker complains about undelivered messages at every shutdown.
    logging.getLogger("amqtt").setLevel(logging.ERROR)


#: Young-generation pass every this many allocations (CPython's default: 700).
GC_YOUNG_EVERY = 2_000
#: Middle-generation pass every this many young passes (default 10).
GC_MIDDLE_EVERY = 50
#: Full pass every this many middle passes (default 10).
GC_FULL_EVERY = 100


def tune_gc() -> None:
    """Keep the cyclic garbage collector's pauses short in a long-running process.

    Everything built so far (config, schedules, code, the API) lives as long as the process:
    ``gc.freeze()`` takes it out of the collector's sight. What a young pass then walks is the
    young working set — the signal loops' latest readings and views, messages in flight —
    and, until the nodes' states were kept in place (:mod:`controller.lighting.report`), the
    node states received since the last pass. A pass's pause grows with the time between
    passes while the total stays the same; the thresholds choose many short pauses over few
    long ones, because a pause is added to whatever is in flight — a group command's fan-out,
    a signal step. Measured at full size (10,000 lights, 100 intersections, ``cityctl bench
    scale``, the collector's own callbacks): a young pass every 10,000 allocations paused
    50-60 ms every ~20 s; every 2,000, 5-22 ms every ~2.6 s, for ≈0.3 % of a core (with the
    states kept in place: ≈80 passes a minute, median 4-5 ms, at most 21 ms, ≈0.7 % of a
    core on a slower host). The middle generation used to hold every node's latest state
    (≈50 ms to walk), so it runs every 50th young pass (≈1-2 min: 22-40 ms now) instead of
    every 10th; the full pass every 100th middle pass (the default made a 100-180 ms full pass
    every ~3 s with 10,000 node states being replaced). Memory is still freed by reference
    counting at once; only cyclic garbage (a few API requests) waits a little longer.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_EVERY, GC_MIDDLE_EVERY, GC_FULL_EVERY)


#: ``CITYCTL_LOOP``: which event loop the commands run on (see :func:`_loop_factory`).
LOOP_ENV = "CITYCTL_LOOP"
_LOOPS = ("auto", "uvloop", "asyncio")


def _loop_factory(
    long_running: bool, env: Mapping[str, str] | None = None
) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The event loop a command runs on: its name and a factory (None: asyncio's own).

    The long-running processes (``cityctl run``, the simulators) run on uvloop when it is
    installed: the same asyncio API with its scheduling, timers and sockets in C (libuv). At
    full size it took the controller's CPU from 43.1 to 40.4 % of a core on average in four
    interleaved pairs (``docs/benchmarks.md``, *Scale*, seventh round). ``$CITYCTL_LOOP``
    chooses: ``auto`` (the default: uvloop for those, asyncio for the rest), ``uvloop`` (every
    command; an error when it is not installed) or ``asyncio`` (every command).
    Raises ``ValueError`` for anything else.
    """
    choice = (env if env is not None else os.environ).get(LOOP_ENV, "auto").strip().lower()
    if choice not in _LOOPS:
        raise ValueError(f"{LOOP_ENV}: must be one of {', '.join(_LOOPS)}, got {choice!r}")
    if choice == "asyncio" or (choice == "auto" and not long_running):
        return "asyncio", None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise ValueError(f"{LOOP_ENV}=uvloop: uvloop is not installed") from exc
        return "asyncio", None  # auto: a platform without uvloop (it has no Windows build)
    return "uvloop", uvloop.new_event_loop


def _run_async(main: Callable[[], Coroutine[Any, Any, int]], *, long_running: bool = False) -> int:
    """Run a coroutine; Ctrl-C and SIGTERM end it cleanly (exit code 0).

    ``long_running``: a process that runs until stopped (the controller, a simulator), which
    gets the faster event loop by default (:func:`_loop_factory`).
    """

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await main()
        except asyncio.CancelledError:
            return 0

    try:
        name, factory = _loop_factory(long_running)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if long_running:
        logging.getLogger("cityctl").info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as r:
        return r.run(runner())


# -- validate / schema -------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, parse_config

    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        cfg, warnings = parse_config(text, source=str(path))
    except ConfigError as exc:
        errors = [i for i in exc.issues if i.severity == "error"]
        for issue in exc.issues:
            print(f"{path}: {issue}", file=sys.stderr)
        print(f"{path}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"{path}: {w}", file=sys.stderr)
    nodes = sum(1 for _ in cfg.nodes())
    print(
        f"{path}: OK — site {cfg.site.name}, {len(cfg.lighting.groups)} groups, {nodes} nodes, "
        f"{len(cfg.lighting.programs)} programs, {len(cfg.lighting.calendars)} calendars, "
        f"{len(cfg.signals.intersections)} intersections"
        + (f", {len(cfg.districts)} districts" if cfg.districts else "")
        + (f", {len(warnings)} warning(s)" if warnings else "")
    )
    for d in cfg.districts:
        own = cfg.for_district(d)
        print(
            f"  district {d}: controller {own.controller.id}, {len(own.lighting.groups)} groups,"
            f" {sum(1 for _ in own.nodes())} nodes, {len(own.signals.intersections)} intersections,"
            f" state {own.controller.state_dir}"
        )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from controller.config import CityConfig

    schema = CityConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cityctl config.yaml"
    print(json.dumps(schema, indent=2, ensure_ascii=False))
    return 0


def _load(path: str) -> Any:
    from controller.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(1) from None


# -- schedule preview --------------------------------------------------------------------


def cmd_preview(args: argparse.Namespace) -> int:
    from controller.schedule_preview import preview_night, preview_year

    cfg = _load(args.config)
    try:
        cfg.group(args.group)
    except KeyError as exc:
        print(f"--group: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.year is not None:
        return preview_year(cfg, args.group, args.year, args.out)
    day = dt.date.fromisoformat(args.date) if args.date else dt.date.today()
    return preview_night(cfg, args.group, day, args.out)


# -- run / demo --------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from controller.config import ConfigError
    from controller.runtime import Controller

    cfg = _load(args.config)
    _setup_logging(args.log_level or cfg.controller.log_level)
    if cfg.mqtt.url is None:
        print(
            "mqtt.url: no broker configured (only `cityctl demo` starts its own)", file=sys.stderr
        )
        return 2
    try:
        # Which district this instance runs, checked before anything starts (docs/scaling.md).
        own = cfg.instance(args.district)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"{args.config}: {issue}", file=sys.stderr)
        return 2
    where = f"district {args.district or cfg.controller.district}" if cfg.districts else ""
    try:
        cabinets = _parse_cabinets(args.cabinet, own, where or "the config")
    except ValueError as exc:
        print(f"--cabinet: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        ctl = Controller(cfg, cabinets=cabinets, district=args.district)
        tune_gc()
        _reload_on_sighup(ctl, Path(args.config), keep_log_level=args.log_level is not None)
        await ctl.run_forever()
        return 0

    return _run_async(main, long_running=True)


def _reload_on_sighup(ctl: Controller, path: Path, *, keep_log_level: bool) -> None:
    """SIGHUP (``systemctl reload cityctl``) reads ``path`` again: see ``Controller.reload``.
    A log level given on the command line stays; otherwise the file's applies."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        result = await ctl.reload_async(path)
        if result.applied and not keep_log_level and result.log_level:
            logging.getLogger().setLevel(result.log_level)

    def on_hup() -> None:
        logging.getLogger("cityctl").info("SIGHUP: reading %s again", path)
        task = loop.create_task(reload(), name="config-reload")
        pending.add(task)  # keep a reference until it is done
        task.add_done_callback(pending.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)


def _parse_cabinets(
    items: list[str], cfg: Any, where: str = "the config"
) -> dict[str, tuple[str, int]]:
    """``ID=HOST:PORT`` items as a map; unknown intersections and bad ports are errors."""
    known = {x.id for x in cfg.signals.intersections}
    out: dict[str, tuple[str, int]] = {}
    for item in items:
        xid, sep, addr = item.partition("=")
        host, sep2, port = addr.rpartition(":")
        if not sep or not sep2 or not xid or not host:
            raise ValueError(f"{item!r}: expected ID=HOST:PORT, e.g. ql1a-lct=127.0.0.1:5020")
        if xid not in known:
            raise ValueError(f"{item!r}: no intersection {xid!r} in {where}")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{item!r}: port must be 1..65535")
        out[xid] = (host, int(port))
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    from controller.demo import run_demo, start_instant

    _setup_logging(args.log_level)
    cfg = _load(args.config)
    try:
        start_instant(cfg, args.start)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return _run_async(
        lambda: run_demo(
            cfg,
            speed=args.speed,
            start=args.start,
            duration_s=args.duration,
            broker_port=args.port,
            faults=not args.no_faults,
        )
    )


# -- simulator ---------------------------------------------------------------------------


def cmd_sim_lights(args: argparse.Namespace) -> int:
    from controller.sim_cli import run_sim_lights

    _setup_logging(args.log_level)
    cfg = _load(args.config) if args.config else None
    return _run_async(lambda: run_sim_lights(args, cfg), long_running=True)


def cmd_sim_fault(args: argparse.Namespace) -> int:
    from controller.sim_cli import send_fault

    _setup_logging("WARNING")
    return _run_async(lambda: send_fault(args))


def cmd_sim_cabinets(args: argparse.Namespace) -> int:
    from controller.sim_cli import run_sim_cabinets

    _setup_logging(args.log_level)
    cfg = _load(args.config)
    return _run_async(lambda: run_sim_cabinets(args, cfg), long_running=True)


# -- bench -------------------------------------------------------------------------------


def cmd_bench_signals(args: argparse.Namespace) -> int:
    from controller.bench.signals import (
        DEMAND_LEVELS,
        STRATEGIES,
        format_table,
        plot_result,
        run_signals_bench,
    )

    cfg = _load(args.config)
    known = {x.id for x in cfg.signals.intersections}
    for xid in args.intersection or []:
        if xid not in known:
            print(f"--intersection: no intersection {xid!r} in the config", file=sys.stderr)
            return 2
    if not known:
        print("the config has no intersections (signals.intersections)", file=sys.stderr)
        return 2
    for name in args.demand or []:
        if name not in DEMAND_LEVELS:
            print(f"--demand: {name!r} is not one of {', '.join(DEMAND_LEVELS)}", file=sys.stderr)
            return 2
    for name in args.strategy or []:
        if name not in STRATEGIES:
            print(f"--strategy: {name!r} is not one of {', '.join(STRATEGIES)}", file=sys.stderr)
            return 2
    if args.minutes <= 0 or args.seeds < 1:
        print("--minutes and --seeds must be positive", file=sys.stderr)
        return 2

    def progress(run: Any) -> None:
        print(
            f"{run.intersection} {run.demand:<6} {run.strategy:<8} seed {run.seed}: "
            f"{run.mean_delay_s:6.1f} s/veh ({run.wall_s:.1f} s)",
            file=sys.stderr,
        )

    result = run_signals_bench(
        cfg,
        intersections=args.intersection or None,
        levels=args.demand or None,
        strategies=args.strategy or STRATEGIES,
        seeds=range(1, args.seeds + 1),
        duration_s=args.minutes * 60.0,
        progress=progress if not args.quiet else None,
    )
    if args.plot:
        plot_result(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        print(format_table(result), file=sys.stderr)
    else:
        print(format_table(result))
    return 0 if result["violations"] == 0 else 1


def cmd_bench_lighting(args: argparse.Namespace) -> int:
    from controller.bench.lighting import format_table, plot_result, run_lighting_bench

    cfg = _load(args.config)
    result = run_lighting_bench(cfg, args.year, step_s=args.step)
    if args.plot:
        plot_result(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(format_table(result))
    if args.json and args.table:
        print(format_table(result), file=sys.stderr)
    return 0


# -- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the docs and tests)."""
    p = argparse.ArgumentParser(
        prog="cityctl",
        description="Edge controller for smart street lights and sensor-driven traffic signals.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    v = sub.add_parser("validate", help="check a config file and print every problem")
    v.add_argument("file", help="the config file, e.g. config.yaml")
    v.set_defaults(func=cmd_validate)

    c = sub.add_parser("config", help="config helpers")
    csub = c.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    cs = csub.add_parser("schema", help="print the JSON Schema of config.yaml")
    cs.set_defaults(func=cmd_schema)

    s = sub.add_parser("schedule", help="lighting schedule tools")
    ssub = s.add_subparsers(dest="schedule_command", metavar="SUBCOMMAND", required=True)
    sp = ssub.add_parser(
        "preview",
        help="print a night's transitions (or a year's energy) and write a PNG",
        description="Preview what a schedule does before it goes live.",
    )
    sp.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    sp.add_argument("--group", required=True, help="light group id")
    when = sp.add_mutually_exclusive_group()
    when.add_argument("--date", help="night starting on this date, YYYY-MM-DD (default: today)")
    when.add_argument("--year", type=int, help="a whole year: burning hours, energy, saving")
    sp.add_argument("--out", help="PNG path (default: preview-GROUP-DATE.png)")
    sp.set_defaults(func=cmd_preview)

    r = sub.add_parser("run", help="run the controller against the configured broker")
    r.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    r.add_argument("--log-level", help="override controller.log_level")
    r.add_argument(
        "--cabinet",
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="talk to intersection ID's cabinet at HOST:PORT instead of the configured address "
        "(e.g. a simulated one from `cityctl sim cabinets`; repeatable)",
    )
    r.add_argument(
        "--district",
        help="run this district of the config's `districts` (overrides controller.district and "
        "$CITYCTL_DISTRICT; see docs/scaling.md)",
    )
    r.set_defaults(func=cmd_run)

    d = sub.add_parser(
        "demo",
        help="controller + simulated district on an embedded broker",
        description="Starts an embedded MQTT broker, simulated light nodes and traffic "
        "counters for every node of the config, and the controller, on an accelerated clock.",
    )
    d.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    d.add_argument(
        "--speed", type=float, default=120.0, help="clock speed-up (default: %(default)s×)"
    )
    d.add_argument(
        "--start",
        default="sunset-30min",
        help="when the clock starts today: HH:MM, an ISO date-time or a sun event such as "
        "sunset-30min (default: %(default)s)",
    )
    d.add_argument("--duration", type=float, default=None, help="stop after this many real seconds")
    d.add_argument("--port", type=int, default=0, help="embedded broker port (default: a free one)")
    d.add_argument("--no-faults", action="store_true", help="do not inject the demo's faults")
    d.add_argument("--log-level", default="INFO")
    d.set_defaults(func=cmd_demo)

    sim = sub.add_parser("sim", help="device simulators")
    simsub = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", required=True)
    sl = simsub.add_parser("lights", help="run simulated light nodes on a broker")
    sl.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker url")
    sl.add_argument("--prefix", default="cityctl", help="topic prefix")
    src = sl.add_mutually_exclusive_group(required=True)
    src.add_argument("--count", type=int, help="this many nodes, ids SIM-0001…, one group")
    src.add_argument("--config", help="every node of this config, in their groups")
    sl.add_argument("--group", default="sim", help="group of --count nodes (default: %(default)s)")
    sl.add_argument("--lamp-w", type=float, default=100.0, help="lamp rating of --count nodes")
    sl.add_argument("--fallback-after", type=float, default=900.0, help="seconds of silence")
    sl.add_argument(
        "--gateway-size",
        type=int,
        metavar="K",
        help="gateway mode: K nodes share one broker connection, as the lamps of a street "
        "segment share its gateway (same topics and payloads; default: a connection per node)",
    )
    sl.add_argument(
        "--shard",
        metavar="I/N",
        help="run only the I-th of N equal slices of the nodes (1-based), so that several "
        "processes can share a large district",
    )
    sl.add_argument(
        "--report-interval",
        type=float,
        default=30.0,
        help="seconds between a node's unsolicited state reports (default: %(default)s)",
    )
    sl.add_argument(
        "--tick-hz", type=float, default=5.0, help="node model updates per second (ramps, meters)"
    )
    sl.add_argument(
        "--stats-file",
        metavar="FILE",
        help="write the simulator's counters as JSON to FILE every second and at exit",
    )
    sl.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NODE=KIND",
        help="start with a fault injected, e.g. SIM-0003=lamp_failure (repeatable)",
    )
    sl.add_argument("--log-level", default="INFO")
    sl.set_defaults(func=cmd_sim_lights)
    sf = simsub.add_parser("fault", help="inject or clear a fault in a running simulated node")
    sf.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker url")
    sf.add_argument("--prefix", default="cityctl", help="topic prefix")
    sf.add_argument("--node", required=True, help="node id")
    sf.add_argument(
        "--fault",
        required=True,
        choices=["lamp_failure", "driver_failure", "supply_lost", "node_offline", "day_burner"],
    )
    sf.add_argument("--clear", action="store_true", help="clear the fault instead")
    sf.set_defaults(func=cmd_sim_fault)
    sc = simsub.add_parser(
        "cabinets",
        help="simulated signal cabinets over Modbus TCP, with traffic and cameras",
        description="One simulated cabinet (a pymodbus TCP server with its own conflict monitor "
        "and heartbeat watchdog) per intersection of the config, its detectors fed by the "
        "built-in traffic model; with --broker its AI cameras publish counts on MQTT. Prints "
        "the `cityctl run --cabinet ...` options that point a controller at them.",
    )
    sc.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    sc.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sc.add_argument(
        "--port-base",
        type=int,
        default=5020,
        help="first port; intersections get consecutive ports (0: free ports)",
    )
    sc.add_argument("--level", type=float, default=0.7, help="demand as a share of the peak hour")
    sc.add_argument(
        "--time-of-day",
        action="store_true",
        help="let demand follow the time of day (daily profile) instead of a constant level",
    )
    sc.add_argument("--broker", help="broker url for the cameras (default: no cameras)")
    sc.add_argument(
        "--fallback",
        choices=["local_plan", "flash"],
        default="local_plan",
        help="what a cabinet does when the heartbeat stops",
    )
    sc.add_argument("--seed", default="1", help="traffic seed")
    sc.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    sc.add_argument("--log-level", default="INFO")
    sc.set_defaults(func=cmd_sim_cabinets)

    b = sub.add_parser("bench", help="benchmarks (JSON + a table)")
    bsub = b.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    bl = bsub.add_parser("lighting", help="a year of the district: energy saved, class safety")
    bl.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    bl.add_argument("--year", type=int, default=dt.date.today().year)
    bl.add_argument("--step", type=float, default=300.0, help="simulation step, s")
    bl.add_argument("--json", action="store_true", help="print JSON instead of the table")
    bl.add_argument("--table", action="store_true", help="with --json: the table on stderr too")
    bl.add_argument("--plot", metavar="PNG", help="also write a bar chart of energy per group")
    bl.set_defaults(func=cmd_bench_lighting)
    bs = bsub.add_parser(
        "signals",
        help="fixed-time vs actuated vs adaptive on the built-in traffic model",
        description="Every intersection of the config at low, medium and high demand with each "
        "strategy, in lock-step simulated time through the controller's real signal stack. "
        "Prints mean delay per vehicle, stops and the largest queue side by side.",
    )
    bs.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    bs.add_argument("--intersection", action="append", help="only this one (repeatable)")
    bs.add_argument("--demand", action="append", help="low, medium or high (repeatable)")
    bs.add_argument("--strategy", action="append", help="fixed, actuated or adaptive (repeatable)")
    bs.add_argument("--minutes", type=float, default=60.0, help="simulated minutes per run")
    bs.add_argument("--seeds", type=int, default=5, help="runs per cell, seeds 1..N")
    bs.add_argument("--json", action="store_true", help="print JSON (the table goes to stderr)")
    bs.add_argument("--plot", metavar="PNG", help="also write a bar chart of mean delay")
    bs.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    bs.set_defaults(func=cmd_bench_signals)

    from controller.check_cli import add_check_parser
    from controller.scale_cli import add_bench_scale_parser
    from controller.sumo_cli import add_bench_parser, add_sumo_parser
    from controller.telemetry_cli import add_bench_telemetry_parser, add_telemetry_parser

    add_bench_parser(bsub)
    add_bench_telemetry_parser(bsub)
    add_bench_scale_parser(bsub)
    add_sumo_parser(sub)
    add_telemetry_parser(sub)
    add_check_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cityctl`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
