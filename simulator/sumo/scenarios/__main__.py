"""``python -m simulator.sumo.scenarios OUT_DIR [--force] [--run] [NAME ...]``.

Builds the scenario set (or the named scenarios) into ``OUT_DIR``, prints each one's traffic
lights and demand, and with ``--run`` runs each for its hour with plain ``sumo`` and prints
the statistics (arrived vehicles, teleports, collisions, mean time loss).
"""

from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from . import SCENARIOS, ScenarioError, build_scenario
from .build import net_file, route_files
from .measure import run_static
from .tls_rules import summarise_programs


def _count(path: Path, tag: str) -> int:
    return sum(1 for _ in ET.parse(path).getroot().iter(tag))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m simulator.sumo.scenarios")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(SCENARIOS)}")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--run", action="store_true", help="run each hour with plain sumo")
    args = parser.parse_args(argv)
    names = args.names or list(SCENARIOS)
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    try:
        for name in names:
            started = time.perf_counter()
            cfg = build_scenario(name, args.out_dir, force=args.force)
            built_s = time.perf_counter() - started
            lights = summarise_programs(cfg.parent / net_file(name))
            vehicles = persons = 0
            for routes in route_files(name):
                vehicles += _count(cfg.parent / routes, "vehicle")
                persons += _count(cfg.parent / routes, "person")
            print(f"{name}: {cfg} ({built_s:.1f} s)")
            print(f"  demand: {vehicles} vehicles, {persons} pedestrians in the hour")
            for tl in lights:
                print(
                    f"  light {tl.tls_id} ({'+'.join(tl.junctions)}): {tl.links} links "
                    f"({tl.pedestrian_links} crossings), {tl.phases} phases, "
                    f"{tl.green_phases} green, cycle {tl.cycle_s:g} s"
                )
            if args.run:
                stats = run_static(cfg)
                print(
                    f"  sumo: {stats.inserted}/{stats.loaded} inserted, {stats.arrived} arrived, "
                    f"{stats.waiting} waiting, {stats.teleports} teleports, "
                    f"{stats.collisions} collisions, mean time loss "
                    f"{stats.mean_time_loss_s:.1f} s, depart delay "
                    f"{stats.mean_depart_delay_s:.1f} s"
                    + (
                        f", {stats.pedestrians} pedestrians (time loss "
                        f"{stats.mean_pedestrian_time_loss_s:.1f} s)"
                        if stats.pedestrians
                        else ""
                    )
                    + f" [{stats.wall_s:.1f} s]"
                )
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
