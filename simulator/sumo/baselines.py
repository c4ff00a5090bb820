"""SUMO's own signal controllers as the baselines cityctl is compared with.

:func:`baseline_additional` re-types each light's own program (the network's signal plan,
see :func:`simulator.sumo.network.choose_program`) as a ``<tlLogic>`` of an additional file:

* ``static``: the phases exactly as they are, type ``static``;
* ``actuated`` (SUMO's gap-based control) and ``delay_based`` (SUMO's time-loss control):
  every green phase (:func:`~simulator.sumo.network.is_green_phase`) gets ``minDur`` 5 s and
  ``maxDur`` 50 s, its duration clamped into that range; every other phase (yellow, all-red)
  keeps its duration as both ``minDur`` and ``maxDur``, so clearances are never cut.

Checked with SUMO 1.28: a ``<tlLogic>`` loaded from an additional file becomes the light's
**active** program right away (``trafficlight.getProgram`` returns its ``programID`` from
the first step), the network's program staying loaded beside it. The bench may still call
``trafficlight.setProgram(tls_id, BASELINE_PROGRAM_ID[kind])`` to be explicit.

Both actuated kinds place their own detectors when the program is loaded (for
``actuated``, induction loops named ``<tls>_<programID>_D<k>.<n>`` placed ``detector-gap``
seconds of travel upstream of the stop line — SUMO moves them nearer when ``minDur`` would
be too short for a standing queue to reach them, eclipse/sumo#5119; for ``delay_based``,
lane-area detectors over ``--tls.delay_based.detector-range``). No ``<param>`` is written:
SUMO's defaults (the documented ``max-gap`` 3 s, ``detector-gap`` 2 s) are what "SUMO's own
controller" means to a reader, and the documentation gives no advice to change them for a
5 s minimum green.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal
from xml.sax.saxutils import quoteattr

from simulator.sumo.network import TlsDescription, TlsPhase, TlsProgram, is_green_phase

__all__ = [
    "BASELINE_KINDS",
    "BASELINE_PROGRAM_ID",
    "GREEN_MAX_S",
    "GREEN_MIN_S",
    "BaselineKind",
    "baseline_additional",
]

BaselineKind = Literal["static", "actuated", "delay_based"]
BASELINE_KINDS: Final[tuple[BaselineKind, ...]] = ("static", "actuated", "delay_based")

BASELINE_PROGRAM_ID: Final[dict[BaselineKind, str]] = {
    kind: f"cityctl-{kind}" for kind in BASELINE_KINDS
}
"""The ``programID`` each baseline's ``<tlLogic>`` carries (for ``trafficlight.setProgram``)."""

GREEN_MIN_S: Final = 5.0
"""``minDur`` of every green phase of the actuated baselines."""
GREEN_MAX_S: Final = 50.0
"""``maxDur`` of every green phase of the actuated baselines."""


def baseline_additional(
    tls: Iterable[tuple[TlsDescription, TlsProgram]], kind: BaselineKind
) -> str:
    """An additional file (XML text) with one ``<tlLogic>`` of the ``kind`` baseline per light.

    Each ``(description, program)`` pair gives the light's id and the program to re-type
    (its phases and offset). The ``programID`` is ``BASELINE_PROGRAM_ID[kind]``; loaded as an
    additional file, it becomes the light's active program. Raises ValueError for an unknown
    kind or a program without phases.
    """
    if kind not in BASELINE_PROGRAM_ID:
        raise ValueError(f"unknown baseline kind {kind!r}; use one of {BASELINE_KINDS}")
    program_id = BASELINE_PROGRAM_ID[kind]
    lines = ["<additional>"]
    for desc, program in tls:
        if not program.phases:
            raise ValueError(
                f"traffic light {desc.id!r}: program {program.program_id!r} has no phases"
            )
        lines.append(
            f"    <tlLogic id={quoteattr(desc.id)} programID={quoteattr(program_id)} "
            f"type={quoteattr(kind)} offset={quoteattr(_num(program.offset))}>"
        )
        for phase in program.phases:
            lines.append("        " + _phase_xml(phase, kind))
        lines.append("    </tlLogic>")
    lines.append("</additional>")
    return "\n".join(lines) + "\n"


def _phase_xml(phase: TlsPhase, kind: BaselineKind) -> str:
    attrs: list[tuple[str, str]] = []
    if kind == "static":
        attrs.append(("duration", _num(phase.duration)))
    elif is_green_phase(phase.state):
        duration = min(max(phase.duration, GREEN_MIN_S), GREEN_MAX_S)
        attrs += [
            ("duration", _num(duration)),
            ("minDur", _num(GREEN_MIN_S)),
            ("maxDur", _num(GREEN_MAX_S)),
        ]
    else:
        # Yellow and all-red keep their length: the actuated logic must not stretch or cut
        # a clearance.
        attrs += [
            ("duration", _num(phase.duration)),
            ("minDur", _num(phase.duration)),
            ("maxDur", _num(phase.duration)),
        ]
    attrs.append(("state", phase.state))
    if phase.name:
        attrs.append(("name", phase.name))
    return "<phase " + " ".join(f"{k}={quoteattr(v)}" for k, v in attrs) + "/>"


def _num(x: float) -> str:
    """A number as SUMO reads it: integers without a fraction, others exactly (repr)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)
