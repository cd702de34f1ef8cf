"""Dataset formats the trainer accepts, each loaded into `Conversation`s. See `load_dataset`."""

from .errors import DatasetFormatError
from .loader import DatasetFormat, detect_format, load_dataset
from .table import ColumnMapping
from .types import Conversation, ImagePart, ImageRef, Message, TextPart

__all__ = [
    "ColumnMapping", "Conversation", "DatasetFormat", "DatasetFormatError", "ImagePart", "ImageRef", "Message",
    "TextPart", "detect_format", "load_dataset",
]
