"""Counting and logging what the controller drops (design principle 7: nothing silent)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["DropCounter"]

#: Longest source or reason kept and logged, in characters.
_MAX_TEXT = 200


@dataclass
class DropCounter:
    """Counts dropped inputs per source and reason; logs the first one of each source.

    A broken node that sends garbage ten times a second must not flood the log, yet the
    operator must learn that it does: the first bad payload of a source is logged with its
    reason, later ones only counted (see :meth:`summary`).
    """

    logger: logging.Logger
    what: str = "payload"
    by_source: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    max_sources: int = 10_000
    max_reasons: int = 1_000

    def drop(self, source: str, reason: str) -> None:
        """Record one dropped input from ``source`` (a topic or a device) and why."""
        # Bound memory and log lines against topic-spraying clients: an MQTT topic may be
        # 64 kB long, and a reason may quote what was sent (say, an unknown node's id).
        if len(source) > _MAX_TEXT:
            source = source[: _MAX_TEXT - 1] + "…"
        if len(reason) > _MAX_TEXT:
            reason = reason[: _MAX_TEXT - 1] + "…"
        if source not in self.by_source and len(self.by_source) >= self.max_sources:
            source = "(other sources)"
        key = reason.split(":")[0][:80]
        if key not in self.by_reason and len(self.by_reason) >= self.max_reasons:
            key = "(other reasons)"
        first = source not in self.by_source
        self.by_source[source] += 1
        self.by_reason[key] += 1
        if first:
            self.logger.warning(
                "dropped bad %s from %s: %s (further ones from this source are only counted)",
                self.what,
                source,
                reason,
            )

    @property
    def total(self) -> int:
        """All drops so far."""
        return sum(self.by_source.values())

    def summary(self, top: int = 5) -> str:
        """One line for periodic logs."""
        worst = ", ".join(f"{s}×{n}" for s, n in self.by_source.most_common(top))
        return f"{self.total} bad {self.what}s dropped ({worst})" if self.total else ""
