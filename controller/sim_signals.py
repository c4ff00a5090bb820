"""Wiring the configuration to the simulated intersections (used by the CLI, demo and bench).

The simulator imports nothing from ``controller`` (design: it must not know the controller's
code, least of all its safety code), so somebody has to translate an intersection of
``config.yaml`` into what the simulator takes: a :class:`~simulator.cabinet.CabinetSpec` for the
cabinet and its independent monitor, and the group / detector specs and a demand function for
the built-in traffic model. That is this module, on the CLI side of the fence, next to
:mod:`controller.sim_cli`.

**Demand.** The config describes signals, not traffic, so the simulated demand is derived from
the intersection's layout: per lane, the groups of the coordinated arterial stage carry an
arterial flow, the other through movements a collector flow, left turns a share of the through
flow of their approach, and crossings a pedestrian flow. :func:`group_demand` gives these
peak-hour rates; :class:`SignalDemand` scales them by a demand *level* (share of the peak)
and, optionally, by the time of day with the same daily profiles as the lighting traffic
counters (:mod:`simulator.traffic`), or by a peaked profile within a benchmark hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.signals.model import DetectorKind, GroupKind, Intersection, SignalsSettings
from devices.lights import Topics
from simulator.cabinet import CabinetSpec, GroupSpec, SimulatedCabinet
from simulator.cameras import CameraFeed, CameraStats, CameraZone, run_cameras
from simulator.signal_traffic import IntersectionTraffic, TrafficDetectorSpec, TrafficGroupSpec
from simulator.traffic import RoadKind, expected_flow

__all__ = [
    "PEAK_VPH_PER_LANE",
    "SignalDemand",
    "SimulatedSite",
    "cabinet_spec",
    "camera_feeds",
    "group_demand",
    "local_plan",
    "traffic_specs",
]

#: Peak-hour flow per lane (veh/h) by the kind of movement; pedestrians per crossing (ped/h).
PEAK_VPH_PER_LANE: Mapping[str, float] = {
    "arterial": 600.0,
    "through": 380.0,
    "left": 150.0,
    "pedestrian": 80.0,
}


def _movement_kind(x: Intersection, i: int) -> str:
    g = x.groups[i]
    if g.kind is GroupKind.PEDESTRIAN:
        return "pedestrian"
    if g.movement == "left":
        return "left"
    coord = x.config.coordination
    if coord is not None and coord.arterial_stage is not None:
        for sid, members in x.stages:
            if sid == coord.arterial_stage and i in members:
                return "arterial"
    return "through"


def group_demand(x: Intersection) -> dict[str, float]:
    """Peak-hour demand per group: veh/h *per lane* for vehicles, ped/h for crossings."""
    return {g.id: PEAK_VPH_PER_LANE[_movement_kind(x, i)] for i, g in enumerate(x.groups)}


@dataclass(frozen=True)
class SignalDemand:
    """A demand function ``(group, t) → veh/h per lane`` for :class:`IntersectionTraffic`.

    ``level`` scales the peak-hour rates of :func:`group_demand`. With ``start_local`` (an
    aware local datetime at ``t = 0``) the rates follow the daily profile of their road kind;
    with ``peak_s`` they follow a peaked hour instead: ``1 + peak_amp·sin(π t / peak_s)`` over
    ``[0, peak_s]`` normalised to a mean of 1 — the build-up and fade of a peak hour. Otherwise
    the rates are constant. ``time_scale`` clock seconds pass per second of ``t`` (the demo's
    accelerated clock: the time of day moves faster than the traffic).
    """

    peak: Mapping[str, float]
    level: float = 1.0
    start_local: dt.datetime | None = None
    peak_s: float | None = None
    peak_amp: float = 0.5
    time_scale: float = 1.0
    _norm: float = field(init=False, default=1.0)

    def __post_init__(self) -> None:
        if self.level < 0 or not math.isfinite(self.level):
            raise ValueError(f"level: {self.level!r} must be a finite number >= 0")
        if self.peak_s is not None:
            if self.peak_s <= 0:
                raise ValueError("peak_s must be positive")
            # mean of 1 + a·sin(πt/T) over [0, T] is 1 + 2a/π
            object.__setattr__(self, "_norm", 1.0 + 2.0 * self.peak_amp / math.pi)

    def __call__(self, group: str, t: float) -> float:
        base = self.peak.get(group, 0.0) * self.level
        if self.start_local is not None:
            local = self.start_local + dt.timedelta(seconds=t * self.time_scale)
            return expected_flow(RoadKind.ARTERIAL, base, local)
        if self.peak_s is not None:
            s = min(max(t / self.peak_s, 0.0), 1.0)
            return base * (1.0 + self.peak_amp * math.sin(math.pi * s)) / self._norm
        return base


def traffic_specs(
    x: Intersection,
) -> tuple[list[TrafficGroupSpec], list[TrafficDetectorSpec]]:
    """Group and detector specs of the built-in traffic model for an intersection."""
    groups = [
        TrafficGroupSpec(
            id=g.id,
            kind="pedestrian" if g.kind is GroupKind.PEDESTRIAN else "vehicle",
            lanes=g.lanes,
            free_speed_kmh=g.speed_kmh,
        )
        for g in x.groups
    ]
    dets: list[TrafficDetectorSpec] = []
    for d in x.config.detectors:
        dets.append(
            TrafficDetectorSpec(
                id=d.id,
                group=d.group,
                kind=d.kind.value,
                channel=d.channel,
                distance_m=d.distance_m,
                camera=d.camera,
                lanes=None,
            )
        )
    return groups, dets


def local_plan(x: Intersection) -> list[tuple[frozenset[int], float]]:
    """The cabinet's fallback plan: the intersection's first fixed plan, else 20 s per stage."""
    members = dict(x.stages)
    plans = x.config.fixed_plans
    if plans:
        return [(members[sid], float(g)) for sid, g in plans[0].greens.items() if sid in members]
    return [(m, 20.0) for _, m in x.stages]


def cabinet_spec(
    x: Intersection,
    settings: SignalsSettings,
    *,
    fallback: str = "local_plan",
    tick_hz: float = 10.0,
) -> CabinetSpec:
    """The simulated cabinet of an intersection, with the clearances of the config.

    The cabinet gets the *minima* a real cabinet is programmed with: each group's clearance,
    the all-red of every conflicting pair and the minimum greens. Its monitor checks them with
    its own code.
    """
    groups = [
        GroupSpec(
            id=g.id,
            kind="pedestrian" if g.kind is GroupKind.PEDESTRIAN else "vehicle",
            min_green_s=g.min_green_total_s,
            clearance_s=x.clearance[i],
        )
        for i, g in enumerate(x.groups)
    ]
    conflicts: list[tuple[str, str]] = []
    all_red: dict[tuple[str, str], float] = {}
    intergreen: dict[tuple[str, str], float] = {}
    for i, gi in enumerate(x.groups):
        for j, gj in enumerate(x.groups):
            if not x.conflict[i][j]:
                continue
            if i < j:
                conflicts.append((gi.id, gj.id))
            all_red[(gi.id, gj.id)] = x.all_red(i, j)
            intergreen[(gi.id, gj.id)] = x.intergreen[i][j]
    channels = sorted(d.channel for d in x.config.detectors if d.channel is not None)
    n_channels = x.config.cabinet.channels
    return CabinetSpec(
        groups=groups,
        conflicts=conflicts,
        all_red_s=all_red,
        intergreen_s=intergreen,
        channels=channels,
        n_channels=n_channels,
        local_plan=local_plan(x),
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        fallback="flash" if fallback == "flash" else "local_plan",
        tick_hz=tick_hz,
    )


def camera_detectors(x: Intersection) -> list[tuple[str, str, str]]:
    """``(detector id, group, camera id)`` of every camera zone of an intersection."""
    return [
        (d.id, d.group, d.camera)
        for d in x.config.detectors
        if d.kind is DetectorKind.CAMERA and d.camera is not None
    ]


class _LoopSource:
    """The traffic model as the cabinet's detector source (``detector`` as a plain tuple)."""

    def __init__(self, traffic: IntersectionTraffic) -> None:
        self.traffic = traffic

    def step(self, t: float, dt: float, shown: Mapping[str, int]) -> None:
        self.traffic.step(t, dt, shown)

    def detector(self, channel: int) -> tuple[int, float, bool]:
        s = self.traffic.detector(channel)
        return s.count, s.occupied_s, s.presence


