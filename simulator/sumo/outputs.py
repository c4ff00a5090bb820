"""Read what SUMO wrote: trip statistics and the signal states it displayed.

Both readers stream (``iterparse`` and clearing what was read), so an hour of a city with
100,000 vehicles costs little memory. With ``libsumo`` the files are complete only after
``libsumo.close()``; a file cut short raises :class:`ValueError` naming it.

Trip information (``--tripinfo-output``), as SUMO 1.28 writes it
-----------------------------------------------------------------
One ``<tripinfo>`` per vehicle under ``<tripinfos>``, with (among others) ``depart``,
``departDelay``, ``arrival``, ``duration``, ``waitingTime``, ``timeLoss`` and ``vaporized``.
Checked by running SUMO on a junction fed far more vehicles than one lane can take, with
``--tripinfo-output.write-unfinished`` and ``--tripinfo-output.write-undeparted``:

* **arrived**: ``arrival`` ≥ 0.
* **unfinished** (still driving at the end; written by ``write-unfinished``): a real
  ``depart``, ``arrival="-1.00"``; ``duration``, ``waitingTime`` and ``timeLoss`` are those
  accumulated so far. ``vaporized`` is *not* a reliable mark: SUMO wrote ``"end"`` for most
  of them but ``""`` for those that had reached the last edge of their route, so it is
  ignored.
* **undeparted** (never inserted; written by ``write-undeparted``): ``depart="-1"``,
  ``arrival="-1.00"``, ``duration``, ``waitingTime`` and ``timeLoss`` 0, and ``departDelay`` =
  simulation end − wanted departure, i.e. the time it waited for a gap so far.

``departDelay`` (waiting to enter the network) is not part of ``timeLoss``; the delay a
vehicle suffered is therefore ``timeLoss + max(0, departDelay)``, which also charges the
undeparted vehicles the time they waited. ``waitingTime`` counts only time standing *in*
the network, so it is 0 for undeparted vehicles.

Persons (``<personinfo>``) and their stages are ignored: the benchmark compares vehicle
delay. The tripinfo file has no teleport count (that is in ``--statistic-output``'s
``<teleports total=…>``), so :class:`TripSummary` has none. Times written with
``--human-readable-time`` (``[D:]HH:MM:SS``) are understood too.

Signal states (``SaveTLSStates``)
---------------------------------
An additional file with ``<timedEvent type="SaveTLSStates" source="<tls id>"
dest="<file>"/>`` makes SUMO write, in **every** simulation step (not only at changes),
``<tlsState time="…" id="<tls id>" programID="…" phase="<index>" state="GGgrrr…"/>`` under
``<tlsStates>``. Without ``source`` every light is written; several events may name the same
``dest`` and then share one file, the lights of one step in no fixed order. The record at
``time`` t shows the state displayed from t until the next step (a state set over TraCI
before the step from t is written with time t; ``programID`` is then ``"online"``). The
optional ``saveDetectors`` / ``saveConditions`` add ``detectors`` / ``conditions``
attributes (empty for a static program); they are not needed here. A relative ``dest`` is
resolved against the additional file's folder, so :func:`tls_states_additional` writes an
absolute path. ``SaveTLSSwitchStates`` writes the same records only when the state changes
(states set over TraCI included); :func:`read_tls_states` reads both, and the additional
file uses the every-step event, the plainer record of what was shown.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

__all__ = [
    "TripSummary",
    "read_tls_states",
    "read_tripinfo",
    "tls_states_additional",
]


@dataclass(frozen=True)
class TripSummary:
    """What the vehicles of one run went through (see the module notes for the fields)."""

    vehicles: int
    """Every ``<tripinfo>``: arrived, unfinished and undeparted."""
    arrived: int
    unfinished: int
    """Inserted but still on the road at the end."""
    undeparted: int
    """Never inserted (no room at their entry lane)."""
    mean_delay_s: float
    """Mean over every vehicle of ``timeLoss + max(0, departDelay)``."""
    mean_wait_s: float
    """Mean ``waitingTime`` (time standing in the network)."""
    mean_time_loss_s: float
    """Mean ``timeLoss`` (time lost against driving at the desired speed)."""
    max_delay_s: float
    """The largest ``timeLoss + max(0, departDelay)`` of one vehicle."""


def read_tripinfo(path: str | os.PathLike[str]) -> TripSummary:
    """Summarise SUMO's ``--tripinfo-output`` file at ``path``.

    Every ``<tripinfo>`` counts, including those that ``--tripinfo-output.write-unfinished``
    and ``--tripinfo-output.write-undeparted`` add; means are over all of them. A file with
    no vehicle (or of zero bytes) gives zeros. Raises ValueError for a file that is not
    well-formed XML (for example one SUMO has not finished writing).
    """
    vehicles = arrived = unfinished = undeparted = 0
    delay_sum = wait_sum = loss_sum = 0.0
    max_delay = 0.0
    for attrs in _elements(path, "tripinfo"):
        vehicles += 1
        depart = _seconds(attrs.get("depart", "0"))
        arrival = _seconds(attrs.get("arrival", "-1"))
        if depart < 0:
            undeparted += 1
        elif arrival >= 0:
            arrived += 1
        else:
            unfinished += 1
        loss = _seconds(attrs.get("timeLoss", "0"))
        delay = loss + max(0.0, _seconds(attrs.get("departDelay", "0")))
        delay_sum += delay
        loss_sum += loss
        wait_sum += _seconds(attrs.get("waitingTime", "0"))
        max_delay = max(max_delay, delay)
    n = max(vehicles, 1)  # an empty run has means of 0, not a ZeroDivisionError
    return TripSummary(
        vehicles=vehicles,
        arrived=arrived,
        unfinished=unfinished,
        undeparted=undeparted,
        mean_delay_s=delay_sum / n,
        mean_wait_s=wait_sum / n,
        mean_time_loss_s=loss_sum / n,
        max_delay_s=max_delay,
    )


def read_tls_states(path: str | os.PathLike[str]) -> dict[str, list[tuple[float, str]]]:
    """The states each light displayed, from a ``SaveTLSStates`` file at ``path``.

    Per traffic-light id, ``(time, state)`` in time order with consecutive repeats dropped:
    the first record and then every change. A state holds from its time until the next
    entry (or the end of the run). Raises ValueError for a malformed file or a record
    without ``time``, ``id`` or ``state``.
    """
    records: dict[str, list[tuple[float, str]]] = {}
    for attrs in _elements(path, "tlsState"):
        try:
            tls_id, time_text, state = attrs["id"], attrs["time"], attrs["state"]
        except KeyError as exc:
            raise ValueError(f"{os.fspath(path)}: <tlsState> without {exc.args[0]!r}") from exc
        records.setdefault(tls_id, []).append((_seconds(time_text), state))
    out: dict[str, list[tuple[float, str]]] = {}
    for tls_id, seq in records.items():
        # SUMO writes in time order; a stable sort keeps same-step records in file order
        # should a file ever be merged from pieces.
        seq.sort(key=lambda r: r[0])
        changes: list[tuple[float, str]] = []
        for time_s, state in seq:
            if changes and changes[-1][1] == state:
                continue
            changes.append((time_s, state))
        out[tls_id] = changes
    return out


def tls_states_additional(tls_ids: Iterable[str] | None, dest_path: str | os.PathLike[str]) -> str:
    """An additional file (XML text) that makes SUMO save the displayed states to ``dest_path``.

    One ``SaveTLSStates`` event per light, all into the same file (SUMO shares one output
    for events naming the same file); ``tls_ids=None`` saves every light with one event.
    ``dest_path`` is written absolute (resolved against the current directory) because SUMO
    resolves a relative one against the additional file's folder.
    """
    dest = quoteattr(str(Path(dest_path).resolve()))
    lines = ["<additional>"]
    if tls_ids is None:
        lines.append(f'    <timedEvent type="SaveTLSStates" dest={dest}/>')
    else:
        for tls_id in tls_ids:
            lines.append(
                f'    <timedEvent type="SaveTLSStates" source={quoteattr(tls_id)} dest={dest}/>'
            )
    lines.append("</additional>")
    return "\n".join(lines) + "\n"


def _elements(path: str | os.PathLike[str], tag: str) -> Iterator[dict[str, str]]:
    """The attributes of every ``tag`` element of the file, streamed.

    Elements directly under the root are cleared and dropped as soon as they end, so memory
    stays flat however long the file is. A zero-byte file yields nothing.
    """
    if os.path.getsize(path) == 0:
        return
    depth = 0
    root: ET.Element | None = None
    try:
        for event, elem in ET.iterparse(os.fspath(path), events=("start", "end")):
            if event == "start":
                if root is None:
                    root = elem
                depth += 1
                continue
            depth -= 1
            if elem.tag == tag:
                yield dict(elem.attrib)
            if depth == 1 and root is not None:
                # A finished child of the root (e.g. a whole <personinfo> with its stages):
                # nothing below it is needed any more.
                elem.clear()
                root.clear()
    except ET.ParseError as exc:
        raise ValueError(
            f"{os.fspath(path)}: not a complete SUMO output ({exc}); was the simulation closed?"
        ) from exc


def _seconds(text: str) -> float:
    """A SUMO time: seconds (``"12.50"``) or ``--human-readable-time`` (``[D:]HH:MM:SS``)."""
    text = text.strip()
    if ":" not in text:
        return float(text)
    sign = -1.0 if text.startswith("-") else 1.0
    parts = [float(p) for p in text.lstrip("-").split(":")]
    factors = (86400.0, 3600.0, 60.0, 1.0)[-len(parts) :]
    return sign * sum(p * f for p, f in zip(parts, factors, strict=True))
