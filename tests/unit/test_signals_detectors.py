"""The detector bank: raw loop, push-button and camera readings in, a TrafficView out.

Everything is driven through the public API of :class:`DetectorBank` with explicit times
(the bank has no clock). Most tests use the T-junction of ``signals_fixtures`` (a stop-line
loop on channel 2k and an upstream loop 40 m back on channel 2k+1 per vehicle group, a push
button on channel 10 for the crossing); camera tests use a small custom intersection.

Numbers used throughout, from the module's documented rules:

* a loop read ``dt`` seconds after the previous one may count at most
  ``lanes × 1800 / 3600 × dt × 1.5 + 2`` vehicles (1-lane: ``0.75 dt + 2``, 2-lane:
  ``1.5 dt + 2``), a push button at most ``2 dt + 2`` presses;
* a vehicle counted upstream reaches the stop line ``distance / (0.9 × speed)`` after the
  middle of its read interval — the W_T / E_L approaches run at 50 km/h, so 40 m take 3.2 s.
  (The module docstring says ``distance / speed``; the code uses 90 % of the configured
  85th-percentile speed as the typical speed, and these tests pin the code's value.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.signals.detectors import (
    DetectorAlarm,
    DetectorBank,
    DetectorEvent,
    DetectorSettings,
    GroupView,
)
from controller.signals.model import (
    DetectorConfig,
    DetectorKind,
    GroupKind,
    Intersection,
    IntersectionConfig,
    Signal,
    SignalGroupConfig,
    StageConfig,
    StrategyConfig,
)
from tests.unit.signals_fixtures import t_junction

T = Intersection.build(t_junction())
CH = {d.id: d.channel for d in T.config.detectors if d.channel is not None}

# W_T: 2 lanes, E_L: 1 lane, both 50 km/h; P_S: the crossing with push button P_S_pb.
W_SL, W_UP = CH["W_T_sl"], CH["W_T_up"]
EL_SL, EL_UP = CH["E_L_sl"], CH["E_L_up"]
PB = CH["P_S_pb"]
ETA_40M_50KMH = 3.2  # 40 m / (0.9 × 50 / 3.6 m/s)

QUIET = 1e9  # diagnostics thresholds that must not interfere with a test
NOT_AN_INT: Any = math.nan  # what a broken feed may pass where an int belongs


def quiet(**changes: Any) -> DetectorSettings:
    """Settings where only the diagnostics a test names can fire, judged at every call.

    (``diagnose_every_s=0``: these tests pin the rules to the exact second; the production
    throttle has its own test below.)
    """
    base: dict[str, Any] = {
        "diagnose_every_s": 0.0,
        "silent_loop_s": QUIET,
        "silent_pushbutton_s": QUIET,
        "silent_camera_s": QUIET,
        "stale_camera_s": QUIET,
        "stuck_on_s": QUIET,
    }
    base.update(changes)
    return DetectorSettings(**base)


def signals(x: Intersection, green: Iterable[str] = (), other: Signal = Signal.RED) -> list[int]:
    """Every group shows ``other`` except ``green``."""
    on = set(green)
    return [int(Signal.GREEN) if g.id in on else int(other) for g in x.groups]


def bank(settings: DetectorSettings | None = None, x: Intersection = T) -> DetectorBank:
    b = DetectorBank(x, settings if settings is not None else quiet())
    b.update_signals(signals(x), 0.0)
    return b


def gv(b: DetectorBank, gid: str, now: float) -> GroupView:
    return b.view(now).group(gid)


def cam_config(recall: Iterable[str] = ()) -> IntersectionConfig:
    """A: 1 lane, stop line + upstream loop + camera zone; B: 2 lanes, camera only; P: button."""
    return IntersectionConfig(
        id="cam",
        groups=[
            SignalGroupConfig(id="A", lanes=1, speed_kmh=50.0),
            SignalGroupConfig(id="B", lanes=2, speed_kmh=50.0),
            SignalGroupConfig(id="P", kind=GroupKind.PEDESTRIAN, movement="crossing"),
        ],
        conflicts=[("A", "B"), ("A", "P")],
        stages=[StageConfig(id="a", groups=["A"]), StageConfig(id="b", groups=["B", "P"])],
        detectors=[
            DetectorConfig(id="A_sl", group="A", kind=DetectorKind.STOPLINE, channel=0),
            DetectorConfig(
                id="A_up", group="A", kind=DetectorKind.UPSTREAM, channel=1, distance_m=40.0
            ),
            DetectorConfig(id="A_cam", group="A", kind=DetectorKind.CAMERA, camera="cam1"),
            DetectorConfig(id="B_cam", group="B", kind=DetectorKind.CAMERA, camera="cam1", lane=2),
            DetectorConfig(id="P_pb", group="P", kind=DetectorKind.PUSHBUTTON, channel=2),
        ],
        strategy=StrategyConfig(recall=list(recall)),
    )


C = Intersection.build(cam_config())


def active(events: list[DetectorEvent]) -> list[tuple[str, str, bool]]:
    return [(e.alarm.detector, e.alarm.kind, e.active) for e in events]


# -- counters ----------------------------------------------------------------------------------


def test_counter_unwraps_across_65535() -> None:
    b = bank()
    b.update_loop(W_SL, 65534, None, False, 0.0)
    b.update_loop(W_SL, 1, None, False, 1.0)  # 65534 → 65535 → 0 → 1: three vehicles
    assert b.counts()["W_T_sl"] == 3
    b.update_loop(W_SL, 3, None, False, 2.0)
    assert b.counts()["W_T_sl"] == 5
    assert b.diagnostics()["W_T_sl"]["erratic"] == 0


def test_counter_unwraps_over_many_wraps_exactly() -> None:
    # 2 lanes read every 100 s may count up to 1.5 × 100 + 2 = 152: steps of 150 are sane.
    b = bank()
    raw = 65_000
    b.update_loop(W_UP, raw, None, False, 0.0)
    n = 1000  # 150,000 vehicles: more than two wraps
    for k in range(1, n + 1):
        raw = (raw + 150) % 65_536
        b.update_loop(W_UP, raw, None, False, 100.0 * k)
    assert b.counts()["W_T_up"] == 150 * n
    assert b.diagnostics()["W_T_up"]["erratic"] == 0


def test_step_beyond_saturation_flow_is_erratic_rebased_and_ignored() -> None:
    # E_L has 1 lane: a read 4 s after the previous one may count 0.75 × 4 + 2 = 5.
    b = bank()
    b.update_loop(EL_SL, 100, None, False, 0.0)
    b.update_loop(EL_SL, 105, None, False, 4.0)  # exactly the limit: counted
    assert b.counts()["E_L_sl"] == 5
    b.update_loop(EL_SL, 111, None, False, 8.0)  # 6 > 5: erratic, ignored, re-based on 111
    assert b.counts()["E_L_sl"] == 5
    d = b.diagnostics()["E_L_sl"]
    assert (d["erratic"], d["garbage"]) == (1, 0)
    b.update_loop(EL_SL, 113, None, False, 12.0)  # from the new base: 2 counted
    assert b.counts()["E_L_sl"] == 7
    assert not b.failed("E_L_sl")  # one erratic reading is not a failure (3 are)


def test_limit_scales_with_lanes_and_time() -> None:
    b = bank()
    b.update_loop(W_SL, 0, None, False, 0.0)
    b.update_loop(W_SL, 3, None, False, 1.0)  # 2 lanes, 1 s: 3.5 allowed
    b.update_loop(W_SL, 7, None, False, 2.0)  # 4 > 3.5: erratic
    b.update_loop(EL_SL, 0, None, False, 0.0)
    b.update_loop(EL_SL, 3, None, False, 1.0)  # 1 lane, 1 s: 2.75 allowed → erratic
    b.update_loop(EL_SL, 5, None, False, 2.0)  # 2 from the re-based 3
    assert b.counts()["W_T_sl"] == 3
    assert b.counts()["E_L_sl"] == 2
    assert b.diagnostics()["W_T_sl"]["erratic"] == 1
    assert b.diagnostics()["E_L_sl"]["erratic"] == 1


def test_backwards_step_is_erratic_and_rebased() -> None:
    b = bank()
    b.update_loop(EL_SL, 100, None, False, 0.0)
    b.update_loop(EL_SL, 99, None, False, 1.0)  # backwards by 1 (not a wrap): erratic
    assert b.counts()["E_L_sl"] == 0
    b.update_loop(EL_SL, 101, None, False, 2.0)  # re-based on 99: 2 counted
    assert b.counts()["E_L_sl"] == 2
    d = b.diagnostics()["E_L_sl"]
    # Documented as *erratic* (like a too-large step), not garbage (out of 16 bits, non-number).
    assert (d["erratic"], d["garbage"]) == (1, 0)


@pytest.mark.parametrize(
    "value",
    [1.5, 100.0, True, False, -1, 65_536, 2**70, 10**400, None, "7", float("nan")],
    ids=repr,
)
def test_count_that_is_not_a_16_bit_int_is_garbage_and_keeps_the_baseline(value: Any) -> None:
    b = bank()
    b.update_loop(EL_SL, 100, None, False, 0.0)
    b.update_loop(EL_SL, value, None, False, 1.0)
    d = b.diagnostics()["E_L_sl"]
    assert (d["garbage"], d["erratic"], d["count"]) == (1, 1, 0)
    b.update_loop(EL_SL, 102, None, False, 2.0)  # the baseline is still 100
    assert b.counts()["E_L_sl"] == 2


def test_occupancy_register_unwraps_and_rejects_growth_beyond_elapsed_time() -> None:
    b = bank()
    b.update_loop(EL_SL, 0, 65_530, False, 0.0)
    b.update_loop(EL_SL, 0, 5, False, 1.0)  # 11 × 0.1 s across the wrap; ≤ 1.1 × 1 + 0.2
    assert b.diagnostics()["E_L_sl"]["occupied_s"] == 1.1
    b.update_loop(EL_SL, 0, 19, False, 2.0)  # 1.4 s in 1 s: garbage
    d = b.diagnostics()["E_L_sl"]
    assert (d["occupied_s"], d["garbage"]) == (1.1, 1)
    b.update_loop(EL_SL, 0, 65_536, False, 3.0)  # not 16-bit: garbage
    b.update_loop(EL_SL, 0, 25, False, 4.0)  # 0.6 s more (from the re-based 19)
    d = b.diagnostics()["E_L_sl"]
    assert (d["occupied_s"], d["garbage"]) == (1.7, 2)


def test_cumulative_occupied_seconds_garbage() -> None:
    b = bank()
    b.update_loop(EL_SL, 0, None, False, 0.0, occupied_s=10.0)
    b.update_loop(EL_SL, 0, None, False, 1.0, occupied_s=10.5)
    b.update_loop(EL_SL, 0, None, False, 2.0, occupied_s=10.4)  # shrinks: garbage
    b.update_loop(EL_SL, 0, None, False, 3.0, occupied_s=math.nan)  # garbage
    b.update_loop(EL_SL, 0, None, False, 4.0, occupied_s=-1.0)  # garbage
    b.update_loop(EL_SL, 0, None, False, 5.0, occupied_s=11.0)  # +0.6 from 10.4
    b.update_loop(EL_SL, 0, None, False, 6.0, occupied_s=20.0)  # 9 s in 1 s: garbage
    d = b.diagnostics()["E_L_sl"]
    assert (d["occupied_s"], d["garbage"]) == (1.1, 4)


# -- diagnostics -------------------------------------------------------------------------------


class Counter:
    """A loop's count register: a baseline read at ``t0``, then sane steps or wild jumps."""

    def __init__(self, b: DetectorBank, channel: int, t0: float = 0.0, raw: int = 0) -> None:
        self.b, self.channel, self.raw = b, channel, raw
        b.update_loop(channel, raw, None, False, t0)

    def step(self, t: float, n: int = 1) -> None:
        self.raw = (self.raw + n) % 65_536
        self.b.update_loop(self.channel, self.raw, None, False, t)

    def jump(self, *times: float) -> None:
        """A jump of 1,000 (far beyond any limit) at each time: erratic."""
        for t in times:
            self.step(t, 1000)


