"""Which lighting class measured traffic allows for a group, and how bright that class is.

The idea comes from CIE 115 and CEN/TR 13201-1: a road is designed for a lighting class
(say M3) at full traffic, and the selection parameters — traffic volume among them — may
justify a dimmer class (M4, M5 …) when traffic is low. A group never goes dimmer than its
``lowest_class``, and the level a class needs is proportional to its maintained luminance
(EN 13201-2)::

    level(class) = 100 % × luminance(class) / luminance(design class)

:class:`ClassSelector` is the per-group state machine. It is pure: the caller feeds counts and
the instant ``now`` as float seconds from one monotonic-ish clock (the controller's monotonic
clock, a bench's simulated seconds); it never reads a clock itself. Its rules:

* **Brighter at once.** A count that needs a brighter class than the current one takes effect
  on that very count — more light is always the safe side.
* **Dimmer only after a hold.** A dimmer class is used only when *every* count during the last
  ``hold_s`` allowed it, so lights do not follow every passing platoon of motorbikes.
* **Straight to the lowest justified class.** When the hold of several dimmer classes has
  passed, the selector goes straight to the dimmest of them instead of one class per hold.
  Each class has its own hold clock (the last time a count needed something brighter), so a
  jump M3 → M5 happens only when the counts of the whole last ``hold_s`` allowed M5 — exactly
  the evidence a one-class-at-a-time walk would have waited for twice. Walking would only burn
  energy for ``hold_s`` per class with no gain in safety; the visible change is softened by the
  controller's slow dimming ramp instead.
* **Fail bright.** No count for ``stale_after_s`` (a dead counter, a cut cable): the design
  class at once, and :meth:`ClassSelector.stale` is true so the controller can raise an alarm.
  Before the first count the design class holds too (nothing is known yet); when counts
  resume, low traffic must again last a full ``hold_s`` before any dimming.
* A count that is not a finite, non-negative number needs the design class (garbage from a
  counter is treated like heavy traffic, never like an empty road).

Overrides are explicit human orders and are not limited by traffic; the caller skips the
cap for them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from controller.config import LightGroup, LightingClass, TrafficBand, TrafficSettings

__all__ = [
    "BandLike",
    "ClassSelector",
    "ClassStatus",
    "TrafficReading",
    "class_for_flow",
    "class_for_ratio",
    "class_level",
    "required_level",
]


@runtime_checkable
class TrafficReading(Protocol):
    """Anything with a flow in vehicles per hour, e.g. :class:`devices.lights.TrafficCount`.

    If it also has an aware ``ts`` datetime, repeated or older counts are ignored.
    """

    @property
    def per_hour(self) -> float:
        """Flow in vehicles per hour."""
        ...


BandLike = TrafficBand | tuple[float, int]
"""A traffic band as in the config, or a plain ``(max_ratio, steps)`` pair."""


#: Classes by number (index 0 unused), so the hot path works on plain ints.
_BY_INDEX: tuple[LightingClass, ...] = (
    LightingClass.M1,
    *(LightingClass(f"M{i}") for i in range(1, 7)),
)
_INDEX: dict[LightingClass, int] = {c: int(c.value[1]) for c in LightingClass}


def _bands(bands: Iterable[BandLike]) -> tuple[tuple[float, int], ...]:
    out: list[tuple[float, int]] = []
    for b in bands:
        if isinstance(b, TrafficBand):
            out.append((float(b.max_ratio), int(b.steps)))
        else:
            out.append((float(b[0]), int(b[1])))
    out.sort(key=lambda b: b[0])
    return tuple(out)


def class_level(cls: LightingClass, design: LightingClass) -> float:
    """Level (%) that class ``cls`` needs on a road designed for ``design`` at 100 %.

    A class brighter than the design class still gets 100 %: the lamps cannot do more.
    """
    return round(min(100.0, 100.0 * cls.luminance / design.luminance), 6)


def required_level(program_level: float, cls: LightingClass, design: LightingClass) -> float:
    """The program's level limited to what class ``cls`` needs: ``min(program, level(cls))``."""
    return min(program_level, class_level(cls, design))


def class_for_ratio(
    ratio: float,
    design: LightingClass,
    lowest: LightingClass | None,
    bands: Iterable[BandLike],
) -> LightingClass:
    """The class a traffic ratio (flow / capacity) allows, between ``design`` and ``lowest``.

    The first band (by increasing ``max_ratio``) with ``ratio < max_ratio`` says how many
    classes below the design class are allowed; above every band, none. A ratio that is not a
    finite non-negative number allows nothing (fail bright).
    """
    if lowest is None:
        return design
    return _BY_INDEX[_index_for_ratio(ratio, _INDEX[design], _INDEX[lowest], _bands(bands))]


def _index_for_ratio(
    ratio: float, design: int, lowest: int, bands: tuple[tuple[float, int], ...]
) -> int:
    if lowest <= design or not (ratio >= 0 and ratio != math.inf):  # NaN fails ``>=``
        return design
    for max_ratio, steps in bands:
        if ratio < max_ratio:
            return min(design + max(0, steps), lowest)
    return design