def camera_feeds(x: Intersection) -> list[CameraFeed]:
    """The simulated cameras of an intersection: one feed per camera id, a zone per lane."""
    feeds: dict[str, list[CameraZone]] = {}
    for d in x.config.detectors:
        if d.kind is DetectorKind.CAMERA and d.camera is not None:
            feeds.setdefault(d.camera, []).append(CameraZone(d.group, d.lane))
    return [CameraFeed(x.id, cam, zones) for cam, zones in feeds.items()]


class SimulatedSite:
    """Simulated cabinets (with the built-in traffic model) for intersections of a config.

    ``ports`` maps an intersection id to the port to listen on (0: a free one); after
    :meth:`start`, :attr:`addresses` tells where each cabinet listens. With ``publish``, the
    intersections' cameras publish their counts through it every ``camera_interval_s``.
    """

    def __init__(
        self,
        intersections: Sequence[Intersection],
        settings: SignalsSettings,
        *,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
        level: float = 0.7,
        start_local: dt.datetime | None = None,
        time_scale: float = 1.0,
        seed: int | str = 1,
        fallback: str = "local_plan",
        publish: Callable[[str, bytes], Awaitable[None]] | None = None,
        topics: Topics | None = None,
        camera_interval_s: float = 10.0,
    ) -> None:
        self.intersections = list(intersections)
        self.host = host
        self.publish = publish
        self.topics = topics
        self.camera_interval_s = camera_interval_s
        self.camera_stats = CameraStats()
        self.traffic: dict[str, IntersectionTraffic] = {}
        self.cabinets: dict[str, SimulatedCabinet] = {}
        t0 = time.monotonic()
        for x in self.intersections:
            groups, dets = traffic_specs(x)
            demand = SignalDemand(
                group_demand(x), level, start_local=start_local, time_scale=time_scale
            )
            traffic = IntersectionTraffic(groups, dets, demand, seed=f"{seed}:{x.id}")
            self.traffic[x.id] = traffic
            port = (ports or {}).get(x.id, 0)
            self.cabinets[x.id] = SimulatedCabinet(
                cabinet_spec(x, settings, fallback=fallback),
                host,
                port,
                device_id=x.config.cabinet.unit,
                traffic=_LoopSource(traffic),
                clock=lambda: time.monotonic() - t0,
            )
        self._task: asyncio.Task[CameraStats] | None = None

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """Where each cabinet listens: intersection id → (host, port)."""
        return {xid: (cab.host, cab.port) for xid, cab in self.cabinets.items()}

    async def start(self) -> None:
        """Start every cabinet (and the cameras)."""
        for cab in self.cabinets.values():
            await cab.start()
        feeds = [f for x in self.intersections for f in camera_feeds(x)]
        if self.publish is not None and feeds:
            topics = self.topics or Topics("cityctl")
            self._task = asyncio.create_task(
                run_cameras(
                    self.publish,
                    topics,
                    feeds,
                    self.traffic,
                    interval_s=self.camera_interval_s,
                    stats=self.camera_stats,
                ),
                name="sim-cameras",
            )

    async def stop(self) -> None:
        """Stop the cameras and every cabinet."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for cab in self.cabinets.values():
            await cab.stop()
