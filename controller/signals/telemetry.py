"""What one intersection records: its event log, detector intervals, decisions and state.

:class:`IntersectionTelemetry` is the recording half of an
:class:`~controller.signals.service.IntersectionRunner` that was given a recorder. The runner
calls it at fixed points of its step — after every read, after every engine step, for every
detector alarm, at the end of the step — and it turns what it is shown into points
(``docs/telemetry.md``):

* ``signal_event`` — the Indiana event log (:class:`~controller.signals.events.EventLog`),
  recorded at the step the cabinet reported it;
* ``signal_detector`` — every ``interval_s`` per detector: what it counted and how long it
  was occupied in the interval (differences of the detector bank's unwrapped totals, so
  the intervals add up to the cabinet's counters), and its health;
* ``signal_decision`` — whenever the strategy's request changes during a green;
* ``signal_intersection`` — when the hand-over state, the link, the cabinet's mode or
  fault, the alarms or the strategy change, and every ``interval_s``.

Timestamps are the recorder's own clock (``at=None``) at the moment of recording; interval
lengths are measured on the runner's monotonic clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.signals.control import ControlStep, IntersectionControl
from controller.signals.detectors import DetectorEvent
from controller.signals.engine import EngineOutput
from controller.signals.events import EventLog, SignalEvent, termination_code
from controller.signals.model import Intersection
from controller.signals.strategies import Adaptive, decision_reason
from controller.telemetry.recorder import Recorder
from controller.telemetry.schema import (
    DETECTOR_FAULT_CODES,
    EventCode,
    Sample,
    record,
    signal_decision,
    signal_detector,
    signal_event,
    signal_intersection,
)
from devices.cabinet import CabinetStatus

if TYPE_CHECKING:
    from controller.signals.service import IntersectionRunner

__all__ = ["IntersectionTelemetry"]


class IntersectionTelemetry:
    """Records one intersection; see the module docstring."""

    def __init__(
        self,
        x: Intersection,
        recorder: Recorder,
        *,
        interval_s: float = 60.0,
        first_interval_s: float | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s: {interval_s!r} must be positive")
        if first_interval_s is not None and not 0 < first_interval_s <= interval_s:
            raise ValueError(f"first_interval_s: {first_interval_s!r} must be in (0, interval_s]")
        self.x = x
        self.recorder = recorder
        self.interval_s = interval_s
        #: The first interval's length: a controller's intersections that started together
        #: end their intervals at different moments (see SignalsService), not in one burst.
        self.first_interval_s = interval_s if first_interval_s is None else first_interval_s
        self.log = EventLog(x)
        self._stage_no = {sid: k + 1 for k, (sid, _) in enumerate(x.stages)}
        self._plan_no = {p.name: k + 1 for k, p in enumerate(x.config.fixed_plans)}
        self._samples: dict[SignalEvent, Sample] = {}
        self._t0: float | None = None
        self._due = 0.0
        self._base: dict[str, tuple[int, float]] = {}
        self._state: tuple[object, ...] | None = None
        self._decision: tuple[object, ...] | None = None
        self._strategy: str | None = None

    # -- events ----------------------------------------------------------------------------------

    def _event(self, ev: SignalEvent) -> None:
        sample = self._samples.get(ev)
        if sample is None:
            sample = signal_event(
                self.x.id, ev.code, ev.param, group=ev.group, detector=ev.detector
            )
            if len(self._samples) < 4096:
                self._samples[ev] = sample
        record(self.recorder, sample)

    def read(self, status: CabinetStatus | None, now: float) -> None:
        """After every read: what the heads show and the presence bits (None: the read failed)."""
        if status is None:
            self.log.reset()
            return
        for ev in self.log.displayed(status.displayed, now):
            self._event(ev)
        for ev in self.log.presence(status.detectors):
            self._event(ev)

    def control_step(
        self,
        control: IntersectionControl,
        step: ControlStep,
        seen: EngineOutput,
        max_out: bool,
        now: float,
    ) -> None:
        """After every engine step: terminations, calls and the strategy's decision.

        ``seen`` is the output the strategy decided on (the previous step's), ``max_out``
        whether the engine ended a stage at its max green in this step.
        """
        self._strategy = step.strategy
        strategy = control.strategy
        req = step.request
        reason = decision_reason(strategy, seen, req) if strategy is not None else "other"
        if step.output.signals != seen.signals:  # (as the codes compare: most steps equal)
            before = tuple(map(int, seen.signals))
            self.log.engine_step(before, step.signals, termination_code(reason, max_out), now)
        if control.view is not None:
            for ev in self.log.calls(control.view):
                self._event(ev)
        if seen.phase != "green":
            return
        key = (step.strategy, seen.stage, req.next_stage, req.end_green, reason)
        if key == self._decision:
            return
        self._decision = key
        hold: float | None = None
        cost: float | None = None
        if isinstance(strategy, Adaptive):
            if reason == "hold":
                hold = strategy.last_hold_s
            costs = strategy.last_costs
            if costs and reason in ("hold", "switch"):
                cost = min(costs.values())
        record(
            self.recorder,
            signal_decision(
                self.x.id,
                strategy=step.strategy,
                reason=reason,
                stage=self._stage_no.get(seen.stage or "", 0),
                next_stage=self._stage_no.get(req.next_stage or "", 0),
                end_green=req.end_green,
                green_s=seen.green_elapsed + max(0.0, step.t - seen.t),
                hold_s=hold,
                cost_veh_s=cost,
            ),
        )

    def detector_alarm(self, ev: DetectorEvent) -> None:
        """A detector alarm raised or cleared (83–92)."""
        self._event(self.log.detector_fault(ev.alarm.detector, ev.alarm.kind, ev.active))

    # -- state and intervals -------------------------------------------------------------------

    def after_step(self, runner: IntersectionRunner, now: float) -> None:
        """At the end of every step: the state when it changed, the interval when it is due."""
        if self._t0 is None:
            self._t0 = now
            self._due = now + self.first_interval_s
            self._base = {
                t.detector: (t.count, t.occupied_s) for t in runner.control.detectors.totals()
            }
        cab = runner.cabinet
        state = (
            runner.sync,
            runner.link.up,
            None if cab is None else cab.mode,
            None if cab is None else cab.fault,
            len(runner.alarms),
            self._strategy,
        )
        if now + 1e-9 >= self._due:
            self.record_interval(runner, now)
        elif state != self._state:
            self._state = state
            self._record_state(runner)

    def record_interval(self, runner: IntersectionRunner, now: float) -> None:
        """Record every detector's interval and the intersection's state now; a new interval
        starts (called by :meth:`after_step` when due; tests and shutdown may call it)."""
        t0 = self._t0 if self._t0 is not None else now
        span = now - t0
        base = self._base
        new_base: dict[str, tuple[int, float]] = {}
        for t in runner.control.detectors.totals():
            c0, o0 = base.get(t.detector, (0, 0.0))
            new_base[t.detector] = (t.count, t.occupied_s)
            if span <= 0:
                continue
            fault = 0
            if t.fault is not None:
                code = DETECTOR_FAULT_CODES.get(t.fault, EventCode.DETECTOR_FAULT_OTHER)
                fault = int(code)
            record(
                self.recorder,
                signal_detector(
                    self.x.id,
                    t.detector,
                    t.group,
                    t.kind.value,
                    count=t.count - c0,
                    occupied_s=max(0.0, t.occupied_s - o0),
                    interval_s=span,
                    failed=t.fault is not None,
                    fault=fault,
                ),
            )
        self._base = new_base
        self._t0 = now
        self._due += self.interval_s
        if self._due <= now:
            self._due = now + self.interval_s  # a long stall: restart the cadence
        cab = runner.cabinet
        self._state = (
            runner.sync,
            runner.link.up,
            None if cab is None else cab.mode,
            None if cab is None else cab.fault,
            len(runner.alarms),
            self._strategy,
        )
        self._record_state(runner)

    def _record_state(self, runner: IntersectionRunner) -> None:
        cab = runner.cabinet
        strategy = self._strategy
        plan = 0
        if strategy is not None and strategy.startswith("fixed:"):
            plan = self._plan_no.get(strategy.partition(":")[2], 0)
        st, cs = runner.stats, runner.control.stats
        record(
            self.recorder,
            signal_intersection(
                self.x.id,
                sync=runner.sync,
                link_up=runner.link.up,
                alarms=len(runner.alarms),
                strategy=strategy,
                plan=plan,
                cabinet_mode=None if cab is None else int(cab.mode),
                cabinet_fault=None if cab is None else int(cab.fault),
                stage_changes=cs.stage_changes,
                violations=cs.violations,
                display_mismatches=st.display_mismatches,
                read_failures=st.read_failures + st.register_errors,
                write_failures=st.write_failures,
            ),
        )
