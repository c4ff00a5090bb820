"""ClassSelector: brighter at once, dimmer after a hold, fail bright when the counter is silent."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import LightGroup, LightingClass, TrafficBand, TrafficSettings
from controller.lighting.traffic_class import (
    ClassSelector,
    class_for_flow,
    class_for_ratio,
    class_level,
    required_level,
)
from devices.lights import TrafficCount

M1, M2, M3, M4, M5, M6 = (LightingClass(f"M{i}") for i in range(1, 7))
CAPACITY = 1000.0
LOW, MID, HIGH = 50.0, 200.0, 800.0  # 5 %, 20 %, 80 % of capacity


def group(
    design: LightingClass = M3,
    lowest: LightingClass | None = M5,
    *,
    never_dim: bool = False,
    segment: str | None = "seg-1",
) -> LightGroup:
    return LightGroup(
        id="g1",
        road="Trần Hưng Đạo",
        lighting_class=design,
        lowest_class=lowest,
        never_dim=never_dim,
        traffic_segment=segment,
        capacity_vph=CAPACITY,
        program="p",
        lamp_w=100,
        nodes=["N-1"],
    )


SETTINGS = TrafficSettings(hold_s=900, stale_after_s=600)


def selector(g: LightGroup | None = None, s: TrafficSettings = SETTINGS) -> ClassSelector:
    return ClassSelector(g or group(), s, start=0.0)


def feed(sel: ClassSelector, flow: float, start: float, end: float, every: float = 60) -> None:
    t = start
    while t <= end:
        sel.observe(flow, t)
        t += every


# -- pure helpers ------------------------------------------------------------------------------


def test_class_for_flow_follows_the_default_bands() -> None:
    g = group(M3, M6)
    bands = TrafficSettings().bands
    assert class_for_flow(50, g, bands) is M6  # 5 % → 3 classes down
    assert class_for_flow(100, g, bands) is M5  # 10 % → 2
    assert class_for_flow(200, g, bands) is M4  # 20 % → 1
    assert class_for_flow(450, g, bands) is M3  # 45 % is "high": none
    assert class_for_flow(5000, g, bands) is M3


def test_class_for_flow_never_below_lowest_and_fail_bright_on_garbage() -> None:
    g = group(M3, M4)
    bands = [TrafficBand(max_ratio=0.5, steps=5)]
    assert class_for_flow(0, g, bands) is M4
    assert class_for_flow(math.nan, g, bands) is M3
    assert class_for_flow(-5, g, bands) is M3
    assert class_for_flow(math.inf, g, bands) is M3
    assert class_for_ratio(0.01, M3, M5, [(0.07, 3)]) is M5


def test_groups_that_never_dim_keep_their_design_class() -> None:
    bands = TrafficSettings().bands
    assert class_for_flow(0, group(never_dim=True), bands) is M3
    assert class_for_flow(0, group(segment=None), bands) is M3
    assert class_for_flow(0, group(lowest=None), bands) is M3


def test_class_level_is_proportional_to_luminance() -> None:
    assert class_level(M3, M3) == 100
    assert class_level(M4, M3) == 75
    assert class_level(M5, M3) == 50
    assert class_level(M6, M3) == 30
    assert class_level(M3, M2) == pytest.approx(66.666667)
    assert class_level(M1, M3) == 100  # brighter than design: the lamps give what they have
    assert required_level(80, M5, M3) == 50
    assert required_level(40, M5, M3) == 40


# -- the state machine ------------------------------------------------------------------------


def test_no_count_yet_means_design_class_but_not_yet_stale() -> None:
    sel = selector()
    assert sel.current(0) is M3
    assert sel.cap_level(0) == 100
    assert not sel.stale(599)
    assert sel.stale(600)
    assert "no traffic count yet" in sel.explain(10)


def test_hold_before_stepping_down_then_straight_to_lowest_justified() -> None:
    sel = selector()
    feed(sel, LOW, 0, 840)
    assert sel.required(840) is M5  # the count allows M5 right away …
    assert sel.current(840) is M3  # … but low traffic has not lasted hold_s yet
    assert sel.hold_left_s(840) == pytest.approx(60)
    assert "M5 after 60 s" in sel.explain(840)
    sel.observe(LOW, 900)
    assert sel.current(900) is M5  # every count of the last 900 s allowed M5: M3 → M5
    assert sel.cap_level(900) == 50
    assert "M5" in sel.explain(900)


def test_step_up_is_immediate() -> None:
    sel = selector()
    feed(sel, LOW, 0, 1200)
    assert sel.current(1200) is M5
    assert sel.observe(HIGH, 1210) is M3
    assert sel.cap_level(1210) == 100
    sel2 = selector()
    feed(sel2, LOW, 0, 1200)
    assert sel2.observe(MID, 1210) is M4  # only as bright as the count needs


def test_a_busier_count_restarts_the_hold_for_dimmer_classes_only() -> None:
    sel = selector()
    feed(sel, LOW, 0, 540)
    sel.observe(MID, 600)  # allows M4, not M5
    feed(sel, LOW, 660, 1440)
    assert sel.current(900) is M4  # M4 has been allowed since t=0
    assert sel.current(1440) is M4  # M5 was not allowed at t=600
    sel.observe(LOW, 1500)
    assert sel.current(1500) is M5


def test_a_silent_counter_goes_back_to_design_class_and_is_stale() -> None:
    sel = selector()
    feed(sel, LOW, 0, 1200)
    assert sel.current(1799) is M5 and not sel.stale(1799)
    assert sel.current(1800) is M3  # 600 s without a count: fail bright
    assert sel.stale(1800)
    assert sel.required(1800) is M3
    assert "fail bright" in sel.explain(1800)
    # counts resume: low traffic must last a full hold again
    sel.observe(LOW, 2000)
    assert not sel.stale(2000)
    assert sel.current(2000) is M3
    feed(sel, LOW, 2060, 2900, every=60)
    assert sel.current(2900) is M5


def test_never_dim_group_ignores_traffic() -> None:
    sel = selector(group(M2, None, never_dim=True))
    sel.observe(0, 0)
    assert sel.current(5000) is M2
    assert sel.cap_level(5000) == 100
    assert not sel.stale(10_000)
    assert "never_dim" in sel.explain(0)


def test_never_below_lowest_class_even_with_aggressive_bands() -> None:
    s = TrafficSettings(hold_s=0, stale_after_s=600, bands=[TrafficBand(max_ratio=1, steps=5)])
    sel = selector(group(M2, M4), s)
    sel.observe(0, 0)
    assert sel.current(0) is M4
    assert sel.cap_level(0) == pytest.approx(50)  # 0.75 / 1.5


def test_count_messages_are_accepted_and_repeats_ignored() -> None:
    sel = selector()
    tz = dt.timezone(dt.timedelta(hours=7))
    t0 = dt.datetime(2026, 3, 4, 23, 0, tzinfo=tz)
    low = TrafficCount(segment="seg-1", ts=t0, interval_s=60, vehicles=1)  # 60 veh/h
    assert sel.observe(low, 0) is M3
    sel.observe(TrafficCount(segment="seg-1", ts=t0, interval_s=60, vehicles=50), 30)  # repeat
    assert sel.ignored == 1
    assert sel.required(30) is M5
    t1 = t0 + dt.timedelta(minutes=1)
    high = TrafficCount(segment="seg-1", ts=t1, interval_s=60, vehicles=50)
    assert sel.observe(high, 60) is M3
    assert sel.required(60) is M3


def test_status_is_json_friendly() -> None:
    sel = selector()
    feed(sel, MID, 0, 900)
    st_ = sel.status(900).as_dict()
    assert st_["class"] == "M4" and st_["required"] == "M4" and st_["stale"] is False
    assert st_["flow_vph"] == MID and st_["cap_level"] == 75


# -- property: never below the class the latest count requires ----------------------------------

_CLASSES = st.sampled_from(list(LightingClass))


@settings(max_examples=300, deadline=None)
@given(
    design=_CLASSES,
    lowest=_CLASSES,
    hold=st.integers(0, 1800),
    stale=st.integers(1, 1800),
    events=st.lists(
        st.tuples(st.integers(0, 1500), st.floats(0, 3 * CAPACITY) | st.just(math.nan)),
        min_size=1,
        max_size=60,
    ),
    probes=st.lists(st.integers(0, 2000), max_size=5),
)
def test_cap_is_never_below_what_the_latest_count_requires(
    design: LightingClass,
    lowest: LightingClass,
    hold: int,
    stale: int,
    events: list[tuple[int, float]],
    probes: list[int],
) -> None:
    if lowest.number < design.number:
        design, lowest = lowest, design
    g = group(design, lowest)
    s = TrafficSettings(hold_s=hold, stale_after_s=stale)
    sel = ClassSelector(g, s, start=0.0)
    floor = class_level(lowest, design)
    history: list[tuple[int, LightingClass]] = []
    t = 0

    def check(now: int) -> None:
        cur = sel.current(now)
        req = sel.required(now)
        cap = sel.cap_level(now)
        assert design.number <= cur.number <= lowest.number
        assert cur.number <= req.number  # never dimmer than the latest count needs
        assert cap >= class_level(req, design) - 1e-9
        assert cap >= floor - 1e-9
        fresh = bool(history) and now - history[-1][0] < stale
        if not fresh:
            assert cur is design
            return
        assert req is class_for_flow(latest_flow[0], g, s.bands)
        # Brute-force reference: the run of counts since the counter last (re)started …
        run = [history[-1]]
        for prev, nxt in zip(reversed(history[:-1]), reversed(history[1:]), strict=True):
            if nxt[0] - prev[0] >= stale:
                break
            run.append(prev)
        run_start = run[-1][0]
        expect = design.number
        for c in range(design.number + 1, req.number + 1):
            recent = [r for (tt, r) in run if tt > now - hold]
            if run_start <= now - hold and all(r.number >= c for r in recent):
                expect = c
            else:
                break
        assert cur.number == expect, (cur, expect, now, history)

    latest_flow = [math.nan]
    for gap, flow in events:
        t += gap
        sel.observe(flow, t)
        latest_flow[0] = flow
        history.append((t, class_for_flow(flow, g, s.bands)))
        check(t)
        for p in probes:
            check(t + p)
