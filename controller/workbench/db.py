"""The workbench's SQLite file (``<state_dir>/workbench.sqlite``): one connection per store.

Schedule versions, overrides, incidents and the audit log live in one file so a backup of the
state directory is one copy; each store creates its own tables. WAL mode lets the API read while
the controller writes, and every change is one transaction, so a crash loses nothing that was
answered with success.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["connect"]


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (and create) the workbench file in WAL mode; autocommit, explicit transactions."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # few writes, each a person's action: make them stick
    db.execute("PRAGMA busy_timeout=5000")
    return db
