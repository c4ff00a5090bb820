"""Light-node protocol over MQTT: topic tree and JSON payloads (protocol version 1).

Both the controller and the simulated nodes use these models, so a payload that one side
writes is exactly what the other side validates. ``docs/protocol.md`` describes the same
thing for people; keep the two in step.

Topic tree (``{p}`` is the configurable prefix, default ``cityctl``)::

    {p}/v1/controller/{controller}/availability   retained "online"/"offline" (last will)
    {p}/v1/controller/{controller}/lighting       retained LightingStatus, once a minute
    {p}/v1/lights/group/{group}/set               retained LightCommand for every node of a group
    {p}/v1/lights/group/{group}/fallback          retained FallbackProgram for the group
    {p}/v1/lights/node/{node}/set                 LightCommand for one node (retries, tests)
    {p}/v1/lights/node/{node}/state               retained NodeState
    {p}/v1/lights/node/{node}/ack                 CommandAck for a node command or a rejection
    {p}/v1/lights/node/{node}/availability        retained "online"/"offline" (last will)
    {p}/v1/lights/node/{node}/alarms              retained NodeAlarms, written by the controller
    {p}/v1/traffic/segment/{segment}/count        TrafficCount from a camera or loop counter
    {p}/v1/sim/lights/node/{node}/fault           SimFault: fault injection, simulator only
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import reprlib
import types
import typing
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "ALARM_KINDS",
    "AlarmEntry",
    "CommandAck",
    "FallbackProgram",
    "FallbackStep",
    "GroupStatusEntry",
    "LightCommand",
    "LightingStatus",
    "NodeAlarms",
    "NodeFault",
    "NodeMode",
    "NodeState",
    "PayloadError",
    "SimFault",
    "Topics",
    "TrafficCount",
    "decode",
    "encode",
]

PROTOCOL_VERSION: Literal[1] = 1
ONLINE = "online"
OFFLINE = "offline"

Percent = Annotated[float, Field(ge=0.0, le=100.0)]
_ID = r"^[A-Za-z0-9_.-]{1,64}$"
NodeId = Annotated[str, Field(pattern=_ID)]


class PayloadError(ValueError):
    """A payload that cannot be accepted; ``field`` names where, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


#: What a JSON value of a field of this type may be. pydantic's lax mode would read "50" or
#: true as a number and a number as a Unix time; an integral float (60.0) is a fine int.
_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    float: (int, float),
    int: (int, float),
    bool: (bool,),
    str: (str,),
    dt.datetime: (str,),
    dt.time: (str,),
}


#: Validation context key: the data was just parsed from JSON (see ``_Payload``).
_FROM_JSON = "cityctl_from_json"


@functools.cache
def _json_types(model: type[BaseModel]) -> tuple[tuple[str, tuple[type, ...]], ...]:
    """``(key, JSON types allowed)`` for the fields of ``model`` with a plain scalar type."""
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        union = typing.get_origin(ann) in (typing.Union, types.UnionType)
        allowed: list[type] = []
        for arg in typing.get_args(ann) if union else (ann,):
            if arg is type(None):
                allowed.append(type(None))
            elif arg in _JSON_TYPES:
                allowed.extend(_JSON_TYPES[arg])
            else:
                break  # enums, literals, lists, models: pydantic checks those strictly already
        else:
            out.append((info.alias or name, tuple(allowed)))
    return tuple(out)


class _Payload(BaseModel):
    # Unknown keys are ignored (forward compatibility with newer nodes) but types are strict:
    # a string or a boolean where a number belongs is an error, not a silent coercion, and
    # so is a non-finite number (an "Infinity" energy counter would poison every sum).
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)
    v: Literal[1] = PROTOCOL_VERSION

    @model_validator(mode="before")
    @classmethod
    def _check_json_types(cls, data: Any, info: ValidationInfo) -> Any:
        # Only what came off the wire (decode() says so): code builds models from Python
        # values, datetimes included.
        if not isinstance(data, dict) or not (info.context or {}).get(_FROM_JSON):
            return data
        if "v" in data and type(data["v"]) is not int:
            raise ValueError(
                f"v: the protocol version must be the integer 1, got {_json_name(data['v'])}"
            )
        for key, allowed in _json_types(cls):
            if key not in data:
                continue
            value = data[key]
            if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
                want = " or ".join(sorted({_JSON_NAMES[t] for t in allowed}))
                raise ValueError(f"{key}: expected {want}, got {_json_name(value)}")
        return data


