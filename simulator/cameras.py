"""Simulated AI traffic cameras: per-lane counts and queues on MQTT from the traffic model.

A camera watches one or more lanes of an intersection's approaches. Every ``interval_s`` it
publishes one :class:`~devices.cameras.CameraCounts` message on
``{prefix}/v1/signals/{intersection}/camera/{camera}/counts`` with, per lane it watches, the
vehicles that crossed the stop line during the interval and the vehicles queued at its end —
what the AI cameras of the operations centre report. The numbers come from the built-in
traffic model (:class:`~simulator.signal_traffic.IntersectionTraffic`) the cabinet's
detectors also read, so loops and cameras see the same vehicles.

Like every simulator module it imports nothing from ``controller``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from devices.cameras import CameraCounts, LaneCount, camera_topic
from devices.lights import Topics, encode

__all__ = ["CameraFeed", "CameraSource", "CameraStats", "CameraZone", "run_cameras"]

log = logging.getLogger(__name__)


class CameraSource(Protocol):
    """What a camera reads: ``camera(group) -> (crossed so far, queued now)``."""

    def camera(self, group: str) -> tuple[int, int]: ...


@dataclass(frozen=True)
class CameraZone:
    """One lane a camera watches: the signal group it belongs to and its lane number."""

    group: str
    lane: int = 1


@dataclass(frozen=True)
class CameraFeed:
    """One camera of one intersection."""

    intersection: str
    camera: str
    zones: Sequence[CameraZone]


@dataclass
class CameraStats:
    """What :func:`run_cameras` did."""

    published: int = 0
    dropped: int = 0


async def run_cameras(
    publish: Callable[[str, bytes], Awaitable[None]],
    topics: Topics,
    feeds: Sequence[CameraFeed],
    sources: Mapping[str, CameraSource],
    *,
    interval_s: float = 10.0,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    stats: CameraStats | None = None,
    iterations: int | None = None,
) -> CameraStats:
    """Publish every camera's counts every ``interval_s`` real seconds until cancelled.

    ``sources`` maps an intersection id to its traffic model (anything with
    ``camera(group) -> (crossed, queued)``). A lane's count is the growth of its group's
    crossed vehicles since the previous message, shared evenly when a camera watches several
    lanes of one group. A publish that fails (broker away) is counted and logged; the interval
    it covered is then lost, as with a real camera.
    """
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    stats = stats if stats is not None else CameraStats()
    last: dict[tuple[str, str], int] = {}
    for feed in feeds:
        src = sources[feed.intersection]
        for zone in feed.zones:
            key = (feed.intersection, zone.group)
            if key not in last:
                last[key] = src.camera(zone.group)[0]
    done = 0
    while iterations is None or done < iterations:
        await sleep(interval_s)
        crossed_now: dict[tuple[str, str], tuple[int, int]] = {}
        for key in last:
            src = sources[key[0]]
            crossed_now[key] = src.camera(key[1])
        for feed in feeds:
            lanes = []
            per_group: dict[str, int] = {}
            for zone in feed.zones:
                per_group[zone.group] = per_group.get(zone.group, 0) + 1
            for zone in feed.zones:
                crossed, queued = crossed_now[(feed.intersection, zone.group)]
                share = per_group[zone.group]
                count = max(0, crossed - last[(feed.intersection, zone.group)])
                lanes.append(
                    LaneCount(
                        lane=zone.lane,
                        group=zone.group,
                        count=min(10_000, round(count / share)),
                        queue=min(500, round(queued / share)),
                    )
                )
            msg = CameraCounts(
                intersection=feed.intersection,
                camera=feed.camera,
                ts=now(),
                interval_s=interval_s,
                lanes=lanes,
            )
            try:
                await publish(camera_topic(topics, feed.intersection, feed.camera), encode(msg))
                stats.published += 1
            except Exception as exc:  # the broker may be away: count it, keep counting
                stats.dropped += 1
                log.warning("camera %s/%s not published: %s", feed.intersection, feed.camera, exc)
        for key, (crossed, _) in crossed_now.items():
            last[key] = crossed
        done += 1
    return stats
