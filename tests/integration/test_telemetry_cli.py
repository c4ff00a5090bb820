"""``cityctl bench telemetry`` and ``cityctl telemetry export|status`` as real commands."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.bench.victoria import VictoriaMetrics
from controller.config import ConfigError, parse_config
from controller.telemetry.lineproto import encode
from controller.telemetry.outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]
CITYCTL = [sys.executable, "-m", "controller.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CITYCTL, *args], capture_output=True, text=True, timeout=180, cwd=cwd or ROOT
    )


def test_bench_telemetry_prints_one_json_object_with_the_ratio(victoria: VictoriaMetrics) -> None:
    p = run(
        "bench", "telemetry", "--points", "20000", "--rounds", "2", "--url", victoria.url, "--json"
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["benchmark"] == "telemetry" and r["rounds"] == 2
    assert r["raw_points_per_s"] > 0 and r["outbox_points_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["outbox_points_per_s"] / r["raw_points_per_s"], rel=0.01)
    assert "ratio (target ≥ 0.5)" in p.stderr  # the table goes to stderr with --json
    # Both paths delivered everything (the bench raises otherwise); count in the database.
    assert victoria.samples('{src=~"raw.*|outbox.*"}') == 2 * 2 * sum(
        _fields_of(i) for i in range(20000)
    )


def _fields_of(i: int) -> int:
    kind = i % 10
    return 4 if kind < 5 else 2 if kind < 8 else 3


def test_bench_telemetry_refuses_bad_arguments() -> None:
    p = run("bench", "telemetry", "--points", "10")
    assert p.returncode == 2 and "--points" in p.stderr


def test_export_and_status_read_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    t0 = 1_796_300_000_000  # 2026-12-03
    ob.append(
        [
            (
                t0 + i * 1000,
                encode(
                    "light_group",
                    {"group": "g1"},
                    {"level_pct": float(i), "nodes": 5},
                    t0 + i * 1000,
                ),
            )
            for i in range(10)
        ]
    )
    b = ob.pending_batch(4)
    assert b is not None
    ob.ack(b.first_id, b.last_id, batch=b)
    ob.close()
    since = "2026-12-01T00:00:00+00:00"
    p = run("telemetry", "export", "--outbox", str(path), "--since", since, "--format", "lp")
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 10 and "10 points exported" in p.stderr
    p = run(
        "telemetry",
        "export",
        "--outbox",
        str(path),
        "--since",
        since,
        "--format",
        "csv",
        "--until",
        "2026-12-01T00:00:00+00:00",
    )
    assert p.returncode == 0 and p.stdout.strip() == "time,measurement"  # nothing before
    out = tmp_path / "x.csv"
    p = run(
        "telemetry",
        "export",
        "--outbox",
        str(path),
        "--since",
        since,
        "--format",
        "csv",
        "-o",
        str(out),
    )
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 10 and rows[3]["level_pct"] == "3.0" and rows[0]["group"] == "g1"
    p = run("telemetry", "status", "--outbox", str(path))
    st = json.loads(p.stdout)
    assert (st["rows"], st["pending"], st["sent"], st["appended"]) == (10, 6, 4, 10)


def test_export_errors_name_the_problem(tmp_path: Path) -> None:
    p = run("telemetry", "export", "--outbox", str(tmp_path / "none.sqlite"), "--since", "1h")
    assert p.returncode == 2 and "no telemetry outbox" in p.stderr
    Outbox(tmp_path / "o.sqlite").close()
    p = run("telemetry", "export", "--outbox", str(tmp_path / "o.sqlite"), "--since", "last week")
    assert p.returncode == 2 and "--since" in p.stderr and "duration" in p.stderr


@pytest.mark.parametrize(
    ("telemetry", "field"),
    [
        ({"influx": {"url": "ftp://x", "bucket": "b"}}, "telemetry.influx.url"),
        ({"influx": {"url": "http://x:8086"}}, "telemetry.influx.bucket"),
        (
            {"influx": {"url": "http://x", "bucket": "b", "token_env": "A", "token_file": "f"}},
            "telemetry.influx",
        ),
        ({"outbox": {"max_mb": 0}}, "telemetry.outbox.max_mb"),
        ({"intervals": {"health_s": 0.1}}, "telemetry.intervals.health_s"),
        (
            {"influx": {"url": "http://x", "bucket": "b", "retry_min_s": 5, "retry_max_s": 1}},
            "telemetry.influx",
        ),
        ({"sender": {}}, "telemetry.sender"),
    ],
)
def test_bad_telemetry_config_names_the_field(telemetry: dict[str, object], field: str) -> None:
    import yaml

    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["telemetry"] = telemetry
    with pytest.raises(ConfigError) as exc:
        parse_config(yaml.safe_dump(data, allow_unicode=True))
    paths = [i.path for i in exc.value.issues]
    assert any(p.startswith(field) for p in paths), paths
