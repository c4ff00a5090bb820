"""Fault survival, register fuzz: whatever a cabinet's registers hold, nothing unsafe follows.

``test_cabinet_codec.py`` checks round trips and one bad value per register kind; this file
throws arbitrary register images at the codec, arbitrary garbage at a running controller, and
arbitrary holding-register writes at the simulated cabinet:

* :func:`~devices.cabinet.decode_status` is total: any image gives a status that says exactly
  what the registers say, or a :class:`~devices.cabinet.RegisterError` naming the register and
  the reason — never another exception; one bad register is always the one named.
* The controller's real :class:`~controller.signals.service.IntersectionRunner` drives the
  simulated cabinet's real :class:`~simulator.cabinet.CabinetCore` (its independent monitor is
  the judge) through the real codec, on a simulated clock, while hypothesis overwrites input
  registers at random moments with random values, including in-range lies. No exception, no
  violation on either side, every refused poll counted, alarms after three in a row, and
  control back once the registers are sane.
* A rogue writer's arbitrary holding-register writes never make the cabinet show anything
  unsafe: it shows committed legal sets, refuses illegal ones by latching flash, and its heads
  never break the rules (checked here with the test's own code, not the cabinet's monitor).

Each test ends with one :func:`tests.faults.report` line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from controller.config import load_config
from controller.signals.model import Intersection, SignalsSettings
from controller.signals.service import IntersectionRunner
from controller.sim_signals import SignalDemand, cabinet_spec, group_demand, traffic_specs
from devices.cabinet import (
    HR,
    IR,
    MAP_VERSION,
    CabinetMode,
    CabinetStatus,
    DetectorReading,
    FaultCode,
    RegisterError,
    SignalCode,
    decode_status,
    encode_outputs,
    encode_status,
    parse_output_frame,
    register_name,
    status_spans,
)
from simulator.cabinet import CabinetCore, CabinetSpec
from simulator.signal_traffic import IntersectionTraffic
from tests.faults import report

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]

_U16 = 0xFFFF
_CODES = frozenset(int(c) for c in SignalCode)
_OPEN = frozenset(
    int(c)
    for c in (SignalCode.RED_AMBER, SignalCode.GREEN, SignalCode.YELLOW, SignalCode.PED_CLEARANCE)
)
_CLEARANCE = frozenset({int(SignalCode.YELLOW), int(SignalCode.PED_CLEARANCE)})
_FLASH = frozenset({int(SignalCode.FLASH_YELLOW), int(SignalCode.DARK)})
_RED, _GREEN = int(SignalCode.RED), int(SignalCode.GREEN)

#: Register values worth trying: anything 16-bit, the small numbers every code is made of
#: (in-range lies), the edges, and values no register can hold (a broken gateway or driver).
_VALUES = st.one_of(
    st.integers(0, _U16),
    st.integers(0, 9),
    st.sampled_from([_U16, 0x8000, 0x7FFF, 0x0100]),
    st.integers(-(2**20), 2**20),
)


def _polled(n_channels: int) -> list[int]:
    """Addresses a poll reads (:func:`status_spans`)."""
    return [a for start, count in status_spans(n_channels) for a in range(start, start + count)]


@st.composite
def statuses(draw: st.DrawFn) -> CabinetStatus:
    """Any valid status (the images the fuzz starts from)."""
    n_groups = draw(st.integers(1, 32))
    n_channels = draw(st.integers(0, 64))
    u16 = st.integers(0, _U16)
    return CabinetStatus(
        n_groups=n_groups,
        n_channels=n_channels,
        mode=draw(st.sampled_from(list(CabinetMode))),
        fault=draw(st.sampled_from(list(FaultCode))),
        fault_groups=tuple(draw(st.lists(st.integers(0, n_groups - 1), max_size=2))),
        last_heartbeat=draw(u16),
        last_commit=draw(u16),
        uptime_s=draw(st.integers(0, 0xFFFF_FFFF)),
        displayed=tuple(
            draw(st.lists(st.sampled_from(list(SignalCode)), min_size=n_groups, max_size=n_groups))
        ),
        detectors=tuple(
            DetectorReading(draw(u16), draw(u16), draw(st.booleans())) for _ in range(n_channels)
        ),
    )


def _check_error(err: RegisterError, image: Sequence[int]) -> None:
    """A register error names an address, the value found there and a reason."""
    assert err.table == "IR" and err.reason
    name = register_name("IR", err.register)
    assert f"IR {err.register} ({name}) = {err.value}: {err.reason}" == str(err)
    if "too short" in err.reason:
        assert err.register == len(image)  # the first register missing
    else:
        assert 0 <= err.register < len(image) and image[err.register] == err.value


def _check_status(status: CabinetStatus, image: Sequence[int]) -> None:
    """A decoded status says exactly what the polled registers say: nothing made up.

    Re-encoding it gives the image back on every address that means something for a cabinet
    of its size (IR 11 and the displayed registers past its groups are reserved: the map does
    not say what they hold, the decoder ignores them); and every field is a member of its type,
    in range for the cabinet's size.
    """
    assert status.map_version == MAP_VERSION
    assert isinstance(status.mode, CabinetMode) and isinstance(status.fault, FaultCode)
    assert all(isinstance(c, SignalCode) for c in status.displayed)
    assert len(status.displayed) == status.n_groups <= 32
    assert len(status.detectors) == status.n_channels <= 64
    assert all(0 <= g < status.n_groups for g in status.fault_groups)
    again = encode_status(status)
    pair = (IR.FAULT_GROUP_A, IR.FAULT_GROUP_B)
    for a in _meaningful(status.n_groups, status.n_channels):
        if a not in pair:
            assert again[a] == image[a], f"IR {a} ({register_name('IR', a)})"
    # The two fault-group registers name up to two groups in either slot (b without a is the
    # same fault as a alone); re-encoding fills a first.
    assert sorted(again[a] for a in pair if again[a]) == sorted(image[a] for a in pair if image[a])


def _meaningful(n_groups: int, n_channels: int) -> list[int]:
    """Polled addresses that carry a field for a cabinet of this size."""
    return [
        a
        for a in _polled(n_channels)
        if a != 11 and not IR.DISPLAYED + n_groups <= a < IR.DET_COUNT
    ]


# -- 1. the codec is total ---------------------------------------------------------------------


@dataclass
class Tally:
    """What a property saw over all its examples (for the report line)."""

    examples: int = 0
    statuses: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, err: RegisterError) -> None:
        key = re.sub(r"\b\d+\b(?!-bit)", "N", err.reason.split(" (")[0].split(":")[0])
        self.errors[key] = self.errors.get(key, 0) + 1


def test_any_register_image_decodes_to_a_true_status_or_a_named_error() -> None:
    tally = Tally()

    @settings(max_examples=400, deadline=None)
    @given(
        base=statuses(),
        changes=st.lists(st.tuples(st.integers(0, IR.END - 1), _VALUES), max_size=8),
        cut=st.one_of(st.none(), st.integers(0, IR.END)),
        expect=st.booleans(),
    )
    def prop(
        base: CabinetStatus, changes: list[tuple[int, int]], cut: int | None, expect: bool
    ) -> None:
        tally.examples += 1
        image = encode_status(base)
        for address, value in changes:
            image[address] = value
        if cut is not None:
            image = image[:cut]
        groups, channels = (base.n_groups, base.n_channels) if expect else (None, None)
        try:
            status = decode_status(image, groups, channels)
        except RegisterError as err:
            tally.error(err)
            _check_error(err, image)
            return
        tally.statuses += 1
        _check_status(status, image)
        if expect:
            assert (status.n_groups, status.n_channels) == (base.n_groups, base.n_channels)

    prop()
    assert tally.statuses and tally.errors
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(tally.errors.items(), key=lambda kv: -kv[1]))
    report(
        "cabinet register images fuzzed (codec)",
        recovery_s=None,
        lost=None,
        detail=(
            f"{tally.examples} random images: {tally.statuses} true statuses, "
            f"{sum(tally.errors.values())} named RegisterErrors ({kinds}); no other exception"
        ),
    )


def test_one_bad_register_is_the_register_named_and_changes_nothing_else() -> None:
    tally = Tally()
    changed_fields: dict[str, int] = {}

    @settings(max_examples=400, deadline=None)
    @given(base=statuses(), data=st.data())
    def prop(base: CabinetStatus, data: st.DataObject) -> None:
        tally.examples += 1
        image = encode_status(base)
        address = data.draw(st.sampled_from(_polled(base.n_channels)))
        value = data.draw(_VALUES)
        image[address] = value
        try:
            status = decode_status(image, base.n_groups, base.n_channels)
        except RegisterError as err:
            tally.error(err)
            _check_error(err, image)
            assert err.register == address, str(err)  # the culprit, not a neighbour
            return
        tally.statuses += 1
        _check_status(status, image)
        # Decoded although corrupted: only the field of that register may differ.
        diff = {f for f in status._fields if getattr(status, f) != getattr(base, f)}
        allowed = _field_of(address)
        assert diff <= allowed, (address, register_name("IR", address), diff)
        for name in diff:
            changed_fields[name] = changed_fields.get(name, 0) + 1

    prop()
    report(
        "one cabinet register corrupted (codec)",
        recovery_s=None,
        lost=None,
        detail=(
            f"{tally.examples} images with one bad polled register: "
            f"{sum(tally.errors.values())} refused naming exactly that register, "
            f"{tally.statuses} decoded with only that register's field changed "
            f"({', '.join(sorted(changed_fields))})"
        ),
    )


def _field_of(address: int) -> set[str]:
    """The status field(s) an input register feeds."""
    if address == IR.STATUS:
        return {"mode"}
    if address == IR.FAULT:
        return {"fault"}
    if address in (IR.FAULT_GROUP_A, IR.FAULT_GROUP_B):
        return {"fault_groups"}
    if address == IR.LAST_HEARTBEAT:
        return {"last_heartbeat"}
    if address == IR.LAST_COMMIT:
        return {"last_commit"}
    if address in (IR.UPTIME_HI, IR.UPTIME_LO):
        return {"uptime_s"}
    if IR.DISPLAYED <= address < IR.DET_COUNT:
        return {"displayed"}
    if IR.PRESENCE <= address < IR.PRESENCE + 4 or address >= IR.DET_COUNT:
        return {"detectors"}
    return set()  # map version, sizes, reserved: decoded only when unchanged


# -- 2. the controller against a cabinet whose input registers lie -------------------------------


def _shipped(xid: str = "ql1a-thd") -> tuple[Intersection, SignalsSettings]:
    cfg = load_config(ROOT / "config.yaml")
    return next(x for x in cfg.intersections() if x.id == xid), cfg.signals


class Clock:
    """The simulated clock both sides read."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class CoreLink:
    """Stands in for :class:`devices.modbus.CabinetLink`, minus the socket.

    Reads encode the core's input registers, lay the active garbage over them and decode them
    with the real codec (so a bad image raises the same :class:`RegisterError`); writes go
    through the real :func:`encode_outputs` into the core. ``up`` stays True: the wire is fine,
    the data is not.
    """

    def __init__(self, core: CabinetCore, clock: Clock, n_groups: int, n_channels: int) -> None:
        self.core = core
        self.clock = clock
        self.n_groups = n_groups
        self.n_channels = n_channels
        self.up = True
        self.garbage: dict[int, int] = {}
        self.reads = 0
        self.bad_reads = 0
        self.garbled_reads = 0  # reads with garbage laid over them (decoded or not)
        self.writes: list[tuple[float, tuple[int, ...], int]] = []

    async def read_status(self) -> CabinetStatus:
        image = self.core.input_registers(self.clock())
        for address, value in self.garbage.items():
            image[address] = value
        self.reads += 1
        self.garbled_reads += bool(self.garbage)
        try:
            return decode_status(image, self.n_groups, self.n_channels)
        except RegisterError:
            self.bad_reads += 1
            raise

    async def write_outputs(self, signals: Sequence[int], heartbeat: int, command: int = 0) -> None:
        values = encode_outputs(signals, heartbeat, command)
        self.core.write_holding(self.clock(), HR.HEARTBEAT, values)
        self.writes.append((self.clock(), tuple(signals), command))


