"""The SUMO scenario set: it builds, reproducibly, its signal programs obey the rules, SUMO runs it.

Needs the ``cityctl[sumo]`` extra (skipped without it). The whole set is built once per module
(about 6 s); a second full build checks the files are byte-identical.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("sumo", reason="SUMO (the cityctl[sumo] extra) is not installed")

from simulator.sumo.scenarios import (
    SCENARIOS,
    ScenarioError,
    build_all,
    build_scenario,
    check_programs,
    net_file,
    route_files,
    run_static,
)
from simulator.sumo.scenarios.build import STAMP_FILE
from simulator.sumo.scenarios.tools import run_tool, sumo_binary

MIN_YELLOW_S = 3.0
MIN_ALL_RED_S = 1.0
MIN_GREEN_S = 5.0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every scenario built once for the module: name -> .sumocfg."""
    out = tmp_path_factory.mktemp("scenarios")
    return dict(zip(SCENARIOS, build_all(out), strict=True))


def _net(cfg: Path) -> Path:
    return cfg.parent / net_file(cfg.stem)


def _count(path: Path, tag: str) -> int:
    return sum(1 for _ in ET.parse(path).getroot().iter(tag))


def test_the_names_are_the_api() -> None:
    assert SCENARIOS == (
        "single-light",
        "single-heavy",
        "single-peaked",
        "corridor",
        "grid",
        "irregular",
    )
    with pytest.raises(ScenarioError, match="unknown scenario"):
        build_scenario("no-such-scenario", Path("unused"))


