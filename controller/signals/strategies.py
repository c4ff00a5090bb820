"""Signal strategies: what to *ask* the phase engine for, step by step.

A strategy never sets a signal. At every step it looks at the engine's output and at the
:class:`~controller.signals.detectors.TrafficView` and returns a
:class:`~controller.signals.engine.Request` — which stage to serve next and whether to end the
current one now. The engine decides what is legal: minimum greens, clearances, intergreens
and the max-out (design principle 4). All strategies are pure and take ``now`` as an argument.

* :class:`FixedTime` — a plan's stage sequence and greens, locked to a cycle clock
  ``(now - offset) mod cycle`` so that neighbouring intersections keep their offsets.
* :class:`Actuated` — stages with a call, in sequence; a stage is extended while its vehicles
  keep actuating its detectors closer than ``gap_s`` (gap-out), up to the engine's max green
  (max-out); stages without a call are skipped; ``recall`` groups always call.
* :class:`Adaptive` — a rolling-horizon rollout that minimises vehicle delay: every second it
  compares "switch to stage S now" with "hold the current stage Δ more, then switch", each
  followed by a queue-clearing base policy over ~2 minutes, in a fluid queue model fed by the
  detectors' queue and arrival estimates and the vehicles already seen upstream; a starvation
  guard bounds every wait, and an arterial can be coordinated. See ``docs/signals.md``.
* :class:`StrategySelector` — the strategy of the time of day (``strategy.schedule``).

:func:`webster_plan` derives a Webster-optimal fixed-time plan from design flows.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.signals.detectors import TrafficView
from controller.signals.engine import EngineOutput, Request
from controller.signals.model import (
    FixedPlanConfig,
    GroupKind,
    Intersection,
    Signal,
)

__all__ = [
    "Actuated",
    "Adaptive",
    "AdaptiveConfig",
    "FixedTime",
    "StageTiming",
    "Strategy",
    "StrategySelector",
    "decision_reason",
    "webster_plan",
]

_HOLD = Request()


class Strategy(Protocol):
    """Anything that asks the engine for stages."""

    @property
    def name(self) -> str:
        """Short name for logs and the status topic."""
        ...

    def decide(self, now: float, out: EngineOutput, view: TrafficView) -> Request:
        """The request for this step."""
        ...


# -- stage timing shared by the strategies ----------------------------------------------------


class StageTiming:
    """Stage-level timing derived from an :class:`Intersection`.

    ``vehicles[s]`` / ``peds[s]`` split a stage's groups. ``min_green[s]`` is the longest
    minimum green of its vehicle groups; ``ped_green[s]`` how long a served crossing holds the
    stage (walk + clearance, the longest of its crossings; 0 without crossings);
    ``max_green[s]`` the engine's max-out (the least ``max_green_s`` of its vehicle groups; a
    stage of crossings only: ``ped_green``). :meth:`min_hold` combines them.

    ``starts[a][b]`` maps every group of ``b`` that is not in ``a`` to the time from the end of
    ``a``'s green until that group may turn green: its largest intergreen from a conflicting
    vehicle group of ``a`` and, from a conflicting crossing of ``a`` (whose walk and clearance
    ended before the stage did), the all-red; 0 when nothing conflicts, as the engine starts it
    at once. ``transition[a][b]`` is the largest of them — when ``b`` is fully green.
    """

    def __init__(self, x: Intersection) -> None:
        self.x = x
        self.ids: tuple[str, ...] = tuple(sid for sid, _ in x.stages)
        self.members: dict[str, frozenset[int]] = dict(x.stages)
        is_ped = [g.kind is GroupKind.PEDESTRIAN for g in x.groups]
        self.peds = {sid: frozenset(i for i in m if is_ped[i]) for sid, m in x.stages}
        self.vehicles = {sid: m - self.peds[sid] for sid, m in x.stages}
        self.ped_green = {
            sid: max(
                (x.groups[i].min_green_total_s + x.clearance[i] for i in self.peds[sid]),
                default=0.0,
            )
            for sid, _ in x.stages
        }
        self.min_green = {
            sid: max((x.groups[i].min_green_s for i in self.vehicles[sid]), default=0.0)
            for sid, _ in x.stages
        }
        self.max_green = {
            sid: min(
                (x.groups[i].max_green_s for i in self.vehicles[sid]),
                default=self.ped_green[sid],
            )
            for sid, _ in x.stages
        }
        self.starts: dict[str, dict[str, dict[int, float]]] = {}
        self.transition: dict[str, dict[str, float]] = {}
        for a, ma in x.stages:
            self.starts[a] = {}
            self.transition[a] = {}
            for b, mb in x.stages:
                offs = {
                    j: max(
                        [
                            x.intergreen[i][j] if not is_ped[i] else x.all_red(i, j)
                            for i in ma - mb
                            if x.conflict[i][j]
                        ],
                        default=0.0,
                    )
                    for j in mb - ma
                }
                self.starts[a][b] = offs
                self.transition[a][b] = max(offs.values(), default=0.0)
        self.diff: dict[str, dict[str, frozenset[int]]] = {
            a: {b: ma - mb for b, mb in x.stages} for a, ma in x.stages
        }
        """``diff[a][b]``: the groups of ``a`` that ``b`` does not have (``b`` ends them)."""
        self.pos = {sid: k for k, sid in enumerate(self.ids)}
        """Stage id → its place in :attr:`ids`."""

    def min_hold(self, sid: str, with_peds: bool) -> float:
        """The shortest green of a stage: its vehicles' minimum, and its crossings' if served."""
        return max(self.min_green[sid], self.ped_green[sid] if with_peds else 0.0)

    def after(self, sid: str) -> str:
        """The stage after ``sid`` in the configured order."""
        k = self.ids.index(sid)
        return self.ids[(k + 1) % len(self.ids)]


def stage_min_left(out: EngineOutput, leaving: frozenset[int], now: float) -> float:
    """How long until the running stage may end toward a stage without ``leaving``'s groups:
    the engine's per-group release times (minimum greens, walks and clearances)."""
    rel = out.release_at
    if not rel:
        return 0.0
    return max(0.0, max((rel[i] for i in leaving), default=-math.inf) - now)


def called_peds(x: Intersection, view: TrafficView) -> frozenset[str]:
    """Crossings with a call (a push-button press since their last walk, a recall, a failure)."""
    return frozenset(
        g.id
        for g, v in zip(x.groups, view.groups, strict=True)
        if g.kind is GroupKind.PEDESTRIAN and v.call
    )