@dataclass(frozen=True)
class Garbage:
    """Registers that read ``values`` for ``polls`` polls from poll ``start`` of the window."""

    start: int
    polls: int
    values: tuple[tuple[int, int], ...]


STEP = 0.1
FUZZ_POLLS = 150  # 15 s of garbage at random moments
RECOVER_S = 60.0  # long enough for the cabinet's local plan to wind down through a 10 s green


def _garbage(n_channels: int) -> st.SearchStrategy[Garbage]:
    interesting = [
        IR.MAP_VERSION,
        IR.N_GROUPS,
        IR.N_CHANNELS,
        IR.STATUS,
        IR.FAULT,
        IR.FAULT_GROUP_A,
        IR.FAULT_GROUP_B,
        IR.PRESENCE,
        IR.UPTIME_HI,
    ]
    address = st.one_of(
        st.sampled_from(interesting),
        st.integers(IR.DISPLAYED, IR.DISPLAYED + 5),
        st.sampled_from(_polled(n_channels)),
    )
    pair = address.flatmap(lambda a: st.tuples(st.just(a), st.one_of(_plausible(a), _VALUES)))
    return st.builds(
        Garbage,
        start=st.integers(0, FUZZ_POLLS - 1),
        polls=st.integers(1, 8),
        values=st.lists(pair, min_size=1, max_size=4).map(tuple),
    )


