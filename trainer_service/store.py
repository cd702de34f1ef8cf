"""Jobs and their events in one SQLite file (WAL), shared by the service and its worker processes.

Every state change is written together with the event that announces it, in one transaction, so a restart
never finds a job whose events disagree with its status, and event sequence numbers have no gaps.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from .domain import ALLOWED_TRANSITIONS, Job, JobError, JobEvent, JobStatus
from .errors import InvalidTransitionError, JobNotFoundError, QuotaExceededError
from .paging import newest_first, page_and_token
from .sqlite_rebuild import rebuild_with_column

# A job belongs to a project (its API key's; "" without keys); client_request_id is unique within a project.
_JOBS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id TEXT PRIMARY KEY,
    client_request_id TEXT,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    trained_steps INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    project TEXT NOT NULL DEFAULT ''
);
"""
_JOB_COLUMNS = ("id, client_request_id, status, spec, result, created_at, started_at, finished_at, trained_steps, "
                "total_steps, error_code, error_message")
_SCHEMA = _JOBS_TABLE.replace("{name}", "jobs") + """
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    sequence INTEGER NOT NULL,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
"""


class JobRecords(Protocol):
    """What a worker needs of the store: JobStore on the same machine, worker.remote_store.RemoteJobStore from a
    Kubernetes Job."""

    def get_job(self, job_id: str) -> Job: ...
    def append_event(self, job_id: str, kind: str, message: str,
                     payload: dict[str, Any] | None = None) -> JobEvent: ...
    def record_progress(self, job_id: str, trained_steps: int, total_steps: int, message: str,
                        payload: dict[str, Any]) -> JobEvent: ...
    def merge_result(self, job_id: str, result: dict[str, Any]) -> None: ...
    def transition(self, job_id: str, status: JobStatus, message: str, *, error: JobError | None = None,
                   result: dict[str, Any] | None = None) -> Job: ...


