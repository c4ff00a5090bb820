"""Every write of the API without a token, with an unknown one, and with a viewer's: refused.

The operations come from the controller's own ``/openapi.json`` — every POST, PUT, PATCH and
DELETE — so a route added later is tried too. The controller runs for real (its API served by
uvicorn on a real socket, its link on a real Mosquitto) with state worth destroying: an
override, an open incident, an unused program and calendar. Each write is sent with a body
that would be accepted from an engineer (where the test knows one), so a missing check would
show as a change, not as a 422. Previews are reads sent as POST (the draft is the body) and are
not writes; they still need a token.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from controller.clock import ManualClock
from controller.runtime import Controller
from tests.faults import report
from tests.helpers import Mosquitto
from tests.unit.test_api import ADMIN, ENGINEER, T0, VIEWER, config

pytestmark = pytest.mark.faults

WRITES = ("post", "put", "patch", "delete")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def is_preview(path: str) -> bool:
    # The API's own rule (controller/api/app.py, the audit middleware): previews are reads.
    return "/previews/" in path


async def test_every_write_without_a_token_or_with_a_viewers_is_refused_and_changes_nothing(
    mosquitto: Mosquitto,
) -> None:
    cfg = config()
    cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"url": mosquitto.url})})
    ctl = Controller(
        cfg,
        clock=ManualClock(T0),
        signals=False,
        api_tokens={
            "ada": ("admin", ADMIN),
            "eng": ("engineer", ENGINEER),
            "vic": ("viewer", VIEWER),
        },
        api_port=0,
    )
    await ctl.start()
    assert ctl.api is not None
    try:
        async with httpx.AsyncClient(base_url=ctl.api.url, timeout=10) as c:
            await _run(ctl, c)
    finally:
        await ctl.stop()
        ctl.close()


async def _run(ctl: Controller, c: httpx.AsyncClient) -> None:
    eng = auth(ENGINEER)

    # -- state worth destroying ---------------------------------------------------------------
    r = await c.post(
        "/api/v1/overrides",
        json={"groups": ["ql1a"], "level": 30, "reason": "roadworks"},
        headers=eng,
    )
    assert r.status_code == 201, r.text
    override_id = r.json()["id"]
    r = await c.post("/api/v1/reports", json={"device": "QL-001", "note": "dark"}, headers=eng)
    assert r.status_code == 201, r.text
    incident_id = r.json()["incident"]["id"]

    async def version() -> int:
        v: int = (await c.get("/api/v1/schedules", headers=eng)).json()["version"]
        return v

    festival = (await c.get("/api/v1/schedules/programs/festival", headers=eng)).json()
    spare = {**festival, "name": "spare"}
    r = await c.put(
        "/api/v1/schedules/programs/spare",
        json={"base_version": await version(), "item": spare},
        headers=eng,
    )
    assert r.status_code == 200, r.text
    r = await c.put(
        "/api/v1/schedules/calendars/spare-cal",
        json={"base_version": await version(), "item": {"name": "spare-cal", "default": "spare"}},
        headers=eng,
    )
    assert r.status_code == 200, r.text
    doc = (await c.get("/api/v1/schedules", headers=eng)).json()["document"]

    # Bodies an engineer would get accepted, by (method, path); base versions read fresh.
    async def body(method: str, path: str) -> Any:
        v = await version()
        known: dict[tuple[str, str], Callable[[], Any]] = {
            ("post", "/api/v1/overrides"): lambda: {
                "groups": ["ql1a"],
                "level": 5,
                "reason": "not allowed",
            },
            ("post", "/api/v1/reports"): lambda: {"device": "QL-002", "note": "fake report"},
            ("post", "/api/v1/incidents/{incident_id}/acknowledge"): lambda: {"note": "mine"},
            ("post", "/api/v1/incidents/{incident_id}/resolve"): lambda: {
                "note": "gone",
                "force": True,
            },
            ("put", "/api/v1/schedules"): lambda: {
                "base_version": v,
                "document": {**doc, "programs": doc["programs"][::-1]},
                "comment": "replaced",
            },
            ("put", "/api/v1/schedules/programs/{name}"): lambda: {
                "base_version": v,
                "item": {**spare, "description": "changed"},
            },
            ("put", "/api/v1/schedules/calendars/{name}"): lambda: {
                "base_version": v,
                "item": {"name": "spare-cal", "default": "festival"},
            },
            ("put", "/api/v1/schedules/assignments/{group_id}"): lambda: {
                "base_version": v,
                "program": "festival",
            },
            ("post", "/api/v1/schedules/rollback"): lambda: {"to_version": 1, "base_version": v},
        }
        make = known.get((method, path))
        return make() if make is not None else {}

    params_for = {
        "override_id": override_id,
        "incident_id": incident_id,
        "group_id": "ql1a",
    }

    async def request(method: str, path: str, op: dict[str, Any], headers: dict[str, str]) -> int:
        def value(name: str) -> str:
            if name == "name":
                return "spare-cal" if "/calendars/" in path else "spare"
            return str(params_for.get(name, "x"))

        url = re.sub(r"\{(\w+)\}", lambda m: value(m.group(1)), path)
        query: dict[str, Any] = {}
        for p in op.get("parameters", []):
            if p["in"] == "query" and p.get("required"):
                query[p["name"]] = await version() if p["name"] == "base_version" else 1
        has_body = "requestBody" in op
        r = await c.request(
            method.upper(),
            url,
            params=query,
            json=await body(method, path) if has_body else None,
            headers=headers,
        )
        return r.status_code

    # -- the operations, from the schema --------------------------------------------------------
    spec = (await c.get("/openapi.json")).json()
    ops = [
        (method, path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in WRITES
    ]
    writes = [(m, p, o) for m, p, o in ops if not is_preview(p)]
    previews = [(m, p, o) for m, p, o in ops if is_preview(p)]
    assert len(writes) >= 12, [f"{m} {p}" for m, p, _ in writes]  # the API has at least these

    # Everything readable without path parameters, read twice: what does not change by itself
    # (uptime and telemetry do) must not change through a refused write either.
    reads = [
        p
        for p, item in spec["paths"].items()
        if "get" in item and "{" not in p and p.startswith("/api/") and p != "/api/v1/audit"
    ]

    async def state() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in reads:
            r = await c.get(p, headers=auth(ADMIN))
            out[p] = (r.status_code, r.text)
        out["override ids"] = sorted(r.override.id for r in ctl.overrides.active())
        out["schedule version"] = ctl.schedules.current().version
        out["incidents"] = [i.as_json() for i in ctl.incidents.incidents()]
        out["incident history"] = [e.as_json() for e in ctl.incidents.history(incident_id)]
        return out

    first, second = await state(), await state()
    stable = {k for k in first if first[k] == second[k]}
    before = {k: v for k, v in second.items() if k in stable}
    audit_before = len((await c.get("/api/v1/audit?limit=1000", headers=auth(ADMIN))).json())

    # -- the attack -------------------------------------------------------------------------------
    answers: dict[str, Counter[int]] = {"no token": Counter(), "unknown token": Counter()}
    answers["viewer"] = Counter()
    wrong: list[str] = []
    for who, headers, expect in (
        ("no token", {}, 401),
        ("unknown token", auth("not-a-token-of-this-controller"), 401),
        ("viewer", auth(VIEWER), 403),
    ):
        for method, path, op in writes:
            status = await request(method, path, op, headers)
            answers[who][status] += 1
            if status != expect:
                wrong.append(f"{who}: {method.upper()} {path} → {status}")
    for method, path, op in previews:  # reads: a token is still needed
        status = await request(method, path, op, {})
        if status != 401:
            wrong.append(f"no token: {method.upper()} {path} (preview) → {status}")

    after = {k: v for k, v in (await state()).items() if k in stable}
    changed = sorted(k for k in before if before[k] != after[k])
    audit = (await c.get("/api/v1/audit?limit=1000", headers=auth(ADMIN))).json()
    new = audit[: len(audit) - audit_before]
    audited = Counter((e["who"], e["status"]) for e in new)
    n = len(writes)
    report(
        "API writes without a token",
        recovery_s=None,
        lost=None,
        detail=f"{n} write operations (from /openapi.json): {answers['no token'][401]} refused"
        f" with 401 without a token, {answers['unknown token'][401]} with 401 for an unknown"
        f" token, {answers['viewer'][403]} refused with 403 for a viewer; {len(previews)}"
        f" previews (reads) 401 without a token; state unchanged"
        f" ({len(before)} readings compared{', CHANGED: ' + ', '.join(changed) if changed else ''});"
        f" {sum(audited.values())} refusals audited",
    )
    assert not wrong, wrong
    assert not changed, changed
    assert stable >= {"override ids", "schedule version", "incidents", "incident history"}
    assert audited == {("anonymous", 401): 2 * n, ("vic", 403): n}, audited
    # The requests were well-formed: the same one from an engineer is taken (so a missing
    # check would have shown as a change above, not as a 422).
    m, p, o = next((m, p, o) for m, p, o in writes if p == "/api/v1/overrides" and m == "post")
    assert await request(m, p, o, eng) == 201
    assert len(ctl.overrides.active()) == 2
