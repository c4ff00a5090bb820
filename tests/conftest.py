"""Fixtures shared by the whole suite.

- ``mosquitto``: a real Mosquitto broker on a free loopback port, one per test
  (``.host``, ``.port``, ``.url``, ``.stop()``, ``.restart()`` on the same port, ``.log_tail()``).
- ``victoria``: a real VictoriaMetrics (InfluxDB v2 write API) on a free loopback port
  (``.url``, ``.stop()``/``.start()`` on the same port and data, ``.series()``, ``.samples()``).
- ``mqtt_prefix``: a unique topic prefix per test (``t-<uuid8>``), so tests never see each
  other's retained messages even on a shared broker.

Helpers (``Mosquitto``, ``wait_for``) live in ``tests/helpers.py``::

    from tests.helpers import wait_for

Tests under ``tests/integration/`` are marked ``integration`` automatically.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Speed is the benchmarks' business, not the tests': hypothesis' default 200 ms deadline per
# example failed a correct property test as "flaky" when one example took 571 ms on the loaded
# 2-core machine (two test workers, a collector pass) and 0.07 ms when repeated. Tests that set
# their own settings keep them; the deadline is off everywhere else.
settings.register_profile("cityctl", deadline=None)
settings.load_profile("cityctl")

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    # ``from tests.helpers import ...`` must work whether pytest runs as ``pytest`` or
    # ``python -m pytest`` (only the latter puts the working directory on sys.path).
    sys.path.insert(0, str(_ROOT))

from controller.bench.victoria import VictoriaMetrics  # noqa: E402
from tests.helpers import Mosquitto, wait_for  # noqa: E402

__all__ = ["Mosquitto", "wait_for"]

_INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Remember each phase's outcome so fixtures can attach the broker log to a failure.
    report = yield
    setattr(item, f"_rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test keeps controller state (the telemetry outbox…) in its own directory."""
    state = tmp_path / "state"
    monkeypatch.setenv("CITYCTL_STATE_DIR", str(state))
    return state


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics server (InfluxDB v2 write API) on a free port; its log on failure."""
    vm = VictoriaMetrics(tmp_path / "victoria")
    vm.start()
    try:
        yield vm
    except BaseException:
        print(f"--- victoria-metrics log ---\n{vm.log_tail()}")
        raise
    finally:
        vm.close()


@pytest.fixture
def mosquitto(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mosquitto]:
    """A started Mosquitto broker for this test; stopped (and its log shown on failure) after."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        rep = getattr(request.node, "_rep_call", None)
        if rep is not None and rep.failed:
            rep.sections.append(("mosquitto log (tail)", broker.log_tail(60)))


@pytest.fixture
def mqtt_prefix() -> str:
    """A topic prefix unique to this test, e.g. ``t-1a2b3c4d``."""
    return f"t-{uuid.uuid4().hex[:8]}"
