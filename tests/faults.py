"""One summary line per fault-survival test, and the file ``cityctl check faults`` reads.

Every test of the fault-survival suite (marked ``faults``) ends with one call::

    from tests.faults import report

    report("broker killed and restarted", recovery_s=0.84, lost=0,
           detail="200 nodes back, 0 stale commands, 3/3 QoS 1 commands applied")

which prints one line (shown with ``pytest -s`` and in the test's captured output)::

    FAULT broker killed and restarted | recovery 0.84 s | lost 0 | 200 nodes back, …

and, when ``CITYCTL_FAULT_REPORT`` names a file, appends the same facts to it as one JSON
line, so ``cityctl check faults`` can print them as a table whatever pytest captured. The
test still asserts its targets itself: the report says what was measured, not whether it
passed (pytest's outcome is joined in by ``cityctl check faults``).

``recovery_s`` is the time from the fault's end (broker back, cable back, process restarted)
to everything being as it should be; ``None`` where there is nothing to recover from (bad
input is refused, nothing goes down). ``lost`` counts messages, commands or points that
should have arrived and did not; ``None`` where nothing can be lost.
"""

from __future__ import annotations

import json
import os
import time

__all__ = ["REPORT_ENV", "report"]

#: Environment variable naming the JSON-lines file the reports are appended to.
REPORT_ENV = "CITYCTL_FAULT_REPORT"


def report(
    fault: str,
    *,
    recovery_s: float | None,
    lost: int | None,
    detail: str,
) -> str:
    """Print the test's summary line (and append it to ``$CITYCTL_FAULT_REPORT``); return it."""
    rec = "-" if recovery_s is None else f"{recovery_s:.2f} s"
    lo = "-" if lost is None else str(lost)
    line = f"FAULT {fault} | recovery {rec} | lost {lo} | {detail}"
    print(line, flush=True)
    path = os.environ.get(REPORT_ENV)
    if path:
        entry = {
            "fault": fault,
            "recovery_s": recovery_s,
            "lost": lost,
            "detail": detail,
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
            "at": time.time(),
        }
        # One short write per line with O_APPEND: xdist workers can share the file.
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
    return line