def _plausible(address: int) -> st.SearchStrategy[int]:
    """Values the map allows at ``address``: lies the codec cannot see through."""
    if address == IR.STATUS:
        return st.sampled_from([int(m) for m in CabinetMode])
    if address == IR.FAULT:
        return st.sampled_from([int(f) for f in FaultCode])
    if IR.DISPLAYED <= address < IR.DET_COUNT:
        return st.sampled_from(sorted(_CODES))
    return st.integers(0, _U16)


@dataclass
class FuzzTally:
    examples: int = 0
    garbled: int = 0
    refused: int = 0
    alarms: int = 0
    left_control: int = 0
    recovery_max: float = 0.0
    writes: int = 0
    states: int = 0


@dataclass
class FuzzRun:
    """What one run left behind, for the assertions of the caller."""

    runner: IntersectionRunner
    core: CabinetCore
    link: CoreLink
    judge: HeadsJudge


async def _run_fuzz(
    x: Intersection, sig: SignalsSettings, schedule: list[Garbage], tally: FuzzTally
) -> FuzzRun:
    """Hand-over, ``FUZZ_POLLS`` polls with ``schedule``'s garbage, then sane until in control.

    Every step asserts that neither monitor objected; the heads are judged by
    :class:`HeadsJudge` as well.
    """
    clock = Clock()
    spec = cabinet_spec(x, sig)
    groups, dets = traffic_specs(x)
    traffic = IntersectionTraffic(groups, dets, SignalDemand(group_demand(x), 0.6), seed=5)
    core = CabinetCore(spec, 0.0, traffic)  # type: ignore[arg-type]
    link = CoreLink(core, clock, x.n, x.config.cabinet.channels)
    r = IntersectionRunner(
        x,
        sig,
        clock,
        link,  # type: ignore[arg-type]
        local_time=lambda: dt.datetime(2026, 11, 25, 10, 0),
    )
    judge = HeadsJudge(spec, 0.0)

    async def step() -> None:
        clock.t = round(clock.t + STEP, 6)
        core.tick(clock.t)
        await r.step()
        judge.see(clock.t, core.shown)
        fault = core.last_fault
        assert core.stats.faults == 0, f"cabinet latched {fault}"
        assert r.control.stats.violations == 0, r.alarms
        assert not judge.problems, judge.problems
        if "register_error" in r.alarms:
            seen_alarm[0] = True

    seen_alarm = [False]
    while r.sync != "control":
        await step()
        assert clock.t < 5.0, "no hand-over at start-up"
    lost0 = r.stats.lost_control
    # The window: at each poll the garbage of every event covering it (later events win).
    max_run = run = 0
    for poll in range(FUZZ_POLLS):
        link.garbage = {
            a: v
            for g in sorted(schedule, key=lambda g: g.start)
            if g.start <= poll < g.start + g.polls
            for a, v in g.values
        }
        bad = link.bad_reads
        await step()
        run = run + 1 if link.bad_reads > bad else 0
        max_run = max(max_run, run)
    link.garbage = {}
    ended = clock.t
    # Sane again: back in control, the cabinet following, no register alarm.
    while not (
        r.sync == "control"
        and core.mode is CabinetMode.FOLLOWING
        and "register_error" not in r.alarms
    ):
        await step()
        assert clock.t - ended < RECOVER_S, (r.sync, core.mode, r.alarms)
    recovered = clock.t - ended
    for _ in range(30):  # and it stays so
        await step()
    assert r.sync == "control" and core.mode is CabinetMode.FOLLOWING
    # Every refused poll was counted, and three in a row raised the alarm.
    assert r.stats.register_errors == link.bad_reads
    assert seen_alarm[0] == (max_run >= 3), (max_run, seen_alarm)
    # The controller never wrote a code outside the map (the codec would refuse it anyway).
    assert all(set(s) <= _CODES for _, s, _ in link.writes)
    tally.examples += 1
    tally.garbled += link.garbled_reads
    tally.refused += link.bad_reads
    tally.alarms += seen_alarm[0]
    tally.left_control += r.stats.lost_control > lost0
    tally.recovery_max = max(tally.recovery_max, recovered)
    tally.writes += len(link.writes)
    tally.states += judge.states
    return FuzzRun(r, core, link, judge)


