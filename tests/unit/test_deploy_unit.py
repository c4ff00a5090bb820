"""The shipped systemd unit (deploy/cityctl.service) against the shipped config and systemd.

A controller that crashes is restarted by systemd; if it is back before the cabinets' heartbeat
watchdog fires, it adopts what the heads show (in control within a second of its start, no
change on the street); if not, every cabinet runs its local plan and the hand-back goes through
all red (4–18 s). So the restart delay is a safety-relevant number tied to the config.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "cityctl.service"

#: From a new process's start to its first heartbeat written to a cabinet, with room: the
#: fault suite's controller SIGKILL test measures 0.73 s ("cabinet written", demo site).
START_TO_FIRST_WRITE_S = 1.0

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|)\s*$")


def _unit() -> dict[str, dict[str, list[str]]]:
    """Sections → key → values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(span: str) -> float:
    m = _SPAN.match(span)
    assert m, f"time span this test does not parse: {span!r}"
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "ms" else value * 60 if unit == "min" else value


def test_the_restart_comes_inside_the_cabinets_heartbeat_timeout() -> None:
    cfg = load_config(ROOT / "config.yaml")
    service = _unit()["Service"]
    assert service["Restart"] == ["always"]
    restart_s = _seconds(service["RestartSec"][-1])
    # The last heartbeat the old process wrote may be refresh_s old when it dies.
    budget = cfg.signals.heartbeat_timeout_s - cfg.signals.refresh_s
    assert restart_s + START_TO_FIRST_WRITE_S <= budget, (restart_s, budget)
    assert _seconds("2") == 2.0 and _seconds("1min") == 60.0 and _seconds("200ms") == 0.2


def test_the_unit_never_gives_up_restarting() -> None:
    unit = _unit()
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    # In [Service] systemd ignores it ("Unknown key"), and its default limit (5 starts in
    # 10 s) would leave a crash-looping box stopped for good.
    assert "StartLimitIntervalSec" not in unit["Service"]
    assert "StartLimitBurst" not in unit["Service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_knows_every_setting_of_the_unit(tmp_path: Path) -> None:
    # ExecStart pointed at a binary that exists here: verify checks it too.
    text = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", UNIT.read_text())
    copy = tmp_path / "cityctl.service"
    copy.write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    complaints = [
        ln
        for ln in (out.stdout + out.stderr).splitlines()
        if re.search(r"Unknown|Invalid|Failed to parse|ignoring", ln)
    ]
    assert not complaints, complaints
