"""Previews of draft schedules over the API: a night and a year, as data and as SVG."""

from __future__ import annotations

import copy
import datetime as dt
import time
import xml.etree.ElementTree as ET
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.testclient import TestClient

from controller.api.app import ApiContext
from controller.api.auth import Principal
from controller.api.previews import preview_router
from controller.runtime import Controller
from schedules.energy import LampPowerModel
from tests.unit.test_api import ENGINEER, T0, VIEWER, auth, controller

NIGHT = "2026-11-25"  # a Wednesday: ql1a's calendar runs "arterial"
_bearer = HTTPBearer(auto_error=False)


def app_for(ctx: ApiContext) -> FastAPI:
    """An app with only the preview routes, behind a reader like create_app's."""

    def reader(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        who = ctx.tokens.authenticate(creds.credentials) if creds else None
        if who is None:
            raise HTTPException(401, "a token is needed", {"WWW-Authenticate": "Bearer"})
        return who

    app = FastAPI()
    app.include_router(preview_router(ctx, reader))
    return app


@pytest.fixture
def ctl() -> Controller:
    return controller()


@pytest.fixture
def c(ctl: Controller) -> TestClient:
    assert ctl.api_context is not None
    return TestClient(app_for(ctl.api_context))


def arterial(ctl: Controller) -> dict[str, Any]:
    assert ctl.schedules is not None
    doc = ctl.schedules.current().document.to_data()
    return copy.deepcopy(next(p for p in doc["programs"] if p["name"] == "arterial"))


def night(c: TestClient, **body: Any) -> dict[str, Any]:
    r = c.post("/api/v1/previews/night", json={"group": "ql1a", **body}, headers=auth(VIEWER))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_a_draft_program_changes_the_preview_where_it_differs_and_applies_nothing(
    ctl: Controller, c: TestClient
) -> None:
    assert ctl.schedules is not None
    version = ctl.schedules.current().version
    at = dt.datetime(2026, 11, 25, 21, 0, tzinfo=T0.tzinfo)
    wanted = ctl.lighting.core.wanted(ctl.cfg.group("ql1a"), at, 0.0).level
    assert wanted == 100.0

    now = night(c)  # no draft: the current schedule, tonight by default
    assert (now["night"], now["program_used"], now["draft"]) == (NIGHT, "arterial", False)
    draft = arterial(ctl)
    assert draft["steps"][0]["level"] == 100
    draft["steps"][0]["level"] = 50  # sunset+10min → 23:00 at half level
    new = night(c, night=NIGHT, program=draft)
    assert new["draft"] is True and new["program_used"] == "arterial"

    # Same transitions but the first; samples differ only between sunset+10min and 23:00.
    assert [t["at"] for t in new["transitions"]] == [t["at"] for t in now["transitions"]]
    assert (new["transitions"][0]["level"], now["transitions"][0]["level"]) == (50.0, 100.0)
    assert new["transitions"][1:] == now["transitions"][1:]
    assert len(new["samples"]) == len(now["samples"]) == 24 * 12 + 1  # every 5 min, noon→noon
    start = dt.datetime.fromisoformat(now["transitions"][0]["at"])
    eleven = dt.datetime(2026, 11, 25, 23, 0, tzinfo=T0.tzinfo)
    for a, b in zip(now["samples"], new["samples"], strict=True):
        t = dt.datetime.fromisoformat(a["t"])
        assert a["t"] == b["t"]
        if start + dt.timedelta(minutes=1) <= t <= eleven:
            assert (a["level"], b["level"]) == (100.0, 50.0)
        elif t < start or t >= eleven + dt.timedelta(minutes=5):
            assert a["level"] == b["level"]

    # Energy: that part now draws what 50 % draws instead of 100 % (the driver is not linear,
    # so "half the level" is measured with the lamp model, not as half the energy).
    lamp = LampPowerModel(rated_w=250)
    lamps = 48
    part_h = (eleven - start).total_seconds() / 3600
    expected = lamps * (lamp.power_w(100) - lamp.power_w(50)) * part_h
    saved = now["energy_wh"] - new["energy_wh"]
    assert saved == pytest.approx(expected, rel=0.02)
    assert new["saving_pct"] > now["saving_pct"] > 0
    assert new["full_on_energy_wh"] == now["full_on_energy_wh"]
    assert new["burning_hours"] == pytest.approx(now["burning_hours"])

    # Nothing was applied: same version, same running level, same config.
    assert ctl.schedules.current().version == version
    assert ctl.lighting.core.wanted(ctl.cfg.group("ql1a"), at, 0.0).level == wanted
    assert ctl.cfg.program_map()["arterial"].steps[0].level == 100.0
    assert night(c, night=NIGHT) == now


def test_a_whole_draft_document_is_previewed(ctl: Controller, c: TestClient) -> None:
    assert ctl.schedules is not None
    doc = ctl.schedules.current().document.to_data()
    doc["assignments"]["ql1a"] = {"program": "park"}
    out = night(c, night=NIGHT, document=doc)
    assert out["program_used"] == "park"
    assert [t["level"] for t in out["transitions"]] == [70.0, 30.0, 0.0]
    # A program on top of a document: the group runs the program.
    prog = arterial(ctl) | {"name": "draft-late"}
    out = night(c, night=NIGHT, document=doc, program=prog)
    assert out["program_used"] == "draft-late"
    assert ctl.cfg.group("ql1a").calendar == "city"


def test_svg_is_well_formed(c: TestClient) -> None:
    h = auth(VIEWER)
    for path, params, body in [
        ("/api/v1/previews/night", {"format": "svg"}, {"group": "ql1a", "night": NIGHT}),
        ("/api/v1/previews/night.svg", {}, {"group": "nam-cao-park"}),
        ("/api/v1/previews/year", {"format": "svg"}, {"group": "ql1a", "year": 2026}),
        ("/api/v1/previews/year.svg", {}, {"group": "ql1a"}),
    ]:
        r = c.post(path, params=params, json=body, headers=h)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("image/svg+xml")
        root = ET.fromstring(r.content)
        assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag


def test_year_preview_as_data_is_fast(ctl: Controller, c: TestClient) -> None:
    draft = arterial(ctl)
    for step in draft["steps"][1:-1]:
        step["level"] = 40
    t = time.perf_counter()
    r = c.post(
        "/api/v1/previews/year",
        json={"group": "ql1a", "year": 2026, "program": draft},
        headers=auth(VIEWER),
    )
    elapsed = time.perf_counter() - t
    assert r.status_code == 200, r.text
    assert elapsed < 2.0, elapsed
    new = r.json()
    now = c.post("/api/v1/previews/year", json={"group": "ql1a"}, headers=auth(VIEWER)).json()
    assert now["year"] == new["year"] == 2026  # this year by default
    assert len(new["nights"]) == 365 and [m["month"] for m in new["months"]] == list(range(1, 13))
    assert new["programs_used"] == ["arterial"]
    assert {"festival", "arterial", "arterial-weekend"} <= set(now["programs_used"])
    assert new["full_on_energy_kwh"] == now["full_on_energy_kwh"] > now["energy_kwh"]
    assert new["energy_kwh"] < now["energy_kwh"] and new["saving_pct"] > now["saving_pct"]
    assert sum(m["energy_kwh"] for m in new["months"]) == pytest.approx(new["energy_kwh"], 1e-3)
    first = new["nights"][0]
    assert first["night"] == "2026-01-01" and first["on_at"] and first["off_at"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"group": "nope"}, ["body", "group"]),
        ({}, ["body", "group"]),
        ({"group": "ql1a", "colour": "red"}, ["body", "colour"]),
        ({"group": "ql1a", "night": "2026-13-01"}, ["body", "night"]),
        ({"group": "ql1a", "night": "0001-01-01"}, ["body", "night"]),
        ({"group": "ql1a", "sample_s": 1}, ["body", "sample_s"]),
        (
            {"group": "ql1a", "program": {"name": "x", "steps": [{"at": "sunset", "level": 150}]}},
            ["body", "program", "steps", 0, "level"],
        ),
        (
            {"group": "ql1a", "program": {"name": "x", "steps": [{"at": "25:99", "level": 10}]}},
            ["body", "program", "steps", 0, "at"],
        ),
        ({"group": "ql1a", "program": {"steps": []}}, ["body", "program", "name"]),
    ],
)
def test_wrong_input_is_422_naming_the_field(
    c: TestClient, body: dict[str, Any], loc: list[Any]
) -> None:
    r = c.post("/api/v1/previews/night", json=body, headers=auth(VIEWER))
    assert r.status_code == 422, r.text
    assert loc in [d["loc"] for d in r.json()["detail"]], r.json()


def test_a_wrong_document_is_422_inside_the_document(ctl: Controller, c: TestClient) -> None:
    assert ctl.schedules is not None
    doc = ctl.schedules.current().document.to_data()
    doc["assignments"]["ql1a"] = {"program": "nope"}
    r = c.post(
        "/api/v1/previews/year", json={"group": "ql1a", "document": doc}, headers=auth(VIEWER)
    )
    assert r.status_code == 422, r.text
    assert ["body", "document", "assignments", "ql1a", "program"] in [
        d["loc"] for d in r.json()["detail"]
    ]
    r = c.post(
        "/api/v1/previews/night",
        params={"format": "png"},
        json={"group": "ql1a"},
        headers=auth(VIEWER),
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "format"]


def test_previews_need_a_token(c: TestClient) -> None:
    for path in ("/api/v1/previews/night", "/api/v1/previews/year.svg"):
        r = c.post(path, json={"group": "ql1a"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post(path, json={"group": "nope"}).status_code == 401  # before validation
        r = c.post(path, json={"group": "ql1a"}, headers=auth("wrong-token-0000000000"))
        assert r.status_code == 401
        assert c.post(path, json={"group": "ql1a"}, headers=auth(ENGINEER)).status_code == 200
