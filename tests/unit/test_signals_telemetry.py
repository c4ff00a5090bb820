"""What an intersection records: its Indiana event log, detector intervals, decisions, state.

The pure :class:`EventLog` is fed hand-made readings; the runner is driven against the
in-process cabinet (:class:`simulator.cabinet.CabinetCore` behind the SUMO bench's
:class:`~controller.bench.sumo.CoreLink`: the same register images as Modbus, no sockets),
with the built-in traffic model on its detector inputs and a :class:`MemoryRecorder`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.bench.sumo import CoreLink
from controller.config import load_config
from controller.signals.events import EventLog, SignalEvent
from controller.signals.model import (
    GroupKind,
    Intersection,
    Signal,
    SignalsSettings,
    StrategyConfig,
)
from controller.signals.service import IntersectionRunner, SignalsService
from controller.sim_signals import SignalDemand, cabinet_spec, group_demand, traffic_specs
from controller.telemetry.lineproto import Point
from controller.telemetry.recorder import MemoryRecorder
from controller.telemetry.schema import EventCode
from devices.cabinet import DetectorReading
from devices.lights import Topics
from simulator.cabinet import CabinetCore
from simulator.signal_traffic import IntersectionTraffic
from tests.unit.signals_fixtures import four_arm

G, Y, R = int(Signal.GREEN), int(Signal.YELLOW), int(Signal.RED)
PC, DK, FY = int(Signal.PED_CLEARANCE), int(Signal.DARK), int(Signal.FLASH_YELLOW)
EPOCH = 1_790_000_000.0


def _x(strategy: str = "actuated") -> Intersection:
    cfg = four_arm()
    return Intersection.build(cfg.model_copy(update={"strategy": StrategyConfig(default=strategy)}))


def _codes(events: Sequence[SignalEvent], group: str | None = None) -> list[int]:
    return [e.code for e in events if group is None or e.group == group]


# -- the pure event log ------------------------------------------------------------------------


def test_a_vehicle_cycle_logs_green_yellow_red_and_the_end_of_its_red_clearance() -> None:
    x = _x()
    log = EventLog(x)
    nt = x.index["N_T"]
    red_clear = max(x.all_red(nt, j) for j in range(x.n) if x.conflict[nt][j])
    shown = [R] * x.n
    assert log.displayed(shown, 0.0) == []  # the first reading is the baseline
    shown[nt] = G
    assert _codes(log.displayed(shown, 1.0)) == [1]
    shown[nt] = Y
    assert _codes(log.displayed(shown, 20.0)) == [8]
    shown[nt] = R
    events = log.displayed(shown, 24.0)
    assert _codes(events) == [9, 10]
    assert {(e.param, e.group) for e in events} == {(nt + 1, "N_T")}
    assert log.displayed(shown, 24.0 + red_clear - 0.1) == []
    assert _codes(log.displayed(shown, 24.0 + red_clear)) == [11]
    assert log.displayed(shown, 60.0) == []  # once


def test_a_green_before_the_red_clearance_ran_out_ends_it_first() -> None:
    x = _x()
    log = EventLog(x)
    i = x.index["E_T"]
    shown = [R] * x.n
    shown[i] = Y
    log.displayed(shown, 0.0)
    shown[i] = R
    assert _codes(log.displayed(shown, 1.0)) == [9, 10]
    shown[i] = G
    assert _codes(log.displayed(shown, 1.1)) == [11, 1]


def test_crossings_log_walk_clearance_dont_walk_and_dark() -> None:
    x = _x()
    log = EventLog(x)
    p = x.index["P_N"]
    shown = [R] * x.n
    log.displayed(shown, 0.0)
    for code, expect in ((G, 21), (PC, 22), (R, 23), (DK, 24), (R, 23)):
        shown[p] = code
        assert _codes(log.displayed(shown, 1.0)) == [expect]


def test_flash_logs_no_phase_events_and_cancels_red_clearance() -> None:
    x = _x()
    log = EventLog(x)
    i = x.index["N_T"]
    shown = [R] * x.n
    shown[i] = Y
    log.displayed(shown, 0.0)
    shown[i] = R
    log.displayed(shown, 1.0)
    flash = [DK if g.kind is GroupKind.PEDESTRIAN else FY for g in x.groups]
    peds = sum(1 for g in x.groups if g.kind is GroupKind.PEDESTRIAN)
    assert _codes(log.displayed(flash, 1.1)) == [24] * peds  # crossings go dark
    # back to all red: crossings show don't walk, no vehicle event, no 11 after the flash
    assert _codes(log.displayed([R] * x.n, 100.0)) == [23] * peds
    assert log.displayed([R] * x.n, 101.0) == []


def test_a_termination_noted_by_the_engine_precedes_the_yellow_the_cabinet_shows() -> None:
    x = _x()
    log = EventLog(x)
    i = x.index["N_T"]
    green = [R] * x.n
    green[i] = G
    yellow = list(green)
    yellow[i] = Y
    log.displayed(green, 0.0)
    log.engine_step(green, yellow, EventCode.PHASE_MAX_OUT, 10.0)
    assert _codes(log.displayed(yellow, 10.1)) == [5, 8]
    # a note the cabinet never showed (it ran its own plan) expires
    log.displayed(green, 20.0)
    log.engine_step(green, yellow, EventCode.PHASE_GAP_OUT, 20.0)
    assert _codes(log.displayed(yellow, 25.0)) == [8]


def test_a_failed_read_makes_the_next_one_a_baseline_not_a_jump() -> None:
    x = _x()
    log = EventLog(x)
    shown = [R] * x.n
    log.displayed(shown, 0.0)
    log.reset()
    shown[x.index["N_T"]] = G
    assert log.displayed(shown, 5.0) == []


def test_presence_edges_become_detector_and_push_button_events() -> None:
    x = _x()
    log = EventLog(x)
    det = {d.id: d for d in x.config.detectors}
    sl, pb = det["N_T_sl"], det["P_N_pb"]
    assert sl.channel is not None and pb.channel is not None

    def reading(*on: int) -> list[DetectorReading]:
        return [DetectorReading(0, 0, ch in on) for ch in range(32)]

    assert log.presence(reading(sl.channel)) == []  # baseline
    assert log.presence(reading(sl.channel)) == []
    events = log.presence(reading(pb.channel))
    assert [(e.code, e.param, e.detector, e.group) for e in events] == [
        (81, sl.channel + 1, "N_T_sl", "N_T"),
        (90, pb.channel + 1, "P_N_pb", "P_N"),
    ]
    assert _codes(log.presence(reading())) == [89]


def test_detector_faults_map_to_indiana_fault_codes() -> None:
    log = EventLog(_x())
    assert log.detector_fault("N_T_sl", "stuck", True).code == 87
    assert log.detector_fault("N_T_sl", "silent", True).code == 85
    assert log.detector_fault("N_T_up", "chattering", True).code == 88
    assert log.detector_fault("N_T_sl", "stuck", False).code == 83
    assert log.detector_fault("P_N_pb", "silent", True).code == 91
    assert log.detector_fault("P_N_pb", "silent", False).code == 92
    cam = log.detector_fault("camera:E_T", "stale", True)
    assert (cam.code, cam.param, cam.group) == (84, 0, "E_T")


# -- the runner against an in-process cabinet --------------------------------------------------


@dataclass
class Clock:
    t: float = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Run:
    x: Intersection
    runner: IntersectionRunner
    core: CabinetCore
    rec: MemoryRecorder | None
    clock: Clock
    shown: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)
    presence: list[tuple[float, tuple[bool, ...]]] = field(default_factory=list)
    counts: list[tuple[int, ...]] = field(default_factory=list)
    written: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def t(self) -> float:
        return self.clock.t

    async def run(self, seconds: float) -> None:
        for _ in range(round(seconds * 10)):
            self.clock.t = t = round(self.clock.t + 0.1, 6)
            self.core.tick(t)
            await self.runner.step()
            cab = self.runner.cabinet
            assert cab is not None
            self.shown.append((t, tuple(int(c) for c in cab.displayed)))
            self.presence.append((t, tuple(d.presence for d in cab.detectors)))
            self.counts.append(tuple(d.count for d in cab.detectors))
            self.written.append(tuple(self.core.shown))


def _run(
    strategy: str = "actuated",
    *,
    telemetry: bool = True,
    interval_s: float = 60.0,
    first_interval_s: float | None = None,
) -> Run:
    x = _x(strategy)
    settings = SignalsSettings()
    spec = cabinet_spec(x, settings)
    groups, dets = traffic_specs(x)
    traffic = IntersectionTraffic(groups, dets, SignalDemand(group_demand(x), 0.6), seed=11)
    core = CabinetCore(spec, 0.0, traffic)  # type: ignore[arg-type]  # unpacks as a tuple
    clock = Clock()
    link = CoreLink(core, x.n, spec.n_channels, clock)
    rec = MemoryRecorder(now=lambda: EPOCH + clock.t) if telemetry else None
    runner = IntersectionRunner(
        x,
        settings,
        clock,
        link,  # type: ignore[arg-type]
        local_time=lambda: 600,
        telemetry=rec,
        detector_interval_s=interval_s,
        first_interval_s=first_interval_s,
    )
    return Run(x, runner, core, rec, clock)


def _ms(t: float) -> int:
    return round((EPOCH + t) * 1000)


def _events(rec: MemoryRecorder) -> list[Point]:
    return rec.of("signal_event")


def _tag(p: Point, name: str) -> str | None:
    return dict(p.tags).get(name)


def _field(p: Point, name: str) -> float | int | bool:
    return dict(p.fields)[name]


@pytest.fixture(scope="module")
def actuated() -> Run:
    r = _run("actuated")
    asyncio.run(r.run(200.0))
    assert r.rec is not None
    r.runner.telemetry.record_interval(r.runner, r.t)  # type: ignore[union-attr]
    return r


def test_the_runner_takes_control_and_records_its_state_changes(actuated: Run) -> None:
    assert actuated.runner.sync == "control"
    assert actuated.rec is not None
    states = actuated.rec.of("signal_intersection")
    syncs = [_field(p, "sync") for p in states]
    assert syncs[0] in (0, 1) and 2 in syncs  # down/hand-over first, control later
    last = states[-1]
    assert _field(last, "link_up") is True and _field(last, "cabinet_mode") == 1
    assert _field(last, "strategy") == 2 and _field(last, "violations") == 0


def test_phase_events_match_what_the_cabinet_showed(actuated: Run) -> None:
    """Every change of every group's displayed code, at the step it was read, in order."""
    assert actuated.rec is not None
    x = actuated.x
    expected: dict[str, list[tuple[int, int]]] = defaultdict(list)
    prev: tuple[int, ...] | None = None
    for t, shown in actuated.shown:
        if prev is not None:
            for i, (p, c) in enumerate(zip(prev, shown, strict=True)):
                if p == c:
                    continue
                gid = x.groups[i].id
                if x.groups[i].kind is GroupKind.PEDESTRIAN:
                    code = {G: 21, PC: 22, R: 23}[c]
                    expected[gid].append((_ms(t), code))
                elif c == G:
                    expected[gid].append((_ms(t), 1))
                elif c == Y:
                    expected[gid].append((_ms(t), 8))
                else:
                    assert (p, c) == (Y, R)
                    expected[gid] += [(_ms(t), 9), (_ms(t), 10)]
        prev = shown
    got: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for ev in _events(actuated.rec):
        code = int(_field(ev, "code"))
        if code in (1, 8, 9, 10, 21, 22, 23) and _tag(ev, "detector") is None:
            got[str(_tag(ev, "group"))].append((ev.ts_ms, code))
            assert _field(ev, "param") == x.index[str(_tag(ev, "group"))] + 1
    assert got == expected
    greens = sum(1 for seq in got.values() for _, c in seq if c == 1)
    assert greens >= 8  # a few cycles of a four-stage intersection


