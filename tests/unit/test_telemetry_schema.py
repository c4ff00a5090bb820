"""The telemetry schema: names, codes and builders make points every database can store."""

from __future__ import annotations

import pytest

from controller.telemetry.lineproto import encode, parse
from controller.telemetry.recorder import MemoryRecorder
from controller.telemetry.schema import (
    DECISION_REASONS,
    DETECTOR_FAULT_CODES,
    LIGHT_ALARM_BITS,
    MEASUREMENTS,
    EventCode,
    Sample,
    alarm_mask,
    light_fault,
    light_group,
    light_node_online,
    light_node_state,
    record,
    signal_decision,
    signal_detector,
    signal_event,
    signal_intersection,
    strategy_code,
)
from devices.lights import AlarmEntry


def _samples() -> list[Sample]:
    return [
        light_node_state(
            "ql1a",
            "QL-001",
            level_pct=80.0,
            power_w=121.5,
            energy_wh=10_500.25,
            burn_h=1234.5,
            switches=300,
            fallback=False,
            faults=0,
            alarms=alarm_mask(["lamp_failure"]),
        ),
        light_node_online("ql1a", "QL-001", False),
        light_group(
            "ql1a",
            level_pct=80.0,
            source="traffic",
            nodes=40,
            nodes_following=39,
            nodes_offline=1,
            nodes_alarm=2,
            power_w=4800.0,
            energy_wh=123.0,
            lighting_class=3,
        ),
        light_fault("ql1a", "QL-001", "lamp_failure", True),
        signal_event("x4", EventCode.PHASE_BEGIN_GREEN, 1, group="N_T"),
        signal_event("x4", EventCode.DETECTOR_ON, 3, group="N_T", detector="N_T_sl"),
        signal_detector(
            "x4",
            "N_T_sl",
            "N_T",
            "stopline",
            count=12,
            occupied_s=9.5,
            interval_s=60.0,
            failed=False,
        ),
        signal_decision(
            "x4",
            strategy="adaptive",
            reason="hold",
            stage=1,
            next_stage=3,
            end_green=False,
            green_s=12.3,
            hold_s=4.0,
            cost_veh_s=812.4,
        ),
        signal_intersection(
            "x4", sync="control", link_up=True, alarms=0, strategy="fixed:am", plan=1
        ),
    ]


@pytest.mark.parametrize("sample", _samples(), ids=lambda s: s.measurement)
def test_every_builder_makes_a_point_of_numbers_and_booleans(sample: Sample) -> None:
    assert sample.measurement in MEASUREMENTS
    for value in sample.fields.values():
        assert isinstance(value, (int, float, bool)) and not isinstance(value, str)
    for text in sample.tags.values():
        assert isinstance(text, str) and text
    point = parse(encode(sample.measurement, sample.tags, sample.fields, 1_700_000_000_123))
    assert dict(point.fields) == dict(sample.fields)
    assert dict(point.tags) == dict(sample.tags)


def test_integers_stay_integers_and_booleans_booleans_on_the_wire() -> None:
    s = signal_event("x4", EventCode.PHASE_BEGIN_YELLOW, 2, group="S_T")
    line = encode(s.measurement, s.tags, s.fields, 5)
    assert line == "signal_event,group=S_T,intersection=x4 code=8i,param=2i 5"
    s = light_node_online("g", "n", True)
    assert encode(s.measurement, s.tags, s.fields, 5).endswith("online=true 5")


def test_tags_are_the_identifiers_only() -> None:
    by_name = {s.measurement: set(s.tags) for s in _samples()}
    assert by_name["light_node"] == {"group", "node"}
    assert by_name["light_group"] == {"group"}
    assert by_name["light_fault"] == {"group", "node", "fault"}
    assert by_name["signal_detector"] == {"intersection", "detector", "group", "kind"}
    assert by_name["signal_decision"] == {"intersection"}
    assert by_name["signal_intersection"] == {"intersection"}
    assert set(signal_event("x", 1, 1, group="g").tags) == {"intersection", "group"}
    assert set(signal_event("x", 82, 1, group="g", detector="d").tags) == {
        "intersection",
        "group",
        "detector",
    }


