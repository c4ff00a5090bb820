"""A simulated street-light node as a pure state machine (no sockets, no OS clock).

Time comes in from outside: every method takes ``now``, monotonic seconds, and the node turns
``now`` into wall-clock time (for the age of a command, the local time of day of a fallback
program and the ``ts`` of its state) through the ``wall`` function it was built with. Tests
drive it with made-up times; :mod:`simulator.lights` drives it with the real (or a simulated)
clock over MQTT.

The lamp's physics (:class:`LampModel`) is the simulator's own and deliberately independent of
the controller's energy model: the controller must *measure* what this lamp does.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from devices.lights import (
    FallbackProgram,
    LightCommand,
    NodeFault,
    NodeMode,
    NodeState,
    PayloadError,
)

__all__ = [
    "CommandOutcome",
    "InjectedFault",
    "LampModel",
    "LightNode",
    "WallClock",
]

WallClock = Callable[[float], dt.datetime]
"""Maps the node's monotonic ``now`` to an aware wall-clock datetime."""


class InjectedFault(StrEnum):
    """Faults the simulator can inject (the names of :class:`devices.lights.SimFault`)."""

    LAMP_FAILURE = "lamp_failure"  # driver obeys, lamp dark: power ≈ standby, level as commanded
    DRIVER_FAILURE = "driver_failure"  # node diagnoses it: light out, power ≈ standby
    SUPPLY_LOST = "supply_lost"  # mains gone: light out, power 0, deaf to commands
    NODE_OFFLINE = "node_offline"  # communication lost (the MQTT runner cuts the link)
    DAY_BURNER = "day_burner"  # relay stuck closed: lamp at 100 % whatever the command


class CommandOutcome(StrEnum):
    """What :meth:`LightNode.command` did with a command."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # cmd_id already applied: nothing changes (idempotent)
    STALE = "stale"  # issued too long ago (or too far in the future): ignored
    UNPOWERED = "unpowered"  # supply lost: the node cannot hear anything


@dataclass(frozen=True)
class LampModel:
    """Input power of an LED luminaire (lamp + driver) as a function of the driver's output level.

    ``rated_w`` is the input power at 100 %. Off (level 0) the node draws ``standby_w``
    (controller electronics and driver in standby). Lit, the driver adds a no-load loss, so
    its efficiency falls at low output: the input power is

        P(L) = standby + (rated - standby) * (n + (1 - n) * (a*x + (1 - a)*x²)),  x = L/100

    with ``n = no_load_share`` and ``a = linear_share``: increasing in L, ``P(100) = rated``,
    and bounded by ``[standby_w, rated_w]``. The quadratic term stands for resistive losses that
    grow with current. Drivers cannot dim below ``min_dim`` %: a lit level is held at least there.
    """

    rated_w: float = 100.0
    min_dim: float = 10.0
    standby_w: float = 0.5
    no_load_share: float = 0.06
    linear_share: float = 0.85

    def __post_init__(self) -> None:
        if not 0.0 < self.rated_w <= 100_000.0:  # NodeState caps power_w at 100 kW
            raise ValueError(f"rated_w must be in (0, 100000] W, got {self.rated_w!r}")
        if not 0.0 <= self.standby_w < self.rated_w:
            raise ValueError(f"standby_w must be in [0, rated_w), got {self.standby_w!r}")
        if not 0.0 <= self.min_dim <= 100.0:
            raise ValueError(f"min_dim must be in [0, 100] %, got {self.min_dim!r}")
        if not 0.0 <= self.no_load_share < 1.0:
            raise ValueError(f"no_load_share must be in [0, 1), got {self.no_load_share!r}")
        if not 0.0 <= self.linear_share <= 1.0:
            raise ValueError(f"linear_share must be in [0, 1], got {self.linear_share!r}")

    def output(self, level: float) -> float:
        """The level the driver really holds for a requested one: 0, or within [min_dim, 100]."""
        if level <= 0.0:
            return 0.0
        return min(100.0, max(self.min_dim, level))

    def power_w(self, level: float) -> float:
        """Input power in W at a driver output ``level`` (%); ``standby_w`` when off."""
        if level <= 0.0:
            return self.standby_w
        x = min(level, 100.0) / 100.0
        a = self.linear_share
        share = self.no_load_share + (1.0 - self.no_load_share) * (a * x + (1.0 - a) * x * x)
        return self.standby_w + (self.rated_w - self.standby_w) * share

    def efficiency(self, level: float) -> float:
        """Relative efficacy: light output per input watt, 1.0 at 100 % (0 when off)."""
        if level <= 0.0:
            return 0.0
        return (min(level, 100.0) / 100.0) * self.rated_w / self.power_w(level)


@dataclass
class _Ramp:
    """The driver's plan: linear from ``start`` at ``t0`` to ``end`` at ``t1``, then hold."""

    start: float
    end: float
    t0: float
    t1: float

    def at(self, t: float) -> float:
        if t >= self.t1:
            return self.end
        if t <= self.t0:
            return self.start
        return self.start + (self.end - self.start) * (t - self.t0) / (self.t1 - self.t0)

    def time_of(self, level: float) -> float | None:
        """When the ramp passes ``level`` strictly inside (t0, t1), else None."""
        lo, hi = sorted((self.start, self.end))
        if self.t1 <= self.t0 or not lo < level < hi:
            return None
        return self.t0 + (level - self.start) / (self.end - self.start) * (self.t1 - self.t0)