def test_the_controller_survives_a_cabinet_whose_input_registers_lie() -> None:
    x, sig = _shipped()
    tally = FuzzTally()
    n_channels = x.config.cabinet.channels

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(schedule=st.lists(_garbage(n_channels), min_size=1, max_size=12))
    def prop(schedule: list[Garbage]) -> None:
        note(f"schedule={schedule!r}")  # printed with a failure, whatever pytest captures
        asyncio.run(_run_fuzz(x, sig, schedule, tally))

    prop()
    report(
        "cabinet input registers fuzzed (controller vs simulated cabinet core)",
        recovery_s=tally.recovery_max,
        lost=None,
        detail=(
            f"{tally.examples} runs of {FUZZ_POLLS * STEP:g} s: {tally.garbled} garbled polls, "
            f"{tally.refused} refused and counted, register alarm in {tally.alarms} runs, "
            f"control left and handed back through the cabinet's plan in {tally.left_control}; "
            f"{tally.writes} writes, 0 cabinet faults, 0 controller violations, "
            f"{tally.states} head changes judged safe"
        ),
    )


def test_a_status_lie_while_our_greens_are_up_never_cuts_them() -> None:
    """One poll says the cabinet left us (plan, start-up, flash) while it still follows our
    greens. The controller hands over, but it must not write all red to a cabinet that may
    still follow it (green → red with no clearance: the cabinet latches flash). It asks for the
    local plan instead, which ends the greens through their clearances; then it takes the heads
    back through all red. (Before the fix every one of these latched SHORT_CLEARANCE.)
    """
    x, sig = _shipped()
    lies = {
        "local plan": ((IR.STATUS, int(CabinetMode.LOCAL_PLAN)),),
        "start-up": ((IR.STATUS, int(CabinetMode.STARTUP)),),
        "requested flash": ((IR.STATUS, int(CabinetMode.FLASH_REQUESTED)),),
        "latched conflict": (
            (IR.STATUS, int(CabinetMode.FLASH)),
            (IR.FAULT, int(FaultCode.CONFLICT)),
            (IR.FAULT_GROUP_A, 1),
        ),
    }
    tally = FuzzTally()
    outcomes = []
    for name, values in lies.items():
        # Poll 60 is 6 s after the hand-over: the engine's first stage is green by then.
        run = asyncio.run(_run_fuzz(x, sig, [Garbage(60, 1, values)], tally))
        r, core = run.runner, run.core
        # Our greens were up when the lie came, and the answer was to ask for the plan.
        asked = next(k for k, (_, _, cmd) in enumerate(run.link.writes) if cmd == 2)
        assert _GREEN in run.link.writes[asked - 1][1], name
        assert r.stats.lost_control == 1 and r.stats.handovers == 2, name
        assert core.stats.local_plan_entries == 1 and core.stats.faults == 0, name
        outcomes.append(f"{name}: plan {core.stats.local_plan_entries}, faults 0")
    report(
        "cabinet status lies while the controller's greens are up",
        recovery_s=tally.recovery_max,
        lost=None,
        detail=(
            f"{len(lies)} one-poll lies ({'; '.join(outcomes)}): each time the cabinet's "
            f"plan ended the greens with clearances, control back through all red; "
            f"{tally.states} head changes judged safe"
        ),
    )


