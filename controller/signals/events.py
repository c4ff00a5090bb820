"""The high-resolution event log of one intersection, pure: what happened, as Indiana events.

Signal performance measures (split failures, arrivals on green, pedestrian delay, phase
terminations) are built from a controller's event log: every change of every signal group
and every detector on/off, to the tenth of a second. :class:`EventLog` derives that log from
what the *cabinet reports* — the codes its heads show (IR 16…) and its presence bits (IR 12…)
— because that is the truth on the street, whoever drives the heads (our outputs, the
cabinet's local plan, its flash). What only the controller knows is added where it decides
it: why a green ended (gap-out, max-out, force-off) and when a group starts calling.

Nothing here reads a clock or records anything: the shell
(:class:`~controller.signals.service.IntersectionRunner`) feeds readings with its monotonic
``now`` and records the returned :class:`SignalEvent` s. Codes and parameters are those of
:class:`controller.telemetry.schema.EventCode` (``docs/telemetry.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.signals.detectors import TrafficView
from controller.signals.model import DetectorKind, GroupKind, Intersection, Signal
from controller.telemetry.schema import DETECTOR_FAULT_CODES, EventCode

__all__ = ["EventLog", "SignalEvent", "termination_code"]

#: A termination noted by the engine is matched with the yellow the cabinet shows this late at
#: most (the cabinet shows it one read after the write; more means it was never shown).
TERMINATION_WINDOW_S = 1.0

_GREEN = int(Signal.GREEN)
_YELLOW = int(Signal.YELLOW)
_RED = int(Signal.RED)
_DARK = int(Signal.DARK)
_PED_CLEARANCE = int(Signal.PED_CLEARANCE)


@dataclass(frozen=True, slots=True)
class SignalEvent:
    """One event: Indiana ``code`` and ``param``, the group and (detector events) detector."""

    code: int
    param: int
    group: str
    detector: str | None = None


class _Presence(Protocol):
    @property
    def presence(self) -> bool: ...


def termination_code(reason: str, max_out: bool) -> EventCode:
    """How a green ended: the engine's max-out, else the strategy's gap-out or force-off."""
    if max_out:
        return EventCode.PHASE_MAX_OUT
    if reason == "gap_out":
        return EventCode.PHASE_GAP_OUT
    return EventCode.PHASE_FORCE_OFF


class EventLog:
    """Derives the event log of one intersection from successive cabinet readings.

    Feed every successful read with :meth:`displayed` and :meth:`presence`, every engine
    step with :meth:`engine_step`, every traffic view with :meth:`calls`; call :meth:`reset`
    when a read failed, so that the next read is a fresh baseline rather than a jump
    reported as transitions that nobody saw.
    """

    def __init__(self, x: Intersection) -> None:
        self.x = x
        n = x.n
        self._ped = tuple(g.kind is GroupKind.PEDESTRIAN for g in x.groups)
        # The end of a group's red clearance: when its longest all-red to a conflicting group
        # has run out (from then on every conflicting green is allowed).
        self._red_clear = tuple(
            max(
                (x.all_red(i, j) for j in range(n) if x.conflict[i][j]),
                default=x.groups[i].red_clearance_s,
            )
            for i in range(n)
        )
        # Events are immutable and the same every time: build each once.
        self._ev = {
            code: tuple(SignalEvent(int(code), i + 1, g.id) for i, g in enumerate(x.groups))
            for code in EventCode
            if code < EventCode.DETECTOR_OFF
        }
        recall = set(x.config.strategy.recall)
        self._call_logged = tuple(g.id not in recall for g in x.groups)
        self._channels: list[tuple[int, SignalEvent, SignalEvent]] = []
        self._det: dict[str, tuple[int, str, bool]] = {}
        for d in x.config.detectors:
            button = d.kind is DetectorKind.PUSHBUTTON
            param = d.channel + 1 if d.channel is not None else 0
            self._det[d.id] = (param, d.group, button)
            if d.channel is None:
                continue
            on, off = (
                (EventCode.PED_DETECTOR_ON, EventCode.PED_DETECTOR_OFF)
                if button
                else (EventCode.DETECTOR_ON, EventCode.DETECTOR_OFF)
            )
            self._channels.append(
                (
                    d.channel,
                    SignalEvent(int(on), param, d.group, d.id),
                    SignalEvent(int(off), param, d.group, d.id),
                )
            )
        self._channel_nos = tuple(ch for ch, _, _ in self._channels)
        self._top_channel = max(self._channel_nos, default=-1)
        self._shown: tuple[int, ...] | None = None
        self._present: list[bool] | None = None
        self._calls: list[bool] | None = None
        self._red_due: dict[int, float] = {}
        self._ending: dict[int, tuple[EventCode, float]] = {}

    def reset(self) -> None:
        """Forget the last reading (a read failed): the next one only sets the baseline."""
        self._shown = None
        self._present = None
        self._red_due.clear()

    # -- what the heads show ---------------------------------------------------------------------

    def displayed(self, codes: Sequence[int], now: float) -> list[SignalEvent]:
        """Events between the previous reading of the displayed codes and this one."""
        prev = self._shown
        # (most reads repeat the previous display: keep its codes rather than convert again)
        shown = prev if prev is not None and prev == codes else tuple(map(int, codes))
        self._shown = shown
        out: list[SignalEvent] = []
        if self._red_due:
            for i, due in list(self._red_due.items()):
                if now + 1e-9 >= due and shown[i] == _RED:
                    out.append(self._ev[EventCode.PHASE_END_RED_CLEARANCE][i])
                    del self._red_due[i]
        if prev is None or prev == shown or len(prev) != len(shown):
            return out
        for i, (p, c) in enumerate(zip(prev, shown, strict=True)):
            if p != c:
                if self._ped[i]:
                    self._ped_change(i, c, out)
                else:
                    self._vehicle_change(i, p, c, now, out)
        return out

    def _vehicle_change(self, i: int, p: int, c: int, now: float, out: list[SignalEvent]) -> None:
        ev = self._ev
        if p == _YELLOW:
            out.append(ev[EventCode.PHASE_END_YELLOW][i])
        if c == _GREEN:
            if self._red_due.pop(i, None) is not None:
                out.append(ev[EventCode.PHASE_END_RED_CLEARANCE][i])
            out.append(ev[EventCode.PHASE_BEGIN_GREEN][i])
        elif c == _YELLOW:
            if p == _GREEN:
                ending = self._ending.pop(i, None)
                if ending is not None and now - ending[1] <= TERMINATION_WINDOW_S:
                    out.append(ev[ending[0]][i])
            out.append(ev[EventCode.PHASE_BEGIN_YELLOW][i])
        elif c == _RED and p in (_YELLOW, _GREEN):
            out.append(ev[EventCode.PHASE_BEGIN_RED_CLEARANCE][i])
            self._red_due[i] = now + self._red_clear[i]
        elif c != _RED:
            self._red_due.pop(i, None)  # flash, dark: no red clearance runs

    def _ped_change(self, i: int, c: int, out: list[SignalEvent]) -> None:
        code = {
            _GREEN: EventCode.PED_BEGIN_WALK,
            _PED_CLEARANCE: EventCode.PED_BEGIN_CLEARANCE,
            _RED: EventCode.PED_BEGIN_DONT_WALK,
            _DARK: EventCode.PED_DARK,
        }.get(c)
        if code is not None:
            out.append(self._ev[code][i])

    # -- detectors -------------------------------------------------------------------------------

    def presence(self, readings: Sequence[_Presence]) -> list[SignalEvent]:
        """On/off events of the configured channels since the previous reading."""
        prev = self._present
        chans = self._channel_nos
        if len(readings) > self._top_channel:  # (always, unless the cabinet has fewer channels)
            now_on = [readings[ch].presence for ch in chans]
        else:
            n = len(readings)
            now_on = [readings[ch].presence if ch < n else False for ch in chans]
        self._present = now_on
        if prev is None or prev == now_on:  # (most reads: nothing switched)
            return []
        out: list[SignalEvent] = []
        for k, (_, on, off) in enumerate(self._channels):
            if now_on[k] != prev[k]:
                out.append(on if now_on[k] else off)
        return out

    def detector_fault(self, detector: str, kind: str, active: bool) -> SignalEvent:
        """The event of a detector alarm raised (``active``) or cleared."""
        param, group, button = self._det.get(detector, (0, detector.partition(":")[2], False))
        if button:
            code = EventCode.PED_DETECTOR_FAILED if active else EventCode.PED_DETECTOR_RESTORED
        elif active:
            code = DETECTOR_FAULT_CODES.get(kind, EventCode.DETECTOR_FAULT_OTHER)
        else:
            code = EventCode.DETECTOR_RESTORED
        return SignalEvent(int(code), param, group or detector, detector)

    # -- what the controller decides -------------------------------------------------------------

    def engine_step(
        self, before: Sequence[int], after: Sequence[int], code: EventCode, now: float
    ) -> None:
        """The engine ended greens in this step (``code``: 4, 5 or 6); matched with the yellow
        the cabinet shows next."""
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            if int(b) == _GREEN and int(a) == _YELLOW and not self._ped[i]:
                self._ending[i] = (code, now)

    def calls(self, view: TrafficView) -> list[SignalEvent]:
        """Call registered / dropped events since the previous view (recall groups left out)."""
        calls = [g.call for g in view.groups]
        prev, self._calls = self._calls, calls
        if prev is None or prev == calls or len(prev) != len(calls):  # (equal: most views)
            return []
        out: list[SignalEvent] = []
        for i, (p, c) in enumerate(zip(prev, calls, strict=True)):
            if p == c or not self._call_logged[i]:
                continue
            if self._ped[i]:
                if c:
                    out.append(self._ev[EventCode.PED_CALL_REGISTERED][i])
            else:
                code = EventCode.PHASE_CALL_REGISTERED if c else EventCode.PHASE_CALL_DROPPED
                out.append(self._ev[code][i])
        return out
