"""Detectors: raw cabinet and camera readings in, what the strategies may rely on out.

The controller sees the street only through its detectors (design principle 5). This module
turns their raw readings into a :class:`TrafficView` per step and keeps them honest:

**Readings.** :meth:`DetectorBank.update_loop` takes what the cabinet reports per channel:
16-bit wrapping counters of actuations and of occupancy (0.1 s units) and the presence bit.
Counters are unwrapped modulo 65,536. A step that is larger than the saturation flow of the
group's lanes allows since the previous read (with slack), or that goes *backwards* by less
than a wrap, is **erratic**: it is counted, the counter is re-based on the new value and the
step is ignored. Occupancy that grows by more than the elapsed time, values outside 16 bits and
non-numbers are **garbage**: counted, ignored, never a crash. :meth:`DetectorBank.update_camera`
takes an AI camera's per-interval count (vehicles that crossed the stop line) and queue.
:meth:`DetectorBank.update_loops` takes a whole cabinet read at once (the same as
:meth:`~DetectorBank.update_loop` per channel, cheaper: reads come ten times a second).

**Per group** (:class:`GroupView`):

* ``call`` — demand waiting: stop-line presence, vehicles counted upstream that reached the
  stop line, a camera queue, a push-button press since the last walk, a recall, or a FAILED
  detector (a constant call: a group is never starved by a broken loop). While the group is not
  green the call *locks* (NEMA locking memory) until its next green.
* ``gap_s`` — time since the last actuation of the group's healthy loops (0 while occupied);
  a failed group reports 0, so an actuated controller runs it to max green (fail-safe).
* ``arrivals_vph`` — an exponentially weighted mean (time constant ``arrival_tau_s``) of
  arrivals: upstream counts, else camera arrivals (crossings + queue growth), else stop-line
  counts. During a failure it keeps its last value.
* ``queue`` — vehicles waiting at the stop line: upstream counts reach the stop line
  ``distance / (0.9 × speed)`` later (vehicles slow down towards the stop line), stop-line counts leave; it is re-based on the camera's queue when
  a fresh camera message arrives, zeroed when the stop-line loop shows a gap during green
  (the queue is gone) or stays empty during red (a phantom vehicle), and raised when the
  upstream loop stays occupied during red (the queue reaches back to it). Without counts (a
  failed or missing loop) it is modelled from ``arrivals_vph``, the saturation flow and the
  signals. ``approaching`` lists when the vehicles between the upstream loop and the stop line
  will arrive.

**Diagnostics.** A detector is FAILED when it is *silent* (no actuation for
``silent_loop_s``, 30 min by default; push buttons ``silent_pushbutton_s``), *stuck* (presence
on for ``stuck_on_s``, 5 min), *erratic* (``erratic_events`` erratic or garbage readings
within ``erratic_window_s``), *chattering* (more presence edges than traffic can make) or,
for a camera, *stale* (no message for ``stale_camera_s``). A failure raises a
:class:`DetectorAlarm` (:meth:`DetectorBank.alarms`, and an event for :meth:`take_events`);
the detector recovers after ``recover_after_s`` of sane behaviour.

The bank must know what the signals show (locking calls, walks, queue resets): pass them with
:meth:`DetectorBank.update_signals` or ``view(now, signals)``. Everything is pure: no clock,
no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, Protocol

from controller.signals.model import DetectorKind, GroupKind, Intersection, Signal

__all__ = [
    "DetectorAlarm",
    "DetectorBank",
    "DetectorEvent",
    "DetectorSettings",
    "DetectorTotal",
    "FaultKind",
    "GroupView",
    "LoopReading",
    "TrafficView",
]

FaultKind = Literal["silent", "stuck", "erratic", "chattering", "stale"]

_WRAP = 1 << 16
_HALF = 1 << 15
_VEHICLE_SPACING_M = 7.0  # a queued car and its gap
_LOST_S = 2.0  # start-up lost time assumed for modelled discharge
_MAX_QUEUE_PER_LANE = 500  # what the camera protocol allows per lane


@dataclass(frozen=True)
class DetectorSettings:
    """Thresholds of the detector diagnostics and estimators."""

    silent_loop_s: float = 1800.0
    """A loop with no actuation this long is FAILED (silent)."""
    silent_pushbutton_s: float = 86_400.0
    """A push button nobody pressed for this long is FAILED (silent)."""
    silent_camera_s: float = 1800.0
    """A camera zone that counted nothing this long is FAILED (silent)."""
    stale_camera_s: float = 60.0
    """A camera zone without any message this long is FAILED (stale)."""
    stuck_on_s: float = 300.0
    """Presence on without a break this long is FAILED (stuck)."""
    erratic_events: int = 3
    """This many erratic or garbage readings ..."""
    erratic_window_s: float = 300.0
    """... within this window make the detector FAILED (erratic)."""
    chatter_edges_per_lane: int = 12
    """More presence on-edges than this per lane within ``chatter_window_s`` is chattering."""
    chatter_window_s: float = 10.0
    recover_after_s: float = 300.0
    """A FAILED detector recovers after behaving sanely this long."""
    diagnose_every_s: float = 1.0
    """The time-based judgements (silent, stuck, stale, recovered: minutes each) are made at
    most this often per detector; an erratic reading or a presence edge is judged at once.
    Judging every detector at every read cost more than the rest of a signal step."""
    saturation_vph_per_lane: float = 1800.0
    count_slack: int = 2
    """Counts a read may show beyond 1.5 × saturation flow before it is erratic."""
    max_press_rate_per_s: float = 2.0
    """Push-button presses faster than this are erratic."""
    arrival_tau_s: float = 180.0
    """Time constant of the arrival-rate estimate."""
    queue_gap_reset_s: float = 2.5
    """A stop-line gap this long during green (after start-up) proves the queue is gone."""
    phantom_reset_s: float = 5.0
    """An empty stop-line loop this long during red proves the estimated queue is phantom."""
    spillback_s: float = 3.0
    """An upstream loop occupied this long during red shows the queue reaches back to it."""
    camera_fresh_factor: float = 2.0
    """A camera queue is fresh for this many of its intervals."""


@dataclass(frozen=True)
class DetectorAlarm:
    """A FAILED detector, for the controller to publish and log."""

    detector: str
    kind: FaultKind
    since: float
    detail: str


@dataclass(frozen=True)
class DetectorEvent:
    """An alarm raised (``active``) or cleared at ``t``."""

    t: float
    alarm: DetectorAlarm
    active: bool


@dataclass(frozen=True)
class DetectorTotal:
    """One detector's cumulative readings (only the believable ones) and its health."""

    detector: str
    group: str
    kind: DetectorKind
    count: int
    """Actuations (loops, camera crossings) or presses (push buttons)."""
    occupied_s: float
    """Seconds its presence was on (loops with an occupancy register; else 0)."""
    fault: FaultKind | None
    """The diagnosis while the detector is FAILED, else None."""


