"""The drop counter: every bad input counted, memory and log lines bounded whatever is sprayed."""

from __future__ import annotations

import logging

import pytest

from controller.diagnostics import DropCounter


def test_every_drop_is_counted_and_the_first_per_source_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    drops = DropCounter(logging.getLogger("t.drops"), "payload")
    with caplog.at_level(logging.WARNING, "t.drops"):
        for _ in range(3):
            drops.drop("p/v1/lights/node/A/state", "level: Input should be less than 100")
        drops.drop("p/v1/lights/node/B/state", "not JSON (Expecting value: line 1)")
    assert drops.total == 4
    assert drops.by_reason == {"level": 3, "not JSON (Expecting value": 1}
    assert len(caplog.records) == 2  # once per source
    assert drops.summary().startswith("4 bad payloads dropped (p/v1/lights/node/A/state×3")


def test_a_client_spraying_long_topics_and_reasons_cannot_grow_it_without_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    drops = DropCounter(logging.getLogger("t.spray"), "payload", max_sources=100, max_reasons=50)
    with caplog.at_level(logging.WARNING, "t.spray"):
        for i in range(2_000):
            node = f"{i:05d}" + "x" * 60_000  # MQTT allows topics of 64 kB
            drops.drop(f"p/v1/lights/node/{node}/state", f"unknown node {node!r}")
    assert drops.total == 2_000
    assert len(drops.by_source) == 101 and drops.by_source["(other sources)"] == 1_900
    assert len(drops.by_reason) == 51 and drops.by_reason["(other reasons)"] == 1_950
    assert max(len(k) for k in [*drops.by_source, *drops.by_reason]) <= 200
    assert all(len(r.getMessage()) < 600 for r in caplog.records)
