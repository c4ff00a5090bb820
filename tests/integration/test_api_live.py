"""The API served by a running controller over a real socket: an override made over HTTP
reaches the simulated nodes over a real Mosquitto, and clearing it brings them back."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import yaml

from controller.clock import SystemClock
from controller.config import parse_config
from controller.runtime import Controller
from simulator.lights import LightSimulator, NodeSpec
from tests.helpers import Mosquitto, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "engineer-token-for-the-live-test"


async def test_override_over_http_moves_the_nodes_and_clearing_resumes(
    mosquitto: Mosquitto, mqtt_prefix: str
) -> None:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["mqtt"].update(prefix=mqtt_prefix, url=mosquitto.url)
    data["lighting"]["overrides"] = []
    data.pop("signals", None)
    for p in data["lighting"]["programs"]:
        for s in p["steps"]:
            s["ramp_s"] = 0
    cfg, _ = parse_config(yaml.safe_dump(data, allow_unicode=True))
    specs = [NodeSpec(n, g.id, w, m) for g, n, w, m in cfg.nodes() if g.id == "ql1a"]
    sim = LightSimulator(mosquitto.url, specs, prefix=mqtt_prefix, report_interval_s=5.0)
    await sim.start(wait_s=30)
    ctl = Controller(
        cfg,
        clock=SystemClock(),
        signals=False,
        api_tokens={"eng": ("engineer", TOKEN)},
        api_port=0,
    )
    await ctl.start()
    assert ctl.api is not None
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def levels() -> set[float]:
        # What every node was last commanded (and heads for: ramps are off here).
        return {sim.node(n).target for n in sim.node_ids}

    try:
        async with httpx.AsyncClient(base_url=ctl.api.url, headers=headers, timeout=10) as c:
            assert (await c.get("/api/v1/health")).status_code == 200
            wanted = (await c.get("/api/v1/groups/ql1a")).json()["level"]
            await wait_for(lambda: levels() == {wanted}, 15, what="nodes at the schedule's level")
            level = 37.0 if wanted != 37.0 else 42.0
            until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
            t0 = dt.datetime.now()
            r = await c.post(
                "/api/v1/overrides",
                json={"groups": ["ql1a"], "level": level, "until": until, "reason": "live test"},
            )
            assert r.status_code == 201, r.text
            await wait_for(lambda: levels() == {level}, 10, what="nodes at the override's level")
            took = (dt.datetime.now() - t0).total_seconds()
            g = (await c.get("/api/v1/groups/ql1a")).json()
            assert (g["level"], g["source"]) == (level, "override")
            assert (await c.delete(f"/api/v1/overrides/{r.json()['id']}")).status_code == 200
            await wait_for(lambda: levels() == {wanted}, 10, what="nodes back on the schedule")
            print(
                f"\noverride over HTTP: {len(specs)} nodes at {level:g} % {took:.2f} s later; cleared → {wanted:g} %"
            )
    finally:
        await ctl.stop()
        await sim.stop()
