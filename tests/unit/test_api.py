"""The HTTP API in-process (FastAPI's TestClient): auth and roles, reads, overrides, audit."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from controller.clock import ManualClock
from controller.config import CityConfig, parse_config
from controller.runtime import Controller

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 11, 25, 20, 0, tzinfo=dt.timezone(dt.timedelta(hours=7)))
ADMIN, ENGINEER, VIEWER = (
    "admin-secret-0123456789",
    "engineer-secret-0123456",
    "viewer-secret-012345678",
)


def config(**api: Any) -> CityConfig:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["api"] = {"port": 0, **api}
    cfg, _ = parse_config(yaml.safe_dump(data, allow_unicode=True))
    return cfg


def controller(cfg: CityConfig | None = None) -> Controller:
    return Controller(
        cfg or config(),
        clock=ManualClock(T0),
        signals=False,
        api_tokens={
            "ada": ("admin", ADMIN),
            "eng": ("engineer", ENGINEER),
            "vic": ("viewer", VIEWER),
        },
    )


def client(ctl: Controller) -> TestClient:
    assert ctl.api is not None
    return TestClient(ctl.api.app)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_reads_need_a_token_unless_open() -> None:
    c = client(controller())
    r = c.get("/api/v1/groups")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert c.get("/api/v1/groups", headers=auth("wrong-token-0000000000")).status_code == 401
    assert c.get("/api/v1/groups", headers=auth(VIEWER)).status_code == 200
    assert c.get("/api/v1/health").status_code == 200  # liveness is open
    open_c = client(controller(config(open_reads=True)))
    assert open_c.get("/api/v1/groups").status_code == 200
    body = {"groups": ["ql1a"], "level": 50, "reason": "test"}
    assert open_c.post("/api/v1/overrides", json=body).status_code == 401


def test_writes_need_engineer_and_everything_is_audited() -> None:
    c = client(controller())
    body = {"groups": ["ql1a"], "level": 50, "reason": "festival"}
    r = c.post("/api/v1/overrides", json=body, headers=auth(VIEWER))
    assert r.status_code == 403 and "needs engineer" in r.json()["detail"]
    assert c.post("/api/v1/overrides", json=body).status_code == 401
    assert c.post("/api/v1/overrides", json=body, headers=auth(ENGINEER)).status_code == 201
    assert c.get("/api/v1/audit", headers=auth(ENGINEER)).status_code == 403
    log = c.get("/api/v1/audit", headers=auth(ADMIN)).json()
    assert [(e["who"], e["status"]) for e in log] == [
        ("eng", 201),
        ("anonymous", 401),
        ("vic", 403),
    ]
    assert "ql1a" in log[0]["summary"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"groups": ["ql1a", "nope"], "level": 50, "reason": "x"}, ["body", "groups", 1]),
        ({"groups": ["ql1a"], "level": 150, "reason": "x"}, ["body", "level"]),
        ({"groups": [], "level": 50, "reason": "x"}, ["body", "groups"]),
        ({"groups": ["ql1a"], "level": 50}, ["body", "reason"]),
        ({"groups": ["ql1a"], "level": 50, "reason": "x", "colour": "red"}, ["body", "colour"]),
        (
            {
                "groups": ["ql1a"],
                "level": 50,
                "reason": "x",
                "start": "2026-11-25T22:00:00+07:00",
                "until": "2026-11-25T21:00:00+07:00",
            },
            ["body", "until"],
        ),
    ],
)
def test_bad_override_is_422_naming_the_field_and_changes_nothing(
    body: dict[str, Any], loc: list[Any]
) -> None:
    ctl = controller()
    c = client(ctl)
    r = c.post("/api/v1/overrides", json=body, headers=auth(ENGINEER))
    assert r.status_code == 422
    assert loc in [d["loc"] for d in r.json()["detail"]], r.json()
    assert c.get("/api/v1/overrides", headers=auth(VIEWER)).json() == []
    assert ctl.overrides.active() == []


def test_override_applies_at_once_clears_and_survives_a_restart() -> None:
    ctl = controller()
    c = client(ctl)
    before = ctl.lighting.core.wanted(ctl.cfg.group("ql1a"), T0, 0.0)
    r = c.post(
        "/api/v1/overrides",
        json={
            "groups": ["ql1a"],
            "level": 35,
            "reason": "festival",
            "until": "2026-11-26T02:00:00",
        },
        headers=auth(ENGINEER),
    )
    assert r.status_code == 201, r.text
    oid = r.json()["id"]
    assert r.json()["until"] == "2026-11-26T02:00:00+07:00"  # naive: the site's zone
    w = ctl.lighting.core.wanted(ctl.cfg.group("ql1a"), T0, 0.0)
    assert (w.level, w.source) == (35.0, "override") and before.level != 35.0
    # A new controller on the same state directory (a restart) applies it again.
    again = controller()
    again.apply_overrides()
    w = again.lighting.core.wanted(again.cfg.group("ql1a"), T0, 0.0)
    assert (w.level, w.source) == (35.0, "override")
    assert (
        c.delete(f"/api/v1/overrides/{oid}", headers=auth(ENGINEER)).json()["cleared_by"] == "eng"
    )
    w = ctl.lighting.core.wanted(ctl.cfg.group("ql1a"), T0, 0.0)
    assert w.source != "override" and w.level == before.level
    assert c.delete(f"/api/v1/overrides/{oid}", headers=auth(ENGINEER)).status_code == 404


def test_reads_describe_the_site() -> None:
    c = client(controller())
    h = auth(VIEWER)
    assert c.get("/api/v1/site", headers=h).json()["nodes"] == 200
    groups = c.get("/api/v1/groups", headers=h).json()
    assert len(groups) == 8 and {"level", "source", "nodes", "location"} <= groups[0].keys()
    g = c.get("/api/v1/groups/ql1a", headers=h).json()
    assert len(g["node_list"]) == g["nodes"] > 0
    assert c.get("/api/v1/groups/nope", headers=h).status_code == 404
    nodes = c.get("/api/v1/nodes", params={"group": "ql1a"}, headers=h).json()
    assert {n["group"] for n in nodes} == {"ql1a"} and nodes[0]["online"] is None  # never heard
    assert c.get("/api/v1/nodes/QL-001", headers=h).json()["lamp_w"] > 0
    assert c.get("/api/v1/nodes/XX-1", headers=h).status_code == 404
    tr = c.get("/api/v1/transitions", params={"hours": 12}, headers=h).json()
    assert all(t["transitions"] for t in tr)  # every group changes level overnight
    assert c.get("/api/v1/transitions", params={"hours": 0}, headers=h).status_code == 422
    assert c.get("/api/v1/energy", headers=h).json()["groups"]
    assert c.get("/api/v1/alarms", headers=h).json() == []
    assert c.get("/api/v1/intersections", headers=h).json() == []  # signals off here


def test_openapi_schema_is_published_with_the_bearer_scheme() -> None:
    c = client(controller())
    schema = c.get("/openapi.json").json()
    assert "/api/v1/overrides" in schema["paths"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_no_tokens_means_no_api() -> None:
    ctl = Controller(config(), clock=ManualClock(T0), signals=False)
    assert ctl.api is None


def test_incidents_report_acknowledge_resolve_and_figures() -> None:
    ctl = controller()
    c = client(ctl)
    e, v = auth(ENGINEER), auth(VIEWER)
    r = c.post(
        "/api/v1/reports",
        json={"device": "QL-001", "note": "dark lamp", "kind": "dark_lamp"},
        headers=e,
    )
    assert r.status_code == 201, r.text
    inc = r.json()["incident"]
    assert r.json()["joined"] is False and inc["device_id"] == "QL-001"
    assert (
        c.post("/api/v1/reports", json={"device": "QL-001", "note": "x"}, headers=v).status_code
        == 403
    )
    # A second report of the same lamp joins the open incident.
    r2 = c.post(
        "/api/v1/reports",
        json={"device": "QL-001", "note": "still dark", "kind": "dark_lamp"},
        headers=e,
    )
    assert r2.json()["joined"] is True and r2.json()["incident"]["id"] == inc["id"]
    listed = c.get("/api/v1/incidents", params={"open": True}, headers=v).json()
    assert [i["id"] for i in listed] == [inc["id"]]
    ack = c.post(
        f"/api/v1/incidents/{inc['id']}/acknowledge", json={"note": "crew sent"}, headers=e
    )
    assert ack.status_code == 200 and ack.json()["state"] == "acknowledged"
    assert (
        c.post(f"/api/v1/incidents/{inc['id']}/acknowledge", json={}, headers=e).status_code == 409
    )
    assert (
        c.post(f"/api/v1/incidents/{inc['id']}/resolve", json={"note": ""}, headers=e).status_code
        == 422
    )
    done = c.post(
        f"/api/v1/incidents/{inc['id']}/resolve", json={"note": "lamp replaced"}, headers=e
    )
    assert done.status_code == 200 and done.json()["state"] == "resolved"
    assert (
        c.post(
            f"/api/v1/incidents/{inc['id']}/resolve", json={"note": "again"}, headers=e
        ).status_code
        == 409
    )
    hist = c.get(f"/api/v1/incidents/{inc['id']}", headers=v).json()["history"]
    assert len(hist) >= 4  # opened, report, acknowledged, resolved
    assert c.get("/api/v1/incidents/nope", headers=v).status_code == 404
    stats = c.get("/api/v1/incidents/stats", headers=v).json()
    assert stats["total"]["opened"] >= 1 and stats["total"]["resolution_rate"] == 1.0


def test_a_fault_still_reported_cannot_be_resolved_without_force() -> None:
    ctl = controller()
    c = client(ctl)
    opened = ctl.incidents.observe("node", "QL-002", "lamp_failure", True, "dark at 100 %")
    assert opened is not None
    url = f"/api/v1/incidents/{opened.id}/resolve"
    r = c.post(url, json={"note": "looked fine"}, headers=auth(ENGINEER))
    assert r.status_code == 409 and "still" in r.json()["detail"]
    r = c.post(
        url,
        json={"note": "replaced, node not yet reporting", "force": True},
        headers=auth(ENGINEER),
    )
    assert r.status_code == 200 and r.json()["state"] == "resolved"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"lat": 20.5, "note": "x"}, ["body", "lon"]),
        ({"note": "x"}, ["body", "device"]),
        ({"device": "NOPE-1", "note": "x"}, ["body", "device"]),
        ({"lat": 120, "lon": 1, "note": "x"}, ["body", "lat"]),
        ({"device": "QL-001"}, ["body", "note"]),
    ],
)
def test_bad_reports_name_the_field(body: dict[str, Any], loc: list[Any]) -> None:
    c = client(controller())
    r = c.post("/api/v1/reports", json=body, headers=auth(ENGINEER))
    assert r.status_code == 422, r.text
    assert loc in [d["loc"] for d in r.json()["detail"]], r.json()


def _program(c: TestClient, name: str) -> tuple[int, dict[str, Any]]:
    cur = c.get("/api/v1/schedules", headers=auth(VIEWER)).json()
    prog = next(p for p in cur["document"]["programs"] if p["name"] == name)
    return cur["version"], prog


def test_schedule_edit_applies_live_is_versioned_diffed_and_rolled_back() -> None:
    ctl = controller()
    c = client(ctl)
    e = auth(ENGINEER)
    at = dt.datetime(2026, 11, 25, 23, 30, tzinfo=T0.tzinfo)  # arterial: 80 % from 23:00
    group = ctl.cfg.group("ql1a")
    v1, prog = _program(c, "arterial")
    assert ctl.lighting.core.wanted(group, at, 0.0).level == 80.0
    prog["steps"][1]["level"] = 70.0
    r = c.put(
        "/api/v1/schedules/programs/arterial",
        json={"base_version": v1, "item": prog, "comment": "dimmer late"},
        headers=e,
    )
    assert r.status_code == 200, r.text
    v2 = r.json()["version"]
    assert v2 == v1 + 1 and r.json()["author"] == "eng" and r.json()["created"] is True
    assert ctl.lighting.core.wanted(ctl.cfg.group("ql1a"), at, 0.0).level == 70.0  # live
    d = c.get("/api/v1/schedules/diff", params={"from": v1, "to": v2}, headers=auth(VIEWER)).json()
    assert [(x["path"], x["old"], x["new"]) for x in d["changes"]] == [
        ("programs[arterial].steps[1].level", 80.0, 70.0)
    ]
    assert "-" in d["text"] and "+" in d["text"]
    # A second writer still on v1 gets a conflict; nothing is lost or changed.
    stale = dict(prog, steps=[dict(s) for s in prog["steps"]])
    stale["steps"][1]["level"] = 50.0
    r = c.put(
        "/api/v1/schedules/programs/arterial", json={"base_version": v1, "item": stale}, headers=e
    )
    assert r.status_code == 409 and r.json()["detail"]["current_version"] == v2
    assert ctl.lighting.core.wanted(ctl.cfg.group("ql1a"), at, 0.0).level == 70.0
    # Roll back to v1: a new version with v1's document, running at once.
    r = c.post("/api/v1/schedules/rollback", json={"to_version": v1, "base_version": v2}, headers=e)
    assert (
        r.status_code == 200 and r.json()["version"] == v2 + 1 and r.json()["source"] == "rollback"
    )
    assert ctl.lighting.core.wanted(ctl.cfg.group("ql1a"), at, 0.0).level == 80.0
    hist = c.get("/api/v1/schedules/versions", headers=auth(VIEWER)).json()
    assert [h["version"] for h in hist] == [v2 + 1, v2, v1]
    # The edits survive a restart: a new controller on the same state runs the current one.
    again = controller()
    assert again.schedules.current().version == v2 + 1


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        (lambda p: p["steps"][0].update(level=150), ["body", "item", "steps", 0, "level"]),
        (lambda p: p["steps"][1].update(at="25:99"), ["body", "item", "steps", 1, "at"]),
        (lambda p: p.update(colour="red"), ["body", "item", "colour"]),
    ],
)
def test_bad_program_is_422_with_the_field_and_nothing_changes(change: Any, loc: list[Any]) -> None:
    ctl = controller()
    c = client(ctl)
    v, prog = _program(c, "arterial")
    change(prog)
    r = c.put(
        "/api/v1/schedules/programs/arterial",
        json={"base_version": v, "item": prog},
        headers=auth(ENGINEER),
    )
    assert r.status_code == 422, r.text
    locs = [d["loc"] for d in r.json()["detail"]]
    assert loc in locs, locs
    assert ctl.schedules.current().version == v


def test_deleting_a_program_in_use_is_refused_naming_its_users() -> None:
    c = client(controller())
    v, _ = _program(c, "arterial")
    r = c.delete(
        "/api/v1/schedules/programs/arterial", params={"base_version": v}, headers=auth(ENGINEER)
    )
    assert r.status_code == 409 and any("city" in u for u in r.json()["detail"]["users"])
    r = c.delete(
        "/api/v1/schedules/programs/nope", params={"base_version": v}, headers=auth(ENGINEER)
    )
    assert r.status_code == 404
    r = c.put(
        "/api/v1/schedules/assignments/ql1a", json={"base_version": v}, headers=auth(ENGINEER)
    )
    assert r.status_code == 422
    r = c.put(
        "/api/v1/schedules/assignments/ql1a",
        json={"base_version": v, "program": "park"},
        headers=auth(ENGINEER),
    )
    assert r.status_code == 200 and r.json()["document"]["assignments"]["ql1a"] == {
        "program": "park"
    }


def test_programs_and_calendars_are_listed_and_read_one_by_one() -> None:
    c = client(controller())
    v = auth(VIEWER)
    names = [p["name"] for p in c.get("/api/v1/schedules/programs", headers=v).json()]
    assert "arterial" in names and "park" in names
    prog = c.get("/api/v1/schedules/programs/arterial", headers=v).json()
    assert prog["name"] == "arterial" and prog["steps"][0]["at"] == "sunset+10min"
    assert c.get("/api/v1/schedules/programs/nope", headers=v).status_code == 404
    cals = c.get("/api/v1/schedules/calendars", headers=v).json()
    assert "city" in [x["name"] for x in cals]
    assert c.get("/api/v1/schedules/calendars/city", headers=v).json()["name"] == "city"
    assert c.get("/api/v1/schedules/programs").status_code == 401


def test_intersections_alarms_and_versions_read_back() -> None:
    ctl = Controller(
        config(),
        clock=ManualClock(T0),
        api_tokens={"vic": ("viewer", VIEWER)},
    )
    c = client(ctl)
    v = auth(VIEWER)
    xs = c.get("/api/v1/intersections", headers=v).json()
    assert {x["intersection"] for x in xs} == {"ql1a-lct", "ql1a-thd"}
    one = c.get("/api/v1/intersections/ql1a-lct", headers=v).json()
    assert one["sync"] == "down" and one["cabinet"]["up"] is False  # not started: no cabinet
    assert one["location"] is not None and "N_T" in one["signals"]
    assert c.get("/api/v1/intersections/nope", headers=v).status_code == 404
    first = c.get("/api/v1/schedules/versions/1", headers=v).json()
    assert first["source"] == "config" and first["document"]["programs"]
    assert c.get("/api/v1/schedules/versions/99", headers=v).status_code == 404
    # An alarm a node raises is listed with its group.
    from devices.lights import AlarmEntry

    ctl.lighting.core.faults.active["QL-003"] = {
        "lamp_failure": AlarmEntry(kind="lamp_failure", since=T0, detail="dark")
    }
    alarms = c.get("/api/v1/alarms", headers=v).json()
    assert [(a["device"], a["group"], a["kind"]) for a in alarms] == [
        ("QL-003", "ql1a", "lamp_failure")
    ]
    assert c.get("/api/v1/nodes", params={"alarm": True}, headers=v).json()[0]["id"] == "QL-003"


def test_whole_document_put_validates_and_conflicts() -> None:
    ctl = controller()
    c = client(ctl)
    e = auth(ENGINEER)
    cur = c.get("/api/v1/schedules", headers=auth(VIEWER)).json()
    doc = cur["document"]
    doc["assignments"]["ql1a"] = {"program": "no-such-program"}
    r = c.put(
        "/api/v1/schedules", json={"base_version": cur["version"], "document": doc}, headers=e
    )
    assert r.status_code == 422
    assert ["body", "document", "assignments", "ql1a", "program"] in [
        d["loc"] for d in r.json()["detail"]
    ]
    doc["assignments"]["ql1a"] = {"program": "park"}
    r = c.put(
        "/api/v1/schedules",
        json={"base_version": cur["version"], "document": doc, "comment": "park"},
        headers=e,
    )
    assert r.status_code == 200 and r.json()["comment"] == "park"
    r = c.put(
        "/api/v1/schedules", json={"base_version": cur["version"], "document": doc}, headers=e
    )
    assert r.status_code == 409  # the first save moved the version on
    r = c.post(
        "/api/v1/schedules/rollback",
        json={"to_version": 99, "base_version": cur["version"] + 1},
        headers=e,
    )
    assert r.status_code == 404
