"""The database schema, as an ordered list of migrations; `PRAGMA user_version` says how many ran."""

MIGRATIONS: tuple[str, ...] = (
    # 1: apps, their settings and their environment
    """
    CREATE TABLE apps (
        name       TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        settings   BLOB NOT NULL,
        source     BLOB NOT NULL
    );
    CREATE TABLE app_config (
        app   TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        key   TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (app, key)
    );
    """,
)
