"""API tokens with roles: viewer < engineer < admin.

Tokens come from the config (``api.tokens``): the secret itself is read from an environment
variable or a file, or only its SHA-256 is written in the config. The controller keeps only
digests and compares them in constant time. Every write needs *engineer* or above; reads need a
token unless ``api.open_reads``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from controller.config import ApiToken, ConfigError, ConfigIssue

__all__ = ["ANONYMOUS", "Principal", "Role", "TokenBook", "digest"]


class Role(IntEnum):
    """What a token may do; a higher role includes the lower ones."""

    VIEWER = 1
    ENGINEER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        """``"engineer"`` → :attr:`ENGINEER`."""
        return cls[name.upper()]


@dataclass(frozen=True)
class Principal:
    """Who made a request."""

    name: str
    role: Role


ANONYMOUS = Principal("anonymous", Role.VIEWER)


def digest(token: str) -> str:
    """SHA-256 hex of a token (what ``token_sha256`` holds)."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenBook:
    """The known tokens, as digests."""

    def __init__(self, entries: Iterable[tuple[str, Role, str]] = ()) -> None:
        self._by_digest: dict[str, Principal] = {}
        for name, role, dig in entries:
            self._by_digest[dig] = Principal(name, role)

    @classmethod
    def from_config(cls, tokens: Iterable[ApiToken]) -> TokenBook:
        """Resolve every token's secret; a missing variable or file is a config error."""
        entries = []
        issues = []
        for i, t in enumerate(tokens):
            path = f"api.tokens[{i}]"
            if t.token_sha256:
                entries.append((t.name, Role.parse(t.role), t.token_sha256))
                continue
            secret: str | None = None
            if t.token_env:
                secret = os.environ.get(t.token_env)
                if not secret:
                    issues.append(
                        ConfigIssue(
                            f"{path}.token_env", f"environment variable {t.token_env} is not set"
                        )
                    )
            elif t.token_file:
                try:
                    secret = t.token_file.read_text().strip()
                except OSError as exc:
                    issues.append(
                        ConfigIssue(
                            f"{path}.token_file", f"cannot read {t.token_file}: {exc.strerror}"
                        )
                    )
            if secret is not None:
                if len(secret) < 16:
                    issues.append(ConfigIssue(path, "a token must have at least 16 characters"))
                else:
                    entries.append((t.name, Role.parse(t.role), digest(secret)))
        if issues:
            raise ConfigError(issues)
        return cls(entries)

    def add(self, name: str, role: Role, token: str) -> None:
        """Add a token at run time (the demo's)."""
        self._by_digest[digest(token)] = Principal(name, role)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a presented token, or None."""
        d = digest(token)
        for known, who in self._by_digest.items():
            if hmac.compare_digest(known, d):
                return who
        return None

    def __len__(self) -> int:
        return len(self._by_digest)
