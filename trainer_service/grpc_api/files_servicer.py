"""FilesService handlers (grpc.aio): convert at the edge, hand every blocking step (SQLite, disk, hashing,
extraction, reading artifacts) to the pool, and keep streams on the event loop. The caller's project goes to the
file service as a plain domain `Caller`."""

from __future__ import annotations

import asyncio
import contextlib

from google.protobuf.timestamp_pb2 import Timestamp

from vlmforge.trainer.v1 import files_pb2 as pb
from vlmforge.trainer.v1 import files_pb2_grpc

from ..errors import InvalidArgumentError
from ..files import FileService, StoredFile, UploadMetadata
from ..files.uploads import Upload
from .audited import audited
from .auth_interceptor import Callers
from .blocking import BlockingCalls
from .status_codes import grpc_errors
from .stream_limits import StreamLimits

_STATUS_TO_PB = {"uploaded": pb.FILE_STATUS_UPLOADED, "processed": pb.FILE_STATUS_PROCESSED,
                 "error": pb.FILE_STATUS_ERROR}
_PURPOSE_FROM_PB = {pb.FILE_PURPOSE_UNSPECIFIED: "fine-tune", pb.FILE_PURPOSE_FINE_TUNE: "fine-tune"}
_PURPOSE_TO_PB = {"fine-tune": pb.FILE_PURPOSE_FINE_TUNE}


class FilesServicer(files_pb2_grpc.FilesServiceServicer):
    def __init__(self, files: FileService, blocking: BlockingCalls, stream_limits: StreamLimits | None = None,
                 callers: Callers = Callers()):
        self.files = files
        self.blocking = blocking
        self.stream_limits = stream_limits
        self.callers = callers

    @grpc_errors
    @audited("file_id")
    async def UploadFile(self, request_iterator, context):  # noqa: N802 - gRPC's method names
        async with self._stream(context):
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("payload") != "metadata":
                raise InvalidArgumentError("metadata", "the first message of an upload must carry its metadata")
            started = await self.blocking(self.files.begin_upload, metadata_from_pb(first.metadata),
                                          self.callers.current())
            if isinstance(started, StoredFile):
                return file_to_pb(started)  # this content is stored already: the bytes are not needed
            try:
                await self._receive(request_iterator, started)
                stored = await asyncio.wrap_future(self.files.finish_upload_soon(started))
            finally:
                # Also after a broken stream: waits for a write still on the pool, keeps the partial for a resume.
                await asyncio.shield(self.blocking(started.close))
            return file_to_pb(stored)

    async def _receive(self, request_iterator, upload: Upload) -> None:
        """Writes the chunks with one write in flight while the next is received: the network and the disk
        overlap."""
        writing = None
        async for message in request_iterator:
            if message.WhichOneof("payload") != "chunk":
                raise InvalidArgumentError("metadata", "only the first message of an upload carries metadata")
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(self.blocking(upload.write, message.chunk))
            writing.add_done_callback(_retrieved)  # a broken stream never awaits its last write
        if writing is not None:
            await writing

    @grpc_errors
    async def GetUploadOffset(self, request, context):  # noqa: N802
        committed, existing = await self.blocking(self.files.committed_bytes, request.sha256, request.bytes,
                                                  self.callers.current())
        return pb.UploadOffset(committed_bytes=committed, file_id=existing.id if existing else "")

    @grpc_errors
    async def GetFile(self, request, context):  # noqa: N802
        return file_to_pb(await self.blocking(self.files.get, request.id, self.callers.current()))

    @grpc_errors
    async def ListFiles(self, request, context):  # noqa: N802
        purpose = _PURPOSE_FROM_PB.get(request.purpose) if request.purpose else None
        files, token = await self.blocking(self.files.list, purpose, page_size=request.page_size,
                                           page_token=request.page_token, caller=self.callers.current())
        return pb.ListFilesResponse(files=[file_to_pb(f) for f in files], next_page_token=token)

    @grpc_errors
    @audited("file_id")
    async def DeleteFile(self, request, context):  # noqa: N802
        deleted = await self.blocking(self.files.delete, request.id, self.callers.current())
        return pb.DeleteFileResponse(id=deleted.id, deleted=True)

    @grpc_errors
    async def DownloadJobArtifacts(self, request, context):  # noqa: N802
        async with self._stream(context):
            stream = await self.blocking(self.files.artifact_stream, request.job_id,
                                         include_merged_model=request.include_merged_model,
                                         caller=self.callers.current())
            pieces = iter(stream)
            try:
                while (piece := await self.blocking(next, pieces, None)) is not None:
                    yield pb.ArtifactChunk(data=piece)
            finally:
                await asyncio.shield(self.blocking(pieces.close))  # closes the file being read
            yield pb.ArtifactChunk(digest=pb.ArtifactDigest(sha256=stream.sha256, bytes=stream.bytes))

    def _stream(self, context):
        if self.stream_limits is None:
            return contextlib.nullcontext()
        return self.stream_limits.hold(context.peer())


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def metadata_from_pb(message: pb.UploadFileMetadata) -> UploadMetadata:
    if message.purpose not in _PURPOSE_FROM_PB:
        raise InvalidArgumentError("metadata.purpose", f"unknown purpose {message.purpose}")
    return UploadMetadata(filename=message.filename, purpose=_PURPOSE_FROM_PB[message.purpose],
                          sha256=message.sha256.lower(), bytes=message.bytes, resume_offset=message.resume_offset)


def file_to_pb(stored: StoredFile) -> pb.File:
    created_at = Timestamp()
    created_at.FromNanoseconds(int(stored.created_at * 1e9))
    message = pb.File(id=stored.id, bytes=stored.bytes, created_at=created_at, filename=stored.filename,
                      purpose=_PURPOSE_TO_PB[stored.purpose], status=_STATUS_TO_PB[stored.status],
                      status_details=stored.error_message or "", sha256=stored.sha256)
    if stored.record_count is not None:
        message.record_count = stored.record_count
    return message