def test_time_based_judgements_come_at_most_a_second_late_erratic_ones_at_once() -> None:
    """The production throttle (``diagnose_every_s`` 1 s): a stuck loop is failed within a
    second of its threshold, at a 10 Hz read rate; a third erratic reading fails it at once."""
    b = bank(quiet(diagnose_every_s=1.0, stuck_on_s=30.0, erratic_events=3))
    t = 0.0
    while not b.failed("E_L_sl"):
        t = round(t + 0.1, 6)
        b.update_loop(EL_SL, 0, None, True, t)
        b.view(t)
        assert t < 40.0
    assert 30.0 <= t - 0.1 <= 31.0 + 1e-9, t  # on at 0.1 s: 30 s later, plus at most 1 s
    c = Counter(b, EL_UP)
    c.jump(40.0, 40.05)
    assert not b.failed("E_L_up")
    c.jump(40.1)  # judged at once, though the previous judgement was 50 ms ago
    assert b.failed("E_L_up")


def test_three_erratic_readings_fail_the_detector_then_it_recovers() -> None:
    b = bank(quiet(erratic_events=3, erratic_window_s=60.0, recover_after_s=30.0))
    c = Counter(b, EL_SL)
    c.jump(10.0, 20.0)
    assert not b.failed("E_L_sl")
    assert b.take_events() == []
    c.jump(30.0)
    assert b.failed("E_L_sl")
    alarm = DetectorAlarm("E_L_sl", "erratic", 30.0, b.alarms()[0].detail)
    assert b.alarms() == [alarm]
    assert "3 or more" in alarm.detail
    assert b.take_events() == [DetectorEvent(30.0, alarm, True)]
    assert b.take_events() == []  # drained
    v = gv(b, "E_L", 31.0)
    assert (v.failed, v.call, v.gap_s) == (True, True, 0.0)
    # Still failed while 3 erratic readings are in the window (10, 20, 30 until t = 70).
    assert gv(b, "E_L", 70.0).failed
    b.view(70.5)  # 10 left the window: sane from here
    assert gv(b, "E_L", 100.0).failed
    assert b.take_events() == []
    v = gv(b, "E_L", 100.5)  # 30 s of sane behaviour
    assert not v.failed
    assert not b.failed("E_L_sl")
    assert b.alarms() == []
    assert b.take_events() == [DetectorEvent(100.5, alarm, False)]


