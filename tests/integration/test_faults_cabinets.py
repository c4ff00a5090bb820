"""Fault survival, signal-cabinet side: a real cut of the Modbus TCP path, garbage registers.

Everything is real: the shipped ``config.yaml`` intersections, simulated cabinets (pymodbus
servers with their own conflict monitor, watchdog and local plan, fed by the built-in traffic
model) and the controller's :class:`SignalsService` talking to them over loopback TCP, in real
time. ``test_signals_modbus.py`` covers the same faults injected *inside* the cabinet; here the
TCP path itself is cut by a proxy (:mod:`tests.proxy`) and the registers are fuzzed.

Each test ends with one :func:`tests.faults.report` line (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from controller.config import load_config
from controller.signals.model import Intersection
from controller.signals.service import IntersectionRunner, SignalsService, with_cabinets
from controller.sim_signals import SimulatedSite
from devices.cabinet import HR, IR, CabinetMode, FaultCode, SignalCode, status_spans
from devices.lights import Topics
from simulator.cabinet import SimulatedCabinet
from tests.faults import report
from tests.helpers import wait_for
from tests.proxy import CutMode, TcpProxy

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]

_RED = int(SignalCode.RED)
_GREEN = int(SignalCode.GREEN)
_FLASH_OR_DARK = frozenset({int(SignalCode.FLASH_YELLOW), int(SignalCode.DARK)})
_OPEN = frozenset(
    int(c)
    for c in (SignalCode.RED_AMBER, SignalCode.GREEN, SignalCode.YELLOW, SignalCode.PED_CLEARANCE)
)


def _local() -> dt.datetime:
    return dt.datetime(2026, 11, 25, 10, 0)


@dataclass(frozen=True)
class Sample:
    """What the cut intersection and its neighbour looked like at one moment."""

    t: float  # time.monotonic()
    mode: CabinetMode
    shown: tuple[int, ...]
    sync: str
    alarms: frozenset[str]
    other_sync: str
    other_mode: CabinetMode


@dataclass
class Bench:
    """Two shipped intersections; ``target``'s cabinet is reached through ``proxy``."""

    xs: list[Intersection]
    sim: SimulatedSite
    service: SignalsService
    task: asyncio.Task[None]
    target: str
    other: str
    proxy: TcpProxy | None
    samples: list[Sample] = field(default_factory=list)

    @property
    def runner(self) -> IntersectionRunner:
        return self.service.runners[self.target]

    @property
    def cabinet(self) -> SimulatedCabinet:
        return self.sim.cabinets[self.target]

    @property
    def x(self) -> Intersection:
        return next(x for x in self.xs if x.id == self.target)

    def sample(self) -> None:
        r, o = self.runner, self.service.runners[self.other]
        cab, ocab = self.cabinet, self.sim.cabinets[self.other]
        self.samples.append(
            Sample(
                time.monotonic(),
                cab.mode,
                cab.shown,
                r.sync,
                frozenset(r.alarms),
                o.sync,
                ocab.mode,
            )
        )


@contextlib.asynccontextmanager
async def bench(*, target: str = "ql1a-thd", proxied: bool = True) -> AsyncIterator[Bench]:
    """The shipped site; with ``proxied`` the controller reaches ``target`` through a proxy.

    The default target, ql1a-thd, is the upstream of ql1a-lct on the coordinated arterial, so
    "the other intersection is undisturbed" also covers losing its coordination feed.
    """
    cfg = load_config(ROOT / "config.yaml")
    xs = cfg.intersections()
    sim = SimulatedSite(xs, cfg.signals, level=0.6, seed=7)
    await sim.start()
    addresses = dict(sim.addresses)
    proxy = None
    if proxied:
        proxy = TcpProxy(*addresses[target])
        await proxy.start()
        addresses[target] = (proxy.host, proxy.port)
    service = SignalsService(
        cfg.signals,
        with_cabinets(xs, addresses),
        time.monotonic,
        mqtt=None,
        topics=Topics("t"),
        local_time=_local,
    )
    task = asyncio.create_task(service.run())
    other = next(x.id for x in xs if x.id != target)
    b = Bench(xs, sim, service, task, target, other, proxy)

    async def sampler() -> None:
        while True:
            b.sample()
            await asyncio.sleep(0.05)

    sampling = asyncio.create_task(sampler())
    try:
        yield b
    finally:
        for t in (sampling, task):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if proxy is not None:
            await proxy.close()
        await sim.stop()


