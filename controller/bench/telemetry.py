"""``cityctl bench telemetry``: how fast the outbox drains into the database, against a raw
line-protocol POST of the same points in the same run.

Each round writes the same mix of points twice, each copy under its own ``src`` tag so both
land as new samples: once by plain ``http.client`` POSTs of the joined lines (the reference:
what the database and the loopback can take from Python) and once through cityctl's path —
rows read from the SQLite outbox, joined, gzip-compressed and written by ``influxdb-client``,
then acknowledged (deleted) in the outbox. The order alternates between rounds; the medians
are reported. Afterwards the database is queried: every sample must be there exactly once.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.bench.victoria import RawWriter, VictoriaMetrics
from controller.config import OutboxConfig
from controller.telemetry.lineproto import encode
from controller.telemetry.outbox import Outbox
from controller.telemetry.sender import Sender
from devices.influx import InfluxSettings, InfluxWriter

__all__ = ["format_table", "make_points", "run_telemetry_bench"]


def make_points(n: int, src: str, t0_ms: int) -> tuple[list[tuple[int, str]], int]:
    """``n`` points shaped like the controller's (docs/telemetry.md) and their field count.

    A mix by the rates of a large site: light node states, signal events, detector
    intervals; every point has its own (series, timestamp).
    """
    rows: list[tuple[int, str]] = []
    fields = 0
    for i in range(n):
        ts = t0_ms + i // 50  # 50 points per millisecond, all in distinct series
        kind = i % 10
        if kind < 5:
            f: dict[str, float | int | bool] = {
                "level_pct": float(i % 101),
                "power_w": round(120.0 * (i % 101) / 100, 1),
                "energy_wh": 1000 + i,
                "online": True,
            }
            line = encode(
                "light_node",
                {"src": src, "group": f"g{i % 50 // 10}", "node": f"LL-{i % 50:05d}"},
                f,
                ts,
            )
        elif kind < 8:
            f = {"code": 1 + i % 12, "param": i % 16}
            line = encode("signal_event", {"src": src, "intersection": f"x{i % 50:03d}"}, f, ts)
        else:
            f = {"count": i % 30, "occupancy_pct": round((i % 1000) / 10, 1), "on_s": 12.5}
            line = encode(
                "signal_detector",
                {"src": src, "intersection": f"x{i % 50:03d}", "detector": f"d{i % 16}"},
                f,
                ts,
            )
        fields += len(f)
        rows.append((ts, line))
    return rows, fields


def _time_raw(url: str, rows: list[tuple[int, str]], batch: int, gzip_level: int | None) -> float:
    w = RawWriter(url, gzip_level=gzip_level)
    try:
        t = time.perf_counter()
        for k in range(0, len(rows), batch):
            w.write("\n".join(line for _, line in rows[k : k + batch]))
        return time.perf_counter() - t
    finally:
        w.close()


def _time_outbox(
    url: str,
    rows: list[tuple[int, str]],
    batch: int,
    gzip: bool,
    path: Path,
    concurrency: int = 2,
) -> tuple[float, float]:
    """(seconds to append in loop-turn transactions of 100, seconds to drain)."""
    # The outbox as configured by default: acknowledged rows are kept (for export) and
    # removed in bulk when they expire, not one batch at a time.
    cfg = OutboxConfig()
    ob = Outbox(
        path,
        max_bytes=int(cfg.max_mb * 2**20),
        max_age_ms=int(cfg.max_age_h * 3_600_000),
        keep_sent_ms=int(cfg.keep_sent_h * 3_600_000),
    )
    writer = InfluxWriter(InfluxSettings(url=url, bucket="cityctl", gzip=gzip))
    try:
        t = time.perf_counter()
        for k in range(0, len(rows), 100):
            ob.append(rows[k : k + 100])
        t_append = time.perf_counter() - t
        sender = Sender(ob, writer, batch_points=batch, concurrency=concurrency)
        t = time.perf_counter()
        sent = asyncio.run(sender.drain_once())
        t_drain = time.perf_counter() - t
        if sent != len(rows) or ob.pending_count:
            raise RuntimeError(f"outbox drained {sent} of {len(rows)} points")
        return t_append, t_drain
    finally:
        writer.close()
        ob.close()


def run_telemetry_bench(
    *,
    points: int = 200_000,
    batch: int = 5000,
    rounds: int = 3,
    gzip: bool = True,
    concurrency: int = 2,
    url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; ``url`` None starts a VictoriaMetrics of its own."""
    say = progress or (lambda _m: None)
    vm: VictoriaMetrics | None = None
    if url is None:
        vm = VictoriaMetrics()
        vm.start()
        url = vm.url
        say(f"VictoriaMetrics on {url}")
    per_round: list[dict[str, float]] = []
    expected_samples = 0
    t0 = int(time.time() * 1000) - 3_600_000
    try:
        with tempfile.TemporaryDirectory(prefix="cityctl-bench-telemetry-") as tmp:
            # A warm-up round so neither side pays for the first connections and series.
            warm, _ = make_points(min(points, 20_000), "warm", t0)
            _time_raw(url, warm, batch, 1 if gzip else None)
            _time_outbox(
                url,
                make_points(min(points, 20_000), "warm2", t0)[0],
                batch,
                gzip,
                Path(tmp) / "w.sqlite",
            )
            for r in range(rounds):
                raw_rows, f1 = make_points(points, f"raw{r}", t0 + 1000)
                ob_rows, f2 = make_points(points, f"outbox{r}", t0 + 1000)
                expected_samples += f1 + f2
                res: dict[str, float] = {}
                order = ("raw", "outbox") if r % 2 == 0 else ("outbox", "raw")
                for which in order:
                    if vm is not None:
                        vm.flush()
                        vm.settle()
                    if which == "raw":
                        res["raw_s"] = _time_raw(url, raw_rows, batch, 1 if gzip else None)
                    else:
                        a, d = _time_outbox(
                            url, ob_rows, batch, gzip, Path(tmp) / f"o{r}.sqlite", concurrency
                        )
                        res["append_s"], res["outbox_s"] = a, d
                res["raw_pps"] = points / res["raw_s"]
                res["outbox_pps"] = points / res["outbox_s"]
                res["append_pps"] = points / res["append_s"]
                res["ratio"] = res["outbox_pps"] / res["raw_pps"]
                per_round.append(res)
                say(
                    f"round {r + 1}/{rounds}: raw {res['raw_pps']:,.0f} points/s,"
                    f" outbox→db {res['outbox_pps']:,.0f} points/s (ratio {res['ratio']:.2f})"
                )
        stored: int | None = None
        if vm is not None:
            stored = vm.samples('{src=~"raw.*|outbox.*"}')
    finally:
        if vm is not None:
            vm.close()
    raw = statistics.median(x["raw_pps"] for x in per_round)
    out = statistics.median(x["outbox_pps"] for x in per_round)
    return {
        "benchmark": "telemetry",
        "points_per_round": points,
        "batch_points": batch,
        "rounds": rounds,
        "gzip": gzip,
        "concurrency": concurrency,
        "database": "VictoriaMetrics (started by the bench)" if vm is not None else url,
        "raw_points_per_s": round(raw),
        "outbox_points_per_s": round(out),
        "ratio": round(out / raw, 3),
        "append_points_per_s": round(statistics.median(x["append_pps"] for x in per_round)),
        "rounds_detail": [{k: round(v, 4) for k, v in x.items()} for x in per_round],
        "samples_expected": expected_samples if stored is not None else None,
        "samples_stored": stored,
        "complete": stored == expected_samples if stored is not None else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def format_table(r: dict[str, Any]) -> str:
    """The human table."""
    lines = [
        f"telemetry: {r['points_per_round']:,} points × {r['rounds']} rounds, batches of"
        f" {r['batch_points']}, gzip {'on' if r['gzip'] else 'off'},"
        f" {r['concurrency']} request(s) in flight, {r['database']}",
        f"{'path':<34}{'points/s':>14}",
        f"{'raw line-protocol POST':<34}{r['raw_points_per_s']:>14,}",
        f"{'outbox → influxdb-client → db':<34}{r['outbox_points_per_s']:>14,}",
        f"{'ratio (target ≥ 0.5)':<34}{r['ratio']:>14.2f}",
        f"{'recording into the outbox':<34}{r['append_points_per_s']:>14,}",
    ]
    if r.get("samples_stored") is not None:
        lines.append(
            f"database holds {r['samples_stored']:,} of {r['samples_expected']:,} samples"
            f" ({'complete' if r['complete'] else 'INCOMPLETE'})"
        )
    return "\n".join(lines)