def test_erratic_readings_outside_the_window_do_not_accumulate() -> None:
    b = bank(quiet(erratic_events=3, erratic_window_s=60.0))
    c = Counter(b, EL_SL)
    c.jump(10.0, 20.0, 70.5, 80.5)  # 10 expired before 70.5, 20 before 80.5
    assert not b.failed("E_L_sl")
    assert b.diagnostics()["E_L_sl"]["erratic"] == 4
    c.step(81.0)  # sane
    assert not b.failed("E_L_sl")
    c.jump(82.0)  # 70.5, 80.5, 82 within 60 s
    assert b.failed("E_L_sl")


def test_garbage_counts_towards_erratic_failure() -> None:
    b = bank(quiet(erratic_events=3))
    b.update_loop(EL_SL, 0, None, False, 0.0)
    b.update_loop(EL_SL, -5, None, False, 1.0)
    b.update_loop(EL_SL, 0, 70_000, False, 2.0)
    assert not b.failed("E_L_sl")
    b.update_loop(EL_SL, 0, None, False, 3.0, occupied_s=math.inf)
    assert b.failed("E_L_sl")
    assert b.alarms()[0].kind == "erratic"


def test_silent_loop_fails_and_recovers_on_actuation() -> None:
    b = DetectorBank(T, quiet(silent_loop_s=60.0, recover_after_s=10.0))
    b.view(0.0, signals(T))  # the bank starts
    b.update_loop(EL_SL, 0, None, True, 30.0)  # a vehicle at 30
    b.update_loop(EL_SL, 1, None, False, 31.0)
    assert not gv(b, "E_L", 59.9).failed
    b.view(60.0)
    assert b.failed("E_L_up") and not b.failed("E_L_sl")
    assert {a.detector: a.kind for a in b.alarms()}["E_L_up"] == "silent"
    assert not b.failed("E_L_sl")
    b.view(90.9)
    assert not b.failed("E_L_sl")  # its last actuation was the count read at 31
    b.view(91.0)
    assert b.failed("E_L_sl")
    events = b.take_events()
    assert ("E_L_up", "silent", True) in active(events)
    assert ("E_L_sl", "silent", True) in active(events)
    assert ("P_S_pb", "silent", True) not in active(events)  # buttons: silent_pushbutton_s
    # An actuation starts the sane period; after recover_after_s it is cleared.
    b.update_loop(EL_UP, 0, None, True, 100.0)
    b.view(109.9)
    assert b.failed("E_L_up")
    b.view(110.0)
    assert not b.failed("E_L_up")
    cleared = [e for e in b.take_events() if not e.active]
    assert [(e.t, e.alarm.detector, e.alarm.kind, e.alarm.since) for e in cleared] == [
        (110.0, "E_L_up", "silent", 60.0)
    ]


def test_push_button_has_its_own_silence_threshold() -> None:
    b = DetectorBank(T, quiet(silent_loop_s=60.0, silent_pushbutton_s=600.0))
    b.view(0.0, signals(T))
    b.view(599.0)
    assert b.failed("W_T_sl") and not b.failed("P_S_pb")
    b.view(600.0)
    assert b.failed("P_S_pb")
    assert {a.detector: a.kind for a in b.alarms()}["P_S_pb"] == "silent"
    v = gv(b, "P_S", 600.0)  # a failed button: constant call, the walk is never starved
    assert (v.failed, v.call) == (True, True)


def test_stuck_presence_fails_and_recovers_when_it_drops() -> None:
    b = bank(quiet(stuck_on_s=20.0, recover_after_s=10.0))
    b.update_loop(EL_SL, 0, None, True, 0.0)
    assert not gv(b, "E_L", 19.9).failed
    v = gv(b, "E_L", 20.0)
    assert (v.failed, v.call, v.gap_s) == (True, True, 0.0)
    assert b.alarms() == [DetectorAlarm("E_L_sl", "stuck", 20.0, b.alarms()[0].detail)]
    b.update_loop(EL_SL, 0, None, True, 25.0)  # still on
    b.update_loop(EL_SL, 0, None, False, 26.0)
    b.view(35.9)
    assert b.failed("E_L_sl")
    b.view(36.0)
    assert not b.failed("E_L_sl")
    assert active(b.take_events()) == [("E_L_sl", "stuck", True), ("E_L_sl", "stuck", False)]