def test_unknown_optional_values_are_left_out_not_written_as_sentinels() -> None:
    g = light_group(
        "g",
        level_pct=0,
        source="program",
        nodes=1,
        nodes_following=1,
        nodes_offline=0,
        nodes_alarm=0,
        power_w=0,
        energy_wh=0,
    )
    assert "lighting_class" not in g.fields
    d = signal_decision(
        "x", strategy="actuated", reason="extend", stage=1, next_stage=2, end_green=False, green_s=3
    )
    assert "hold_s" not in d.fields and "cost_veh_s" not in d.fields
    i = signal_intersection("x", sync="down", link_up=False, alarms=1, strategy=None)
    assert "cabinet_mode" not in i.fields and "cabinet_fault" not in i.fields
    assert i.fields["sync"] == 0 and i.fields["strategy"] == 0


def test_occupancy_is_a_share_of_the_interval() -> None:
    s = signal_detector(
        "x", "d", "g", "stopline", count=3, occupied_s=15.0, interval_s=60.0, failed=False
    )
    assert s.fields["occupancy_pct"] == 25.0
    s = signal_detector(
        "x", "d", "g", "camera", count=0, occupied_s=0.0, interval_s=0.0, failed=True
    )
    assert s.fields["occupancy_pct"] == 0.0 and s.fields["failed"] is True


def test_indiana_codes_are_the_published_values() -> None:
    codes = {c.name: c.value for c in EventCode}
    assert codes["PHASE_BEGIN_GREEN"] == 1
    assert [codes[f"PHASE_{k}"] for k in ("GAP_OUT", "MAX_OUT", "FORCE_OFF")] == [4, 5, 6]
    assert [codes["PHASE_BEGIN_YELLOW"], codes["PHASE_END_YELLOW"]] == [8, 9]
    assert [codes["PHASE_BEGIN_RED_CLEARANCE"], codes["PHASE_END_RED_CLEARANCE"]] == [10, 11]
    assert [codes["PED_BEGIN_WALK"], codes["PED_BEGIN_CLEARANCE"]] == [21, 22]
    assert [codes["PED_BEGIN_DONT_WALK"], codes["PED_CALL_REGISTERED"]] == [23, 45]
    assert [codes["DETECTOR_OFF"], codes["DETECTOR_ON"]] == [81, 82]
    assert [codes["PED_DETECTOR_OFF"], codes["PED_DETECTOR_ON"]] == [89, 90]
    assert set(DETECTOR_FAULT_CODES) == {"silent", "stuck", "erratic", "chattering", "stale"}


def test_code_tables_are_unambiguous() -> None:
    bits = list(LIGHT_ALARM_BITS.values())
    assert all(b & (b - 1) == 0 for b in bits) and len(set(bits)) == len(bits)
    # every alarm kind the lighting protocol knows has a bit
    kinds = AlarmEntry.model_fields["kind"].annotation.__args__  # type: ignore[union-attr]
    assert set(kinds) == set(LIGHT_ALARM_BITS)
    assert len(set(DECISION_REASONS.values())) == len(DECISION_REASONS)
    assert alarm_mask(["lamp_failure", "supply_lost", "nonsense"]) == 1 | 32
    assert strategy_code("fixed:am-peak") == 1
    assert strategy_code("actuated") == 2 and strategy_code("adaptive") == 3
    assert strategy_code("?") == 0


def test_record_hands_the_sample_to_the_recorder_with_its_time() -> None:
    rec = MemoryRecorder(now=lambda: 100.0)
    record(rec, light_fault("g", "n", "day_burner", False))
    record(rec, light_fault("g", "n", "day_burner", True), at=50.5)
    first, second = rec.of("light_fault")
    assert first.ts_ms == 100_000 and dict(first.fields) == {"active": False, "code": 2}
    assert second.ts_ms == 50_500 and dict(second.fields)["active"] is True
