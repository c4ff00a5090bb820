"""Reloading config.yaml while the controller runs (``Controller.reload``, SIGHUP).

All or nothing: a good file's schedule runs at once as a new version by ``config.yaml``; a file
with an error, or with a change only a restart can apply, is refused with every problem named
(field path and reason, logged at ERROR) and the old config keeps running.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from controller.reload import restart_changes
from controller.runtime import Controller
from tests.unit.test_api import ENGINEER, VIEWER, auth, config, controller

ROOT = Path(__file__).resolve().parents[2]
LATE = dt.datetime(2026, 11, 25, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=7)))


def data() -> dict[str, Any]:
    """config.yaml as test_api's controller() runs it (its api section included)."""
    d = yaml.safe_load((ROOT / "config.yaml").read_text())
    d["api"] = {"port": 0}
    return d


def text(change: Callable[[dict[str, Any]], object] = lambda d: None) -> str:
    d = data()
    change(d)
    return yaml.safe_dump(d, allow_unicode=True)


def arterial_late(d: dict[str, Any], level: float) -> None:
    prog = next(p for p in d["lighting"]["programs"] if p["name"] == "arterial")
    prog["steps"][1]["level"] = level  # 23:00


def late_level(ctl: Controller) -> float:
    return ctl.lighting.core.wanted(ctl.cfg.group("ql1a"), LATE, 0.0).level


def snapshot(ctl: Controller) -> tuple[Any, ...]:
    """What runs: the config object, the current version, the level it gives, the overrides."""
    return (
        ctl.cfg,
        ctl.schedules.current().version,
        len(ctl.schedules.history()),
        late_level(ctl),
        list(ctl.lighting.core.overrides),
    )


def test_a_schedule_change_runs_at_once_as_a_new_version_by_config_yaml(tmp_path: Path) -> None:
    ctl = controller()
    v1 = ctl.schedules.current().version
    assert late_level(ctl) == 80.0
    path = tmp_path / "config.yaml"
    path.write_text(text(lambda d: arterial_late(d, 70)))
    result = ctl.reload(path)
    assert result.applied and result.problems == ()
    assert late_level(ctl) == 70.0  # live, no restart
    current = ctl.schedules.current()
    assert current.version == v1 + 1 == result.schedule_version
    assert (current.author, current.source) == ("config.yaml", "config")
    assert "reloaded" in current.comment
    assert [c.path for c in ctl.schedules.diff(v1, current.version)] == [
        "programs[arterial].steps[1].level"
    ]
    assert result.changes == (f"schedule version {v1 + 1} by config.yaml",)
    # The same file again changes nothing: no new version.
    again = ctl.reload(path)
    assert again.applied and again.changes == () and ctl.schedules.current().version == v1 + 1


def test_the_api_history_shows_the_reload_and_health_counts_it() -> None:
    ctl = controller()
    c = TestClient(ctl.api.app) if ctl.api is not None else None
    assert c is not None
    assert c.get("/api/v1/health").json()["config_reload"] == {
        "applied": 0,
        "refused": 0,
        "last": None,
    }
    assert ctl.reload(text(lambda d: arterial_late(d, 65))).applied
    assert not ctl.reload("lighting: [").applied
    hist = c.get("/api/v1/schedules/versions", headers=auth(VIEWER)).json()
    assert (hist[0]["author"], hist[0]["source"]) == ("config.yaml", "config")
    health = c.get("/api/v1/health").json()["config_reload"]
    assert (health["applied"], health["refused"]) == (1, 1)
    assert health["last"]["result"] == "refused" and health["last"]["problems"] == 1


