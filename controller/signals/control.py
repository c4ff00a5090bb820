"""One intersection's control step, pure: detectors in, checked signal outputs out.

:class:`IntersectionControl` strings the signal layers together in the order every step must
follow, so that the asyncio runner (:mod:`controller.signals.service`), the lock-step
benchmark and the tests run exactly the same code:

1. the :class:`~controller.signals.detectors.DetectorBank` turns what the detectors reported
   into a :class:`~controller.signals.detectors.TrafficView`;
2. the strategy of the time of day (:class:`~controller.signals.strategies.StrategySelector`)
   *asks* for a stage;
3. the :class:`~controller.signals.engine.PhaseEngine` decides what is legal;
4. the independent :class:`~controller.signals.safety.SafetyMonitor` checks the result. A
   violation is a bug somewhere above: the intersection goes to flash at once, the violation
   is counted and returned so the shell can raise an alarm, and the flash holds until an
   operator (or a resynchronisation with the cabinet) restarts the engine.

Two ways (re)start the engine: :meth:`IntersectionControl.restart` from an all-red start-up
(after flash or a hand-over through all red), and :meth:`IntersectionControl.adopt`, which takes
over heads that already show a stage's greens cleanly (a controller restarted while the
cabinet still follows its predecessor's outputs) without changing them. Both go through the
engine's and the monitor's own public entry points, never around them.

Nothing here sleeps or touches a socket; ``now`` is the injected monotonic clock (seconds).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from controller.signals.detectors import (
    DetectorBank,
    DetectorSettings,
    LoopReading,
    TrafficView,
)
from controller.signals.engine import (
    EngineOutput,
    NotAdoptable,
    PhaseEngine,
    Request,
    ShownState,
)
from controller.signals.model import Intersection, Signal
from controller.signals.safety import SafetyMonitor, Violation
from controller.signals.strategies import AdaptiveConfig, Strategy, StrategySelector

__all__ = ["ControlStats", "ControlStep", "IntersectionControl"]

LocalTime = dt.datetime | dt.time | int | float
"""A local wall-clock time, or minutes after local midnight (strategy schedules use it)."""


class ControlStep(NamedTuple):
    """The outcome of one step: what to write to the cabinet and what happened (immutable)."""

    t: float
    output: EngineOutput
    strategy: str
    request: Request
    violations: tuple[Violation, ...]
    """Non-empty when the monitor caught the engine's output: the step shows flash instead."""
    signals: tuple[int, ...]
    """Signal codes of ``output`` in group order (plain ints), as written to the cabinet's
    output registers."""

    @property
    def flashing(self) -> bool:
        """True while the intersection is in flash."""
        return self.output.phase == "flash"


@dataclass
class ControlStats:
    """Counters of one intersection since its control was built (kept across restarts)."""

    steps: int = 0
    stage_changes: int = 0
    violations: int = 0
    violations_by_kind: dict[str, int] = field(default_factory=dict)
    flashes: int = 0
    restarts: int = 0
    adoptions: int = 0
    max_outs: int = 0
    refused_requests: int = 0


