"""The SUMO commands of ``cityctl``: ``sumo import``, ``sumo scenarios``, ``bench sumo``.

``bench sumo`` is an interface other tools rely on: it prints exactly one JSON object on stdout
and everything else (progress, SUMO's own messages, notes) on stderr. SUMO's C++ core writes to
file descriptor 1 directly, so the descriptor itself is pointed at stderr while SUMO runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["SCENARIO_DIR", "add_bench_parser", "add_sumo_parser"]

SCENARIO_DIR = "build/scenarios"
"""Where the project's scenario set is built (generated, not committed)."""


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr meanwhile (libsumo prints to it from C++)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Bar:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.plain = enabled and not self.enabled
        self._last = -1

    def __call__(self, done: float, total: float) -> None:
        share = 0.0 if total <= 0 else min(1.0, done / total)
        if self.enabled:
            n = int(share * 30)
            sys.stderr.write(f"\r{self.label} [{'#' * n}{'.' * (30 - n)}] {share * 100:5.1f} %")
            sys.stderr.flush()
            if share >= 1.0:
                sys.stderr.write("\n")
        elif self.plain:
            step = int(share * 4)
            if step != self._last:
                self._last = step
                _eprint(f"{self.label}: {share * 100:.0f} %")


# -- sumo import / scenarios -------------------------------------------------------------------