def _hold_in_clearance(out: EngineOutput, peds: frozenset[str] | None = None) -> Request:
    """During a clearance or the start-up, ask for nothing new (a request for the stage being
    entered is a hold; an ``end_green`` left standing would cut the next stage to its minimum).
    ``peds`` are the crossings to serve when the start stage goes green.
    """
    return Request(next_stage=out.stage, peds=peds)


# -- fixed time --------------------------------------------------------------------------------


class FixedTime:
    """A fixed-time plan on a cycle clock.

    The plan's greens are stretched (or shrunk, never below the minimum greens) so that greens
    plus the intergreens between consecutive stages fill ``cycle_s``. Stage *k*'s green is
    scheduled at ``[start_k, start_k + green_k)`` of the cycle ``(now - offset_s) mod cycle``.
    The running stage is held until its scheduled end and then ended toward the next stage of
    the plan; when the engine is out of step (after start-up, a flash, a strategy change or a
    minimum green that overran) the running stage ends as soon as its window has passed and
    the following greens are shortened or lengthened until the plan is back in step.
    """

    def __init__(self, x: Intersection, plan: FixedPlanConfig) -> None:
        timing = StageTiming(x)
        seq = [sid for sid in plan.greens if sid in timing.members]
        if len(seq) < 2:
            raise ValueError(f"plan {plan.name!r}: needs at least two known stages")
        self.plan = plan
        self.sequence = tuple(seq)
        inter = [timing.transition[a][seq[(k + 1) % len(seq)]] for k, a in enumerate(seq)]
        # A fixed-time plan walks every crossing every cycle (pedestrian recall): a stage is
        # at least its vehicles' minimum green and its crossings' walk and clearance.
        mins = [timing.min_hold(s, True) for s in seq]
        greens = [max(plan.greens[s], m) for s, m in zip(seq, mins, strict=True)]
        want = plan.cycle_s - sum(inter)
        total = sum(greens)
        if want > total + 1e-9:
            greens = [g * want / total for g in greens]
        elif want < total - 1e-9:
            # shrink the part above the minimum greens proportionally
            spare = [g - m for g, m in zip(greens, mins, strict=True)]
            cut = min(total - want, sum(spare))
            if sum(spare) > 0:
                greens = [g - cut * sp / sum(spare) for g, sp in zip(greens, spare, strict=True)]
        self.greens = tuple(greens)
        self.intergreens = tuple(inter)
        self.cycle_s = sum(greens) + sum(inter)
        """The cycle actually run (``plan.cycle_s`` unless the minimum greens forbid it)."""
        starts, t = [], 0.0
        for g, i in zip(greens, inter, strict=True):
            starts.append(t)
            t += g + i
        self.starts = tuple(starts)
        self._pos = {sid: k for k, sid in enumerate(seq)}

    @property
    def name(self) -> str:
        return f"fixed:{self.plan.name}"

    def cycle_time(self, now: float) -> float:
        """Seconds into the cycle at ``now``."""
        return (now - self.plan.offset_s) % self.cycle_s

    def scheduled_stage(self, now: float) -> str:
        """The stage whose green (or the intergreen before it) is scheduled at ``now``."""
        c = self.cycle_time(now)
        k = bisect.bisect_right(self.starts, c) - 1
        end = self.starts[k] + self.greens[k]
        return self.sequence[k] if c < end else self.sequence[(k + 1) % len(self.sequence)]

    def decide(self, now: float, out: EngineOutput, view: TrafficView) -> Request:
        if out.phase != "green" or out.stage is None:
            return _hold_in_clearance(out)
        k = self._pos.get(out.stage)
        if k is None:  # a stage the plan does not use: leave it for the scheduled one
            return Request(next_stage=self.scheduled_stage(now), end_green=True)
        nxt = self.sequence[(k + 1) % len(self.sequence)]
        c = self.cycle_time(now)
        g = self.greens[k]
        to_end = (self.starts[k] + g - c) % self.cycle_s
        # Still inside (or ahead of) its window: hold; past it: end now.
        if 0 < to_end <= g + (self.cycle_s - g) / 2:
            return Request(next_stage=nxt)
        return Request(next_stage=nxt, end_green=True)


def webster_plan(
    x: Intersection,
    flows_vph: Mapping[str, float],
    *,
    name: str = "webster",
    sequence: Sequence[str] | None = None,
    saturation_vph_per_lane: float = 1800.0,
    min_cycle_s: float = 30.0,
    max_cycle_s: float = 150.0,
    offset_s: float = 0.0,
) -> FixedPlanConfig:
    """The best fixed-time plan for design flows (veh/h per group, all lanes), by Webster.

    For every cycle ``C`` from the shortest feasible one to ``max_cycle_s`` (1 s steps) the
    effective green ``C - L`` (``L``: the intergreens of the sequence; start-up lost time and
    the used part of the yellow cancel out) is shared in proportion to the stages' critical
    flow ratios ``q / s`` (equal degrees of saturation), never below a stage's minimum green or
    its crossings' walk and clearance (a fixed plan walks them every cycle) and never above its
    max green. The plan kept is the one with the least total delay by Webster's formula

        d = C (1 - λ)² / (2 (1 - λ x)) + x² / (2 q (1 - x)) - 0.65 (C / q²)^(1/3) x^(2 + 5 λ)

    summed over the vehicle groups weighted by their flows (``λ = g / C``, ``x`` the degree of
    saturation; an oversaturated group counts with a large penalty). This is Webster's own
    ``C0 = (1.5 L + 5) / (1 - Y)`` where no minimum binds, and it stays sensible where the
    pedestrian minima of some stages take green from the others (there the classic formula
    gives too short a cycle). A group in several consecutive stages is green through them.
    """
    timing = StageTiming(x)
    seq = list(sequence) if sequence is not None else list(timing.ids)
    seen: set[int] = set()
    ratios: list[float] = []
    for sid in seq:
        y = 0.0
        for i in timing.members[sid]:
            g = x.groups[i]
            if g.kind is not GroupKind.VEHICLE or i in seen:
                continue
            y = max(y, flows_vph.get(g.id, 0.0) / (g.lanes * saturation_vph_per_lane))
        seen |= timing.members[sid]
        ratios.append(y)
    inter = [timing.transition[a][seq[(k + 1) % len(seq)]] for k, a in enumerate(seq)]
    lost = sum(inter)
    mins = [timing.min_hold(s, True) for s in seq]
    maxs = [max(timing.max_green[s], m) for s, m in zip(seq, mins, strict=True)]
    floor = lost + sum(mins)
    top = max(max_cycle_s, floor)
    best: tuple[float, list[float]] | None = None
    c = max(min_cycle_s, floor)
    while c <= top + 1e-9:
        greens = _share(c - lost, ratios, mins, maxs)
        cost = _webster_delay(x, seq, timing, greens, inter, flows_vph, saturation_vph_per_lane)
        if best is None or cost < best[0] - 1e-9:
            best = (cost, greens)
        c += 1.0
    assert best is not None
    # Round the greens up to 0.1 s (never below a minimum) and make the cycle their sum.
    greens = [math.ceil(g * 10 - 1e-6) / 10 for g in best[1]]
    cycle = round(lost + sum(greens), 1)
    return FixedPlanConfig(
        name=name,
        cycle_s=cycle,
        offset_s=offset_s,
        greens=dict(zip(seq, greens, strict=True)),
    )


