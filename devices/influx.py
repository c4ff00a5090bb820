"""The InfluxDB v2 write API, behind one small interface (the only module that imports
``influxdb_client``).

InfluxDB 2.x and 3.x both accept ``POST /api/v2/write?org=…&bucket=…&precision=ms`` with a token;
VictoriaMetrics accepts the same request (it ignores org and token), which is what the test
suite runs against. The client's own batching keeps points in memory only, so cityctl uses the
*synchronous* write API and does its batching, retrying and store-and-forward itself
(``controller/telemetry``). Library and network errors become one :class:`WriteFailed` that
says whether trying again can help.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

__all__ = ["InfluxSettings", "InfluxWriter", "WriteFailed"]

log = logging.getLogger("cityctl.influx")

# Statuses after which the same request may succeed later: rate limits, overload, an
# upgrade in progress, an auth or bucket problem an operator is fixing.
_RETRYABLE = {401, 403, 404, 408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class InfluxSettings:
    """Where and how to write."""

    url: str
    bucket: str
    org: str = ""
    token: str = ""
    gzip: bool = True
    gzip_level: int = 1
    timeout_s: float = 10.0
    verify_tls: bool = True


class WriteFailed(Exception):
    """A write did not reach the database.

    ``retryable``: the same batch may succeed later (network, 5xx, 429, auth). Not retryable
    (400, 413, 422): the database refused the request itself; ``status`` says why.
    ``retry_after_s``: the server's ``Retry-After`` hint, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s


class InfluxWriter:
    """Writes line-protocol bodies, one blocking HTTP request each (call it from a thread)."""

    def __init__(self, settings: InfluxSettings) -> None:
        # Imported here so the rest of the controller starts without paying for it.
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.settings = settings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the client warns about a missing org on 3.x
            self._client = InfluxDBClient(
                url=settings.url,
                token=settings.token or "-",
                org=settings.org or "-",
                enable_gzip=settings.gzip,
                timeout=int(settings.timeout_s * 1000),
                verify_ssl=settings.verify_tls,
                retries=False,  # retries are ours: with backoff, jitter and the outbox
            )
        if settings.gzip:
            self._compress_fast(settings.gzip_level)
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def _compress_fast(self, level: int) -> None:
        # The client compresses with gzip's default level 9: three times slower than level 1
        # for line protocol, for a body a few per cent smaller. Its configuration object is
        # the documented place where the request body is prepared; override it there.
        import gzip
        import types

        conf: Any = self._client.conf
        base: Any = type(conf).__mro__[1]  # the generated configuration, uncompressed
        plain: Any = base.update_request_body

        def update_request_body(self: object, path: str, body: object) -> object:
            out = plain(self, path, body)
            if path == "/api/v2/write":
                data = out if isinstance(out, bytes) else str(out).encode()
                return gzip.compress(data, compresslevel=level)
            return out

        conf.update_request_body = types.MethodType(update_request_body, conf)

    def write(self, body: str) -> None:
        """POST ``body`` (lines joined by ``\\n``, ms timestamps); raise :class:`WriteFailed`."""
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._api.write(
                bucket=self.settings.bucket,
                org=self.settings.org or "-",
                record=body,
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except ApiException as e:
            status = int(e.status) if e.status else None
            retry_after = None
            headers: Any = e.headers or {}
            if "Retry-After" in headers:
                try:
                    retry_after = float(headers["Retry-After"])
                except ValueError:
                    retry_after = None
            reason = (
                (e.body or e.reason or "").strip()[:300] if isinstance(e.body, str) else e.reason
            )
            raise WriteFailed(
                f"database answered {status}: {reason}",
                retryable=status in _RETRYABLE if status is not None else True,
                status=status,
                retry_after_s=retry_after,
            ) from None
        except Exception as e:  # urllib3/socket errors: the database or the network is away
            raise WriteFailed(f"{type(e).__name__}: {e}"[:300], retryable=True) from None

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()  # type: ignore[no-untyped-call]