@pytest.mark.parametrize(
    ("bad", "path", "words"),
    [
        ("lighting: [\n  programs", "config", "not valid YAML"),
        (
            text(lambda d: d["lighting"]["programs"][0]["steps"][1].update(level=150)),
            "lighting.programs[0].steps[1].level",
            "less than or equal to 100",
        ),
        (
            text(lambda d: d["lighting"]["programs"][0]["steps"][1].update(levle=70)),
            "lighting.programs[0].steps[1].levle",
            "unknown field",
        ),
        (
            text(lambda d: d["lighting"]["groups"][0].update(program="nigth")),
            "lighting.groups[0]",
            "program",
        ),
        (text(lambda d: d.pop("site")), "site", "required field is missing"),
    ],
)
def test_a_bad_file_is_refused_naming_the_field_and_the_old_config_runs(
    bad: str, path: str, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    ctl = controller()
    before = snapshot(ctl)
    with caplog.at_level(logging.ERROR, "cityctl"):
        result = ctl.reload(bad)
    assert not result.applied
    assert any(p.path.startswith(path) and words in p.message for p in result.problems), [
        str(p) for p in result.problems
    ]
    assert snapshot(ctl) == before
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(path in m and words in m for m in errors), errors
    assert errors[-1].endswith("the running config is unchanged")
    # A good file afterwards is taken as usual.
    assert ctl.reload(text(lambda d: arterial_late(d, 60))).applied and late_level(ctl) == 60.0


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        (lambda d: d["mqtt"].update(url="mqtt://10.0.0.9:1883"), ["mqtt.url"]),
        (
            lambda d: d["signals"]["intersections"][1]["cabinet"].update(port=5020),
            ["signals.intersections[1].cabinet.port"],
        ),
        (
            lambda d: d["lighting"]["groups"][0]["nodes"].append("QL-999"),
            ["lighting.groups[0].nodes"],
        ),
        (lambda d: d["controller"].update(id="other-box"), ["controller.id"]),
        (lambda d: d["lighting"].update(tick_s=10), ["lighting.tick_s"]),
        (lambda d: d["api"].update(open_reads=True), ["api.open_reads"]),
        (
            lambda d: (
                d["telemetry"]["intervals"].update(group_s=30),
                d["site"].update(latitude=21),
            ),
            ["site.latitude", "telemetry.intervals.group_s"],
        ),
    ],
)
def test_a_change_that_needs_a_restart_refuses_the_whole_file(
    change: Callable[[dict[str, Any]], object],
    fields: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctl = controller()
    before = snapshot(ctl)

    def both(d: dict[str, Any]) -> None:
        arterial_late(d, 70)  # a change that could run live: it must not, either
        change(d)

    with caplog.at_level(logging.ERROR, "cityctl"):
        result = ctl.reload(text(both))
    assert not result.applied
    assert sorted(p.path for p in result.problems) == fields
    assert all("restart" in p.message for p in result.problems)
    assert snapshot(ctl) == before and late_level(ctl) == 80.0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert all(f in logged for f in fields)


def test_overrides_and_the_log_level_change_live() -> None:
    ctl = controller()

    def change(d: dict[str, Any]) -> None:
        d["controller"]["log_level"] = "DEBUG"
        d["lighting"]["overrides"].append(
            {
                "id": "roadworks",
                "groups": ["ql1a"],
                "level": 100,
                "start": "2026-11-25T22:00:00",
                "until": "2026-11-26T02:00:00",
                "reason": "roadworks at night",
            }
        )

    assert late_level(ctl) == 80.0
    result = ctl.reload(text(change))
    assert result.applied and result.log_level == "DEBUG"
    assert late_level(ctl) == 100.0  # the override runs
    assert result.changes == ("lighting.overrides: 1 → 2", "controller.log_level: INFO → DEBUG")
    assert ctl.schedules.current().version == 1  # overrides are not schedule versions


def test_an_api_edit_survives_a_reload_of_an_unchanged_file() -> None:
    ctl = controller()
    c = TestClient(ctl.api.app) if ctl.api is not None else None
    assert c is not None
    v1 = ctl.schedules.current().version
    r = c.put(
        "/api/v1/schedules/assignments/ql1a",
        json={"base_version": v1, "program": "festival"},
        headers=auth(ENGINEER),
    )
    assert r.status_code == 200, r.text
    result = ctl.reload(text())  # the file as it was: its schedule did not change
    assert result.applied and result.schedule_version == v1 + 1
    assert ctl.cfg.group("ql1a").program == "festival"
    # An edited file wins, as at a start.
    result = ctl.reload(text(lambda d: arterial_late(d, 70)))
    assert result.schedule_version == v1 + 2 and ctl.cfg.group("ql1a").calendar is not None


def test_a_schedule_the_lighting_refuses_stores_no_version(monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = controller()
    before = snapshot(ctl)

    def refuse(cfg: Any) -> None:
        raise ValueError("the groups changed: that needs a restart, not a reconfigure")

    monkeypatch.setattr(ctl.lighting, "apply_config", refuse)
    result = ctl.reload(text(lambda d: arterial_late(d, 70)))
    assert not result.applied and "needs a restart" in result.problems[0].message
    assert snapshot(ctl) == before  # the version was rolled back with the transaction


async def test_reload_async_reads_off_the_loop_and_applies() -> None:
    ctl = controller()
    result = await ctl.reload_async(text(lambda d: arterial_late(d, 75)))
    assert result.applied and late_level(ctl) == 75.0
    bad = await ctl.reload_async("site: 1")
    assert not bad.applied and ctl.reloads_refused == 1 and ctl.reloads_applied == 1


def test_restart_changes_name_nothing_for_live_fields_only() -> None:
    old = config()
    d = data()
    arterial_late(d, 10)
    d["lighting"]["groups"][0]["program"] = "festival"
    d["lighting"]["groups"][0].pop("calendar", None)
    d["lighting"]["overrides"] = []
    d["controller"]["log_level"] = "WARNING"
    from controller.config import parse_config

    new, _ = parse_config(yaml.safe_dump(d, allow_unicode=True))
    assert restart_changes(old, new) == []
