"""The Files API on a real gRPC server (port 0): a 200 MB dataset archive uploaded over a stream that breaks
halfway and is resumed from the committed offset arrives byte for byte; the same content is stored once; the
upload cap answers RESOURCE_EXHAUSTED naming the setting; an unsafe archive is refused; a job trains on the
file id, the file cannot be deleted under it, and the job's adapter comes back as a tar whose sha256 matches and
that loads in transformers + peft."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest

from trainer_service.files import ArchiveLimits, FileLimits, FileService
from trainer_service.grpc_api.server import create_server
from trainer_service.jobs import JobService
from trainer_service.launcher import LocalLauncher
from trainer_service.store import JobStore
from vlmforge.trainer.v1 import files_pb2 as fpb
from vlmforge.trainer.v1 import files_pb2_grpc
from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

pytestmark = pytest.mark.slow

CHUNK_BYTES = 4 * 1024 * 1024
PADDING_BYTES = 200 * 1024 * 1024
MAX_UPLOAD_BYTES = 256 * 1024 * 1024


class _Service(NamedTuple):
    files_client: files_pb2_grpc.FilesServiceStub
    jobs_client: trainer_pb2_grpc.FineTuningServiceStub
    files: FileService
    root: Path
    channel: grpc.Channel


class _BrokenStream(Exception):
    """Raised by the request iterator: grpc cancels the call, as when a client's connection drops."""


@pytest.fixture(scope="module")
def archive(small_dataset_dir: Path, tmp_path_factory) -> Path:
    """The small dataset's train.jsonl and its images, plus 200 MB of random bytes (incompressible, so the
    compression-ratio check passes), as one plain tar: written once per module."""
    path = tmp_path_factory.mktemp("upload") / "charts.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(small_dataset_dir / "train.jsonl", "train.jsonl")
        tar.add(small_dataset_dir / "images" / "train", "images/train")
        padding = tarfile.TarInfo("images/padding.bin")
        padding.size = PADDING_BYTES
        tar.addfile(padding, io.BytesIO(os.urandom(PADDING_BYTES)))
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    store = JobStore(root / "jobs.sqlite3")
    files = FileService(root / "files", store, FileLimits(
        MAX_UPLOAD_BYTES, ArchiveLimits(max_extracted_bytes=MAX_UPLOAD_BYTES, max_members=1000,
                                        max_compression_ratio=50.0)))
    launcher = LocalLauncher(store, root, poll_interval_s=0.1)
    running = create_server(JobService(store, watch_poll_interval_s=0.05, files=files), "127.0.0.1:0",
                            max_message_bytes=4 * 1024 * 1024, files=files)
    launcher.start()
    running.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield _Service(files_pb2_grpc.FilesServiceStub(channel), trainer_pb2_grpc.FineTuningServiceStub(channel),
                       files, root, channel)
    running.server.stop(None)
    launcher.stop()
    files.close()


def _requests(meta: fpb.UploadFileMetadata, path: Path, *, break_at: int | None = None):
    yield fpb.UploadFileRequest(metadata=meta)
    with open(path, "rb") as source:
        source.seek(meta.resume_offset)
        offset = meta.resume_offset
        while chunk := source.read(CHUNK_BYTES):
            if break_at is not None and offset >= break_at:
                raise _BrokenStream
            yield fpb.UploadFileRequest(chunk=chunk)
            offset += len(chunk)


def _metadata(path: Path, **overrides) -> fpb.UploadFileMetadata:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(CHUNK_BYTES):
            digest.update(block)
    fields = dict(filename=path.name, purpose=fpb.FILE_PURPOSE_FINE_TUNE, sha256=digest.hexdigest(),
                  bytes=path.stat().st_size)
    return fpb.UploadFileMetadata(**{**fields, **overrides})


def _processed(files_client, file_id: str, timeout_s: float = 120) -> fpb.File:
    deadline = time.monotonic() + timeout_s
    while (current := files_client.GetFile(fpb.GetFileRequest(id=file_id))).status == fpb.FILE_STATUS_UPLOADED:
        assert time.monotonic() < deadline, "validation did not end"
        time.sleep(0.1)
    return current