def _webster_delay(
    x: Intersection,
    seq: Sequence[str],
    timing: StageTiming,
    greens: Sequence[float],
    inter: Sequence[float],
    flows_vph: Mapping[str, float],
    saturation_vph_per_lane: float,
) -> float:
    """Total delay (veh·s per s) of a plan by Webster's formula; see :func:`webster_plan`."""
    cycle = sum(greens) + sum(inter)
    n = len(seq)
    total = 0.0
    for i, g in enumerate(x.groups):
        if g.kind is not GroupKind.VEHICLE:
            continue
        q = flows_vph.get(g.id, 0.0) / 3600.0
        if q <= 0:
            continue
        # green of the group: its stages, and the intergreens between two of them in a row
        green = 0.0
        for k, sid in enumerate(seq):
            if i in timing.members[sid]:
                green += greens[k]
                if i in timing.members[seq[(k + 1) % n]]:
                    green += inter[k]
        if green <= 0:
            total += q * 1e4
            continue
        lam = min(1.0, green / cycle)
        s_flow = g.lanes * saturation_vph_per_lane / 3600.0
        xs = q / (lam * s_flow)
        if xs >= 0.98:
            total += q * (1e3 + 1e3 * xs)  # oversaturated: queues grow without bound
            continue
        d = cycle * (1 - lam) ** 2 / (2 * (1 - lam * xs)) + xs**2 / (2 * q * (1 - xs))
        d -= 0.65 * (cycle / q**2) ** (1 / 3) * xs ** (2 + 5 * lam)
        total += q * max(0.0, d)
    return total


def _share(total: float, ratios: list[float], mins: list[float], maxs: list[float]) -> list[float]:
    """Split ``total`` in proportion to ``ratios`` within ``[mins, maxs]`` (water filling)."""
    n = len(ratios)
    fixed: dict[int, float] = {}
    while True:
        free = [k for k in range(n) if k not in fixed]
        rest = total - sum(fixed.values())
        weight = sum(ratios[k] for k in free)
        out = dict(fixed)
        for k in free:
            out[k] = rest * ratios[k] / weight if weight > 0 else rest / len(free)
        bad = [k for k in free if out[k] < mins[k] - 1e-9 or out[k] > maxs[k] + 1e-9]
        if not bad or not free:
            return [out[k] for k in range(n)]
        for k in bad:
            fixed[k] = mins[k] if out[k] < mins[k] else maxs[k]
        if len(fixed) == n:
            return [fixed[k] for k in range(n)]


# -- actuated ----------------------------------------------------------------------------------


class Actuated:
    """Fully actuated stage control: serve calls in sequence, gap-out, skip, recall."""

    def __init__(self, x: Intersection, gap_s: float = 3.0, recall: Sequence[str] = ()) -> None:
        if gap_s <= 0:
            raise ValueError(f"gap_s: {gap_s!r} must be positive")
        self.x = x
        self.timing = StageTiming(x)
        self.gap_s = gap_s
        self.recall = frozenset(x.index[g] for g in recall)
        self._recall_peds = frozenset(
            x.groups[i].id for i in self.recall if x.groups[i].kind is GroupKind.PEDESTRIAN
        )
        self._vehicles = {
            sid: tuple(i for i in m if x.groups[i].kind is GroupKind.VEHICLE) for sid, m in x.stages
        }

    @property
    def name(self) -> str:
        return "actuated"

    def _calls(self, view: TrafficView) -> set[int]:
        return {i for i, g in enumerate(view.groups) if g.call} | self.recall

    def next_stage(self, current: str, view: TrafficView) -> str | None:
        """The first stage after ``current`` with a call on a group ``current`` does not serve."""
        calls = self._calls(view)
        here = self.timing.members[current]
        ids = self.timing.ids
        k = ids.index(current)
        for step in range(1, len(ids)):
            sid = ids[(k + step) % len(ids)]
            if (self.timing.members[sid] - here) & calls:
                return sid
        return None

    def decide(self, now: float, out: EngineOutput, view: TrafficView) -> Request:
        peds = called_peds(self.x, view) | self._recall_peds
        if out.phase != "green" or out.stage is None:
            return _hold_in_clearance(out, peds)
        nxt = self.next_stage(out.stage, view)
        if nxt is None:
            return Request(peds=peds)  # nobody else waits: rest in green
        keep = self.timing.members[nxt]
        extending = any(
            view.groups[i].gap_s < self.gap_s for i in self._vehicles[out.stage] if i not in keep
        )
        # A crossing of the running stage called after it started walks only while the stage
        # rests; otherwise it waits for its stage's next turn (no late walk near the end).
        peds -= frozenset(self.x.groups[i].id for i in self.timing.peds[out.stage])
        return Request(next_stage=nxt, end_green=not extending, peds=peds)


