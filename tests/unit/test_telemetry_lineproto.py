"""Line protocol: what is written reads back the same, and bad points are refused by name."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.telemetry.lineproto import LineError, encode, parse, series_key
from controller.telemetry.recorder import MemoryRecorder, Telemetry

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:-]{0,15}", fullmatch=True)
tag_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='\\"'),
    min_size=1,
    max_size=20,
)
field_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(
    measurement=names,
    tags=st.dictionaries(names, tag_values, max_size=4),
    fields=st.dictionaries(names, field_values, min_size=1, max_size=4),
    ts=st.integers(min_value=0, max_value=2**53),
)
def test_every_valid_point_reads_back_equal(
    measurement: str, tags: dict[str, str], fields: dict[str, float | int | bool], ts: int
) -> None:
    line = encode(measurement, tags, fields, ts)
    assert "\n" not in line
    p = parse(line)
    assert p.measurement == measurement
    assert dict(p.tags) == tags
    assert p.ts_ms == ts
    back = dict(p.fields)
    assert back.keys() == fields.keys()
    for k, v in fields.items():
        assert type(back[k]) is type(v)
        assert back[k] == v or (isinstance(v, float) and math.isclose(back[k], v))
    assert p.line() == line  # canonical: equal points are equal strings


def test_tags_are_sorted_and_escaped() -> None:
    line = encode("sig", {"x": "a b", "g": "1,2=3"}, {"v": 1}, 5)
    assert line == r"sig,g=1\,2\=3,x=a\ b v=1i 5"
    assert series_key("sig", {"x": "a b", "g": "1,2=3"}) == line.split(" v=")[0]


@pytest.mark.parametrize(
    ("args", "part"),
    [
        (("", {}, {"v": 1}, 0), "measurement"),
        (("1m", {}, {"v": 1}, 0), "measurement"),
        (("m", {"t": ""}, {"v": 1}, 0), "tag t"),
        (("m", {"t": "a\nb"}, {"v": 1}, 0), "tag t"),
        (("m", {"bad key": "x"}, {"v": 1}, 0), "tag bad key"),
        (("m", {}, {}, 0), "fields"),
        (("m", {}, {"v": float("nan")}, 0), "field v"),
        (("m", {}, {"v": float("inf")}, 0), "field v"),
        (("m", {}, {"v": "text"}, 0), "field v"),
        (("m", {}, {"v": 2**64}, 0), "field v"),
        (("m", {}, {"v": 1}, -1), "timestamp"),
        (("m", {}, {"v": 1}, 1.5), "timestamp"),
    ],
)
def test_bad_points_name_the_part(args: tuple[object, ...], part: str) -> None:
    with pytest.raises(LineError) as exc:
        encode(*args)  # type: ignore[arg-type]
    assert exc.value.part == part


class _Sink:
    def __init__(self) -> None:
        self.batches: list[list[tuple[int, str]]] = []

    def append(self, rows: list[tuple[int, str]]) -> None:
        self.batches.append(list(rows))


def test_recorder_keeps_series_unique_per_millisecond_and_counts_rejects() -> None:
    sink = _Sink()
    t = Telemetry(sink, now=lambda: 1000.0)
    for _ in range(3):
        t.record("signal_event", {"intersection": "x1"}, {"code": 1})
    t.record("signal_event", {"intersection": "x2"}, {"code": 1})
    t.record("bad measurement", {}, {"v": 1})
    t.record("m", {}, {"v": float("nan")})
    stamps = [parse(line).ts_ms for b in sink.batches for _, line in b]
    assert stamps == [1_000_000, 1_000_001, 1_000_002, 1_000_000]
    assert t.stats.recorded == 4
    assert t.stats.rejected == 2
    assert t.stats.bumped == 2


async def test_recorder_commits_once_per_loop_turn_with_no_window() -> None:
    import asyncio

    sink = _Sink()
    t = Telemetry(sink, now=lambda: 1.0, commit_every_s=0)
    for i in range(10):
        t.record("m", {"i": str(i)}, {"v": i})
    assert sink.batches == []  # not yet: after this turn of the loop
    await asyncio.sleep(0)
    assert len(sink.batches) == 1 and len(sink.batches[0]) == 10


async def test_recorder_commits_the_points_of_a_window_in_one_batch() -> None:
    import asyncio

    sink = _Sink()
    t = Telemetry(sink, now=lambda: 1.0, commit_every_s=0.05)
    t.record("m", {"i": "0"}, {"v": 0})
    for i in range(1, 5):  # spread over several turns of the loop, within the window
        await asyncio.sleep(0.005)
        t.record("m", {"i": str(i)}, {"v": i})
    assert sink.batches == []
    await asyncio.sleep(0.1)
    assert [len(b) for b in sink.batches] == [5] and t.stats.flushes == 1
    # A burst of MAX_PENDING goes at once, whatever the window; flush() takes the rest now.
    for i in range(Telemetry.MAX_PENDING + 3):
        t.record("m", {"i": "burst"}, {"v": i})
    assert [len(b) for b in sink.batches] == [5, Telemetry.MAX_PENDING]
    t.flush()
    assert [len(b) for b in sink.batches] == [5, Telemetry.MAX_PENDING, 3]
    await asyncio.sleep(0.1)  # the cancelled timer commits nothing more
    assert len(sink.batches) == 3


@pytest.mark.parametrize("bad", [-0.01, math.nan])
def test_recorder_refuses_a_negative_window(bad: float) -> None:
    with pytest.raises(ValueError, match="commit_every_s"):
        Telemetry(_Sink(), now=lambda: 1.0, commit_every_s=bad)


def test_memory_recorder_refuses_bad_points_loudly() -> None:
    m = MemoryRecorder(now=lambda: 2.0)
    m.record("m", {"a": "b"}, {"v": 1.5})
    assert m.of("m")[0].ts_ms == 2000
    with pytest.raises(LineError):
        m.record("m", {}, {"v": "x"})  # type: ignore[dict-item]
