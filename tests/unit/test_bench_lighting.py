"""The lighting bench on a tiny inline district: a week, two traffic-dimmed groups, a junction."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from controller.bench.lighting import format_table, road_kind_for, run_lighting_bench
from controller.config import CityConfig, LightingClass, parse_config
from controller.lighting.traffic_class import ClassSelector
from schedules.energy import LampPowerModel
from schedules.evaluate import clamp_min_dim, level_at

CONFIG = """
site: {name: Phu Ly, latitude: 20.54, longitude: 105.91, timezone: Asia/Ho_Chi_Minh}
lighting:
  traffic: {hold_s: 900, stale_after_s: 900}
  programs:
    - name: arterial
      steps:
        - {at: sunset+10min, level: 100, ramp_s: 60}
        - {at: "23:00", level: 80, ramp_s: 300}
        - {at: "00:30", level: 60, ramp_s: 300}
        - {at: sunrise-10min, level: 0, ramp_s: 60}
    - name: dusk-to-dawn
      steps:
        - {at: sunset, level: 100}
        - {at: sunrise, level: 0}
  groups:
    - id: avenue
      road: Lê Công Thanh
      lighting_class: M3
      lowest_class: M5
      traffic_segment: avenue
      capacity_vph: 3000
      program: arterial
      lamp_w: 150
      nodes: ["AV-01..AV-10"]
    - id: lane
      road: Lam Hạ
      lighting_class: M5
      lowest_class: M6
      traffic_segment: lane
      capacity_vph: 800
      program: arterial
      lamp_w: 60
      min_dim: 15
      nodes: ["LN-01..LN-05"]
    - id: junction
      road: QL1A × LCT
      lighting_class: M1
      never_dim: true
      program: dusk-to-dawn
      lamp_w: 250
      nodes: ["JX-1", "JX-2"]
  nodes:
    - {id: AV-01, lamp_w: 200}
"""
START = dt.date(2026, 3, 2)


@pytest.fixture(scope="module")
def cfg() -> CityConfig:
    config, _warnings = parse_config(CONFIG)
    return config


@pytest.fixture(scope="module")
def week(cfg: CityConfig) -> dict[str, Any]:
    return run_lighting_bench(cfg, 2026, start=START, days=7)


def _group(result: dict[str, Any], gid: str) -> dict[str, Any]:
    groups: list[dict[str, Any]] = result["groups"]
    return next(g for g in groups if g["group"] == gid)


def test_never_below_the_required_class_and_saves_energy(week: dict[str, Any]) -> None:
    total = week["total"]
    assert total["below_required_h"] == 0
    assert 0 < total["energy_kwh"] <= total["baseline_kwh"]
    assert total["saving_pct"] > 0
    for g in week["groups"]:
        assert g["below_required_h"] == 0
        assert g["energy_kwh"] <= g["baseline_kwh"] + 1e-6
    avenue = _group(week, "avenue")
    assert avenue["traffic_dimmed_h"] > 0
    assert avenue["energy_kwh"] < avenue["program_only_kwh"]
    assert set(avenue["class_hours"]) <= {"M3", "M4", "M5"}  # never below lowest_class
    assert "M5" in avenue["class_hours"]
    assert avenue["road_kind"] == "arterial" and avenue["peak_vph"] == 2250


def test_never_dim_group_is_never_traffic_dimmed(week: dict[str, Any]) -> None:
    junction = _group(week, "junction")
    assert junction["traffic_dimmed_h"] == 0
    assert junction["energy_kwh"] == pytest.approx(junction["program_only_kwh"])
    # dusk to dawn at 100 %: the same as the baseline
    assert junction["burning_h"] == pytest.approx(junction["baseline_burning_h"], abs=0.2)
    assert junction["saving_pct"] == pytest.approx(0, abs=0.2)


def test_result_is_json_and_a_table(week: dict[str, Any]) -> None:
    text = json.dumps(week)
    assert "runtime_s" in text
    assert week["check"]["max_program_error"] < 1e-6
    table = format_table(week)
    for gid in ("avenue", "lane", "junction", "total"):
        assert gid in table


def test_deterministic_for_a_seed(cfg: CityConfig, week: dict[str, Any]) -> None:
    again = run_lighting_bench(cfg, 2026, start=START, days=7)
    other = run_lighting_bench(cfg, 2026, start=START, days=7, seed=99)

    def strip(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k != "runtime_s"}

    assert strip(again) == strip(week)
    assert strip(other) != strip(week)


def test_program_energy_matches_brute_force_sampling(cfg: CityConfig) -> None:
    one = run_lighting_bench(cfg, 2026, start=START, days=1)
    gs = cfg.group_schedule("lane")
    model = LampPowerModel(rated_w=60)
    tz = cfg.location.tz
    t = dt.datetime.combine(START, dt.time(0), tzinfo=tz)
    wh = 0.0
    for _ in range(24 * 60 * 2):  # every 30 s
        wh += 5 * model.power_w(clamp_min_dim(level_at(gs, t), 15)) * 30 / 3600
        t += dt.timedelta(seconds=30)
    assert _group(one, "lane")["program_only_kwh"] == pytest.approx(wh / 1000, abs=0.05)


def test_the_below_required_check_is_not_vacuous(
    cfg: CityConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broken selector that caps every group at 15 % must be caught.
    def broken_cap(self: ClassSelector, now: float) -> float:
        return 15.0

    monkeypatch.setattr(ClassSelector, "cap_level", broken_cap)
    broken = run_lighting_bench(cfg, 2026, start=START, days=1)
    assert broken["total"]["below_required_h"] > 1
    assert _group(broken, "junction")["below_required_h"] == 0


def test_road_kind_from_design_class() -> None:
    assert road_kind_for(LightingClass.M2) == "arterial"
    assert road_kind_for(LightingClass.M3) == "arterial"
    assert road_kind_for(LightingClass.M4) == "collector"
    assert road_kind_for(LightingClass.M6) == "residential"