# -- adaptive ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptiveConfig:
    """Tuning of :class:`Adaptive`; the defaults suit urban intersections."""

    horizon_s: float = 150.0
    """Look-ahead of each evaluation, at least (see ``horizon_cycles``)."""
    horizon_cycles: float = 1.5
    """The look-ahead grows to this many of the cycles the intersection has been running (the
    median time between two starts of the same stage), up to ``horizon_max_s``: an
    over-saturated intersection with long cycles needs to see its backlog drain, a busy one
    with short cycles decides better on a shorter view (0: fixed ``horizon_s``)."""
    horizon_max_s: float = 300.0
    decision_interval_s: float = 1.0
    """How often the decision is re-evaluated while a stage may end."""
    holds_s: tuple[float, ...] = (2.0, 4.0, 7.0, 11.0, 16.0, 24.0)
    """Candidate extensions of the running stage, besides "until its queue clears"."""
    saturation_vph_per_lane: float = 1800.0
    startup_lost_s: float = 2.0
    yellow_use_s: float = 2.0
    serve_queue: float = 1.0
    """The base policy serves a stage once one of its groups queues this many (veh / peds)."""
    clear_margin_s: float = 1.5
    """The base policy keeps a green this long after its queue is predicted to clear."""
    terminal_wait_s: float = 10.0
    """Expected further wait of a vehicle still queued at the end of the horizon."""
    ped_weight: float = 1.0
    """Weight of a waiting pedestrian against a waiting vehicle."""
    terminal_share: bool = True
    """Queues left at the horizon drain only during their own greens (see ``_share``)."""
    age_s: float = 0.0
    """Ageing of waiting groups: the weight of a group that has called for ``w`` seconds is
    multiplied by ``1 + (w / age_s)²`` (0: off)."""
    ped_defer_s: float = 60.0
    """A called crossing may be left for its stage's next turn (when walking it would hold the
    stage longer than its traffic needs) until it has waited this long."""
    max_wait_s: float = 180.0
    """Starvation guard: a vehicle group that has called this long is served next, whatever it
    costs (near saturation a tighter guard forces short, wasteful greens)."""
    ped_max_wait_s: float = 120.0
    """Starvation guard for crossings: a crossing called this long is served next."""
    tie_tolerance: float = 0.02
    """Costs within this share are a tie: the stage with more waiting (pressure) wins."""
    platoon_s: float = 20.0
    """Coordination: how long an upstream platoon takes to pass."""
    platoon_share: float = 0.7
    """Coordination: share of the arterial's vehicles that arrive in the upstream platoons."""
    platoon_cycle_s: float = 90.0
    """Coordination: the upstream cycle assumed until two upstream greens have been seen."""
    arterial_weight: float = 1.3
    """Coordination: weight of the arterial's vehicles while a platoon is due."""
    prune_holds: bool = True
    """Stop trying longer holds after two in a row that cost more (halves the rollouts)."""
    gap_out_s: float = 2.0
    """Gap-out: when every vehicle group of the running stage has been empty this long (no
    queue, nothing on its loops, nothing counted upstream and on its way) and a vehicle waits
    elsewhere, the stage ends at once without a rollout (0: off). An empty green serves nobody;
    the fluid model, which spreads arrivals evenly, would keep it for traffic that may never
    come while a real car waits at red."""


@dataclass
class _Decision:
    stage: str | None
    t: float
    request: Request
    costs: dict[str, float]
    kind: str = "switch"
    """Which rule decided: guard, rest, gap_out, early, hold or switch (telemetry)."""
    hold_s: float = 0.0
    """For a hold: how much longer the running stage is held."""


