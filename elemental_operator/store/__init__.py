"""Object store: the interface (``base``) and its SQL backends (``sql``: SQLite, PostgreSQL)."""