def _loop_counts(r: IntersectionRunner) -> tuple[dict[int, int], dict[str, int]]:
    """The raw counter registers of the last good read and the bank's counts, consistently.

    Both change together in one synchronous step of the runner (read, then feed the bank), so
    taken together between two awaits they describe the same read.
    """
    status = r.cabinet
    assert status is not None
    dets = [d for d in r.x.config.detectors if d.channel is not None]
    raw = {d.channel: status.detectors[d.channel].count for d in dets if d.channel is not None}
    counts = r.control.detectors.counts()
    return raw, {d.id: counts[d.id] for d in dets}


def _conflicting_open(x: Intersection, shown: tuple[int, ...]) -> list[tuple[str, str]]:
    """Pairs of conflicting groups both open in ``shown`` (the test's own check)."""
    return [
        (x.groups[i].id, x.groups[j].id)
        for i in range(x.n)
        for j in range(i + 1, x.n)
        if x.conflict[i][j] and shown[i] in _OPEN and shown[j] in _OPEN
    ]


# -- 1. the Modbus TCP path cut and restored ---------------------------------------------------

CUT_S = 5.0  # longer than the 2 s heartbeat timeout: the cabinet must run on its own


async def _probe_cut(proxy: TcpProxy) -> str:
    """Check the cut looks like what it claims to be, from a fresh client's point of view."""
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(proxy.host, proxy.port), 0.3)
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "hangs"
    w.close()
    return "connected"