class Adaptive:
    """Delay-minimising adaptive control by rollout over a fluid queue model.

    Every ``decision_interval_s`` while the running stage may end (past its minimum green):

    1. **State.** Per group: queue ``Q`` and arrival rate ``λ`` from the detector bank, vehicles
       already counted upstream with their arrival times, saturation flow ``μ = lanes × 1800``.
    2. **Candidates.** "End now, then stage S" for every stage S that serves a waiting call,
       and "hold Δ, then the best S" for Δ in ``holds_s`` and the time the running stage needs
       to clear its queue (within its max green).
    3. **Rollout.** Each candidate is followed, over ``horizon_s``, by a base policy: stages in
       the configured order from S, each served when it has a queue, for the time it needs
       to discharge it (within its min and max green). Queues evolve as fluids — arrivals at
       ``λ`` (and the known upstream vehicles at their times), discharge at ``μ`` from the
       start-up lost time after green to ``yellow_use_s`` into the yellow, intergreens from the
       intersection model. The cost is the area under all queues (vehicle-seconds of delay;
       pedestrians weighted ``ped_weight``) plus the queues left at the horizon times the time
       they still need.
    4. **Choice.** The cheapest candidate wins; near-ties go to the stage with the larger
       waiting queue (pressure). A hold asks for nothing but names the next stage (so the
       engine can still max out); a switch asks ``end_green``.
    5. **Guard.** A group that has called for ``max_wait_s`` is served next regardless.

    Coordination (``intersection.coordination``): :meth:`notify_upstream_green` (or the
    ``upstream_greens`` feed) tells when the upstream intersection's arterial green started; the
    platoon then arrives ``travel_time_s`` later at the arterial stage's groups, which the model
    sees as extra arrivals weighted ``arterial_weight``.
    """

    def __init__(
        self,
        x: Intersection,
        config: AdaptiveConfig | None = None,
        *,
        upstream_greens: Callable[[], Sequence[float]] | None = None,
    ) -> None:
        self.x = x
        self.cfg = config or AdaptiveConfig()
        self.timing = StageTiming(x)
        self._upstream_feed = upstream_greens
        self._upstream: deque[float] = deque(maxlen=8)
        c = self.cfg
        n = x.n
        self._is_ped = tuple(g.kind is GroupKind.PEDESTRIAN for g in x.groups)
        self._peds = tuple((i, g.id) for i, g in enumerate(x.groups) if self._is_ped[i])
        self._mu = tuple(
            math.inf if self._is_ped[i] else g.lanes * c.saturation_vph_per_lane / 3600.0
            for i, g in enumerate(x.groups)
        )
        self._weight = tuple(c.ped_weight if p else 1.0 for p in self._is_ped)
        self._walk_s = tuple(g.min_green_total_s for g in x.groups)
        self._limit = tuple(c.ped_max_wait_s if p else c.max_wait_s for p in self._is_ped)
        # The share of the cycle a group can get at most: its stages' max greens over all
        # stages'. A queue left at the horizon drains only during its own greens, so a group
        # with a small share drains its backlog over more cycles (see the rollout's tail).
        total_max = sum(self.timing.max_green.values()) or 1.0
        self._share = tuple(
            min(
                1.0,
                sum(self.timing.max_green[sid] for sid, m in x.stages if i in m) / total_max,
            )
            if c.terminal_share
            else 1.0
            for i in range(n)
        )
        self._known_s = [0.0] * n  # how far ahead the upstream loops see each group
        for d in x.config.detectors:
            if d.kind.value == "upstream":
                i = x.index[d.group]
                v = x.groups[i].speed_kmh / 3.6 * 0.9
                self._known_s[i] = max(self._known_s[i], d.distance_m / v)
        coord = x.config.coordination
        self._arterial: frozenset[int] = frozenset()
        self._travel_s = 0.0
        if coord is not None and coord.arterial_stage in self.timing.members:
            self._arterial = frozenset(
                i for i in self.timing.members[coord.arterial_stage] if not self._is_ped[i]
            )
            self._travel_s = coord.travel_time_s
        self._last: _Decision | None = None
        self.evaluations = 0
        self._starts: dict[str, float] = {}
        self._cycles: deque[float] = deque(maxlen=9)
        self._seen_stage: str | None = None
        """How many rollouts have been evaluated (for benchmarks)."""

    @property
    def name(self) -> str:
        return "adaptive"

    @property
    def last_costs(self) -> dict[str, float]:
        """The costs of the latest decision's candidates (for logs and tests)."""
        return dict(self._last.costs) if self._last else {}

    @property
    def last_reason(self) -> str | None:
        """Which rule took the latest decision (None in a clearance): ``guard`` (a group
        waited its limit), ``rest`` (nobody else waits), ``gap_out`` (the stage ran empty),
        ``early`` (before the minimum green: the likeliest next stage is named), ``hold`` or
        ``switch`` (the rollout's choice)."""
        return self._last.kind if self._last else None

    @property
    def last_hold_s(self) -> float:
        """How much longer the latest ``hold`` decision holds the stage (0 otherwise)."""
        return self._last.hold_s if self._last else 0.0

    def notify_upstream_green(self, t: float) -> None:
        """The upstream intersection's arterial stage turned green at ``t``."""
        if not self._upstream or t > self._upstream[-1]:
            self._upstream.append(t)

    # -- the decision ---------------------------------------------------------------------------

    def decide(self, now: float, out: EngineOutput, view: TrafficView) -> Request:
        if self._upstream_feed is not None:
            ups = self._upstream
            for t in self._upstream_feed():
                if not ups or t > ups[-1]:  # notify_upstream_green, inlined (every step)
                    ups.append(t)
        stage = out.stage
        if out.phase != "green" or stage is None:
            self._last = None
            return _hold_in_clearance(out, self._called_peds(view))
        if stage != self._seen_stage:
            # A stage started: the time since its previous start is one cycle.
            self._seen_stage = stage
            prev = self._starts.get(stage)
            if prev is not None and now - prev > 1.0:
                self._cycles.append(now - prev)
            self._starts[stage] = now
        last = self._last
        if (
            last is not None
            and last.stage == stage
            and now - last.t < self.cfg.decision_interval_s - 1e-9
        ):
            return last.request  # decided less than a decision interval ago: it stands
        peds = self._called_peds(view)
        # A crossing of the running stage that was left out at its start walks late once it
        # has waited ped_defer_s (the engine serves it while the stage runs).
        here_peds = frozenset(
            self.x.groups[i].id
            for i in self.timing.peds[stage]
            if not self._waited(now, view, i, self.cfg.ped_defer_s)
        )
        guard = self._guard(now, stage, view)
        if guard is not None:
            req = Request(next_stage=guard, end_green=True, peds=peds - here_peds)
            self._last = _Decision(stage, now, req, {}, "guard")
            return req
        targets = self._targets(stage, view)
        if not targets:
            # Nobody waits elsewhere: rest in green, and walk a crossing of this stage that
            # calls meanwhile (it holds the stage for its walk and clearance).
            req = Request(peds=peds)
            self._last = _Decision(stage, now, req, {}, "rest")
            return req
        gap_out = self._gap_out(now, stage, view, targets)
        if gap_out is not None:
            req = Request(next_stage=gap_out, end_green=True, peds=peds - here_peds)
            self._last = _Decision(stage, now, req, {}, "gap_out")
            return req
        min_left = min(self._min_left(now, out, stage, s) for s in targets)
        if min_left > self.cfg.decision_interval_s:
            # Too early to end: name the likeliest next stage, decide later.
            nxt = max(targets, key=lambda s: self._pressure(s, stage, view))
            req = Request(next_stage=nxt, peds=peds - here_peds)
            self._last = _Decision(stage, now, req, {}, "early")
            return req
        req = self._evaluate(now, out, view, targets, peds, here_peds)
        return req

    def _called_peds(self, view: TrafficView) -> frozenset[str]:
        """:func:`called_peds`, from the crossings' indices (read at every step)."""
        groups = view.groups
        return frozenset([gid for i, gid in self._peds if groups[i].call])

    @staticmethod
    def _waited(now: float, view: TrafficView, i: int, limit: float) -> bool:
        g = view.groups[i]
        return g.call and g.call_since is not None and now - g.call_since >= limit

    def _may_defer(self, now: float, stage: str, view: TrafficView) -> bool:
        """Whether ``stage``'s called crossings may wait for its next turn: none of them has
        waited ``ped_defer_s`` yet."""
        called = [i for i in self.timing.peds[stage] if view.groups[i].call]
        if not called:
            return False
        for i in called:
            since = view.groups[i].call_since
            if since is not None and now - since >= self.cfg.ped_defer_s:
                return False
        return True

    def _min_left(self, now: float, out: EngineOutput, stage: str, nxt: str) -> float:
        leaving = self.timing.members[stage] - self.timing.members[nxt]
        return stage_min_left(out, leaving, now)

    def _guard(self, now: float, stage: str, view: TrafficView) -> str | None:
        """The stage to serve at once because a group has waited its limit, if any.

        The limit is ``max_wait_s`` for vehicles and ``ped_max_wait_s`` for pedestrians (who
        give up and cross against the red long before a driver gives up).
        """
        here = self.timing.members[stage]
        limit = self._limit
        worst: tuple[float, int] | None = None
        for i, g in enumerate(view.groups):
            if i in here or not g.call or g.call_since is None:
                continue
            over = (now - g.call_since) / limit[i]
            if over >= 1.0 and (worst is None or over > worst[0]):
                worst = (over, i)
        if worst is None:
            return None
        i = worst[1]
        starving = {
            k
            for k, g in enumerate(view.groups)
            if g.call and g.call_since is not None and now - g.call_since >= limit[k] * 0.75
        }
        best = max(
            (sid for sid in self.timing.ids if i in self.timing.members[sid]),
            key=lambda sid: (len(self.timing.members[sid] & starving), -self.timing.ids.index(sid)),
        )
        return best

    def _gap_out(self, now: float, stage: str, view: TrafficView, targets: list[str]) -> str | None:
        """The stage to switch to now because the running one is empty (see ``gap_out_s``)."""
        gap = self.cfg.gap_out_s
        if gap <= 0:
            return None
        if self._platoon_due(now, stage):
            return None  # empty now, but the upstream platoon is on its way: the rollout decides
        for i in self.timing.members[stage]:
            if self._is_ped[i]:
                continue
            g = view.groups[i]
            if g.failed or g.presence or g.queue >= 0.5 or g.gap_s < gap:
                return None
            if g.approaching and min(g.approaching) < gap + self.x.clearance[i]:
                return None
        here = self.timing.members[stage]
        waiting = {
            i
            for i, g in enumerate(view.groups)
            if i not in here and not self._is_ped[i] and (g.queue >= 0.5 or g.presence)
        }
        real = [s for s in targets if self.timing.members[s] & waiting]
        if not real:
            return None
        return max(real, key=lambda s: (self._pressure(s, stage, view), -self.timing.ids.index(s)))

    def horizon(self) -> float:
        """The look-ahead now: ``horizon_s``, or ``horizon_cycles`` recent cycles if longer."""
        c = self.cfg
        if c.horizon_cycles <= 0 or not self._cycles:
            return c.horizon_s
        cycle = sorted(self._cycles)[len(self._cycles) // 2]
        return min(c.horizon_max_s, max(c.horizon_s, c.horizon_cycles * cycle))

    def _platoon_due(self, now: float, stage: str) -> bool:
        """Whether an upstream platoon for the running (arterial) stage arrives within a cycle's
        worth of look-ahead: the last upstream greens, extrapolated by their spacing."""
        if not self._arterial or not self._upstream:
            return False
        if not self._arterial & self.timing.members[stage]:
            return False
        c = self.cfg
        ups = sorted(self._upstream)
        gaps = [b - a for a, b in itertools.pairwise(ups) if b - a > 1.0]
        cycle = sorted(gaps)[len(gaps) // 2] if gaps else c.platoon_cycle_s
        pending = [u for u in ups if u + self._travel_s + c.platoon_s >= now]
        if pending:
            t_up = pending[0]
        else:
            t_up = ups[-1]
            while t_up + self._travel_s + c.platoon_s < now:
                t_up += cycle
        return t_up + self._travel_s - now <= max(c.platoon_s, cycle / 2)

    def _targets(self, stage: str, view: TrafficView) -> list[str]:
        """Stages that would serve somebody who waits (or is about to arrive)."""
        here = self.timing.members[stage]
        waiting = {
            i
            for i, g in enumerate(view.groups)
            if i not in here and (g.call or (g.approaching and min(g.approaching) < 8.0))
        }
        return [s for s in self.timing.ids if s != stage and self.timing.members[s] & waiting]

    def _pressure(self, sid: str, stage: str, view: TrafficView) -> float:
        here = self.timing.members[stage]
        return sum(
            view.groups[i].queue * self._weight[i]
            for i in self.timing.members[sid]
            if i not in here
        )

    def _evaluate(
        self,
        now: float,
        out: EngineOutput,
        view: TrafficView,
        targets: list[str],
        peds: frozenset[str],
        here_peds: frozenset[str],
    ) -> Request:
        c = self.cfg
        stage = out.stage
        assert stage is not None
        model = _FluidModel(self, now, out, view)
        costs: dict[str, float] = {}
        best_switch: tuple[float, float, str] | None = None
        defer: set[str] = set()  # targets better entered without walking their crossings
        for s in targets:
            min_left = self._min_left(now, out, stage, s)
            cost = model.rollout(stage, min_left, s)
            if self._may_defer(now, s, view):
                no_walk = model.rollout(stage, min_left, s, walk=False)
                costs[f"switch:{s}:no-walk"] = no_walk
                if no_walk < cost:
                    cost = no_walk
                    defer.add(s)
            costs[f"switch:{s}"] = cost
            key = (cost, -self._pressure(s, stage, view), s)
            if best_switch is None or key < best_switch:
                best_switch = key
        assert best_switch is not None
        # near-ties: the stage with more waiting
        tied = [
            s for s in targets if costs[f"switch:{s}"] <= best_switch[0] * (1 + c.tie_tolerance)
        ]
        nxt = max(tied, key=lambda s: (self._pressure(s, stage, view), -costs[f"switch:{s}"]))
        switch_cost = costs[f"switch:{nxt}"]
        min_left = self._min_left(now, out, stage, nxt)
        max_left = max(min_left, self.timing.max_green[stage] - out.green_elapsed)
        holds = {h for h in c.holds_s if min_left < h < max_left}
        clear = model.clear_time(stage, nxt)
        if min_left < clear < max_left:
            holds.add(clear)
        best_hold = math.inf
        best_h = 0.0
        walk_next = nxt not in defer
        worse = 0
        for h in sorted(holds):
            cost = model.rollout(stage, h, nxt, walk=walk_next)
            costs[f"hold:{h:g}"] = cost
            if cost < best_hold:
                best_hold, best_h, worse = cost, h, 0
            else:
                # The cost of a hold is, in practice, unimodal in its length: two longer holds
                # in a row that cost more end the search (it halves the rollouts).
                worse += 1
                if worse >= 2 and c.prune_holds:
                    break
        if not walk_next:
            # Deferred crossings of the next stage are left out of the request, so the engine
            # enters it without their walks.
            peds = peds - frozenset(self.x.groups[i].id for i in self.timing.peds[nxt])
        self.evaluations += 1 + len(targets) + len(holds)
        if best_hold < switch_cost:
            # Holding: a crossing of this stage that calls may still walk if its walk and
            # clearance fit in what the stage is expected to run.
            fits = frozenset(
                self.x.groups[i].id
                for i in self.timing.peds[stage]
                if self.x.groups[i].min_green_total_s + self.x.clearance[i] <= max_left
            )
            req = Request(next_stage=nxt, peds=peds - (here_peds - fits))
            self._last = _Decision(stage, now, req, costs, "hold", best_h)
        else:
            req = Request(next_stage=nxt, end_green=True, peds=peds - here_peds)
            self._last = _Decision(stage, now, req, costs, "switch")
        return req


class _FluidModel:
    """Deterministic fluid queues of every group for one decision of :class:`Adaptive`."""

    def __init__(self, a: Adaptive, now: float, out: EngineOutput, view: TrafficView) -> None:
        c = a.cfg
        self.a = a
        self.c = c
        self.horizon = a.horizon()
        n = a.x.n
        self.n = n
        self.q0 = [max(0.0, g.queue) for g in view.groups]
        self.rates: list[list[tuple[float, float]]] = []
        self.masses: list[list[float]] = []
        self.weight = list(a._weight)
        if c.age_s > 0:
            # Ageing: who has already waited long counts more, so the rollout's one-second
            # view does not keep finding that "a little longer" for the big flow is cheaper
            # while a small one starves.
            for i, g in enumerate(view.groups):
                if g.call and g.call_since is not None:
                    self.weight[i] *= 1.0 + ((now - g.call_since) / c.age_s) ** 2
        lam = [max(0.0, g.arrivals_vph) / 3600.0 for g in view.groups]
        # Coordination: the upstream arterial greens release platoons that arrive here
        # travel_time_s later. The next upstream greens are extrapolated with the upstream
        # cycle (the median of the gaps between the greens seen). A share ``platoon_share`` of
        # the arterial's vehicles comes in the platoons, the rest spread over the cycle.
        platoons: list[tuple[float, float]] = []
        cycle = c.platoon_cycle_s
        if a._arterial and a._upstream:
            ups = list(a._upstream)
            gaps = sorted(b - a_ for a_, b in itertools.pairwise(ups) if b - a_ > 1.0)
            if gaps:
                cycle = gaps[len(gaps) // 2]
                nxt_up = ups[-1] + cycle
                while nxt_up + a._travel_s - now < self.horizon and len(ups) < 16:
                    ups.append(nxt_up)
                    nxt_up += cycle
            for t_up in ups:
                t0 = t_up + a._travel_s - now
                if t0 + c.platoon_s > 0 and t0 < self.horizon:
                    platoons.append((max(0.0, t0), t0 + c.platoon_s))
        share = c.platoon_share
        dense = max(1.0, cycle / c.platoon_s)
        for i, g in enumerate(view.groups):
            known = a._known_s[i] if g.approaching or a._known_s[i] > 0 else 0.0
            pieces: list[tuple[float, float]] = []
            if known > 0 and not g.failed:
                pieces.append((0.0, 0.0))
                self.masses.append(sorted(t for t in g.approaching if 0 <= t < self.horizon))
            else:
                known = 0.0
                self.masses.append([])
            pieces.append((known, lam[i]))
            if i in a._arterial and platoons:
                last = max(p1 for _, p1 in platoons)
                pts = {known, max(known, last)}
                for p0, p1 in platoons:
                    pts.update((max(p0, known), max(p1, known)))
                pieces = [(0.0, 0.0)] if known > 0 else []
                for t in sorted(pts):
                    if t >= last:
                        rate = lam[i]  # beyond the predicted platoons: the mean
                    elif any(p0 <= t < p1 for p0, p1 in platoons):
                        rate = lam[i] * ((1.0 - share) + share * dense)
                    else:
                        rate = lam[i] * (1.0 - share)
                    pieces.append((t, rate))
                self.weight[i] *= c.arterial_weight
            self.rates.append(pieces)
        # The pieces split into times and rates, for the rollouts' inner loop.
        self.rate_t = [tuple(p[0] for p in pcs) for pcs in self.rates]
        self.rate_v = [tuple(p[1] for p in pcs) for pcs in self.rates]
        self.lam = lam
        # who discharges now, and from when (start-up lost time after their green started)
        self.green_from: list[float | None] = []
        for since in out.green_since:
            if since is None:
                self.green_from.append(None)
            else:
                self.green_from.append(max(0.0, since + c.startup_lost_s - now))

    def clear_time(self, stage: str, nxt: str) -> float:
        """Time from now until the running stage's leaving groups have cleared their queues."""
        keep = self.a.timing.members[nxt]
        worst = 0.0
        for i in self.a.timing.members[stage]:
            if i in keep or self.a._is_ped[i]:
                continue
            mu, lam = self.a._mu[i], self.lam[i]
            q = self.q0[i] + len(self.masses[i])
            if lam >= mu:
                return math.inf
            start = self.green_from[i] or 0.0
            worst = max(worst, start + q / (mu - lam) + self.c.clear_margin_s)
        return worst

    def rollout(self, stage: str, end_in: float, nxt: str, *, walk: bool = True) -> float:
        """Cost of: the running stage ends in ``end_in`` s, ``nxt`` follows, then the base policy.

        ``walk=False``: ``nxt`` is entered without walking its crossings (they wait for the
        stage's next turn), so it needs only its vehicles' green.
        """
        # The hottest code of the controller (tens of rollouts a second per intersection):
        # locals instead of attribute look-ups, min/max written out. The arithmetic and its
        # order are exactly those of the model; only the bookkeeping around it is lean.
        a, c, n = self.a, self.c, self.n
        timing = a.timing
        members, diff, ids, pos = timing.members, timing.diff, timing.ids, timing.pos
        mu, is_ped = a._mu, a._is_ped
        horizon = self.horizon
        times, values, masses = self.rate_t, self.rate_v, self.masses
        lam_of = self.lam
        yellow_use, startup_lost = c.yellow_use_s, c.startup_lost_s
        clear_margin, serve_queue = c.clear_margin_s, c.serve_queue
        inf = math.inf
        q = list(self.q0)
        area = [0.0] * n
        t = [0.0] * n
        ri = [0] * n
        mi = [0] * n
        dis = [False] * n

        def adv(i: int, to: float) -> None:
            """Advance group i to ``to`` with its current discharge state."""
            ti = t[i]
            if to <= ti:
                return
            qi, ar = q[i], area[i]
            pt, pv, pm = times[i], values[i], masses[i]
            npr, npm = len(pt), len(pm)
            r, m = ri[i], mi[i]
            d_on, mui = dis[i], mu[i]
            drain = d_on and mui == inf  # a walking crossing: nobody waits
            while ti < to:
                nb = to
                if r + 1 < npr and pt[r + 1] < nb:
                    nb = pt[r + 1]
                if m < npm and pm[m] < nb:
                    nb = ti if ti > pm[m] else pm[m]  # max(pm[m], ti)
                lam = pv[r] if r < npr and pt[r] <= ti + 1e-12 else 0.0
                d = nb - ti
                if d > 0:
                    if d_on:
                        if drain:
                            qi = 0.0
                        else:
                            net = lam - mui
                            if net >= 0:
                                ar += qi * d + net * d * d / 2
                                qi += net * d
                            elif qi > 0:
                                tau = qi / -net
                                if tau < d:
                                    ar += qi * tau / 2
                                    qi = 0.0
                                else:
                                    ar += qi * d + net * d * d / 2
                                    qi += net * d
                    else:
                        ar += qi * d + lam * d * d / 2
                        qi += lam * d
                ti = nb
                while r + 1 < npr and pt[r + 1] <= ti + 1e-12:
                    r += 1
                while m < npm and pm[m] <= ti + 1e-12:
                    m += 1
                    if not drain:
                        qi += 1.0
            t[i], q[i], area[i], ri[i], mi[i] = ti, qi, ar, r, m

        # the running stage: its groups discharge from their start-up (or already do)
        events: list[tuple[float, int, bool]] = []
        for i in range(n):
            gf = self.green_from[i]
            if gf is not None:
                events.append((gf, i, True))
        cur, end_at, nxt_stage = stage, end_in, nxt
        guard = 0
        while True:
            guard += 1
            # transition cur -> nxt_stage at end_at
            for i in diff[cur][nxt_stage]:  # the groups leaving
                events.append((end_at + (yellow_use if not is_ped[i] else 0.0), i, False))
            starts = timing.starts[cur][nxt_stage]
            ped_waits = False
            for j, off in starts.items():
                if is_ped[j]:
                    if guard == 1 and not walk:
                        continue
                    # a crossing is served by its walk only: who comes later waits
                    at = end_at + off
                    adv(j, min(at, horizon))
                    ped_waits = ped_waits or q[j] >= 0.5
                    events.append((at, j, True))
                    events.append((at + a._walk_s[j], j, False))
                else:
                    events.append((end_at + off + startup_lost, j, True))
            green_at = end_at + timing.transition[cur][nxt_stage]
            events.sort()
            # process events up to the new stage's green + start-up (in time order; the
            # sorted list splits where the times pass decide_at)
            decide_at = green_at + startup_lost
            k = bisect.bisect_right(events, (decide_at, inf))
            for at, i, on in events[:k]:
                to = at if at < horizon else horizon
                if to > t[i]:  # (most toggles land where the group already is)
                    adv(i, to)
                dis[i] = on
            del events[:k]
            if green_at >= horizon or guard > 12:
                break
            cur = nxt_stage
            # green needed by the new stage: clear its queues (within min and max); a
            # crossing that waits holds it for its walk and clearance
            need = timing.min_hold(cur, ped_waits)
            for i in members[cur]:
                if is_ped[i]:
                    continue
                adv(i, decide_at)
                lam_i = lam_of[i]
                if lam_i >= mu[i]:
                    need = timing.max_green[cur]
                    break
                clear = startup_lost + q[i] / (mu[i] - lam_i) + clear_margin
                if clear > need:  # max(need, clear)
                    need = clear
            length = min(need, timing.max_green[cur])
            end_at = green_at + length
            # the base policy's next stage: in order, the first with a queue to serve
            nxt_stage = ""
            k = pos[cur]
            until = min(end_at, horizon)
            for step in range(1, len(ids)):
                cand = ids[(k + step) % len(ids)]
                new = diff[cand][cur]
                for i in new:
                    adv(i, until)
                for i in new:
                    if q[i] * (1.0 if not is_ped[i] else 2.0) >= serve_queue:
                        nxt_stage = cand
                        break
                if nxt_stage:
                    break
            if not nxt_stage:
                nxt_stage = ids[(k + 1) % len(ids)]
            if end_at >= horizon:
                break
        for at, i, on in events:
            if at < horizon:
                if at > t[i]:
                    adv(i, at)
                dis[i] = on
        total = 0.0
        w = self.weight
        share = a._share
        terminal_wait = c.terminal_wait_s
        for i in range(n):
            adv(i, horizon)
            qi = q[i]
            tail = 0.0
            if qi > 0 and mu[i] != inf:
                tail = qi * qi / (2 * mu[i] * share[i]) + (0.0 if dis[i] else qi * terminal_wait)
            elif qi > 0:
                tail = 0.0 if dis[i] else qi * terminal_wait
            total += w[i] * (area[i] + tail)
        return total


# -- the selector ------------------------------------------------------------------------------


class StrategySelector:
    """The strategy for the local time of day, from ``strategy`` of the intersection config.

    ``schedule`` periods start at local ``HH:MM`` and run until the next one (the last one runs
    past midnight until the first); without a schedule the ``default`` runs all day. Strategy
    objects are built once and reused, so an adaptive strategy keeps its state.
    """

    def __init__(
        self,
        x: Intersection,
        *,
        adaptive: AdaptiveConfig | None = None,
        upstream_greens: Callable[[], Sequence[float]] | None = None,
    ) -> None:
        self.x = x
        cfg = x.config.strategy
        self._plans = {p.name: p for p in x.config.fixed_plans}
        self._adaptive_cfg = adaptive
        self._upstream = upstream_greens
        self._cache: dict[str, Strategy] = {}
        default_plan = cfg.fixed_plan or (x.config.fixed_plans[0].name if self._plans else None)
        self._default = (cfg.default, default_plan)
        periods = []
        for p in cfg.schedule:
            hh, mm = (int(v) for v in p.start.split(":"))
            periods.append((hh * 60 + mm, p.strategy, p.fixed_plan or default_plan))
        self._periods = sorted(periods)
        self._period_starts = [p[0] for p in self._periods]
        # (strategy, plan) → the strategy object: current() runs every step.
        self._chosen: dict[tuple[str, str | None], Strategy] = {}

    def choice(self, local: dt.datetime | dt.time | int | float) -> tuple[str, str | None]:
        """``(strategy, fixed plan)`` at a local time (or minutes after local midnight)."""
        if isinstance(local, (dt.datetime, dt.time)):
            minute: float = local.hour * 60 + local.minute + local.second / 60
        else:
            minute = float(local) % 1440
        if not self._periods:
            return self._default
        k = bisect.bisect_right(self._period_starts, minute) - 1
        _, kind, plan = self._periods[k]  # k = -1: the last period, from the day before
        return kind, plan

    def current(self, local: dt.datetime | dt.time | int | float) -> Strategy:
        """The strategy object at a local time (or minutes after local midnight)."""
        choice = self.choice(local)
        chosen = self._chosen.get(choice)
        if chosen is not None:
            return chosen
        kind, plan = choice
        key = f"{kind}:{plan}" if kind == "fixed" else kind
        found = self._cache.get(key)
        if found is not None:
            self._chosen[choice] = found
            return found
        strategy: Strategy
        if kind == "fixed":
            if plan is None or plan not in self._plans:
                raise ValueError(f"{self.x.id}: fixed-time control needs a fixed plan")
            strategy = FixedTime(self.x, self._plans[plan])
        elif kind == "actuated":
            cfg = self.x.config.strategy
            strategy = Actuated(self.x, cfg.gap_s, cfg.recall)
        else:
            strategy = Adaptive(self.x, self._adaptive_cfg, upstream_greens=self._upstream)
        self._cache[key] = strategy
        self._chosen[choice] = strategy
        return strategy


def decision_reason(strategy: Strategy, out: EngineOutput, request: Request) -> str:
    """Why ``strategy`` asked ``request`` at ``out``, in a word (telemetry, logs).

    ``rest`` nobody else waits; actuated: ``extend`` (vehicles keep the gap) or ``gap_out``;
    fixed-time: ``scheduled`` (inside its window) or ``force_off``; adaptive: see
    :attr:`Adaptive.last_reason`. ``other`` outside a green.
    """
    if out.phase != "green":
        return "other"
    if isinstance(strategy, Adaptive):
        return strategy.last_reason or "other"
    if request.next_stage is None or request.next_stage == out.stage:
        return "rest"
    if isinstance(strategy, Actuated):
        return "gap_out" if request.end_green else "extend"
    if isinstance(strategy, FixedTime):
        return "force_off" if request.end_green else "scheduled"
    return "switch" if request.end_green else "hold"


def _signals_green(out: EngineOutput) -> frozenset[int]:
    """Groups showing GREEN (helper for tests and logs)."""
    return frozenset(i for i, s in enumerate(out.signals) if s is Signal.GREEN)