def test_presence_that_toggles_is_not_stuck() -> None:
    b = bank(quiet(stuck_on_s=20.0))
    for k in range(60):
        b.update_loop(EL_SL, 0, None, k % 2 == 0, float(k))
    assert b.alarms() == []


def toggle(b: DetectorBank, channel: int, on_times: Iterable[float]) -> None:
    for t in on_times:
        b.update_loop(channel, 0, None, True, t)
        b.update_loop(channel, 0, None, False, t + 0.2)


def test_chattering_presence_fails_the_detector() -> None:
    # At most 3 on-edges per lane within 10 s.
    b = bank(quiet(chatter_edges_per_lane=3, chatter_window_s=10.0, recover_after_s=5.0))
    toggle(b, EL_SL, [0.0, 1.0, 2.0])
    assert not b.failed("E_L_sl")
    toggle(b, EL_SL, [3.0])  # 4 > 3 within 10 s
    assert b.failed("E_L_sl")
    assert b.alarms()[0].kind == "chattering"
    # W_T has 2 lanes: 6 edges are fine, the 7th is chattering.
    toggle(b, W_SL, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert not b.failed("W_T_sl")
    toggle(b, W_SL, [6.0])
    assert b.failed("W_T_sl")
    # Edges leave the window (0..3 by t = 13.0+), then 5 s of sane behaviour.
    b.view(13.5)
    assert b.failed("E_L_sl")
    b.view(18.5)
    assert not b.failed("E_L_sl")


def test_edges_spread_over_time_are_not_chattering() -> None:
    b = bank(quiet(chatter_edges_per_lane=3, chatter_window_s=10.0))
    toggle(b, EL_SL, [4.0 * k for k in range(30)])  # at most 3 in any 10 s
    assert b.alarms() == []


def test_camera_without_messages_goes_stale_and_recovers() -> None:
    b = DetectorBank(C, quiet(stale_camera_s=30.0, recover_after_s=10.0))
    b.view(0.0, signals(C))
    for t in (0.0, 5.0, 10.0, 15.0, 20.0):
        b.update_camera("A_cam", 1, 0, 5.0, t)
    b.view(29.9)
    assert not b.failed("B_cam")
    b.view(30.0)
    assert b.failed("B_cam")  # never sent anything: stale 30 s after the bank started
    assert not b.failed("A_cam")
    b.view(49.9)
    assert not b.failed("A_cam")
    v = gv(b, "A", 50.0)
    assert b.failed("A_cam")
    assert ("A_cam", "stale") in [(a.detector, a.kind) for a in b.alarms()]
    assert (v.failed, v.call) == (True, True)
    b.update_camera("A_cam", 0, 0, 5.0, 60.0)
    b.update_camera("A_cam", 0, 0, 5.0, 65.0)
    b.update_camera("A_cam", 0, 0, 5.0, 70.0)
    assert not b.failed("A_cam")
    assert ("A_cam", "stale", False) in active(b.take_events())


def test_stale_threshold_grows_with_a_long_camera_interval() -> None:
    b = DetectorBank(C, quiet(stale_camera_s=30.0))
    b.update_camera("A_cam", 0, 0, 20.0, 0.0)  # 3 intervals = 60 s > 30 s
    b.view(59.9)
    assert not b.failed("A_cam")
    b.view(60.0)
    assert b.failed("A_cam")


def test_silent_camera() -> None:
    b = DetectorBank(C, quiet(silent_camera_s=100.0))
    b.update_camera("A_cam", 1, 0, 5.0, 0.0)
    for k in range(1, 20):
        b.update_camera("A_cam", 0, 0, 5.0, 5.0 * k)  # messages, but nothing counted
    b.update_camera("A_cam", 0, 0, 5.0, 99.9)
    assert not b.failed("A_cam")
    b.update_camera("A_cam", 0, 0, 5.0, 100.0)
    assert b.failed("A_cam")
    assert b.alarms()[0].kind == "silent"


# -- failed detectors and calls ------------------------------------------------------------------


def test_failed_loop_gives_a_constant_call_and_zero_gap() -> None:
    b = bank(quiet(erratic_events=1))
    b.update_loop(W_SL, 0, None, False, 0.0)
    b.update_loop(W_SL, 0, None, True, 1.0)
    b.update_loop(W_SL, 1, None, False, 2.0)
    b.update_signals(signals(T, ["W_T"]), 3.0)
    assert gv(b, "W_T", 10.0).gap_s == pytest.approx(8.0)  # healthy: since the count at 2
    Counter(b, W_UP, 10.5).jump(11.0)  # only the upstream loop fails
    v = gv(b, "W_T", 12.0)
    assert (v.failed, v.call, v.gap_s) == (True, True, 0.0)  # runs to max green
    b.update_signals(signals(T), 20.0)
    for t in (21.0, 100.0, 250.0):  # never starved while red
        v = gv(b, "W_T", t)
        assert (v.call, v.call_since, v.gap_s) == (True, 20.0, 0.0)
    assert not gv(b, "E_T", 250.0).call  # other groups are unaffected


def test_failed_stop_line_does_not_fake_presence() -> None:
    b = bank(quiet(stuck_on_s=5.0))
    b.update_loop(EL_SL, 0, None, True, 0.0)
    v = gv(b, "E_L", 6.0)
    assert (v.failed, v.presence, v.call, v.gap_s) == (True, False, True, 0.0)


def test_stop_line_presence_on_red_locks_the_call_until_green() -> None:
    b = bank()
    b.update_loop(W_SL, 0, None, False, 0.0)
    assert not gv(b, "W_T", 0.5).call
    b.update_loop(W_SL, 0, None, True, 1.0)  # a vehicle on the stop line, on red
    v = gv(b, "W_T", 1.5)
    assert (v.call, v.call_since, v.presence) == (True, 1.0, True)
    b.update_loop(W_SL, 1, None, False, 2.0)  # it left (turned right on red)
    for t in (2.5, 10.0, 60.0):
        v = gv(b, "W_T", t)
        assert (v.call, v.call_since, v.presence) == (True, 1.0, False)
    v = b.view(61.0, signals(T, ["W_T"])).group("W_T")  # served
    assert (v.call, v.call_since) == (False, None)
    b.update_signals(signals(T, [], Signal.RED), 70.0)
    v = gv(b, "W_T", 75.0)
    assert (v.call, v.call_since) == (False, None)  # no new demand, no call


def test_presence_during_green_does_not_lock() -> None:
    b = bank()
    b.update_loop(W_SL, 0, None, False, 0.0)
    b.update_signals(signals(T, ["W_T"]), 1.0)
    b.update_loop(W_SL, 0, None, True, 2.0)
    v = gv(b, "W_T", 2.0)
    assert (v.call, v.call_since) == (True, None)  # demand, but it is being served
    b.update_loop(W_SL, 1, None, False, 3.0)
    b.view(3.0)
    b.update_signals(signals(T, [], Signal.RED), 4.0)
    v = gv(b, "W_T", 5.0)
    assert (v.call, v.call_since) == (False, None)


def test_push_button_presses_call_and_count_until_the_walk() -> None:
    b = bank()
    b.update_loop(PB, 5, None, False, 0.0)  # baseline
    v = gv(b, "P_S", 0.5)
    assert (v.call, v.queue, v.kind) == (False, 0.0, GroupKind.PEDESTRIAN)
    b.update_loop(PB, 6, None, False, 1.0)
    v = gv(b, "P_S", 1.0)
    assert (v.call, v.call_since, v.queue) == (True, 1.0, 1.0)
    b.update_loop(PB, 8, None, False, 2.0)  # 2 ≤ 2 × 1 + 2
    assert gv(b, "P_S", 2.0).queue == 3.0
    b.update_loop(PB, 13, None, False, 3.0)  # 5 > 4: erratic, ignored
    assert gv(b, "P_S", 3.0).queue == 3.0
    v = b.view(5.0, signals(T, ["P_S"])).group("P_S")  # the walk
    assert (v.call, v.call_since, v.queue) == (False, None, 0.0)
    b.update_loop(PB, 14, None, False, 6.0)  # pressed during the walk: no new call
    v = gv(b, "P_S", 6.0)
    assert (v.call, v.queue) == (False, 0.0)
    b.update_signals([Signal.PED_CLEARANCE if g.id == "P_S" else Signal.RED for g in T.groups], 12)
    b.update_loop(PB, 15, None, False, 13.0)  # during the clearance: waits for the next walk
    v = gv(b, "P_S", 13.0)
    assert (v.call, v.call_since, v.queue) == (True, 13.0, 1.0)


def test_push_button_presence_edge_calls() -> None:
    b = bank()
    b.update_loop(PB, 0, None, False, 0.0)
    b.update_loop(PB, 0, None, True, 1.0)
    b.update_loop(PB, 0, None, False, 1.2)
    v = gv(b, "P_S", 2.0)
    assert (v.call, v.call_since) == (True, 1.0)


def test_recall_groups_always_call() -> None:
    x = Intersection.build(t_junction(strategy=StrategyConfig(recall=["S_R", "P_S"])))
    b = bank(x=x)
    view = b.view(1.0)
    assert [g.group for g in view.groups if g.call] == ["S_R", "P_S"]
    assert view.group("S_R").call_since == 1.0
    view = b.view(5.0, signals(x, ["S_R", "P_S"]))
    assert view.group("S_R").call  # a vehicle recall keeps calling while green
    assert (view.group("S_R").call_since, view.group("P_S").call) == (None, False)
    view = b.view(30.0, signals(x))
    assert (view.group("S_R").call_since, view.group("P_S").call_since) == (30.0, 30.0)
    assert view.group("P_S").call


# -- queue estimation --------------------------------------------------------------------------


def test_upstream_counts_reach_the_stop_line_later() -> None:
    b = bank()
    b.update_loop(W_SL, 0, None, True, 0.0)  # a vehicle already waiting on red
    b.update_loop(W_UP, 0, None, False, 0.0)
    b.update_loop(W_UP, 2, None, False, 1.0)  # 2 counted during (0, 1]: passed at 0.5
    v = gv(b, "W_T", 1.0)
    assert v.approaching == pytest.approx((0.5 + ETA_40M_50KMH - 1.0,) * 2)
    assert v.queue == 1.0  # the vehicle on the stop line
    b.update_loop(W_UP, 3, None, False, 2.0)
    v = gv(b, "W_T", 2.0)
    assert v.approaching == pytest.approx((1.7, 1.7, 2.7))
    v = gv(b, "W_T", 3.65)
    assert (v.queue, len(v.approaching)) == (1.0, 3)
    v = gv(b, "W_T", 3.75)
    assert v.queue == 3.0
    assert v.approaching == pytest.approx((0.95,))
    v = gv(b, "W_T", 4.7)
    assert (v.queue, v.approaching) == (4.0, ())


def test_eta_uses_the_groups_speed() -> None:
    # S_L: 30 km/h → 0.9 × 8.33 m/s = 7.5 m/s: 40 m in 5.33 s.
    b = bank()
    b.update_loop(CH["S_L_up"], 10, None, False, 0.0)
    b.update_loop(CH["S_L_up"], 11, None, False, 0.4)
    assert gv(b, "S_L", 0.4).approaching == pytest.approx((0.2 + 40 / 7.5 - 0.4,))


def test_stop_line_counts_leave_the_queue() -> None:
    b = bank()
    b.update_loop(W_SL, 0, None, True, 0.0)
    b.update_loop(W_UP, 0, None, False, 0.0)
    b.update_loop(W_UP, 3, None, False, 1.0)
    assert gv(b, "W_T", 4.0).queue == 3.0
    b.update_signals(signals(T, ["W_T"]), 5.0)
    b.update_loop(W_SL, 1, None, True, 6.0)
    assert gv(b, "W_T", 6.0).queue == 2.0
    b.update_loop(W_SL, 3, None, True, 7.0)
    assert gv(b, "W_T", 7.0).queue == 0.0
    b.update_loop(W_SL, 5, None, True, 8.0)  # more left than were known: never negative
    assert gv(b, "W_T", 8.0).queue == 0.0


def test_camera_message_rebases_the_queue() -> None:
    b = bank(x=C)
    b.update_loop(0, 0, None, False, 0.0)  # A_sl baseline
    b.update_loop(1, 0, None, False, 0.0)
    b.update_loop(1, 2, None, False, 1.0)  # A_up: 2 (1 lane, 1 s: 2.75 allowed), due at 3.7
    assert gv(b, "A", 4.0).queue == 2.0
    b.update_camera("A_cam", 0, 6, 5.0, 5.0)
    v = gv(b, "A", 5.0)
    assert (v.queue, v.call) == (6.0, True)
    b.update_loop(0, 1, None, False, 6.0)  # a departure still counts
    assert gv(b, "A", 6.0).queue == 5.0
    b.update_camera("A_cam", 1, 1, 5.0, 8.0)
    assert gv(b, "A", 8.0).queue == 1.0


def test_camera_queue_makes_a_call_on_a_camera_only_group() -> None:
    b = bank(x=C)
    b.update_camera("B_cam", 0, 0, 5.0, 0.0)
    v = gv(b, "B", 0.0)
    assert (v.call, v.queue, v.gap_s) == (False, 0.0, math.inf)
    b.update_camera("B_cam", 0, 4, 5.0, 5.0)
    v = gv(b, "B", 5.0)
    assert (v.call, v.call_since, v.queue, v.gap_s) == (True, 5.0, 4.0, 0.0)


def test_camera_garbage_and_impossible_counts_are_ignored() -> None:
    b = bank(x=C)
    b.update_camera("B_cam", 0, 3, 10.0, 0.0)
    # 2 lanes × 0.5 veh/s × 10 s × 1.5 + 2 = 17 may cross in 10 s
    b.update_camera("B_cam", 18, 0, 10.0, 10.0)  # erratic
    b.update_camera("B_cam", NOT_AN_INT, 0, 10.0, 11.0)  # garbage
    b.update_camera("B_cam", 1, -1, 10.0, 12.0)  # garbage
    b.update_camera("B_cam", 1, 0, 0.0, 13.0)  # garbage
    d = b.diagnostics()["B_cam"]
    assert (d["count"], d["erratic"], d["garbage"]) == (0, 4, 3)
    assert gv(b, "B", 13.0).queue == 3.0
    b.update_camera("B_cam", 17, 0, 10.0, 14.0)  # the limit exactly
    assert b.counts()["B_cam"] == 17


def test_stop_line_gap_during_green_after_start_up_clears_the_queue() -> None:
    b = bank()
    b.update_loop(W_SL, 0, None, True, 0.0)
    b.update_loop(W_UP, 0, None, False, 0.0)
    b.update_loop(W_UP, 3, None, False, 1.0)
    b.update_loop(W_UP, 6, None, False, 2.0)
    assert gv(b, "W_T", 5.0).queue == 6.0
    b.update_signals(signals(T, ["W_T"]), 5.0)
    b.update_loop(W_SL, 1, None, False, 5.5)  # one left; the loop is empty from here
    assert gv(b, "W_T", 5.5).queue == 5.0
    # Empty for 2.5 s at 8.0, but start-up (lost time + 2 s = 4 s) lasts until 9.0.
    assert gv(b, "W_T", 8.9).queue == 5.0
    assert gv(b, "W_T", 9.0).queue == 0.0


def test_short_stop_line_gaps_during_green_keep_the_queue() -> None:
    b = bank()
    b.update_loop(W_SL, 0, None, True, 0.0)
    b.update_loop(W_UP, 0, None, False, 0.0)
    b.update_loop(W_UP, 3, None, False, 1.0)
    b.update_loop(W_UP, 6, None, False, 2.0)
    b.view(5.0)
    b.update_signals(signals(T, ["W_T"]), 5.0)
    b.update_loop(W_SL, 0, None, False, 10.0)
    assert gv(b, "W_T", 12.4).queue == 6.0  # empty for 2.4 s
    b.update_loop(W_SL, 0, None, True, 12.45)
    b.update_loop(W_SL, 0, None, False, 12.6)
    assert gv(b, "W_T", 12.6).queue == 6.0
    assert gv(b, "W_T", 15.0).queue == 6.0  # empty again for 2.4 s
    assert gv(b, "W_T", 15.1).queue == 0.0  # 2.5 s


def test_empty_stop_line_during_red_clears_a_phantom_queue() -> None:
    b = bank()
    b.update_loop(W_SL, 0, None, False, 0.0)
    b.update_loop(W_UP, 0, None, False, 0.0)
    b.update_loop(W_UP, 2, None, False, 1.0)  # both due at 3.7
    b.view(1.0)  # the stop line is seen empty from 1.0
    v = gv(b, "W_T", 3.7)
    assert (v.queue, v.call) == (2.0, True)
    # Empty for 5 s since 6.0, but the last vehicle was due only 5 s before 8.7.
    assert gv(b, "W_T", 8.65).queue == 2.0
    v = gv(b, "W_T", 8.75)
    assert v.queue == 0.0
    assert v.call  # the call stays locked until green


def test_upstream_loop_occupied_during_red_shows_spillback() -> None:
    b = bank()
    b.update_loop(W_SL, 0, None, True, 0.0)
    b.update_loop(W_UP, 0, None, True, 0.0)
    assert gv(b, "W_T", 2.9).queue == 1.0
    assert gv(b, "W_T", 3.0).queue == pytest.approx(2 * 40.0 / 7.0)  # 2 lanes × 40 m / 7 m


def test_modelled_queue_discharges_at_saturation_flow_on_green() -> None:
    # B (2 lanes) has only a camera; once its message is no longer fresh (2 intervals) the
    # queue is modelled: no arrivals were seen, departures at 2 × 1800 veh/h after 2 s lost.
    b = bank(x=C)
    b.update_camera("B_cam", 0, 10, 5.0, 0.0)
    assert gv(b, "B", 10.0).queue == 10.0
    b.update_signals(signals(C, ["B", "P"]), 20.0)
    assert gv(b, "B", 22.0).queue == 10.0  # lost time
    assert gv(b, "B", 30.0).queue == pytest.approx(2.0)
    assert gv(b, "B", 40.0).queue == 0.0


def test_camera_arrivals_are_crossings_plus_queue_growth() -> None:
    b = bank(x=C)
    b.update_camera("B_cam", 0, 0, 10.0, 0.0)
    b.update_camera("B_cam", 3, 2, 10.0, 10.0)  # 5 arrived in 10 s
    tau = 180.0
    expected = 5 / (10 * math.exp(-10 / tau) + 10) * 3600
    assert gv(b, "B", 10.0).arrivals_vph == pytest.approx(expected)


def test_arrival_rate_converges_to_a_steady_count_rate() -> None:
    # One vehicle every 4 s on E_L's upstream loop (900 veh/h), read every second, 600 s
    # (3.3 time constants). Sampled just after a count, the ratio of the exponentially
    # weighted count to the exponentially weighted time is n / period exactly in the steady
    # state; what is left of the start-up is weighted by e^(-600/180) ≈ 0.036 of a few
    # seconds out of ~180 s of weighted time: well below 1 %. Between counts the estimate
    # ripples down by up to period / weighted time ≈ 4 / 182 ≈ 2.2 %.
    b = bank()
    count = 0
    for k in range(601):
        if k and k % 4 == 0:
            count += 1
        b.update_loop(EL_UP, count, None, False, float(k))
        b.update_loop(EL_SL, count, None, False, float(k))
    assert gv(b, "E_L", 600.0).arrivals_vph == pytest.approx(900.0, rel=0.01)
    assert gv(b, "E_L", 603.0).arrivals_vph == pytest.approx(900.0, rel=0.025)


def test_stop_line_counts_are_arrivals_only_without_a_healthy_upstream_loop() -> None:
    b = bank(quiet(erratic_events=1, erratic_window_s=QUIET))
    up = Counter(b, EL_UP)
    sl = Counter(b, EL_SL)
    for k in range(1, 151):
        sl.step(4.0 * k)  # 900 veh/h leave; the healthy upstream loop counts none
    assert gv(b, "E_L", 600.0).arrivals_vph == 0.0
    up.jump(600.5)  # the upstream loop fails: the stop line is the arrival source now
    assert b.failed("E_L_up")
    for k in range(151, 601):
        sl.step(4.0 * k)
    assert gv(b, "E_L", 2400.0).arrivals_vph == pytest.approx(900.0, rel=0.01)


def test_first_vehicle_after_a_quiet_start_is_not_a_flood() -> None:
    # One vehicle in the first 100 s of reads: 36 veh/h as a plain mean, ~47 veh/h with
    # continuous exponential weighting (tau = 180 s). Either way far from 3600.
    b = bank()
    for k in range(100):
        b.update_loop(EL_UP, 7, None, False, float(k))
    b.update_loop(EL_UP, 8, None, False, 100.0)
    assert 30.0 <= gv(b, "E_L", 100.0).arrivals_vph <= 50.0


def test_arrival_rate_keeps_its_last_value_during_a_failure() -> None:
    b = bank(quiet(erratic_events=1))
    count = 0
    for k in range(601):
        if k and k % 4 == 0:
            count += 1
        b.update_loop(EL_UP, count, None, False, float(k))
        b.update_loop(EL_SL, count, None, False, float(k))
    before = gv(b, "E_L", 600.0).arrivals_vph
    b.update_loop(EL_UP, -1, None, False, 600.0)
    b.update_loop(EL_SL, -1, None, False, 600.0)
    v = gv(b, "E_L", 780.0)
    assert v.failed
    assert v.arrivals_vph == pytest.approx(before, rel=0.05)


# -- gap ----------------------------------------------------------------------------------------


def test_gap_is_zero_while_occupied_and_grows_from_the_last_actuation() -> None:
    b = bank()
    b.update_signals(signals(T, ["W_T"]), 0.0)
    b.update_loop(W_SL, 0, None, True, 10.0)
    assert gv(b, "W_T", 10.0).gap_s == 0.0
    assert gv(b, "W_T", 12.5).gap_s == 0.0  # still occupied (no read says otherwise)
    b.update_loop(W_SL, 0, None, False, 13.0)
    assert gv(b, "W_T", 14.0).gap_s == pytest.approx(4.0)  # last seen occupied at 10
    b.update_loop(W_UP, 0, None, False, 15.0)
    b.update_loop(W_UP, 1, None, False, 16.0)  # a count on the upstream loop
    assert gv(b, "W_T", 17.5).gap_s == pytest.approx(1.5)


def test_group_without_loops_has_an_infinite_gap() -> None:
    b = bank(x=C)
    assert gv(b, "B", 5.0).gap_s == math.inf
    assert gv(b, "P", 5.0).gap_s == math.inf


# -- failure of a constant call and the call contract ---------------------------------------------


def test_call_of_a_failed_detector_stays_locked_after_it_recovers_on_red() -> None:
    b = bank(quiet(erratic_events=1, erratic_window_s=10.0, recover_after_s=5.0))
    Counter(b, EL_SL).jump(3.0)
    v = gv(b, "E_L", 3.5)
    assert (v.failed, v.call, v.call_since) == (True, True, 3.5)
    b.view(13.5)  # 3.0 left the window at 13.0+: sane from 13.5
    v = gv(b, "E_L", 18.5)
    assert not v.failed
    assert (v.call, v.call_since) == (True, 3.5)  # the call locks until green
    v = b.view(20.0, signals(T, ["E_L"])).group("E_L")
    assert (v.call, v.call_since) == (False, None)
    v = b.view(30.0, signals(T)).group("E_L")
    assert (v.call, v.call_since) == (False, None)


def test_call_of_a_failed_push_button_stays_locked_until_the_walk() -> None:
    # An erratic button (its count jumps; no press is counted) fails, then recovers on red.
    b = bank(quiet(erratic_events=1, erratic_window_s=5.0, recover_after_s=5.0))
    Counter(b, PB).jump(1.0)
    v = gv(b, "P_S", 1.0)
    assert (v.failed, v.call, v.call_since, v.queue) == (True, True, 1.0, 0.0)
    b.view(6.5)
    v = gv(b, "P_S", 11.5)
    assert not v.failed
    assert (v.call, v.call_since) == (True, 1.0)  # locked until the walk
    v = b.view(12.0, signals(T, ["P_S"])).group("P_S")
    assert (v.call, v.call_since) == (False, None)
    v = b.view(30.0, signals(T)).group("P_S")
    assert (v.call, v.call_since) == (False, None)


# -- unknown inputs and ad-hoc cameras ----------------------------------------------------------


def test_unknown_channels_and_cameras_are_counted_never_raise() -> None:
    b = bank()
    b.update_loop(63, 1, 2, True, 1.0)
    b.update_loop(10_000, 1, 2, True, 1.0)
    b.update_loop(-1, 1, 2, True, 1.0)
    b.update_camera("nope", 1, 2, 5.0, 1.0)
    b.update_camera("W_T_sl", 1, 2, 5.0, 1.0)  # a loop, not a camera zone
    assert b.unknown_inputs == 5
    assert set(b.counts()) == {d.id for d in T.config.detectors}
    assert all(n == 0 for n in b.counts().values())
    assert b.take_events() == [] and b.alarms() == []


def test_camera_by_group_id_adds_a_zone_that_is_not_failed_at_once() -> None:
    b = DetectorBank(T, quiet(stale_camera_s=60.0, silent_camera_s=1800.0))
    b.view(0.0, signals(T))
    b.update_camera("W_T", 0, 0, 10.0, 5000.0)  # long after the bank started
    assert b.unknown_inputs == 0
    assert "camera:W_T" in b.counts()
    v = gv(b, "W_T", 5000.0)
    assert not b.failed("camera:W_T")
    assert not v.failed
    b.update_camera("E_T", NOT_AN_INT, 0, 10.0, 5000.0)  # a garbage first message
    assert not b.failed("camera:E_T")
    b.view(5059.0)
    assert not b.failed("camera:W_T") and not b.failed("camera:E_T")
    b.view(5060.0)
    assert b.failed("camera:W_T") and b.failed("camera:E_T")  # stale now


def test_values_beyond_float_range_are_garbage_not_a_crash() -> None:
    b = bank(x=C)
    b.update_loop(0, 0, None, False, 0.0)
    b.update_loop(0, 0, None, False, 1.0, occupied_s=10**400)
    b.update_camera("A_cam", 10**400, 0, 5.0, 2.0)
    b.update_camera("A_cam", 0, 10**400, 5.0, 3.0)
    b.update_camera("A_cam", 0, 0, 10**400, 4.0)
    assert b.diagnostics()["A_sl"]["garbage"] == 1
    assert b.diagnostics()["A_cam"]["garbage"] == 3


def test_absurd_camera_queue_keeps_arrivals_finite() -> None:
    b = bank(x=C)
    b.update_camera("B_cam", 0, 0, 10.0, 0.0)
    b.update_camera("B_cam", 0, 10**306, 10.0, 10.0)
    assert math.isfinite(gv(b, "B", 10.0).arrivals_vph)


# -- property: never raise, always sane ----------------------------------------------------------

_ANY_INT = st.one_of(
    st.integers(min_value=-5, max_value=70_000),
    st.integers(),
    st.sampled_from([65_535, 65_536, -(2**63), 2**64, 10**400, -(10**400)]),
)
_ANY_NUMBER = st.one_of(
    _ANY_INT,
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
)
# Camera values up to 2**64 and beyond (a queue beyond 500 per lane is refused).
_CAMERA_VALUE = st.one_of(
    st.integers(min_value=-3, max_value=60),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([10**400, -(10**400)]),
    st.booleans(),
    st.floats(min_value=-1e12, max_value=1e12),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
_DT = st.one_of(
    st.floats(min_value=0.0, max_value=2.0),
    st.sampled_from([0.0, 0.1, 1.0, 5.0]),
    st.floats(min_value=0.0, max_value=4000.0),
)

_X_RECALL = Intersection.build(cam_config(recall=["B", "P"]))
_INTERSECTIONS = [T, C, _X_RECALL]
_NAMES = ["A", "B", "P", "W_T", "S_R", "P_S", "A_cam", "B_cam", "A_sl", "nope", "camera:A"]
_SMALL = DetectorSettings(
    silent_loop_s=120.0,
    silent_pushbutton_s=300.0,
    silent_camera_s=120.0,
    stale_camera_s=20.0,
    stuck_on_s=30.0,
    erratic_events=3,
    erratic_window_s=60.0,
    chatter_edges_per_lane=2,
    chatter_window_s=5.0,
    recover_after_s=20.0,
    arrival_tau_s=30.0,
)

_OP = st.one_of(
    st.tuples(
        st.just("loop"),
        st.integers(min_value=-1, max_value=12),
        _ANY_NUMBER,
        st.one_of(st.none(), _ANY_NUMBER),
        st.one_of(st.booleans(), st.integers(-2, 2), st.floats(allow_nan=True)),
        st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), _ANY_INT),
        _DT,
    ),
    st.tuples(
        st.just("camera"),
        st.sampled_from(_NAMES),
        _CAMERA_VALUE,
        _CAMERA_VALUE,
        st.one_of(_CAMERA_VALUE, st.sampled_from([5.0, 10.0])),
        _DT,
    ),
    st.tuples(
        st.just("signals"),
        st.lists(st.sampled_from([int(s) for s in Signal]), min_size=0, max_size=8),
        _DT,
    ),
    st.tuples(st.just("view"), _DT),
)


