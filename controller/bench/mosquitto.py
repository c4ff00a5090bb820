"""A throw-away Mosquitto broker as a child process: the broker of the scale benchmark and of
the test suite (``tests/helpers.py`` re-exports everything here).

Each broker gets its own free loopback port, its own temporary directory and its own log file,
so several can run side by side (pytest-xdist, a bench next to the tests). The configuration
keeps generous queues: floods and fan-out must not lose QoS 1 messages inside the broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "MOSQUITTO_CANDIDATES",
    "BrokerError",
    "Mosquitto",
    "find_mosquitto",
    "free_port",
    "free_ports",
]

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


class BrokerError(RuntimeError):
    """The broker could not be started (the message carries the tail of its log)."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary; a clear error when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(
        "mosquitto is not installed: the integration tests and `cityctl bench scale` need a "
        "real broker. "
        "Install it with `apt-get install mosquitto` (or run the suite via `./run test`, "
        "which installs it)."
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port that was free a moment ago, below the kernel's ephemeral range.

    A port from that range (what binding port 0 gives) can become the source port of any
    outgoing connection on the machine at any moment, so a server stopped and started again on
    it — a broker restart, a controller killed and restarted — could find it taken (a restarted
    district instance once failed to bind its API port in the suite). See :func:`free_ports`.
    """
    return free_ports(1, host)


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive loopback ports that were free a moment ago (checked
    by binding them all), chosen at random between 10,000 and the kernel's ephemeral range.

    Raises OSError when 200 tries found none.
    """
    import random

    low = 32_768
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    hi = max(low, 11_000 + count)
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, hi - count)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise OSError(f"no {count} consecutive free ports found on {host}")


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

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (the scale bench reads its CPU time)."""
        return self._proc.pid if self.running and self._proc is not None else None

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