def test_every_yellow_says_why_the_green_ended_and_every_red_clearance_ends(
    actuated: Run,
) -> None:
    assert actuated.rec is not None
    by_group: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for p in _events(actuated.rec):
        if _tag(p, "detector") is None:
            by_group[str(_tag(p, "group"))].append((p.ts_ms, int(_field(p, "code"))))
    yellows = 0
    for seq in by_group.values():
        for k, (ts, code) in enumerate(seq):
            if code == 8:
                yellows += 1
                assert k > 0 and seq[k - 1][1] in (4, 5, 6) and seq[k - 1][0] == ts
            if code == 10:
                later = [c for _, c in seq[k + 1 :] if c not in (43, 44, 45)]
                # ends before the group's next green (or the run ended first)
                assert not later or later[0] == 11
    assert yellows >= 4


def test_detector_on_off_events_match_the_presence_bits(actuated: Run) -> None:
    assert actuated.rec is not None
    x = actuated.x
    by_channel = {d.channel: d for d in x.config.detectors if d.channel is not None}
    expected: list[tuple[int, str, int]] = []
    prev: tuple[bool, ...] | None = None
    for t, bits in actuated.presence:
        if prev is not None:
            for ch, d in sorted(by_channel.items()):
                if bits[ch] != prev[ch]:
                    button = d.kind.value == "pushbutton"
                    code = (90 if bits[ch] else 89) if button else (82 if bits[ch] else 81)
                    expected.append((_ms(t), d.id, code))
        prev = bits
    got = [
        (p.ts_ms, str(_tag(p, "detector")), int(_field(p, "code")))
        for p in _events(actuated.rec)
        if int(_field(p, "code")) in (81, 82, 89, 90)
    ]
    assert sorted(got) == sorted(expected)
    assert sum(1 for _, _, c in got if c == 82) >= 20
    for p in _events(actuated.rec):
        det = _tag(p, "detector")
        if det is not None:
            d = next(d for d in x.config.detectors if d.id == det)
            assert _tag(p, "group") == d.group and _field(p, "param") == (d.channel or 0) + 1


