"""``cityctl bench scale`` end to end at a small size: real Mosquitto, the cabinets, the
controller and the light nodes in their own processes; every figure present and sane, nothing
lost."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from controller.bench.scale import ScaleOptions, format_table, run_scale_bench

ROOT = Path(__file__).resolve().parents[2]


def test_scale_bench_small(tmp_path: Path) -> None:
    """A small run, with the controller pinned to a CPU of its own (``--controller-cpu``) when
    the machine has two or more: every other process the bench started runs on the rest, and
    the bench's own affinity is back as it was afterwards."""
    cpus = sorted(os.sched_getaffinity(0))
    pin = cpus[-1] if len(cpus) >= 2 else None
    opts = ScaleOptions(
        lights=200,
        intersections=2,
        duration_s=4.0,
        changes_per_s=2.0,
        settle_s=1.0,
        reference_messages=2000,
        keep=tmp_path / "run",
        controller_cpu=pin,
    )
    r = run_scale_bench(opts)
    json.dumps(r)  # JSON-able as it is
    assert sorted(os.sched_getaffinity(0)) == cpus
    assert r["setup"]["controller_cpu"] == pin
    if pin is not None:
        rest = [c for c in cpus if c != pin]
        assert r["processes_cpus"] == {
            "controller": [pin],
            "broker": rest,
            "sim_cabinets": rest,
            "sim_lights_1": rest,
        }, r["processes_cpus"]

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
    # The host's speed, read before the processes started and after they stopped.
    speed = r["machine"]["host_speed"]
    for when in ("before", "after"):
        assert 0 < speed[when]["min_ms"] <= speed[when]["cpu_ms"] <= speed[when]["max_ms"]
    assert "host speed" in format_table(r)
    # The kept directory has what someone would look at after a run.
    run = tmp_path / "run"
    assert (run / "bench-scale.yaml").exists() and (run / "result.json").exists()
    assert json.loads((run / "result.json").read_text()) == json.loads(json.dumps(r))
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


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_sigterm_stops_every_process_the_bench_started(tmp_path: Path) -> None:
    import os
    import signal
    import time

    bench = subprocess.Popen(
        [
            *(sys.executable, "-m", "controller.cli", "bench", "scale"),
            *("--lights", "100", "--intersections", "1", "--duration", "60"),
            *("--reference-messages", "0", "--keep", str(tmp_path / "run")),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    children: list[int] = []
    try:
        assert bench.stderr is not None
        seen = []
        for line in bench.stderr:  # progress lines; the steady state comes after convergence
            seen.append(line)
            if line.startswith("steady state"):
                break
        else:
            raise AssertionError("the bench ended before its steady state:\n" + "".join(seen))
        children = _children(bench.pid)
        assert len(children) >= 4, children  # broker, cabinets, controller, nodes (+ watcher)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        alive = children
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if os.path.exists(f"/proc/{p}") and not _zombie(p)]
            time.sleep(0.1)
        assert alive == [], f"still running after the bench ended: {alive}"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for pid in children:  # whatever the bench failed to stop must not outlive the test
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