def class_for_flow(flow_vph: float, group: LightGroup, bands: Iterable[BandLike]) -> LightingClass:
    """The class a measured flow (vehicles/hour) allows for ``group``, with no hold.

    Groups that are never traffic-dimmed (``never_dim``, no ``traffic_segment`` or no
    ``lowest_class``) always get their design class.
    """
    if not group.dims_with_traffic:
        return group.lighting_class
    return class_for_ratio(
        flow_vph / group.capacity_vph, group.lighting_class, group.lowest_class, bands
    )


@dataclass(frozen=True)
class ClassStatus:
    """A selector's view at one instant, for logs, status topics and the API."""

    group: str
    current: LightingClass
    required: LightingClass
    design: LightingClass
    lowest: LightingClass
    dims_with_traffic: bool
    flow_vph: float | None  # latest count, None before the first
    ratio: float | None  # flow / capacity
    count_age_s: float | None  # seconds since the latest count
    stale: bool
    hold_left_s: float | None  # seconds until the next dimmer class, if traffic stays low
    cap_level: float  # percent
    reason: str

    def as_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {
            "group": self.group,
            "class": self.current.value,
            "required": self.required.value,
            "design": self.design.value,
            "lowest": self.lowest.value,
            "dims_with_traffic": self.dims_with_traffic,
            "flow_vph": self.flow_vph,
            "ratio": self.ratio,
            "count_age_s": self.count_age_s,
            "stale": self.stale,
            "hold_left_s": self.hold_left_s,
            "cap_level": self.cap_level,
            "reason": self.reason,
        }


