"""A simulated signal cabinet: a pymodbus TCP server with its own monitor and watchdog.

It speaks the register map of :mod:`devices.cabinet` (``docs/protocol.md`` §2) over a real
socket and behaves like a cabinet's I/O and monitor unit. Its safety code is written here, from
the rules, and shares nothing with the controller's (design principle 4: layered and
independent); it imports no ``controller`` code, the caller builds a :class:`CabinetSpec` from
the configuration.

Three layers, the pure ones first:

- :class:`ConflictMonitor` watches what the heads show and names the first rule broken:
  conflicting groups open together (fault 1), a clearance shorter than its minimum or a green
  ending without one (2), a conflicting green before the all-red / intergreen minimum (3), a
  green shorter than its minimum (4), a value that is no signal code, or a flash code outside a
  whole flash set (5).
- :class:`LocalPlan` is the cabinet's own fixed-time plan: from whatever is shown it ends the
  greens (after their minimum), runs the clearances and the all-red, then cycles its stages;
  asked to wind down it stops at the next all-red.
- :class:`CabinetCore` is the cabinet as a state machine over an injected clock: it takes the
  controller's committed outputs, shows them while they pass the monitor, latches flash on a
  fault, falls back when the heartbeat stops, hands control back by the handover rule, and keeps
  the detector registers. It never sleeps and never touches a socket.

:class:`SimulatedCabinet` is the asyncio shell: the pymodbus server, a loop at ``tick_hz``
that also wakes exactly at the heartbeat deadline, and fault injection (cut link, stuck
detector, garbage in a register).

**Handover rule.** The cabinet leaves startup or its local plan for the controller's outputs
only when (a) the heartbeat is alive and the last committed command is *follow* (or *reset*),
(b) no fault is latched, (c) the cabinet itself shows all red — after startup that is at least
``startup_all_red_s``; in the local plan it first ends its greens and clearances — and (d) the
controller's latest commit, made after the heartbeat came back, is all red too. All red meets
all red, and the monitor keeps its clearance timers across the handover, so the controller's
first green is still held to the all-red minima after the cabinet's own last clearance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from devices.cabinet import (
    CLEARANCE_CODES,
    HR,
    IR,
    MAP_VERSION,
    MAX_CHANNELS,
    MAX_GROUPS,
    OPEN_CODES,
    CabinetMode,
    CabinetStatus,
    Command,
    DetectorReading,
    FaultCode,
    SignalCode,
    parse_output_frame,
    presence_bitmap,
    wrap16,
)

__all__ = [
    "ALL_RED_FLOOR_S",
    "YELLOW_FLOOR_S",
    "CabinetCore",
    "CabinetSpec",
    "CabinetStats",
    "ConflictMonitor",
    "DetectorSource",
    "GroupSpec",
    "LocalPlan",
    "ModeChange",
    "MonitorFault",
    "SignalTiming",
    "SimulatedCabinet",
]

log = logging.getLogger(__name__)

YELLOW_FLOOR_S = 3.0
ALL_RED_FLOOR_S = 1.0
_EPS = 1e-6
_RED = int(SignalCode.RED)
_GREEN = int(SignalCode.GREEN)
_RED_AMBER = int(SignalCode.RED_AMBER)
_OPEN = frozenset(int(c) for c in OPEN_CODES)
_CLEARANCE = frozenset(int(c) for c in CLEARANCE_CODES)
_CODES = frozenset(int(c) for c in SignalCode)
_FLASH_CODES = frozenset({int(SignalCode.FLASH_YELLOW), int(SignalCode.DARK)})


class DetectorSource(Protocol):
    """Where detector actuations come from (a traffic model, or a test's script).

    ``step`` is called once per cabinet tick with what the heads show (group id → signal code);
    ``detector`` returns a channel's cumulative count, cumulative occupied seconds and presence.
    """

    def step(self, t: float, dt: float, shown: Mapping[str, int]) -> None: ...

    def detector(self, channel: int) -> tuple[int, float, bool]: ...


# -- the specification -----------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSpec:
    """One signal group as the cabinet knows it."""

    id: str
    kind: Literal["vehicle", "pedestrian"] = "vehicle"
    min_green_s: float = 5.0
    clearance_s: float = YELLOW_FLOOR_S  # yellow, or pedestrian clearance

    @property
    def min_clearance_s(self) -> float:
        """The shortest clearance the monitor accepts: the group's, at least the 3 s floor."""
        return max(YELLOW_FLOOR_S, self.clearance_s)

    @property
    def clearance_code(self) -> int:
        """What the group shows while clearing."""
        return int(SignalCode.PED_CLEARANCE if self.kind == "pedestrian" else SignalCode.YELLOW)

    @property
    def flash_code(self) -> int:
        """What the group shows in flash: flashing yellow for vehicles, dark for pedestrians."""
        return int(SignalCode.DARK if self.kind == "pedestrian" else SignalCode.FLASH_YELLOW)


@dataclass(frozen=True)
class CabinetSpec:
    """Everything the cabinet needs, built by the caller from the configuration.

    ``all_red_s`` and ``intergreen_s`` are keyed by ordered pairs of group ids ``(from, to)``:
    the least red between the end of ``from``'s clearance and the start of ``to``'s green, and
    the least time from the end of ``from``'s green to the start of ``to``'s green. A conflicting
    pair without an entry gets the 1 s all-red floor (and no separate intergreen check, which the
    clearance minimum plus the all-red already cover). ``local_plan`` is a list of
    ``(group indices, green s)`` stages, run in order when the cabinet falls back.
    """

    groups: Sequence[GroupSpec]
    conflicts: Collection[tuple[str, str]]
    all_red_s: Mapping[tuple[str, str], float] = field(default_factory=dict)
    intergreen_s: Mapping[tuple[str, str], float] = field(default_factory=dict)
    channels: Collection[int] = ()
    n_channels: int = 16
    local_plan: Sequence[tuple[Collection[int], float]] = ()
    heartbeat_timeout_s: float = 2.0
    fallback: Literal["local_plan", "flash"] = "local_plan"
    startup_all_red_s: float = 2.0
    timing_tolerance_s: float = 0.1  # network jitter the monitor forgives on every minimum
    tick_hz: float = 10.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        ids = [g.id for g in self.groups]
        index = {gid: i for i, gid in enumerate(ids)}
        if not 1 <= len(ids) <= MAX_GROUPS:
            problems.append(f"groups: 1 to {MAX_GROUPS} groups, got {len(ids)}")
        if len(index) != len(ids):
            problems.append("groups: duplicate group ids")
        for g in self.groups:
            if g.kind not in ("vehicle", "pedestrian"):
                problems.append(f"groups.{g.id}.kind: {g.kind!r} is not vehicle or pedestrian")
            if g.min_green_s <= 0:
                problems.append(f"groups.{g.id}.min_green_s: must be positive")
        conflict_pairs: set[frozenset[str]] = set()
        for a, b in self.conflicts:
            if a not in index or b not in index:
                problems.append(f"conflicts: unknown group in ({a!r}, {b!r})")
            elif a == b:
                problems.append(f"conflicts: {a!r} cannot conflict with itself")
            conflict_pairs.add(frozenset((a, b)))
        for name, table in (("all_red_s", self.all_red_s), ("intergreen_s", self.intergreen_s)):
            for (a, b), value in table.items():
                if frozenset((a, b)) not in conflict_pairs:
                    problems.append(f"{name}[{a}, {b}]: the groups do not conflict")
                if value < 0:
                    problems.append(f"{name}[{a}, {b}]: must not be negative")
        if not 0 <= self.n_channels <= MAX_CHANNELS:
            problems.append(f"n_channels: 0 to {MAX_CHANNELS}, got {self.n_channels}")
        for ch in self.channels:
            if not 0 <= ch < self.n_channels:
                problems.append(f"channels: channel {ch} is not below n_channels {self.n_channels}")
        for k, (members, green) in enumerate(self.local_plan):
            if not members:
                problems.append(f"local_plan[{k}]: a stage needs groups")
            if green <= 0:
                problems.append(f"local_plan[{k}]: green time must be positive")
            for i in members:
                if not 0 <= i < len(ids):
                    problems.append(f"local_plan[{k}]: no group index {i}")
            for i in members:
                for j in members:
                    if 0 <= i < j < len(ids) and frozenset((ids[i], ids[j])) in conflict_pairs:
                        problems.append(f"local_plan[{k}]: {ids[i]} and {ids[j]} conflict")
        if self.fallback not in ("local_plan", "flash"):
            problems.append(f"fallback: {self.fallback!r} is not local_plan or flash")
        if self.fallback == "local_plan" and not self.local_plan:
            problems.append("local_plan: the local_plan fallback needs at least one stage")
        if self.heartbeat_timeout_s <= 0 or self.tick_hz <= 0 or self.startup_all_red_s < 0:
            problems.append("heartbeat_timeout_s and tick_hz must be positive")
        if problems:
            raise ValueError("\n".join(problems))

    @property
    def n_groups(self) -> int:
        """Number of signal groups."""
        return len(self.groups)

    def index(self, group_id: str) -> int:
        """Position of a group."""
        for i, g in enumerate(self.groups):
            if g.id == group_id:
                return i
        raise KeyError(group_id)


@dataclass(frozen=True)
class _Rules:
    """The spec as index tables, floors applied."""

    n: int
    conflict: tuple[tuple[bool, ...], ...]
    min_green: tuple[float, ...]
    min_clear: tuple[float, ...]
    all_red: tuple[tuple[float, ...], ...]  # [from][to]
    intergreen: tuple[tuple[float, ...], ...]  # [from][to], 0 = no separate check
    tol: float

    @classmethod
    def of(cls, spec: CabinetSpec) -> _Rules:
        n = spec.n_groups
        idx = {g.id: i for i, g in enumerate(spec.groups)}
        conflict = [[False] * n for _ in range(n)]
        for a, b in spec.conflicts:
            conflict[idx[a]][idx[b]] = conflict[idx[b]][idx[a]] = True
        all_red = [[ALL_RED_FLOOR_S if conflict[i][j] else 0.0 for j in range(n)] for i in range(n)]
        for (a, b), value in spec.all_red_s.items():
            all_red[idx[a]][idx[b]] = max(ALL_RED_FLOOR_S, value)
        inter = [[0.0] * n for _ in range(n)]
        for (a, b), value in spec.intergreen_s.items():
            inter[idx[a]][idx[b]] = value
        return cls(
            n=n,
            conflict=tuple(tuple(r) for r in conflict),
            min_green=tuple(g.min_green_s for g in spec.groups),
            min_clear=tuple(g.min_clearance_s for g in spec.groups),
            all_red=tuple(tuple(r) for r in all_red),
            intergreen=tuple(tuple(r) for r in inter),
            tol=spec.timing_tolerance_s,
        )


# -- the monitor -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorFault:
    """A broken rule: the fault code, the groups involved (indices) and why."""

    code: FaultCode
    groups: tuple[int, ...]
    reason: str
    t: float


@dataclass
class SignalTiming:
    """What each group shows and since when; the timers the rules are measured from."""

    shown: list[int]
    since: list[float]  # entered the current code
    clear_start: list[float]  # entered its latest clearance
    end_green: list[float]  # last left green
    end_open: list[float]  # last stopped being open (end of clearance)

    @classmethod
    def all_red(cls, n: int, t: float) -> SignalTiming:
        """All red from ``t``, counted as if every group had just cleared.

        "Just cleared" means its clearance ended at ``t``: the all-red minima run from ``t``.
        Its green ended a clearance earlier, which is no constraint of its own beyond that, so
        the end of green is left unknown (``-inf``) rather than set to ``t`` — that would ask a
        whole intergreen (yellow included) after power-up, for a yellow nobody showed.
        """
        return cls([_RED] * n, [t] * n, [t] * n, [-math.inf] * n, [t] * n)

    def copy(self) -> SignalTiming:
        """An independent copy."""
        return SignalTiming(
            list(self.shown),
            list(self.since),
            list(self.clear_start),
            list(self.end_green),
            list(self.end_open),
        )

    def set(self, i: int, code: int, t: float) -> None:
        """Group ``i`` changes to ``code`` at ``t``; update its timers."""
        old = self.shown[i]
        if old == code:
            return
        if old == _GREEN:
            self.end_green[i] = t
        if old in _OPEN and code not in _OPEN:
            self.end_open[i] = t
        if code in _CLEARANCE and old not in _CLEARANCE:
            self.clear_start[i] = t
        self.shown[i] = code
        self.since[i] = t


_PRIORITY = (
    FaultCode.ILLEGAL_CODE,
    FaultCode.CONFLICT,
    FaultCode.SHORT_CLEARANCE,
    FaultCode.SHORT_ALL_RED,
    FaultCode.SHORT_GREEN,
)


class ConflictMonitor:
    """The cabinet's own conflict monitor: judges every change of what the heads show.

    Starts (and :meth:`reset` restarts) in all red, with every group counted as just cleared, so
    the first green still waits for the all-red minimum. Minimum times are accepted down to
    ``timing_tolerance_s`` below the minimum.
    """

    def __init__(self, spec: CabinetSpec, t: float = 0.0) -> None:
        self.spec = spec
        self._r = _Rules.of(spec)
        self._timing = SignalTiming.all_red(self._r.n, t)

    def reset(self, t: float) -> None:
        """All red from ``t`` (after startup, a fault reset or leaving flash)."""
        self._timing = SignalTiming.all_red(self._r.n, t)

    @property
    def shown(self) -> tuple[int, ...]:
        """The last state accepted."""
        return tuple(self._timing.shown)

    def timing(self) -> SignalTiming:
        """A copy of the timers (the local plan starts from them)."""
        return self._timing.copy()

    def check(self, t: float, outputs: Sequence[int]) -> MonitorFault | None:
        """Judge the change to ``outputs`` at ``t``; accept it (None) or name the fault.

        A faulty state is not taken over: the cabinet goes to flash instead.
        """
        r = self._r
        if len(outputs) != r.n:
            raise ValueError(f"{len(outputs)} outputs for {r.n} groups")
        ids = [g.id for g in self.spec.groups]
        found: list[MonitorFault] = []

        def fault(code: FaultCode, groups: tuple[int, ...], reason: str) -> None:
            found.append(MonitorFault(code, groups, reason, t))

        for i, code in enumerate(outputs):
            if code not in _CODES:
                fault(FaultCode.ILLEGAL_CODE, (i,), f"{ids[i]}: {code} is no signal code")
        if found:
            return found[0]
        tm = self._timing
        is_open = [c in _OPEN for c in outputs]
        for i in range(r.n):
            for j in range(i + 1, r.n):
                if r.conflict[i][j] and is_open[i] and is_open[j]:
                    what = f"{ids[i]} ({outputs[i]}) and {ids[j]} ({outputs[j]}) open together"
                    fault(FaultCode.CONFLICT, (i, j), what)
        for i, new in enumerate(outputs):
            old = tm.shown[i]
            if old == new:
                continue
            if old == _GREEN:
                green = t - tm.since[i]
                if new not in _CLEARANCE:
                    what = f"{ids[i]}: green → {new} without a clearance"
                    fault(FaultCode.SHORT_CLEARANCE, (i,), what)
                if green < r.min_green[i] - r.tol:
                    what = f"{ids[i]}: green {green:.2f} s < minimum {r.min_green[i]:g} s"
                    fault(FaultCode.SHORT_GREEN, (i,), what)
            if old in _CLEARANCE and new not in _CLEARANCE:  # also cut short back to green
                clear = t - tm.clear_start[i]
                if clear < r.min_clear[i] - r.tol:
                    what = f"{ids[i]}: clearance {clear:.2f} s < minimum {r.min_clear[i]:g} s"
                    fault(FaultCode.SHORT_CLEARANCE, (i,), what)
            if old not in _OPEN and new in _OPEN:
                for j in range(r.n):
                    if not r.conflict[j][i] or is_open[j]:
                        continue  # open together is reported as a conflict above
                    red = t - tm.end_open[j]
                    if red < r.all_red[j][i] - r.tol:
                        what = (
                            f"{ids[i]} opened {red:.2f} s after {ids[j]} cleared "
                            f"(all-red minimum {r.all_red[j][i]:g} s)"
                        )
                        fault(FaultCode.SHORT_ALL_RED, (j, i), what)
                    inter = r.intergreen[j][i]
                    since_green = t - tm.end_green[j]
                    if inter and since_green < inter - r.tol:
                        what = (
                            f"{ids[i]} opened {since_green:.2f} s after {ids[j]}'s green "
                            f"ended (intergreen minimum {inter:g} s)"
                        )
                        fault(FaultCode.SHORT_ALL_RED, (j, i), what)
        if found:
            return min(found, key=lambda f: _PRIORITY.index(f.code))
        # Flash codes only as a whole flash set: a group flashing yellow (or dark) next to
        # greens invites its traffic into the conflict area, and "open" does not cover it.
        # (Checked last: a green ending in dark is reported as the skipped clearance.)
        flash, was_flash = self._is_flash(outputs), self._is_flash(tm.shown)
        if not flash:
            for i, code in enumerate(outputs):
                if code in _FLASH_CODES:
                    what = f"{ids[i]}: {SignalCode(code).name} outside flash"
                    return MonitorFault(FaultCode.ILLEGAL_CODE, (i,), what, t)
            if was_flash and any(c != _RED for c in outputs):
                return MonitorFault(FaultCode.ILLEGAL_CODE, (), "flash left but not to all red", t)
        if was_flash and not flash:
            # Out of flash into all red: nothing was cleared properly, the all-red minima
            # run from here (as after the cabinet's own flash).
            self.reset(t)
            return None
        for i, new in enumerate(outputs):
            tm.set(i, new, t)
        return None

    def _is_flash(self, shown: Sequence[int]) -> bool:
        """A whole flash set: vehicles flash yellow or dark, pedestrians dark or red."""
        if not any(c in _FLASH_CODES for c in shown):
            return False
        return all(
            c in ((int(SignalCode.DARK), _RED) if g.kind == "pedestrian" else _FLASH_CODES)
            for g, c in zip(self.spec.groups, shown, strict=True)
        )


# -- the local plan --------------------------------------------------------------------------


class LocalPlan:
    """The cabinet's fixed-time fallback plan, with its own clearances.

    Starts from what is shown (``timing``, e.g. the controller's last outputs): open groups end
    as soon as their minimum green allows, clear, and the first stage starts after the all-red
    minima — the plan always passes through all red first. Stages then run in order; a group in
    two consecutive stages stays green. :meth:`wind_down` ends the current stage early (minimum
    greens still hold) and stops in all red.
    """

    def __init__(self, spec: CabinetSpec, t: float, timing: SignalTiming | None = None) -> None:
        self.spec = spec
        self._r = _Rules.of(spec)
        self._stages = [(frozenset(m), float(g)) for m, g in spec.local_plan]
        if not self._stages:
            raise ValueError("the cabinet has no local plan")
        self._tm = timing.copy() if timing is not None else SignalTiming.all_red(self._r.n, t)
        self._clear_code = [g.clearance_code for g in spec.groups]
        # The groups open at takeover form a pseudo-stage with no green time of its own.
        self._active = {i for i, c in enumerate(self._tm.shown) if c in _OPEN}
        self._stage_end = t
        self._carry = False  # the pseudo-stage carries nothing into stage 0
        self._next = 0
        self._winding = False
        self._between = not self._active  # True between stages (no stage green running)

    @property
    def shown(self) -> tuple[int, ...]:
        """What the plan shows now."""
        return tuple(self._tm.shown)

    @property
    def all_red(self) -> bool:
        """True when every group is red."""
        return all(c == _RED for c in self._tm.shown)

    @property
    def winding_down(self) -> bool:
        """True after :meth:`wind_down` until :meth:`resume`."""
        return self._winding

    def wind_down(self) -> None:
        """End the current stage as early as allowed and stay in all red."""
        self._winding = True

    def resume(self) -> None:
        """Cycle the stages again after a wind-down."""
        self._winding = False

    def step(self, t: float) -> tuple[int, ...]:
        """Advance to ``t`` and return what the heads show."""
        tm, r = self._tm, self._r
        for i, c in enumerate(tm.shown):
            if c == _RED_AMBER:
                tm.set(i, _GREEN, t)
        # Winding down ends every green, also one carried into the gap between two stages.
        if self._winding or (not self._between and t >= self._stage_end - _EPS):
            keep: frozenset[int] = frozenset()
            if self._carry and not self._winding:
                keep = frozenset(self._active) & self._stages[self._next][0]
            for i in sorted(self._active - keep):
                if tm.shown[i] == _GREEN and t - tm.since[i] >= r.min_green[i] - _EPS:
                    tm.set(i, self._clear_code[i], t)
            if not any(tm.shown[i] == _GREEN for i in self._active - keep):
                self._active = set(keep)
                self._between = True
        for i, c in enumerate(tm.shown):
            if c in _CLEARANCE and t - tm.clear_start[i] >= r.min_clear[i] - _EPS:
                tm.set(i, _RED, t)
        if self._between and not self._winding:
            members, green = self._stages[self._next]
            starting = [j for j in sorted(members) if tm.shown[j] != _GREEN]
            if all(self._may_start(j, t) for j in starting):
                for j in starting:
                    tm.set(j, _GREEN, t)
                self._active = set(members)
                longest_min = max(r.min_green[j] for j in members)
                self._stage_end = t + max(green, longest_min)
                self._next = (self._next + 1) % len(self._stages)
                self._carry = True
                self._between = False
        return tuple(tm.shown)

    def _may_start(self, j: int, t: float) -> bool:
        tm, r = self._tm, self._r
        # The group itself first runs out its own clearance and shows red (no yellow → green):
        # the plan passes through all red, for at least the all-red floor.
        if tm.shown[j] in _OPEN or t - tm.end_open[j] < ALL_RED_FLOOR_S - _EPS:
            return False
        for i in range(r.n):
            if not r.conflict[i][j]:
                continue
            if tm.shown[i] in _OPEN:
                return False
            if t - tm.end_open[i] < r.all_red[i][j] - _EPS:
                return False
            if r.intergreen[i][j] and t - tm.end_green[i] < r.intergreen[i][j] - _EPS:
                return False
        return True


# -- the cabinet core ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeChange:
    """One change of the cabinet's status, for tests and logs."""

    t: float
    mode: CabinetMode
    fault: FaultCode
    groups: tuple[int, ...] = ()


@dataclass
class CabinetStats:
    """Counters of the cabinet; nothing dropped goes uncounted."""

    reads: int = 0
    writes: int = 0
    commits: int = 0
    commits_ignored: int = 0  # commit register ≠ heartbeat: not a complete set
    bad_commands: int = 0
    heartbeats: int = 0
    heartbeat_losses: int = 0
    heartbeat_resumes: int = 0
    handovers: int = 0
    faults: int = 0
    fault_resets: int = 0
    local_plan_entries: int = 0
    flash_entries: int = 0
    ticks: int = 0
    traffic_errors: int = 0
    dropped_requests: int = 0  # answered by nobody while the link was cut ("silent")
    link_cuts: int = 0
    garbage_reads: int = 0
    restarts: int = 0


class CabinetCore:
    """The cabinet as a pure state machine: registers in, registers out, an injected clock.

    The shell calls :meth:`write_holding` for every write, :meth:`input_registers` /
    :meth:`holding_registers` for every read and :meth:`tick` at ``tick_hz``, each with the
    time of its clock.
    """

    def __init__(
        self,
        spec: CabinetSpec,
        t0: float,
        traffic: DetectorSource | None = None,
        stats: CabinetStats | None = None,
    ) -> None:
        self.spec = spec
        self.traffic = traffic
        self.stats = stats if stats is not None else CabinetStats()
        self.transitions: deque[ModeChange] = deque(maxlen=1000)
        self.last_fault: MonitorFault | None = None
        self._n = spec.n_groups
        self._ids = [g.id for g in spec.groups]
        self._flash = [g.flash_code for g in spec.groups]
        self._t0 = t0
        self._last_tick = t0
        self._hr = [0] * HR.END
        self._monitor = ConflictMonitor(spec, t0)
        self._shown = [_RED] * self._n
        self._mode = CabinetMode.STARTUP
        self._mode_t = t0
        self._fault = FaultCode.NONE
        self._fault_groups: tuple[int, ...] = ()
        self._latched = False
        self._hb_t = t0
        self._hb_lost = False
        self._resume_t = t0
        self._last_hb = 0
        self._last_commit = 0
        self._command = Command.FOLLOW
        self._committed: tuple[int, ...] | None = None
        self._commit_t = -math.inf
        self._fresh_commit = False
        self._plan: LocalPlan | None = None
        self._channels = sorted(set(spec.channels))
        self._count = [0] * spec.n_channels
        self._occ = [0.0] * spec.n_channels
        self._presence = [False] * spec.n_channels
        self._source_last: dict[int, tuple[int, float]] = {}
        self._stuck: dict[int, float] = {}  # channel → until
        self._garbage: dict[int, tuple[int, float]] = {}  # IR address → (value, until)
        self.transitions.append(ModeChange(t0, self._mode, self._fault))

    # -- state ----------------------------------------------------------------------------
    @property
    def mode(self) -> CabinetMode:
        """What the cabinet is doing (IR 3)."""
        return self._mode

    @property
    def fault(self) -> FaultCode:
        """Why it is not following (IR 4)."""
        return self._fault

    @property
    def fault_groups(self) -> tuple[int, ...]:
        """Group indices involved in the fault (IR 5, 6)."""
        return self._fault_groups

    @property
    def latched(self) -> bool:
        """True while a monitor fault holds the cabinet in flash."""
        return self._latched

    @property
    def shown(self) -> tuple[int, ...]:
        """What the heads show."""
        return tuple(self._shown)

    @property
    def last_heartbeat_t(self) -> float:
        """When the heartbeat last changed (cabinet clock)."""
        return self._hb_t

    @property
    def heartbeat_alive(self) -> bool:
        """True unless the watchdog has declared the heartbeat lost."""
        return not self._hb_lost

    def heartbeat_deadline(self) -> float | None:
        """When the watchdog will fire if no heartbeat comes (None when already lost)."""
        if self._hb_lost:
            return None
        return self._hb_t + self.spec.heartbeat_timeout_s

    def status(self, t: float) -> CabinetStatus:
        """The status the input registers report at ``t``."""
        return CabinetStatus(
            n_groups=self._n,
            n_channels=self.spec.n_channels,
            mode=self._mode,
            fault=self._fault,
            fault_groups=self._fault_groups,
            last_heartbeat=self._last_hb,
            last_commit=self._last_commit,
            uptime_s=min(0xFFFF_FFFF, max(0, int(t - self._t0))),
            displayed=tuple(SignalCode(c) for c in self._shown),
            detectors=tuple(
                DetectorReading(wrap16(self._count[ch]), wrap16(int(self._occ[ch] * 10 + 1e-6)), p)
                for ch, p in enumerate(self._presence)
            ),
        )

    def _image(self, t: float) -> list[int]:
        """``encode_status(self.status(t))`` without building the status: every poll of
        every simulated cabinet comes here (a thousand a second at a hundred intersections),
        and the status' enums and readings, then their checks one register at a time, cost
        more than the rest of the answer. The values are the core's own, valid by
        construction; a test keeps the two images equal."""
        n = self._n
        n_ch = self.spec.n_channels
        regs = [0] * IR.END
        regs[IR.MAP_VERSION] = MAP_VERSION
        regs[IR.N_GROUPS] = n
        regs[IR.N_CHANNELS] = n_ch
        regs[IR.STATUS] = int(self._mode)
        regs[IR.FAULT] = int(self._fault)
        for k, g in enumerate(self._fault_groups):
            regs[IR.FAULT_GROUP_A + k] = g + 1
        regs[IR.LAST_HEARTBEAT] = self._last_hb
        regs[IR.LAST_COMMIT] = self._last_commit
        uptime = min(0xFFFF_FFFF, max(0, int(t - self._t0)))
        regs[IR.UPTIME_HI] = uptime >> 16
        regs[IR.UPTIME_LO] = uptime & 0xFFFF
        regs[IR.PRESENCE : IR.PRESENCE + 4] = presence_bitmap(self._presence)
        regs[IR.DISPLAYED : IR.DISPLAYED + n] = [int(c) for c in self._shown]
        regs[IR.DET_COUNT : IR.DET_COUNT + n_ch] = [c & 0xFFFF for c in self._count]
        regs[IR.DET_OCCUPANCY : IR.DET_OCCUPANCY + n_ch] = [
            int(o * 10 + 1e-6) & 0xFFFF for o in self._occ
        ]
        return regs

    # -- registers ------------------------------------------------------------------------
    def input_registers(self, t: float) -> list[int]:
        """The input-register image (from address 0), with injected garbage on top."""
        self._expire(t)
        regs = self._image(t)
        for address, (value, _) in self._garbage.items():
            regs[address] = value
        return regs

    def presence_registers(self, t: float) -> list[int]:
        """The presence bitmap (the discrete inputs), with injected garbage on top."""
        regs = self.input_registers(t)
        return regs[IR.PRESENCE : IR.PRESENCE + 4]

    def holding_registers(self) -> list[int]:
        """The holding-register image (from address 0)."""
        return list(self._hr)

    def write_holding(self, t: float, address: int, values: Sequence[int]) -> None:
        """A write from the controller: heartbeat watch, and a commit applies the outputs."""
        if address < 0 or address + len(values) > HR.END:
            raise ValueError(f"write of {len(values)} registers at {address} is off the map")
        self.stats.writes += 1
        old_hb = self._hr[HR.HEARTBEAT]
        self._hr[address : address + len(values)] = [v & 0xFFFF for v in values]
        if self._hr[HR.HEARTBEAT] != old_hb:
            self._heartbeat(t)
        if address <= HR.COMMIT < address + len(values):
            self._commit(t)

    # -- time -----------------------------------------------------------------------------
    def tick(self, t: float) -> None:
        """Advance to ``t``: local plan, watchdog, mode changes, detectors."""
        dt = max(0.0, t - self._last_tick)
        self._last_tick = t
        self.stats.ticks += 1
        self._expire(t)
        if self._mode is CabinetMode.LOCAL_PLAN:
            self._run_plan(t)
        self._update(t)
        self._step_detectors(t, dt)

    # -- fault injection ------------------------------------------------------------------
    def stick_detector(self, channel: int, until: float = math.inf) -> None:
        """The channel is stuck on (presence, occupancy grows, no counts) until ``until``."""
        if not 0 <= channel < self.spec.n_channels:
            raise ValueError(f"no channel {channel}")
        self._stuck[channel] = until

    def put_garbage(self, register: int, value: int, until: float = math.inf) -> None:
        """Input register ``register`` reads ``value`` until ``until`` whatever it should be."""
        if not 0 <= register < IR.END:
            raise ValueError(f"no input register {register}")
        if not 0 <= value <= 0xFFFF:
            raise ValueError("a register holds 0..65535")
        self._garbage[register] = (value, until)

    def garbage_in(self, address: int, count: int) -> bool:
        """True when an injected garbage value lies in input registers ``address`` + ``count``."""
        return any(address <= a < address + count for a in self._garbage)

    def clear_injections(self) -> None:
        """End every stuck detector and every garbage register."""
        self._stuck.clear()
        self._garbage.clear()

    # -- internals ------------------------------------------------------------------------
    def _expire(self, t: float) -> None:
        for ch, until in list(self._stuck.items()):
            if t >= until:
                del self._stuck[ch]
        for reg, (_, until) in list(self._garbage.items()):
            if t >= until:
                del self._garbage[reg]

    def _heartbeat(self, t: float) -> None:
        self._hb_t = t
        self._last_hb = self._hr[HR.HEARTBEAT]
        self.stats.heartbeats += 1
        if self._hb_lost:
            self._hb_lost = False
            self._resume_t = t
            self.stats.heartbeat_resumes += 1
            log.info("cabinet: heartbeat back at %.2f", t)

    def _commit(self, t: float) -> None:
        frame = parse_output_frame(self._hr, self._n)
        if not frame.committed:
            self.stats.commits_ignored += 1
            return
        self.stats.commits += 1
        self._last_commit = frame.commit
        previous = self._command
        try:
            self._command = Command(frame.command)
        except ValueError:
            self.stats.bad_commands += 1  # keep the previous command
        # Edge-triggered: a reset left standing in HR 1 must not clear the next fault too.
        if (
            self._command is Command.RESET_FAULT
            and previous is not Command.RESET_FAULT
            and self._latched
        ):
            self._reset_fault(t)
        self._committed = frame.outputs
        self._commit_t = t
        self._fresh_commit = True
        self._update(t)

    def _alive(self, t: float) -> bool:
        alive = t - self._hb_t < self.spec.heartbeat_timeout_s
        if not alive and not self._hb_lost:
            self._hb_lost = True
            self.stats.heartbeat_losses += 1
            log.warning("cabinet: heartbeat lost (none for %.2f s)", t - self._hb_t)
        return alive

    def _update(self, t: float) -> None:
        alive = self._alive(t)
        if self._latched:
            return
        cmd = self._command if alive else None
        follow = cmd in (Command.FOLLOW, Command.RESET_FAULT)
        mode = self._mode
        if mode is CabinetMode.STARTUP:
            if t - self._mode_t < self.spec.startup_all_red_s - _EPS:
                return
            if not alive:
                self._fallback(t)
            elif cmd is Command.FLASH:
                self._enter_flash(t, CabinetMode.FLASH_REQUESTED, FaultCode.NONE)
            elif cmd is Command.LOCAL_PLAN:
                self._enter_local(t, FaultCode.NONE)
            else:
                self._try_handover(t)
        elif mode is CabinetMode.FOLLOWING:
            if not alive:
                self._fallback(t)
            elif cmd is Command.FLASH:
                self._enter_flash(t, CabinetMode.FLASH_REQUESTED, FaultCode.NONE)
            elif cmd is Command.LOCAL_PLAN:
                self._enter_local(t, FaultCode.NONE)
            elif self._fresh_commit and self._committed is not None:
                self._fresh_commit = False
                self._show(t, self._committed)
        elif mode is CabinetMode.LOCAL_PLAN:
            plan = self._plan
            assert plan is not None
            if not alive:
                plan.resume()
                self._set_mode(t, mode, FaultCode.HEARTBEAT_LOST)
            elif cmd is Command.FLASH:
                self._enter_flash(t, CabinetMode.FLASH_REQUESTED, FaultCode.NONE)
            elif cmd is Command.LOCAL_PLAN:
                plan.resume()
                self._set_mode(t, mode, FaultCode.NONE)
            elif follow:
                plan.wind_down()
                self._try_handover(t)
        elif mode is CabinetMode.FLASH:  # heartbeat lost with the flash fallback
            if alive and cmd is Command.FLASH:
                self._set_mode(t, CabinetMode.FLASH_REQUESTED, FaultCode.NONE)
            elif alive:
                self._startup(t)
        elif mode is CabinetMode.FLASH_REQUESTED:
            if not alive:
                self._set_mode(t, CabinetMode.FLASH, FaultCode.HEARTBEAT_LOST)
            elif cmd is not Command.FLASH and (
                cmd is not Command.LOCAL_PLAN or self.spec.local_plan
            ):  # without a plan, a local-plan request stays in flash (see _enter_local)
                self._startup(t)

    def _try_handover(self, t: float) -> None:
        committed = self._committed
        if committed is None or self._commit_t < self._resume_t:
            return
        if any(c != _RED for c in committed) or any(c != _RED for c in self._shown):
            return
        self._plan = None
        self._fresh_commit = False
        self.stats.handovers += 1
        self._set_mode(t, CabinetMode.FOLLOWING, FaultCode.NONE)

    def _fallback(self, t: float) -> None:
        if self.spec.fallback == "flash":
            self._enter_flash(t, CabinetMode.FLASH, FaultCode.HEARTBEAT_LOST)
        else:
            self._enter_local(t, FaultCode.HEARTBEAT_LOST)

    def _enter_local(self, t: float, reason: FaultCode) -> None:
        if not self.spec.local_plan:  # only possible with the flash fallback
            self._enter_flash(t, CabinetMode.FLASH_REQUESTED, FaultCode.NONE)
            return
        self._plan = LocalPlan(self.spec, t, self._monitor.timing())
        self.stats.local_plan_entries += 1
        self._set_mode(t, CabinetMode.LOCAL_PLAN, reason)
        self._run_plan(t)

    def _run_plan(self, t: float) -> None:
        assert self._plan is not None
        self._show(t, self._plan.step(t))

    def _show(self, t: float, outputs: Sequence[int]) -> None:
        """Drive the heads, if the monitor agrees; otherwise latch flash."""
        if list(outputs) == self._shown:
            return
        fault = self._monitor.check(t, outputs)
        if fault is not None:
            self._latch(t, fault)
            return
        self._shown = list(outputs)

    def _latch(self, t: float, fault: MonitorFault) -> None:
        self._latched = True
        self.last_fault = fault
        self.stats.faults += 1
        log.warning("cabinet: fault %s latched: %s", fault.code.name, fault.reason)
        self._enter_flash(t, CabinetMode.FLASH, fault.code, fault.groups)

    def _enter_flash(
        self, t: float, mode: CabinetMode, fault: FaultCode, groups: tuple[int, ...] = ()
    ) -> None:
        self._plan = None
        self._shown = list(self._flash)
        self.stats.flash_entries += 1
        self._set_mode(t, mode, fault, groups)

    def _reset_fault(self, t: float) -> None:
        self._latched = False
        self.last_fault = None
        self.stats.fault_resets += 1
        self._startup(t)

    def _startup(self, t: float) -> None:
        self._plan = None
        self._shown = [_RED] * self._n
        self._monitor.reset(t)
        self._resume_t = max(self._resume_t, t)
        self._set_mode(t, CabinetMode.STARTUP, FaultCode.NONE)

    def _set_mode(
        self, t: float, mode: CabinetMode, fault: FaultCode, groups: tuple[int, ...] = ()
    ) -> None:
        if (mode, fault, groups) == (self._mode, self._fault, self._fault_groups):
            return
        if mode is not self._mode:
            self._mode_t = t
        self._mode = mode
        self._fault = fault
        self._fault_groups = groups
        self.transitions.append(ModeChange(t, mode, fault, groups))
        log.info("cabinet: %s (fault %s) at %.2f", mode.name, fault.name, t)

    def _step_detectors(self, t: float, dt: float) -> None:
        traffic = self.traffic
        for ch in range(self.spec.n_channels):
            # Presence of a channel no source reports on is the stuck injection's alone.
            if ch not in self._stuck and (traffic is None or ch not in self._source_last):
                self._presence[ch] = False
        if traffic is None:
            for ch in self._stuck:
                self._occ[ch] += dt
                self._presence[ch] = True
            return
        try:
            traffic.step(t, dt, dict(zip(self._ids, self._shown, strict=True)))
        except Exception:
            self.stats.traffic_errors += 1
            log.exception("cabinet: traffic source failed")
            return
        for ch in self._channels:
            try:
                count, occupied, present = traffic.detector(ch)
            except Exception:
                self.stats.traffic_errors += 1
                continue
            last = self._source_last.get(ch)
            self._source_last[ch] = (count, occupied)
            if ch in self._stuck:
                self._occ[ch] += dt
                self._presence[ch] = True
                continue
            if last is None:
                d_count, d_occ = count, occupied
            else:
                d_count, d_occ = count - last[0], occupied - last[1]
            # Cumulative registers never run backwards, whatever the source does.
            self._count[ch] += max(0, d_count)
            self._occ[ch] += max(0.0, d_occ)
            self._presence[ch] = bool(present)
        for ch in self._stuck:
            if ch not in self._source_last:
                self._occ[ch] += dt
                self._presence[ch] = True


# -- the asyncio shell -----------------------------------------------------------------------

_FC_HOLDING = frozenset({3, 6, 16, 22, 23})
_FC_INPUT = 4
_FC_DISCRETE = 2


class SimulatedCabinet:
    """A cabinet on a real socket: pymodbus TCP server + :class:`CabinetCore` + a loop.

    Use::

        cab = SimulatedCabinet(spec, "127.0.0.1", port, device_id=1, traffic=source)
        await cab.start()
        ...
        await cab.stop()

    ``clock`` is read for every request and tick (default :func:`time.monotonic`); the loop
    itself sleeps in real time. :meth:`start` after :meth:`stop` is a power cycle: a fresh core,
    so a latched fault is gone. Port 0 picks a free port (see :attr:`port`).
    """

    def __init__(
        self,
        spec: CabinetSpec,
        host: str = "127.0.0.1",
        port: int = 502,
        device_id: int = 1,
        traffic: DetectorSource | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        tick_hz: float | None = None,
    ) -> None:
        self.spec = spec
        self.host = host
        self.port = port
        self.device_id = device_id
        self.traffic = traffic
        self.clock = clock
        self.tick_hz = tick_hz or spec.tick_hz
        self.stats = CabinetStats()
        self.core = CabinetCore(spec, clock(), traffic, self.stats)
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._silent_until = -math.inf
        self._refused_until = -math.inf
        self._starts = 0

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Listen and start the loop (a fresh core after a :meth:`stop`)."""
        if self.running:
            return
        if self._starts:
            self.stats.restarts += 1
            self.core = CabinetCore(self.spec, self.clock(), self.traffic, self.stats)
        self._starts += 1
        self._silent_until = self._refused_until = -math.inf
        await self._listen()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cabinet loop")

    async def stop(self) -> None:
        """Stop the loop and close the server and every connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_server()

    async def __aenter__(self) -> SimulatedCabinet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- state ----------------------------------------------------------------------------
    @property
    def mode(self) -> CabinetMode:
        """What the cabinet is doing."""
        return self.core.mode

    @property
    def fault(self) -> FaultCode:
        """Why it is not following."""
        return self.core.fault

    @property
    def shown(self) -> tuple[int, ...]:
        """What the heads show."""
        return self.core.shown

    @property
    def link_cut(self) -> bool:
        """True while an injected link failure is active."""
        now = self.clock()
        return now < self._silent_until or now < self._refused_until

    # -- fault injection ------------------------------------------------------------------
    def inject_link_down(
        self, seconds: float, *, mode: Literal["silent", "refuse"] = "silent"
    ) -> None:
        """Cut the link for ``seconds`` (the cabinet itself keeps running).

        ``silent``: requests arrive and nobody answers, as over a cut cable (clients time out).
        ``refuse``: every connection is closed and new ones are refused, as when the cabinet's
        network interface goes down.
        """
        self.stats.link_cuts += 1
        until = self.clock() + seconds
        if mode == "silent":
            self._silent_until = until
        elif mode == "refuse":
            self._refused_until = until
            server, self._server = self._server, None
            if server is not None:
                server.close()  # closes the listener and every connection
        else:
            raise ValueError(f"unknown link failure {mode!r}")

    def restore_link(self) -> None:
        """End an injected link failure now (the loop re-opens a refused listener)."""
        self._silent_until = self._refused_until = self.clock()

    def inject_stuck_detector(self, channel: int, seconds: float | None = None) -> None:
        """Channel ``channel`` is stuck on for ``seconds`` (forever when None)."""
        until = math.inf if seconds is None else self.clock() + seconds
        self.core.stick_detector(channel, until)

    def inject_garbage(self, register: int, value: int, seconds: float | None = None) -> None:
        """Input register ``register`` reads ``value`` for ``seconds`` (forever when None)."""
        until = math.inf if seconds is None else self.clock() + seconds
        self.core.put_garbage(register, value, until)

    def clear_injections(self) -> None:
        """End every injected fault (link, detectors, registers)."""
        self.restore_link()
        self.core.clear_injections()

    # -- internals ------------------------------------------------------------------------
    def _device(self) -> SimDevice:
        # Separate blocks: coils (unused, read-only), discrete inputs (presence), holding and
        # input registers. Values live in the core; the action fills / takes them per request.
        return SimDevice(
            id=self.device_id,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS, readonly=True)],
                [SimData(0, count=MAX_CHANNELS, values=False, datatype=DataType.BITS)],
                [SimData(0, count=HR.END, datatype=DataType.REGISTERS)],
                [SimData(0, count=IR.END, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )

    async def _listen(self) -> None:
        server = ModbusTcpServer(
            self._device(),
            address=(self.host, self.port),
            # Lets the action stay silent (raise NoSuchIdException) while the link is "cut".
            ignore_missing_devices=True,
        )
        await server.serve_forever(background=True)
        if self.port == 0:
            listener = server.transport
            sockets = getattr(listener, "sockets", None)
            if sockets:
                self.port = int(sockets[0].getsockname()[1])
        self._server = server

    async def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        now = self.clock()
        if now < self._silent_until or now < self._refused_until:
            self.stats.dropped_requests += 1
            raise NoSuchIdException("link cut (simulated): no answer")
        offset = address - start_address
        if function_code in _FC_HOLDING:
            if set_values is not None:
                self.core.write_holding(now, address, [int(v) for v in set_values])
            else:
                image = self.core.holding_registers()
                registers[offset : offset + count] = image[address : address + count]
        elif function_code == _FC_INPUT:
            self.stats.reads += 1
            image = self.core.input_registers(now)
            if self.core.garbage_in(address, count):
                self.stats.garbage_reads += 1
            registers[offset : offset + count] = image[address : address + count]
        elif function_code == _FC_DISCRETE:
            # Bit addressing: ``registers`` holds 16 inputs per entry, from register 0.
            bitmap = self.core.presence_registers(now)
            registers[0:4] = bitmap
        return None

    async def _run(self) -> None:
        period = 1.0 / self.tick_hz
        next_tick = self.clock()
        while True:
            now = self.clock()
            if self._server is None and now >= self._refused_until:
                try:
                    await self._listen()
                except (OSError, RuntimeError):
                    log.warning("cabinet: cannot listen on %s:%s yet", self.host, self.port)
            self.core.tick(now)
            if now >= next_tick - 1e-4:
                next_tick += period
                if next_tick < now:  # fell behind (a slow event loop): do not catch up in a burst
                    next_tick = now + period
            wake = next_tick
            deadline = self.core.heartbeat_deadline()
            if deadline is not None:
                # Wake just after the watchdog deadline, not at the next tick: the fallback
                # starts on time, not up to one tick late.
                wake = min(wake, deadline + 0.001)
            if self._server is None:
                wake = min(wake, self._refused_until)
            await asyncio.sleep(max(0.0, min(period, wake - self.clock())))
