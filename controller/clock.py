"""The one clock of the controller (design principle 2).

Production runs on :class:`SystemClock`; tests and benchmarks inject a :class:`ManualClock`
and move time themselves, so that control logic never reads the OS clock on its own.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "ScaledClock", "SystemClock"]


class Clock(Protocol):
    """Source of the current instant."""

    def now(self) -> dt.datetime:
        """The current instant, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps backwards (for timeouts and rates)."""
        ...

    @property
    def is_real(self) -> bool:
        """True for the machine's own time (wake-ups can be scheduled with real timers)."""
        ...

    @property
    def speed(self) -> float:
        """Clock seconds per real second: 1 in production, more in the demo, 0 if manual."""
        ...


class SystemClock:
    """Wall-clock time of the machine."""

    is_real = True
    speed = 1.0

    def now(self) -> dt.datetime:
        """The current instant in UTC."""
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to: for tests, previews and benchmarks."""

    is_real = False
    speed = 0.0

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start instant")
        self._now = start.astimezone(dt.UTC)
        self._mono = 0.0

    def now(self) -> dt.datetime:
        """The instant the clock was last set to."""
        return self._now

    def monotonic(self) -> float:
        """Seconds advanced since creation."""
        return self._mono

    def advance(self, seconds: float) -> dt.datetime:
        """Move forward by ``seconds`` (never backwards) and return the new instant."""
        if seconds < 0:
            raise ValueError("a clock does not run backwards")
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds
        return self._now

    def set(self, instant: dt.datetime) -> None:
        """Jump to ``instant`` (must not be earlier than now)."""
        if instant.tzinfo is None:
            raise ValueError("instant must be timezone-aware")
        delta = (instant - self._now).total_seconds()
        self.advance(delta)


class ScaledClock:
    """Time that starts at ``start`` and runs ``speed`` times faster than the machine's.

    The demo uses it to show a whole night in minutes; everything that shares the clock
    (controller and simulated nodes) sees the same accelerated time.
    """

    is_real = False

    def __init__(self, start: dt.datetime, speed: float) -> None:
        if start.tzinfo is None:
            raise ValueError("ScaledClock needs a timezone-aware start instant")
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._start = start.astimezone(dt.UTC)
        self._t0 = time.monotonic()

    def now(self) -> dt.datetime:
        """Start instant plus scaled elapsed time."""
        return self._start + dt.timedelta(seconds=self.monotonic())

    def monotonic(self) -> float:
        """Scaled seconds since creation."""
        return (time.monotonic() - self._t0) * self.speed
