"""AI traffic cameras over MQTT: per-lane counts and queue lengths (protocol version 1).

Topic: ``{p}/v1/signals/{intersection}/camera/{camera}/counts`` — one message per counting
interval (typically 5–15 s). ``docs/protocol.md`` describes it for people.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import Field, field_validator

from devices.lights import Topics, _aware, _Payload

__all__ = ["CameraCounts", "LaneCount", "camera_from_topic", "camera_topic"]

_ID = r"^[A-Za-z0-9_.-]{1,64}$"


class LaneCount(_Payload):
    """What a camera saw on one lane during the interval."""

    lane: int = Field(ge=1, le=8)
    group: Annotated[str, Field(pattern=_ID)] | None = Field(
        default=None, description="Signal group of the lane, if the camera knows it."
    )
    count: int = Field(ge=0, le=10_000, description="Vehicles that crossed the stop line.")
    queue: int = Field(ge=0, le=500, description="Vehicles queued at the end of the interval.")


class CameraCounts(_Payload):
    """One camera's counts for one interval ending at ``ts``."""

    intersection: Annotated[str, Field(pattern=_ID)]
    camera: Annotated[str, Field(pattern=_ID)]
    ts: dt.datetime
    interval_s: float = Field(gt=0, le=900)
    lanes: list[LaneCount] = Field(min_length=1, max_length=16)
    _v_ts = field_validator("ts")(_aware)


def camera_topic(topics: Topics, intersection: str, camera: str) -> str:
    """Topic a camera publishes on."""
    return f"{topics.root}/signals/{intersection}/camera/{camera}/counts"


def camera_from_topic(topics: Topics, topic: str) -> tuple[str, str] | None:
    """``(intersection, camera)`` of a camera topic, else None."""
    head = f"{topics.root}/signals/"
    if not topic.startswith(head) or not topic.endswith("/counts"):
        return None
    parts = topic[len(head) : -len("/counts")].split("/")
    if len(parts) != 3 or parts[1] != "camera" or not parts[0] or not parts[2]:
        return None
    return parts[0], parts[2]
