"""berthd's state: one SQLite file in the data dir (WAL), every change one transaction.

The methods are async: each runs the blocking sqlite3 call on a worker thread, one at a time on the one
connection, so the event loop never waits on the disk.
"""

from __future__ import annotations

import functools
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import msgspec
import trio

from berthd.errors import conflict, not_found
from berthd.store.migrations import MIGRATIONS
from berthd.store.records import (
    AppRecord,
    AppSettings,
    AppSource,
    DaemonRecord,
    DeployConfig,
    JobRecord,
    UploadRecord,
)

P = ParamSpec("P")
R = TypeVar("R")

DB_NAME = "berthd.db"


def threaded(method: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], Awaitable[R]]:
    """A blocking method made awaitable: it runs on a worker thread, one call at a time."""

    async def run(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        call = functools.partial(method, self, *args, **kwargs)
        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    run.__name__ = method.__name__
    run.__doc__ = method.__doc__
    return run


class Store:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._limiter = trio.CapacityLimiter(1)
        self._config_changes: dict[str, int] = {}  # per app, since berthd started: see config_generation

    @classmethod
    def open_sync(cls, data_dir: Path, synchronous: str = "FULL") -> Store:
        path = data_dir / DB_NAME
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        store = cls(conn, path)
        store._migrate()
        return store

    @classmethod
    async def open(cls, data_dir: Path, synchronous: str = "FULL") -> Store:
        return await trio.to_thread.run_sync(cls.open_sync, data_dir, synchronous)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema {version} is newer than this berthd knows ({len(MIGRATIONS)})"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._write() as conn:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # apps

    @staticmethod
    def _app(row: tuple[str, float, bytes, bytes]) -> AppRecord:
        name, created_at, settings, source = row
        return AppRecord(
            name,
            created_at,
            msgspec.json.decode(settings, type=AppSettings),
            msgspec.json.decode(source, type=AppSource),
        )

    @threaded
    def create_app(self, name: str, settings: AppSettings | None = None) -> AppRecord:
        record = AppRecord(name, time.time(), settings or AppSettings(), AppSource())
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO apps (name, created_at, settings, source) VALUES (?, ?, ?, ?)",
                    (
                        name,
                        record.created_at,
                        msgspec.json.encode(record.settings),
                        msgspec.json.encode(record.source),
                    ),
                )
            except sqlite3.IntegrityError:
                raise conflict(f"App {name} already exists") from None
        return record

    @threaded
    def get_app(self, name: str) -> AppRecord | None:
        row = self._conn.execute(
            "SELECT name, created_at, settings, source FROM apps WHERE name = ?", (name,)
        ).fetchone()
        return self._app(row) if row else None

    @threaded
    def list_apps(self) -> list[AppRecord]:
        rows = self._conn.execute(
            "SELECT name, created_at, settings, source FROM apps ORDER BY name"
        ).fetchall()
        return [self._app(row) for row in rows]

    @threaded
    def delete_app(self, name: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM apps WHERE name = ?", (name,)).rowcount > 0

    @threaded
    def rename_app(self, old: str, new: str, old_dir: str, new_dir: str) -> None:
        """Everything keyed by the app's name moves to `new` in one transaction: its row, and every row
        of every table with an `app` column; the paths into its folder that any of them stores (in JSON:
        settings, source, job records, upload options, handles) now lead into `new_dir`. The source
        records `renamed_from` until the folder has moved too (`finish_rename`)."""
        with self._write() as conn:
            conn.execute("PRAGMA defer_foreign_keys = ON")  # the app's rows move before the checks
            if conn.execute("SELECT 1 FROM apps WHERE name = ?", (new,)).fetchone():
                raise conflict(f"App {new} already exists")
            row = conn.execute("SELECT settings, source FROM apps WHERE name = ?", (old,)).fetchone()
            if row is None:
                raise not_found(f"App {old} does not exist")
            move = _Move(old, new, old_dir, new_dir)
            source = msgspec.json.decode(move.json(row[1]), type=AppSource)
            source.detail["renamed_from"] = old  # berthd.apps.rename.RENAMED_FROM
            conn.execute(
                "UPDATE apps SET name = ?, settings = ?, source = ? WHERE name = ?",
                (new, move.json(row[0]), msgspec.json.encode(source), old),
            )
            for table, columns in _tables_with_app(conn):
                rows = conn.execute(f"SELECT rowid, {', '.join(columns)} FROM {table} WHERE app = ?", (old,))
                for rowid, *values in rows.fetchall():
                    moved = [move.json(v) if isinstance(v, bytes | str) else v for v in values]
                    assignments = ", ".join(f"{column} = ?" for column in columns)
                    conn.execute(
                        f"UPDATE {table} SET app = ?, {assignments} WHERE rowid = ?", (new, *moved, rowid)
                    )

    @threaded
    def finish_rename(self, name: str) -> None:
        """The renamed app's folder has moved: the mark goes."""
        with self._write() as conn:
            row = conn.execute("SELECT source FROM apps WHERE name = ?", (name,)).fetchone()
            if row is None:
                return
            source = msgspec.json.decode(row[0], type=AppSource)
            source.detail.pop("renamed_from", None)
            conn.execute("UPDATE apps SET source = ? WHERE name = ?", (msgspec.json.encode(source), name))

    @threaded
    def save_settings(self, name: str, settings: AppSettings) -> None:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE apps SET settings = ? WHERE name = ?", (msgspec.json.encode(settings), name)
            )
            if cursor.rowcount == 0:
                raise not_found(f"App {name} does not exist")

    # app environment

    @threaded
    def set_config(self, name: str, values: dict[str, str]) -> None:
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO app_config (app, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (app, key) DO UPDATE SET value = excluded.value",
                [(name, key, value) for key, value in values.items()],
            )
        self._config_changed(name)

    @threaded
    def unset_config(self, name: str, keys: list[str]) -> list[str]:
        removed = []
        with self._write() as conn:
            for key in keys:
                if conn.execute("DELETE FROM app_config WHERE app = ? AND key = ?", (name, key)).rowcount:
                    removed.append(key)
        self._config_changed(name)
        return removed

    def _config_changed(self, name: str) -> None:
        self._config_changes[name] = self._config_changes.get(name, 0) + 1

    def config_generation(self, name: str) -> int:
        """How many times the app's config changed since berthd started, counted as each change is
        committed: a process whose start began at one count and ended at another may have read the
        config before the change (see `berthd.supervision.supervisor`)."""
        return self._config_changes.get(name, 0)

    @threaded
    def get_config(self, name: str) -> dict[str, str]:
        rows = self._conn.execute("SELECT key, value FROM app_config WHERE app = ? ORDER BY key", (name,))
        return dict(rows.fetchall())

    # what should run

    @threaded
    def set_desired(self, name: str, desired: str) -> None:
        """What the user asked for (running, stopped): every process of the app counts again."""
        with self._write() as conn:
            conn.execute("UPDATE apps SET desired = ?, ended = '[]' WHERE name = ?", (desired, name))

    @threaded
    def mark_ended(self, name: str, process: str) -> None:
        """`process` ended by itself and its restart policy let it stay ended."""
        with self._write() as conn:
            row = conn.execute("SELECT ended FROM apps WHERE name = ?", (name,)).fetchone()
            if row is None:
                return
            ended = set(msgspec.json.decode(row[0], type=list[str])) | {process}
            conn.execute(
                "UPDATE apps SET ended = ? WHERE name = ?", (msgspec.json.encode(sorted(ended)), name)
            )

    @threaded
    def ended_processes(self, name: str) -> set[str]:
        row = self._conn.execute("SELECT ended FROM apps WHERE name = ?", (name,)).fetchone()
        return set(msgspec.json.decode(row[0], type=list[str])) if row else set()

    @threaded
    def apps_desired_running(self) -> list[str]:
        rows = self._conn.execute("SELECT name FROM apps WHERE desired = 'running' ORDER BY name")
        return [row[0] for row in rows.fetchall()]

    @threaded
    def get_runtime(self, name: str) -> tuple[str, dict[str, int]]:
        row = self._conn.execute("SELECT desired, scale FROM apps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise not_found(f"App {name} does not exist")
        return row[0], msgspec.json.decode(row[1], type=dict[str, int])

    @threaded
    def set_scale(self, name: str, scale: dict[str, int]) -> None:
        with self._write() as conn:
            conn.execute("UPDATE apps SET scale = ? WHERE name = ?", (msgspec.json.encode(scale), name))

    @threaded
    def save_source(self, name: str, source: AppSource, settings: AppSettings) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE apps SET source = ?, settings = ? WHERE name = ?",
                (msgspec.json.encode(source), msgspec.json.encode(settings), name),
            )

    @threaded
    def save_handle(self, app: str, process: str, handle: bytes | None) -> None:
        with self._write() as conn:
            if handle is None:
                conn.execute("DELETE FROM process_handles WHERE app = ? AND process = ?", (app, process))
            else:
                conn.execute(
                    "INSERT INTO process_handles (app, process, handle) VALUES (?, ?, ?)"
                    " ON CONFLICT (app, process) DO UPDATE SET handle = excluded.handle",
                    (app, process, handle),
                )

    @threaded
    def all_handles(self) -> list[tuple[str, str, bytes]]:
        return list(self._conn.execute("SELECT app, process, handle FROM process_handles").fetchall())

    # jobs

    @threaded
    def save_job(self, job: JobRecord) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (id, app, started_at, finished_at, state, record) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET finished_at = excluded.finished_at, state = excluded.state,"
                " record = excluded.record",
                (job.id, job.app, job.started_at, job.finished_at, job.state, msgspec.json.encode(job)),
            )

    @threaded
    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._conn.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return msgspec.json.decode(row[0], type=JobRecord) if row else None

    @threaded
    def list_jobs(self, app: str | None, limit: int = 100) -> list[JobRecord]:
        if app is None:
            rows = self._conn.execute("SELECT record FROM jobs ORDER BY started_at DESC LIMIT ?", (limit,))
        else:
            rows = self._conn.execute(
                "SELECT record FROM jobs WHERE app = ? ORDER BY started_at DESC LIMIT ?", (app, limit)
            )
        return [msgspec.json.decode(row[0], type=JobRecord) for row in rows.fetchall()]

    @threaded
    def interrupt_running_jobs(self) -> int:
        """Jobs that were running when berthd last stopped: they ended with it."""
        with self._write() as conn:
            rows = conn.execute("SELECT record FROM jobs WHERE state = 'running'").fetchall()
            for (raw,) in rows:
                job = msgspec.json.decode(raw, type=JobRecord)
                job = msgspec.structs.replace(job, state="failed", error="berthd stopped while it ran")
                conn.execute(
                    "UPDATE jobs SET state = 'failed', record = ? WHERE id = ?",
                    (msgspec.json.encode(job), job.id),
                )
        return len(rows)

    @threaded
    def delete_jobs(self, app: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM jobs WHERE app = ?", (app,))

    @threaded
    def jobs_to_prune(self, app: str | None, keep: int, cutoff: float) -> list[JobRecord]:
        """Finished jobs of the app (of every app: None) past its newest `keep`, or started before `cutoff`."""
        rows = self._conn.execute(
            "SELECT record FROM ("
            " SELECT record, state, started_at,"
            "  ROW_NUMBER() OVER (PARTITION BY app ORDER BY started_at DESC) AS newest"
            " FROM jobs WHERE ? IS NULL OR app = ?"
            ") WHERE state != 'running' AND (newest > ? OR started_at < ?)",
            (app, app, keep, cutoff),
        ).fetchall()
        return [msgspec.json.decode(row[0], type=JobRecord) for row in rows]

    @threaded
    def delete_job(self, job_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # uploads

    _UPLOAD_COLUMNS = (
        "id, app, filename, total_size, total_chunks, sha256, received, created_at, options, uid,"
        " chunk_size, group_id, file_index, total_files, executable, ended_hash"
    )

    @staticmethod
    def _upload(row: tuple[object, ...]) -> UploadRecord:
        upload = UploadRecord(*row)  # type: ignore[arg-type]
        upload.executable = bool(upload.executable)  # an INTEGER column
        return upload

    @threaded
    def create_upload(self, upload: UploadRecord) -> None:
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO uploads ({self._UPLOAD_COLUMNS}) VALUES ({', '.join('?' * 16)})",
                msgspec.structs.astuple(upload),
            )

    @threaded
    def get_upload(self, upload_id: str) -> UploadRecord | None:
        row = self._conn.execute(
            f"SELECT {self._UPLOAD_COLUMNS} FROM uploads WHERE id = ?", (upload_id,)
        ).fetchone()
        return self._upload(row) if row else None

    @threaded
    def group_uploads(self, app: str, group: str, uid: int) -> list[UploadRecord]:
        """The sessions of one upload group (one caller's, of one app), by file index."""
        rows = self._conn.execute(
            f"SELECT {self._UPLOAD_COLUMNS} FROM uploads WHERE app = ? AND group_id = ? AND uid = ?"
            " ORDER BY file_index",
            (app, group, uid),
        ).fetchall()
        return [self._upload(row) for row in rows]

    @threaded
    def mark_chunk(self, upload_id: str, index: int, chunk_size: int) -> None:
        """Chunk `index` is stored; the upload's chunk size is `chunk_size` from now on, if it was not known."""
        with self._write() as conn:
            (received,) = conn.execute("SELECT received FROM uploads WHERE id = ?", (upload_id,)).fetchone()
            bits = bytearray(received)
            bits[index // 8] |= 1 << (index % 8)
            conn.execute(
                "UPDATE uploads SET received = ?, chunk_size = COALESCE(chunk_size, ?) WHERE id = ?",
                (bytes(bits), chunk_size, upload_id),
            )

    @threaded
    def mark_upload_ended(self, upload_id: str, digest: str) -> None:
        """A group's file is complete and checked; it waits for the others."""
        with self._write() as conn:
            conn.execute("UPDATE uploads SET ended_hash = ? WHERE id = ?", (digest, upload_id))

    @threaded
    def delete_upload(self, *upload_ids: str) -> None:
        with self._write() as conn:
            conn.executemany("DELETE FROM uploads WHERE id = ?", [(each,) for each in upload_ids])

    @threaded
    def uploads_older_than(self, cutoff: float) -> list[str]:
        rows = self._conn.execute("SELECT id FROM uploads WHERE created_at < ?", (cutoff,)).fetchall()
        return [row[0] for row in rows]

    @threaded
    def all_upload_ids(self) -> list[str]:
        return [row[0] for row in self._conn.execute("SELECT id FROM uploads").fetchall()]

    @threaded
    def count_uploads(self, app: str, uid: int) -> tuple[int, int, int, int]:
        """Open upload sessions: the app's, the caller's, all of them, and the bytes all of them reserve."""
        row = self._conn.execute(
            "SELECT COUNT(*) FILTER (WHERE app = ?), COUNT(*) FILTER (WHERE uid = ?), COUNT(*),"
            " COALESCE(SUM(total_size), 0) FROM uploads",
            (app, uid),
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    # deploy daemons

    _DAEMON_COLUMNS = "name, display_name, deploy_id, protocol, host, deploy_config, is_default, created_at"

    @staticmethod
    def _daemon(row: tuple[str, str, str, str, str | None, bytes, int, float]) -> DaemonRecord:
        name, display_name, deploy_id, protocol, host, deploy_config, is_default, created_at = row
        config = msgspec.json.decode(deploy_config, type=DeployConfig)
        return DaemonRecord(
            name, display_name, deploy_id, protocol, host, config, bool(is_default), created_at
        )

    @threaded
    def register_daemon(self, record: DaemonRecord, make_default: bool = False) -> bool:
        """Insert the daemon (and make it the default), or answer False when the name is taken."""
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO daemons (name, display_name, deploy_id, protocol, host, nextcloud_url,"
                    " deploy_config, is_default, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    (
                        record.name,
                        record.display_name,
                        record.deploy_id,
                        record.protocol,
                        record.host,
                        record.deploy_config.nextcloud_url,
                        msgspec.json.encode(record.deploy_config),
                        record.created_at,
                    ),
                )
            except sqlite3.IntegrityError:
                return False
            if make_default:
                self._make_default(conn, record.name)
        return True

    @threaded
    def get_daemon(self, name: str) -> DaemonRecord | None:
        row = self._conn.execute(
            f"SELECT {self._DAEMON_COLUMNS} FROM daemons WHERE name = ?", (name,)
        ).fetchone()
        return self._daemon(row) if row else None

    @threaded
    def list_daemons(self) -> list[DaemonRecord]:
        rows = self._conn.execute(f"SELECT {self._DAEMON_COLUMNS} FROM daemons ORDER BY name").fetchall()
        return [self._daemon(row) for row in rows]

    @threaded
    def delete_daemon(self, name: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM daemons WHERE name = ?", (name,)).rowcount > 0

    @staticmethod
    def _make_default(conn: sqlite3.Connection, name: str) -> None:
        conn.execute("UPDATE daemons SET is_default = 0 WHERE is_default = 1 AND name != ?", (name,))
        if conn.execute("UPDATE daemons SET is_default = 1 WHERE name = ?", (name,)).rowcount == 0:
            raise not_found(f"Daemon config {name} not found.")

    @threaded
    def set_default_daemon(self, name: str) -> None:
        """Make NAME the one default daemon, in one transaction."""
        with self._write() as conn:
            self._make_default(conn, name)

    @threaded
    def get_default_daemon(self) -> DaemonRecord | None:
        row = self._conn.execute(
            f"SELECT {self._DAEMON_COLUMNS} FROM daemons WHERE is_default = 1"
        ).fetchone()
        return self._daemon(row) if row else None

    # The settings column is msgspec JSON stored as a BLOB; SQLite's JSON functions want TEXT.
    _APPS_USING_DAEMON = "FROM apps WHERE json_extract(CAST(settings AS TEXT), '$.daemon') = ?"

    @threaded
    def apps_using_daemon(self, name: str) -> list[str]:
        rows = self._conn.execute(f"SELECT name {self._APPS_USING_DAEMON} ORDER BY name", (name,))
        return [row[0] for row in rows.fetchall()]

    # Appended with the deploy daemons (at the top with the other records when this file is next reordered).

    # ExApps

    @threaded
    def exapp_identity(self, app: str, choose_port: Callable[[set[int]], int]) -> tuple[str, int]:
        """The app's APP_SECRET and APP_PORT, made (and kept) the first time they are asked for."""
        row = self._conn.execute("SELECT secret, port FROM exapps WHERE app = ?", (app,)).fetchone()
        if row:
            return str(row[0]), int(row[1])
        with self._write() as conn:
            taken = {int(port) for (port,) in conn.execute("SELECT port FROM exapps").fetchall()}
            secret, port = secrets.token_urlsafe(32), choose_port(taken)
            conn.execute("INSERT INTO exapps (app, secret, port) VALUES (?, ?, ?)", (app, secret, port))
        return secret, port


def _tables_with_app(conn: sqlite3.Connection) -> list[tuple[str, list[str]]]:
    """Every table keyed by an app's name (an `app` column), with its other columns."""
    found = []
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        if "app" in columns:
            found.append((table, [c for c in columns if c != "app"]))
    return found


class _Move:
    """An app's rename as it touches stored JSON: its name as an `app` value, and paths into its folder."""

    def __init__(self, old: str, new: str, old_dir: str, new_dir: str) -> None:
        self.old, self.new, self.old_dir, self.new_dir = old, new, old_dir, new_dir

    def json(self, value: bytes | str) -> bytes | str:
        """A stored JSON value with the rename applied; anything else, as it was."""
        if not value or (value[:1] not in (b"{", b"[", "{", "[")):
            return value
        try:
            decoded = msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value
        encoded = msgspec.json.encode(self._apply(decoded))
        return encoded if isinstance(value, bytes) else encoded.decode()

    def _apply(self, value: object, key: str | None = None) -> object:
        if isinstance(value, dict):
            return {k: self._apply(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self._apply(v) for v in value]
        if isinstance(value, str):
            if key == "app" and value == self.old:
                return self.new
            if value == self.old_dir or value.startswith(self.old_dir + "/"):
                return self.new_dir + value[len(self.old_dir) :]
        return value
