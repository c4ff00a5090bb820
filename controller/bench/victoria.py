"""A VictoriaMetrics server as a child process: the time-series database of the telemetry
benchmark and of the test suite.

VictoriaMetrics (Debian package ``victoria-metrics``) accepts InfluxDB's v2 write API —
``POST /api/v2/write?precision=ms`` with line protocol, gzip or not — which is exactly what
cityctl sends to InfluxDB 2.x/3.x. It is started so that it behaves like InfluxDB where it
matters here: ``-dedup.minScrapeInterval=1ms`` keeps one sample per series and millisecond,
as InfluxDB keeps one point per series and timestamp (replays are idempotent), and
``-search.latencyOffset=0s`` makes points queryable as soon as they are written.

A measurement ``m`` with field ``f`` becomes the metric ``m_f`` with the tags as labels.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.bench.mosquitto import free_port

__all__ = ["RawWriter", "VictoriaMetrics", "VictoriaMissing", "find_victoria_metrics"]

_CANDIDATES = ("victoria-metrics", "victoria-metrics-prod")


class VictoriaMissing(RuntimeError):
    """The binary is not installed (``apt-get install victoria-metrics``)."""


def find_victoria_metrics() -> str:
    """Path of the server binary; :class:`VictoriaMissing` says how to install it."""
    for name in _CANDIDATES:
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None
        )
        if found:
            return found
    raise VictoriaMissing(
        "VictoriaMetrics is not installed: apt-get install victoria-metrics"
        " (or give --url of an InfluxDB 2.x/3.x server)"
    )


class VictoriaMetrics:
    """One server on a free loopback port with its own data directory.

    ``stop()`` and ``start()`` again reuse the port and the data (a database restart);
    ``kill()`` is a crash.
    """

    def __init__(self, data_dir: Path | None = None, *, port: int | None = None) -> None:
        self.binary = find_victoria_metrics()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cityctl-vm-")
            data_dir = Path(self._tmp.name)
        self.data_dir = Path(data_dir)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "victoria-metrics.log"

    @property
    def url(self) -> str:
        """Base URL (what ``telemetry.influx.url`` takes)."""
        return f"http://{self.host}:{self.port}"

    # -- process ----------------------------------------------------------------------------
    def start(self, timeout_s: float = 20.0) -> None:
        """Start and wait until it answers ``/health``."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"-storageDataPath={self.data_dir / 'data'}",
                f"-httpListenAddr={self.host}:{self.port}",
                "-retentionPeriod=100y",
                "-dedup.minScrapeInterval=1ms",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=ERROR",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited: {self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"victoria-metrics did not come up on {self.url}: {self.log_tail()}")

    def stop(self) -> None:
        """Stop gracefully (it flushes its buffers); the port stays ours for ``start()``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crashed database."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop and remove a temporary data directory."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> VictoriaMetrics:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cpu_s(self) -> float:
        """CPU seconds the server has used so far (Linux /proc)."""
        if self.proc is None:
            return 0.0
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def settle(self, *, idle_share: float = 0.05, timeout_s: float = 15.0) -> float:
        """Wait until the server's background work (merges after a burst) has died down.

        Returns the seconds waited. A benchmark calls it between phases so neither phase pays
        for the other's merges.
        """
        t0 = time.monotonic()
        last = self.cpu_s()
        while time.monotonic() - t0 < timeout_s:
            time.sleep(0.25)
            now = self.cpu_s()
            if now - last <= idle_share * 0.25:
                break
            last = now
        return time.monotonic() - t0

    def log_tail(self, n: int = 20) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- HTTP -------------------------------------------------------------------------------
    def _get(self, path: str, timeout: float = 30.0) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as r:
            data: bytes = r.read()
            return data

    def healthy(self) -> bool:
        """Whether it answers."""
        try:
            return self._get("/health", timeout=1.0).strip() == b"OK"
        except OSError:
            return False

    def flush(self) -> None:
        """Make everything written so far visible to queries."""
        self._get("/internal/force_flush")

    def series(self, match: str = '{__name__!=""}') -> Iterator[dict[str, Any]]:
        """Raw samples per series (``/api/v1/export``): ``{"metric", "values", "timestamps"}``."""
        self.flush()
        # Up to a day ahead: the default end ("now") would hide the newest second or so.
        end = str(int(time.time()) + 86_400)
        q = urllib.parse.urlencode({"match[]": match, "start": "0", "end": end})
        for line in self._get(f"/api/v1/export?{q}", timeout=120).splitlines():
            if line.strip():
                yield json.loads(line)

    def samples(self, match: str = '{__name__!=""}') -> int:
        """How many samples the database holds for ``match`` (after deduplication)."""
        return sum(len(s["timestamps"]) for s in self.series(match))

    def rows_received(self) -> int:
        """Influx rows received so far, duplicates included (``vm_rows_inserted_total``)."""
        text = self._get("/metrics").decode()
        total = 0
        for line in text.splitlines():
            if line.startswith('vm_rows_inserted_total{type="influx"}'):
                total += int(float(line.split()[-1]))
        return total


class RawWriter:
    """The benchmark's reference: plain ``http.client`` POSTs of line protocol, keep-alive."""

    def __init__(self, url: str, bucket: str = "cityctl", *, gzip_level: int | None = 1) -> None:
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=60)
        self.path = f"/api/v2/write?{urllib.parse.urlencode({'bucket': bucket, 'org': '-', 'precision': 'ms'})}"
        self.gzip_level = gzip_level

    def write(self, body: str) -> None:
        """POST one body; raise on anything but 2xx."""
        data = body.encode()
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.gzip_level is not None:
            data = gzip.compress(data, compresslevel=self.gzip_level)
            headers["Content-Encoding"] = "gzip"
        self.conn.request("POST", self.path, body=data, headers=headers)
        r = self.conn.getresponse()
        r.read()
        if r.status // 100 != 2:
            raise RuntimeError(f"raw write answered {r.status}")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