class JobStore:
    def __init__(self, path: Path | str, *, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Writes on one connection guarded by a lock: gRPC handlers run on a thread pool; workers open their own.
        self._connection = sqlite3.connect(self.path, timeout=busy_timeout_s, check_same_thread=False,
                                           isolation_level=None)
        self._connection.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self._creates = _GroupCommit(self._create_jobs)
        # FULL, not WAL's usual NORMAL: a job event is rare and must survive a power cut, not just a crash.
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._connection.executescript(_SCHEMA)
            _add_report_ids(self._connection)
            _add_projects(self._connection)
        # Reads on a connection of their own: under WAL they see the last commit without waiting for a writer's
        # fsync (synchronous=FULL), so Get / List / Watch stay fast while jobs are created and workers report.
        self._reader = sqlite3.connect(self.path, timeout=busy_timeout_s, check_same_thread=False,
                                       isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        self._reader_lock = threading.Lock()

    def close(self) -> None:
        self._reader.close()
        self._connection.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._reader_lock:
            yield self._reader

    def add_listener(self, on_event: Callable[[str], None]) -> None:
        """`on_event(job_id)` runs after each commit of this process that added an event to that job (events
        that worker processes write straight into the file are found by polling `jobs_with_events_after`).
        It must not block: it runs on the writer's thread."""
        self._listeners.append(on_event)

    def remove_listener(self, on_event: Callable[[str], None]) -> None:
        if on_event in self._listeners:
            self._listeners.remove(on_event)

    @contextmanager
    def _transaction(self, job_id: str | None = None) -> Iterator[sqlite3.Connection]:
        """`job_id`: the job whose events the transaction may add to, announced to listeners after COMMIT."""
        with self._lock:
            db = self._connection
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        if job_id is not None:
            for on_event in self._listeners:
                on_event(job_id)

    # jobs

    def create_job(self, spec: dict[str, Any], *, client_request_id: str | None = None,
                   status: JobStatus = JobStatus.VALIDATING_FILES, note: str = "", project: str = "",
                   max_active: int | None = None) -> tuple[Job, bool]:
        """Returns (job, created). With a `client_request_id` this project already used, returns that job,
        created=False. `note` goes into the creation event's message. With `max_active`, QuotaExceededError when
        the project has that many jobs not yet ended (counted in the insert's transaction: exact under concurrent
        creates). Creates that arrive together are written in one transaction (`_GroupCommit`): one fsync for
        all."""
        result = self._creates.submit((spec, client_request_id, status, note, project, max_active))
        if isinstance(result, QuotaExceededError):
            raise result
        return result

    def _create_jobs(self, requests: list[tuple]) -> list[tuple[Job, bool] | QuotaExceededError]:
        """Each request is `_insert_job`'s arguments after the connection; a refused one does not fail the rest."""
        results: list[tuple[Job, bool] | QuotaExceededError] = []
        with self._transaction() as db:
            for request in requests:
                try:
                    results.append(_insert_job(db, *request))
                except QuotaExceededError as refused:
                    results.append(refused)
        return results

    def get_job(self, job_id: str) -> Job:
        with self._reading() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(job_id)
        return _job(row)

    def find_by_client_request_id(self, client_request_id: str, *, project: str = "") -> Job | None:
        with self._reading() as db:
            row = db.execute("SELECT * FROM jobs WHERE project = ? AND client_request_id = ?",
                             (project, client_request_id)).fetchone()
        return None if row is None else _job(row)

    def list_jobs(self, statuses: Iterable[JobStatus] = (), *, page_size: int = 20, page_token: str = "",
                  project: str | None = None) -> tuple[list[Job], str]:
        """Newest first; only `project`'s jobs unless it is None. The page token is the last job's (created_at,
        id), so pages stay stable while jobs are added."""
        query, params = "SELECT * FROM jobs WHERE 1=1", []
        if project is not None:
            query += " AND project = ?"
            params.append(project)
        statuses = list(statuses)
        if statuses:
            query += f" AND status IN ({','.join('?' * len(statuses))})"
            params += [s.value for s in statuses]
        query, params = newest_first(query, params, page_token=page_token, page_size=page_size)
        with self._reading() as db:
            rows = db.execute(query, params).fetchall()
        return page_and_token([_job(row) for row in rows], page_size)

    def status_counts(self) -> dict[JobStatus, int]:
        with self._reading() as db:
            rows = db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        counts = {status: 0 for status in JobStatus}
        counts.update({JobStatus(row["status"]): row["n"] for row in rows})
        return counts

    def latest_event(self, job_id: str, kind: str) -> JobEvent | None:
        with self._reading() as db:
            row = db.execute(
                "SELECT * FROM events WHERE job_id = ? AND kind = ? ORDER BY sequence DESC LIMIT 1", (job_id, kind),
            ).fetchone()
        return None if row is None else _event(row)

    def next_queued(self) -> Job | None:
        """The oldest queued job (FIFO)."""
        with self._reading() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE status = ? ORDER BY created_at, id LIMIT 1", (JobStatus.QUEUED.value,),
            ).fetchone()
        return None if row is None else _job(row)

    def transition(self, job_id: str, status: JobStatus, message: str, *, error: JobError | None = None,
                   result: dict[str, Any] | None = None, report_id: str | None = None) -> Job:
        """Moves a job to `status` (checked against ALLOWED_TRANSITIONS) and records the event, atomically."""
        with self._transaction(job_id) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(job_id)
            if _reported(db, job_id, report_id):
                return _job(row)  # a retried report whose answer was lost: applied once already
            current = JobStatus(row["status"])
            if status not in ALLOWED_TRANSITIONS[current]:
                raise InvalidTransitionError(job_id, current, status)
            now = time.time()
            merged_result = {**json.loads(row["result"]), **(result or {})}
            db.execute(
                "UPDATE jobs SET status = ?, result = ?, error_code = ?, error_message = ?,"
                " started_at = COALESCE(started_at, ?), finished_at = ? WHERE id = ?",
                (status.value, json.dumps(merged_result), error.code if error else None,
                 error.message if error else None, now if status is JobStatus.RUNNING else None,
                 now if status.is_terminal else None, job_id),
            )
            payload: dict[str, Any] = {"status": status.value}
            if error:
                payload["error"] = {"code": error.code, "message": error.message}
            _append_event(db, job_id, "status_changed", message, payload, report_id)
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def record_progress(self, job_id: str, trained_steps: int, total_steps: int, message: str,
                        payload: dict[str, Any], *, report_id: str | None = None) -> JobEvent:
        with self._transaction(job_id) as db:
            if seen := _reported(db, job_id, report_id):
                return seen
            db.execute("UPDATE jobs SET trained_steps = ?, total_steps = ? WHERE id = ?",
                       (trained_steps, total_steps, job_id))
            return _append_event(db, job_id, "progress", message, payload, report_id)

    def merge_result(self, job_id: str, result: dict[str, Any]) -> None:
        """Adds keys to the job's result (scores, checkpoints) without changing its status."""
        with self._transaction() as db:
            row = db.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(job_id)
            db.execute("UPDATE jobs SET result = ? WHERE id = ?",
                       (json.dumps({**json.loads(row["result"]), **result}), job_id))

    # events

    def append_event(self, job_id: str, kind: str, message: str, payload: dict[str, Any] | None = None, *,
                     report_id: str | None = None) -> JobEvent:
        with self._transaction(job_id) as db:
            if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise JobNotFoundError(job_id)
            return _reported(db, job_id, report_id) or _append_event(db, job_id, kind, message, payload or {},
                                                                      report_id)

    def events_after(self, job_id: str, after_sequence: int = 0, *, limit: int = 500) -> list[JobEvent]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT * FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (job_id, after_sequence, limit),
            ).fetchall()
        return [_event(row) for row in rows]

    def jobs_with_events_after(self, after_rowid: int | None) -> tuple[int, set[str]]:
        """(the newest event's rowid, the jobs with events past `after_rowid`): one cheap query for every
        watched job at once. Events are never deleted and writers are serialised, so rowids only grow in commit
        order. `after_rowid` None: just the current rowid."""
        with self._reading() as db:
            (newest,) = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()
            if after_rowid is None or newest <= after_rowid:
                return newest, set()
            rows = db.execute("SELECT DISTINCT job_id FROM events WHERE rowid > ? AND rowid <= ?",
                              (after_rowid, newest)).fetchall()
        return newest, {row["job_id"] for row in rows}


