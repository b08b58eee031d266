"""PostgreSQL backend (psycopg 3): shared state for several operator replicas. See ``sql.SqlStore``."""

from __future__ import annotations

from elemental_operator.store.sql import SqlStore, open_store


def open_postgres(url: str, poll_interval: float = 0.1) -> SqlStore:
    if not url.startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
        raise ValueError(f"not a PostgreSQL URL: {url}")
    return open_store(url, poll_interval)
