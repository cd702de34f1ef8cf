"""API keys, projects, path roots, quotas and the audit log on a real trainer gRPC server (port 0, in process),
called through raw stubs with `authorization` metadata. The key file is written here by hand in its documented
JSON shape (auth/keys.py), as an operator or a Kubernetes Secret would provide it."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from trainer_service.auth.keys import KeyStore
from trainer_service.auth.rate_limit import KeyRateLimiter
from trainer_service.domain import JobStatus
from trainer_service.files import ArchiveLimits, FileLimits, FileService
from trainer_service.grpc_api.auth_interceptor import ClientAuth
from trainer_service.grpc_api.server import create_server
from trainer_service.jobs import JobService
from trainer_service.path_roots import PathRoots
from trainer_service.store import JobStore
from vlmforge.trainer.v1 import files_pb2 as fpb
from vlmforge.trainer.v1 import files_pb2_grpc
from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

MAX_ACTIVE_JOBS = 2
MAX_PROJECT_UPLOAD_BYTES = 64 * 1024
RELOAD_INTERVAL_S = 0.05


def _key_entry(project: str, scope: str = "project") -> tuple[str, dict]:
    key_id = secrets.token_hex(6)
    key = f"vlmf_{key_id}_{secrets.token_urlsafe(32)}"
    return key, {"id": key_id, "sha256": hashlib.sha256(key.encode()).hexdigest(), "project": project,
                 "scope": scope}


def _write_keys(path: Path, entries: list[dict]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"keys": entries}))
    os.replace(temporary, path)  # as a Secret update or `keys revoke` does: never half-written


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


class _Keys(NamedTuple):
    a: str
    b: str
    admin: str
    entries: list[dict]
    path: Path


class _Trainer(NamedTuple):
    jobs: trainer_pb2_grpc.FineTuningServiceStub
    files: files_pb2_grpc.FilesServiceStub
    channel: grpc.Channel
    store: JobStore
    keys: _Keys
    data_root: Path
    models_dir: Path
    outside: Path  # a dataset outside every root
    state: Path


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, tiny_model_dir: Path, small_dataset_dir: Path):
    root = tmp_path_factory.mktemp("auth")
    key_a, entry_a = _key_entry("team-a")
    key_b, entry_b = _key_entry("team-b")
    key_admin, entry_admin = _key_entry("ops", "admin")
    keys_path = root / "api-keys.json"
    entries = [entry_a, entry_b, entry_admin]
    _write_keys(keys_path, entries)

    data_root, models_dir, outside = root / "data", root / "models", root / "outside"
    for directory in (data_root / "team-a", data_root / "team-b", models_dir, outside):
        directory.mkdir(parents=True)
    for where in (data_root / "team-a" / "ds", data_root / "team-b" / "own", outside / "ds"):
        shutil.copytree(small_dataset_dir / "images", where / "images")
        shutil.copy(small_dataset_dir / "train.jsonl", where / "train.jsonl")
    shutil.copytree(tiny_model_dir, models_dir / "tiny")

    store = JobStore(root / "state" / "jobs.sqlite3")
    files = FileService(root / "state" / "files", store, FileLimits(
        1024 * 1024, ArchiveLimits(1024 * 1024, 100, 50.0), max_upload_bytes_per_project=MAX_PROJECT_UPLOAD_BYTES))
    jobs = JobService(store, watch_poll_interval_s=0.05, files=files,
                      roots=PathRoots(data_root, models_dir, required=True),
                      max_active_jobs_per_project=MAX_ACTIVE_JOBS)
    auth = ClientAuth(KeyStore(keys_path, reload_interval_s=RELOAD_INTERVAL_S))
    running = create_server(jobs, "127.0.0.1:0", max_message_bytes=4 * 1024 * 1024, files=files, auth=auth)
    running.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield _Trainer(trainer_pb2_grpc.FineTuningServiceStub(channel), files_pb2_grpc.FilesServiceStub(channel),
                       channel, store, _Keys(key_a, key_b, key_admin, entries, keys_path), data_root, models_dir,
                       outside, root / "state")
    running.server.stop(None)
    files.close()


def _create(trainer: _Trainer, key: str, **fields) -> pb.FineTuningJob:
    request = {"model": "tiny", "training_file": "ds/train.jsonl", "suffix": "auth", **fields}
    return trainer.jobs.CreateFineTuningJob(pb.CreateFineTuningJobRequest(**request), metadata=_bearer(key),
                                            timeout=30)


def _refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__next__"):
            list(result)
    return info.value.code(), info.value.details()


def _upload(trainer: _Trainer, key: str, content: bytes, filename: str = "train.jsonl") -> fpb.File:
    meta = fpb.UploadFileMetadata(filename=filename, purpose=fpb.FILE_PURPOSE_FINE_TUNE,
                                  sha256=hashlib.sha256(content).hexdigest(), bytes=len(content))
    messages = iter([fpb.UploadFileRequest(metadata=meta), fpb.UploadFileRequest(chunk=content)])
    return trainer.files.UploadFile(messages, metadata=_bearer(key), timeout=30)


def _end(trainer: _Trainer, job_id: str, status: JobStatus = JobStatus.SUCCEEDED, result: dict | None = None):
    """What a worker reports: RUNNING, then the end (the store is the real one the worker writes to)."""
    trainer.store.transition(job_id, JobStatus.RUNNING, "running")
    trainer.store.transition(job_id, status, "done", result=result)


def test_health_and_reflection_stay_open_without_a_key(trainer) -> None:
    health = health_pb2_grpc.HealthStub(trainer.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(trainer.channel)
    (answer,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                timeout=5)
    names = {service.name for service in answer.list_services_response.service}
    assert "vlmforge.trainer.v1.FineTuningService" in names and "grpc.health.v1.Health" in names


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer vlmf_000000000000_nope"),),
                                      (("authorization", "Basic dXNlcjpwYXNz"),), (("authorization", "Bearer "),),
                                      (("authorization", "vlmf_000000000000_nope"),)],
                         ids=["no-key", "unknown-key", "basic", "empty", "no-scheme"])
def test_calls_without_a_valid_key_are_unauthenticated(trainer, metadata) -> None:
    calls = [
        lambda: trainer.jobs.GetFineTuningJob(pb.GetFineTuningJobRequest(id="ftjob-x"), metadata=metadata),
        lambda: trainer.jobs.ListFineTuningJobs(pb.ListFineTuningJobsRequest(), metadata=metadata),
        lambda: trainer.jobs.CreateFineTuningJob(pb.CreateFineTuningJobRequest(model="tiny"), metadata=metadata),
        lambda: trainer.jobs.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id="ftjob-x"), metadata=metadata),
        lambda: trainer.files.ListFiles(fpb.ListFilesRequest(), metadata=metadata),
        lambda: trainer.files.UploadFile(iter([fpb.UploadFileRequest(metadata=fpb.UploadFileMetadata(
            filename="x.jsonl"))]), metadata=metadata),
        lambda: trainer.files.DownloadJobArtifacts(fpb.DownloadJobArtifactsRequest(job_id="ftjob-x"),
                                                   metadata=metadata),
    ]
    for call in calls:
        code, details = _refused(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED, details
        assert "vlmf_" not in details


def test_a_wrong_secret_for_a_known_key_id_is_unauthenticated(trainer) -> None:
    key_id = trainer.keys.entries[0]["id"]
    forged = f"vlmf_{key_id}_{secrets.token_urlsafe(32)}"
    assert _refused(lambda: trainer.jobs.ListFineTuningJobs(pb.ListFineTuningJobsRequest(),
                                                            metadata=_bearer(forged)))[0] == \
        grpc.StatusCode.UNAUTHENTICATED


def test_a_key_revoked_in_the_file_while_running_is_refused_and_a_new_one_accepted(trainer) -> None:
    key, entry = _key_entry("team-a")
    _write_keys(trainer.keys.path, [*trainer.keys.entries, entry])

    def listing():
        return trainer.jobs.ListFineTuningJobs(pb.ListFineTuningJobsRequest(), metadata=_bearer(key))

    deadline = time.monotonic() + 10
    while True:  # added: accepted once the trainer has looked at the file again
        try:
            listing()
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() < deadline
            time.sleep(RELOAD_INTERVAL_S)
    _write_keys(trainer.keys.path, [*trainer.keys.entries, {**entry, "revoked": True}])
    deadline = time.monotonic() + 10
    while True:
        try:
            listing()
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(RELOAD_INTERVAL_S)
    trainer.jobs.ListFineTuningJobs(pb.ListFineTuningJobsRequest(), metadata=_bearer(trainer.keys.a))


def test_project_b_cannot_reach_project_a_jobs_and_admin_sees_both(trainer, tmp_path: Path) -> None:
    keys = trainer.keys
    job = _create(trainer, keys.a)
    b = _bearer(keys.b)
    (trainer.data_root / "team-b" / "ds").symlink_to(trainer.data_root / "team-a" / "ds")
    try:  # B's directory holds a link to A's data: it resolves outside B's root
        code, details = _refused(lambda: _create(trainer, keys.b))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("training_file: must be under")
    finally:
        (trainer.data_root / "team-b" / "ds").unlink()
    code, details = _refused(lambda: _create(trainer, keys.b, training_file="nope.jsonl"))  # B's own path: named
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nope.jsonl" in details

    missing_code, missing = _refused(lambda: trainer.jobs.GetFineTuningJob(
        pb.GetFineTuningJobRequest(id="ftjob-" + "0" * 24), metadata=_bearer(keys.b)))
    assert missing_code == grpc.StatusCode.NOT_FOUND
    other = job.id
    hidden = missing.replace("0" * 24, other.removeprefix("ftjob-"))  # the same words as a missing id
    for call in (
        lambda: trainer.jobs.GetFineTuningJob(pb.GetFineTuningJobRequest(id=other), metadata=b),
        lambda: trainer.jobs.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=other), metadata=b, timeout=10),
        lambda: trainer.jobs.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=other), metadata=b),
        lambda: trainer.jobs.ListFineTuningCheckpoints(pb.ListFineTuningCheckpointsRequest(job_id=other),
                                                       metadata=b),
        lambda: trainer.files.DownloadJobArtifacts(fpb.DownloadJobArtifactsRequest(job_id=other), metadata=b,
                                                   timeout=10),
    ):
        assert _refused(call) == (grpc.StatusCode.NOT_FOUND, hidden)
    listed_b = trainer.jobs.ListFineTuningJobs(pb.ListFineTuningJobsRequest(page_size=100), metadata=b)
    assert other not in {j.id for j in listed_b.jobs}

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    _end(trainer, other, result={"adapter_path": str(adapter), "checkpoints": [{"step": 1, "path": "c"}]})
    for key in (keys.a, keys.admin):  # the owner and an admin reach it
        assert trainer.jobs.GetFineTuningJob(pb.GetFineTuningJobRequest(id=other), metadata=_bearer(key)).id == other
        assert trainer.jobs.ListFineTuningCheckpoints(pb.ListFineTuningCheckpointsRequest(job_id=other),
                                                      metadata=_bearer(key)).checkpoints[0].step == 1
        chunks = list(trainer.files.DownloadJobArtifacts(fpb.DownloadJobArtifactsRequest(job_id=other),
                                                         metadata=_bearer(key), timeout=10))
        assert chunks[-1].digest.bytes > 0
        events = list(trainer.jobs.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=other),
                                                      metadata=_bearer(key), timeout=10))
        assert events[-1].status_changed.status == pb.JOB_STATUS_SUCCEEDED
    assert _refused(lambda: trainer.files.DownloadJobArtifacts(fpb.DownloadJobArtifactsRequest(job_id=other),
                                                               metadata=b, timeout=10)) == \
        (grpc.StatusCode.NOT_FOUND, hidden)

    admin_job = _create(trainer, keys.admin, training_file=str(trainer.data_root / "team-a" / "ds" / "train.jsonl"))
    listed_admin = trainer.jobs.ListFineTuningJobs(pb.ListFineTuningJobsRequest(page_size=100),
                                                   metadata=_bearer(keys.admin))
    assert {job.id, admin_job.id} <= {j.id for j in listed_admin.jobs}
    listed_a = trainer.jobs.ListFineTuningJobs(pb.ListFineTuningJobsRequest(page_size=100), metadata=_bearer(keys.a))
    assert job.id in {j.id for j in listed_a.jobs} and admin_job.id not in {j.id for j in listed_a.jobs}
    trainer.jobs.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=admin_job.id), metadata=_bearer(keys.admin))


def test_project_b_cannot_reach_project_a_files(trainer, small_dataset_dir: Path) -> None:
    keys = trainer.keys
    content = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    stored_a = _upload(trainer, keys.a, content)
    a, b = _bearer(keys.a), _bearer(keys.b)
    missing_code, missing = _refused(lambda: trainer.files.GetFile(fpb.GetFileRequest(id="file-" + "0" * 24),
                                                                   metadata=b))
    hidden = (missing_code, missing.replace("0" * 24, stored_a.id.removeprefix("file-")))
    assert _refused(lambda: trainer.files.GetFile(fpb.GetFileRequest(id=stored_a.id), metadata=b)) == hidden
    assert _refused(lambda: trainer.files.DeleteFile(fpb.DeleteFileRequest(id=stored_a.id), metadata=b)) == hidden
    assert stored_a.id not in {f.id for f in trainer.files.ListFiles(fpb.ListFilesRequest(), metadata=b).files}
    offset = trainer.files.GetUploadOffset(fpb.GetUploadOffsetRequest(sha256=stored_a.sha256, bytes=len(content)),
                                           metadata=b)
    assert offset.committed_bytes == 0 and not offset.file_id  # A's copy is not B's
    code, details = _refused(lambda: _create(trainer, keys.b, training_file=stored_a.id))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == f"training_file: no file {stored_a.id!r}"

    stored_b = _upload(trainer, keys.b, content)  # the same bytes: B's own file
    assert stored_b.id != stored_a.id
    trainer.files.DeleteFile(fpb.DeleteFileRequest(id=stored_b.id), metadata=b)
    assert trainer.files.GetFile(fpb.GetFileRequest(id=stored_a.id), metadata=a).sha256 == stored_a.sha256
    admin_files = trainer.files.ListFiles(fpb.ListFilesRequest(), metadata=_bearer(keys.admin)).files
    assert stored_a.id in {f.id for f in admin_files}
    trainer.files.DeleteFile(fpb.DeleteFileRequest(id=stored_a.id), metadata=a)


def test_client_request_ids_are_scoped_per_project(trainer) -> None:
    keys = trainer.keys
    first = _create(trainer, keys.a, client_request_id="same")
    again = _create(trainer, keys.a, client_request_id="same")
    other = _create(trainer, keys.admin, client_request_id="same",
                    training_file=str(trainer.data_root / "team-a" / "ds" / "train.jsonl"))
    assert first.id == again.id and other.id != first.id
    for job_id, key in ((first.id, keys.a), (other.id, keys.admin)):
        trainer.jobs.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job_id), metadata=_bearer(key))


def test_active_jobs_quota_trips_at_the_limit_and_frees_when_a_job_ends(trainer) -> None:
    keys = trainer.keys
    active = [j.id for j in trainer.store.list_jobs([s for s in JobStatus if not s.is_terminal], page_size=100)[0]
              if j.project == "team-a"]
    for job_id in active:  # left by other tests
        trainer.store.transition(job_id, JobStatus.CANCELLED, "test reset")
    jobs = [_create(trainer, keys.a) for _ in range(MAX_ACTIVE_JOBS)]
    code, details = _refused(lambda: _create(trainer, keys.a))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"limit of {MAX_ACTIVE_JOBS}" in details and "--max-active-jobs-per-project" in details
    assert _create(trainer, keys.admin, training_file=str(trainer.data_root / "team-a" / "ds" / "train.jsonl"))
    trainer.jobs.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=jobs[0].id), metadata=_bearer(keys.a))
    replacement = _create(trainer, keys.a)  # a cancelled job frees its place
    assert _refused(lambda: _create(trainer, keys.a))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    _end(trainer, jobs[1].id, JobStatus.FAILED)  # so does one that ends on its own
    last = _create(trainer, keys.a)
    for job in (replacement, last):
        trainer.jobs.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id), metadata=_bearer(keys.a))


def test_upload_quota_trips_at_the_limit_and_frees_when_a_file_is_deleted(trainer) -> None:
    b = _bearer(trainer.keys.b)
    for stored in trainer.files.ListFiles(fpb.ListFilesRequest(page_size=100), metadata=b).files:
        trainer.files.DeleteFile(fpb.DeleteFileRequest(id=stored.id), metadata=b)
    line = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    big = line * (MAX_PROJECT_UPLOAD_BYTES * 2 // 3 // len(line))
    first = _upload(trainer, trainer.keys.b, big)
    code, details = _refused(lambda: _upload(trainer, trainer.keys.b, big + line))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"limit of {MAX_PROJECT_UPLOAD_BYTES} bytes" in details and "--max-upload-bytes-per-project" in details
    other = _upload(trainer, trainer.keys.a, big + line)  # another project's quota is its own
    trainer.files.DeleteFile(fpb.DeleteFileRequest(id=other.id), metadata=_bearer(trainer.keys.a))
    trainer.files.DeleteFile(fpb.DeleteFileRequest(id=first.id), metadata=b)
    again = _upload(trainer, trainer.keys.b, big + line)
    assert again.bytes == len(big + line)
    trainer.files.DeleteFile(fpb.DeleteFileRequest(id=again.id), metadata=b)


def test_deleting_a_file_an_admin_job_uses_does_not_name_that_job(trainer) -> None:
    line = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    stored = _upload(trainer, trainer.keys.a, line * 8, "admin-uses.jsonl")
    job = _create(trainer, trainer.keys.admin, training_file=stored.id)
    try:
        code, details = _refused(lambda: trainer.files.DeleteFile(fpb.DeleteFileRequest(id=stored.id),
                                                                   metadata=_bearer(trainer.keys.a)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "1 job(s)" in details and job.id not in details
    finally:
        trainer.jobs.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id), metadata=_bearer(trainer.keys.admin))
    trainer.files.DeleteFile(fpb.DeleteFileRequest(id=stored.id), metadata=_bearer(trainer.keys.a))


def test_paths_outside_the_roots_are_refused_without_saying_what_exists(trainer, tiny_model_dir: Path) -> None:
    keys = trainer.keys
    root_a = trainer.data_root / "team-a"
    (root_a / "escape").symlink_to(trainer.outside)  # inside the root, pointing out
    (trainer.models_dir / "escape").symlink_to(tiny_model_dir)
    try:
        outside_train = str(trainer.outside / "ds" / "train.jsonl")
        for field, value in (("training_file", outside_train), ("training_file", "escape/ds/train.jsonl"),
                             ("training_file", "../team-b/x.jsonl"), ("training_file", "/etc/passwd"),
                             ("validation_file", outside_train),
                             ("training_file", str(trainer.outside / "ds" / "nothing-here.jsonl"))):
            code, details = _refused(lambda: _create(trainer, keys.a, **{field: value}))  # noqa: B023
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details == f"{field}: must be under this project's directory of the data root (--data-root)"
        for model in (str(tiny_model_dir), "escape", "../outside", "/"):
            code, details = _refused(lambda: _create(trainer, keys.a, model=model))  # noqa: B023
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details == "model: must be a name or path under the models directory (--models-dir)"
        # inside the roots, by relative name or absolute path, symlinks within the root allowed
        (root_a / "alias").symlink_to(root_a / "ds")
        job = _create(trainer, keys.a, training_file="alias/train.jsonl",
                      model=str(trainer.models_dir / "tiny"))
        trainer.jobs.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id), metadata=_bearer(keys.a))
        stored = trainer.store.get_job(job.id).spec["resolved_files"]["training_file"]
        assert stored["path"] == str((root_a / "ds" / "train.jsonl").resolve())  # the worker reads no symlink
    finally:
        for link in (root_a / "escape", root_a / "alias", trainer.models_dir / "escape"):
            link.unlink(missing_ok=True)


def test_every_mutating_call_writes_one_audit_line_without_the_key(trainer, caplog) -> None:
    keys = trainer.keys
    with caplog.at_level(logging.INFO):
        job = _create(trainer, keys.a)
        trainer.jobs.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id), metadata=_bearer(keys.a))
        _refused(lambda: trainer.jobs.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id),
                                                          metadata=_bearer(keys.b)))
        stored = _upload(trainer, keys.a, b'{"messages": []}\n', filename="audit.jsonl")
        trainer.files.DeleteFile(fpb.DeleteFileRequest(id=stored.id), metadata=_bearer(keys.a))
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if r.name == "trainer_service.audit"]) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "trainer_service.audit"]
    key_a, key_b = keys.entries[0]["id"], keys.entries[1]["id"]
    assert [(line["audit"], line["key_id"], line["project"], line["outcome"], line.get("job_id", line.get("file_id")))
            for line in lines] == [
        ("CreateFineTuningJob", key_a, "team-a", "OK", job.id),
        ("CancelFineTuningJob", key_a, "team-a", "OK", job.id),
        ("CancelFineTuningJob", key_b, "team-b", "NOT_FOUND", job.id),
        ("UploadFile", key_a, "team-a", "OK", stored.id),
        ("DeleteFile", key_a, "team-a", "OK", stored.id),
    ]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert all(key not in everything for key in (keys.a, keys.b, keys.admin))


def test_the_per_key_rate_limit_answers_resource_exhausted(tmp_path: Path) -> None:
    key, entry = _key_entry("team-a")
    other, other_entry = _key_entry("team-b")
    _write_keys(tmp_path / "keys.json", [entry, other_entry])
    jobs = JobService(JobStore(tmp_path / "jobs.sqlite3"))
    # A clock that stands still: no token comes back between the calls, however slowly a loaded machine runs them.
    auth = ClientAuth(KeyStore(tmp_path / "keys.json"), KeyRateLimiter(rate_per_s=0.5, burst=3, clock=lambda: 0.0))
    running = create_server(jobs, "127.0.0.1:0", max_message_bytes=1024 * 1024, auth=auth)
    running.set_serving(True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = trainer_pb2_grpc.FineTuningServiceStub(channel)
            for _ in range(3):
                stub.ListFineTuningJobs(pb.ListFineTuningJobsRequest(), metadata=_bearer(key), timeout=5)
            code, details = _refused(lambda: stub.ListFineTuningJobs(pb.ListFineTuningJobsRequest(),
                                                                     metadata=_bearer(key), timeout=5))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--requests-per-second-per-key" in details
            stub.ListFineTuningJobs(pb.ListFineTuningJobsRequest(), metadata=_bearer(other), timeout=5)  # its own
    finally:
        running.server.stop(None)


def test_concurrent_calls_of_two_projects_each_see_only_their_own(trainer) -> None:
    """Each call's key reaches its own handler however calls interleave on the server's event loop (uploads read
    the caller after awaiting the stream's first message)."""
    keys = {"team-a": trainer.keys.a, "team-b": trainer.keys.b}
    mine = {"team-a": _create(trainer, keys["team-a"]).id,
            "team-b": _create(trainer, keys["team-b"], training_file="own/train.jsonl").id}

    def calls(project: str, round_: int) -> None:
        key = keys[project]
        listed = trainer.jobs.ListFineTuningJobs(pb.ListFineTuningJobsRequest(page_size=100), metadata=_bearer(key))
        assert mine[project] in {j.id for j in listed.jobs}
        assert not {j.id for j in listed.jobs} & set(mine.values()) - {mine[project]}
        content = f'{{"messages": [], "n": "{project}-{round_}"}}\n'.encode()
        stored = _upload(trainer, key, content, filename=f"{project}-{round_}.jsonl")
        assert {f.id for f in trainer.files.ListFiles(fpb.ListFilesRequest(page_size=100),
                                                      metadata=_bearer(key)).files} >= {stored.id}
        other = "team-b" if project == "team-a" else "team-a"
        code, _ = _refused(lambda: trainer.files.GetFile(fpb.GetFileRequest(id=stored.id),
                                                         metadata=_bearer(keys[other])))
        assert code == grpc.StatusCode.NOT_FOUND
        trainer.files.DeleteFile(fpb.DeleteFileRequest(id=stored.id), metadata=_bearer(key))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(calls, ["team-a", "team-b"] * 6, range(12)))
    for project, job_id in mine.items():
        trainer.jobs.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job_id), metadata=_bearer(keys[project]))