def _insert_job(db: sqlite3.Connection, spec: dict[str, Any], client_request_id: str | None, status: JobStatus,
                note: str, project: str = "", max_active: int | None = None) -> tuple[Job, bool]:
    if client_request_id:  # also finds a job this same transaction inserted a moment ago
        row = db.execute("SELECT * FROM jobs WHERE project = ? AND client_request_id = ?",
                         (project, client_request_id)).fetchone()
        if row is not None:
            return _job(row), False
    if max_active is not None:
        active = [s.value for s in JobStatus if not s.is_terminal]
        marks = ",".join("?" * len(active))
        (count,) = db.execute(f"SELECT COUNT(*) FROM jobs WHERE project = ? AND status IN ({marks})",
                              (project, *active)).fetchone()
        if count >= max_active:
            raise QuotaExceededError("max_active_jobs_per_project", f"project {project!r} has {count} jobs validating "
                                     f"files, queued or running, its limit of {max_active}; wait for one to end or "
                                     "cancel one")
    job_id = "ftjob-" + uuid.uuid4().hex[:24]
    db.execute("INSERT INTO jobs (id, client_request_id, status, spec, created_at, project) VALUES (?, ?, ?, ?, ?, ?)",
               (job_id, client_request_id or None, status.value, json.dumps(spec), time.time(), project))
    _append_event(db, job_id, "status_changed", f"job created, {status.value}{'; ' + note if note else ''}",
                  {"status": status.value})
    return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()), True