_JSON_NAMES = {
    int: "a number",
    float: "a number",
    bool: "true or false",
    str: "a string",
    type(None): "null",
}


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "…"
        return f"{shown!r} (a string)"
    if isinstance(value, int | float):
        return f"{value!r} (a number)"
    return "an array" if isinstance(value, list) else "an object"


def _aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a UTC offset, e.g. 2026-01-01T18:00:00+07:00")
    return value


class LightCommand(_Payload):
    """Go to ``level`` % over ``ramp_s`` seconds. ``issued`` lets a node ignore stale commands."""

    cmd_id: str = Field(min_length=1, max_length=64)
    level: Percent
    ramp_s: float = Field(default=0.0, ge=0.0, le=3600.0)
    issued: dt.datetime
    _v_issued = field_validator("issued")(_aware)


class CommandAck(_Payload):
    """A node's answer to a command addressed to it alone, or to any command it rejects."""

    node: NodeId
    cmd_id: str = Field(max_length=64)
    status: Literal["applied", "rejected"]
    reason: str = Field(default="", max_length=500)


class NodeMode(StrEnum):
    """Who decides a node's level right now."""

    REMOTE = "remote"  # following the controller's commands
    FALLBACK = "fallback"  # controller silent too long: running the stored fallback program


class NodeFault(StrEnum):
    """Faults a node can diagnose on its own and reports in ``NodeState.faults``."""

    DRIVER_FAILURE = "driver_failure"
    SUPPLY_LOST = "supply_lost"


class NodeState(_Payload):
    """A node's retained state; the ``cmd_id`` of the last applied command is its acknowledgement."""

    node: NodeId
    group: NodeId
    ts: dt.datetime
    level: Percent = Field(description="Level the driver outputs now (mid-ramp: between).")
    target: Percent = Field(description="Level the node is heading to.")
    cmd_id: str | None = Field(default=None, max_length=64)
    mode: NodeMode = NodeMode.REMOTE
    power_w: float = Field(ge=0.0, le=100_000.0)
    energy_wh: float = Field(ge=0.0)
    burn_h: float = Field(ge=0.0)
    # 64 bits, as telemetry stores it; a list of the node's own diagnoses, not a log of them.
    switches: int = Field(ge=0, le=2**63 - 1)
    faults: list[NodeFault] = Field(default_factory=list, max_length=len(NodeFault))
    _v_ts = field_validator("ts")(_aware)


class FallbackStep(_Payload):
    """From local wall-clock ``at`` on, hold ``level``."""

    at: dt.time
    level: Percent


class FallbackProgram(_Payload):
    """What a node does on its own when the controller has been silent for too long."""

    group: str
    issued: dt.datetime
    timezone: str
    steps: list[FallbackStep] = Field(min_length=1)
    _v_issued = field_validator("issued")(_aware)

    def level_at(self, local: dt.time) -> float:
        """Level at a local time of day; before the first step the last one still holds."""
        ordered = sorted(self.steps, key=lambda s: s.at)
        current = ordered[-1].level
        for step in ordered:
            if step.at <= local:
                current = step.level
        return current


class TrafficCount(_Payload):
    """Vehicles counted on a road segment (both directions) during ``interval_s`` up to ``ts``."""

    segment: str = Field(pattern=_ID)
    ts: dt.datetime
    interval_s: int = Field(gt=0, le=3600)
    vehicles: int = Field(ge=0, le=100_000)
    _v_ts = field_validator("ts")(_aware)

    @property
    def per_hour(self) -> float:
        """Flow in vehicles per hour."""
        return self.vehicles * 3600.0 / self.interval_s


ALARM_KINDS = (
    "lamp_failure",
    "day_burner",
    "node_offline",
    "power_out_of_band",
    "driver_failure",
    "supply_lost",
    "wrong_group",
)


class AlarmEntry(_Payload):
    """One active alarm on a node."""

    kind: Literal[
        "lamp_failure",
        "day_burner",
        "node_offline",
        "power_out_of_band",
        "driver_failure",
        "supply_lost",
        "wrong_group",
    ]
    since: dt.datetime
    detail: str = ""


class NodeAlarms(_Payload):
    """The controller's retained view of a node's active alarms (empty list: all clear)."""

    node: NodeId
    alarms: list[AlarmEntry] = Field(default_factory=list)


class GroupStatusEntry(_Payload):
    """One group in the controller's lighting status."""

    group: str
    level: Percent
    source: str
    detail: str
    lighting_class: str | None
    nodes_total: int = Field(ge=0)
    nodes_following: int = Field(ge=0)
    nodes_offline: int = Field(ge=0)
    energy_wh: float = Field(ge=0.0)


