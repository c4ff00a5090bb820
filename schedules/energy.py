"""How much power a dimmed LED street light draws, for energy estimates and fault checks.

Dimming an LED saves less than the dim level suggests: the driver's own losses do not shrink
in proportion to its load, so its efficiency drops at low load. The model here:

* ``x = level / 100`` is the share of full light output (and of full LED power);
* driver efficiency ``η(x) = η_full · (1 − k·(1 − x)³)`` — flat near full load, falling towards
  low load (``k = low_load_loss``, 0.3 by default: at 10 % the driver is about 22 % less
  efficient than at full load, in line with typical datasheet curves);
* input power ``P(x) = standby_w + rated_w · p(x)`` with ``p(x) = x · η_full / η(x)``,
  i.e. ``p(x) = x / (1 − k·(1 − x)³)``, so ``p(1) = 1`` (``rated_w`` is the input power at
  full light) and ``p(0) = 0``: a lamp that is off draws only the node's standby power.

``p`` rises monotonically for any ``0 ≤ k < 1``. ``driver_eff_full`` cancels out of the input
power once it is normalised to ``rated_w``; it is kept to tell how much of that power reaches
the LEDs (:meth:`LampPowerModel.led_power_w`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["LampPowerModel"]


@dataclass(frozen=True)
class LampPowerModel:
    """Input power of one lamp (LED module + driver + node) as a function of its dim level.

    ``rated_w``: input power at 100 %; ``standby_w``: what the node and driver draw with the
    light off; ``driver_eff_full``: driver efficiency at full load; ``low_load_loss``: how much
    of that efficiency is lost towards zero load (``k`` in the module docstring).
    """

    rated_w: float
    standby_w: float = 0.5
    driver_eff_full: float = 0.92
    low_load_loss: float = 0.3

    def __post_init__(self) -> None:
        if not self.rated_w >= 0.0:
            raise ValueError(f"rated_w must be ≥ 0 W, not {self.rated_w}")
        if not self.standby_w >= 0.0:
            raise ValueError(f"standby_w must be ≥ 0 W, not {self.standby_w}")
        if not 0.0 < self.driver_eff_full <= 1.0:
            raise ValueError(f"driver_eff_full must be in (0, 1], not {self.driver_eff_full}")
        if not 0.0 <= self.low_load_loss < 1.0:
            raise ValueError(f"low_load_loss must be in [0, 1), not {self.low_load_loss}")

    @staticmethod
    def _share(level: float) -> float:
        # Out-of-range levels are clamped rather than refused: this is an estimate, and a node
        # reporting 100.2 % must not break a fault check.
        if not level > 0.0:
            return 0.0
        return min(level, 100.0) / 100.0

    def efficiency(self, level: float) -> float:
        """Driver efficiency (0–1) at ``level`` percent; at 0 % the low-load limit."""
        x = self._share(level)
        return self.driver_eff_full * (1.0 - self.low_load_loss * (1.0 - x) ** 3)

    def load_share(self, level: float) -> float:
        """``p(level)``: input power above standby as a share of ``rated_w`` (0 at 0 %, 1 at
        100 %, above the level's share in between because of driver losses)."""
        x = self._share(level)
        if x == 0.0:
            return 0.0
        return x / (1.0 - self.low_load_loss * (1.0 - x) ** 3)

    def power_w(self, level: float) -> float:
        """Input power in watts at ``level`` percent (standby only when off)."""
        return self.standby_w + self.rated_w * self.load_share(level)

    def led_power_w(self, level: float) -> float:
        """Power that reaches the LEDs at ``level`` percent, in watts."""
        return self.rated_w * self.driver_eff_full * self._share(level)

    def energy_wh(
        self,
        levels_over_time: Iterable[tuple[dt.datetime, float]],
        end: dt.datetime | None = None,
    ) -> float:
        """Energy in Wh over samples ``(instant, level)`` in time order.

        Each level holds until the next sample (a lamp holds its level between commands); the
        last one holds until ``end`` when given, else it only marks the end of the period.
        """
        total = 0.0
        prev: tuple[dt.datetime, float] | None = None
        for at, level in levels_over_time:
            if prev is not None:
                # Timestamps: subtracting datetimes of one zone gives wall-clock time in
                # Python, an hour off across a DST change.
                seconds = at.timestamp() - prev[0].timestamp()
                if seconds < 0:
                    raise ValueError(f"samples go back in time at {at.isoformat()}")
                total += self.power_w(prev[1]) * seconds
            prev = (at, level)
        if prev is not None and end is not None:
            total += self.power_w(prev[1]) * max(0.0, end.timestamp() - prev[0].timestamp())
        return total / 3600.0

    def ramp_energy_wh(
        self, start_level: float, end_level: float, seconds: float, step_s: float = 60.0
    ) -> float:
        """Energy in Wh while the level moves linearly from ``start_level`` to ``end_level``
        over ``seconds`` (Simpson's rule, sampled at least every ``step_s``)."""
        if seconds <= 0.0:
            return 0.0
        if start_level == end_level:
            return self.power_w(start_level) * seconds / 3600.0
        n = max(2, math.ceil(seconds / step_s))
        n += n % 2  # Simpson needs an even number of intervals
        h = seconds / n
        acc = self.power_w(start_level) + self.power_w(end_level)
        for k in range(1, n):
            level = start_level + (end_level - start_level) * k / n
            acc += (4.0 if k % 2 else 2.0) * self.power_w(level)
        return acc * h / 3.0 / 3600.0
