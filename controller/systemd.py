"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``) without a dependency.

systemd passes a datagram socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace) and, with ``WatchdogSec=``, the interval in ``WATCHDOG_USEC``. The controller says
``READY=1`` once its loops run, ``WATCHDOG=1`` at half the interval **only while its control
loops are healthy** — so a controller whose loops died or hang is killed and restarted by
systemd instead of lingering — and ``STOPPING=1`` when it stops. Outside systemd (no
``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog_loop"]

log = logging.getLogger("cityctl.systemd")


class Notifier:
    """Sends ``KEY=value`` lines to systemd's notify socket."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + addr[1:]) if addr.startswith("@") else (addr or None)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID, when set, names the process the watchdog is meant for.
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s: float | None = (
            int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        )
        self.sent = 0

    @property
    def enabled(self) -> bool:
        """Whether systemd listens."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one message; False (logged once at debug) if it could not be sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self.address)
                s.sendall("\n".join(lines).encode())
        except OSError as e:
            log.debug("notify socket %s: %s", self.address, e)
            return False
        self.sent += 1
        return True


async def watchdog_loop(notifier: Notifier, healthy: Callable[[], str | None]) -> None:
    """Ping the watchdog every half interval while ``healthy()`` returns None.

    ``healthy`` returns None when all is well, else the reason; an unhealthy controller stops
    pinging (and says why in ``STATUS=``), so systemd restarts it after ``WatchdogSec``.
    """
    if notifier.watchdog_s is None:
        return
    period = notifier.watchdog_s / 2
    last_reason: str | None = None
    while True:
        await asyncio.sleep(period)
        reason = healthy()
        if reason is None:
            notifier.notify("WATCHDOG=1")
            if last_reason is not None:
                notifier.notify("STATUS=running")
                log.warning("control loops healthy again: watchdog pings resume")
        elif reason != last_reason:
            log.error(
                "control loops unhealthy (%s): no watchdog ping; systemd will restart", reason
            )
            notifier.notify(f"STATUS=unhealthy: {reason}")
        last_reason = reason
