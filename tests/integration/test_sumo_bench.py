"""The SUMO bridge end to end: import, lock-step runs, transports, baselines, the CLI contract.

Real SUMO (``libsumo`` in-process, the ``sumo`` binary for the reference), real Modbus TCP for
``--transport modbus``. Networks are the traffic-light game's, which ship inside the
``eclipse-sumo`` wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

sumo = pytest.importorskip("sumo")
pytest.importorskip("libsumo")

from controller.bench.sumo import run_sumo_bench  # noqa: E402
from controller.signals.model import Intersection, IntersectionConfig  # noqa: E402

GAME = Path(sumo.SUMO_HOME) / "tools" / "game"
ZERO = {"conflicts": 0, "short_yellow": 0, "short_all_red": 0, "min_green_cut": 0}


def _trips(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if "<tripinfo " in ln]


def _states(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if "<tlsState " in ln]


def test_adaptive_runs_grid6_safely_through_the_real_runner(tmp_path: Path) -> None:
    r = run_sumo_bench(GAME / "grid6.sumocfg", "adaptive", end=200, seed=1, keep=tmp_path)
    print(
        f"\ngrid6 adaptive 200 s: {r['vehicles']} vehicles, {r['mean_delay_s']:.1f} s/veh, "
        f"wall {r['wall_s']:.1f} s (SUMO {r['sumo_step_s']:.1f} s)"
    )
    assert r["lights_controlled"] == 6 and r["refused"] == {}
    assert r["safety"] == ZERO
    assert r["vehicles"] > 100 and r["arrived"] > 0
    for row in r["per_light"]:
        assert row["controller_violations"] == 0
        assert row["cabinet_monitor_faults"] == 0
        assert row["handovers"] == 1  # start-up hand-over from the cabinet, then control
        assert row["stage_changes"] >= 2
    # The kept files are SUMO's own: the delay can be recomputed without cityctl.
    total = 0.0
    trips = ET.parse(tmp_path / "tripinfo.xml").getroot().findall("tripinfo")
    for t in trips:
        total += float(t.get("timeLoss", 0)) + max(0.0, float(t.get("departDelay", 0)))
    assert len(trips) == r["vehicles"]
    assert total / len(trips) == pytest.approx(r["mean_delay_s"], abs=1e-3)
    assert _states(tmp_path / "tls-states.xml")


def test_modbus_transport_gives_the_same_run_as_in_process(tmp_path: Path) -> None:
    a = run_sumo_bench(GAME / "cross.sumocfg", "adaptive", end=120, seed=4, keep=tmp_path / "a")
    b = run_sumo_bench(
        GAME / "cross.sumocfg",
        "adaptive",
        end=120,
        seed=4,
        keep=tmp_path / "b",
        transport="modbus",
    )
    assert b["transport"] == "modbus"
    assert a["mean_delay_s"] == b["mean_delay_s"] and a["vehicles"] == b["vehicles"]
    assert _trips(tmp_path / "a" / "tripinfo.xml") == _trips(tmp_path / "b" / "tripinfo.xml")
    assert _states(tmp_path / "a" / "tls-states.xml") == _states(tmp_path / "b" / "tls-states.xml")
    assert b["safety"] == ZERO


@pytest.mark.parametrize("controller", ["sumo-static", "sumo-actuated", "fixed", "actuated"])
def test_every_controller_runs_and_is_checked(controller: str, tmp_path: Path) -> None:
    r = run_sumo_bench(GAME / "cross.sumocfg", controller, end=150, seed=2, keep=tmp_path)
    assert r["controller"] == controller and r["vehicles"] > 0
    assert set(r["safety"]) == set(ZERO)
    if controller.startswith("sumo-"):
        # The game's cross has no all-red; the checker says so (floor 1 s), and only that.
        assert r["safety"]["conflicts"] == 0 and r["safety"]["short_yellow"] == 0
        assert r["safety"]["short_all_red"] > 0
    else:
        assert r["safety"] == ZERO


def test_bench_sumo_cli_prints_exactly_one_json_object(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "bench",
            "sumo",
            "--sumocfg",
            str(GAME / "cross.sumocfg"),
            "--controller",
            "adaptive",
            "--end",
            "60",
            "--seed",
            "1",
            "--json",
            "--keep",
            str(tmp_path / "keep"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)  # nothing else on stdout, not even SUMO's banner
    for key in ("controller", "vehicles", "arrived", "mean_delay_s", "mean_wait_s", "wall_s"):
        assert key in result
    assert result["safety"] == ZERO
    assert "Simulation" in proc.stderr or "mean delay" in proc.stderr
    assert (tmp_path / "keep" / "tripinfo.xml").exists()
    assert (tmp_path / "keep" / "tls-states.xml").exists()


def test_bench_sumo_cli_refuses_bad_arguments(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller.cli", "bench", "sumo", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    p = run("--sumocfg", str(GAME / "cross.sumocfg"), "--controller", "magic")
    assert p.returncode == 2 and "--controller" in p.stderr and p.stdout == ""
    p = run("--sumocfg", str(tmp_path / "nope.sumocfg"), "--controller", "adaptive")
    assert p.returncode == 2 and "no such file" in p.stderr


def test_sumo_import_cli_writes_yaml_that_validates(tmp_path: Path) -> None:
    out = tmp_path / "cross.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "sumo",
            "import",
            str(GAME / "cross" / "cross.net.xml"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(out.read_text())
    (xcfg,) = data["signals"]["intersections"]
    x = Intersection.build(IntersectionConfig.model_validate(xcfg))
    assert x.n == 8 and len(x.stages) == 4
    assert "1 imported, 0 refused" in proc.stderr


GAME_CONFIGS = sorted(p.name for p in GAME.glob("*.sumocfg"))


def test_every_game_network_imports_or_says_why() -> None:
    """Every traffic light of the game networks is imported or refused with a reason."""
    import libsumo

    from controller.sumo_import import import_lights
    from simulator.sumo.config import read_sumocfg, write_run_config
    from simulator.sumo.network import describe_traffic_lights

    summary = []
    for name in GAME_CONFIGS:
        cfg = read_sumocfg(GAME / name)
        lights = []
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            run = write_run_config(cfg, Path(tmp) / "r.sumocfg", drop_options=("route-files",))
            libsumo.start(["sumo", "-c", str(run), "--no-step-log", "--no-warnings"])
            try:
                lights = describe_traffic_lights(libsumo)
            finally:
                libsumo.close()
        res = import_lights(lights)
        assert len(res.lights) + len(res.refused) == len(lights)
        for why in res.refused.values():
            assert any(
                reason in why
                for reason in ("no phases", "fewer than two signal groups", "two or more green")
            ), why
        summary.append(f"{name}: {len(res.lights)}/{len(lights)}")
    print("\n" + ", ".join(summary))
    imported = dict(s.split(": ") for s in summary)
    for must in ("cross.sumocfg", "grid6.sumocfg", "square.sumocfg", "corridor.sumocfg"):
        assert not imported[must].startswith("0/"), must


def test_bench_suite_cli_runs_every_controller_and_writes_the_page(tmp_path: Path) -> None:
    scen = tmp_path / "scen"
    scen.mkdir()
    (scen / "cross.sumocfg").write_text((GAME / "cross.sumocfg").read_text())
    (scen / "cross").symlink_to(GAME / "cross")
    (scen / "input_additional.add.xml").symlink_to(GAME / "input_additional.add.xml")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "bench",
            "suite",
            str(scen),
            "--controller",
            "sumo-actuated",
            "--controller",
            "adaptive",
            "--end",
            "120",
            "--doc",
            str(doc),
            "--plot",
            str(tmp_path / "img" / "suite.png"),
            "--json",
            str(tmp_path / "suite.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| cross |" in proc.stdout and "geometric mean" in proc.stdout
    page = doc.read_text()
    assert "bench suite: begin" in page and "![mean delay" in page
    assert (tmp_path / "img" / "suite.png").stat().st_size > 1000
    data = json.loads((tmp_path / "suite.json").read_text())
    assert {r["controller"] for r in data["runs"]} == {"sumo-actuated", "adaptive"}
    assert data["summary"]["safety"]["adaptive"] == ZERO


def test_sumo_scenarios_cli_builds_one(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "sumo",
            "scenarios",
            "--out",
            str(tmp_path),
            "--name",
            "single-light",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = Path(proc.stdout.strip())
    assert cfg == tmp_path / "single-light" / "single-light.sumocfg" and cfg.exists()
