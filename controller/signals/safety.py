"""The safety monitor: an independent check of every output before it leaves the controller.

It shares no logic with :mod:`controller.signals.engine`: it knows only the
:class:`~controller.signals.model.Intersection` (conflict matrix, clearances, intergreens,
minimum greens) and the sequence of outputs it is shown, and it keeps its own history per
group (when it last turned GREEN, when its clearance started, when it turned RED, when its
green ended). Each output is checked against the previous one:

==================== =====================================================================
``conflict``         two conflicting groups are open (GREEN, YELLOW, PED_CLEARANCE,
                     RED_AMBER) in the same output
``short_clearance``  a YELLOW / PED_CLEARANCE ended before the group's clearance (−1e-6 s)
``skipped_clearance`` GREEN went straight to RED or DARK
``short_intergreen`` a group opened before ``end_of_green(i) + intergreen[i][j]`` of a
                     conflicting *i* (never below clearance + the all-red floor), or before
                     the all-red after flash / start-up lasted the largest all-red
``short_all_red``    a group opened less than ``all_red(i, j)`` (at least the 1 s floor)
                     after a conflicting *i* ended its clearance and turned RED
``short_min_green``  a GREEN ended before the group's minimum green (pedestrians: walk)
``illegal_transition`` any other change a signal head must never make (RED → YELLOW,
                     YELLOW → GREEN, FLASH_YELLOW → GREEN, an unknown code, ...)
==================== =====================================================================

Flash is the safe state: an output where every vehicle group shows FLASH_YELLOW or DARK,
every pedestrian group DARK or RED and nothing is open may follow anything. Leaving it (and
the monitor's own start, when the history is unknown) must go through an all-RED output that
lasts at least the largest all-red before anything opens.

The one other way in is :meth:`SafetyMonitor.adopt`: heads that already show greens, reds
and clearances (no conflicting open groups, nothing flashing), taken over with the worst
history the rules allow — the greens and the clearances started then, the reds ended their
clearance then — so that every later output is judged against minima that the real, longer
history can only exceed.

Times are the ``now`` of each check; a change is taken to happen at the first output that
shows it — or, once :meth:`SafetyMonitor.confirm` says when the cabinet acknowledged that
output, at that moment (the latest it can have reached the heads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Literal, NamedTuple, get_args

from controller.signals.model import ALL_RED_FLOOR_S, GroupKind, Intersection, Signal

__all__ = ["TOLERANCE_S", "VIOLATION_KINDS", "SafetyMonitor", "Violation", "ViolationKind"]

TOLERANCE_S: Final = 1e-6
"""A timed interval may be this much shorter than nominal (float noise of the clock)."""

ViolationKind = Literal[
    "conflict",
    "short_clearance",
    "skipped_clearance",
    "short_intergreen",
    "short_all_red",
    "short_min_green",
    "illegal_transition",
]
VIOLATION_KINDS: Final[tuple[ViolationKind, ...]] = get_args(ViolationKind)

_OPEN: Final = frozenset({Signal.GREEN, Signal.YELLOW, Signal.PED_CLEARANCE, Signal.RED_AMBER})
_CLEARING: Final = frozenset({Signal.YELLOW, Signal.PED_CLEARANCE})
_GREENISH: Final = frozenset({Signal.GREEN, Signal.RED_AMBER})
# Code → member, without Signal(code)'s cost (check decodes every output); other codes (and
# non-int codes) take the slow path, which keeps Signal(int(code))'s exact semantics.
_BY_CODE: Final[dict[int, Signal]] = {int(s): s for s in Signal}


class Violation(NamedTuple):
    """One broken rule in one output (immutable)."""

    kind: ViolationKind
    groups: tuple[str, ...]
    detail: str


class SafetyMonitor:
    """Checks a sequence of outputs of one intersection; see the module docstring."""

    def __init__(self, x: Intersection) -> None:
        n = x.n
        self._x = x
        self._n = n
        self._ids = tuple(g.id for g in x.groups)
        self._is_ped = tuple(g.kind is GroupKind.PEDESTRIAN for g in x.groups)
        self._min_green = tuple(g.min_green_total_s for g in x.groups)
        self._clearance = tuple(x.clearance)
        self._pairs = tuple(
            (i, j)
            for i in range(n)
            for j in range(i + 1, n)
            if x.conflict[i][j] or x.conflict[j][i]
        )
        # Required intergreen i → j: the model's, and never below clearance + all-red floor,
        # whatever the matrix says (a second line of defence against a bad matrix).
        self._need = tuple(
            tuple(
                max(x.intergreen[i][j], x.clearance[i] + ALL_RED_FLOOR_S)
                if (x.conflict[i][j] or x.conflict[j][i])
                else 0.0
                for j in range(n)
            )
            for i in range(n)
        )
        self._conflicts_of = tuple(
            tuple(i for i in range(n) if self._need[i][j] > 0.0) for j in range(n)
        )
        # All-red i → j counted from the moment i turned RED after its clearance.
        self._need_red = tuple(
            tuple(
                max(self._need[i][j] - x.clearance[i], ALL_RED_FLOOR_S)
                if self._need[i][j] > 0.0
                else 0.0
                for j in range(n)
            )
            for i in range(n)
        )
        self._clear_end = [-math.inf] * n
        reds = [self._need[i][j] - x.clearance[i] for i, j in self._all_pairs()]
        self.max_all_red: float = max([ALL_RED_FLOOR_S, *reds])
        """All-red needed after flash or start-up before anything opens."""
        self._prev: list[Signal | None] = [None] * n
        self._green_on: list[float | None] = [None] * n
        self._clear_on: list[float | None] = [None] * n
        self._red_on: list[float | None] = [None] * n
        self._green_end = [-math.inf] * n
        self._recovering = True  # start-up: history unknown, treat like leaving flash
        self._all_red_since: float | None = None
        self._last_t = -math.inf
        # The latest output when it passed clean, in steady running (not recovering): the
        # same output again changes nothing and breaks nothing (see check).
        self._steady: tuple[int, ...] | None = None
        self.counts: dict[ViolationKind, int] = dict.fromkeys(VIOLATION_KINDS, 0)
        """Violations seen so far, per kind."""
        self.checks = 0
        """Outputs checked so far."""

    def _all_pairs(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self._n) for j in range(self._n) if self._need[i][j] > 0]

    @property
    def total(self) -> int:
        """All violations seen so far."""
        return sum(self.counts.values())

    def last_change(self, group: str) -> dict[str, float | None]:
        """When ``group`` last turned GREEN, started its clearance, turned RED."""
        i = self._x.index[group]
        return {"green": self._green_on[i], "clearance": self._clear_on[i], "red": self._red_on[i]}

    def adopt(self, now: float, signals: Sequence[int]) -> None:
        """Take over heads that show ``signals`` from ``now`` on, with an unknown history.

        For a controller that takes over a cabinet still showing its predecessor's outputs.
        Every group must show GREEN or RED, or be in its own clearance (YELLOW for a vehicle
        group, PED_CLEARANCE for a crossing — nothing flashing, dark or red-amber, which must
        leave through the start-up all-red), and no two conflicting groups may be open. The
        history is assumed at its worst: every GREEN started at ``now``, so its minimum green
        counts from here; every clearance started at ``now``, so it must last its full time
        from here and the intergreen to a conflicting group counts from here; every RED group
        ended its clearance at ``now`` (its green a clearance earlier), so the all-red and the
        intergreen to a conflicting group count from here. The previous history is forgotten,
        as after flash. Raises ``ValueError`` naming the group and why; nothing changes then.
        """
        ids = self._ids
        if not math.isfinite(now) or now < self._last_t:
            raise ValueError(f"now: {now!r} is not a time after the last output {self._last_t:g}")
        if len(signals) != self._n:
            raise ValueError(f"signals: {len(signals)} codes for {self._n} groups")
        cur: list[Signal] = []
        for k, code in enumerate(signals):
            try:
                sig = Signal(int(code))
            except ValueError:
                raise ValueError(f"signals[{ids[k]}]: {code!r} is no signal code") from None
            own_clearance = Signal.PED_CLEARANCE if self._is_ped[k] else Signal.YELLOW
            if sig not in (Signal.GREEN, Signal.RED, own_clearance):
                raise ValueError(f"signals[{ids[k]}]: {sig.name} is no state to take over")
            cur.append(sig)
        for i, j in self._pairs:
            if cur[i] in _OPEN and cur[j] in _OPEN:
                raise ValueError(
                    f"signals: {ids[i]} {cur[i].name} and {ids[j]} {cur[j].name} conflict"
                )
        self._enter_recovery(list(cur))
        self._recovering = False
        for i, sig in enumerate(cur):
            if sig is Signal.GREEN:
                self._green_on[i] = now
            elif sig in _CLEARING:
                self._clear_on[i] = now
                self._green_end[i] = now
            else:
                self._red_on[i] = now
                self._clear_end[i] = now
                self._green_end[i] = now - self._clearance[i]
        self._last_t = now
        self.checks += 1

    def confirm(self, t: float) -> None:
        """The latest output checked reached the heads no later than ``t``: changes start there.

        The counterpart of :meth:`~controller.signals.engine.PhaseEngine.confirm`, kept with
        this monitor's own history: every change stamped with the latest check's time moves
        to ``t``. The next change is then judged from ``t``, the latest moment the cabinet can
        have shown this one, and from its own check time, the earliest it can show the next:
        an output this monitor passes is one the cabinet's monitor cannot see as short.
        Raises ``ValueError`` for a ``t`` before the latest check; nothing changes then.
        """
        was = self._last_t
        if not math.isfinite(t) or t < was:
            raise ValueError(f"t: {t!r} is not a time at or after the latest check {was!r}")
        if t == was:
            return

        def move(v: list[float | None]) -> list[float | None]:
            return [t if x == was else x for x in v]

        self._green_on = move(self._green_on)
        self._clear_on = move(self._clear_on)
        self._red_on = move(self._red_on)
        self._green_end = [t if x == was else x for x in self._green_end]
        self._clear_end = [t if x == was else x for x in self._clear_end]
        if self._all_red_since == was:
            self._all_red_since = t
        self._last_t = t

    def check(self, now: float, signals: Sequence[int]) -> list[Violation]:
        """Check one output shown from ``now`` on; returns what it breaks (and counts it)."""
        steady = self._steady
        if (
            steady is not None
            and now >= self._last_t
            and (signals is steady or (type(signals) is tuple and signals == steady))
        ):
            # Most outputs repeat the previous one. When that one passed clean outside a
            # recovery, the full check below would find no conflict (the same signals passed),
            # no transition and nothing opening, and only move the clock: do just that.
            self._last_t = now
            self.checks += 1
            return []
        self._steady = None
        out: list[Violation] = []
        ids = self._ids
        if now < self._last_t:
            out.append(
                Violation(
                    "illegal_transition", (), f"time went back from {self._last_t:g} to {now:g}"
                )
            )
        self._last_t = max(self._last_t, now)
        if len(signals) != self._n:
            out.append(
                Violation(
                    "illegal_transition",
                    (),
                    f"{len(signals)} signals for {self._n} groups; output not checked",
                )
            )
            return self._count(out)
        cur: list[Signal | None] = []
        by_code = _BY_CODE
        for k, code in enumerate(signals):
            sig = by_code.get(code)
            if sig is None:
                try:
                    sig = Signal(int(code))
                except ValueError:
                    out.append(Violation("illegal_transition", (ids[k],), f"unknown code {code!r}"))
            cur.append(sig)
        # an unknown code may be anything: assume open
        is_open = [s is None or s in _OPEN for s in cur]

        # 1. conflicts in this very output
        for i, j in self._pairs:
            if is_open[i] and is_open[j]:
                out.append(
                    Violation(
                        "conflict",
                        (ids[i], ids[j]),
                        f"{ids[i]} {_name(cur[i])} and {ids[j]} {_name(cur[j])} conflict",
                    )
                )

        # 2. flash (or dark): safe from anything; forget the history
        if self._is_flash(cur):
            self._enter_recovery(cur)
            return self._count(out)
        if any(s is None for s in cur):
            self._enter_recovery(cur)
            return self._count(out)

        # 3. per-group transitions
        opened: list[int] = []
        for i in range(self._n):
            p, c = self._prev[i], cur[i]
            assert c is not None
            if p == c:
                continue
            if p is None:  # first output seen, or after an unknown code
                if c in _OPEN:
                    opened.append(i)
                    self._green_on[i] = now if c in _GREENISH else None
                elif c is Signal.RED:
                    self._red_on[i] = now
                else:
                    out.append(Violation("illegal_transition", (ids[i],), f"starts {c.name}"))
                continue
            out.extend(self._transition(i, p, c, now, opened))

        # 4. opening: intergreens, and the all-red after flash / start-up
        for j in opened:
            for i in self._conflicts_of[j]:
                gap = now - self._green_end[i]
                if gap + TOLERANCE_S < self._need[i][j]:
                    out.append(
                        Violation(
                            "short_intergreen",
                            (ids[i], ids[j]),
                            f"{ids[j]} opened {gap:.3f} s after the end of {ids[i]}'s green; "
                            f"needs {self._need[i][j]:g} s",
                        )
                    )
                red = now - self._clear_end[i]
                if red + TOLERANCE_S < self._need_red[i][j]:
                    out.append(
                        Violation(
                            "short_all_red",
                            (ids[i], ids[j]),
                            f"{ids[j]} opened {red:.3f} s after {ids[i]} turned red; "
                            f"needs an all-red of {self._need_red[i][j]:g} s",
                        )
                    )
        all_red = all(s is Signal.RED for s in cur)
        if self._recovering:
            if opened or any(s in _OPEN for s in cur):
                since = self._all_red_since
                lasted = -math.inf if since is None else now - since
                if lasted + TOLERANCE_S < self.max_all_red:
                    opening = tuple(ids[k] for k in range(self._n) if cur[k] in _OPEN)
                    out.append(
                        Violation(
                            "short_intergreen",
                            opening,
                            f"opened after {max(lasted, 0.0):.3f} s of all-red following flash "
                            f"or start-up; needs {self.max_all_red:g} s",
                        )
                    )
                self._recovering = False
            elif all_red:
                if self._all_red_since is None:
                    self._all_red_since = now
            else:
                self._all_red_since = None
        self._prev = cur
        if not out and not self._recovering and type(signals) is tuple:
            self._steady = signals
        return self._count(out)

    # -- helpers ----------------------------------------------------------------------------

    def _transition(
        self, i: int, p: Signal, c: Signal, now: float, opened: list[int]
    ) -> list[Violation]:
        gid = self._ids[i]
        out: list[Violation] = []
        bad = f"{p.name} → {c.name}"
        if p in _GREENISH and c not in _GREENISH:  # the green ends
            self._green_end[i] = now
            on = self._green_on[i]
            if p is Signal.GREEN and on is not None and now - on + TOLERANCE_S < self._min_green[i]:
                out.append(
                    Violation(
                        "short_min_green",
                        (gid,),
                        f"green lasted {now - on:.3f} s; minimum {self._min_green[i]:g} s",
                    )
                )
            self._green_on[i] = None
        if c in _CLEARING:
            self._clear_on[i] = now
            want = Signal.PED_CLEARANCE if self._is_ped[i] else Signal.YELLOW
            if p is not Signal.GREEN or c is not want:
                out.append(Violation("illegal_transition", (gid,), bad))
            return out
        if c is Signal.RED:
            self._red_on[i] = now
            if p in _OPEN:
                self._clear_end[i] = now
            if p in _CLEARING:
                start = self._clear_on[i]
                lasted = math.inf if start is None else now - start
                if lasted + TOLERANCE_S < self._clearance[i]:
                    out.append(
                        Violation(
                            "short_clearance",
                            (gid,),
                            f"{p.name} lasted {lasted:.3f} s; needs {self._clearance[i]:g} s",
                        )
                    )
            elif p is Signal.GREEN:
                out.append(Violation("skipped_clearance", (gid,), bad))
            elif p is Signal.RED_AMBER:
                out.append(Violation("illegal_transition", (gid,), bad))
            # DARK / FLASH_YELLOW → RED: leaving flash, legal
            return out
        if c is Signal.DARK:
            kind: ViolationKind = "skipped_clearance" if p is Signal.GREEN else "illegal_transition"
            out.append(Violation(kind, (gid,), f"{bad} outside flash"))
            return out
        if c is Signal.FLASH_YELLOW:
            out.append(Violation("illegal_transition", (gid,), f"{bad} outside flash"))
            return out
        if c is Signal.RED_AMBER:
            if p is not Signal.RED:
                out.append(Violation("illegal_transition", (gid,), bad))
            opened.append(i)
            self._green_on[i] = now
            return out
        # c is GREEN
        if p is Signal.RED_AMBER:
            self._green_on[i] = now  # the intergreen was checked when it opened
            return out
        if p is not Signal.RED:
            out.append(Violation("illegal_transition", (gid,), bad))
        opened.append(i)
        self._green_on[i] = now
        return out

    def _is_flash(self, cur: list[Signal | None]) -> bool:
        for ped, s in zip(self._is_ped, cur, strict=True):
            if s is None:
                return False
            if ped and s not in (Signal.DARK, Signal.RED):
                return False
            if not ped and s not in (Signal.FLASH_YELLOW, Signal.DARK):
                return False
        return True

    def _enter_recovery(self, cur: list[Signal | None]) -> None:
        self._steady = None
        self._recovering = True
        self._all_red_since = None
        self._prev = list(cur)
        self._green_on = [None] * self._n
        self._clear_on = [None] * self._n
        self._green_end = [-math.inf] * self._n
        self._clear_end = [-math.inf] * self._n

    def _count(self, out: list[Violation]) -> list[Violation]:
        self.checks += 1
        for v in out:
            self.counts[v.kind] += 1
        return out


def _name(s: Signal | None) -> str:
    return "UNKNOWN" if s is None else s.name
