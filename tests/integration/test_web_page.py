"""The control-room page in a real browser (Debian's chromium driven by Playwright) against a
running controller, a real Mosquitto and simulated light nodes: log in, open a group, change a
program step, watch the preview change, review, apply, see the nodes follow, acknowledge an
incident, roll back and see them return. The page must log no console errors.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``./run test``
installs Debian's package); without it the test is skipped and says why.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.clock import SystemClock
from controller.config import parse_config
from controller.runtime import Controller
from simulator.lights import LightSimulator, NodeSpec
from tests.helpers import Mosquitto, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "engineer-token-for-the-page-test"
CHROMIUM = "/usr/bin/chromium"
GROUP = "ql1a"
PROGRAM = "web-test"
FAULTY = "QL-007"  # gets a driver failure: an incident for the page to show
# From noon to 11:59 the next morning: whatever the wall clock, the first step is the one
# running now (except in the minute around noon, which the test waits out).
STEPS = [
    {"at": "12:00", "level": 40.0, "ramp_s": 0.0},
    {"at": "11:59", "level": 0.0, "ramp_s": 0.0},
]


def _config(url: str, prefix: str) -> Any:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["mqtt"].update(prefix=prefix, url=url)
    data["lighting"]["overrides"] = []
    data.pop("signals", None)
    for p in data["lighting"]["programs"]:
        for s in p["steps"]:
            s["ramp_s"] = 0
    data["lighting"]["programs"].append(
        {"name": PROGRAM, "description": "the page test's program", "steps": STEPS}
    )
    group = next(g for g in data["lighting"]["groups"] if g["id"] == GROUP)
    group.pop("calendar", None)
    group["program"] = PROGRAM
    cfg, _ = parse_config(yaml.safe_dump(data, allow_unicode=True))
    return cfg


def _mount(ctl: Controller) -> None:
    """The page (and the previews) on the controller's app, unless create_app mounts them."""
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    from controller.api.auth import Principal
    from controller.api.static_files import mount_page

    assert ctl.api is not None and ctl.api_context is not None
    app, ctx = ctl.api.app, ctl.api_context
    if "/" not in {getattr(r, "path", None) for r in app.routes}:
        mount_page(app)
    if "/api/v1/previews/night" not in _api_paths(app):
        try:
            from controller.api.previews import preview_router
        except ImportError:  # the page then draws its approximate client-side preview
            return
        bearer = HTTPBearer(auto_error=False)

        def reader(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:  # noqa: B008
            who = ctx.tokens.authenticate(creds.credentials) if creds else None
            if who is None:
                raise HTTPException(401, "a token is needed", {"WWW-Authenticate": "Bearer"})
            return who

        app.include_router(preview_router(ctx, reader))


def _api_paths(app: Any) -> set[str]:
    """The API's paths as its schema lists them (included routers are not flat in app.routes)."""
    schema = app.openapi()
    app.openapi_schema = None  # routes may still be added: build the schema again when asked
    return set(schema["paths"])


async def _wait_out_noon(tz: dt.tzinfo) -> None:
    now = dt.datetime.now(tz)
    minute = now.hour * 60 + now.minute
    if 11 * 60 + 57 <= minute <= 12 * 60:
        await asyncio.sleep((12 * 60 + 1 - minute) * 60 - now.second)


@pytest.mark.timeout(300)
async def test_page_edits_a_program_the_nodes_follow_and_rollback_returns_them(
    mosquitto: Mosquitto, mqtt_prefix: str, tmp_path: Path
) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; ./run test installs it)")
    from playwright.async_api import ConsoleMessage, Error, async_playwright, expect

    cfg = _config(mosquitto.url, mqtt_prefix)
    await _wait_out_noon(cfg.location.tz)
    specs = [NodeSpec(n, g.id, w, m) for g, n, w, m in cfg.nodes() if g.id == GROUP]
    sim = LightSimulator(mosquitto.url, specs, prefix=mqtt_prefix, report_interval_s=5.0)
    await sim.start(wait_s=30)
    ctl = Controller(
        cfg,
        clock=SystemClock(),
        signals=False,
        api_tokens={"eng": ("engineer", TOKEN)},
        api_port=0,
    )
    assert ctl.api is not None
    _mount(ctl)
    server_preview = "/api/v1/previews/night" in _api_paths(ctl.api.app)
    await ctl.start()
    healthy = [n for n in sim.node_ids if n != FAULTY]

    def targets() -> set[float]:
        return {sim.node(n).target for n in healthy}

    problems: list[str] = []
    shot = tmp_path / "control-room.png"
    try:
        await wait_for(lambda: targets() == {40.0}, 20, what="nodes at the program's 40 %")
        sim.inject(FAULTY, "driver_failure")
        sim.publish_state_now(FAULTY)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=ctl.api.url, headers=headers, timeout=10) as c:
            page_r = await c.get("/")
            assert (
                page_r.status_code == 200
                and "default-src 'self'" in page_r.headers["content-security-policy"]
            )
            assert (await c.get("/static/app.js")).headers["content-security-policy"]

            # A problem seen in the street: an incident for the page to acknowledge.
            r = await c.post(
                "/api/v1/reports",
                json={"device": FAULTY, "kind": "dark_lamp", "note": "dark lamp seen by a patrol"},
            )
            assert r.status_code == 201, r.text
            inc = r.json()["incident"]

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})

                expected: list[str] = []  # the browser's own line for a refusal we provoke

                def on_console(msg: ConsoleMessage) -> None:
                    if msg.type != "error":
                        return
                    if any(e in msg.text for e in expected):
                        return
                    problems.append(f"console: {msg.text} @ {msg.location}")

                def on_error(err: Error) -> None:
                    problems.append(f"page error: {err}")

                page.on("console", on_console)
                page.on("pageerror", on_error)
                tid = page.get_by_test_id
                try:
                    await page.goto(ctl.api.url + "/")
                    await tid("token-input").fill(TOKEN)
                    await tid("login-button").click()
                    await expect(tid(f"group-{GROUP}-level")).to_have_text("40 %", timeout=10_000)
                    await expect(tid(f"map-node-{healthy[0]}")).to_have_attribute(
                        "data-state", "on"
                    )

                    # Open the group: its program's steps, and the preview of the saved program.
                    await tid(f"open-group-{GROUP}").click()
                    await expect(tid("editor-program")).to_have_value(PROGRAM)
                    level0 = tid("step-level-0")
                    await expect(level0).to_have_value("40")
                    line = tid("preview-line")
                    await expect(line).to_have_attribute("d", _nonempty(), timeout=10_000)
                    before = await line.get_attribute("d")
                    energy_before = await tid("preview-energy").text_content()

                    # A wrong time: the refusal (422 with its loc) shows next to the field.
                    if server_preview:
                        expected.append("status of 422")
                        await tid("step-at-0").fill("25:00")
                        await expect(tid("error-step-0-at")).to_contain_text("out of range")
                        await tid("step-at-0").fill("12:00")
                        await expect(tid("error-step-0-at")).to_have_text("")
                        await expect(tid("preview-note")).not_to_contain_text("no preview")
                        expected.clear()

                    # Edit the step running now: the preview follows as the engineer types.
                    await level0.fill("70")
                    await expect(line).not_to_have_attribute("d", before or "", timeout=10_000)
                    after = await line.get_attribute("d")
                    if server_preview:
                        await expect(tid("preview-energy")).not_to_have_text(energy_before or "")
                        await expect(tid("preview-baseline")).to_have_attribute("d", before or "")

                    # Review (the diff against the current version), then apply.
                    await tid("review").click()
                    await expect(tid("diff-change")).to_have_text(
                        f"programs[{PROGRAM}].steps[0].level: 40 → 70"
                    )
                    await tid("comment").fill("brighter for the page test")
                    await tid("apply").click()
                    await expect(tid("editor-status")).to_contain_text("Applied as version 2")
                    await wait_for(lambda: targets() == {70.0}, 10, what="nodes at the new 70 %")
                    await expect(tid(f"group-{GROUP}-level")).to_have_text("70 %", timeout=10_000)
                    await expect(tid("version-2")).to_contain_text("brighter for the page test")

                    # Acknowledge the faulty node's incident.
                    await expect(tid(f"incident-{inc['id']}")).to_contain_text(FAULTY)
                    await tid(f"incident-note-{inc['id']}").fill("crew on the way")
                    await tid(f"ack-{inc['id']}").click()
                    await expect(tid(f"ack-{inc['id']}")).to_be_hidden(timeout=10_000)
                    acked = (await c.get(f"/api/v1/incidents/{inc['id']}")).json()
                    assert acked["acked_by"] == "eng", acked

                    # Roll back to version 1 (two clicks): the nodes return to 40 %.
                    await tid("rollback-1").click()
                    await tid("rollback-1").click()
                    await expect(tid("editor-status")).to_contain_text("Rolled back: version 3")
                    await wait_for(lambda: targets() == {40.0}, 10, what="nodes back at 40 %")
                    await expect(level0).to_have_value("40")
                    await expect(line).to_have_attribute("d", before or "")
                    await expect(tid(f"group-{GROUP}-level")).to_have_text("40 %", timeout=10_000)
                    await page.screenshot(path=str(shot), full_page=True)
                finally:
                    await browser.close()
        cur = (await _get(ctl.api.url, "/api/v1/schedules")).json()
        assert cur["version"] == 3 and cur["source"] == "rollback"
        print(
            f"\npage: preview {'from the server' if server_preview else 'client-side'}; "
            f"path changed: {before != after}; screenshot: {shot}"
        )
    finally:
        await ctl.stop()
        await sim.stop()
    assert not problems, "\n".join(problems)


def _nonempty() -> Any:
    import re

    return re.compile(r"^M.+")


async def _get(base: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ) as c:
        return await c.get(path)
