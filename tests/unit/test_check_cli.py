"""``cityctl check faults``: reports and pytest outcomes joined into one table.

The suite itself is far too slow to run inside the suite; a throw-away test folder with one
surviving fault, one failing after its report, one failing before it and one plain test stands
in for it, run by the same code through a real pytest subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.check_cli import collect_rows, format_table, run_fault_suite
from tests.faults import REPORT_ENV, report

ROOT = Path(__file__).resolve().parents[2]

SUITE = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import pytest
from tests.faults import report

@pytest.mark.faults
def test_survives():
    report("broker restarted", recovery_s=0.5, lost=0, detail="all back")

@pytest.mark.faults
def test_fails_after_report():
    report("cable cut", recovery_s=12.0, lost=3, detail="slow")
    assert False, "took 12 s"

@pytest.mark.faults
def test_fails_before_report():
    raise RuntimeError("could not start the cabinet")

def test_not_a_fault():
    pass
"""


def test_report_prints_one_line_and_appends_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.jsonl"
    monkeypatch.setenv(REPORT_ENV, str(out))
    line = report("db down", recovery_s=1.234, lost=None, detail="backlog sent")
    assert line == "FAULT db down | recovery 1.23 s | lost - | backlog sent"
    assert capsys.readouterr().out.strip() == line
    report("fuzz", recovery_s=None, lost=0, detail="all dropped")
    entries = [json.loads(x) for x in out.read_text().splitlines()]
    assert [e["fault"] for e in entries] == ["db down", "fuzz"]
    assert entries[0]["recovery_s"] == 1.234 and entries[0]["lost"] is None
    assert entries[1]["test"].endswith("test_report_prints_one_line_and_appends_json")


def test_the_suite_runs_and_every_fault_test_gets_a_row(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_some_faults.py").write_text(SUITE)
    code, rows = run_fault_suite(workers=1, tests=tests)
    assert code == 1  # two tests failed
    by_fault = {r.fault: r for r in rows}
    assert set(by_fault) == {"broker restarted", "cable cut", "test_fails_before_report"}
    assert by_fault["broker restarted"].outcome == "passed"
    assert by_fault["broker restarted"].recovery_s == 0.5
    assert by_fault["broker restarted"].lost == 0
    assert by_fault["cable cut"].outcome == "failed"
    assert by_fault["cable cut"].lost == 3
    assert by_fault["test_fails_before_report"].outcome == "failed"
    assert "could not start the cabinet" in by_fault["test_fails_before_report"].detail
    table = format_table(rows)
    assert "3 fault(s): 1 survived, 2 FAILED" in table
    assert table.splitlines()[0].split() == ["fault", "recovery", "lost", "outcome", "measured"]
    assert "0.50 s" in table and "12.00 s" in table


def test_missing_files_give_no_rows(tmp_path: Path) -> None:
    assert collect_rows(tmp_path / "none.jsonl", tmp_path / "none.xml") == []
    assert "0 fault(s): 0 survived" in format_table([])


def test_a_folder_without_tests_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="source checkout"):
        run_fault_suite(tests=tmp_path / "nowhere")