def cmd_sumo_import(args: argparse.Namespace) -> int:
    from controller.bench.sumo import sumo_binary
    from controller.sumo_import import import_lights, to_yaml
    from simulator.sumo.config import read_sumocfg, write_run_config
    from simulator.sumo.network import describe_traffic_lights

    src = Path(args.network)
    if not src.exists():
        _eprint(f"{src}: no such file")
        return 2
    try:
        import libsumo
    except ImportError:
        _eprint("libsumo is not installed: pip install 'cityctl[sumo]'")
        return 2
    with tempfile.TemporaryDirectory(prefix="cityctl-import-") as tmp:
        if src.suffix == ".sumocfg":
            try:
                cfg = read_sumocfg(src)
            except ValueError as exc:
                _eprint(str(exc))
                return 2
            run = write_run_config(cfg, Path(tmp) / "import.sumocfg", drop_options=("route-files",))
            cmd = [sumo_binary(), "-c", str(run)]
        else:
            cmd = [sumo_binary(), "-n", str(src.resolve())]
        with stdout_to_stderr():
            try:
                libsumo.start([*cmd, "--no-step-log", "--no-warnings"])
            except Exception as exc:  # libsumo raises its own TraCIException
                _eprint(f"{src}: SUMO could not load it: {exc}")
                return 2
            try:
                descs = describe_traffic_lights(libsumo)
            finally:
                libsumo.close()
    result = import_lights(descs)
    text = to_yaml(result, source=str(src))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        _eprint(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    _eprint(
        f"{len(descs)} traffic lights: {len(result.lights)} imported, {len(result.refused)} refused"
    )
    for tid, why in sorted(result.refused.items()):
        _eprint(f"  refused {tid}: {why}")
    return 0 if result.lights or not descs else 1


def cmd_sumo_scenarios(args: argparse.Namespace) -> int:
    from simulator.sumo.scenarios import SCENARIOS, build_scenario

    out = Path(args.out)
    names = args.name or list(SCENARIOS)
    for name in names:
        if name not in SCENARIOS:
            _eprint(f"--name: unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
            return 2
    for name in names:
        t = time.perf_counter()
        path = build_scenario(name, out, force=args.force)
        _eprint(f"{name}: {path} ({time.perf_counter() - t:.1f} s)")
        print(path)
    return 0


# -- bench sumo --------------------------------------------------------------------------------


def cmd_bench_sumo(args: argparse.Namespace) -> int:
    from controller.bench.sumo import CONTROLLERS, run_sumo_bench, sumo_binary

    if args.controller not in CONTROLLERS:
        _eprint(f"--controller: {args.controller!r} is not one of {', '.join(CONTROLLERS)}")
        return 2
    cfg_path = Path(args.sumocfg)
    if not cfg_path.exists():
        _eprint(f"--sumocfg: {cfg_path}: no such file")
        return 2
    if args.begin is not None and args.end is not None and args.end <= args.begin:
        _eprint("--end must be after --begin")
        return 2
    bar = _Bar(f"{cfg_path.stem} {args.controller}", enabled=not args.quiet)
    try:
        with stdout_to_stderr():
            result = run_sumo_bench(
                cfg_path,
                args.controller,
                begin=args.begin,
                end=args.end,
                seed=args.seed,
                keep=args.keep,
                progress=bar,
                log=_eprint,
                transport=args.transport,
            )
            if args.reference:
                result.update(_reference(cfg_path, args, sumo_binary()))
    except (ValueError, RuntimeError) as exc:
        _eprint(f"bench sumo: {exc}")
        return 2
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        _eprint(format_run(result))
    else:
        print(format_run(result))
    return 0


def _reference(cfg_path: Path, args: argparse.Namespace, binary: str) -> dict[str, Any]:
    """Run plain ``sumo`` on the same scenario and period, for the wall-time comparison."""
    from simulator.sumo.config import read_sumocfg, write_run_config

    cfg = read_sumocfg(cfg_path)
    with tempfile.TemporaryDirectory(prefix="cityctl-ref-") as tmp:
        opts = {"no-step-log": "true", "duration-log.disable": "true"}
        if args.begin is not None:
            opts["begin"] = f"{args.begin:g}"
        if args.end is not None:
            opts["end"] = f"{args.end:g}"
        if args.seed is not None:
            opts["seed"] = str(args.seed)
        run = write_run_config(cfg, Path(tmp) / "ref.sumocfg", set_options=opts)
        t = time.perf_counter()
        proc = subprocess.run(
            [binary, "-c", str(run), "--no-warnings"], capture_output=True, text=True
        )
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"sumo_alone_error": proc.stderr[-500:]}
    return {"sumo_alone_s": round(wall, 3)}


def cmd_bench_suite(args: argparse.Namespace) -> int:
    from controller.bench.suite import (
        SUITE_CONTROLLERS,
        find_scenarios,
        format_table,
        plot_suite,
        run_suite,
        write_markdown,
    )

    controllers = args.controller or list(SUITE_CONTROLLERS)
    from controller.bench.sumo import CONTROLLERS

    for c in controllers:
        if c not in CONTROLLERS:
            _eprint(f"--controller: {c!r} is not one of {', '.join(CONTROLLERS)}")
            return 2
    if args.dirs:
        dirs = [Path(d) for d in args.dirs]
        missing = [str(d) for d in dirs if not d.exists()]
        if missing:
            _eprint(f"no such file or directory: {', '.join(missing)}")
            return 2
        scenarios = find_scenarios(dirs)
    else:
        from simulator.sumo.scenarios import build_all

        _eprint(f"building the project's scenario set in {SCENARIO_DIR} …")
        scenarios = build_all(Path(SCENARIO_DIR))
    if not scenarios:
        _eprint("no .sumocfg found")
        return 2
    bar = _Bar("bench suite", enabled=not args.quiet)

    def progress(done: int, total: int, what: str) -> None:
        if bar.enabled:
            bar(done, total)
        elif not args.quiet:
            _eprint(f"[{done}/{total}] {what}")

    result = run_suite(
        scenarios,
        controllers=controllers,
        seeds=range(1, args.seeds + 1),
        end=args.end,
        workers=args.workers,
        progress=progress,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    image = None
    if args.plot:
        image = plot_suite(result, args.plot)
    if args.doc:
        write_markdown(result, Path(args.doc), image)
        _eprint(f"wrote {args.doc}")
    print(format_table(result))
    print(
        f"\ngeometric mean of adaptive ÷ best SUMO baseline: "
        f"{result['summary']['geometric_mean_ratio']:.3f}"
    )
    return 0 if not result["summary"]["errors"] else 1


def format_run(r: dict[str, Any]) -> str:
    """A short human table of one run."""
    s = r["safety"]
    lines = [
        f"{'scenario':<22} {Path(r['sumocfg']).stem}",
        f"{'controller':<22} {r['controller']}",
        f"{'vehicles (arrived)':<22} {r['vehicles']} ({r['arrived']})",
        f"{'mean delay, s/veh':<22} {r['mean_delay_s']:.2f}",
        f"{'mean wait, s/veh':<22} {r['mean_wait_s']:.2f}",
        f"{'lights (controlled)':<22} {r['lights']} ({r['lights_controlled']})",
        f"{'safety':<22} " + ", ".join(f"{k} {v}" for k, v in s.items()),
        f"{'wall, s':<22} {r['wall_s']:.2f}"
        + (f" (sumo alone {r['sumo_alone_s']:.2f})" if "sumo_alone_s" in r else ""),
    ]
    return "\n".join(lines)


# -- parsers -----------------------------------------------------------------------------------


def add_sumo_parser(sub: Any) -> None:
    """``cityctl sumo …``."""
    s = sub.add_parser("sumo", help="SUMO tools: import a network, build the scenario set")
    ssub = s.add_subparsers(dest="sumo_command", metavar="SUBCOMMAND", required=True)
    si = ssub.add_parser(
        "import",
        help="a SUMO network's traffic lights as config.yaml intersections",
        description="Reads a .net.xml (or a .sumocfg, to include the programs of its "
        "additional files) and prints every traffic light as an intersection of config.yaml: "
        "signal groups, conflicts, intergreens, stages, detectors. Lights that cannot be "
        "imported are listed on stderr with the reason.",
    )
    si.add_argument("network", help="a .net.xml or .sumocfg file")
    si.add_argument("-o", "--output", help="write the YAML here instead of stdout")
    si.set_defaults(func=cmd_sumo_import)
    sc = ssub.add_parser(
        "scenarios",
        help="build the project's scenario set (netgenerate + randomTrips, fixed seeds)",
    )
    sc.add_argument("--out", default=SCENARIO_DIR, help="directory (default: %(default)s)")
    sc.add_argument("--name", action="append", help="only this scenario (repeatable)")
    sc.add_argument("--force", action="store_true", help="rebuild even when up to date")
    sc.set_defaults(func=cmd_sumo_scenarios)


def add_bench_parser(bsub: Any) -> None:
    """``cityctl bench sumo``."""
    from controller.bench.sumo import CONTROLLERS

    b = bsub.add_parser(
        "sumo",
        help="one SUMO scenario with one controller: delay and safety as JSON",
        description="Runs a SUMO scenario with a cityctl strategy (every traffic light imported "
        "and run by the controller in lock-step) or a SUMO baseline (the network's own program, "
        "re-typed). Prints one JSON object on stdout; progress and logs go to stderr. "
        f"Controllers: {', '.join(CONTROLLERS)}.",
    )
    b.add_argument("--sumocfg", required=True, help="the scenario")
    b.add_argument("--begin", type=float, help="simulation begin, s (default: the scenario's)")
    b.add_argument("--end", type=float, help="simulation end, s (default: the scenario's)")
    b.add_argument("--seed", type=int, help="SUMO's random seed")
    b.add_argument("--controller", required=True, metavar="NAME", help="see above")
    b.add_argument("--json", action="store_true", help="print JSON (a table goes to stderr)")
    b.add_argument("--keep", metavar="DIR", help="keep SUMO's outputs of the run in DIR")
    b.add_argument(
        "--transport",
        choices=["inprocess", "modbus"],
        default="inprocess",
        help="cityctl strategies: cabinets called in-process (default) or each on a real "
        "Modbus TCP port",
    )
    b.add_argument(
        "--reference", action="store_true", help="also time plain `sumo` on the scenario"
    )
    b.add_argument("--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(func=cmd_bench_sumo)

    bs = bsub.add_parser(
        "suite",
        help="every SUMO scenario with every controller: table + chart in docs/benchmarks.md",
        description="Runs every .sumocfg under the given directories (default: the project's "
        "scenario set, built first) with every controller, and writes the table of mean delay "
        "and the ratio of adaptive to the best SUMO baseline into docs/benchmarks.md.",
    )
    bs.add_argument("dirs", nargs="*", help="directories or .sumocfg files")
    bs.add_argument("--controller", action="append", help="only these controllers (repeatable)")
    bs.add_argument("--seeds", type=int, default=1, help="SUMO seeds 1..N per cell")
    bs.add_argument("--end", type=float, help="end every run at this time, s")
    bs.add_argument("--workers", type=int, help="runs at once (default: the cores)")
    bs.add_argument("--doc", default="docs/benchmarks.md", help="page to write ('' for none)")
    bs.add_argument("--plot", default="docs/img/bench-sumo.png", help="chart ('' for none)")
    bs.add_argument("--json", metavar="FILE", help="also write every run as JSON")
    bs.add_argument("--quiet", action="store_true", help="no progress on stderr")
    bs.set_defaults(func=cmd_bench_suite)
