"""``cityctl check faults``: run the fault-survival suite and print what each fault cost.

The suite is the tests marked ``faults`` under ``tests/`` of a source checkout: each injects
one fault into real parts (a SIGKILLed broker or controller, a cut Modbus cable, a database
away, garbage on every topic and register, a broken config reload, clients without
credentials) and ends by calling :func:`tests.faults.report` once. The command runs them with
pytest (both cores), collects those reports from a JSON-lines file and the pass/fail outcome of
each test from pytest's JUnit XML, and prints one row per fault: recovery time, messages lost,
outcome. A test that failed before it could report still gets a row, under its test name.

It needs the checkout's ``tests/`` and the ``dev`` extra (pytest, pytest-xdist); ``./run
test`` installs both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["FaultRow", "add_check_parser", "collect_rows", "format_table", "run_fault_suite"]

#: The checkout's root: ``controller/`` sits right under it.
ROOT = Path(__file__).resolve().parent.parent

#: Same name as ``tests.faults.REPORT_ENV`` (not imported: tests/ is not part of the package).
REPORT_ENV = "CITYCTL_FAULT_REPORT"


@dataclass(frozen=True)
class FaultRow:
    """One fault of the suite: what it cost and whether its test passed."""

    fault: str
    recovery_s: float | None
    lost: int | None
    outcome: str  # passed / failed / error / skipped / not run
    detail: str
    test: str


def _junit_outcomes(path: Path) -> dict[str, tuple[str, str]]:
    """Test node id → (outcome, message) from a pytest JUnit XML file."""
    out: dict[str, tuple[str, str]] = {}
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return out
    for case in tree.iter("testcase"):
        classname = case.get("classname", "")
        name = case.get("name", "")
        # pytest writes ``tests.integration.test_x`` for ``tests/integration/test_x.py``.
        nodeid = f"{classname.replace('.', '/')}.py::{name}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                first = (el.get("message") or "").strip().splitlines()
                message = first[0] if first else ""
                break
        out[nodeid] = (outcome, message)
    return out


def collect_rows(report_file: Path, junit_file: Path) -> list[FaultRow]:
    """Join the tests' own reports with their outcomes (reports first, in suite order)."""
    outcomes = _junit_outcomes(junit_file)
    rows: list[FaultRow] = []
    reported: set[str] = set()
    entries: list[dict[str, Any]] = []
    if report_file.exists():
        for line in report_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entries.append(json.loads(line))
    entries.sort(key=lambda e: (str(e.get("test", "")), float(e.get("at", 0.0))))
    for e in entries:
        test = str(e.get("test", ""))
        reported.add(test)
        outcome, _ = outcomes.get(test, ("not run", ""))
        rows.append(
            FaultRow(
                fault=str(e["fault"]),
                recovery_s=None if e.get("recovery_s") is None else float(e["recovery_s"]),
                lost=None if e.get("lost") is None else int(e["lost"]),
                outcome=outcome,
                detail=str(e.get("detail", "")),
                test=test,
            )
        )
    for test, (outcome, message) in sorted(outcomes.items()):
        if test not in reported:
            name = test.rsplit("::", 1)[-1]
            rows.append(FaultRow(name, None, None, outcome, message or "(no report)", test))
    return rows


def format_table(rows: list[FaultRow], *, width: int = 60) -> str:
    """Fault, recovery time, messages lost, outcome, and what was measured."""
    head = ("fault", "recovery", "lost", "outcome", "measured")
    body = [
        (
            r.fault,
            "-" if r.recovery_s is None else f"{r.recovery_s:.2f} s",
            "-" if r.lost is None else str(r.lost),
            r.outcome,
            r.detail if len(r.detail) <= width else r.detail[: width - 1] + "…",
        )
        for r in rows
    ]
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)
    ]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    for b in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip())
    failed = sum(1 for r in rows if r.outcome not in ("passed", "skipped"))
    lines.append("")
    lines.append(
        f"{len(rows)} fault(s): {len(rows) - failed} survived"
        + (f", {failed} FAILED" if failed else "")
    )
    return "\n".join(lines)


def run_fault_suite(
    *,
    workers: int = 2,
    extra: list[str] | None = None,
    verbose: bool = False,
    tests: Path | None = None,
) -> tuple[int, list[FaultRow]]:
    """Run pytest on the suite (``tests``: the checkout's by default); return its exit code
    and the rows."""
    tests = tests or ROOT / "tests"
    if not tests.is_dir():
        raise FileNotFoundError(
            f"{tests}: the fault suite lives in a source checkout's tests/ folder "
            "(clone the repository; `./run test` sets it up)"
        )
    with tempfile.TemporaryDirectory(prefix="cityctl-faults-") as tmp:
        report = Path(tmp) / "faults.jsonl"
        junit = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "faults",
            "-p",
            "no:cacheprovider",
            "-q" if not verbose else "-v",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit1",
        ]
        if workers > 1:
            cmd += ["-n", str(workers), "--dist", "loadfile"]
        cmd += [*(extra or []), str(tests)]
        env = {**os.environ, REPORT_ENV: str(report)}
        # pytest's own output goes to stderr so that stdout carries only the table (or JSON).
        proc = subprocess.run(cmd, cwd=tests.parent, env=env, stdout=sys.stderr, check=False)
        return proc.returncode, collect_rows(report, junit)


def cmd_check_faults(args: argparse.Namespace) -> int:
    try:
        import pytest  # noqa: F401
    except ImportError:
        print(
            "cityctl check faults needs pytest (pip install -e '.[dev]', or ./run test once)",
            file=sys.stderr,
        )
        return 2
    try:
        code, rows = run_fault_suite(
            workers=args.workers, extra=list(args.pytest_args or []), verbose=args.verbose
        )
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"exit_code": code, "faults": [asdict(r) for r in rows]}, indent=2))
    else:
        print(format_table(rows))
    if not rows:
        print(f"no fault test ran (pytest exit code {code})", file=sys.stderr)
        return code or 1
    return 0 if code == 0 else 1


def add_check_parser(sub: Any) -> None:
    """``cityctl check faults``."""
    c = sub.add_parser("check", help="self-checks of a checkout")
    csub = c.add_subparsers(dest="check_command", metavar="SUBCOMMAND", required=True)
    f = csub.add_parser(
        "faults",
        help="run the fault-survival suite and print a table (fault, recovery, messages lost)",
        description="Runs every test marked `faults` (broker and controller SIGKILLed, Modbus "
        "cable cut, database away, fuzzed MQTT payloads and registers, bad config reload, "
        "clients without credentials) against real Mosquitto, pymodbus and VictoriaMetrics, "
        "and prints what each fault cost. Exit code 0 when every one survived.",
    )
    f.add_argument("--json", action="store_true", help="print JSON instead of the table")
    f.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (default 2)")
    f.add_argument("--verbose", action="store_true", help="pytest -v")
    f.add_argument(
        "pytest_args", nargs="*", metavar="PYTEST_ARG", help="after --: more pytest arguments"
    )
    f.set_defaults(func=cmd_check_faults)
