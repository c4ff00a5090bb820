"""A node's last reported state, as the controller keeps it: one small record per node.

The controller holds the latest state of every node it runs (10,000 at the scale target). A
validated :class:`~devices.lights.NodeState` is a pydantic model: ≈1.7 KB and four objects
the garbage collector tracks (the model, its ``__dict__``, its fields-set and its fault list).
Kept as they come, the states were most of the controller's memory, and each one received
replaced an old object with a new one in the collector's youngest generation: at ≈400 states
a second its young passes walked tens of thousands of them (``docs/benchmarks.md``, *Scale*).

:class:`NodeReport` holds the same facts in slots and is updated in place, so a state received
leaves no new container behind: the model it was decoded into is freed at once, by reference
counting. Strings equal to ones the controller already holds (the node's group, the group's
current ``cmd_id``) are stored as those objects. :meth:`NodeReport.to_state` gives the
pydantic model back for the API and the tests.
"""

from __future__ import annotations

import datetime as dt

from devices.lights import NodeFault, NodeMode, NodeState

__all__ = ["NodeReport"]


class NodeReport:
    """The facts of a node's last :class:`~devices.lights.NodeState` (read-only outside
    :class:`~controller.lighting.core.LightingCore`, which updates it in place)."""

    __slots__ = (
        "burn_h",
        "cmd_id",
        "energy_wh",
        "faults",
        "group",
        "level",
        "mode",
        "power_w",
        "switches",
        "target",
        "ts",
    )

    group: str
    ts: dt.datetime
    level: float
    target: float
    cmd_id: str | None
    mode: NodeMode
    power_w: float
    energy_wh: float
    burn_h: float
    switches: int
    faults: tuple[NodeFault, ...]

    def __init__(self, state: NodeState, group: str, cmd_id: str | None) -> None:
        self._take(state, group, cmd_id, tuple(state.faults) if state.faults else ())

    def update(self, state: NodeState, group: str, cmd_id: str | None) -> bool:
        """Take ``state``'s facts; ``group`` and ``cmd_id`` are equal to the state's (the
        caller passes objects it already holds when it has them). Returns whether anything
        differs from what was held."""
        # tuple() of an empty list is the shared empty tuple: no new object for a healthy node.
        faults = tuple(state.faults) if state.faults else ()
        if (
            self.ts == state.ts
            and self.level == state.level
            and self.target == state.target
            and self.cmd_id == cmd_id
            and self.mode is state.mode
            and self.power_w == state.power_w
            and self.energy_wh == state.energy_wh
            and self.burn_h == state.burn_h
            and self.switches == state.switches
            and self.faults == faults
            and self.group == group
        ):
            return False
        self._take(state, group, cmd_id, faults)
        return True

    def _take(
        self, state: NodeState, group: str, cmd_id: str | None, faults: tuple[NodeFault, ...]
    ) -> None:
        self.group = group
        self.ts = state.ts
        self.level = state.level
        self.target = state.target
        self.cmd_id = cmd_id
        self.mode = state.mode
        self.power_w = state.power_w
        self.energy_wh = state.energy_wh
        self.burn_h = state.burn_h
        self.switches = state.switches
        self.faults = faults

    def to_state(self, node: str) -> NodeState:
        """The report as the payload model it came from (validated when it was received)."""
        return NodeState.model_construct(
            node=node,
            group=self.group,
            ts=self.ts,
            level=self.level,
            target=self.target,
            cmd_id=self.cmd_id,
            mode=self.mode,
            power_w=self.power_w,
            energy_wh=self.energy_wh,
            burn_h=self.burn_h,
            switches=self.switches,
            faults=list(self.faults),
        )

    def __repr__(self) -> str:
        return (
            f"NodeReport(group={self.group!r}, level={self.level}, target={self.target}, "
            f"cmd_id={self.cmd_id!r}, mode={self.mode.value})"
        )