def test_a_failing_tool_is_reported_with_its_command_and_stderr(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as caught:
        run_tool([str(sumo_binary("netconvert")), "--no-such-option"], cwd=tmp_path)
    message = str(caught.value)
    assert "netconvert --no-such-option" in message and "exit code" in message
    assert "no-such-option" in message.split("\n", 1)[1], "the stderr tail is quoted"


@pytest.mark.parametrize("name", SCENARIOS)
def test_sumocfg_is_self_contained(built: dict[str, Path], name: str) -> None:
    cfg = built[name]
    assert cfg == cfg.parent / f"{name}.sumocfg"
    root = ET.parse(cfg).getroot()

    def value(tag: str) -> str:
        element = root.find(f".//{tag}")
        assert element is not None, tag
        return element.get("value", "")

    assert value("net-file") == net_file(name)
    assert value("route-files").split(",") == route_files(name)
    for relative in [value("net-file"), *value("route-files").split(",")]:
        assert not Path(relative).is_absolute() and "/" not in relative
        assert (cfg.parent / relative).is_file()
    assert float(value("begin")) == 0
    assert float(value("end")) == 3600
    assert float(value("step-length")) == 1
    assert float(value("time-to-teleport")) == 300
    assert root.find(".//gui-settings-file") is None and root.find(".//gui_only") is None


def test_two_builds_are_byte_identical(built: dict[str, Path], tmp_path: Path) -> None:
    again = dict(zip(SCENARIOS, build_all(tmp_path / "again"), strict=True))
    for name in SCENARIOS:
        for file in [net_file(name), *route_files(name), f"{name}.sumocfg"]:
            first = (built[name].parent / file).read_bytes()
            second = (again[name].parent / file).read_bytes()
            assert first == second, f"{name}/{file} differs between two builds"
            assert b"generated on" not in first, f"{name}/{file} keeps SUMO's dated header"


def test_cache_reuses_a_current_build_and_rebuilds_a_stale_one(tmp_path: Path) -> None:
    cfg = build_scenario("single-light", tmp_path)
    net = _net(cfg)
    first = net.stat()

    assert build_scenario("single-light", tmp_path) == cfg
    assert net.stat().st_ino == first.st_ino, "an up-to-date build was redone"

    build_scenario("single-light", tmp_path, force=True)
    forced = net.stat()
    assert forced.st_ino != first.st_ino, "force did not rebuild"

    stamp = cfg.parent / STAMP_FILE
    data = json.loads(stamp.read_text())
    data["recipe_sha256"] = "0" * 64  # as if the recipe had changed since
    stamp.write_text(json.dumps(data))
    build_scenario("single-light", tmp_path)
    assert net.stat().st_ino != forced.st_ino, "a stale stamp did not trigger a rebuild"
    assert json.loads(stamp.read_text())["recipe_sha256"] != "0" * 64


def _phases(tl: ET.Element) -> list[tuple[float, str]]:
    return [(float(p.get("duration", "0")), p.get("state", "")) for p in tl.iter("phase")]


def _phase_rule_breaks(phases: list[tuple[float, str]]) -> list[str]:
    """The rules read phase by phase, independently of ``check_programs``' link-by-link view."""
    problems: list[str] = []
    n = len(phases)
    for k, (duration, state) in enumerate(phases):
        prev_state = phases[k - 1][1]
        has_yellow = "y" in state
        has_green = any(c in "Gg" for c in state)
        if has_yellow and duration < MIN_YELLOW_S:
            problems.append(f"phase {k}: yellow {duration:g} s")
        if has_green and not has_yellow:
            # A green phase may continue the green of the phase before (a protected left after
            # the permissive phase, a pedestrian clearance): the link's whole green counts.
            for i, c in enumerate(state):
                if c not in "Gg":
                    continue
                total, j = 0.0, k
                while phases[j % n][1][i] in "Gg" and total < 3600:
                    total += phases[j % n][0]
                    j += 1
                j = k - 1
                while phases[j % n][1][i] in "Gg" and total < 3600:
                    total += phases[j % n][0]
                    j -= 1
                if total < MIN_GREEN_S:
                    problems.append(f"phase {k}: link {i} green for {total:g} s")
        if "y" in prev_state:
            # The phase after a yellow: nothing may turn green in it (the all-red clearance).
            newly_green = [
                i for i, c in enumerate(state) if c in "Gg" and prev_state[i] not in "Gg"
            ]
            if newly_green or duration < MIN_ALL_RED_S:
                problems.append(f"phase {k}: no {MIN_ALL_RED_S:g} s all-red after a yellow")
    return problems


@pytest.mark.parametrize("name", SCENARIOS)
def test_signal_programs_follow_the_rules(built: dict[str, Path], name: str) -> None:
    net = _net(built[name])
    logics = list(ET.parse(net).getroot().iter("tlLogic"))
    assert logics, f"{name} has no traffic light"
    for tl in logics:
        assert tl.get("type") == "static"
        phases = _phases(tl)
        assert any("y" in state for _, state in phases)
        assert _phase_rule_breaks(phases) == [], tl.get("id")
    assert [str(v) for v in check_programs(net)] == []


@pytest.mark.parametrize(
    ("name", "mutate", "rule"),
    [
        ("single-light", lambda p: p.__setitem__(1, (2.0, p[1][1])), "yellow"),
        ("single-light", lambda p: p.__delitem__(4), "all-red"),
        ("single-light", lambda p: p.__setitem__(0, (4.0, p[0][1])), "min-green"),
        ("single-light", lambda p: p.__setitem__(0, (27.0, "G" * len(p[0][1]))), "conflict"),
        # Yielding ('g') right turns and permissive lefts made major: conflicts with the
        # crossings and the opposing through traffic.
        ("irregular", lambda p: p.__setitem__(0, (11.0, p[0][1].replace("g", "G"))), "conflict"),
    ],
)
def test_rule_check_catches_broken_programs(
    built: dict[str, Path],
    tmp_path: Path,
    name: str,
    mutate: Callable[[list[tuple[float, str]]], None],
    rule: str,
) -> None:
    tree = ET.parse(_net(built[name]))
    tl = next(tree.getroot().iter("tlLogic"))
    phases = _phases(tl)
    mutate(phases)
    for element in list(tl):
        tl.remove(element)
    for duration, state in phases:
        ET.SubElement(tl, "phase", duration=f"{duration:g}", state=state)
    broken = tmp_path / "broken.net.xml"
    tree.write(broken)
    rules = {v.rule for v in check_programs(broken)}
    assert rule in rules


def test_irregular_is_irregular(built: dict[str, Path]) -> None:
    root = ET.parse(_net(built["irregular"])).getroot()
    (tl,) = root.iter("tlLogic")
    controlled = {
        c.get("via", "")[1:].split("_")[0] for c in root.iter("connection") if c.get("tl")
    } - {""}
    assert controlled == {"C", "D"}, "one light over two junctions"
    green_phases = [s for _, s in _phases(tl) if "y" not in s and any(c in "Gg" for c in s)]
    assert len(green_phases) > 4
    assert any("g" in s for s in green_phases), "yielding movements are 'g'"

    plain = [e for e in root.iter("edge") if e.get("function") is None]
    into_c = [e for e in plain if e.get("to") == "C"]
    assert len(into_c) == 5, "a five-arm junction"
    crossings = [e for e in root.iter("edge") if e.get("function") == "crossing"]
    assert len(crossings) >= 2
    pedestrian_links = [c for c in root.iter("connection") if c.get("tl") and not c.get("via")]
    assert len(pedestrian_links) == len(crossings), "every crossing is signalled"

    # A shared lane: one lane with a through and a right-turn connection.
    dirs: dict[tuple[str, str], set[str]] = {}
    for c in root.iter("connection"):
        if not c.get("from", "").startswith(":"):
            dirs.setdefault((c.get("from", ""), c.get("fromLane", "")), set()).add(c.get("dir", ""))
    assert any({"s", "r"} <= d for d in dirs.values())

    peds = built["irregular"].parent / route_files("irregular")[1]
    assert _count(peds, "person") >= 250


def _departures(routes: Path) -> list[float]:
    return [float(v.get("depart", "0")) for v in ET.parse(routes).getroot().iter("vehicle")]


def _entries(routes: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for vehicle in ET.parse(routes).getroot().iter("vehicle"):
        route = vehicle.find("route")
        assert route is not None
        counts[route.get("edges", "").split()[0]] += 1
    return counts


def test_demand_levels(built: dict[str, Path]) -> None:
    def routes(name: str) -> Path:
        return built[name].parent / route_files(name)[0]

    assert 300 <= len(_departures(routes("single-light"))) <= 400
    assert 1400 <= len(_departures(routes("single-heavy"))) <= 1800

    heavy = _entries(routes("single-heavy"))
    main = heavy["left0A0"] + heavy["right0A0"]
    side = heavy["top0A0"] + heavy["bottom0A0"]
    assert main > 1.8 * side, "the main road is the heavier one"

    peaked = _departures(routes("single-peaked"))
    middle = sum(1500 <= t < 2100 for t in peaked)
    first = sum(t < 600 for t in peaked)
    last = sum(t >= 3000 for t in peaked)
    assert middle > 2.5 * first and middle > 2.5 * last, "a peak mid-hour"

    corridor = _entries(routes("corridor"))
    through = corridor["left0A0"] + corridor["right0E0"]
    sides = [n for edge, n in corridor.items() if edge not in ("left0A0", "right0E0")]
    assert len(sides) == 10 and through > 5 * max(sides)


@pytest.mark.parametrize("name", ["single-heavy", "irregular"])
def test_first_300_s_load_and_run_in_sumo(built: dict[str, Path], name: str) -> None:
    stats = run_static(built[name], end_s=300)
    assert stats.end_s == 300
    assert stats.inserted > 0 and stats.collisions == 0
    unsafe = [w for w in stats.warnings if "Unsafe green" in w or "Missing yellow" in w]
    assert unsafe == []


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_hour_runs_with_the_static_programs(built: dict[str, Path], name: str) -> None:
    stats = run_static(built[name])
    assert stats.end_s == 3600
    assert stats.collisions == 0
    assert stats.teleports <= 0.01 * stats.inserted
    assert stats.waiting <= 0.01 * stats.loaded, "an insertion backlog: demand above capacity"
    assert stats.arrived >= 0.9 * stats.loaded
    assert stats.warnings == ()