class ClassSelector:
    """The lighting class one group may use, from the traffic counts of its segment.

    ``now`` is float seconds on the caller's clock, the same clock for every call. Calls
    with a ``now`` earlier than a previous one are tolerated (they never dim earlier).
    ``start`` is when the selector began listening; by default the first ``now`` it sees.
    A missing counter is reported as :meth:`stale` only once ``stale_after_s`` has passed
    since then, so a controller restart does not raise an alarm before the first count.
    """

    def __init__(
        self,
        group: LightGroup,
        settings: TrafficSettings | None = None,
        *,
        start: float | None = None,
    ) -> None:
        settings = settings if settings is not None else TrafficSettings()
        self.group_id = group.id
        self.design: LightingClass = group.lighting_class
        self.dims_with_traffic = group.dims_with_traffic
        self.lowest: LightingClass = (
            group.lowest_class
            if self.dims_with_traffic and group.lowest_class is not None
            else group.lighting_class
        )
        self.capacity_vph = group.capacity_vph
        self.bands = _bands(settings.bands)
        self.hold_s = float(settings.hold_s)
        self.stale_after_s = float(settings.stale_after_s)
        if not group.dims_with_traffic:
            self._why_fixed = (
                "never_dim"
                if group.never_dim
                else "no traffic_segment"
                if group.traffic_segment is None
                else "no lowest_class below the design class"
            )
        else:
            self._why_fixed = ""
        self._start = start
        self._last_obs: float | None = None
        self._last_ts: dt.datetime | None = None
        self._last_flow: float | None = None
        self._last_required: LightingClass = self.design
        self._design_i = _INDEX[self.design]
        self._lowest_i = _INDEX[self.lowest]
        self._last_required_i = self._design_i
        self._levels = tuple(class_level(c, self.design) for c in _BY_INDEX)
        # _since[k]: the latest instant a count needed a class with index <= k (as bright as
        # Mk or brighter). A class Mc may be used once now - _since[c - 1] >= hold_s.
        self._since: list[float] = [-math.inf] * 7
        self.accepted = 0
        self.ignored = 0

    # -- inputs -----------------------------------------------------------------------------
    def observe(self, count: float | TrafficReading, now: float) -> LightingClass:
        """Take a count (a flow in veh/h, or a count object) received at ``now``.

        Returns the class in force right after it. A count object whose ``ts`` is not newer
        than the previous count's is a repeat and is ignored (unless the counter was stale,
        in which case its clock may have been reset).
        """
        self._touch(now)
        if isinstance(count, int | float):
            flow = float(count)
            ts = None
        else:
            flow = float(count.per_hour)
            ts_raw = getattr(count, "ts", None)
            ts = ts_raw if isinstance(ts_raw, dt.datetime) else None
        fresh = self._fresh(now)
        if (
            ts is not None
            and self._last_ts is not None
            and fresh
            and _comparable(ts, self._last_ts)
            and ts <= self._last_ts
        ):
            self.ignored += 1
            return self.current(now)
        if not fresh:
            # Counts (re)start after silence: nothing is known about the time before, so low
            # traffic has to last a full hold from now on before any dimming.
            for k in range(7):
                self._since[k] = now
        req = _index_for_ratio(flow / self.capacity_vph, self._design_i, self._lowest_i, self.bands)
        since = self._since
        for k in range(req, 7):
            if now > since[k]:
                since[k] = now
        self._last_obs = now if self._last_obs is None else max(self._last_obs, now)
        self._last_ts = ts if ts is not None else self._last_ts
        self._last_flow = flow
        self._last_required = _BY_INDEX[req]
        self._last_required_i = req
        self.accepted += 1
        return self.current(now)

    # -- outputs ----------------------------------------------------------------------------
    def stale(self, now: float) -> bool:
        """Whether the counter is silent: no count for ``stale_after_s`` (alarm-worthy).

        Always false for a group that is not traffic-dimmed.
        """
        self._touch(now)
        if not self.dims_with_traffic:
            return False
        ref = self._last_obs if self._last_obs is not None else self._start
        assert ref is not None
        return now - ref >= self.stale_after_s

    def required(self, now: float) -> LightingClass:
        """The class the latest count needs, with no hold (design class when stale or none)."""
        if not self._fresh(now):
            return self.design
        return self._last_required

    def current(self, now: float) -> LightingClass:
        """The class in force at ``now``: never dimmer than :meth:`required`."""
        if not self._fresh(now):
            return self.design
        return _BY_INDEX[self._current_i(now)]

    def _current_i(self, now: float) -> int:
        best = self._design_i
        since = self._since
        for c in range(best + 1, self._last_required_i + 1):
            if now - since[c - 1] >= self.hold_s:
                best = c
            else:
                break  # _since is non-decreasing in k: no dimmer class can be ready either
        return best

    def cap_level(self, now: float) -> float:
        """The highest level (%) the program may keep at ``now``: the current class's level."""
        if not self._fresh(now):
            return self._levels[self._design_i]
        return self._levels[self._current_i(now)]

    def limit(self, program_level: float, now: float) -> float:
        """``min(program_level, cap_level(now))``."""
        return min(program_level, self.cap_level(now))

    def hold_left_s(self, now: float) -> float | None:
        """Seconds until the next dimmer class if traffic stays as the latest count; else None."""
        cur = self.current(now)
        if not self._fresh(now) or cur.number >= self._last_required.number:
            return None
        return max(0.0, self.hold_s - (now - self._since[cur.number]))

    def status(self, now: float) -> ClassStatus:
        """Everything about the selector at ``now``, with a human reason."""
        cur = self.current(now)
        req = self.required(now)
        flow = self._last_flow
        ratio = None if flow is None else flow / self.capacity_vph
        age = None if self._last_obs is None else now - self._last_obs
        return ClassStatus(
            group=self.group_id,
            current=cur,
            required=req,
            design=self.design,
            lowest=self.lowest,
            dims_with_traffic=self.dims_with_traffic,
            flow_vph=flow,
            ratio=ratio,
            count_age_s=age,
            stale=self.stale(now),
            hold_left_s=self.hold_left_s(now),
            cap_level=class_level(cur, self.design),
            reason=self.explain(now),
        )

    def explain(self, now: float) -> str:
        """Why the group is in its class now, in one line."""
        cur = self.current(now)
        level = f"{class_level(cur, self.design):g} %"
        if not self.dims_with_traffic:
            return f"{cur.value} (design, {level}): not traffic-dimmed ({self._why_fixed})"
        if self._last_obs is None:
            waited = 0.0 if self._start is None else now - self._start
            state = "stale, fail bright" if self.stale(now) else "design"
            return (
                f"{cur.value} ({state}, {level}): no traffic count yet "
                f"({waited:.0f} s; stale after {self.stale_after_s:g} s)"
            )
        age = now - self._last_obs
        if self.stale(now):
            return (
                f"{cur.value} (design, fail bright, {level}): no traffic count for {age:.0f} s "
                f"(stale after {self.stale_after_s:g} s)"
            )
        flow = self._last_flow if self._last_flow is not None else float("nan")
        req = self._last_required
        tag = "design" if cur == self.design else "lowest" if cur == self.lowest else "dimmed"
        text = (
            f"{cur.value} ({tag}, {level}): {flow:.0f} veh/h = {flow / self.capacity_vph:.1%} "
            f"of {self.capacity_vph:g} veh/h allows {req.value} (lowest {self.lowest.value})"
        )
        left = self.hold_left_s(now)
        if left is not None:
            # the class reached when this hold ends, if no busier count comes (possibly several
            # classes down at once: their holds can end together)
            nxt = _BY_INDEX[self._current_i(now + left)]
            text += f"; {nxt.value} after {left:.0f} s more of low traffic (hold {self.hold_s:g} s)"
        return text

    # -- internals --------------------------------------------------------------------------
    def _touch(self, now: float) -> None:
        if self._start is None:
            self._start = now

    def _fresh(self, now: float) -> bool:
        """A count has arrived and the latest is younger than ``stale_after_s``."""
        self._touch(now)
        if not self.dims_with_traffic or self._last_obs is None:
            return False
        return now - self._last_obs < self.stale_after_s


def _comparable(a: dt.datetime, b: dt.datetime) -> bool:
    return (a.tzinfo is None) == (b.tzinfo is None)
