"""SUMO's own controllers as baselines: the network's program re-typed as an additional file."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from simulator.sumo.baselines import (
    BASELINE_KINDS,
    BASELINE_PROGRAM_ID,
    BaselineKind,
    baseline_additional,
)
from simulator.sumo.network import TlsDescription, TlsPhase, TlsProgram

PROGRAM = TlsProgram(
    program_id="0",
    type="static",
    offset=7.5,
    phases=(
        TlsPhase("GGrr", 90.0, name="main"),
        TlsPhase("yyrr", 3.0),
        TlsPhase("rrrr", 2.0),
        TlsPhase("rrGG", 2.5),
        TlsPhase("rrGy", 4.0),  # a yellow inside: not a green phase
        TlsPhase("rryr", 3.0),
        TlsPhase("rrrr", 1.0),
    ),
)


def desc(tls_id: str) -> TlsDescription:
    return TlsDescription(
        id=tls_id, links=((), (), (), ()), programs=(PROGRAM,), active_program="0"
    )


def logics(xml: str) -> list[ET.Element]:
    root = ET.fromstring(xml)
    assert root.tag == "additional"
    return list(root)


def test_program_ids() -> None:
    assert BASELINE_KINDS == ("static", "actuated", "delay_based")
    assert BASELINE_PROGRAM_ID == {
        "static": "cityctl-static",
        "actuated": "cityctl-actuated",
        "delay_based": "cityctl-delay_based",
    }


def test_static_keeps_the_phases_exactly() -> None:
    (logic,) = logics(baseline_additional([(desc("J1"), PROGRAM)], "static"))
    assert logic.tag == "tlLogic"
    assert logic.attrib == {
        "id": "J1",
        "programID": "cityctl-static",
        "type": "static",
        "offset": "7.5",
    }
    phases = [p.attrib for p in logic]
    assert phases[0] == {"duration": "90", "state": "GGrr", "name": "main"}
    assert [(float(p["duration"]), p["state"]) for p in phases] == [
        (ph.duration, ph.state) for ph in PROGRAM.phases
    ]
    assert all("minDur" not in p for p in phases)


@pytest.mark.parametrize("kind", ["actuated", "delay_based"])
def test_actuated_kinds_clamp_greens_and_keep_clearances(kind: BaselineKind) -> None:
    xml = baseline_additional([(desc("J1"), PROGRAM), (desc("J2"), PROGRAM)], kind)
    first, second = logics(xml)
    assert (first.get("id"), second.get("id")) == ("J1", "J2")
    for logic in (first, second):
        assert logic.get("type") == kind
        assert logic.get("programID") == f"cityctl-{kind}"
        got = [(p.get("duration"), p.get("minDur"), p.get("maxDur"), p.get("state")) for p in logic]
        assert got == [
            ("50", "5", "50", "GGrr"),  # 90 s green clamped to maxDur
            ("3", "3", "3", "yyrr"),
            ("2", "2", "2", "rrrr"),
            ("5", "5", "50", "rrGG"),  # 2.5 s green raised to minDur
            ("4", "4", "4", "rrGy"),
            ("3", "3", "3", "rryr"),
            ("1", "1", "1", "rrrr"),
        ]


def test_ids_are_escaped() -> None:
    odd = "a&b<\"c'>"
    (logic,) = logics(baseline_additional([(desc(odd), PROGRAM)], "static"))
    assert logic.get("id") == odd


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown baseline kind"):
        baseline_additional([(desc("J"), PROGRAM)], "fixed")  # type: ignore[arg-type]
    empty = TlsProgram("0", "static", 0.0, ())
    with pytest.raises(ValueError, match="no phases"):
        baseline_additional([(desc("J"), empty)], "static")


def test_no_lights_gives_an_empty_additional() -> None:
    assert logics(baseline_additional([], "actuated")) == []