@pytest.mark.parametrize("mode", ["reset", "blackhole"])
async def test_modbus_tcp_path_cut_and_restored(mode: CutMode) -> None:
    """The cable to one cabinet is cut for 5 s and mended.

    The cabinet falls back to its local plan at its heartbeat timeout and runs it (its own
    stage, not flash or dark); the controller marks the cabinet down and raises its alarm; after
    the restore it resynchronises and takes the heads back through the all-red hand-over; no
    monitor on either side sees a violation, no detector count is lost, and the neighbouring
    intersection never notices. The recovery (about 14 s) is mostly the cabinet winding its plan
    down: the stage it opened keeps its 10 s minimum green, then clears, before it hands over.
    """
    async with bench() as b:
        r, cab, x, proxy = b.runner, b.cabinet, b.x, b.proxy
        assert proxy is not None
        other = b.service.runners[b.other]
        assert await wait_for(
            lambda: all(rr.sync == "control" for rr in b.service.runners.values()), 10
        )
        # Cut during the engine's start-up all red (3 s from the hand-over): the cabinet then
        # shows all red when its watchdog fires, so its plan starts its own first stage at once
        # and the test sees it run, whatever the traffic did.
        await asyncio.sleep(0.3)
        assert all(c == _RED for c in cab.shown), cab.shown
        handovers0, cab_handovers0 = r.stats.handovers, cab.stats.handovers
        raw0, counted0 = _loop_counts(r)
        cut_mono, cut_cab = time.monotonic(), cab.clock()
        await proxy.cut(mode)
        probe = await _probe_cut(proxy)
        assert probe == {"reset": "refused", "blackhole": "hangs"}[mode]

        await wait_for(lambda: cab.mode is CabinetMode.LOCAL_PLAN, 4)
        fallback = next(
            c for c in cab.core.transitions if c.t >= cut_cab and c.mode is CabinetMode.LOCAL_PLAN
        )
        fell_back = fallback.t - cut_cab
        fallback_mono = cut_mono + fell_back
        watchdog = fallback.t - cab.core.last_heartbeat_t  # nothing crossed since the cut
        assert fallback.fault is FaultCode.HEARTBEAT_LOST
        # The watchdog fires at its 2 s timeout (the cabinet's loop wakes at the deadline).
        assert 2.0 - 1e-3 <= watchdog <= 2.3, watchdog
        assert fell_back <= 2.3, fell_back
        # (Waits on the 50 ms samples, not on the runner: the sample showing it may lag.)
        await wait_for(
            lambda: (
                any(s.t >= cut_mono and s.sync == "down" for s in b.samples)
                and any(s.t >= cut_mono and "cabinet_down" in s.alarms for s in b.samples)
            ),
            4,
        )
        down_at = next(s.t for s in b.samples if s.t >= cut_mono and s.sync == "down")
        alarm_at = next(s.t for s in b.samples if s.t >= cut_mono and "cabinet_down" in s.alarms)
        # The link gives up after 3 failed requests (0.5 s timeout each, or refused at once).
        assert alarm_at - cut_mono < 3.0

        await asyncio.sleep(max(0.0, cut_mono + CUT_S - time.monotonic()))
        # The cabinet ran its plan all along: no flash, nothing dark, its own greens.
        assert cab.mode is CabinetMode.LOCAL_PLAN and cab.stats.faults == 0
        restored = time.monotonic()
        await proxy.restore()
        await wait_for(lambda: r.sync == "control", 30)
        recovery_s = time.monotonic() - restored
        await asyncio.sleep(1.0)
        raw1, counted1 = _loop_counts(r)

        # -- the cabinet's side, from the samples taken every 50 ms
        local = [
            s
            for s in b.samples
            if cut_mono <= s.t <= restored and s.mode is not CabinetMode.FOLLOWING
        ]
        assert local and all(s.mode is CabinetMode.LOCAL_PLAN for s in local)
        assert not any(_FLASH_OR_DARK & set(s.shown) for s in local)
        plan_greens = 0  # groups the plan turned green itself
        prev = None
        for s in b.samples:
            if prev is not None and s.mode is CabinetMode.LOCAL_PLAN:
                plan_greens += sum(
                    1 for a, c in zip(prev.shown, s.shown, strict=True) if c == _GREEN != a
                )
            prev = s
        assert plan_greens >= 1, "the local plan never opened a stage of its own"
        states = {s.shown for s in local}
        conflicts = [p for s in b.samples for p in _conflicting_open(x, s.shown)]
        assert conflicts == []
        assert cab.stats.faults == 0 and cab.core.last_fault is None
        assert (cab.mode, cab.fault) == (CabinetMode.FOLLOWING, FaultCode.NONE)
        assert cab.stats.handovers == cab_handovers0 + 1

        # -- the controller's side
        assert r.control.stats.violations == 0 and r.control.monitor.total == 0
        assert r.stats.resyncs >= 1 and r.stats.handovers == handovers0 + 1
        assert r.sync == "control" and "cabinet_down" not in r.alarms
        await wait_for(lambda: tuple(int(c) for c in cab.shown) == r._written, 1)
        assert not b.task.done()

        # -- the neighbour: in control, its cabinet following, throughout
        after_cut = [s for s in b.samples if s.t >= cut_mono]
        assert all(s.other_sync == "control" for s in after_cut)
        assert all(s.other_mode is CabinetMode.FOLLOWING for s in after_cut)
        assert other.control.stats.violations == 0
        assert b.sim.cabinets[b.other].stats.faults == 0

        # -- detector counts: the cabinet's counters are cumulative, so what it counted during
        # the cut arrives with the first read after it; lost is what the bank refused.
        registered = sum((raw1[ch] - raw0[ch]) % 65536 for ch in raw0)
        taken = sum(counted1[d] - counted0[d] for d in counted0)
        lost = registered - taken
        assert registered > 0 and lost == 0, (registered, taken)

        stats = proxy.stats
        if mode == "reset":
            assert stats.resets >= 1  # the controller's connection was reset, not left open
        else:
            assert stats.resets == 0 and stats.held_bytes > 0
        late = f", {stats.late_bytes} B held and delivered late" if mode == "blackhole" else ""
        report(
            f"Modbus link cut (TCP {mode}) and restored",
            recovery_s=recovery_s,
            lost=lost,
            detail=(
                f"{b.target} cut {CUT_S:g} s ({mode}: new connections {probe}{late}); "
                f"cabinet fell back after {fell_back:.2f} s (watchdog {watchdog:.2f} s), "
                f"controller down after {down_at - cut_mono:.2f} s, alarm after "
                f"{alarm_at - cut_mono:.2f} s; local plan ran {restored - fallback_mono:.1f} s "
                f"({len(states)} distinct head states, {plan_greens} greens opened by the plan "
                f"itself), never flash/dark; "
                f"handovers +{r.stats.handovers - handovers0}; violations controller/cabinet "
                f"{r.control.stats.violations}/{cab.stats.faults}; {registered} detector counts "
                f"across the cut, {taken} taken; {b.other} in control throughout"
            ),
        )


# -- 2. garbage in the cabinet's input registers, at random moments ---------------------------------


def _plausible(address: int, rng: random.Random) -> int:
    """A value the map allows at ``address``: a lie the codec cannot see through."""
    if address == IR.STATUS:
        return rng.choice(list(CabinetMode))
    if address == IR.FAULT:
        return rng.choice(list(FaultCode))
    if IR.DISPLAYED <= address < IR.DET_COUNT:
        return rng.choice(list(SignalCode))
    return rng.randrange(0, 6)