def _check(view_groups: Iterable[GroupView]) -> None:
    for g in view_groups:
        assert g.queue >= 0.0, g
        assert math.isfinite(g.arrivals_vph) and g.arrivals_vph >= 0.0, g
        assert g.gap_s >= 0.0, g
        assert all(math.isfinite(a) for a in g.approaching), g
        assert g.call or g.call_since is None, g


@settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    xi=st.integers(min_value=0, max_value=len(_INTERSECTIONS) - 1),
    tuned=st.booleans(),
    ops=st.lists(_OP, max_size=60),
)
def test_arbitrary_readings_never_raise_and_stay_sane(
    xi: int, tuned: bool, ops: list[tuple[Any, ...]]
) -> None:
    x = _INTERSECTIONS[xi]
    b = DetectorBank(x, _SMALL if tuned else None)
    now = 0.0
    for op in ops:
        now += op[-1]
        kind = op[0]
        if kind == "loop":
            _, channel, count, occ, presence, occ_s, _ = op
            if isinstance(occ_s, float) and not math.isnan(occ_s) and occ is not None:
                occ_s = None  # exercise both occupancy forms
            b.update_loop(channel, count, occ, presence, now, occupied_s=occ_s)
        elif kind == "camera":
            _, name, count, queue, interval, _ = op
            b.update_camera(name, count, queue, interval, now)
        elif kind == "signals":
            b.update_signals(op[1], now)
        else:
            _check(b.view(now).groups)
        assert b.unknown_inputs >= 0
    view = b.view(now + 1.0)
    _check(view.groups)
    assert [g.group for g in view.groups] == [g.id for g in x.groups]
    for a in b.alarms():
        assert b.failed(a.detector)
    b.take_events()
    assert b.take_events() == []