# -- 3. a rogue writer on the cabinet's holding registers -----------------------------------------


class HeadsJudge:
    """The cabinet's rules (``docs/protocol.md`` §2), judged with the test's own code on what
    the heads show, sample by sample. Shares nothing with :class:`simulator.cabinet.ConflictMonitor`.

    Flash (every vehicle group FLASH_YELLOW or DARK, every pedestrian group DARK or RED,
    nothing open) is the safe state and may follow anything; FLASH_YELLOW and DARK anywhere
    else are not allowed (a flashing yellow invites traffic into the conflict area), and flash
    is left only to all red. Otherwise: no conflicting groups open together; a green ends only
    through its clearance, after its minimum; a clearance lasts its minimum (at least 3 s); a
    group opens only after the all-red minimum (at least 1 s) from the end of every conflicting
    group's clearance.
    """

    def __init__(self, spec: CabinetSpec, t: float) -> None:
        n = spec.n_groups
        self.n = n
        self.ids = [g.id for g in spec.groups]
        self.ped = [g.kind == "pedestrian" for g in spec.groups]
        idx = {gid: i for i, gid in enumerate(self.ids)}
        self.conflict = [[False] * n for _ in range(n)]
        for a, b in spec.conflicts:
            self.conflict[idx[a]][idx[b]] = self.conflict[idx[b]][idx[a]] = True
        self.all_red = [[1.0] * n for _ in range(n)]
        for (a, b), v in spec.all_red_s.items():
            self.all_red[idx[a]][idx[b]] = max(1.0, v)
        self.min_green = [g.min_green_s for g in spec.groups]
        self.min_clear = [max(3.0, g.clearance_s) for g in spec.groups]
        self.clear_code = [g.clearance_code for g in spec.groups]
        self.tol = spec.timing_tolerance_s + 1e-6
        self.shown = [_RED] * n
        self.since = [t] * n
        self.open_end = [t] * n  # start-up counts as just cleared
        self.problems: list[str] = []
        self.states = 0

    def is_flash(self, shown: Sequence[int]) -> bool:
        return all(
            c in ((int(SignalCode.DARK), _RED) if p else _FLASH)
            for c, p in zip(shown, self.ped, strict=True)
        )

    def see(self, t: float, shown: Sequence[int]) -> None:
        old = self.shown
        new = list(shown)
        if new == old:
            return
        self.states += 1
        bad = self.problems.append
        if any(c not in _CODES for c in new):
            bad(f"{t:.2f}: not a signal code in {new}")
        was_flash, flash = self.is_flash(old), self.is_flash(new)
        if not flash and any(c in _FLASH for c in new):
            bad(f"{t:.2f}: flash codes outside flash: {self._show(new)}")
        if was_flash and not flash and any(c != _RED for c in new):
            bad(f"{t:.2f}: flash left to {self._show(new)}, not to all red")
        for i in range(self.n):
            for j in range(i + 1, self.n):
                if self.conflict[i][j] and new[i] in _OPEN and new[j] in _OPEN:
                    bad(f"{t:.2f}: {self.ids[i]} and {self.ids[j]} open together")
        for i, (a, c) in enumerate(zip(old, new, strict=True)):
            if a == c or flash:
                continue
            lasted = t - self.since[i]
            if a == _GREEN and c != self.clear_code[i]:
                bad(f"{t:.2f}: {self.ids[i]} green → {c} without its clearance")
            elif a == _GREEN and lasted < self.min_green[i] - self.tol:
                bad(f"{t:.2f}: {self.ids[i]} green {lasted:.2f} s < {self.min_green[i]:g} s")
            if a in _CLEARANCE and c not in _CLEARANCE and lasted < self.min_clear[i] - self.tol:
                bad(f"{t:.2f}: {self.ids[i]} clearance {lasted:.2f} s < {self.min_clear[i]:g} s")
            if a not in _OPEN and c in _OPEN:
                for j in range(self.n):
                    if self.conflict[i][j] and new[j] not in _OPEN:
                        red = t - self.open_end[j]
                        if red < self.all_red[j][i] - self.tol:
                            bad(f"{t:.2f}: {self.ids[i]} opened {red:.2f} s after {self.ids[j]}")
        for i, (a, c) in enumerate(zip(old, new, strict=True)):
            if a != c:
                self.since[i] = t
                if a in _OPEN and c not in _OPEN:
                    self.open_end[i] = t
        if was_flash and not flash:
            self.open_end = [t] * self.n  # flash left: nothing was cleared properly
        self.shown = new

    def _show(self, shown: Sequence[int]) -> str:
        return ", ".join(
            f"{gid}={SignalCode(c).name if c in _CODES else c}"
            for gid, c in zip(self.ids, shown, strict=True)
        )