class _GroupCommit:
    """Leader-based group commit: the first caller to find no write under way writes everything queued by then
    in one transaction, and again until the queue is empty; the others wait for their result. With
    synchronous=FULL each commit is an fsync, most of a Create's time: 200 concurrent creates then cost a
    handful of fsyncs, not 200."""

    def __init__(self, write_all: Callable[[list], list]):
        self._write_all = write_all
        self._mutex = threading.Lock()
        self._queued: list[tuple[Any, Future]] = []
        self._leading = False

    def submit(self, request: Any) -> Any:
        future: Future = Future()
        with self._mutex:
            self._queued.append((request, future))
            lead, self._leading = not self._leading, True
        if lead:
            self._lead()
        return future.result()

    def _lead(self) -> None:
        while True:
            with self._mutex:
                batch, self._queued = self._queued, []
                if not batch:
                    self._leading = False
                    return
            try:
                results = self._write_all([request for request, _ in batch])
            except BaseException as error:  # noqa: BLE001 - every caller of this batch gets the error
                for _, future in batch:
                    future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)


def _append_event(db: sqlite3.Connection, job_id: str, kind: str, message: str, payload: dict,
                  report_id: str | None = None) -> JobEvent:
    """Inside the caller's transaction: the next sequence number is taken and used atomically."""
    (last,) = db.execute("SELECT COALESCE(MAX(sequence), 0) FROM events WHERE job_id = ?", (job_id,)).fetchone()
    event = JobEvent(job_id, last + 1, time.time(), kind, message, payload)
    db.execute("INSERT INTO events (job_id, sequence, created_at, kind, message, payload, report_id)"
               " VALUES (?, ?, ?, ?, ?, ?, ?)",
               (job_id, event.sequence, event.created_at, kind, message, json.dumps(payload), report_id))
    return event


def _reported(db: sqlite3.Connection, job_id: str, report_id: str | None) -> JobEvent | None:
    """The event a remote worker's report already made: gRPC retries a report whose answer was lost (the
    trainer restarted mid-call), and the retry must not add the event twice."""
    if report_id is None:
        return None
    row = db.execute("SELECT * FROM events WHERE job_id = ? AND report_id = ?", (job_id, report_id)).fetchone()
    return None if row is None else _event(row)


def _add_report_ids(db: sqlite3.Connection) -> None:
    """Job stores written before worker reports carried ids get the column (SQLite adds it in place)."""
    if "report_id" not in {row["name"] for row in db.execute("PRAGMA table_info(events)")}:
        db.execute("ALTER TABLE events ADD COLUMN report_id TEXT")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_by_report ON events (job_id, report_id)"
               " WHERE report_id IS NOT NULL")


def _add_projects(db: sqlite3.Connection) -> None:
    """Job stores written before projects existed get the column, every job in project "", and lose the global
    UNIQUE on client_request_id for one per project."""
    rebuild_with_column(db, "jobs", "project", _JOBS_TABLE, _JOB_COLUMNS,
                        ("CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at)",))
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_request ON jobs (project, client_request_id)"
               " WHERE client_request_id IS NOT NULL")
    db.execute("CREATE INDEX IF NOT EXISTS jobs_by_project ON jobs (project, status)")


def _job(row: sqlite3.Row) -> Job:
    error = JobError(row["error_code"], row["error_message"] or "") if row["error_code"] else None
    return Job(
        id=row["id"], status=JobStatus(row["status"]), spec=json.loads(row["spec"]), created_at=row["created_at"],
        client_request_id=row["client_request_id"], started_at=row["started_at"], finished_at=row["finished_at"],
        trained_steps=row["trained_steps"], total_steps=row["total_steps"], error=error,
        result=json.loads(row["result"]), project=row["project"],
    )


def _event(row: sqlite3.Row) -> JobEvent:
    return JobEvent(row["job_id"], row["sequence"], row["created_at"], row["kind"], row["message"],
                    json.loads(row["payload"]))
