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
    # 2: what should run (desired state, scale), the handles of what runs, one-shot jobs
    """
    ALTER TABLE apps ADD COLUMN desired TEXT NOT NULL DEFAULT 'stopped';
    ALTER TABLE apps ADD COLUMN scale BLOB NOT NULL DEFAULT '{}';
    CREATE TABLE process_handles (
        app     TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        process TEXT NOT NULL,
        handle  BLOB NOT NULL,
        PRIMARY KEY (app, process)
    );
    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY,
        app         TEXT NOT NULL,
        started_at  REAL NOT NULL,
        finished_at REAL,
        state       TEXT NOT NULL,
        record      BLOB NOT NULL
    );
    CREATE INDEX jobs_by_app ON jobs (app, started_at);
    """,
    # 3: chunked uploads in progress
    """
    CREATE TABLE uploads (
        id           TEXT PRIMARY KEY,
        app          TEXT NOT NULL,
        filename     TEXT NOT NULL,
        total_size   INTEGER NOT NULL,
        total_chunks INTEGER NOT NULL,
        sha256       TEXT,
        received     BLOB NOT NULL,
        created_at   REAL NOT NULL,
        options      BLOB NOT NULL
    );
    """,
    # 4: deploy daemons (AppAPI's DaemonConfigs); at most one is the default
    """
    CREATE TABLE daemons (
        name          TEXT PRIMARY KEY,
        display_name  TEXT NOT NULL,
        deploy_id     TEXT NOT NULL,
        protocol      TEXT NOT NULL,
        host          TEXT,
        nextcloud_url TEXT NOT NULL,
        deploy_config BLOB NOT NULL,
        is_default    INTEGER NOT NULL DEFAULT 0,
        created_at    REAL NOT NULL
    );
    CREATE UNIQUE INDEX daemons_one_default ON daemons (is_default) WHERE is_default = 1;
    """,
    # 5: what an image app is given once and keeps: its APP_SECRET and APP_PORT
    """
    CREATE TABLE exapps (
        app    TEXT PRIMARY KEY REFERENCES apps(name) ON DELETE CASCADE,
        secret TEXT NOT NULL,
        port   INTEGER NOT NULL UNIQUE
    );
    """,
    # 6: the processes of an app meant to run that ended by themselves and whose restart policy let them
    # stay ended: they stay so when berthd restarts, until the user starts the app again
    """
    ALTER TABLE apps ADD COLUMN ended BLOB NOT NULL DEFAULT '[]';
    """,
    # 7: who began each upload, so that no one caller can take every upload slot
    """
    ALTER TABLE uploads ADD COLUMN uid INTEGER NOT NULL DEFAULT 0;
    """,
    # 8: the chunk size a client chose (or berthd learnt from its first chunk); upload groups. A session
    # begun before keeps the size it was begun with, ceil(size / chunks)
    """
    ALTER TABLE uploads ADD COLUMN chunk_size INTEGER;
    UPDATE uploads SET chunk_size = (total_size + total_chunks - 1) / total_chunks;
    ALTER TABLE uploads ADD COLUMN group_id TEXT;
    ALTER TABLE uploads ADD COLUMN file_index INTEGER;
    ALTER TABLE uploads ADD COLUMN total_files INTEGER;
    ALTER TABLE uploads ADD COLUMN executable INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE uploads ADD COLUMN ended_hash TEXT;
    CREATE INDEX uploads_by_group ON uploads (app, group_id);
    """,
)