def test_interval_counts_add_up_to_the_cabinet_counters(actuated: Run) -> None:
    assert actuated.rec is not None
    points = actuated.rec.of("signal_detector")
    totals: dict[str, int] = defaultdict(int)
    occupied: dict[str, float] = defaultdict(float)
    spans: dict[str, float] = defaultdict(float)
    for p in points:
        det = str(_tag(p, "detector"))
        totals[det] += int(_field(p, "count"))
        occupied[det] += float(_field(p, "occupied_s"))
        spans[det] += float(_field(p, "interval_s"))
        assert 0.0 <= float(_field(p, "occupancy_pct")) <= 100.0
    # three full minutes and the rest: 4 intervals per detector, covering the whole run
    assert len(points) == 4 * len(actuated.x.config.detectors)
    first, last = actuated.counts[0], actuated.counts[-1]
    for d in actuated.x.config.detectors:
        assert d.channel is not None
        assert totals[d.id] == (last[d.channel] - first[d.channel]) % 65536, d.id
        assert spans[d.id] == pytest.approx(actuated.t - 0.1, abs=0.11)
    assert sum(totals.values()) > 50
    bank = actuated.runner.control.detectors.totals()
    assert {t.detector: t.count for t in bank} == dict(totals)
    assert {t.detector: pytest.approx(t.occupied_s, abs=0.01) for t in bank} == dict(occupied)


