"""The demo (the README's first command) on its embedded broker: it runs and shows a night."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from controller.config import load_config
from controller.demo import run_demo, start_instant

ROOT = Path(__file__).resolve().parents[2]


def test_start_instant_forms() -> None:
    cfg = load_config(ROOT / "config.yaml")
    day = dt.date(2026, 11, 25)
    assert (
        start_instant(cfg, "17:00", day).strftime("%Y-%m-%d %H:%M %z") == "2026-11-25 17:00 +0700"
    )
    assert start_instant(cfg, "2026-06-01T18:30", day).isoformat() == "2026-06-01T18:30:00+07:00"
    sunset = start_instant(cfg, "sunset-30min", day)
    assert (sunset.hour, sunset.minute) == (16, 44)  # sunset in Phu Ly 17:14 that day
    with pytest.raises(ValueError, match="--start 'teatime'"):
        start_instant(cfg, "teatime", day)


async def test_demo_runs_a_night_with_faults(caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(ROOT / "config.yaml")
    caplog.set_level(logging.INFO)
    # 900× from 17:00: 10 real seconds are 2.5 hours, through sunset and the first faults.
    rc = await run_demo(cfg, speed=900, start="2026-11-25T17:00", duration_s=10)
    assert rc == 0
    text = caplog.text
    assert "200 simulated light nodes online" in text
    assert "group ql1a               → 100.0 %" in text
    assert "node LCT-007: lamp_failure" in text
    assert "node QL-013: node_offline" in text
    assert "nodes: ql1a" in text
    following = int(text.split("demo over: ")[1].split(" of 200")[0])
    # At 900x a traffic step can land in the last real second, so some nodes may still be
    # on their way; convergence itself is measured in test_lighting_e2e.
    assert following >= 150, following
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    # The shutdown stops the cameras before the link they publish through.
    assert "not published" not in text
    # both intersections were handed over by their simulated cabinets and ran safely
    for xid in ("ql1a-lct", "ql1a-thd"):
        assert f"{xid}: cabinet handed over: starting from all red" in text
        line = text.split(f"demo over, {xid}: ")[1].split("\n")[0]
        assert line.startswith("control, "), line
        assert "0 controller safety violations, 0 cabinet monitor faults" in line, line