class LightingStatus(_Payload):
    """The controller's retained summary: what every group is doing and what it cost."""

    controller: str
    ts: dt.datetime
    groups: list[GroupStatusEntry]
    nodes_with_alarms: int = Field(ge=0)
    dropped_payloads: int = Field(ge=0)
    _v_ts = field_validator("ts")(_aware)


class SimFault(_Payload):
    """Simulator only: switch an injected fault on or off."""

    fault: Literal["lamp_failure", "driver_failure", "supply_lost", "node_offline", "day_burner"]
    active: bool = True


class Topics:
    """Builds and parses the topic tree under one prefix."""

    def __init__(self, prefix: str = "cityctl") -> None:
        self.prefix = prefix.strip("/")
        self.root = f"{self.prefix}/v{PROTOCOL_VERSION}"

    def controller_availability(self, controller: str) -> str:
        """Retained online/offline of a controller."""
        return f"{self.root}/controller/{controller}/availability"

    def controller_lighting(self, controller: str) -> str:
        """Retained lighting status of a controller (groups, levels, energy)."""
        return f"{self.root}/controller/{controller}/lighting"

    def controller_telemetry(self, controller: str) -> str:
        """Retained telemetry status of a controller (outbox, database, alarms)."""
        return f"{self.root}/controller/{controller}/telemetry"

    def group_set(self, group: str) -> str:
        """Command topic of a group (retained)."""
        return f"{self.root}/lights/group/{group}/set"

    def group_fallback(self, group: str) -> str:
        """Fallback program of a group (retained)."""
        return f"{self.root}/lights/group/{group}/fallback"

    def node_set(self, node: str) -> str:
        """Command topic of one node."""
        return f"{self.root}/lights/node/{node}/set"

    def node_state(self, node: str) -> str:
        """Retained state of a node."""
        return f"{self.root}/lights/node/{node}/state"

    def node_ack(self, node: str) -> str:
        """Acknowledgements and rejections from a node."""
        return f"{self.root}/lights/node/{node}/ack"

    def node_availability(self, node: str) -> str:
        """Retained online/offline of a node (its last will)."""
        return f"{self.root}/lights/node/{node}/availability"

    def node_alarms(self, node: str) -> str:
        """Retained alarms of a node, written by the controller."""
        return f"{self.root}/lights/node/{node}/alarms"

    def traffic_count(self, segment: str) -> str:
        """Counts of a road segment."""
        return f"{self.root}/traffic/segment/{segment}/count"

    def sim_fault(self, node: str) -> str:
        """Fault injection for a simulated node."""
        return f"{self.root}/sim/lights/node/{node}/fault"

    def node_from(self, topic: str) -> tuple[str, str] | None:
        """``(node, leaf)`` for a topic under ``lights/node/``, else None."""
        head = f"{self.root}/lights/node/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2 or not rest[0]:
            return None
        return rest[0], rest[1]

    def segment_from(self, topic: str) -> str | None:
        """Segment id of a traffic count topic, else None."""
        head = f"{self.root}/traffic/segment/"
        if topic.startswith(head) and topic.endswith("/count"):
            seg = topic[len(head) : -len("/count")]
            return seg if seg and "/" not in seg else None
        return None


M = TypeVar("M", bound=BaseModel)


def decode(model: type[M], payload: bytes | str) -> M:
    """Parse and validate a JSON payload; any problem becomes one :class:`PayloadError`."""
    try:
        raw: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError("", f"not JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:
        # e.g. an integer of 5,000 digits, or brackets nested thousands deep
        raise PayloadError(
            "", f"not acceptable JSON ({type(exc).__name__}: {str(exc)[:80]})"
        ) from None
    if not isinstance(raw, dict):
        raise PayloadError("", f"expected a JSON object, got {type(raw).__name__}")
    try:
        return model.model_validate(raw, context={_FROM_JSON: True})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        msg = err["msg"]
        if err["type"] == "value_error" and isinstance(value, dict):
            # The check of the JSON types of an object's keys: its message names the key.
            key, _, why = msg.removeprefix("Value error, ").partition(": ")
            raise PayloadError(f"{field}.{key}" if field else key, why) from None
        # reprlib: a 5 MB string or a list nested 900 deep is shown in a few characters.
        shown = _SHORT.repr(value) if not isinstance(value, dict) else "{…}"
        raise PayloadError(field or "payload", f"{msg} (got {shown})") from None


_SHORT = reprlib.Repr()
_SHORT.maxstring = 57
_SHORT.maxother = 57
_SHORT.maxlist = 6
_SHORT.maxlevel = 3


def encode(message: BaseModel) -> bytes:
    """Serialise a payload model to compact JSON."""
    return message.model_dump_json(exclude_none=False).encode()