def test_a_shorter_first_interval_staggers_the_cadence_and_loses_no_count() -> None:
    """``first_interval_s``: the first interval ends early, every later one is a full
    interval, and the counts still add up to the cabinet's counters."""
    r = _run(interval_s=20.0, first_interval_s=5.0)
    asyncio.run(r.run(50.0))
    assert r.rec is not None
    r.runner.telemetry.record_interval(r.runner, r.t)  # type: ignore[union-attr]
    det = r.x.config.detectors[0]
    spans = [
        float(_field(p, "interval_s"))
        for p in r.rec.of("signal_detector")
        if _tag(p, "detector") == det.id
    ]
    assert spans == pytest.approx([5.0, 20.0, 20.0, 50.0 - 45.0 - 0.1], abs=0.11)
    totals: dict[str, int] = defaultdict(int)
    for p in r.rec.of("signal_detector"):
        totals[str(_tag(p, "detector"))] += int(_field(p, "count"))
    first, last = r.counts[0], r.counts[-1]
    for d in r.x.config.detectors:
        assert d.channel is not None
        assert totals[d.id] == (last[d.channel] - first[d.channel]) % 65536, d.id
    for bad in (0.0, -1.0, 21.0, math.nan):
        with pytest.raises(ValueError, match="first_interval_s"):
            _run(interval_s=20.0, first_interval_s=bad)


