"""``cityctl telemetry …`` and ``cityctl bench telemetry``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["add_bench_telemetry_parser", "add_telemetry_parser"]

DEFAULT_CONFIG = "config.yaml"


def _outbox_path(args: argparse.Namespace) -> tuple[Path, dt.tzinfo]:
    """The outbox file and the site's time zone, from ``--outbox`` or the config."""
    from controller.config import load_config

    if args.outbox:
        # Local times mean the site's zone when the config is at hand, UTC otherwise.
        if not Path(args.config).exists():
            return Path(args.outbox), dt.UTC
        cfg = load_config(args.config)
        return Path(args.outbox), ZoneInfo(cfg.site.timezone)
    cfg = load_config(args.config)
    return cfg.telemetry.outbox_path(cfg.controller.state_dir), ZoneInfo(cfg.site.timezone)


def cmd_export(args: argparse.Namespace) -> int:
    from controller.config import ConfigError
    from controller.telemetry.export import ExportError, export, parse_when
    from controller.telemetry.outbox import OutboxError

    try:
        path, tz = _outbox_path(args)
        now = dt.datetime.now(dt.UTC)
        since = parse_when(args.since, now=now, tz=tz)
        until = parse_when(args.until, now=now, tz=tz) if args.until else None
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"--since/--until: {e}", file=sys.stderr)
        return 2
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        n = export(
            path,
            out,
            fmt=args.format,
            since_ms=since,
            until_ms=until,
            measurements=args.measurement,
        )
    except (OutboxError, ExportError) as e:
        print(e, file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"{n} points exported from {path}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from controller.config import ConfigError
    from controller.telemetry.outbox import OutboxError, open_readonly

    try:
        path, _ = _outbox_path(args)
        db = open_readonly(path)
    except (ConfigError, OutboxError) as e:
        print(e, file=sys.stderr)
        return 2
    try:
        rows, pending, oldest, newest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(sent = 0), 0), MIN(ts_ms), MAX(ts_ms) FROM points"
        ).fetchone()
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    finally:
        db.close()

    def iso(ms: int | None) -> str | None:
        return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()

    st: dict[str, Any] = {
        "path": str(path),
        "bytes_on_disk": path.stat().st_size,
        "rows": rows,
        "pending": pending,
        "oldest": iso(oldest),
        "newest": iso(newest),
        **counters,
    }
    print(json.dumps(st, indent=2))
    return 0


def add_telemetry_parser(sub: Any) -> None:
    """``cityctl telemetry export|status``."""
    t = sub.add_parser("telemetry", help="the telemetry outbox: export, status")
    tsub = t.add_subparsers(dest="telemetry_command", metavar="SUBCOMMAND", required=True)

    def where(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)"
        )
        p.add_argument(
            "--outbox",
            metavar="FILE",
            help="read this outbox file instead (times without offset: the config's zone, or UTC)",
        )

    e = tsub.add_parser(
        "export",
        help="write stored points as line protocol or CSV",
        description="Reads the outbox read-only (also while the controller runs): every point "
        "still kept — unsent ones, and sent ones for telemetry.outbox.keep_sent_h.",
    )
    where(e)
    e.add_argument(
        "--since",
        required=True,
        help="start: a duration back from now (90m, 6h, 7d) or an ISO date/time"
        " (without offset: the site's local time)",
    )
    e.add_argument("--until", help="end (exclusive), same forms; default: now and later")
    e.add_argument("--format", choices=("lp", "csv"), default="lp", help="default: %(default)s")
    e.add_argument("--measurement", action="append", help="only this measurement (repeatable)")
    e.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    e.set_defaults(func=cmd_export)
    s = tsub.add_parser("status", help="print the outbox's size, backlog and counters as JSON")
    where(s)
    s.set_defaults(func=cmd_status)


def cmd_bench_telemetry(args: argparse.Namespace) -> int:
    from controller.bench.telemetry import format_table, run_telemetry_bench
    from controller.bench.victoria import VictoriaMissing

    if args.points < 1000 or args.rounds < 1 or args.batch < 1 or not 1 <= args.concurrency <= 8:
        print("--points ≥ 1000, --rounds ≥ 1, --batch ≥ 1, --concurrency 1…8", file=sys.stderr)
        return 2
    progress = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        r = run_telemetry_bench(
            points=args.points,
            batch=args.batch,
            rounds=args.rounds,
            gzip=not args.no_gzip,
            concurrency=args.concurrency,
            url=args.url,
            progress=progress,
        )
    except VictoriaMissing as e:
        print(e, file=sys.stderr)
        return 2
    table = format_table(r)
    if args.json:
        print(json.dumps(r, indent=2))
        print(table, file=sys.stderr)
    else:
        print(table)
    return 0


def add_bench_telemetry_parser(bsub: Any) -> None:
    """``cityctl bench telemetry``."""
    b = bsub.add_parser(
        "telemetry",
        help="outbox → database points/s against a raw line-protocol POST",
        description="Writes the same mix of points by plain HTTP POSTs and through the outbox "
        "and influxdb-client, alternating, and reports the medians and their ratio. Starts its "
        "own VictoriaMetrics unless --url is given.",
    )
    b.add_argument("--points", type=int, default=200_000, help="points per round and path")
    b.add_argument("--rounds", type=int, default=5, help="rounds (default: %(default)s)")
    b.add_argument("--batch", type=int, default=5000, help="points per request")
    b.add_argument("--no-gzip", action="store_true", help="send uncompressed")
    b.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="outbox requests in flight (default: %(default)s)",
    )
    b.add_argument("--url", help="an existing database (v2 write API) instead of VictoriaMetrics")
    b.add_argument("--json", action="store_true", help="print JSON (the table goes to stderr)")
    b.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    b.set_defaults(func=cmd_bench_telemetry)
