"""The host-speed reading the scale bench records before and after a run."""

from __future__ import annotations

from controller.bench.host import _work, host_speed


def test_the_fixed_work_is_the_same_every_time() -> None:
    # A checksum over the decoded states and the detector loop: the work does not drift.
    assert _work(50, 40) == _work(50, 40)
    assert _work(50, 40) != _work(50, 41)


def test_the_reading_is_the_median_of_its_repeats() -> None:
    r = host_speed(3, states=100, steps=50)
    assert r["repeats"] == 3
    assert 0 < r["min_ms"] <= r["cpu_ms"] <= r["max_ms"]
