"""Test helpers shared by the whole suite: a real Mosquitto broker and an async ``wait_for``.

The fixtures built on these live in ``tests/conftest.py``; import the helpers directly::

    from tests.helpers import Mosquitto, wait_for

Everything here is parallel-safe (pytest-xdist): each broker gets its own free loopback port,
its own temporary directory and its own log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

__all__ = [
    "MOSQUITTO_CANDIDATES",
    "BrokerError",
    "Mosquitto",
    "find_mosquitto",
    "free_port",
    "wait_for",
]

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")

T = TypeVar("T")


class BrokerError(RuntimeError):
    """The test broker could not be started (the message carries the tail of its log)."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary; a clear error when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(
        "mosquitto is not installed: the integration tests need a real broker. "
        "Install it with `apt-get install mosquitto` (or run the suite via `./run test`, "
        "which installs it)."
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port that was free a moment ago (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """A throw-away Mosquitto broker on a free loopback port.

    ``start()`` picks the port (retrying on a collision with another process), ``stop()``
    terminates it (SIGTERM, then SIGKILL if it lingers), ``restart()`` brings it back on the
    *same* port so clients can reconnect. The broker's own log goes to ``log_path``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        binary: str | None = None,
        extra_config: str = "",
        start_timeout: float = 10.0,
    ) -> None:
        self.binary = binary or find_mosquitto()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cityctl-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = extra_config
        self.start_timeout = start_timeout
        self.port = 0
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # -- properties -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> Mosquitto:
        """Start on a fresh free port (or the current one after :meth:`stop`)."""
        if self.running:
            return self
        keep_port = self.port != 0
        attempts = 1 if keep_port else 5
        last: BrokerError | None = None
        for _ in range(attempts):
            if not keep_port:
                self.port = free_port(self.host)
            try:
                self._launch()
                return self
            except BrokerError as exc:
                last = exc
                if keep_port or "in use" not in str(exc).lower():
                    raise
        assert last is not None
        raise last

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit within ``timeout`` seconds."""
        proc = self._proc
        self._proc = None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL: a broker crash rather than a clean shutdown."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self.stop()

    def restart(self) -> None:
        """Stop and start again on the same port (retained messages are lost: no persistence)."""
        self.stop()
        # Another process may hold the port for a moment (it was just released): retry briefly.
        deadline = time.monotonic() + 5.0
        while True:
            try:
                self.start()
                return
            except BrokerError as exc:
                if "in use" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def cleanup(self) -> None:
        """Stop and remove the working directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- internals ------------------------------------------------------------------------
    def _write_config(self) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    f"listener {self.port} {self.host}",
                    "allow_anonymous true",
                    "persistence false",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "connection_messages true",
                    "log_timestamp true",
                    # Floods and fan-out tests must not lose QoS 1 messages in the broker.
                    "max_queued_messages 100000",
                    "max_inflight_messages 100",
                    self.extra_config,
                    "",
                ]
            )
        )

    def _launch(self) -> None:
        self._write_config()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file.write(f"--- starting on port {self.port}\n".encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            start_new_session=True,  # a Ctrl-C on pytest must not hit the broker first
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                tail = self.log_tail()
                in_use = "in use" in tail.lower()
                raise BrokerError(
                    f"mosquitto exited with code {code} while starting on port {self.port}"
                    f"{' (address in use)' if in_use else ''}; log tail:\n{tail}"
                )
            if _port_open(self.host, self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(
            f"mosquitto did not accept connections on {self.host}:{self.port} within "
            f"{self.start_timeout:.0f} s; log tail:\n{self.log_tail()}"
        )


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    *,
    what: str | None = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    *,
    what: str | None = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.02,
    *,
    what: str | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that.

    On timeout raise :class:`TimeoutError` naming ``what`` (or the predicate) and the last
    value seen, so a failing test says what it was waiting for.
    """
    description = what or getattr(predicate, "__name__", None) or repr(predicate)
    if description == "<lambda>":
        with contextlib.suppress(OSError, TypeError):
            description = inspect.getsource(predicate).strip()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        last = value
        if loop.time() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:g} s waiting for {description} (last value: {last!r})"
            )
        await asyncio.sleep(interval)


# -- telemetry: the outbox against the database --------------------------------------------


@dataclass
class DbComparison:
    """Every point kept in an outbox file against what a VictoriaMetrics holds."""

    points: int
    samples_expected: int
    samples_stored: int
    missing: list[tuple[str, str, int]]
    duplicated: list[tuple[str, str, int]]
    extra: list[tuple[str, str, int]]
    wrong_values: list[tuple[str, str, int, float, float]]

    @property
    def exact(self) -> bool:
        """Every point there exactly once, with its values, and nothing else."""
        return not (self.missing or self.duplicated or self.extra or self.wrong_values)

    def summary(self) -> str:
        """One line for the test output."""
        return (
            f"{self.points} points = {self.samples_expected} samples expected,"
            f" {self.samples_stored} stored; missing {len(self.missing)},"
            f" duplicated {len(self.duplicated)}, extra {len(self.extra)},"
            f" wrong values {len(self.wrong_values)}"
        )


def compare_outbox_with_db(outbox: Path, vm: Any) -> DbComparison:
    """Read every line of ``outbox`` (sent or not) and every sample of ``vm``; compare."""
    from collections import Counter

    from controller.telemetry.lineproto import parse
    from controller.telemetry.outbox import iter_lines, open_readonly

    expected: dict[tuple[str, str, int], float] = {}
    points = 0
    db = open_readonly(outbox)
    try:
        for _, line in iter_lines(db):
            p = parse(line)
            points += 1
            labels = ",".join(f"{k}={v}" for k, v in sorted(p.tags))
            for name, value in p.fields:
                key = (f"{p.measurement}_{name}", labels, p.ts_ms)
                assert key not in expected, f"two points share series and time: {line}"
                expected[key] = float(value)
    finally:
        db.close()
    stored: Counter[tuple[str, str, int]] = Counter()
    values: dict[tuple[str, str, int], float] = {}
    for s in vm.series():
        m = dict(s["metric"])
        name = m.pop("__name__")
        labels = ",".join(f"{k}={v}" for k, v in sorted(m.items()))
        for ts, v in zip(s["timestamps"], s["values"], strict=True):
            key = (name, labels, int(ts))
            stored[key] += 1
            values[key] = float(v)
    missing = [k for k in expected if k not in stored]
    duplicated = [k for k, n in stored.items() if n > 1]
    extra = [k for k in stored if k not in expected]
    wrong = [
        (*k, expected[k], values[k])
        for k in expected
        if k in values and abs(values[k] - expected[k]) > 1e-9 * max(1.0, abs(expected[k]))
    ]
    return DbComparison(
        points=points,
        samples_expected=len(expected),
        samples_stored=sum(stored.values()),
        missing=missing[:20],
        duplicated=duplicated[:20],
        extra=extra[:20],
        wrong_values=wrong[:20],
    )
