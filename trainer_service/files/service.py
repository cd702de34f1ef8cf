"""FileService: what the Files API does, independent of gRPC. Every method blocks (SQLite, disk); the async
servicer calls them through the server's blocking pool. Validation runs in a child process, one at a time,
started from this service's own thread.

On disk, under `root`: `files.sqlite3` (metadata), `partial/` (uploads in progress), `staging/` (a finished
upload being extracted), `blobs/<sha256>[@<project>]/<filename>` (+ `extracted/` for an archive). A file only
appears in `blobs/` and in the table once it is complete, verified and, for an archive, safely extracted.

Every method takes the `Caller`: a file belongs to the project that uploaded it, and another project's file
answers as a missing one (StoredFileNotFoundError). Each project keeps its own copy of a content, so deleting
one project's file never touches another's.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..domain import OPEN_CALLER, Caller, Job, JobStatus
from ..errors import FailedPreconditionError, JobNotFoundError, QuotaExceededError, StoredFileNotFoundError
from .archive import ArchiveLimits, archive_kind, extract_archive
from .artifacts import TarStream, artifact_dirs
from .datasets import DatasetLocation, locate_dataset, validate_in_child
from .models import FilePurpose, StoredFile, UploadMetadata
from .store import FileRecords
from .uploads import PartialUploads, Upload, check_content_key, check_metadata

logger = logging.getLogger(__name__)

_ACTIVE_JOB_STATUSES = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING)
_JOB_FILE_FIELDS = ("training_file", "validation_file", "test_file")


@dataclass(frozen=True)
class FileLimits:
    max_upload_bytes: int
    archive: ArchiveLimits
    # What a project's stored files and unfinished uploads (their declared sizes) may take in all.
    max_upload_bytes_per_project: int | None = None
    max_page_size: int = 100
    # A partial upload nobody resumed for this long is removed when the trainer starts, and no longer counts
    # against its project's quota (removed then) when the project starts another upload.
    partial_upload_max_age_s: float = 7 * 24 * 3600


class FileService:
    def __init__(self, root: Path, jobs, limits: FileLimits):
        """`jobs`: the trainer's JobStore (get_job, list_jobs), read to guard deletes and find artifacts."""
        self.root = root
        self.limits = limits
        self._jobs = jobs
        self._records = FileRecords(root / "files.sqlite3")
        self._partials = PartialUploads(root / "partial")
        self._staging = root / "staging"
        self._blobs = root / "blobs"
        shutil.rmtree(self._staging, ignore_errors=True)  # half-extracted archives of a previous run
        self._staging.mkdir(parents=True, exist_ok=True)
        self._blobs.mkdir(parents=True, exist_ok=True)
        # Renames into blobs/ and the table change together under this lock (uploads of one content, deletes).
        self._commit_lock = threading.Lock()
        self._sweep()
        self._validator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-validation")
        # Finishing an upload hashes nothing more but may extract gigabytes: threads of its own, so the gRPC
        # pool that serves Get / List / Watch never waits behind an archive.
        self._finisher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="file-finish")
        for stored in self._records.with_status("uploaded"):  # the trainer stopped before validating them
            self._schedule_validation(stored)

    def _sweep(self) -> None:
        """Removes what a previous run left half done: blobs committed to disk but not to the table (it stopped
        between the two), and partial uploads abandoned for longer than `partial_upload_max_age_s`."""
        for blob in self._blobs.iterdir():
            sha256, _, project = blob.name.partition("@")
            if self._records.find_by_sha256(sha256, project=project) is None:
                shutil.rmtree(blob, ignore_errors=True)
        oldest = time.time() - self.limits.partial_upload_max_age_s
        for partial in self._partials.directory.iterdir():
            if partial.stat().st_mtime < oldest:
                partial.unlink(missing_ok=True)

    @classmethod
    def from_settings(cls, settings, jobs) -> FileService:
        limits = FileLimits(settings.max_upload_bytes, ArchiveLimits(
            settings.max_archive_extracted_bytes, settings.max_archive_members, settings.max_compression_ratio),
            max_upload_bytes_per_project=settings.max_upload_bytes_per_project)
        return cls(settings.files_root, jobs, limits)

    def close(self) -> None:
        self._finisher.shutdown(wait=True, cancel_futures=True)
        self._validator.shutdown(wait=True, cancel_futures=True)
        self._records.close()

    # reading

    def get(self, file_id: str, caller: Caller = OPEN_CALLER) -> StoredFile:
        stored = self._records.get(file_id)
        if not caller.can_see(stored.project):
            raise StoredFileNotFoundError(file_id)  # the message of a missing file: nothing says it exists
        return stored

    def content_path(self, stored: StoredFile) -> Path:
        """The file as uploaded (for an archive: the archive itself, beside its extracted/ directory)."""
        return self._blob_dir(stored.project, stored.sha256) / stored.filename

    def _blob_dir(self, project: str, sha256: str) -> Path:
        return self._blobs / (f"{sha256}@{project}" if project else sha256)

    def list(self, purpose: FilePurpose | None = None, *, page_size: int = 0, page_token: str = "",
             caller: Caller = OPEN_CALLER) -> tuple[list[StoredFile], str]:
        size = min(page_size, self.limits.max_page_size) if page_size > 0 else 20
        return self._records.list(purpose, page_size=size, page_token=page_token, project=caller.visible_project)

    def committed_bytes(self, sha256: str, size_bytes: int,
                        caller: Caller = OPEN_CALLER) -> tuple[int, StoredFile | None]:
        """Where the caller's upload of this content resumes, and its File when the project stored it already."""
        sha256 = sha256.lower()
        check_content_key(sha256, size_bytes)
        existing = self._records.find_by_sha256(sha256, project=caller.project)
        if existing is not None and existing.bytes == size_bytes:
            return size_bytes, existing
        return self._partials.committed_bytes(sha256, size_bytes, caller.project), None

    # uploading

    def begin_upload(self, meta: UploadMetadata, caller: Caller = OPEN_CALLER) -> Upload | StoredFile:
        """An Upload to write the stream's chunks to, or the File when the project stored this content already."""
        check_metadata(meta, max_upload_bytes=self.limits.max_upload_bytes)
        meta = dataclasses.replace(meta, project=caller.project)
        existing = self._records.find_by_sha256(meta.sha256, project=meta.project)
        if existing is not None and existing.bytes == meta.bytes:
            return existing
        # Before any byte is received, counting the project's other unfinished uploads too (their partials take
        # disk just as files do); again at the commit, where stored files alone are exact.
        return self._partials.open(meta, admit=lambda: self._check_quota(meta, with_partials=True))

    def _check_quota(self, meta: UploadMetadata, *, with_partials: bool = False) -> None:
        limit = self.limits.max_upload_bytes_per_project
        if limit is None:
            return
        stored = self._records.stored_bytes(meta.project)
        unfinished_bytes = unfinished = 0
        if with_partials:  # this content's own partial is `meta.bytes` below: a resume does not count twice
            unfinished_bytes, unfinished = self._partials.declared_bytes(
                meta.project, excluding=self._partials.path(meta.sha256, meta.bytes, meta.project),
                abandoned_before=time.time() - self.limits.partial_upload_max_age_s)
        if stored + unfinished_bytes + meta.bytes > limit:
            held = f"stores {stored} bytes of files"
            if unfinished:
                held += (f" and {unfinished_bytes} bytes in {unfinished} unfinished upload(s), which count until "
                         f"they finish or lie untouched for {self.limits.partial_upload_max_age_s:g} s")
            raise QuotaExceededError("max_upload_bytes_per_project", f"project {meta.project!r} {held}; "
                                     f"{meta.filename} ({meta.bytes} bytes) would pass its limit of {limit} bytes: "
                                     "delete files first")

    def finish_upload_soon(self, upload: Upload) -> Future[StoredFile]:
        """`finish_upload` on this service's own threads."""
        return self._finisher.submit(self.finish_upload, upload)

    def finish_upload(self, upload: Upload) -> StoredFile:
        """Verifies the digest, extracts an archive safely, commits; validation then starts in the background."""
        partial = upload.finish()
        meta = upload.meta
        staging = self._staging / uuid.uuid4().hex
        staging.mkdir()
        try:
            blob = staging / meta.filename
            try:
                partial.rename(blob)
            finally:
                upload.close()  # only now: a stream of the same content that claims it next starts afresh
            location = DatasetLocation(blob)
            if archive_kind(meta.filename):
                extract_archive(blob, staging / "extracted", self.limits.archive, name=meta.filename)
                location = locate_dataset(staging / "extracted", name=meta.filename)
            return self._commit(meta, staging, location)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, meta: UploadMetadata, staging: Path, location: DatasetLocation) -> StoredFile:
        final = self._blob_dir(meta.project, meta.sha256)
        with self._commit_lock:
            existing = self._records.find_by_sha256(meta.sha256, project=meta.project)
            if existing is not None:
                return existing
            self._check_quota(meta)
            if final.exists():  # left by a trainer that stopped between the rename and the insert
                shutil.rmtree(final)
            staging.rename(final)
            dataset_path = final / location.path.relative_to(staging)
            stored, _ = self._records.insert(filename=meta.filename, purpose=meta.purpose, size_bytes=meta.bytes,
                                             sha256=meta.sha256, dataset_path=dataset_path,
                                             dataset_name=location.dataset_name, project=meta.project)
        self._schedule_validation(stored)
        return stored

    # validating

    def _schedule_validation(self, stored: StoredFile) -> None:
        self._validator.submit(self._validate, stored)

    def _validate(self, stored: StoredFile) -> None:
        try:
            self._records.get(stored.id)
        except StoredFileNotFoundError:
            return  # deleted before its turn came: no child process for it
        try:
            result = validate_in_child(DatasetLocation(stored.dataset_path, stored.dataset_name))
        except Exception:  # noqa: BLE001 - a loader bug must not leave the file 'uploaded' forever
            logger.exception("validating %s (%s) failed unexpectedly", stored.id, stored.filename)
            result = None
        if result is None:
            self._records.set_validated(stored.id, record_count=None,
                                        error_message=f"{stored.filename}: could not be validated (internal error)")
            return
        self._records.set_validated(stored.id, record_count=result.record_count, error_message=result.error_message)
        logger.info("file %s (%s): %s", stored.id, stored.filename,
                    result.error_message or f"processed, {result.record_count} records")

    # deleting

    def delete(self, file_id: str, caller: Caller = OPEN_CALLER) -> StoredFile:
        """Refused while a job that is validating files, queued or running names the file. Frees its bytes of the
        project's quota."""
        stored = self.get(file_id, caller)
        if users := self._active_jobs_using(file_id):
            # Only the caller's own jobs by id: an admin's job on the file is none of the project's business.
            named = [job.id for job in users if caller.can_see(job.project)] or [f"{len(users)} job(s)"]
            raise FailedPreconditionError(f"file {file_id} is used by {', '.join(named)} "
                                          "(validating files, queued or running); cancel it or wait for it to end")
        with self._commit_lock:
            deleted = self._records.delete(file_id)
            shutil.rmtree(self._blob_dir(stored.project, stored.sha256), ignore_errors=True)
        return deleted

    def _active_jobs_using(self, file_id: str) -> list[Job]:
        users, token = [], ""
        while True:
            jobs, token = self._jobs.list_jobs(_ACTIVE_JOB_STATUSES, page_size=200, page_token=token)
            users += [job for job in jobs if file_id in (job.spec.get(key) for key in _JOB_FILE_FIELDS)]
            if not token:
                return users

    # artifacts

    def artifact_stream(self, job_id: str, *, include_merged_model: bool = False,
                        caller: Caller = OPEN_CALLER) -> TarStream:
        """The tar stream of a succeeded job's adapter (and merged model); JobNotFoundError for an unknown id or
        another project's job."""
        job = self._jobs.get_job(job_id)
        if not caller.can_see(job.project):
            raise JobNotFoundError(job_id)
        return TarStream(artifact_dirs(job, include_merged_model=include_merged_model))