async def test_garbage_input_registers_at_random_moments() -> None:
    """Input registers read random values, or in-range lies, at random moments for 6 s.

    Extends ``test_signals_modbus.py``'s single bad status value: many registers, random
    values and durations, and lies (values the map allows, so the codec cannot refuse them: a
    status saying "local plan" while the cabinet follows). Lies are told only while the heads
    are all red (here the engine's start-up after each hand-over), which keeps the test short:
    a lie while greens are up costs a wind-down of the cabinet's plan through its minimum
    greens, and is covered on a simulated clock in ``tests/unit/test_faults_registers.py``.
    The controller keeps running and writing, refuses and counts every bad poll, raises its
    alarm, never commands anything either monitor rejects, and is back in control once the
    registers are sane.
    """
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    async with bench(proxied=False) as b:
        r, cab, x = b.runner, b.cabinet, b.x
        other = b.service.runners[b.other]
        assert await wait_for(
            lambda: all(rr.sync == "control" for rr in b.service.runners.values()), 10
        )
        lost0, writes0, handovers0 = r.stats.lost_control, r.stats.writes, r.stats.handovers
        n_channels = x.config.cabinet.channels
        polled = [a for s, c in status_spans(n_channels) for a in range(s, s + c)]
        weighted = [IR.MAP_VERSION, IR.N_GROUPS, IR.N_CHANNELS, IR.STATUS, IR.FAULT]
        weighted += [IR.FAULT_GROUP_A, IR.FAULT_GROUP_B, IR.PRESENCE]
        weighted += list(range(IR.DISPLAYED, IR.DISPLAYED + x.n))
        started = time.monotonic()
        # A lie the controller must act on (the cabinet "went to its plan"), then three polls
        # in a row refused for sure: the alarm must come.
        assert all(c == _RED for c in cab.shown)
        cab.inject_garbage(IR.STATUS, int(CabinetMode.LOCAL_PLAN), seconds=0.4)
        await asyncio.sleep(0.5)
        cab.inject_garbage(IR.STATUS, 77, seconds=0.6)
        events, lies = 2, 1
        window = 6.0
        while time.monotonic() - started < window:
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            for _ in range(rng.randint(1, 3)):
                address = rng.choice(weighted if rng.random() < 0.6 else polled)
                if all(c == _RED for c in cab.shown) and rng.random() < 0.4:
                    value = int(_plausible(address, rng))
                    lies += 1
                else:
                    value = rng.choice([rng.randrange(0, 65536), rng.randrange(0, 10), 65535])
                cab.inject_garbage(address, value, seconds=rng.uniform(0.05, 0.8))
                events += 1
        cab.clear_injections()
        ended = time.monotonic()
        await wait_for(
            lambda: (
                r.sync == "control"
                and cab.mode is CabinetMode.FOLLOWING
                and "register_error" not in r.alarms
            ),
            30,
        )
        recovery_s = time.monotonic() - ended
        await asyncio.sleep(1.0)
        assert r.sync == "control" and cab.mode is CabinetMode.FOLLOWING, seed

        refused = r.stats.register_errors
        assert refused > 0 and refused == r.link.stats.decode_errors, seed
        left = r.stats.lost_control - lost0
        assert left >= 1 and r.stats.handovers - handovers0 >= left, seed
        assert any("register_error" in s.alarms for s in b.samples), seed
        # Nothing unsafe was commanded: neither monitor objected, the heads never conflicted
        # and never flashed (a lie made the cabinet end our greens itself, at most).
        assert r.control.stats.violations == 0 and cab.stats.faults == 0, (
            seed,
            cab.core.last_fault,
        )
        assert [p for s in b.samples for p in _conflicting_open(x, s.shown)] == [], seed
        assert not any(_FLASH_OR_DARK & set(s.shown) for s in b.samples), seed
        assert not b.task.done()
        window_samples = [s for s in b.samples if s.t >= started]
        assert all(s.other_sync == "control" for s in window_samples)
        assert other.control.stats.violations == 0
        failed = sorted(
            d for d, st in r.control.detectors.diagnostics().items() if st["status"] == "failed"
        )
        report(
            "cabinet register fuzz",
            recovery_s=recovery_s,
            lost=None,
            detail=(
                f"{b.target}, seed {seed}: {events + 1} garbage injections in {window:g} s "
                f"({lies} in-range lies); {refused} polls refused and counted, register alarm "
                f"raised; control left {left}× on a lie, taken back through all red each time; "
                f"{r.stats.writes - writes0} writes, 0 unsafe "
                f"(violations controller/cabinet {r.control.stats.violations}/{cab.stats.faults}); "
                f"detectors failed by garbage counts: {len(failed)}; {b.other} undisturbed"
            ),
        )


# -- 3. a rogue Modbus client writing garbage to the cabinet -------------------------------------