@dataclass(frozen=True)
class GroupView:
    """What a strategy knows about one signal group."""

    group: str
    kind: GroupKind
    call: bool
    call_since: float | None
    """When the current call started (None: no call, or the group is green)."""
    gap_s: float
    arrivals_vph: float
    """Arrivals per hour, all lanes (pedestrian groups: presses per hour)."""
    queue: float
    """Vehicles waiting at the stop line (pedestrian groups: presses since the last walk)."""
    approaching: tuple[float, ...]
    """Seconds from now until each vehicle counted upstream reaches the stop line."""
    presence: bool
    failed: bool


_VIEW_FIELDS = (
    "group",
    "kind",
    "call",
    "call_since",
    "gap_s",
    "arrivals_vph",
    "queue",
    "approaching",
    "presence",
    "failed",
)
# _new_group_view below must stay in step with GroupView: fail at import, not subtly.
_view_fields = tuple(f.name for f in fields(GroupView))
if _view_fields != _VIEW_FIELDS or hasattr(GroupView, "__post_init__"):  # pragma: no cover
    raise ImportError("GroupView changed: update _VIEW_FIELDS and _new_group_view")


def _new_group_view(
    group: str,
    kind: GroupKind,
    call: bool,
    call_since: float | None,
    gap_s: float,
    arrivals_vph: float,
    queue: float,
    approaching: tuple[float, ...],
    presence: bool,
    failed: bool,
) -> GroupView:
    """``GroupView(...)`` at a third of the cost, for the bank's per-step views.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (about
    1.2 µs for ten fields, and a view is built for every group at every step). This fills the
    instance's ``__dict__`` at once instead: the same class, fields, equality, hash and
    immutability (the import-time check above keeps the field list honest).
    """
    v: GroupView = object.__new__(GroupView)
    v.__dict__.update(
        group=group,
        kind=kind,
        call=call,
        call_since=call_since,
        gap_s=gap_s,
        arrivals_vph=arrivals_vph,
        queue=queue,
        approaching=approaching,
        presence=presence,
        failed=failed,
    )
    return v


@dataclass(frozen=True)
class TrafficView:
    """Every group at ``t``, in the intersection's group order."""

    t: float
    groups: tuple[GroupView, ...]
    index: dict[str, int] = field(repr=False)

    def group(self, gid: str) -> GroupView:
        """The view of one group by id."""
        return self.groups[self.index[gid]]


class LoopReading(Protocol):
    """One cabinet channel as read (e.g. :class:`devices.cabinet.DetectorReading`)."""

    @property
    def count(self) -> int:
        """The 16-bit wrapping actuation counter."""

    @property
    def occupancy(self) -> int | None:
        """The 16-bit wrapping occupancy in 0.1 s, None when it was not read this time."""

    @property
    def presence(self) -> bool:
        """Whether the detector is occupied now."""


