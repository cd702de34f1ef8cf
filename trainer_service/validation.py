"""Background validation of jobs in VALIDATING_FILES.

Create checks what is cheap (the file exists, its format, its first records) and answers at once; here every
record is loaded, then the job moves to QUEUED, or to FAILED with `invalid_<field>` and the file/line/field
message. Each load runs in a child process: it takes no GIL from the gRPC server, the memory of a million
parsed rows (~0.7 GB) goes back to the system when it ends, and a job cancelled meanwhile stops its load. Jobs are found
in the store, so those left VALIDATING_FILES by a restart are picked up the same way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .child_process import json_answer, start_json_child
from .domain import Job, JobError, JobStatus
from .errors import InvalidArgumentError, InvalidTransitionError, JobNotFoundError, StoredFileNotFoundError
from .job_spec import DatasetSource, JobSpec, dataset_sources, is_file_id, load_job_dataset
from .store import JobStore

if TYPE_CHECKING:
    from .files import FileService

logger = logging.getLogger(__name__)


def error_code(field: str) -> str:
    """`invalid_training_file`, `invalid_validation_file`, `invalid_test_file`."""
    return f"invalid_{field}"


@dataclass(frozen=True)
class _Plan:
    """What is left to do for one job: the files to load, or why it cannot run yet or at all."""

    to_load: dict[str, DatasetSource]
    waiting: bool = False  # a file id whose upload is still being validated
    failure: tuple[str, str] | None = None  # (field, message)


class DatasetValidator:
    def __init__(self, store: JobStore, *, files: FileService | None = None, poll_interval_s: float = 0.25,
                 max_concurrent: int = 2):
        self.store = store
        self.files = files
        self.poll_interval_s = poll_interval_s
        self.max_concurrent = max_concurrent
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set by stop(): no waiting out the poll interval
        self._lock = threading.Lock()
        self._active: dict[str, threading.Thread] = {}
        self._thread = threading.Thread(target=self._loop, name="dataset-validator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def in_progress(self) -> set[str]:
        """Ids of the jobs whose files are being loaded now."""
        with self._lock:
            return set(self._active)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ends running loads; their jobs stay VALIDATING_FILES and are validated again on the next start."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout_s)
        with self._lock:
            threads = list(self._active.values())
        for thread in threads:
            thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - one bad poll must not end validation; the log has the details
                logger.exception("dataset validation poll failed")
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    def _tick(self) -> None:
        jobs, _ = self.store.list_jobs([JobStatus.VALIDATING_FILES], page_size=1000)
        for job in reversed(jobs):  # oldest first
            with self._lock:
                if len(self._active) >= self.max_concurrent:
                    return
                if job.id in self._active:
                    continue
            plan = self._plan(job)
            if plan.waiting:
                continue
            if plan.failure is not None:
                self._finish(job.id, JobStatus.FAILED, f"failed: {plan.failure[1]}",
                             error=JobError(error_code(plan.failure[0]), plan.failure[1]))
                continue
            thread = threading.Thread(target=self._validate, args=(job, plan), name=f"validate-{job.id}",
                                      daemon=True)
            with self._lock:
                self._active[job.id] = thread
            thread.start()

    def _plan(self, job: Job) -> _Plan:
        to_load = {}
        for field, source in dataset_sources(job.spec).items():
            value = job.spec[field]
            if not is_file_id(value):
                to_load[field] = source
                continue
            if self.files is None:
                return _Plan({}, failure=(field, f"{value} is a file id, and this trainer has no Files API"))
            try:
                stored = self.files.get(value)
            except StoredFileNotFoundError as err:
                return _Plan({}, failure=(field, str(err)))
            if stored.status == "uploaded":
                return _Plan({}, waiting=True)
            if stored.status == "error":
                return _Plan({}, failure=(field, f"{value}: {stored.error_message}"))
            # processed: validated once, at upload, and not loaded again
        return _Plan(to_load)

    def _validate(self, job: Job, plan: _Plan) -> None:
        try:
            outcome = self._load_in_child(job.id, job.spec, plan.to_load)
            if outcome is None:  # stopping, or the job left VALIDATING_FILES (cancelled)
                return
            if outcome["ok"]:
                counts = ", ".join(f"{field} {count:,} records" for field, count in outcome["counts"].items())
                self._finish(job.id, JobStatus.QUEUED, f"files validated: {counts or 'uploaded files processed'}")
            else:
                field, message = outcome["field"], outcome["message"]
                self._finish(job.id, JobStatus.FAILED, f"failed: {message}",
                             error=JobError(error_code(field), message))
        except Exception as err:  # noqa: BLE001 - reported on the job, and logged in full
            logger.exception("validating job %s failed", job.id)
            self._finish(job.id, JobStatus.FAILED, "failed: the dataset check itself failed",
                         error=JobError("validation_failed", f"{type(err).__name__}: {err}"))
        finally:
            with self._lock:
                self._active.pop(job.id, None)

    def _load_in_child(self, job_id: str, spec: dict[str, Any], to_load: dict[str, DatasetSource]) -> dict | None:
        """None when it stopped early: the trainer is stopping, or the job left VALIDATING_FILES."""
        if not to_load:
            return {"ok": True, "counts": {}}
        child, request = start_json_child(__name__, {"spec": spec, "to_load": {
            field: dataclasses.asdict(source) for field, source in to_load.items()}})
        try:
            while True:
                try:
                    out, err = child.communicate(request, timeout=self.poll_interval_s)
                    break
                except subprocess.TimeoutExpired:
                    request = None  # sent already; communicate() keeps what was read so far
                    if self._stopping.is_set() or not self._still_validating(job_id):
                        return None
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        return json_answer(child, out, err)

    def _still_validating(self, job_id: str) -> bool:
        try:
            return self.store.get_job(job_id).status is JobStatus.VALIDATING_FILES
        except JobNotFoundError:
            return False

    def _finish(self, job_id: str, status: JobStatus, message: str, **kwargs) -> None:
        try:
            self.store.transition(job_id, status, message, **kwargs)
        except InvalidTransitionError:  # cancelled meanwhile: it stays cancelled
            logger.info("job %s left validation before it ended; not moved to %s", job_id, status.value)


def _load_files(spec: dict[str, Any], to_load: dict[str, dict]) -> dict:
    """In the child: loads each file as the worker will (its memory goes back when the child ends); the record
    counts, or the first error."""
    job_spec = JobSpec.from_json(spec)
    counts = {}
    try:
        for field, source in to_load.items():
            counts[field] = len(load_job_dataset(job_spec, field, DatasetSource(**source)))
    except InvalidArgumentError as err:
        return {"ok": False, "field": err.field, "message": str(err)}
    return {"ok": True, "counts": counts}


if __name__ == "__main__":
    request = json.load(sys.stdin)
    print(json.dumps(_load_files(request["spec"], request["to_load"])))
