"""The Files API's domain: uploaded datasets (content addressed, resumable, validated once in the background),
safe archive extraction, and the tar stream of a finished job's artifacts. Knows nothing of gRPC."""

from .archive import ArchiveLimits
from .models import FilePurpose, FileStatus, StoredFile, UploadMetadata
from .service import FileService, FileLimits

__all__ = ["ArchiveLimits", "FileLimits", "FilePurpose", "FileService", "FileStatus", "StoredFile", "UploadMetadata"]
