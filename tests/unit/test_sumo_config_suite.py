"""Pure parts of the SUMO bench: the run configuration, the suite's summary and its page."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from controller.bench.suite import (
    BEGIN_MARK,
    END_MARK,
    find_scenarios,
    format_table,
    summarise,
    write_markdown,
)
from simulator.sumo.config import read_sumocfg, write_run_config

CFG = """<?xml version="1.0" encoding="UTF-8"?>
<sumoConfiguration>
    <input>
        <net-file value="nets/a.net.xml"/>
        <route-files value="r1.rou.xml, r2.rou.xml"/>
        <additional-files value="tls.add.xml"/>
    </input>
    <time>
        <begin value="15:00:00"/>
        <end value="16:0:0"/>
        <step-length value="0.5"/>
    </time>
    <processing><time-to-teleport value="300"/></processing>
    <osg-view value="true"/>
    <gui_only><gui-settings-file value="view.xml"/></gui_only>
</sumoConfiguration>
"""


def test_sumocfg_paths_become_absolute_and_gui_options_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    p = tmp_path / "s" / "x.sumocfg"
    p.write_text(CFG)
    cfg = read_sumocfg(p)
    assert cfg.net_file == (tmp_path / "s" / "nets" / "a.net.xml").resolve()
    assert cfg.files("route-files") == [
        (tmp_path / "s" / "r1.rou.xml").resolve(),
        (tmp_path / "s" / "r2.rou.xml").resolve(),
    ]
    assert cfg.time("begin", 0) == 54_000 and cfg.time("end", 0) == 57_600
    assert cfg.time("step-length", 1) == 0.5 and cfg.time("nope", 7) == 7
    assert "osg-view" in cfg.dropped and "gui-settings-file" not in cfg.options
    assert cfg.options["time-to-teleport"] == "300"


def test_run_config_appends_additionals_and_sets_options(tmp_path: Path) -> None:
    p = tmp_path / "x.sumocfg"
    p.write_text(CFG)
    extra = tmp_path / "work" / "det.add.xml"
    out = write_run_config(
        read_sumocfg(p),
        tmp_path / "work" / "run.sumocfg",
        extra_additional=[extra],
        set_options={"end": "57000", "tripinfo-output": "t.xml"},
        drop_options=("route-files",),
    )
    root = ET.parse(out).getroot()
    opts = {el.tag: el.get("value") for el in root}
    assert opts["additional-files"].split(",") == [
        str((tmp_path / "tls.add.xml").resolve()),
        str(extra.resolve()),
    ]
    assert opts["end"] == "57000" and opts["tripinfo-output"] == "t.xml"
    assert "route-files" not in opts and "osg-view" not in opts


def test_unreadable_sumocfg_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sumocfg"
    bad.write_text("<sumoConfiguration><input>")
    with pytest.raises(ValueError, match=r"bad\.sumocfg"):
        read_sumocfg(bad)
    with pytest.raises(ValueError, match="no net-file"):
        _ = read_sumocfg(_write(tmp_path / "empty.sumocfg", "<c><time/></c>")).net_file


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def _run(name: str, controller: str, delay: float, **safety: int) -> dict[str, object]:
    counts = {"conflicts": 0, "short_yellow": 0, "short_all_red": 0, "min_green_cut": 0}
    counts.update(safety)
    return {
        "sumocfg": f"/x/{name}/{name}.sumocfg",
        "controller": controller,
        "mean_delay_s": delay,
        "safety": counts,
    }


RUNS = [
    _run("a", "sumo-static", 40.0),
    _run("a", "sumo-actuated", 20.0),
    _run("a", "sumo-delay_based", 25.0),
    _run("a", "adaptive", 15.0),
    _run("b", "sumo-static", 10.0, short_all_red=3),
    _run("b", "sumo-actuated", 12.0),
    _run("b", "adaptive", 9.0),
    _run("b", "adaptive", 11.0),  # a second seed: the cell is their mean
    {"sumocfg": "/x/c/c.sumocfg", "controller": "adaptive", "error": "RuntimeError: boom"},
]
CTRLS = ("sumo-static", "sumo-actuated", "sumo-delay_based", "adaptive")


def test_summary_ratios_geometric_mean_safety_and_errors() -> None:
    s = summarise(RUNS, CTRLS)
    assert s["mean_delay_s"]["b"]["adaptive"] == pytest.approx(10.0)
    assert s["adaptive_vs_best_baseline"] == {"a": pytest.approx(0.75), "b": pytest.approx(1.0)}
    assert s["geometric_mean_ratio"] == pytest.approx(math.sqrt(0.75))
    assert s["safety"]["sumo-static"]["short_all_red"] == 3
    assert s["errors"] == ["c adaptive: RuntimeError: boom"]


def test_table_and_page_section_are_rewritten_in_place(tmp_path: Path) -> None:
    result = {
        "date": "2026-12-02",
        "machine": "2 cores",
        "wall_s": 12.0,
        "workers": 2,
        "seeds": [1],
        "controllers": list(CTRLS),
        "runs": RUNS,
        "summary": summarise(RUNS, CTRLS),
    }
    table = format_table(result)
    assert "| a | 40.0 | **20.0** | 25.0 | **15.0** | 0.75 |" in table
    assert "**geometric mean**" in table and "0.87" in table
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nbefore\n")
    write_markdown(result, doc, tmp_path / "img" / "chart.png")
    first = doc.read_text()
    assert first.startswith("# Benchmarks\n\nbefore\n") and BEGIN_MARK in first
    assert "![mean delay per scenario and controller](img/chart.png)" in first
    assert "c adaptive: RuntimeError: boom" in first
    doc.write_text(first + "\nafter\n")
    write_markdown(result, doc, None)
    second = doc.read_text()
    assert second.count(BEGIN_MARK) == 1 and second.count(END_MARK) == 1
    assert second.endswith("after\n") and "chart.png" not in second


def test_find_scenarios_walks_directories_and_keeps_files(tmp_path: Path) -> None:
    for rel in ("a/a.sumocfg", "b/deep/b.sumocfg", "b/notes.txt"):
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    single = tmp_path / "a" / "a.sumocfg"
    found = find_scenarios([tmp_path / "b", single])
    assert found == [tmp_path / "b" / "deep" / "b.sumocfg", single]
