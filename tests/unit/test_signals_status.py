"""The intersections' status on MQTT: every intersection once a second, as one QoS 0 batch
handed to the link (not a publish awaited per intersection)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import yaml

from controller.bench.scale import build_config
from controller.config import load_config
from controller.signals.service import SignalsService
from devices.lights import Topics
from devices.mqtt import LinkDown

ROOT = Path(__file__).resolve().parents[2]


class BatchLink:
    """Records :meth:`devices.mqtt.MqttLink.send_many` calls and the loop turn of each."""

    def __init__(self) -> None:
        self.connected = True
        self.batches: list[tuple[int, list[tuple[str, bytes]], int, bool]] = []
        self.turn = 0
        self.down = False

    def subscribe(self, pattern: str, handler: Any, qos: int = 1) -> None:
        pass

    def send_many(
        self, messages: Any, *, qos: int = 0, retain: bool = False, timeout: float = 5.0
    ) -> asyncio.Future[int]:
        if self.down:
            raise LinkDown("not connected")
        batch = list(messages)
        self.batches.append((self.turn, batch, qos, retain))
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.set_result(len(batch))
        return fut


def _service(tmp_path: Path, n: int, link: BatchLink) -> SignalsService:
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    doc = build_config(
        base,
        lights=100,
        intersections=n,
        group_size=100,
        broker_url="mqtt://127.0.0.1:1883",
        prefix="t",
        state_dir=tmp_path,
        api_port=8080,
        cabinet_ports=list(range(20000, 20000 + n)),
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    return SignalsService(
        cfg.signals,
        cfg.intersections(),
        lambda: 100.0,
        mqtt=link,  # type: ignore[arg-type]  # the part of MqttLink the status uses
        topics=Topics("t"),
        local_time=lambda: dt.datetime(2026, 12, 3, 12, 0),
    )


async def _publish(svc: SignalsService, link: BatchLink) -> None:
    """Run one status publication, counting the loop's turns meanwhile."""

    async def count() -> None:
        while True:
            link.turn += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count())
    try:
        await svc._publish_status()
    finally:
        counter.cancel()


async def test_every_intersection_status_goes_out_in_one_batch(tmp_path: Path) -> None:
    link = BatchLink()
    svc = _service(tmp_path, 25, link)
    await _publish(svc, link)
    assert [len(b) for _, b, _, _ in link.batches] == [25]
    assert all(qos == 0 and retain for _, _, qos, retain in link.batches)
    topics = [topic for _, b, _, _ in link.batches for topic, _ in b]
    assert topics == [f"t/v1/signals/{xid}/status" for xid in svc.runners]
    first = json.loads(link.batches[0][1][0][1])
    assert first["intersection"] == next(iter(svc.runners)) and "sync" in first
    # Once a second at most.
    await _publish(svc, link)
    assert len(link.batches) == 1


async def test_a_link_that_just_went_down_costs_nothing_but_the_status(tmp_path: Path) -> None:
    link = BatchLink()
    svc = _service(tmp_path, 25, link)
    link.down = True  # send_many raises LinkDown (the link went just now): nothing escapes
    await _publish(svc, link)
    assert link.batches == []