class IntersectionControl:
    """Detector bank, strategies, phase engine and safety monitor of one intersection.

    ``upstream_greens`` feeds coordination: the times (same clock) at which the upstream
    intersection's arterial stage turned green, e.g. another control's
    :meth:`arterial_greens`.
    """

    def __init__(
        self,
        x: Intersection,
        *,
        now: float,
        adaptive: AdaptiveConfig | None = None,
        detector_settings: DetectorSettings | None = None,
        upstream_greens: Callable[[], Sequence[float]] | None = None,
        startup_red_s: float = 3.0,
    ) -> None:
        self.x = x
        self.stats = ControlStats()
        self.detectors = DetectorBank(x, detector_settings)
        self.strategies = StrategySelector(x, adaptive=adaptive, upstream_greens=upstream_greens)
        self._startup_red_s = startup_red_s
        self.engine = PhaseEngine(x, now=now, startup_red_s=startup_red_s)
        self.monitor = SafetyMonitor(x)
        self.output: EngineOutput = self.engine.output
        self.view: TrafficView | None = None
        self.strategy: Strategy | None = None
        """The strategy of the latest step (its state explains the request, for telemetry)."""
        self.flash_reason: str | None = None
        self._last_stage: str | None = None
        coord = x.config.coordination
        self._arterial = coord.arterial_stage if coord is not None else None
        self._arterial_greens: deque[float] = deque(maxlen=8)
        self._engine_base = self.engine.stats
        # The codes of the latest step's signals: steps mostly repeat them, and the same tuple
        # then makes the shell's "already written?" comparison an identity check.
        self._shown: tuple[Signal, ...] = ()
        self._codes: tuple[int, ...] = ()
        self.monitor.check(now, self.output.signals)

    # -- inputs -----------------------------------------------------------------------------

    def loop_reading(
        self,
        channel: int,
        count_raw: int,
        occupancy_raw: int | None,
        presence: bool,
        now: float,
        *,
        sent: float | None = None,
    ) -> None:
        """One read of a cabinet detector channel (16-bit wrapping registers, see devices).

        Answered at ``now``, asked for at ``sent`` (default ``now``; see
        :meth:`~controller.signals.detectors.DetectorBank.update_loop`).
        """
        self.detectors.update_loop(channel, count_raw, occupancy_raw, presence, now, sent=sent)

    def loop_readings(
        self, readings: Sequence[LoopReading], now: float, *, sent: float | None = None
    ) -> None:
        """One read of every cabinet channel, ``readings[channel]`` (e.g. a
        :class:`devices.cabinet.CabinetStatus`' ``detectors``): exactly :meth:`loop_reading`
        for each channel in order, at a fraction of the cost (see
        :meth:`~controller.signals.detectors.DetectorBank.update_loops`).
        """
        self.detectors.update_loops(readings, now, sent=sent)

    def camera_reading(
        self, detector: str, count: int, queue: int, interval_s: float, now: float
    ) -> None:
        """One camera zone's interval: vehicles that crossed the stop line, queue at the end."""
        self.detectors.update_camera(detector, count, queue, interval_s, now)

    # -- the step ---------------------------------------------------------------------------

    def step(self, now: float, local: LocalTime) -> ControlStep:
        """Decide, check and return what the signals show from ``now`` on."""
        self.stats.steps += 1
        view = self.detectors.view(now)
        self.view = view
        strategy = self.strategies.current(local)
        self.strategy = strategy
        if self.flash_reason is None:
            request = strategy.decide(now, self.output, view)
        else:
            request = Request()
        out = self.engine.step(now, request)
        violations = tuple(self.monitor.check(now, out.signals))
        if violations:
            self._violation(now, violations)
            out = self.engine.output
            # Flash is the safe state from anything; the monitor records it as such.
            self.monitor.check(now, out.signals)
        self.detectors.update_signals(out.signals, now)
        if out.phase == "green" and out.stage != self._last_stage:
            self.stats.stage_changes += 1
            if out.stage == self._arterial:
                self._arterial_greens.append(now)
        self._last_stage = out.stage if out.phase == "green" else self._last_stage
        self.output = out
        self._sync_engine_stats()
        signals = out.signals
        if signals != self._shown:
            self._shown = signals
            self._codes = tuple(map(int, signals))
        return ControlStep(now, out, strategy.name, request, violations, self._codes)

    def confirm(self, t: float) -> None:
        """The latest output reached the heads no later than ``t`` (the write was acknowledged).

        Engine and monitor both time the output's changes from ``t`` instead of the step's
        ``now`` (:meth:`~controller.signals.engine.PhaseEngine.confirm`): a step that ran late,
        or a write that took long, never shortens a clearance or an all-red on the heads.
        """
        self.engine.confirm(t)
        self.monitor.confirm(t)
        self.output = self.engine.output

    def restart(self, now: float, reason: str = "") -> None:
        """Start again from an all-red start-up: after a flash, a cabinet resynchronisation.

        The heads were not ours meanwhile (flash, or the cabinet's local plan), so the monitor
        starts afresh too: like at power-up it holds the first green to an all-red of at least
        the largest all-red. The cabinet's own monitor covers the hand-over from its side. The
        detectors keep their history: the queues are still there.
        """
        self.stats.restarts += 1
        self._sync_engine_stats()
        self.engine = PhaseEngine(self.x, now=now, startup_red_s=self._startup_red_s)
        self._engine_base = self.engine.stats
        self.monitor = SafetyMonitor(self.x)
        self.output = self.engine.output
        self.flash_reason = None
        self._last_stage = None
        self.monitor.check(now, self.output.signals)
        self.detectors.update_signals(self.output.signals, now)

    def adopt(self, now: float, signals: Sequence[int]) -> ShownState:
        """Take over heads that already show ``signals``; returns the state taken over.

        For a controller restarted while the cabinet still follows its predecessor's outputs:
        instead of making the cabinet end those greens and winding down to all red, the
        intersection carries on from what is shown — a stage's green, or a stage change on
        its way to a stage (:func:`~controller.signals.engine.shown_state`: a yellow, a
        pedestrian clearance, the all-red between). The engine starts there
        (:meth:`~controller.signals.engine.PhaseEngine.adopt`: minimum and max green, walks
        and clearances from ``now``, every red taken as just cleared) and the monitor takes
        the same state over (:meth:`~controller.signals.safety.SafetyMonitor.adopt`), each
        with its own checks. The output is then exactly ``signals``: writing it changes
        nothing on the heads.

        Raises :class:`~controller.signals.engine.NotAdoptable` (a ``ValueError``) saying why,
        and changes nothing, when the display is not such a state.
        """
        engine = PhaseEngine(self.x, now=now, startup_red_s=self._startup_red_s)
        state = engine.adopt(now, signals)
        out = engine.output
        if tuple(int(s) for s in out.signals) != tuple(int(c) for c in signals):
            raise NotAdoptable(f"state {state} does not show exactly the display")  # a bug
        monitor = SafetyMonitor(self.x)
        try:
            monitor.adopt(now, out.signals)
        except ValueError as exc:
            raise NotAdoptable(f"the safety monitor refuses it: {exc}") from None
        self.stats.adoptions += 1
        self._sync_engine_stats()
        self.engine = engine
        self._engine_base = engine.stats
        self.monitor = monitor
        self.output = out
        self.flash_reason = None
        # A stage already green is not a stage change of ours, and its green start (for
        # coordination) is unknown, so it is not fed to the downstream neighbour. A stage
        # change taken over reaches its green under us: that one is ours, and counted.
        self._last_stage = state.stage if state.phase == "green" else None
        self.detectors.update_signals(out.signals, now)
        return state

    def flash(self, now: float, reason: str) -> None:
        """Go to flash on purpose (operator, cabinet fault); :meth:`restart` leaves it."""
        self.flash_reason = reason or "flash"
        self.engine.enter_flash(now, self.flash_reason)
        self.stats.flashes += 1
        self.output = self.engine.output
        self.monitor.check(now, self.output.signals)
        self.detectors.update_signals(self.output.signals, now)

    # -- outputs ----------------------------------------------------------------------------

    def arterial_greens(self) -> tuple[float, ...]:
        """When this intersection's arterial stage last turned green (coordination feed)."""
        return tuple(self._arterial_greens)

    def signal_names(self) -> dict[str, str]:
        """Group id → what it shows, for status messages."""
        return {
            g.id: Signal(s).name for g, s in zip(self.x.groups, self.output.signals, strict=True)
        }

    # -- internals --------------------------------------------------------------------------

    def _violation(self, now: float, violations: Sequence[Violation]) -> None:
        for v in violations:
            self.stats.violations += 1
            by_kind = self.stats.violations_by_kind
            by_kind[v.kind] = by_kind.get(v.kind, 0) + 1
        text = "; ".join(f"{v.kind} {'/'.join(v.groups)}: {v.detail}" for v in violations)
        self.flash(now, f"safety violation: {text}")

    def _sync_engine_stats(self) -> None:
        # The engine is replaced on restart; keep its counters cumulative here.
        cur = self.engine.stats
        base = self._engine_base
        self.stats.max_outs += cur.max_outs - base.max_outs
        self.stats.refused_requests += cur.refused_requests - base.refused_requests
        self._engine_base = cur