class _Detector:
    """State and diagnostics of one detector (loop, push button or camera zone)."""

    __slots__ = (
        "cam_interval",
        "cam_queue",
        "cam_t",
        "count",
        "created",
        "diagnosed_t",
        "distance_m",
        "edges",
        "erratic",
        "erratic_total",
        "fault",
        "fault_detail",
        "fault_since",
        "garbage",
        "gidx",
        "id",
        "kind",
        "lanes",
        "last_activity",
        "last_on",
        "last_read",
        "last_sent",
        "news",
        "occ_s",
        "occ_sent",
        "occupied_s",
        "presence",
        "presence_since",
        "raw_count",
        "raw_occ",
        "sane_since",
    )

    def __init__(self, did: str, kind: DetectorKind, gidx: int, lanes: int, dist: float) -> None:
        self.id = did
        self.kind = kind
        self.gidx = gidx
        self.lanes = lanes
        self.distance_m = dist
        self.raw_count: int | None = None
        self.raw_occ: int | None = None
        self.occ_s: float | None = None
        self.count = 0
        self.occupied_s = 0.0
        self.last_read: float | None = None
        self.last_sent: float | None = None  # when the latest read was asked for
        self.occ_sent: float | None = None  # ... the latest read that carried occupancy
        self.presence = False
        self.presence_since: float | None = None
        self.last_on = -math.inf  # last time it was occupied or counted
        self.last_activity: float | None = None
        self.created: float | None = None  # added at run time (camera by group id)
        self.edges: deque[float] = deque()
        self.erratic: deque[float] = deque()
        self.garbage = 0
        self.erratic_total = 0
        self.diagnosed_t = -math.inf  # when _diagnose last judged it
        self.news = False  # an erratic reading or a presence edge not judged yet
        self.fault: FaultKind | None = None
        self.fault_since = 0.0
        self.fault_detail = ""
        self.sane_since: float | None = None
        # cameras
        self.cam_queue = 0
        self.cam_t: float | None = None
        self.cam_interval = 0.0

    @property
    def failed(self) -> bool:
        return self.fault is not None


class _GroupState:
    __slots__ = (
        "buttons_failed",
        "call_since",
        "dets_n",
        "failed_n",
        "green",
        "green_since",
        "healthy",
        "kind",
        "lanes",
        "last_eta",
        "latched",
        "loops_failed",
        "model_t",
        "presses",
        "queue",
        "rate_t",
        "recall",
        "red_since",
        "speed",
        "stop_clear_since",
        "stops",
        "transit",
        "up_on_since",
        "ups",
        "w_count",
        "w_time",
    )

    def __init__(self, kind: GroupKind, lanes: int, speed_kmh: float) -> None:
        self.kind = kind
        self.lanes = lanes
        self.speed = speed_kmh / 3.6
        self.green = False
        self.green_since: float | None = None
        self.red_since: float | None = None
        self.latched = False
        self.call_since: float | None = None
        self.queue = 0.0
        self.transit: deque[float] = deque()  # ETAs at the stop line, ascending
        self.last_eta = -math.inf
        self.presses = 0
        # exponentially weighted arrivals: count and observed time
        self.w_count = 0.0
        self.w_time = 0.0
        self.rate_t: float | None = None
        self.stop_clear_since: float | None = None  # stop-line loops all empty since
        self.up_on_since: float | None = None  # an upstream loop occupied since
        self.model_t: float | None = None  # last time the modelled queue was advanced
        self.recall = False
        # Facts about the group's detectors that change only when one fails, recovers or is
        # added (DetectorBank._refresh), kept so that the per-step views need not scan them.
        self.dets_n = 0
        self.failed_n = 0
        self.buttons_failed = False  # a push button is FAILED
        self.loops_failed = False  # a stop-line or upstream loop is FAILED
        self.healthy: list[_Detector] = []  # loops not FAILED, in configuration order
        self.stops: list[_Detector] = []  # ... of them the stop-line loops
        self.ups: list[_Detector] = []  # ... and the upstream loops


