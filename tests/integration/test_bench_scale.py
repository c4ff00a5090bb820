"""``cityctl bench scale`` end to end at a small size: real Mosquitto, the cabinets, the
controller and the light nodes in their own processes; every figure present and sane, nothing
lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from controller.bench.scale import ScaleOptions, run_scale_bench

ROOT = Path(__file__).resolve().parents[2]


def test_scale_bench_small(tmp_path: Path) -> None:
    opts = ScaleOptions(
        lights=200,
        intersections=2,
        duration_s=4.0,
        changes_per_s=2.0,
        settle_s=1.0,
        reference_messages=2000,
        keep=tmp_path / "run",
    )
    r = run_scale_bench(opts)
    json.dumps(r)  # JSON-able as it is

    s = r["setup"]
    assert (s["lights"], s["groups"], s["intersections"]) == (200, 2, 2)
    assert s["node_connections"] == 2  # gateways of 100

    c = r["controller"]
    assert 0 < c["cpu_pct_of_core"] < 200
    assert 20 < c["peak_rss_mb"] < 1000
    assert 0 < c["lights_converged_s"] <= c["converged_s"] < 120
    assert c["signals_in_control_s"] is not None and c["intersections_not_in_control"] == {}
    assert 3.5 < c["window_s"] < 10
    assert c["mqtt_in_per_s"] > 0 and c["mqtt_out_per_s"] > 0
    assert c["signal_steps_per_s"] > 5  # 2 intersections at 10 Hz, on a busy machine
    # Every API change is a new group command, each timed to its last node's state.
    assert c["api_errors"] == 0 and c["api_changes"] >= 6
    assert c["group_commands"] >= c["api_changes"] - 1
    fan = c["fanout"]
    assert fan["in_window"] >= c["api_changes"] - 2
    assert fan["incomplete"] == 0
    assert 0 < fan["p50_ms"] <= fan["p99_ms"] <= fan["max_ms"] < 3000

    lost = r["lost"]
    assert lost["states_published"] > 200  # at least the first state of every node
    assert lost["states_published"] + lost["states_unconfirmed"] == lost["states_received"]
    assert lost["nodes_not_following_at_end"] == 0
    assert lost["broker_dropped"] == 0
    assert lost["total"] == 0

    for ref in r["reference"]:
        assert ref["received"] == ref["messages"] == 2000
        assert ref["msg_per_s"] > 500
    assert set(r["processes_cpu_pct_of_core"]) == {
        "controller",
        "broker",
        "sim_cabinets",
        "sim_lights_1",
    }
    assert r["verdict"]["lost"]["met"] is True
    # The kept directory has what someone would look at after a run.
    run = tmp_path / "run"
    assert (run / "bench-scale.yaml").exists() and (run / "result.json").exists()
    assert (run / "logs" / "controller.log").stat().st_size > 0


def test_scale_cli_rejects_bad_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "bench", "scale", "--lights", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "--lights: must be at least 1" in out.stderr
