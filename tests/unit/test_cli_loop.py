"""Which event loop a command runs on (``$CITYCTL_LOOP``, ``controller/cli.py``)."""

from __future__ import annotations

import asyncio
import sys
from unittest import mock

import pytest
import uvloop

from controller.cli import _loop_factory, _run_async


def test_long_running_commands_take_uvloop_by_default() -> None:
    assert _loop_factory(True, {}) == ("uvloop", uvloop.new_event_loop)
    assert _loop_factory(False, {}) == ("asyncio", None)


@pytest.mark.parametrize(
    ("value", "long_running", "expected"),
    [
        ("auto", True, "uvloop"),
        ("auto", False, "asyncio"),
        (" UVLOOP ", False, "uvloop"),
        ("uvloop", True, "uvloop"),
        ("asyncio", True, "asyncio"),
        ("asyncio", False, "asyncio"),
    ],
)
def test_the_environment_chooses(value: str, long_running: bool, expected: str) -> None:
    assert _loop_factory(long_running, {"CITYCTL_LOOP": value})[0] == expected


def test_a_bad_choice_names_the_variable_and_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ValueError, match=r"CITYCTL_LOOP: must be one of auto, uvloop, asyncio"):
        _loop_factory(True, {"CITYCTL_LOOP": "trio"})
    # The command refuses to start: exit code 2 and the reason, nothing run.
    ran = []

    async def main() -> int:
        ran.append(1)
        return 0

    with mock.patch.dict("os.environ", {"CITYCTL_LOOP": "trio"}):
        assert _run_async(main, long_running=True) == 2
    assert ran == [] and "CITYCTL_LOOP" in capsys.readouterr().err


def test_without_uvloop_auto_falls_back_and_a_demand_for_it_is_refused() -> None:
    with mock.patch.dict(sys.modules, {"uvloop": None}):  # import uvloop raises ImportError
        assert _loop_factory(True, {}) == ("asyncio", None)
        with pytest.raises(ValueError, match="uvloop is not installed"):
            _loop_factory(True, {"CITYCTL_LOOP": "uvloop"})


def test_the_command_runs_on_the_chosen_loop() -> None:
    seen: list[str] = []

    async def main() -> int:
        seen.append(type(asyncio.get_running_loop()).__module__)
        return 7

    with mock.patch.dict("os.environ", {"CITYCTL_LOOP": "auto"}):
        assert _run_async(main, long_running=True) == 7
        assert _run_async(main) == 7
    assert seen[0].startswith("uvloop") and seen[1].startswith("asyncio")