def test_a_service_ends_its_intersections_intervals_at_different_moments() -> None:
    """Intersection k of n: a first interval of (k+1)/n of the interval, so that a hundred of
    them never record all their interval points in one step."""
    cfg = load_config(Path(__file__).resolve().parents[2] / "config.yaml")
    xs = cfg.intersections()
    svc = SignalsService(
        cfg.signals,
        xs,
        lambda: 0.0,
        links={x.id: CoreLink(None, x.n, x.config.cabinet.channels, Clock()) for x in xs},  # type: ignore[arg-type]
        mqtt=None,
        topics=Topics("t"),
        local_time=lambda: dt.datetime(2026, 11, 25, 8, 0),
        telemetry=MemoryRecorder(),
        detector_interval_s=60.0,
    )
    firsts = [r.telemetry.first_interval_s for r in svc.runners.values() if r.telemetry]
    assert firsts == [30.0, 60.0]


def test_decisions_are_recorded_when_they_change(actuated: Run) -> None:
    assert actuated.rec is not None
    points = actuated.rec.of("signal_decision")
    assert len(points) >= 6
    keys = [
        tuple(_field(p, k) for k in ("stage", "next_stage", "end_green", "reason")) for p in points
    ]
    assert all(a != b for a, b in itertools.pairwise(keys))
    reasons = {int(_field(p, "reason")) for p in points}
    assert reasons <= {1, 2, 3}  # actuated: rest, extend, gap-out
    assert all(_field(p, "strategy") == 2 for p in points)
    assert all(1 <= int(_field(p, "stage")) <= 4 for p in points)


def test_calls_are_logged_for_groups_without_recall(actuated: Run) -> None:
    assert actuated.rec is not None
    codes = [int(_field(p, "code")) for p in _events(actuated.rec)]
    assert codes.count(43) >= 4 and codes.count(44) >= 4


def test_adaptive_decisions_carry_their_reason_and_holds() -> None:
    r = _run("adaptive")
    asyncio.run(r.run(150.0))
    assert r.rec is not None
    points = r.rec.of("signal_decision")
    assert points and all(_field(p, "strategy") == 3 for p in points)
    reasons = {int(_field(p, "reason")) for p in points}
    assert reasons <= {1, 3, 6, 7, 8, 9} and reasons & {3, 8, 9}
    for p in points:
        fields = dict(p.fields)
        assert ("hold_s" in fields) == (fields["reason"] == 8)
    codes = {int(_field(p, "code")) for p in _events(r.rec)}
    assert {1, 8, 9, 10} <= codes and codes & {4, 5, 6}


def test_telemetry_changes_nothing_the_cabinet_sees() -> None:
    with_, without = _run("actuated"), _run("actuated", telemetry=False)

    async def both() -> None:
        await with_.run(90.0)
        await without.run(90.0)

    asyncio.run(both())
    assert with_.written == without.written
    assert without.runner.telemetry is None
