"""--max-upload-bytes-per-project counts unfinished uploads: the declared size of each of the project's partials
holds quota from the moment its upload starts until it is finished, abandoned (partial_upload_max_age_s) or
removed; a resume of the same content does not count it twice. Real FileService, SQLite and files on tmp_path."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import grpc
import pytest

from trainer_service.domain import Caller
from trainer_service.errors import FailedPreconditionError, InvalidArgumentError, QuotaExceededError
from trainer_service.files import ArchiveLimits, FileLimits, FileService, UploadMetadata
from trainer_service.grpc_api.status_codes import status_for
from trainer_service.store import JobStore

LIMIT_BYTES = 1000
CALLER = Caller(project="alpha", key_id="key-a")
OTHER = Caller(project="beta", key_id="key-b")


@pytest.fixture
def files(tmp_path: Path):
    service = FileService(tmp_path / "files", JobStore(tmp_path / "jobs.sqlite3"), FileLimits(
        1024 * 1024, ArchiveLimits(max_extracted_bytes=1024 * 1024, max_members=10, max_compression_ratio=50.0),
        max_upload_bytes_per_project=LIMIT_BYTES))
    yield service
    service.close()


def _content(size_bytes: int, seed: str) -> tuple[bytes, UploadMetadata]:
    line = b'{"messages": [{"role": "user", "content": "' + seed.encode() + b'"}]}\n'
    content = (line * (size_bytes // len(line) + 1))[:size_bytes]
    return content, UploadMetadata(f"{seed}.jsonl", "fine-tune", hashlib.sha256(content).hexdigest(), len(content))


def _refused(files: FileService, meta: UploadMetadata, caller: Caller = CALLER) -> str:
    with pytest.raises(QuotaExceededError) as refused:
        files.begin_upload(meta, caller)
    code, details = status_for(refused.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"limit of {LIMIT_BYTES} bytes" in details and "--max-upload-bytes-per-project" in details
    return details


def test_an_unfinished_upload_holds_quota_until_it_finishes_and_a_resume_counts_once(files) -> None:
    content, first = _content(600, "first")
    upload = files.begin_upload(first, CALLER)
    upload.write(content[:100])
    upload.close()  # the stream broke: 600 declared bytes stay held

    _, second = _content(500, "second")
    details = _refused(files, second)
    assert "600 bytes in 1 unfinished upload(s)" in details, details
    files.begin_upload(second, OTHER).close()  # another project's quota is its own

    resumed = files.begin_upload(dataclasses.replace(first, resume_offset=100), CALLER)  # 600, not 1200
    resumed.write(content[100:])
    assert files.finish_upload(resumed).bytes == 600
    _, fits = _content(400, "fits")  # 600 stored + 400: the finished partial no longer counts
    files.begin_upload(fits, CALLER).close()
    assert "stores 600 bytes of files and 400 bytes in 1 unfinished" in _refused(files, _content(1, "one")[1])


def test_an_upload_that_has_not_sent_a_byte_already_counts_and_a_refused_resume_leaves_nothing(files) -> None:
    _, first = _content(700, "first")
    files.begin_upload(first, CALLER).close()
    _refused(files, _content(400, "second")[1])

    _, unknown = _content(200, "unknown")
    with pytest.raises(FailedPreconditionError, match="past the 0 bytes"):
        files.begin_upload(dataclasses.replace(unknown, resume_offset=50), CALLER)
    assert not files._partials.path(unknown.sha256, unknown.bytes, "alpha").exists()
    files.begin_upload(_content(300, "fits")[1], CALLER).close()  # the refused resume holds nothing


def test_an_abandoned_or_corrupt_partial_frees_its_quota(files) -> None:
    _, abandoned = _content(700, "abandoned")
    files.begin_upload(abandoned, CALLER).close()
    path = files._partials.path(abandoned.sha256, abandoned.bytes, "alpha")
    old = time.time() - files.limits.partial_upload_max_age_s - 60
    os.utime(path, (old, old))
    _, corrupt = _content(700, "corrupt")
    upload = files.begin_upload(corrupt, CALLER)  # admitted: the abandoned partial is swept, not counted
    assert not path.exists()
    upload.write(b"x" * 700)
    with pytest.raises(InvalidArgumentError, match="upload again from 0"):
        files.finish_upload(upload)  # its partial is removed
    files.begin_upload(_content(1000, "whole")[1], CALLER).close()