@pytest.fixture(scope="module")
def resumed_upload(service, archive: Path):
    """Uploads the archive over a stream that breaks after ~half, then resumes from GetUploadOffset."""
    files_client = service.files_client
    meta = _metadata(archive)
    with pytest.raises(grpc.RpcError) as broken:
        files_client.UploadFile(_requests(meta, archive, break_at=meta.bytes // 2), timeout=120)
    assert broken.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
    committed = files_client.GetUploadOffset(fpb.GetUploadOffsetRequest(sha256=meta.sha256, bytes=meta.bytes))
    resumed = _metadata(archive, resume_offset=committed.committed_bytes)
    uploaded = files_client.UploadFile(_requests(resumed, archive), timeout=120)
    return meta, committed, uploaded


def test_a_broken_upload_resumes_from_the_committed_offset_and_arrives_byte_for_byte(service, archive,
                                                                                    resumed_upload) -> None:
    files_client, files = service.files_client, service.files
    meta, committed, uploaded = resumed_upload
    assert 0 < committed.committed_bytes < meta.bytes and committed.file_id == ""
    assert uploaded.id.startswith("file-") and uploaded.bytes == meta.bytes and uploaded.sha256 == meta.sha256
    assert uploaded.filename == "charts.tar"
    stored = files.content_path(files.get(uploaded.id))
    assert stored.stat().st_size == archive.stat().st_size
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == hashlib.sha256(archive.read_bytes()).hexdigest()
    processed = _processed(files_client, uploaded.id)
    assert processed.status == fpb.FILE_STATUS_PROCESSED, processed.status_details
    assert processed.record_count == 48


def test_the_same_content_uploaded_twice_is_stored_once(service, archive, resumed_upload) -> None:
    files_client, root = service.files_client, service.root
    meta, _, uploaded = resumed_upload
    offset = files_client.GetUploadOffset(fpb.GetUploadOffsetRequest(sha256=meta.sha256, bytes=meta.bytes))
    assert (offset.committed_bytes, offset.file_id) == (meta.bytes, uploaded.id)
    again = files_client.UploadFile(_requests(_metadata(archive, filename="again.tar"), archive), timeout=120)
    assert (again.id, again.filename) == (uploaded.id, "charts.tar")
    assert [p.name for p in (root / "files" / "blobs").iterdir()] == [meta.sha256]
    listed = files_client.ListFiles(fpb.ListFilesRequest(page_size=10))
    assert [f.id for f in listed.files].count(uploaded.id) == 1


def test_an_upload_over_the_cap_is_resource_exhausted_naming_the_setting(service, tmp_path) -> None:
    files_client = service.files_client
    meta = fpb.UploadFileMetadata(filename="huge.jsonl", sha256="0" * 64, bytes=MAX_UPLOAD_BYTES + 1)
    with pytest.raises(grpc.RpcError) as refused:
        files_client.UploadFile(iter([fpb.UploadFileRequest(metadata=meta)]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-upload-bytes" in refused.value.details()


def test_an_unsafe_archive_is_invalid_argument_and_not_stored(service, tmp_path) -> None:
    files_client = service.files_client
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        link = tarfile.TarInfo("images")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    with pytest.raises(grpc.RpcError) as refused:
        files_client.UploadFile(_requests(_metadata(path), path), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "evil.tar.gz: member 'images' is a symbolic link; links are refused"
    listed = files_client.ListFiles(fpb.ListFilesRequest(page_size=100))
    assert "evil.tar.gz" not in [f.filename for f in listed.files]


def test_a_job_on_a_file_id_trains_and_its_adapter_downloads_and_loads(service, resumed_upload, tiny_model_dir,
                                                                       tmp_path) -> None:
    files_client, jobs_client = service.files_client, service.jobs_client
    uploaded = _processed(files_client, resumed_upload[2].id)
    job = jobs_client.CreateFineTuningJob(pb.CreateFineTuningJobRequest(
        model=str(tiny_model_dir), training_file=uploaded.id, suffix="files",
        hyperparameters=pb.Hyperparameters(max_steps=2, batch_size=4, learning_rate=1e-3)))
    with pytest.raises(grpc.RpcError) as in_use:
        files_client.DeleteFile(fpb.DeleteFileRequest(id=uploaded.id))
    assert in_use.value.code() == grpc.StatusCode.FAILED_PRECONDITION and job.id in in_use.value.details()
    with pytest.raises(grpc.RpcError) as unfinished:
        list(files_client.DownloadJobArtifacts(fpb.DownloadJobArtifactsRequest(job_id=job.id)))
    assert unfinished.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    list(jobs_client.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id), timeout=240))
    final = jobs_client.GetFineTuningJob(pb.GetFineTuningJobRequest(id=job.id))
    assert final.status == pb.JOB_STATUS_SUCCEEDED, final.error.message

    chunks = list(files_client.DownloadJobArtifacts(fpb.DownloadJobArtifactsRequest(job_id=job.id), timeout=60))
    data = b"".join(c.data for c in chunks[:-1])
    assert all(c.WhichOneof("payload") == "data" for c in chunks[:-1]) and chunks[-1].HasField("digest")
    assert chunks[-1].digest.sha256 == hashlib.sha256(data).hexdigest() and chunks[-1].digest.bytes == len(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        tar.extractall(tmp_path / "downloaded", filter="data")
    adapter = tmp_path / "downloaded" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (adapter / "adapter_model.safetensors").read_bytes() == (
        Path(final.adapter_path) / "adapter_model.safetensors").read_bytes()

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_model_dir), adapter)
    assert any("lora_A" in name for name, _ in model.named_parameters())

    with_merged = files_client.DownloadJobArtifacts(fpb.DownloadJobArtifactsRequest(
        job_id=job.id, include_merged_model=True), timeout=60)
    with tarfile.open(fileobj=io.BytesIO(b"".join(c.data for c in with_merged)), mode="r:") as tar:
        names = set(tar.getnames())
    assert {"adapter/adapter_config.json", "merged_model/config.json"} <= names

    assert files_client.DeleteFile(fpb.DeleteFileRequest(id=uploaded.id)).deleted  # the job has ended
    with pytest.raises(grpc.RpcError) as gone:
        files_client.GetFile(fpb.GetFileRequest(id=uploaded.id))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def _limits() -> FileLimits:
    return FileLimits(1024 * 1024, ArchiveLimits(max_extracted_bytes=1024 * 1024, max_members=10,
                                                 max_compression_ratio=50.0))


def test_a_partial_upload_survives_a_trainer_restart(tmp_path: Path) -> None:
    from trainer_service.errors import FailedPreconditionError, InvalidArgumentError
    from trainer_service.files import UploadMetadata

    content = os.urandom(300_000)
    meta = UploadMetadata("train.jsonl", "fine-tune", hashlib.sha256(content).hexdigest(), len(content))
    store = JobStore(tmp_path / "jobs.sqlite3")
    before = FileService(tmp_path / "files", store, _limits())
    upload = before.begin_upload(meta)
    upload.write(content[:100_000])
    upload.close()  # the stream broke
    before.close()
    orphan = tmp_path / "files" / "blobs" / ("a" * 64)  # renamed into place, then the trainer died
    orphan.mkdir()
    abandoned = tmp_path / "files" / "partial" / f"{'b' * 64}-10.part"
    abandoned.write_bytes(b"12345")
    os.utime(abandoned, (time.time() - 8 * 24 * 3600,) * 2)

    after = FileService(tmp_path / "files", store, _limits())
    assert not orphan.exists() and not abandoned.exists()
    assert after.committed_bytes(meta.sha256, meta.bytes) == (100_000, None)
    with pytest.raises(FailedPreconditionError, match="resume_offset 200000 is past the 100000 bytes"):
        after.begin_upload(UploadMetadata(**{**meta.__dict__, "resume_offset": 200_000}))
    resumed = after.begin_upload(UploadMetadata(**{**meta.__dict__, "resume_offset": 100_000}))
    resumed.write(content[100_000:])
    stored = after.finish_upload(resumed)
    assert after.content_path(stored).read_bytes() == content
    held, existing = after.committed_bytes(meta.sha256, meta.bytes)
    assert (held, existing.id) == (meta.bytes, stored.id)  # its status moves on in the background

    wrong = UploadMetadata("other.jsonl", "fine-tune", "f" * 64, 10)
    upload = after.begin_upload(wrong)
    upload.write(b"0123456789")
    with pytest.raises(InvalidArgumentError, match="hash to .*, not f{64}; upload again from 0"):
        after.finish_upload(upload)
    assert after.committed_bytes(wrong.sha256, wrong.bytes) == (0, None), "a corrupt partial is not kept"
    after.close()


def test_files_list_newest_first_in_stable_pages(tmp_path: Path) -> None:
    from trainer_service.files import UploadMetadata

    files = FileService(tmp_path / "files", JobStore(tmp_path / "jobs.sqlite3"), _limits())
    ids = []
    for index in range(3):
        content = json.dumps({"n": index}).encode() + b"\n"
        upload = files.begin_upload(UploadMetadata(f"{index}.jsonl", "fine-tune", hashlib.sha256(content).hexdigest(),
                                                   len(content)))
        upload.write(content)
        ids.append(files.finish_upload(upload).id)
    first, token = files.list(page_size=2)
    second, last = files.list(page_size=2, page_token=token)
    assert [f.id for f in first + second] == ids[::-1] and token and not last
    files.close()


def test_get_upload_offset_refuses_a_key_that_is_not_a_digest(service) -> None:
    files_client = service.files_client
    with pytest.raises(grpc.RpcError) as refused:
        files_client.GetUploadOffset(fpb.GetUploadOffsetRequest(sha256="../../jobs.sqlite3", bytes=10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "sha256: must be the content's sha256 as 64 lowercase hex digits"


def test_reflection_lists_the_files_service(service) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(service.channel)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    assert "vlmforge.trainer.v1.FilesService" in {s.name for s in answer.list_services_response.service}


def test_a_bad_line_makes_the_file_an_error_naming_file_line_and_field(service, small_dataset_dir: Path) -> None:
    """An OpenAI fine-tuning JSONL (vision) with data: URL images, as OpenAI documents it; its second line has no
    assistant answer."""
    import base64

    image = (small_dataset_dir / "images" / "train" / "00000.png").read_bytes()
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    user = {"role": "user", "content": [{"type": "text", "text": "How many bars?"},
                                        {"type": "image_url", "image_url": {"url": url}}]}
    lines = [{"messages": [user, {"role": "assistant", "content": "5"}]}, {"messages": [user]}]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    meta = fpb.UploadFileMetadata(filename="vision.jsonl", sha256=hashlib.sha256(content).hexdigest(),
                                  bytes=len(content))
    uploaded = service.files_client.UploadFile(iter([fpb.UploadFileRequest(metadata=meta),
                                                     fpb.UploadFileRequest(chunk=content)]), timeout=30)
    failed = _processed(service.files_client, uploaded.id)
    assert failed.status == fpb.FILE_STATUS_ERROR and not failed.HasField("record_count")
    assert failed.status_details.startswith("vision.jsonl line 2, field messages"), failed.status_details


def test_one_stream_at_a_time_appends_to_a_content(tmp_path: Path) -> None:
    from trainer_service.errors import ConflictError
    from trainer_service.files import UploadMetadata
    from trainer_service.files.uploads import PartialUploads

    partials = PartialUploads(tmp_path / "partial", busy_wait_s=0.2)
    meta = UploadMetadata("train.jsonl", "fine-tune", "c" * 64, 10)
    first = partials.open(meta)
    with pytest.raises(ConflictError, match="another upload of this content"):
        partials.open(meta)
    first.write(b"01234")
    first.close()  # the first stream broke: the next one resumes where it stopped
    second = partials.open(UploadMetadata(**{**meta.__dict__, "resume_offset": 5}))
    assert second.offset == 5
    second.close()
