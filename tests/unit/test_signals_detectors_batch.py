"""The detector bank's fast paths behave exactly like its plain ones.

:meth:`DetectorBank.update_loops` (one call per cabinet read, all channels) must be
:meth:`DetectorBank.update_loop` for each channel in order — under normal traffic and under
every kind of broken detector (stuck, dead, chattering, garbage, jumping counters), with
late answers (``sent`` before ``now``), unknown channels, cameras coming and going and the
signals changing. Two banks get the same random inputs, one per channel and one batched; every
view, event, alarm, total and counter must be equal. The views the bank builds (without
``GroupView.__init__``, for speed) must be ordinary frozen ``GroupView`` instances.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from controller.signals.detectors import DetectorBank, DetectorSettings, GroupView
from controller.signals.model import Intersection, Signal
from devices.cabinet import DetectorReading
from tests.unit.signals_fixtures import four_arm, t_junction

XS = {"four_arm": Intersection.build(four_arm()), "t_junction": Intersection.build(t_junction())}

# Short thresholds: every diagnosis fires and clears within a run.
FAST = DetectorSettings(
    silent_loop_s=5.0,
    silent_pushbutton_s=20.0,
    silent_camera_s=10.0,
    stale_camera_s=3.0,
    stuck_on_s=4.0,
    erratic_events=2,
    erratic_window_s=30.0,
    chatter_window_s=2.0,
    chatter_edges_per_lane=2,
    recover_after_s=3.0,
    diagnose_every_s=0.3,
)
MODES = ("normal", "normal", "stuck", "dead", "chatter", "garbage", "jumpy")
GARBAGE: tuple[Any, ...] = (-1, 65_536, 1.5, float("nan"), True, "x")


def _state(b: DetectorBank) -> tuple[object, ...]:
    return (
        b.alarms(),
        b.diagnostics(),
        b.totals(),
        b.counts(),
        b.unknown_inputs,
    )


def _drive(x: Intersection, seed: int, steps: int) -> dict[str, int]:
    """Feed both banks the same random run; returns how often each fault was raised."""
    rng = random.Random(seed)
    single, batched = DetectorBank(x, FAST), DetectorBank(x, FAST)
    n = x.config.cabinet.channels
    counts = [rng.randrange(65_536) for _ in range(n)]
    occupancy = [rng.randrange(65_536) for _ in range(n)]
    presence = [False] * n
    mode = [rng.choice(MODES) for _ in range(n)]
    cameras = [g.id for g in x.groups] + ["nobody"]  # by group id: zones added on the fly
    green: set[int] = set()
    raised: dict[str, int] = {}
    t = 0.0
    for k in range(steps):
        t += rng.choice((0.1, 0.1, 0.1, 0.05, 0.3, 2.0))
        # Answers late by up to 2 s: the plausibility limits then depend on ``sent``.
        sent = None if rng.random() < 0.3 else t - rng.choice((0.0, 0.05, 0.5, 2.0))
        if rng.random() < 0.02:
            mode[rng.randrange(n)] = rng.choice(MODES)
        with_occupancy = rng.random() < 0.2
        reads = []
        for ch in range(n):
            m = mode[ch]
            if m == "stuck":
                presence[ch] = True
            elif m == "chatter":
                presence[ch] = not presence[ch]
            elif m != "dead":
                if rng.random() < 0.05:
                    presence[ch] = not presence[ch]
                if rng.random() < 0.05:
                    counts[ch] = (counts[ch] + rng.choice((1, 1, 2, 3, 4))) & 0xFFFF
                if with_occupancy and presence[ch]:
                    # (up to 3 s: beyond the time since the last read is garbage)
                    grow = rng.choice((0, 1, 2, 5, 12, 30))
                    occupancy[ch] = (occupancy[ch] + grow) & 0xFFFF
                if m == "jumpy" and rng.random() < 0.1:
                    counts[ch] = (counts[ch] + rng.choice((-1, 100, 30_000))) & 0xFFFF
            count: Any = counts[ch]
            occ: Any = occupancy[ch] if with_occupancy else None
            if m == "garbage" and rng.random() < 0.3:
                count = rng.choice(GARBAGE)
                if with_occupancy:
                    occ = rng.choice((-3, 70_000, occ))
            reads.append(DetectorReading(count, occ, presence[ch]))
        if rng.random() < 0.97:  # now and then a read is lost
            for ch, r in enumerate(reads):
                single.update_loop(ch, r.count, r.occupancy, r.presence, t, sent=sent)
            batched.update_loops(reads, t, sent=sent)
        if rng.random() < 0.05:
            cam = rng.choice(cameras)
            args = (rng.choice((0, 1, 3, 50, -1)), rng.choice((0, 2, 9, 5000)), 5.0, t)
            single.update_camera(cam, *args)
            batched.update_camera(cam, *args)
        if rng.random() < 0.03:
            green = set(rng.sample(range(x.n), rng.randrange(x.n // 2 + 1)))
        shown = [int(Signal.GREEN) if i in green else int(Signal.RED) for i in range(x.n)]
        a, b = single.view(t, shown), batched.view(t, shown)
        assert a == b, f"step {k} at {t}: views differ"
        if k % 25 == 0:
            events = single.take_events()
            assert events == batched.take_events(), f"step {k} at {t}: events differ"
            assert _state(single) == _state(batched), f"step {k} at {t}: state differs"
            for ev in events:
                if ev.active:
                    raised[ev.alarm.kind] = raised.get(ev.alarm.kind, 0) + 1
    return raised


@pytest.mark.parametrize("name", sorted(XS))
@pytest.mark.parametrize("seed", [1, 2])
def test_batched_reads_equal_reads_channel_by_channel(name: str, seed: int) -> None:
    raised = _drive(XS[name], seed, 1500)
    # The run broke detectors in every way the bank diagnoses from loops (else it would not
    # have compared the fault paths).
    assert {"silent", "stuck", "chattering", "erratic"} <= set(raised), raised


def test_an_empty_read_is_no_input() -> None:
    # Silence is timed from the bank's first input: an empty read must not be one.
    x = XS["t_junction"]
    empty, one = DetectorBank(x, FAST), DetectorBank(x, FAST)
    empty.update_loops([], 5.0)
    one.update_loops([DetectorReading(0, None, False)], 5.0)
    later = 5.0 + FAST.silent_loop_s
    empty.view(later)
    one.view(later)
    assert empty.alarms() == [] and empty.unknown_inputs == 0
    assert {a.kind for a in one.alarms()} == {"silent"}


def test_views_are_ordinary_frozen_group_views() -> None:
    x = XS["t_junction"]
    b = DetectorBank(x, FAST)
    b.update_loop(0, 7, None, True, 0.0)
    for v in b.view(1.0).groups:
        assert type(v) is GroupView
        same = GroupView(**{f.name: getattr(v, f.name) for f in dataclasses.fields(v)})
        assert v == same and hash(v) == hash(same) and repr(v) == repr(same)
        assert dataclasses.replace(v, call=not v.call).call is not v.call
        with pytest.raises(dataclasses.FrozenInstanceError):
            v.call = True  # type: ignore[misc]


def test_unknown_channels_are_counted_per_read() -> None:
    x = XS["t_junction"]
    used = {d.channel for d in x.config.detectors if d.channel is not None}
    n = max(used) + 3
    reads = [DetectorReading(0, None, False)] * n
    single, batched = DetectorBank(x, FAST), DetectorBank(x, FAST)
    for ch in range(n):
        single.update_loop(ch, 0, None, False, 1.0)
    batched.update_loops(reads, 1.0)
    assert batched.unknown_inputs == single.unknown_inputs == n - len(used)