class DetectorBank:
    """All detectors of one intersection."""

    def __init__(self, x: Intersection, settings: DetectorSettings | None = None) -> None:
        self.x = x
        self.settings = settings or DetectorSettings()
        self._groups = [_GroupState(g.kind, g.lanes, g.speed_kmh) for g in x.groups]
        self._dets: dict[str, _Detector] = {}
        self._by_channel: dict[int, _Detector] = {}
        self._by_group: list[list[_Detector]] = [[] for _ in x.groups]
        self._loops_of: list[list[_Detector]] = [[] for _ in x.groups]
        self._cams_of: list[list[_Detector]] = [[] for _ in x.groups]
        self._others_of: list[list[_Detector]] = [[] for _ in x.groups]
        for d in x.config.detectors:
            gi = x.index[d.group]
            det = _Detector(d.id, d.kind, gi, x.groups[gi].lanes, d.distance_m)
            self._dets[d.id] = det
            self._by_group[gi].append(det)
            self._kind_of(gi, det).append(det)
            if d.channel is not None:
                self._by_channel[d.channel] = det
        self._recall = {x.index[g] for g in x.config.strategy.recall if g in x.index}
        self._gids = [g.id for g in x.groups]
        for gi in range(len(self._groups)):
            self._groups[gi].recall = gi in self._recall
            self._refresh(gi)
        self._events: list[DetectorEvent] = []
        self._start: float | None = None
        self._unknown_channels = 0
        self._unknown_cameras = 0
        self._t = -math.inf

    # -- inputs -------------------------------------------------------------------------------

    def update_signals(self, signals: Sequence[int], now: float) -> None:
        """What the signals show now (the output written to the cabinet), in group order."""
        self._started(now)
        for gi, code in enumerate(signals[: len(self._groups)]):
            g = self._groups[gi]
            green = code == Signal.GREEN
            if green and not g.green:
                self._advance_model(gi, now)
                g.green, g.green_since, g.red_since = True, now, None
                g.latched = False
                g.call_since = None
                g.presses = 0
            elif not green and g.green:
                self._advance_model(gi, now)
                g.green, g.green_since, g.red_since = False, None, now

    def update_loop(
        self,
        channel: int,
        count_raw: int,
        occupied_raw: int | None,
        presence: bool,
        now: float,
        *,
        occupied_s: float | None = None,
        sent: float | None = None,
    ) -> None:
        """One read of a cabinet channel, answered at ``now``.

        ``count_raw`` is the 16-bit wrapping actuation counter, ``occupied_raw`` the 16-bit
        wrapping occupancy in 0.1 s (or pass the cumulative ``occupied_s`` instead). ``sent``
        is when the read was asked for (default ``now``): the cabinet took its values
        somewhere in between, so what it counted since the previous read can span up to
        ``now`` minus the previous read's ``sent`` — the plausibility limits use that span,
        so that a loaded controller whose reads are answered late does not call its
        detectors erratic.
        """
        if self._start is None:
            self._start = now
        if now > self._t:  # max(self._t, now), also for NaN
            self._t = now
        det = self._by_channel.get(channel)
        if det is None:
            self._unknown_channels += 1
            return
        if (
            occupied_s is None
            and type(count_raw) is int
            and count_raw == det.raw_count
            and (
                occupied_raw is None
                or (
                    det.raw_occ is not None
                    and type(occupied_raw) is int
                    and occupied_raw == det.raw_occ
                )
            )
            and presence is det.presence
        ):
            self._unchanged(det, now, now if sent is None else min(sent, now), occupied_raw)
        else:
            self._changed(det, count_raw, occupied_raw, presence, now, occupied_s, sent)

    def update_loops(
        self, readings: Sequence[LoopReading], now: float, *, sent: float | None = None
    ) -> None:
        """One read of every cabinet channel at once: ``readings[channel]``.

        Exactly :meth:`update_loop` for each channel in order (without ``occupied_s``), at a
        fraction of the cost: a read of all channels comes ten times a second per
        intersection, and most channels did not change since the previous one.
        """
        if not readings:
            return
        if self._start is None:
            self._start = now
        if now > self._t:
            self._t = now
        last_sent = now if sent is None else min(sent, now)
        by_channel = self._by_channel
        unchanged = self._unchanged
        for channel, r in enumerate(readings):
            det = by_channel.get(channel)
            if det is None:
                self._unknown_channels += 1
                continue
            count_raw, occupied_raw, presence = r.count, r.occupancy, r.presence
            # The test of update_loop's fast path, written out (this loop is the hot one).
            if (
                type(count_raw) is int
                and count_raw == det.raw_count
                and (
                    occupied_raw is None
                    or (
                        det.raw_occ is not None
                        and type(occupied_raw) is int
                        and occupied_raw == det.raw_occ
                    )
                )
                and presence is det.presence
            ):
                unchanged(det, now, last_sent, occupied_raw)
            else:
                self._changed(det, count_raw, occupied_raw, presence, now, None, sent)

    def _unchanged(
        self, det: _Detector, now: float, last_sent: float, occupied_raw: int | None
    ) -> None:
        """A read that shows what the previous one did (most reads, at 10 Hz): what
        :meth:`_changed` would do with zero counts and zero occupancy, without the arithmetic
        (and :meth:`_presence` without a change of presence, written out)."""
        det.last_read = now
        det.last_sent = last_sent
        if occupied_raw is not None:
            det.occ_sent = last_sent
        if det.presence:
            det.last_on = now
            det.last_activity = now
            if det.kind is DetectorKind.STOPLINE and det.fault is None:
                g = self._groups[det.gidx]
                g.stop_clear_since = None
                if not g.green:
                    if g.call_since is None:
                        g.call_since = now
                    g.latched = True
        else:
            det.presence_since = None
        if det.news or not now - det.diagnosed_t < self.settings.diagnose_every_s:
            self._diagnose(det, now)

    def _changed(
        self,
        det: _Detector,
        count_raw: int,
        occupied_raw: int | None,
        presence: bool,
        now: float,
        occupied_s: float | None,
        sent: float | None,
    ) -> None:
        """A read of ``det`` that may show counts, occupancy or a change of presence."""
        dt = None if det.last_read is None else max(0.0, now - det.last_read)
        # The longest the cabinet can have counted since its previous answer (see above).
        span = None if det.last_sent is None else max(0.0, now - det.last_sent)
        # Occupancy may come with fewer reads than the counts (it is cumulative): its own span.
        occ_span = None if det.occ_sent is None else max(0.0, now - det.occ_sent)
        det.last_read = now
        det.last_sent = now if sent is None else min(sent, now)
        if occupied_s is not None or occupied_raw is not None:
            det.occ_sent = det.last_sent
        # -- counts
        counted = 0
        if not _is_u16(count_raw):
            self._bad(det, now, garbage=True)
        elif det.raw_count is None:
            det.raw_count = int(count_raw)
            g0 = self._groups[det.gidx]
            if g0.rate_t is None:
                g0.rate_t = now  # observed from here on, with or without arrivals
        else:
            step = (int(count_raw) - det.raw_count) % _WRAP
            det.raw_count = int(count_raw)
            if step:
                if step >= _HALF or step > self._max_counts(det, span or 0.0):
                    self._bad(det, now, garbage=False)
                else:
                    counted = step
        # -- occupancy
        if occupied_s is not None:
            if not _is_num(occupied_s) or occupied_s < 0:
                self._bad(det, now, garbage=True)
            else:
                if det.occ_s is not None and occ_span is not None:
                    grow = occupied_s - det.occ_s
                    if grow < -1e-6 or grow > occ_span * 1.1 + 0.2:
                        self._bad(det, now, garbage=True)
                    else:
                        det.occupied_s += max(0.0, grow)
                det.occ_s = float(occupied_s)
        elif occupied_raw is not None:
            if not _is_u16(occupied_raw):
                self._bad(det, now, garbage=True)
            else:
                if det.raw_occ is not None and occ_span is not None:
                    grow = ((int(occupied_raw) - det.raw_occ) % _WRAP) / 10.0
                    if grow > occ_span * 1.1 + 0.2:
                        self._bad(det, now, garbage=True)
                    else:
                        det.occupied_s += grow
                det.raw_occ = int(occupied_raw)
        on = bool(presence) if isinstance(presence, (bool, int)) else False
        self._presence(det, on, now)
        if counted:
            det.count += counted
            det.last_on = now
            det.last_activity = now
            self._counted(det, counted, now, dt)
        self._diagnose(det, now)

    def update_camera(
        self, group_or_detector: str, count: int, queue: int, interval_s: float, now: float
    ) -> None:
        """One camera message: vehicles that crossed the stop line in the interval, queue now."""
        self._started(now)
        self._t = max(self._t, now)
        det = self._dets.get(group_or_detector)
        if det is None and group_or_detector in self.x.index:
            det = self._dets.get(f"camera:{group_or_detector}")
            if det is None:
                gi = self.x.index[group_or_detector]
                det = _Detector(
                    f"camera:{group_or_detector}",
                    DetectorKind.CAMERA,
                    gi,
                    self.x.groups[gi].lanes,
                    0.0,
                )
                det.created = now
                self._dets[det.id] = det
                self._by_group[gi].append(det)
                self._cams_of[gi].append(det)
                self._refresh(gi)
        if det is None or det.kind is not DetectorKind.CAMERA:
            self._unknown_cameras += 1
            return
        if not (_is_num(count) and _is_num(queue) and _is_num(interval_s)) or (
            count < 0 or queue < 0 or interval_s <= 0
        ):
            self._bad(det, now, garbage=True)
            self._diagnose(det, now)
            return
        count, queue = int(count), int(queue)
        limit = det.lanes * self.settings.saturation_vph_per_lane / 3600.0 * interval_s * 1.5
        # A queue longer than a lane can hold (the camera protocol's 500 per lane) is no
        # measurement either.
        if count > limit + self.settings.count_slack or queue > _MAX_QUEUE_PER_LANE * det.lanes:
            self._bad(det, now, garbage=False)
            self._diagnose(det, now)
            return
        g = self._groups[det.gidx]
        prev_q = det.cam_queue if det.cam_t is not None else queue
        det.cam_t, det.cam_interval = now, float(interval_s)
        det.cam_queue = queue
        det.count += count
        det.last_read = now
        if count or queue:
            det.last_activity = now
            det.last_on = now
        gi = det.gidx
        if not g.ups:  # no upstream loop counts the arrivals
            self._rate(g, max(0, count + queue - prev_q), now, interval_s)
        # The camera sees the queue: re-base the estimate on it.
        g.queue = float(sum(d.cam_queue for d in self._cameras(gi, now)))
        g.model_t = now
        self._diagnose(det, now)

    # -- outputs ------------------------------------------------------------------------------

    def view(self, now: float, signals: Sequence[int] | None = None) -> TrafficView:
        """What the strategies see at ``now`` (pass ``signals`` to update them first)."""
        if signals is not None:
            self.update_signals(signals, now)
        if self._start is None:
            self._start = now
        if now > self._t:
            self._t = now
        # _diagnose's own early return, tested here: most detectors are not due at a step.
        every = self.settings.diagnose_every_s
        for det in self._dets.values():
            if det.news or not now - det.diagnosed_t < every:
                self._diagnose(det, now)
        group_view = self._group_view
        views = tuple([group_view(gi, gid, now) for gi, gid in enumerate(self._gids)])
        return TrafficView(now, views, self.x.index)

    def alarms(self) -> list[DetectorAlarm]:
        """Detectors that are FAILED now."""
        return [
            DetectorAlarm(d.id, d.fault, d.fault_since, d.fault_detail)
            for d in self._dets.values()
            if d.fault is not None
        ]

    def take_events(self) -> list[DetectorEvent]:
        """Alarms raised and cleared since the previous call (for logs and telemetry)."""
        out, self._events = self._events, []
        return out

    def failed(self, detector: str) -> bool:
        """Whether a detector is FAILED."""
        return self._dets[detector].failed

    def counts(self) -> dict[str, int]:
        """Unwrapped counts per detector since the bank started."""
        return {d.id: d.count for d in self._dets.values()}

    def totals(self) -> list[DetectorTotal]:
        """Every detector's cumulative count and occupied time since the bank started, with
        its health (for interval telemetry: the difference of two calls is one interval)."""
        return [
            DetectorTotal(d.id, self.x.groups[d.gidx].id, d.kind, d.count, d.occupied_s, d.fault)
            for d in self._dets.values()
        ]

    def diagnostics(self) -> dict[str, dict[str, object]]:
        """Per detector: status, count, occupancy, garbage and erratic readings."""
        return {
            d.id: {
                "status": "failed" if d.failed else "ok",
                "fault": d.fault,
                "count": d.count,
                "occupied_s": round(d.occupied_s, 1),
                "garbage": d.garbage,
                "erratic": d.erratic_total,
            }
            for d in self._dets.values()
        }

    @property
    def unknown_inputs(self) -> int:
        """Reads for channels or cameras that no detector is configured on."""
        return self._unknown_channels + self._unknown_cameras

    # -- internals ----------------------------------------------------------------------------

    def _started(self, now: float) -> None:
        if self._start is None:
            self._start = now

    def _max_counts(self, det: _Detector, dt: float) -> float:
        s = self.settings
        if det.kind is DetectorKind.PUSHBUTTON:
            return s.max_press_rate_per_s * dt + s.count_slack
        return det.lanes * s.saturation_vph_per_lane / 3600.0 * dt * 1.5 + s.count_slack

    def _bad(self, det: _Detector, now: float, *, garbage: bool) -> None:
        if garbage:
            det.garbage += 1
        det.erratic_total += 1
        det.erratic.append(now)
        det.news = True

    def _presence(self, det: _Detector, on: bool, now: float) -> None:
        g = self._groups[det.gidx]
        if on:
            det.last_on = now
            det.last_activity = now
            if not det.presence:
                det.presence_since = now
                det.edges.append(now)
                det.news = True
                if det.kind is DetectorKind.PUSHBUTTON and not g.green:
                    self._press(g, now)
        else:
            det.presence_since = None
        det.presence = on
        if det.kind is DetectorKind.STOPLINE and det.fault is None and on:
            g.stop_clear_since = None
            if not g.green and g.call_since is None:
                g.call_since = now
            if not g.green:
                g.latched = True

    def _press(self, g: _GroupState, now: float) -> None:
        if g.call_since is None:
            g.call_since = now
        g.latched = True

    def _counted(self, det: _Detector, n: int, now: float, dt: float | None) -> None:
        g = self._groups[det.gidx]
        if det.fault is not None:
            return
        gi = det.gidx
        if det.kind is DetectorKind.PUSHBUTTON:
            if not g.green:
                g.presses += n
                self._press(g, now)
            self._rate(g, n, now, dt)
        elif det.kind is DetectorKind.UPSTREAM:
            # Counted somewhere in the last read interval: take its middle.
            t_pass = now - (dt or 0.0) / 2
            eta = t_pass + det.distance_m / (g.speed * 0.9)
            for _ in range(n):
                g.transit.append(max(eta, g.last_eta))
            g.last_eta = max(eta, g.last_eta)
            self._rate(g, n, now, dt)
        elif det.kind is DetectorKind.STOPLINE:
            self._advance_model(gi, now)
            g.queue = max(0.0, g.queue - n)
            # Stop-line counts are the arrivals only when nothing upstream measures them.
            if not g.ups and not self._cameras(gi, now):
                self._rate(g, n, now, dt)

    def _rate(self, g: _GroupState, n: float, now: float, dt: float | None) -> None:
        """Exponentially weighted arrivals: weighted count over weighted observed time."""
        tau = self.settings.arrival_tau_s
        if g.rate_t is None:
            g.rate_t = now - (dt or 0.0)
        span = max(0.0, now - g.rate_t)
        decay = math.exp(-span / tau)
        g.w_count = g.w_count * decay + n
        g.w_time = g.w_time * decay + span
        g.rate_t = now

    def _rate_now(self, g: _GroupState, now: float) -> float:
        """The group's arrival rate (per hour) at ``now``, frozen while all its detectors are
        FAILED: nothing measures its arrivals then, so the estimate keeps its last value
        instead of decaying."""
        rate_t = g.rate_t
        if rate_t is None:
            return 0.0
        if g.failed_n and g.failed_n == g.dets_n and rate_t < now:  # min(now, rate_t)
            now = rate_t
        span = now - rate_t
        if not span > 0.0:  # max(0.0, span), written out
            span = 0.0
        decay = math.exp(-span / self.settings.arrival_tau_s)
        w_time = g.w_time * decay + span
        if w_time < 1.0:
            return 0.0
        return g.w_count * decay / w_time * 3600.0

    def _kind_of(self, gi: int, det: _Detector) -> list[_Detector]:
        """The per-group list a detector belongs in, by kind (kept so that the per-step views
        do not filter every group's detectors by kind again)."""
        if det.kind is DetectorKind.CAMERA:
            return self._cams_of[gi]
        if det.kind in (DetectorKind.STOPLINE, DetectorKind.UPSTREAM):
            return self._loops_of[gi]
        return self._others_of[gi]

    def _refresh(self, gi: int) -> None:
        """Re-derive the group's cached detector facts (:class:`_GroupState`): at start, and
        whenever one of its detectors fails, recovers or is added — never per step."""
        g = self._groups[gi]
        dets = self._by_group[gi]
        loops = self._loops_of[gi]
        g.dets_n = len(dets)
        g.failed_n = sum(1 for d in dets if d.fault is not None)
        g.buttons_failed = any(
            d.fault is not None for d in dets if d.kind is DetectorKind.PUSHBUTTON
        )
        g.loops_failed = any(d.fault is not None for d in loops)
        g.healthy = [d for d in loops if d.fault is None]
        g.stops = [d for d in g.healthy if d.kind is DetectorKind.STOPLINE]
        g.ups = [d for d in g.healthy if d.kind is DetectorKind.UPSTREAM]

    def _cameras(self, gi: int, now: float) -> list[_Detector]:
        """The group's camera zones with a fresh message."""
        cams = self._cams_of[gi]
        if not cams:
            return cams  # empty (and never changed by the callers)
        f = self.settings.camera_fresh_factor
        return [
            d
            for d in cams
            if d.cam_t is not None
            and d.fault is None
            and now - d.cam_t <= f * d.cam_interval + 1e-9
        ]

    def _advance_model(self, gi: int, now: float) -> None:
        """Model what is not measured: arrivals from the rate, departures at saturation flow."""
        g = self._groups[gi]
        last, g.model_t = g.model_t, now
        if g.kind is not GroupKind.VEHICLE or last is None or now <= last:
            return
        cams = self._cameras(gi, now)
        # Measured: arrivals by fresh cameras or healthy upstream loops, departures by fresh
        # cameras or healthy stop-line loops.
        self._model(g, now, now - last, bool(cams) or bool(g.ups), bool(cams) or bool(g.stops))

    def _model(self, g: _GroupState, now: float, dt: float, arr: bool, dep: bool) -> None:
        """:meth:`_advance_model` by ``dt`` up to ``now``, given what is measured."""
        if not arr:
            g.queue += self._rate_now(g, now) / 3600.0 * dt
        if not dep and g.green and g.green_since is not None:
            run = min(dt, max(0.0, now - g.green_since - _LOST_S))
            mu = g.lanes * self.settings.saturation_vph_per_lane / 3600.0
            g.queue = max(0.0, g.queue - mu * run)

    def _diagnose(self, det: _Detector, now: float) -> None:
        s = self.settings
        if not det.news and now - det.diagnosed_t < s.diagnose_every_s:
            return
        det.news = False
        det.diagnosed_t = now
        while det.erratic and det.erratic[0] < now - s.erratic_window_s:
            det.erratic.popleft()
        while det.edges and det.edges[0] < now - s.chatter_window_s:
            det.edges.popleft()
        problem: tuple[FaultKind, str] | None = None
        started = det.created if det.created is not None else self._start
        if started is None:
            started = now
        if len(det.erratic) >= s.erratic_events:
            problem = (
                "erratic",
                f"{s.erratic_events} or more impossible or garbage readings within "
                f"{s.erratic_window_s:g} s",
            )
        elif det.kind is not DetectorKind.PUSHBUTTON and len(det.edges) > max(
            1, det.lanes * s.chatter_edges_per_lane
        ):
            problem = (
                "chattering",
                f"more than {det.lanes * s.chatter_edges_per_lane} presence edges "
                f"within {s.chatter_window_s:g} s",
            )
        elif det.presence_since is not None and now - det.presence_since >= s.stuck_on_s:
            problem = ("stuck", f"presence on for more than {s.stuck_on_s:g} s")
        elif det.kind is DetectorKind.CAMERA and now - (
            det.cam_t if det.cam_t is not None else started
        ) >= max(s.stale_camera_s, 3 * det.cam_interval):
            problem = ("stale", f"no camera message for {s.stale_camera_s:g} s")
        else:
            if det.kind is DetectorKind.PUSHBUTTON:
                quiet = s.silent_pushbutton_s
            elif det.kind is DetectorKind.CAMERA:
                quiet = s.silent_camera_s
            else:
                quiet = s.silent_loop_s
            last = det.last_activity if det.last_activity is not None else started
            if now - last >= quiet:
                problem = ("silent", f"no actuation for {quiet:g} s")
        if problem is not None:
            det.sane_since = None
            if det.fault is None:
                det.fault, det.fault_detail = problem
                det.fault_since = now
                self._events.append(
                    DetectorEvent(
                        now, DetectorAlarm(det.id, det.fault, now, det.fault_detail), True
                    )
                )
                self._fault_changed(det, now)
            return
        if det.fault is None:
            return
        if det.sane_since is None:
            det.sane_since = now
        elif now - det.sane_since >= s.recover_after_s:
            alarm = DetectorAlarm(det.id, det.fault, det.fault_since, det.fault_detail)
            det.fault = None
            det.fault_detail = ""
            det.sane_since = None
            det.erratic.clear()
            self._events.append(DetectorEvent(now, alarm, False))
            self._fault_changed(det, now)

    def _fault_changed(self, det: _Detector, now: float) -> None:
        """A detector failed or recovered: its group's queue switches estimator."""
        self._refresh(det.gidx)
        g = self._groups[det.gidx]
        g.model_t = now
        if not det.failed and g.rate_t is not None and g.rate_t < now:
            # The time nothing was measured is not observed time without arrivals.
            g.rate_t = now
        if not det.failed and det.kind in (DetectorKind.STOPLINE, DetectorKind.UPSTREAM):
            g.transit.clear()

    def _group_view(self, gi: int, gid: str, now: float) -> GroupView:
        # Run for every group at every step: the detector facts come from the group's cache
        # (_refresh), and the scans are written-out loops rather than any()/max() over
        # generators; the arithmetic is the same, operation for operation.
        g = self._groups[gi]
        failed = g.failed_n > 0
        green = g.green  # nothing below changes it
        if g.kind is GroupKind.PEDESTRIAN:
            constant = g.recall or g.buttons_failed
            if constant and not green:
                g.latched = True
            call = constant or g.latched
            since = g.call_since
            if call and not green and since is None:
                since = g.red_since if g.red_since is not None else now
                g.call_since = since
            pressed = False
            for d in self._by_group[gi]:
                if d.presence:
                    pressed = True
                    break
            return _new_group_view(
                gid,
                g.kind,
                call and not green,
                None if green else since,
                math.inf,
                self._rate_now(g, now),
                float(g.presses),
                (),
                pressed,
                failed,
            )
        s = self.settings
        cams = self._cams_of[gi]
        if cams:
            cams = self._cameras(gi, now)  # the fresh ones: the same for the whole view
        healthy = g.healthy
        stops = g.stops
        ups = g.ups
        # vehicles: _advance_model, written out (it models only what is not measured)
        last, g.model_t = g.model_t, now
        if last is not None and not now <= last:
            arr = bool(cams) or bool(ups)
            dep = bool(cams) or bool(stops)
            if not (arr and dep):
                self._model(g, now, now - last, arr, dep)
        # move arrivals that reached the stop line into the queue
        transit = g.transit
        while transit and transit[0] <= now:
            transit.popleft()
            g.queue += 1.0
        presence = False
        for d in stops:
            if d.presence:
                presence = True
                break
        # stop-line evidence corrects the estimate
        if stops:
            if presence:
                g.stop_clear_since = None
            elif g.stop_clear_since is None:
                g.stop_clear_since = now
            clear_for = 0.0 if g.stop_clear_since is None else now - g.stop_clear_since
            if green and g.green_since is not None:
                started = now - g.green_since >= _LOST_S + 2.0
                if started and clear_for >= s.queue_gap_reset_s:
                    g.queue = 0.0
            elif (
                clear_for >= s.phantom_reset_s
                and g.queue > 0
                and now - g.last_eta >= s.phantom_reset_s
            ):
                g.queue = 0.0
            if not green and presence:
                g.queue = max(g.queue, 1.0)
        up_presence = False
        for d in ups:
            if d.presence:
                up_presence = True
                break
        if up_presence and not green:  # (presence_since is set exactly while presence is)
            up_on = [d.presence_since for d in ups if d.presence_since is not None]
            if up_on and now - min(up_on) >= s.spillback_s:
                reach = max(d.distance_m for d in ups)
                g.queue = max(g.queue, g.lanes * reach / _VEHICLE_SPACING_M)
        cam_queue = sum(d.cam_queue for d in cams) if cams else 0
        # the call
        constant = g.recall or failed
        waiting = presence or g.queue >= 0.5 or cam_queue > 0
        if not green and (waiting or constant):
            g.latched = True
        call = constant or waiting or (g.latched and not green)
        since = g.call_since
        if call and not green and since is None:
            since = now if not constant else (g.red_since if g.red_since is not None else now)
            g.call_since = since
        if green:
            since = None
        # the gap
        if constant and not healthy:
            gap = 0.0
        elif g.loops_failed:  # (a failed loop makes the group failed)
            gap = 0.0  # fail-safe: a group with a broken loop extends to max green
        elif presence or up_presence:  # a healthy loop is occupied
            gap = 0.0
        elif healthy:
            last_on = healthy[0].last_on
            for d in healthy:
                if d.last_on > last_on:  # max(), written out
                    last_on = d.last_on
            gap = now - last_on
            if not gap > 0.0:
                gap = 0.0
        elif cams:
            gap = 0.0 if cam_queue else max(0.0, now - max(d.last_on for d in cams))
        else:
            gap = math.inf
        return _new_group_view(
            gid,
            g.kind,
            call,
            since,
            gap,
            self._rate_now(g, now),
            g.queue,
            tuple([t - now for t in transit]) if transit else (),
            presence,
            failed,
        )


def _is_num(v: object) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond the float range
        return False


def _is_u16(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _WRAP
