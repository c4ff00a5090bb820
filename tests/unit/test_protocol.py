"""The light protocol's codec: every bad payload becomes one PayloadError naming the field."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.lights import (
    FallbackProgram,
    FallbackStep,
    LightCommand,
    NodeState,
    PayloadError,
    Topics,
    TrafficCount,
    decode,
    encode,
)

NOW = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.timezone(dt.timedelta(hours=7)))


def test_round_trip() -> None:
    cmd = LightCommand(cmd_id="a-1", level=80, ramp_s=300, issued=NOW)
    assert decode(LightCommand, encode(cmd)) == cmd


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        (b"", "", "not JSON"),
        (b"\xff\xfe", "", "not JSON"),
        (b"[1]", "", "expected a JSON object"),
        (b'{"v": 2, "cmd_id": "x", "level": 1, "issued": "2026-11-25T18:00:00+07:00"}', "v", "1"),
        (
            b'{"cmd_id": "x", "level": 140, "issued": "2026-11-25T18:00:00+07:00"}',
            "level",
            "less than or equal to 100",
        ),
        (
            b'{"cmd_id": "x", "level": "high", "issued": "2026-11-25T18:00:00+07:00"}',
            "level",
            "expected a number, got 'high' (a string)",
        ),
        # No lax coercions off the wire: a number as text, a boolean, a Unix time, v = true.
        (
            b'{"cmd_id": "x", "level": "50", "issued": "2026-11-25T18:00:00+07:00"}',
            "level",
            "expected a number",
        ),
        (
            b'{"cmd_id": "x", "level": true, "issued": "2026-11-25T18:00:00+07:00"}',
            "level",
            "got true (a boolean)",
        ),
        (b'{"cmd_id": "x", "level": 5, "issued": 1764068400}', "issued", "expected a string"),
        (
            b'{"v": true, "cmd_id": "x", "level": 5, "issued": "2026-11-25T18:00:00Z"}',
            "v",
            "must be the integer 1",
        ),
        (
            b'{"cmd_id": "x", "level": 5, "ramp_s": Infinity, "issued": "2026-11-25T18:00:00Z"}',
            "ramp_s",
            "finite number",
        ),
        (b'{"cmd_id": "x", "level": 10, "issued": "2026-11-25T18:00:00"}', "issued", "UTC offset"),
        (b'{"cmd_id": "x", "level": 10}', "issued", "Field required"),
        (
            b'{"cmd_id": "x", "level": 1' + b"0" * 5000 + b', "issued": "2026-11-25T18:00:00Z"}',
            "",
            "not acceptable JSON",
        ),
        (b"[" * 100_000, "", "JSON"),
    ],
)
def test_bad_payloads_name_field_and_reason(payload: bytes, field: str, words: str) -> None:
    with pytest.raises(PayloadError) as exc:
        decode(LightCommand, payload)
    assert exc.value.field == field
    assert words in str(exc.value)


@given(st.binary(max_size=300))
def test_decode_never_raises_anything_but_payload_error(data: bytes) -> None:
    for model in (LightCommand, NodeState, TrafficCount, FallbackProgram):
        with contextlib.suppress(PayloadError):
            decode(model, data)


def test_node_state_bounds_what_a_node_can_make_the_controller_keep() -> None:
    ok = NodeState(
        node="N-1", group="g", ts=NOW, level=50, target=50, power_w=60, energy_wh=1e6,
        burn_h=1e3, switches=5, cmd_id="c" * 64,
    )  # fmt: skip
    assert decode(NodeState, encode(ok)) == ok
    for key, value, words in [
        ("energy_wh", "Infinity", "finite number"),
        ("burn_h", "NaN", "finite number"),
        ("switches", str(2**64), "less than or equal to"),
        ("switches", "3.5", "fractional part"),
        ("cmd_id", '"' + "c" * 65 + '"', "at most 64 characters"),
        ("group", '"' + "g" * 5000 + '"', "should match pattern"),
        ("faults", '["driver_failure", "supply_lost", "driver_failure"]', "at most 2 items"),
    ]:
        text = encode(ok).decode()[:-1] + f', "{key}": {value}}}'
        with pytest.raises(PayloadError) as exc:
            decode(NodeState, text)
        assert exc.value.field == key and words in exc.value.reason, exc.value
        assert len(str(exc.value)) < 200  # the value is quoted short, whatever its size


def test_topics_parse_only_their_own_tree() -> None:
    t = Topics("city/a")
    assert t.node_from(t.node_state("LL-1")) == ("LL-1", "state")
    assert t.node_from("city/a/v1/lights/node/LL-1/state/extra") is None
    assert t.node_from("other/v1/lights/node/LL-1/state") is None
    assert t.segment_from(t.traffic_count("seg-1")) == "seg-1"
    assert t.segment_from("city/a/v1/traffic/segment//count") is None


def test_fallback_program_wraps_around_midnight() -> None:
    fb = FallbackProgram(
        group="g",
        issued=NOW,
        timezone="Asia/Ho_Chi_Minh",
        steps=[
            FallbackStep(at=dt.time(17, 30), level=100),
            FallbackStep(at=dt.time(23), level=60),
            FallbackStep(at=dt.time(6), level=0),
        ],
    )
    assert fb.level_at(dt.time(3)) == 60  # before the first step of the day: last one holds
    assert fb.level_at(dt.time(12)) == 0
    assert fb.level_at(dt.time(18)) == 100


def test_traffic_count_flow() -> None:
    c = TrafficCount(segment="s", ts=NOW, interval_s=300, vehicles=50)
    assert c.per_hour == 600
