"""SQLite backend: the embedded default (WAL, synchronous=FULL). See ``sql.SqlStore``."""

from __future__ import annotations

from pathlib import Path

from elemental_operator.store.sql import SqlStore, open_store


def open_sqlite(path: str | Path, poll_interval: float = 0.1) -> SqlStore:
    return open_store(f"sqlite:///{Path(path).resolve()}", poll_interval)
