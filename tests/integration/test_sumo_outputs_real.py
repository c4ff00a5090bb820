"""The SUMO bridge's readers, checker and baselines against a real SUMO run.

A single signalised cross from ``netgenerate`` (yellow 3 s, all-red 2 s) with more demand on
one approach than it can take, run for 300 s in ``libsumo``: the tripinfo summary must count
every vehicle of the route file (arrived, unfinished and undeparted), the displayed states
of SUMO's own static program must pass the independent checker, and the actuated baseline
loaded as an additional file must be the program SUMO runs.
"""

from __future__ import annotations

import importlib.util
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulator.sumo.baselines import BASELINE_PROGRAM_ID, baseline_additional
from simulator.sumo.network import TlsDescription, choose_program, describe_traffic_lights
from simulator.sumo.outputs import read_tls_states, read_tripinfo, tls_states_additional
from simulator.sumo.safety import check_displayed, rules_from_program

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sumo") is None or importlib.util.find_spec("libsumo") is None,
    reason="eclipse-sumo / libsumo not installed (extra cityctl[sumo])",
)

END_S = 300
# Every departure lies within the first 200 s: SUMO loads route files 200 s ahead, and only
# loaded vehicles can be written as undeparted.
ROUTES = """<routes>
    <vType id="car"/>
    <route id="ns" edges="top0A0 A0bottom0"/>
    <route id="sn" edges="bottom0A0 A0top0"/>
    <route id="we" edges="left0A0 A0right0"/>
    <route id="ew" edges="right0A0 A0left0"/>
    <route id="wn" edges="left0A0 A0top0"/>
    <flow id="heavy" type="car" route="ns" begin="0" period="0.5" number="300"/>
    <flow id="sn" type="car" route="sn" begin="1" period="9" number="20"/>
    <flow id="we" type="car" route="we" begin="2" period="7" number="25"/>
    <flow id="ew" type="car" route="ew" begin="3" period="11" number="15"/>
    <flow id="wn" type="car" route="wn" begin="4" period="20" number="8"/>
</routes>
"""
VEHICLES = 300 + 20 + 25 + 15 + 8


@dataclass(frozen=True)
class Cross:
    folder: Path
    net: Path
    routes: Path
    desc: TlsDescription


def _libsumo() -> Any:
    import libsumo

    return libsumo


def _run(cross: Cross, additionals: list[Path], extra: list[str]) -> str:
    """Run the cross for END_S seconds; return the light's program after the first step."""
    ls = _libsumo()
    args = ["sumo", "-n", str(cross.net), "-r", str(cross.routes), "--no-step-log"]
    args += ["--no-warnings", "--seed", "1"]
    if additionals:
        args += ["-a", ",".join(str(a) for a in additionals)]
    ls.start([*args, *extra])
    try:
        ls.simulationStep()
        program = str(ls.trafficlight.getProgram("A0"))
        while ls.simulation.getTime() < END_S:
            ls.simulationStep()
    finally:
        # libsumo allows one simulation per process; outputs are complete only after close.
        ls.close()
    return program


@pytest.fixture(scope="module")
def cross(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cross]:
    import sumo

    folder = tmp_path_factory.mktemp("sumo_cross")
    net = folder / "cross.net.xml"
    netgenerate = Path(sumo.SUMO_HOME) / "bin" / "netgenerate"
    subprocess.run(
        [
            str(netgenerate),
            "--grid",
            "--grid.number=1",
            "--grid.length=200",
            "--grid.attach-length=200",
            "--tls.set=A0",
            "--tls.yellow.time=3",
            "--tls.allred.time=2",
            "--no-turnarounds",
            "--seed=1",
            "-o",
            str(net),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    routes = folder / "routes.rou.xml"
    routes.write_text(ROUTES, encoding="utf-8")
    ls = _libsumo()
    ls.start(["sumo", "-n", str(net), "--no-step-log", "--no-warnings"])
    try:
        (desc,) = describe_traffic_lights(ls)
    finally:
        ls.close()
    yield Cross(folder, net, routes, desc)


def test_static_program_outputs(cross: Cross) -> None:
    tripinfo = cross.folder / "static.tripinfo.xml"
    states_file = cross.folder / "static.states.xml"
    add = cross.folder / "static.states.add.xml"
    add.write_text(tls_states_additional(["A0"], states_file), encoding="utf-8")
    program_id = _run(
        cross,
        [add],
        [
            "--tripinfo-output",
            str(tripinfo),
            "--tripinfo-output.write-unfinished",
            "--tripinfo-output.write-undeparted",
        ],
    )
    assert program_id == cross.desc.active_program == "0"

    summary = read_tripinfo(tripinfo)
    assert summary.vehicles == VEHICLES
    assert summary.arrived + summary.unfinished + summary.undeparted == VEHICLES
    assert summary.arrived > 0 and summary.undeparted > 0  # the heavy approach overflows
    assert summary.mean_delay_s > summary.mean_time_loss_s > 0

    states = read_tls_states(states_file)
    changes = states["A0"]
    assert list(states) == ["A0"]
    assert len(changes) >= 18  # six phases in each 90 s cycle
    assert changes[0][0] == 0.0
    program = choose_program(cross.desc)
    assert {s for _, s in changes} == {p.state for p in program.phases}
    rules = rules_from_program(cross.desc, program)
    assert rules.conflicts  # the two directions are never green together
    result = check_displayed(changes, rules, END_S)
    assert result.as_dict() == dict.fromkeys(result.as_dict(), 0), result.details
    # The same display with every yellow shown as green would be caught.
    no_yellow = [(t, s.replace("y", "G")) for t, s in changes]
    assert check_displayed(no_yellow, rules, END_S).short_yellow > 0


def test_actuated_baseline_is_the_active_program(cross: Cross) -> None:
    program = choose_program(cross.desc)
    baseline = cross.folder / "actuated.add.xml"
    baseline.write_text(baseline_additional([(cross.desc, program)], "actuated"), encoding="utf-8")
    states_file = cross.folder / "actuated.states.xml"
    add = cross.folder / "actuated.states.add.xml"
    add.write_text(tls_states_additional(["A0"], states_file), encoding="utf-8")

    program_id = _run(cross, [baseline, add], [])
    assert program_id == BASELINE_PROGRAM_ID["actuated"]

    # Every record was written while the baseline ran.
    programs = {e.get("programID") for e in ET.parse(states_file).getroot()}
    assert programs == {"cityctl-actuated"}
    changes = read_tls_states(states_file)["A0"]
    # Measured against the network's own plan: SUMO's actuated logic keeps the clearances
    # and the 5 s minimum green it was given.
    result = check_displayed(changes, rules_from_program(cross.desc, program), END_S)
    assert result.total == 0, result.details