async def test_a_rogue_modbus_client_cannot_make_the_heads_unsafe() -> None:
    """A second Modbus client writes random holding registers for 3 s while the controller runs.

    The cabinet answers every request (off-map writes with an exception response), shows only
    legal committed sets, and latches flash on the first set its monitor refuses; the
    controller raises the cabinet-fault alarm and, after an operator's reset, takes the heads
    back. The heads never show anything unsafe (judged on 50 ms samples by the test's own
    conflict and flash checks).
    """
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    async with bench(proxied=False) as b:
        r, cab, x = b.runner, b.cabinet, b.x
        assert await wait_for(lambda: r.sync == "control", 10)
        await asyncio.sleep(1.0)
        rogue = AsyncModbusTcpClient("127.0.0.1", port=cab.port, timeout=1.0, retries=0)
        assert await rogue.connect()
        sent = answered = refused = off_map = off_map_refused = frames = 0
        started, started_cab = time.monotonic(), cab.clock()
        try:
            while time.monotonic() - started < 3.0:
                kind = rng.random()
                if kind < 0.4:  # a whole frame, committed: the rogue knows the protocol
                    hb = rng.randrange(65536)
                    cmd = rng.choice([0, 0, 0, 1, 2, 3, rng.randrange(65536)])
                    codes = [1, 1, 1, 3, 3, 4, 0, 5, 6, 9, rng.randrange(65536)]
                    outs = [rng.choice(codes) for _ in range(x.n)]

                    address, values = HR.HEARTBEAT, [hb, cmd, hb] + [0] * 13 + outs
                    frames += 1
                else:  # anything anywhere, the map's end included
                    address = rng.randrange(0, HR.END + 12)
                    values = [rng.randrange(65536) for _ in range(rng.randint(1, 30))]
                beyond = address + len(values) > HR.END
                sent += 1
                off_map += beyond
                if len(values) == 1 and rng.random() < 0.5:
                    rr = await rogue.write_register(address, values[0], device_id=1)
                else:
                    rr = await rogue.write_registers(address, values, device_id=1)
                answered += 1
                refused += rr.isError()
                off_map_refused += beyond and rr.isError()
                await asyncio.sleep(rng.uniform(0.01, 0.08))
        finally:
            rogue.close()
        stopped = time.monotonic()
        assert answered == sent and off_map_refused == off_map, seed
        latched = cab.core.latched
        rogue_resets = cab.stats.fault_resets  # the rogue may send a reset itself
        if latched:
            await wait_for(lambda: r.sync == "cabinet_fault" and "cabinet_fault" in r.alarms, 5)
            r.reset_cabinet_fault()  # the operator looked and decided it is safe
        await wait_for(lambda: r.sync == "control" and cab.mode is CabinetMode.FOLLOWING, 30)
        recovery_s = time.monotonic() - stopped
        await asyncio.sleep(0.5)
        # The heads never showed anything unsafe; flash codes only in flash.
        assert [p for s in b.samples for p in _conflicting_open(x, s.shown)] == [], seed
        flashing = (CabinetMode.FLASH, CabinetMode.FLASH_REQUESTED)
        assert not any(
            _FLASH_OR_DARK & set(s.shown) for s in b.samples if s.mode not in flashing
        ), seed
        assert r.control.stats.violations == 0 and not b.task.done()
        assert all(s.other_sync == "control" for s in b.samples if s.t >= started)
        faults = [
            c.fault.name
            for c in cab.core.transitions
            if c.t >= started_cab
            and c.mode is CabinetMode.FLASH
            and c.fault not in (FaultCode.NONE, FaultCode.HEARTBEAT_LOST)
        ]
        assert len(faults) == cab.stats.faults
        alarmed = any("cabinet_fault" in s.alarms for s in b.samples)
        outcome = (
            f"latched {', '.join(faults)} (flash), {rogue_resets} reset by the rogue itself, "
            f"controller alarm {'raised' if alarmed else 'not seen (reset within a poll)'}"
            f"{', operator reset at the end' if latched else ''}"
            if faults
            else "no set refused by the monitor"
        )
        report(
            "rogue Modbus client writes garbage to a cabinet",
            recovery_s=recovery_s,
            lost=None,
            detail=(
                f"seed {seed}: {sent} rogue writes in 3 s ({frames} whole frames, {off_map} off "
                f"the map), all answered, {refused} refused by the server (all off-map ones); "
                f"cabinet {outcome}; heads never unsafe (0 conflicts, flash codes only in flash); "
                f"controller violations {r.control.stats.violations}, back in control"
            ),
        )
