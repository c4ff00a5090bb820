"""Running a scenario with plain ``sumo`` (its static programs) and reading the statistics.

This is the set's own smoke check and baseline: no controller, just the ``.sumocfg`` as built,
with ``--duration-log.statistics`` and ``--statistic-output``. The benchmark proper measures
much more; this says whether the scenario loads, finishes, and how bad the fixed plans are.
"""

from __future__ import annotations

import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .tools import ScenarioError, run_tool, sumo_binary

__all__ = ["RunStatistics", "run_static"]


@dataclass(frozen=True)
class RunStatistics:
    """What one plain ``sumo`` run of a scenario reports."""

    config: Path
    end_s: float
    loaded: int
    """Vehicles loaded from the route files up to ``end_s``."""
    inserted: int
    running: int
    """Vehicles still in the network at the end."""
    waiting: int
    """Vehicles still waiting to be inserted at the end (insertion backlog)."""
    arrived: int
    teleports: int
    collisions: int
    emergency_braking: int
    mean_time_loss_s: float
    """Mean time loss of the arrived vehicles (against free flow at the allowed speed)."""
    mean_waiting_s: float
    mean_depart_delay_s: float
    pedestrians: int
    """Pedestrians that finished their walk."""
    mean_pedestrian_time_loss_s: float
    warnings: tuple[str, ...]
    """SUMO's warnings on stderr (errors make :func:`run_static` raise instead)."""
    wall_s: float


def _attrs(root: ET.Element, tag: str) -> dict[str, str]:
    element = root.find(tag)
    return dict(element.attrib) if element is not None else {}


def run_static(config: Path, *, end_s: float | None = None) -> RunStatistics:
    """Run ``sumo -c config`` (optionally only until ``end_s``) and return its statistics.

    Raises :class:`~.tools.ScenarioError` if SUMO fails or reports an error.
    """
    config = Path(config).resolve()
    with tempfile.TemporaryDirectory(prefix="cityctl-scenario-run-") as tmp:
        stats_file = Path(tmp) / "statistics.xml"
        args = [
            str(sumo_binary("sumo")),
            "--configuration-file",
            str(config),
            "--no-step-log",
            "--duration-log.statistics",
            "--statistic-output",
            str(stats_file),
        ]
        if end_s is not None:
            args += ["--end", f"{end_s:g}"]
        started = time.perf_counter()
        proc = run_tool(args, cwd=config.parent)
        wall_s = time.perf_counter() - started
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
        if errors:
            raise ScenarioError(f"sumo reported errors for {config.name}:\n" + "\n".join(errors))
        root = ET.parse(stats_file).getroot()

    vehicles = _attrs(root, "vehicles")
    trips = _attrs(root, "vehicleTripStatistics")
    safety = _attrs(root, "safety")
    peds = _attrs(root, "pedestrianStatistics")
    performance = _attrs(root, "performance")
    return RunStatistics(
        config=config,
        end_s=float(performance.get("end", "nan")),
        loaded=int(vehicles.get("loaded", "0")),
        inserted=int(vehicles.get("inserted", "0")),
        running=int(vehicles.get("running", "0")),
        waiting=int(vehicles.get("waiting", "0")),
        arrived=int(trips.get("count", "0")),
        teleports=int(_attrs(root, "teleports").get("total", "0")),
        collisions=int(safety.get("collisions", "0")),
        emergency_braking=int(safety.get("emergencyBraking", "0")),
        mean_time_loss_s=float(trips.get("timeLoss", "0")),
        mean_waiting_s=float(trips.get("waitingTime", "0")),
        mean_depart_delay_s=float(trips.get("departDelay", "0")),
        pedestrians=int(peds.get("number", "0")),
        mean_pedestrian_time_loss_s=float(peds.get("timeLoss", "0")),
        warnings=tuple(line for line in proc.stderr.splitlines() if line.startswith("Warning")),
        wall_s=wall_s,
    )
