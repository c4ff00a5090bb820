"""The built-in traffic demand model: plausible daily shapes, deterministic noise, MQTT counters."""

from __future__ import annotations

import ast
import datetime as dt
import random
import statistics
from pathlib import Path

import pytest

from devices.lights import Topics, TrafficCount, decode
from simulator.traffic import (
    CounterStats,
    DayType,
    RoadKind,
    TrafficSegment,
    count_series,
    counts,
    day_type,
    expected_flow,
    poisson,
    run_traffic_counters,
)

ICT = dt.timezone(dt.timedelta(hours=7))
WEDNESDAY = dt.date(2026, 3, 4)
PEAK = 2400.0


def at(day: dt.date, h: int, m: int = 30) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(h, m), tzinfo=ICT)


@pytest.mark.parametrize("kind", list(RoadKind))
def test_weekday_shape_has_two_peaks_and_a_deep_night(kind: RoadKind) -> None:
    flows = [expected_flow(kind, PEAK, at(WEDNESDAY, h)) for h in range(24)]
    assert max(flows) == pytest.approx(PEAK, rel=0.02)
    assert max(flows[6:10]) > 0.9 * PEAK  # morning peak
    assert max(flows[16:19]) > 0.9 * PEAK  # evening peak
    night = flows[1:4]
    assert all(0.005 * PEAK <= f <= 0.05 * PEAK for f in night)
    assert flows[20] > 3 * max(night)  # evening activity
    assert min(flows[12:15]) < 0.7 * PEAK  # early-afternoon lull


def test_arterial_night_is_two_to_five_percent_of_peak() -> None:
    for h in (1, 2, 3):
        share = expected_flow("arterial", PEAK, at(WEDNESDAY, h)) / PEAK
        assert 0.02 <= share <= 0.05


def test_weekends_holidays_and_tet() -> None:
    sat, sun = dt.date(2026, 3, 7), dt.date(2026, 3, 8)
    assert day_type(WEDNESDAY) is DayType.WEEKDAY
    assert day_type(sat) is DayType.SATURDAY
    assert day_type(sun) is DayType.SUNDAY_HOLIDAY
    assert day_type(dt.date(2026, 9, 2)) is DayType.SUNDAY_HOLIDAY  # National Day
    assert day_type(dt.date(2026, 2, 17)) is DayType.SUNDAY_HOLIDAY  # Tết
    assert day_type(dt.date(2026, 2, 17), tet=False) is DayType.WEEKDAY
    assert day_type(WEDNESDAY, holidays={WEDNESDAY}) is DayType.SUNDAY_HOLIDAY
    # Sunday mornings are quiet; Saturday nights are late
    assert expected_flow("arterial", PEAK, at(sun, 7)) < 0.6 * expected_flow(
        "arterial", PEAK, at(WEDNESDAY, 7)
    )
    assert expected_flow("arterial", PEAK, at(sat, 23)) > expected_flow(
        "arterial", PEAK, at(WEDNESDAY, 23)
    )
    # the small hours of Sunday still belong to Saturday night
    sunday_1am = expected_flow("arterial", PEAK, at(sun, 1))
    assert sunday_1am > expected_flow("arterial", PEAK, at(dt.date(2026, 3, 5), 1))
    # Tết day 1 empties the roads
    tet = expected_flow("arterial", PEAK, at(dt.date(2026, 2, 17), 18))
    normal = expected_flow("arterial", PEAK, at(dt.date(2026, 3, 17), 18))
    assert tet < 0.5 * normal
    assert expected_flow("arterial", PEAK, at(dt.date(2026, 2, 17), 18), tet=False) > tet


def test_counts_are_deterministic_for_a_seed() -> None:
    start = at(WEDNESDAY, 18, 0)
    end = start + dt.timedelta(hours=12)
    a = list(counts("s1", "arterial", PEAK, start, end, 300, seed=7))
    b = list(counts("s1", "arterial", PEAK, start, end, 300, seed=7))
    c = list(counts("s1", "arterial", PEAK, start, end, 300, seed=8))
    assert a == b
    assert [x.vehicles for x in a] != [x.vehicles for x in c]
    assert len(a) == 12 * 12
    assert a[0].ts == start + dt.timedelta(seconds=300)
    assert a[-1].ts == end
    assert all(isinstance(x, TrafficCount) and x.interval_s == 300 for x in a)
    assert all(x.ts.utcoffset() == dt.timedelta(hours=7) for x in a)


def test_counts_average_to_the_expected_flow() -> None:
    start = at(WEDNESDAY, 0, 0)
    end = start + dt.timedelta(days=7)
    total = sum(v for _, v in count_series("s1", "collector", 1200, start, end, 300, seed=3))
    expected = 0.0
    t = start
    while t < end:
        expected += expected_flow("collector", 1200, t + dt.timedelta(seconds=150)) * 300 / 3600
        t += dt.timedelta(seconds=300)
    # per-day factors are ±6 % each, so a week stays well within ±8 %
    assert total == pytest.approx(expected, rel=0.08)


@pytest.mark.parametrize("lam", [0.2, 4.0, 9.5, 10.0, 60.0, 700.0])
def test_poisson_sampler_has_the_right_mean_and_variance(lam: float) -> None:
    rng = random.Random(1)
    xs = [poisson(rng, lam) for _ in range(20_000)]
    assert statistics.mean(xs) == pytest.approx(lam, rel=0.05, abs=0.02)
    assert statistics.variance(xs) == pytest.approx(lam, rel=0.08, abs=0.03)
    assert min(xs) >= 0
    assert poisson(rng, 0.0) == 0


async def test_counters_publish_traffic_counts_on_mqtt_topics() -> None:
    topics = Topics("t-demo")
    now = [dt.datetime(2026, 3, 4, 11, 0, tzinfo=dt.UTC)]  # 18:00 local
    sent: list[tuple[str, bytes]] = []
    sleeps: list[float] = []

    async def publish(topic: str, payload: bytes) -> None:
        if len(sent) == 3:
            sent.append(("dropped", b""))
            raise ConnectionError("broker away")
        sent.append((topic, payload))

    async def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += dt.timedelta(seconds=60)

    segs = [
        TrafficSegment("ql1a-centre", RoadKind.ARTERIAL, 3000),
        TrafficSegment("lam-ha", RoadKind.RESIDENTIAL, 600),
    ]
    stats = await run_traffic_counters(
        publish, topics, segs, lambda: now[0], 60, 120.0,
        timezone="Asia/Ho_Chi_Minh", seed=1, sleep=sleep, iterations=3,
    )  # fmt: skip
    assert stats == CounterStats(published=5, dropped=1)
    assert sleeps == [pytest.approx(0.5)] * 3
    real = [(t, p) for t, p in sent if t != "dropped"]
    wanted = {topics.traffic_count("ql1a-centre"), topics.traffic_count("lam-ha")}
    assert {t for t, _ in real} == wanted
    msgs = [decode(TrafficCount, p) for _, p in real]
    arterial = [m for m in msgs if m.segment == "ql1a-centre"]
    assert all(m.interval_s == 60 for m in msgs)
    # 18:00 on a Wednesday: a few thousand vehicles an hour on the arterial
    assert all(1200 < m.per_hour < 4000 for m in arterial)


def test_simulator_traffic_does_not_import_the_controller() -> None:
    src = Path(__file__).resolve().parents[2] / "simulator" / "traffic.py"
    tree = ast.parse(src.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    assert not [n for n in names if n.split(".")[0] == "controller"]
