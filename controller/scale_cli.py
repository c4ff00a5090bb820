"""``cityctl bench scale``: the whole system at city scale in real processes (see
:mod:`controller.bench.scale`)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_bench_scale_parser", "cmd_bench_scale"]


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_bench_scale(args: argparse.Namespace) -> int:
    """Run the scale bench; print JSON (``--json``) or the table; 1 if a target is missed."""
    from controller.bench.mosquitto import BrokerError
    from controller.bench.scale import ScaleError, ScaleOptions, format_table, run_scale_bench

    opts = ScaleOptions(
        lights=args.lights,
        intersections=args.intersections,
        duration_s=args.duration,
        group_size=args.group_size,
        gateway_size=args.gateway_size,
        sim_processes=args.sim_processes,
        changes_per_s=args.changes_per_s,
        report_interval_s=args.report_interval,
        node_tick_hz=args.node_tick_hz,
        settle_s=args.settle,
        reference_messages=args.reference_messages,
        base_config=Path(args.config),
        profile=Path(args.profile) if args.profile else None,
        keep=Path(args.keep) if args.keep else None,
        controller_cpu=args.controller_cpu,
    )
    try:
        opts.check()
    except ValueError as exc:
        print(f"--{exc}", file=sys.stderr)
        return 2
    if not opts.base_config.exists():
        print(f"--config: {opts.base_config} does not exist", file=sys.stderr)
        return 2
    progress = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    # SIGTERM's default kills this process at once and leaves the broker, the simulators and
    # the controller it started running; as SystemExit it unwinds through the bench's
    # clean-up, which stops them all (as Ctrl-C does).
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        result = run_scale_bench(opts, progress)
    except (ScaleError, BrokerError) as exc:
        print(f"bench scale failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    table = format_table(result)
    if args.json:
        print(text)
        print(table, file=sys.stderr)
    else:
        print(table)
    met = [v["met"] for v in result["verdict"].values()]
    return 0 if all(m is not False for m in met) else 1


def add_bench_scale_parser(bsub: Any) -> None:
    """``cityctl bench scale``."""
    b = bsub.add_parser(
        "scale",
        help="real Mosquitto, simulated nodes and cabinets, the controller: CPU, memory, "
        "fan-out latency, messages lost",
        description="Starts Mosquitto, the simulated signal cabinets, the controller (`cityctl "
        "run`) and the simulated light nodes (gateway mode) as separate processes with a "
        "generated config, waits until everything converged, then changes group levels "
        "through the API for --duration seconds while measuring the controller: CPU share of "
        "one core, peak RSS, MQTT messages in/out per second, group-command fan-out latency "
        "(p50/p99), messages lost; and, in the same run, the broker's raw rate with "
        "mosquitto_pub/mosquitto_sub. Exit code 1 when a target is missed.",
    )
    b.add_argument("--lights", type=int, default=10_000, help="light nodes (default: %(default)s)")
    b.add_argument(
        "--intersections", type=int, default=100, help="intersections (default: %(default)s)"
    )
    b.add_argument(
        "--duration", type=float, default=60.0, help="steady-state seconds (default: %(default)s)"
    )
    b.add_argument(
        "--config", default="config.yaml", help="config to copy programs and intersections from"
    )
    b.add_argument(
        "--group-size", type=int, default=100, help="nodes per group (default: %(default)s)"
    )
    b.add_argument(
        "--gateway-size",
        type=int,
        default=100,
        help="simulated nodes per broker connection (default: %(default)s; 1: one each)",
    )
    b.add_argument(
        "--sim-processes", type=int, default=1, help="split the nodes over this many processes"
    )
    b.add_argument(
        "--changes-per-s",
        type=float,
        default=2.0,
        help="group level changes per second through the API (default: %(default)s)",
    )
    b.add_argument(
        "--report-interval",
        type=float,
        default=30.0,
        help="seconds between a node's own state reports (default: %(default)s)",
    )
    b.add_argument(
        "--node-tick-hz", type=float, default=1.0, help="simulated node model updates per second"
    )
    b.add_argument(
        "--settle", type=float, default=5.0, help="seconds between convergence and the window"
    )
    b.add_argument(
        "--reference-messages",
        type=int,
        default=50_000,
        help="messages per mosquitto_pub/sub reference run (0: skip; default: %(default)s)",
    )
    b.add_argument(
        "--controller-cpu",
        type=int,
        metavar="N",
        help="pin the controller to CPU N and the broker, the simulators and the bench to the "
        "others (the controller's box apart from the street; default: no pinning)",
    )
    b.add_argument("--profile", metavar="FILE", help="run the controller under cProfile, dump here")
    b.add_argument("--keep", metavar="DIR", help="work in DIR and keep config, logs and outbox")
    b.add_argument("--json", action="store_true", help="print JSON (the table goes to stderr)")
    b.add_argument("--out", metavar="FILE", help="also save the JSON here")
    b.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    b.set_defaults(func=cmd_bench_scale)
