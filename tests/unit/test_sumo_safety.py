"""The benchmark's independent check of displayed SUMO states: every counter, both ways."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simulator.sumo.network import TlsDescription, TlsLink, TlsPhase, TlsProgram
from simulator.sumo.safety import (
    MAX_DETAILS,
    LinkRules,
    SafetyCounts,
    check_displayed,
    rules_from_program,
)

# A small crossing: 0 north through, 1 south through, 2 east through, 3 a pedestrian
# crossing that walks with north-south. Its walk ends 5 s before the vehicles' green does
# (the crossing's clearance shown as red), as SUMO's generated plans do.
PROGRAM = TlsProgram(
    program_id="0",
    type="static",
    offset=0.0,
    phases=(
        TlsPhase("GGrG", 20.0),
        TlsPhase("GGrr", 5.0),
        TlsPhase("yyrr", 3.0),
        TlsPhase("rrrr", 2.0),
        TlsPhase("rrGr", 20.0),
        TlsPhase("rryr", 3.0),
        TlsPhase("rrrr", 2.0),
    ),
)
GREEN_PHASES = (0, 1, 4)
YELLOW_PHASES = (2, 5)
ALL_RED_PHASES = (3, 6)


def _link(index: int, pedestrian: bool = False) -> tuple[TlsLink, ...]:
    return (TlsLink(index, f"in{index}_0", f"out{index}_0", f":J_{index}_0", "s", pedestrian),)


DESC = TlsDescription(
    id="J",
    links=(_link(0), _link(1), _link(2), _link(3, pedestrian=True)),
    programs=(PROGRAM,),
    active_program="0",
)
RULES = rules_from_program(DESC, PROGRAM)


def play(durations: Sequence[float], cycles: int, start: float = 0.0) -> list[tuple[float, str]]:
    """The records of PROGRAM run ``cycles`` times with these phase durations."""
    out: list[tuple[float, str]] = []
    t = start
    for _ in range(cycles):
        for phase, d in zip(PROGRAM.phases, durations, strict=True):
            out.append((t, phase.state))
            t += d
    return out


NOMINAL = [p.duration for p in PROGRAM.phases]


def counts(
    changes: Sequence[tuple[float, str]], end_s: float, rules: LinkRules = RULES
) -> dict[str, int]:
    return check_displayed(changes, rules, end_s).as_dict()


ZERO = {"conflicts": 0, "short_yellow": 0, "short_all_red": 0, "min_green_cut": 0}


# --- rules_from_program ---------------------------------------------------------------


def test_rules_from_program() -> None:
    assert RULES.n == 4
    assert RULES.monitored == frozenset({0, 1, 2, 3})
    assert RULES.conflicts == frozenset({(0, 2), (1, 2), (2, 3)})
    assert RULES.yellow_min_s == (3.0, 3.0, 3.0, 0.0)
    assert RULES.all_red_min_s == {
        (0, 2): 1.0,
        (2, 0): 1.0,
        (1, 2): 1.0,
        (2, 1): 1.0,
        (2, 3): 1.0,
        (3, 2): 1.0,
    }
    assert RULES.min_green_s == (5.0, 5.0, 5.0, 5.0)


def test_rules_from_program_runs_span_phases_and_wrap() -> None:
    # Link 0 is green in the last and the first phase (2 s + 1 s = one run of 3 s), link 1
    # green for 4 s in one phase, link 2 always green, link 3 never.
    program = TlsProgram(
        "p",
        "static",
        0.0,
        (
            TlsPhase("GrGr", 1.0),
            TlsPhase("yGGr", 3.0),
            TlsPhase("rGGr", 1.0),
            TlsPhase("ryGr", 3.0),
            TlsPhase("GrGr", 2.0),
        ),
    )
    desc = TlsDescription("X", tuple(_link(i) for i in range(4)), (program,), "p")
    rules = rules_from_program(
        desc, program, yellow_floor_s=4.0, all_red_floor_s=2.0, min_green_cap_s=10.0
    )
    assert rules.monitored == frozenset({0, 1})
    assert rules.min_green_s == (3.0, 4.0, 0.0, 0.0)
    assert rules.conflicts == frozenset({(0, 1)})
    assert rules.all_red_min_s == {(0, 1): 2.0, (1, 0): 2.0}
    assert rules.yellow_min_s == (4.0, 4.0, 4.0, 4.0)


def test_rules_from_program_rejects_bad_programs() -> None:
    with pytest.raises(ValueError, match="empty"):
        rules_from_program(DESC, TlsProgram("e", "static", 0.0, ()))
    with pytest.raises(ValueError, match="has 3 links"):
        rules_from_program(DESC, TlsProgram("s", "static", 0.0, (TlsPhase("GGr", 5.0),)))


def test_link_rules_validate() -> None:
    with pytest.raises(ValueError, match="entries"):
        LinkRules(2, frozenset(), (3.0,), {}, (5.0, 5.0), frozenset())
    with pytest.raises(ValueError, match="outside"):
        LinkRules(2, frozenset(), (3.0, 3.0), {}, (5.0, 5.0), frozenset({2}))
    with pytest.raises(ValueError, match="i < j"):
        LinkRules(2, frozenset({(1, 0)}), (3.0, 3.0), {}, (5.0, 5.0), frozenset({0, 1}))


# --- good sequences -------------------------------------------------------------------


def test_the_program_itself_is_clean() -> None:
    changes = play(NOMINAL, cycles=5)
    assert counts(changes, end_s=5 * PROGRAM.cycle_s) == ZERO


def test_repeated_records_change_nothing() -> None:
    # Every-step records (as SaveTLSStates writes them) are the same display.
    changes = [(float(t), s) for t0, s in play(NOMINAL, 3) for t in range(int(t0), int(t0) + 2)]
    changes.sort(key=lambda r: r[0])
    assert counts(changes, end_s=3 * PROGRAM.cycle_s) == ZERO


def test_empty_records() -> None:
    result = check_displayed([], RULES, 10.0)
    assert result.as_dict() == ZERO
    assert result.details == ()


# --- conflicts ------------------------------------------------------------------------


def test_conflict_counts_each_onset_once() -> None:
    changes = [
        (0.0, "rrrr"),
        (2.0, "GrGr"),  # 0 and 2 open together: onset
        (3.0, "GrGr"),
        (4.0, "yryr"),  # still both open: the same conflict
        (7.0, "rrrr"),
        (9.0, "rryr"),
        (10.0, "yryr"),  # a second onset
        (12.0, "rrrr"),
    ]
    result = check_displayed(changes, RULES, 20.0)
    assert result.conflicts == 2
    assert result.details[0] == "2 s: links 0 and 2 open together"


def test_conflict_in_the_first_record_counts() -> None:
    assert counts([(0.0, "GGGr")], end_s=5.0)["conflicts"] == 2  # (0, 2) and (1, 2)


def test_non_conflicting_links_may_be_open_together() -> None:
    assert counts([(0.0, "rrrr"), (3.0, "GGrG")], end_s=60.0) == ZERO


def test_red_yellow_and_off_are_not_open() -> None:
    # 'u' (red+yellow), 'o'/'O' (off), 's' (stop arrow) are closed: no conflict.
    assert (
        counts([(0.0, "Grur"), (1.0, "Gror"), (2.0, "GrOr"), (3.0, "Grsr")], end_s=5.0)["conflicts"]
        == 0
    )


# --- short_yellow ---------------------------------------------------------------------


def test_short_yellow() -> None:
    changes = [(0.0, "rrGr"), (10.0, "rryr"), (12.0, "rrrr")]
    result = check_displayed(changes, RULES, 20.0)
    assert result.as_dict() == {**ZERO, "short_yellow": 1}
    assert result.details == ("12 s: link 2 yellow 2 s < 3 s",)


def test_green_straight_to_red_is_a_yellow_of_zero() -> None:
    assert counts([(0.0, "rrGr"), (10.0, "rrrr")], 20.0) == {**ZERO, "short_yellow": 1}


def test_green_to_red_yellow_counts_as_missing_yellow() -> None:
    assert counts([(0.0, "rrGr"), (10.0, "rrur")], 20.0)["short_yellow"] == 1


def test_crossing_needs_no_yellow() -> None:
    assert counts([(0.0, "rrrG"), (10.0, "rrrr")], 20.0) == ZERO


def test_yellow_at_the_end_or_start_is_not_judged() -> None:
    assert counts([(0.0, "rrGr"), (10.0, "rryr")], 11.0) == ZERO  # still yellow at the end
    assert counts([(0.0, "rryr"), (1.0, "rrrr")], 11.0) == ZERO  # began before the records


def test_exact_yellow_passes_within_tolerance() -> None:
    changes = [(0.0, "rrGr"), (0.1 + 0.2, "rryr"), (0.3 + 3.0 - 1e-9, "rrrr")]
    assert counts(changes, 10.0) == ZERO


# --- short_all_red --------------------------------------------------------------------


def test_short_all_red() -> None:
    changes = [(0.0, "GGrr"), (10.0, "yyrr"), (13.0, "rrrr"), (13.5, "rrGr")]
    result = check_displayed(changes, RULES, 30.0)
    # Both foes (0 and 1) closed only 0.5 s before link 2 turned green.
    assert result.as_dict() == {**ZERO, "short_all_red": 2}
    assert result.details[0] == "13.5 s: link 2 green 0.5 s after link 0 closed < 1 s all-red"


def test_all_red_of_zero_when_a_foe_closes_at_the_same_instant() -> None:
    changes = [(0.0, "GGrr"), (10.0, "yyrr"), (13.0, "rrGr")]
    assert counts(changes, 30.0) == {**ZERO, "short_all_red": 2}


def test_crossing_all_red_counts_from_end_of_walk() -> None:
    changes = [(0.0, "rrrG"), (10.0, "rrrr"), (10.5, "rrGr")]
    assert counts(changes, 30.0) == {**ZERO, "short_all_red": 1}
    assert counts([(0.0, "rrrG"), (10.0, "rrrr"), (11.0, "rrGr")], 30.0) == ZERO


def test_foe_never_seen_open_imposes_nothing() -> None:
    assert counts([(0.0, "rrrr"), (0.5, "rrGr")], 30.0) == ZERO


def test_overlap_is_a_conflict_not_a_short_all_red() -> None:
    changes = [(0.0, "rrrr"), (1.0, "yrrr"), (2.0, "yrGr")]
    assert counts(changes, 30.0) == {**ZERO, "conflicts": 1}


def test_all_red_rule_per_ordered_pair() -> None:
    rules = LinkRules(
        n=2,
        conflicts=frozenset({(0, 1)}),
        yellow_min_s=(0.0, 0.0),
        all_red_min_s={(0, 1): 3.0},  # (1, 0) missing: needs nothing
        min_green_s=(0.0, 0.0),
        monitored=frozenset({0, 1}),
    )
    assert counts([(0.0, "Gr"), (5.0, "rr"), (7.0, "rG")], 20.0, rules)["short_all_red"] == 1
    assert counts([(0.0, "rG"), (5.0, "rr"), (5.0 + 1e-3, "Gr")], 20.0, rules) == ZERO


# --- min_green_cut --------------------------------------------------------------------


def test_min_green_cut() -> None:
    changes = [(0.0, "rrrr"), (2.0, "rrGr"), (5.0, "rryr"), (8.0, "rrrr")]
    result = check_displayed(changes, RULES, 20.0)
    assert result.as_dict() == {**ZERO, "min_green_cut": 1}
    assert result.details == ("5 s: link 2 green 3 s < 5 s minimum",)


def test_first_and_last_green_runs_are_not_judged() -> None:
    changes = [(0.0, "rrGr"), (1.0, "rryr"), (4.0, "rrrr"), (6.0, "rrGr")]
    assert counts(changes, 7.0) == ZERO


def test_green_minor_and_major_are_one_run() -> None:
    changes = [(0.0, "rrrr"), (2.0, "rrGr"), (4.0, "rrgr"), (7.0, "rryr"), (10.0, "rrrr")]
    assert counts(changes, 20.0) == ZERO


def test_yellow_back_to_green_is_judged() -> None:
    # Green 6 s, a 1 s yellow, green again: the yellow was cut.
    changes = [(0.0, "rrrr"), (2.0, "rrGr"), (8.0, "rryr"), (9.0, "rrGr"), (30.0, "rryr")]
    assert counts(changes, 31.0) == {**ZERO, "short_yellow": 1}


# --- monitoring, records, results -----------------------------------------------------


def test_unmonitored_links_are_ignored() -> None:
    rules = LinkRules(
        n=RULES.n,
        conflicts=RULES.conflicts,
        yellow_min_s=RULES.yellow_min_s,
        all_red_min_s=RULES.all_red_min_s,
        min_green_s=RULES.min_green_s,
        monitored=frozenset({0, 1, 3}),
    )
    # Link 2 opens against link 0 and is cut short without a yellow: none of it is judged.
    changes = [(0.0, "Grrr"), (1.0, "GrGr"), (2.0, "Grrr")]
    assert counts(changes, 5.0, rules) == ZERO
    assert counts(changes, 5.0) == {**ZERO, "conflicts": 1, "short_yellow": 1, "min_green_cut": 1}


def test_same_time_records_keep_only_the_last() -> None:
    # The 'rrrr' at 10 s was replaced within the same instant: the yellow was never cut.
    changes = [(0.0, "rrGr"), (10.0, "rrrr"), (10.0, "rryr"), (13.0, "rrrr")]
    assert counts(changes, 20.0) == ZERO


def test_bad_records_are_refused() -> None:
    with pytest.raises(ValueError, match="has 3 links"):
        check_displayed([(0.0, "rrr")], RULES, 5.0)
    with pytest.raises(ValueError, match="go back"):
        check_displayed([(2.0, "rrrr"), (1.0, "rrrr")], RULES, 5.0)
    with pytest.raises(ValueError, match="after end_s"):
        check_displayed([(6.0, "rrrr")], RULES, 5.0)
    with pytest.raises(ValueError, match="finite"):
        check_displayed([(float("nan"), "rrrr")], RULES, 5.0)


def test_details_are_capped_and_counts_add() -> None:
    changes: list[tuple[float, str]] = []
    for k in range(30):
        changes += [(10.0 * k, "rrGr"), (10.0 * k + 5.0, "rrrr")]  # 29 missing yellows
    result = check_displayed(changes, RULES, 300.0)
    assert result.short_yellow == 30
    assert len(result.details) == MAX_DETAILS
    both = result + SafetyCounts(conflicts=2, details=("x",))
    assert both.as_dict() == {**ZERO, "short_yellow": 30, "conflicts": 2}
    assert both.total == 32
    assert len(both.details) == MAX_DETAILS
    assert set(result.as_dict()) == {"conflicts", "short_yellow", "short_all_red", "min_green_cut"}


# --- properties -----------------------------------------------------------------------

_time = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def legal_schedule(draw: st.DrawFn) -> tuple[list[tuple[float, str]], float, list[int]]:
    """Records of PROGRAM with random legal durations, starting and ending mid-phase.

    Also returns the record indexes where a yellow phase begins (never the first record).
    """
    cycles = draw(st.integers(min_value=2, max_value=4))
    records: list[tuple[float, str]] = []
    t = draw(st.floats(min_value=0.0, max_value=100.0, allow_nan=False))
    first_phase = draw(st.integers(min_value=0, max_value=len(PROGRAM.phases) - 1))
    yellows: list[int] = []
    for c in range(cycles):
        for k, phase in enumerate(PROGRAM.phases):
            if c == 0 and k < first_phase:
                continue
            if k == 0:
                d = draw(st.floats(min_value=5.0, max_value=40.0))  # the crossing's walk
            elif k in GREEN_PHASES:
                d = draw(st.floats(min_value=0.0, max_value=20.0))
                if k == 4:
                    d += 5.0  # link 2's only green phase: at least the minimum green
            elif k in YELLOW_PHASES:
                d = draw(st.floats(min_value=3.0, max_value=6.0))
            else:
                d = draw(st.floats(min_value=1.0, max_value=4.0))
            if k in YELLOW_PHASES and records:
                yellows.append(len(records))
            records.append((t, phase.state))
            # Repeats of the same state in between (every-step records) change nothing.
            for _ in range(draw(st.integers(min_value=0, max_value=2))):
                records.append((t + d * draw(_time), phase.state))
            records.sort(key=lambda r: r[0])
            t += d
    return records, t, yellows


@settings(max_examples=200, deadline=None)
@given(legal_schedule())
def test_legal_schedules_are_clean(
    schedule: tuple[list[tuple[float, str]], float, list[int]],
) -> None:
    records, end_s, _ = schedule
    assert counts(records, end_s) == ZERO


@settings(max_examples=200, deadline=None)
@given(legal_schedule(), st.data())
def test_a_shortened_yellow_is_found(
    schedule: tuple[list[tuple[float, str]], float, list[int]], data: st.DataObject
) -> None:
    records, end_s, yellows = schedule
    # A yellow shown after a green (a record strictly before it) and ended by a later record.
    candidates = [i for i in yellows if records[i - 1][0] < records[i][0]]
    assume(candidates)
    i = data.draw(st.sampled_from(candidates))
    start = records[i][0]
    j = i + 1
    while j < len(records) and records[j][1] == records[i][1]:
        j += 1
    assume(j < len(records))
    # Cut the yellow to `cut` s: the records from the one that ends it move earlier.
    cut = data.draw(st.floats(min_value=0.0, max_value=2.9))
    at = records[j][0]
    shortened = records[: i + 1] + [(start + cut + (t - at), s) for t, s in records[j:]]
    result = check_displayed(shortened, RULES, start + cut + (end_s - at))
    assert result.short_yellow >= 1