class LightNode:
    """One light point: driver plan, faults, REMOTE/FALLBACK mode and its meters.

    Rules:

    - A command ramps linearly from the level the driver outputs now to the command's level
      (held within the lamp's ``[min_dim, 100]`` when lit) over ``ramp_s``.
    - A command whose ``issued`` is more than ``fallback_after_s`` away from the node's wall
      clock (in the past, or in the future: a controller clock gone wrong) is stale and ignored.
      This is what stops a retained group command left by a dead controller from driving a node
      that starts later.
    - A ``cmd_id`` already applied (the last 64 are remembered) changes nothing, except that a
      fresh repeat proves the controller alive (resets the silence timer; in FALLBACK it brings
      the node back to REMOTE like any fresh command).
    - No fresh command for ``fallback_after_s`` → FALLBACK: the node runs its stored
      :class:`FallbackProgram` by local time of day, ramping over ``fallback_ramp_s``. With no
      program stored it keeps the level it had (a node cannot know whether it is dark; holding
      the last commanded level is the least surprising choice). The silence timer starts when
      the node starts. The next fresh command brings it back to REMOTE.
    - ``level`` reports what the lamp outputs, ``target`` where that output is heading (both
      after the ``min_dim`` clamp; ``level == target`` unless ramping), ``cmd_id`` the last
      command applied.
    - Meters: ``energy_wh`` integrates input power (exactly: power is quadratic in a level that
      is linear in time, so Simpson's rule on each piece is exact), ``burn_h`` counts time with
      ``level > 0``, ``switches`` counts off→on transitions of ``level``.

    Faults (see :class:`InjectedFault`) change what the node outputs and reports, not its plan:
    clearing one brings back the level the plan has reached by then. A fault that forces the
    output (driver failure and lost supply: 0 %; day burner: 100 %) forces the reported
    ``target`` too, since that is where the light stays; ``cmd_id`` still shows that the
    command was received.
    """

    def __init__(
        self,
        node: str,
        group: str,
        lamp: LampModel | None = None,
        *,
        now: float,
        wall: WallClock,
        fallback_after_s: float = 300.0,
        fallback_ramp_s: float = 2.0,
        initial_level: float = 0.0,
    ) -> None:
        if fallback_after_s <= 0:
            raise ValueError("fallback_after_s must be positive")
        self.node = node
        self.group = group
        self.lamp = lamp or LampModel()
        self.wall = wall
        self.fallback_after_s = float(fallback_after_s)
        self.fallback_ramp_s = float(fallback_ramp_s)
        start = self.lamp.output(initial_level)
        self._plan = _Ramp(start, start, now, now)
        self._t = now  # meters are integrated up to here
        self._last_heard = now  # last fresh command (or start)
        self.mode = NodeMode.REMOTE
        self.cmd_id: str | None = None
        self.fallback: FallbackProgram | None = None
        self._fallback_zone: dt.tzinfo | None = None
        self.faults: set[InjectedFault] = set()
        self._recent: deque[str] = deque(maxlen=64)
        self._recent_set: set[str] = set()
        self.energy_wh = 0.0
        self.burn_s = 0.0
        self.switches = 0
        self._lit = self._reported(start) > 0.0
        #: Set whenever something a controller should hear about changed (target, mode, faults,
        #: the end of a ramp); the MQTT runner clears it after publishing the state.
        self.changed = True

    # -- inputs ---------------------------------------------------------------------------
    def command(self, cmd: LightCommand, now: float) -> CommandOutcome:
        """Apply a command (see the class docstring for the rules); returns what happened."""
        self.tick(now)
        if InjectedFault.SUPPLY_LOST in self.faults:
            return CommandOutcome.UNPOWERED
        if self.command_age(cmd, now) is not None:
            return CommandOutcome.STALE
        if cmd.cmd_id in self._recent_set and self.mode is NodeMode.REMOTE:
            self._last_heard = now  # the controller is alive; nothing else changes
            return CommandOutcome.DUPLICATE
        self._remember(cmd.cmd_id)
        self._last_heard = now
        if self.mode is not NodeMode.REMOTE:
            self.mode = NodeMode.REMOTE
            self.changed = True
        self.cmd_id = cmd.cmd_id
        self._ramp_to(cmd.level, cmd.ramp_s, now)
        self.changed = True  # a new cmd_id is the acknowledgement, even at the same level
        return CommandOutcome.APPLIED

    def command_age(self, cmd: LightCommand, now: float) -> float | None:
        """Age in seconds if ``cmd`` is stale (negative: from the future), else None."""
        age = (self.wall(now) - cmd.issued).total_seconds()
        return age if abs(age) > self.fallback_after_s else None

    def set_fallback(self, program: FallbackProgram, now: float) -> bool:
        """Store a fallback program; False (and nothing changes) if not newer than the stored one.

        Raises :class:`PayloadError` for a program of another group or an unknown time zone.
        """
        if program.group != self.group:
            raise PayloadError(
                "group", f"program for group {program.group!r} sent to group {self.group!r}"
            )
        try:
            zone = ZoneInfo(program.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: "America" is a directory of the tz database, a 300-character key is
            # too long a file name; both raise past ZoneInfoNotFoundError.
            raise PayloadError("timezone", f"unknown time zone {program.timezone!r}") from None
        self.tick(now)
        if self.fallback is not None and program.issued < self.fallback.issued:
            return False
        if program == self.fallback:
            return False
        self.fallback = program
        self._fallback_zone = zone
        if self.mode is NodeMode.FALLBACK:
            self._follow_fallback(now)
        return True

    def inject(self, fault: InjectedFault | str, now: float) -> bool:
        """Switch a fault on; False if it already was."""
        fault = InjectedFault(fault)
        self.tick(now)
        if fault in self.faults:
            return False
        self.faults.add(fault)
        self._sync_lit(now)
        self.changed = True
        return True

    def clear(self, fault: InjectedFault | str, now: float) -> bool:
        """Switch a fault off; False if it was not on."""
        fault = InjectedFault(fault)
        self.tick(now)
        if fault not in self.faults:
            return False
        self.faults.discard(fault)
        self._sync_lit(now)
        self.changed = True
        self.tick(now)  # power back: the silence timer may have run out meanwhile
        return True

    def boot(self, now: float) -> None:
        """The node's electronics start (the MQTT runner starting): the silence timer starts now."""
        if now > self._t:
            self._advance(now)
        self._last_heard = now

    def tick(self, now: float) -> bool:
        """Advance meters and ramp to ``now``, then the REMOTE/FALLBACK logic; True if changed."""
        if now > self._t:
            self._advance(now)
        if (
            self.mode is NodeMode.REMOTE
            and now - self._last_heard >= self.fallback_after_s
            and InjectedFault.SUPPLY_LOST not in self.faults
        ):
            self.mode = NodeMode.FALLBACK
            self.changed = True
        if self.mode is NodeMode.FALLBACK and self.fallback is not None:
            self._follow_fallback(now)
        return self.changed

    # -- outputs --------------------------------------------------------------------------
    @property
    def target(self) -> float:
        """The level the driver plan is heading to (what the last command or program asked)."""
        return self._plan.end

    @property
    def ramping(self) -> bool:
        """True while the driver is between two levels."""
        return self._t < self._plan.t1

    @property
    def burn_h(self) -> float:
        """Burning hours (time with level > 0)."""
        return self.burn_s / 3600.0

    @property
    def silent_s(self) -> float:
        """Seconds since the last fresh command (as of the last tick)."""
        return self._t - self._last_heard

    def planned_level(self, now: float) -> float:
        """What the driver outputs at ``now`` by its plan, faults aside."""
        return self._driver(now)

    def level(self, now: float) -> float:
        """The level the node reports at ``now`` (the driver's output as it sees it)."""
        return self._reported(self._driver(now))

    def power_w(self, now: float) -> float:
        """Input power at ``now``."""
        return self._power(self._driver(now))

    def diagnosed_faults(self) -> list[NodeFault]:
        """Faults the node itself can see and report."""
        out = []
        if InjectedFault.DRIVER_FAILURE in self.faults:
            out.append(NodeFault.DRIVER_FAILURE)
        if InjectedFault.SUPPLY_LOST in self.faults:
            out.append(NodeFault.SUPPLY_LOST)
        return out

    def state(self, now: float) -> NodeState:
        """The node's state message as of ``now`` (advances the meters to ``now`` first)."""
        self.tick(now)
        return NodeState(
            node=self.node,
            group=self.group,
            ts=self.wall(now),
            level=round(self.level(now), 2),
            target=round(self._reported(self._plan.end), 2),
            cmd_id=self.cmd_id,
            mode=self.mode,
            power_w=round(self.power_w(now), 3),
            energy_wh=round(self.energy_wh, 4),
            burn_h=round(self.burn_h, 5),
            switches=self.switches,
            faults=self.diagnosed_faults(),
        )

    # -- internals ------------------------------------------------------------------------
    def _remember(self, cmd_id: str) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(cmd_id)
        self._recent_set.add(cmd_id)

    def _ramp_to(self, level: float, ramp_s: float, now: float) -> None:
        end = self.lamp.output(level)
        start = self._driver(now)
        if ramp_s <= 0 or start == end:
            self._plan = _Ramp(end, end, now, now)
        else:
            self._plan = _Ramp(start, end, now, now + ramp_s)
        self._sync_lit(now)

    def _sync_lit(self, now: float) -> None:
        # Counts off→on transitions of the reported level, whatever caused them.
        lit = self._reported(self._driver(now)) > 0.0
        if lit and not self._lit:
            self.switches += 1
        self._lit = lit

    def _follow_fallback(self, now: float) -> None:
        assert self.fallback is not None
        zone = self._fallback_zone or dt.UTC
        local = self.wall(now).astimezone(zone).time().replace(tzinfo=None)
        wanted = self.lamp.output(self.fallback.level_at(local))
        if wanted != self._plan.end:
            self._ramp_to(wanted, self.fallback_ramp_s, now)
            self.changed = True

    def _driver(self, now: float) -> float:
        """The driver's output at ``now``: the plan, held at ``min_dim`` while lit."""
        return self.lamp.output(self._plan.at(now))

    def _reported(self, planned: float) -> float:
        f = self.faults
        if InjectedFault.SUPPLY_LOST in f or InjectedFault.DRIVER_FAILURE in f:
            return 0.0
        if InjectedFault.DAY_BURNER in f:
            return 100.0
        return planned

    def _power(self, planned: float) -> float:
        f = self.faults
        if InjectedFault.SUPPLY_LOST in f:
            return 0.0
        if InjectedFault.DRIVER_FAILURE in f:
            return self.lamp.standby_w
        level = 100.0 if InjectedFault.DAY_BURNER in f else planned
        if InjectedFault.LAMP_FAILURE in f:
            return self.lamp.standby_w
        return self.lamp.power_w(level)

    def _advance(self, now: float) -> None:
        """Integrate meters over [self._t, now]; faults and plan are constant in between."""
        a, plan = self._t, self._plan
        if a >= plan.t1:
            # Steady (the common case, thousands of times a second): constant power.
            level = plan.end
            dt_s = now - a
            self.energy_wh += self._power(level) * dt_s / 3600.0
            if self._reported(level) > 0.0:
                self.burn_s += dt_s
            self._t = now
            return
        # Break points: the end of the ramp and where it crosses min_dim (below which a lit
        # driver holds min_dim). In each piece the driver level is linear or constant in time,
        # so the power (quadratic in level) is quadratic in time and Simpson's rule is exact.
        cuts = [a]
        crossing = plan.time_of(self.lamp.min_dim)
        if crossing is not None and a < crossing < min(now, plan.t1):
            cuts.append(crossing)
        if plan.t1 < now:
            cuts.append(plan.t1)
        cuts.append(now)
        energy_j = 0.0
        for t0, t1 in itertools.pairwise(cuts):
            if t1 <= t0:
                continue
            mid = (t0 + t1) / 2.0
            # Whether the driver is lit is decided at the midpoint: a ramp from 0 is lit right
            # after it starts, a ramp to 0 until it ends.
            lit = plan.at(mid) > 0.0
            p0, pm, p1 = (
                self._power(max(self.lamp.min_dim, plan.at(t)) if lit else 0.0)
                for t in (t0, mid, t1)
            )
            energy_j += (t1 - t0) * (p0 + 4.0 * pm + p1) / 6.0
            if self._reported(plan.at(mid) if lit else 0.0) > 0.0:
                self.burn_s += t1 - t0
        self.energy_wh += energy_j / 3600.0
        self._t = now
        self._sync_lit(now)
        if now >= plan.t1:
            self.changed = True  # the end of a ramp is worth a report