@dataclass(frozen=True)
class Frame:
    """A rogue write of a whole frame (heartbeat, command, commit = heartbeat, outputs)."""

    wait_s: float
    heartbeat: int
    command: int
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Raw:
    """A rogue write of arbitrary values at an arbitrary address (maybe off the map)."""

    wait_s: float
    address: int
    values: tuple[int, ...]


def _rogue_ops(spec: CabinetSpec) -> st.SearchStrategy[list[Frame | Raw]]:
    n = spec.n_groups
    stages = [tuple(sorted(m)) for m, _ in spec.local_plan]

    def stage_set(members: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(_GREEN if i in members else _RED for i in range(n))

    clearing = [
        tuple(spec.groups[i].clearance_code if i in m else _RED for i in range(n)) for m in stages
    ]
    outputs = st.one_of(
        st.just((_RED,) * n),
        st.sampled_from([stage_set(m) for m in stages] + clearing),
        st.lists(st.sampled_from(sorted(_CODES)), min_size=n, max_size=n).map(tuple),
        st.lists(st.one_of(st.integers(0, 9), st.integers(0, _U16)), min_size=n, max_size=n).map(
            tuple
        ),
    )
    wait = st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 11.0])
    frame = st.builds(
        Frame,
        wait_s=wait,
        heartbeat=st.integers(0, _U16),
        command=st.one_of(st.sampled_from([0, 0, 0, 1, 2, 3]), st.integers(0, _U16)),
        outputs=outputs,
    )
    raw = st.builds(
        Raw,
        wait_s=wait,
        address=st.integers(0, HR.END + 8),
        values=st.lists(st.integers(0, _U16), min_size=1, max_size=50).map(tuple),
    )
    return st.lists(st.one_of(frame, frame, raw), min_size=1, max_size=40)


