"""Dataset formats the trainer accepts, each loaded into `Conversation`s. See `load_dataset` / `inspect_dataset`."""

from .detect import DatasetFormat
from .errors import DatasetFormatError
from .loader import DatasetSummary, detect_format, inspect_dataset, load_dataset
from .table import ColumnMapping
from .types import Conversation, ImagePart, ImageRef, Message, TextPart

__all__ = [
    "ColumnMapping", "Conversation", "DatasetFormat", "DatasetFormatError", "DatasetSummary", "ImagePart", "ImageRef",
    "Message", "TextPart", "detect_format", "inspect_dataset", "load_dataset",
]
