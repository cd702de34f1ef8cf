"""`client.files`: upload (resumable, directories as tar) / retrieve / list / delete."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import grpc

from vlmforge.trainer.v1 import files_pb2 as files_pb

from . import _convert, types
from ._sources import MAX_CHUNK_BYTES, UploadSource, source_for
from .errors import TrainerError, from_rpc_error

if TYPE_CHECKING:
    from ._trainer import Trainer

# A broken stream (connection reset, trainer restart) resumes; anything else is the trainer's answer.
RESUME_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})


class Files:
    def __init__(self, client: Trainer):
        self._client = client

    def upload(self, path: str | os.PathLike, *, purpose: str = "fine-tune",
               progress: Callable[[types.UploadProgress], None] | None = None,
               chunk_bytes: int = MAX_CHUNK_BYTES, max_attempts: int = 5,
               exclude: Iterable[str] = ()) -> types.FileObject:
        """Uploads a dataset file, or a directory (sent as `<name>.tar`, made on the fly), and returns its
        File; validation then runs on the trainer (status "uploaded" until "processed" or "error").

        The sha256 is computed first; content the trainer already holds is not sent again. A stream that
        breaks (UNAVAILABLE / ABORTED) resumes from the offset the trainer committed, up to `max_attempts`
        streams in all. `exclude`: paths inside a directory (relative, with "/") left out of its tar.
        `progress` is called before the first chunk and after every chunk handed to the stream."""
        if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be between 1 and {MAX_CHUNK_BYTES}")
        source = source_for(path, exclude=frozenset(exclude))
        purpose_pb = _convert.file_purpose_to_pb(purpose)
        stub = self._client.files_stub
        for attempt in range(1, max_attempts + 1):
            try:
                offset = self._client.unary(stub.GetUploadOffset, files_pb.GetUploadOffsetRequest(
                    sha256=source.sha256, bytes=source.size))
                if offset.file_id:  # stored already: no bytes to send
                    _report(progress, source.size, source.size, source.size)
                    return self.retrieve(offset.file_id)
                requests = _upload_requests(source, purpose_pb, offset.committed_bytes, chunk_bytes, progress)
                return _convert.file_from_pb(stub.UploadFile(requests, metadata=self._client.metadata))
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
            except TrainerError as error:  # from GetUploadOffset / GetFile
                failure = error
            if failure.code not in RESUME_CODES or attempt == max_attempts:
                raise failure
            time.sleep(min(0.2 * 2 ** (attempt - 1), 3.0))
        raise AssertionError("unreachable")

    def retrieve(self, file_id: str) -> types.FileObject:
        return _convert.file_from_pb(self._client.unary(self._client.files_stub.GetFile,
                                                        files_pb.GetFileRequest(id=file_id)))

    def list(self, *, purpose: str | None = None, page_size: int = 100) -> Iterator[types.FileObject]:
        """Every file, newest first, fetching pages as the iteration goes."""
        request = files_pb.ListFilesRequest(
            purpose=_convert.file_purpose_to_pb(purpose) if purpose else files_pb.FILE_PURPOSE_UNSPECIFIED,
            page_size=page_size)
        while True:
            page = self._client.unary(self._client.files_stub.ListFiles, request)
            yield from (_convert.file_from_pb(file) for file in page.files)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def delete(self, file_id: str) -> types.FileDeleted:
        answer = self._client.unary(self._client.files_stub.DeleteFile, files_pb.DeleteFileRequest(id=file_id))
        return types.FileDeleted(answer.id, answer.deleted)

    def wait_for_processing(self, file_id: str, *, poll_interval_s: float = 0.5,
                            timeout_s: float = 600.0) -> types.FileObject:
        """Polls until the trainer has validated the file ("processed" or "error") and returns it."""
        deadline = time.monotonic() + timeout_s
        while True:
            file = self.retrieve(file_id)
            if file.status != "uploaded" or time.monotonic() > deadline:
                return file
            time.sleep(poll_interval_s)


def _upload_requests(source: UploadSource, purpose: int, offset: int, chunk_bytes: int,
                     progress: Callable[[types.UploadProgress], None] | None) -> Iterator[files_pb.UploadFileRequest]:
    yield files_pb.UploadFileRequest(metadata=files_pb.UploadFileMetadata(
        filename=source.filename, purpose=purpose, sha256=source.sha256, bytes=source.size, resume_offset=offset))
    sent = offset
    _report(progress, sent, source.size, offset)
    for chunk in source.chunks(offset, chunk_bytes):
        yield files_pb.UploadFileRequest(chunk=chunk)
        sent += len(chunk)
        _report(progress, sent, source.size, offset)


def _report(progress, sent: int, total: int, resumed_from: int) -> None:
    if progress is not None:
        progress(types.UploadProgress(sent_bytes=sent, total_bytes=total, resumed_from=resumed_from))
