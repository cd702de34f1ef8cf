"""Uploaded files' metadata in SQLite (its own database beside the blobs, not the job store's)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

from ..errors import StoredFileNotFoundError
from ..paging import newest_first, page_and_token
from ..sqlite_rebuild import rebuild_with_column
from .models import FILE_ID_PREFIX, FilePurpose, FileStatus, StoredFile

# One row per (project, content): the same bytes uploaded by two projects are two files, neither visible to the
# other.
_FILES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    record_count INTEGER,
    error_message TEXT,
    dataset_path TEXT,
    dataset_name TEXT,
    project TEXT NOT NULL DEFAULT '',
    UNIQUE (project, sha256)
);
"""
_FILE_COLUMNS = ("id, filename, purpose, bytes, sha256, created_at, status, record_count, error_message, "
                 "dataset_path, dataset_name")
_SCHEMA = _FILES_TABLE.format(name="files") + """
CREATE INDEX IF NOT EXISTS files_by_created ON files (created_at DESC, id DESC);
"""


class FileRecords:
    """One connection guarded by a lock: the gRPC blocking pool and the validation thread share it."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False,
                                           isolation_level=None)
        self._connection.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.executescript(_SCHEMA)
            _add_projects(self._connection)

    def close(self) -> None:
        self._connection.close()

    def insert(self, *, filename: str, purpose: FilePurpose, size_bytes: int, sha256: str,
               dataset_path: Path, dataset_name: str | None = None, project: str = "") -> tuple[StoredFile, bool]:
        """Returns (file, created). Content the project stored already returns its first File, created=False."""
        file_id = FILE_ID_PREFIX + uuid.uuid4().hex[:24]
        with self._lock:
            cursor = self._connection.execute(
                "INSERT INTO files (id, filename, purpose, bytes, sha256, created_at, status, dataset_path, "
                "dataset_name, project) VALUES (?, ?, ?, ?, ?, ?, 'uploaded', ?, ?, ?) "
                "ON CONFLICT (project, sha256) DO NOTHING",
                (file_id, filename, purpose, size_bytes, sha256, time.time(), str(dataset_path), dataset_name,
                 project))
            row = self._connection.execute("SELECT * FROM files WHERE project = ? AND sha256 = ?",
                                           (project, sha256)).fetchone()
        return _stored(row), cursor.rowcount == 1

    def get(self, file_id: str) -> StoredFile:
        with self._lock:
            row = self._connection.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise StoredFileNotFoundError(file_id)
        return _stored(row)

    def find_by_sha256(self, sha256: str, *, project: str = "") -> StoredFile | None:
        with self._lock:
            row = self._connection.execute("SELECT * FROM files WHERE project = ? AND sha256 = ?",
                                           (project, sha256)).fetchone()
        return None if row is None else _stored(row)

    def stored_bytes(self, project: str) -> int:
        """What the project's files take, as uploaded (its quota counts this)."""
        with self._lock:
            (total,) = self._connection.execute("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE project = ?",
                                                (project,)).fetchone()
        return total

    def list(self, purpose: FilePurpose | None, *, page_size: int, page_token: str = "",
             project: str | None = None) -> tuple[list[StoredFile], str]:
        """Newest first, only `project`'s files unless it is None; the page token is the last file's
        (created_at, id), as ListFineTuningJobs does."""
        query, params = "SELECT * FROM files WHERE 1=1", []
        if project is not None:
            query += " AND project = ?"
            params.append(project)
        if purpose:
            query += " AND purpose = ?"
            params.append(purpose)
        query, params = newest_first(query, params, page_token=page_token, page_size=page_size)
        with self._lock:
            rows = self._connection.execute(query, params).fetchall()
        return page_and_token([_stored(row) for row in rows], page_size)

    def with_status(self, status: FileStatus) -> list[StoredFile]:
        with self._lock:
            rows = self._connection.execute("SELECT * FROM files WHERE status = ? ORDER BY created_at",
                                            (status,)).fetchall()
        return [_stored(row) for row in rows]

    def set_validated(self, file_id: str, *, record_count: int | None, error_message: str | None) -> None:
        status = "error" if error_message is not None else "processed"
        with self._lock:
            self._connection.execute("UPDATE files SET status = ?, record_count = ?, error_message = ? WHERE id = ?",
                                     (status, record_count, error_message, file_id))

    def delete(self, file_id: str) -> StoredFile:
        with self._lock:
            row = self._connection.execute("DELETE FROM files WHERE id = ? RETURNING *", (file_id,)).fetchone()
        if row is None:
            raise StoredFileNotFoundError(file_id)
        return _stored(row)


def _add_projects(db: sqlite3.Connection) -> None:
    """File tables written before projects existed: every file goes to project "", and sha256 becomes unique per
    project."""
    rebuild_with_column(db, "files", "project", _FILES_TABLE, _FILE_COLUMNS,
                        ("CREATE INDEX IF NOT EXISTS files_by_created ON files (created_at DESC, id DESC)",))


def _stored(row: sqlite3.Row) -> StoredFile:
    return StoredFile(
        id=row["id"], filename=row["filename"], purpose=row["purpose"], bytes=row["bytes"], sha256=row["sha256"],
        created_at=row["created_at"], status=row["status"], record_count=row["record_count"],
        error_message=row["error_message"],
        dataset_path=Path(row["dataset_path"]) if row["dataset_path"] else None, dataset_name=row["dataset_name"],
        project=row["project"])