@dataclass
class RogueTally:
    examples: int = 0
    writes: int = 0
    off_map: int = 0
    committed: int = 0
    shown_sets: int = 0
    latched: dict[str, int] = field(default_factory=dict)
    states: int = 0


def test_a_rogue_writer_cannot_make_the_cabinet_show_anything_unsafe() -> None:
    x, sig = _shipped()
    spec = cabinet_spec(x, sig)
    tally = RogueTally()

    first_stage = tuple(_GREEN if i in spec.local_plan[0][0] else _RED for i in range(x.n))

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=_rogue_ops(spec), green=st.booleans())
    def prop(ops: list[Frame | Raw], green: bool) -> None:
        note(f"green={green!r} ops={ops!r}")
        tally.examples += 1
        core = CabinetCore(spec, 0.0)
        judge = HeadsJudge(spec, 0.0)
        t = 0.0

        def look() -> None:
            judge.see(t, core.shown)
            if core.mode in (CabinetMode.FLASH, CabinetMode.FLASH_REQUESTED):
                assert judge.is_flash(core.shown), core.shown
            assert not judge.problems, judge.problems

        # The real controller had the heads: all red through the hand-over, then (maybe) the
        # first stage green. The rogue starts from there.
        for k in range(1, 31):
            t = k * 0.1
            sig = first_stage if green and t >= 2.5 else (_RED,) * x.n
            core.write_holding(t, HR.HEARTBEAT, encode_outputs(sig, k))
            core.tick(t)
            look()
        assert core.mode is CabinetMode.FOLLOWING and core.shown == sig

        for op in ops:
            end = round(t + op.wait_s, 6)
            while t < end - 1e-9:  # the cabinet's 10 Hz loop runs meanwhile
                t = round(min(end, t + 0.1), 6)
                core.tick(t)
                look()
            before = core.holding_registers()
            if isinstance(op, Frame):
                address = HR.HEARTBEAT
                values = [op.heartbeat, op.command, op.heartbeat] + [0] * 13 + list(op.outputs)
            else:
                address, values = op.address, list(op.values)
            tally.writes += 1
            if address + len(values) > HR.END:
                with pytest.raises(ValueError, match="off the map"):
                    core.write_holding(t, address, values)
                assert core.holding_registers() == before  # refused whole: nothing written
                tally.off_map += 1
                continue
            commits = core.stats.commits
            core.write_holding(t, address, values)
            look()
            if core.stats.commits > commits:
                tally.committed += 1
                frame = parse_output_frame(core.holding_registers(), spec.n_groups)
                if core.mode is CabinetMode.FOLLOWING:
                    # Following: the heads show exactly the set just committed.
                    assert core.shown == frame.outputs
                    tally.shown_sets += 1
        if core.latched and core.last_fault is not None:
            name = core.last_fault.code.name
            tally.latched[name] = tally.latched.get(name, 0) + 1
        tally.states += judge.states

    prop()
    latched = ", ".join(f"{k} {v}" for k, v in sorted(tally.latched.items()))
    report(
        "rogue writes to the cabinet's holding registers (simulated cabinet core)",
        recovery_s=None,
        lost=None,
        detail=(
            f"{tally.examples} runs, {tally.writes} rogue writes ({tally.off_map} off the map "
            f"refused whole, {tally.committed} complete sets committed, {tally.shown_sets} shown "
            f"while following); runs ending latched: {latched or 'none'}; "
            f"{tally.states} head changes judged, 0 unsafe"
        ),
    )
