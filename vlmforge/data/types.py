"""The in-memory form every dataset format is loaded into: a conversation of text and image parts."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

Role = Literal["system", "user", "assistant"]

# slots: a million-sample dataset holds several million of these objects; a __dict__ each would double that.


@dataclass(frozen=True, slots=True, init=False)
class ImageRef:
    """An image that is read only when needed: a file already confined to the dataset directory, or bytes.
    The file is kept as a string (`location`): a Path per sample costs more than the whole rest of loading."""

    location: str | None
    data: bytes | None

    def __init__(self, path: str | os.PathLike[str] | None = None, data: bytes | None = None):
        if (path is None) == (data is None):
            raise ValueError("ImageRef needs exactly one of path or data")
        object.__setattr__(self, "location", None if path is None else os.fspath(path))
        object.__setattr__(self, "data", data)

    @property
    def path(self) -> Path | None:
        return None if self.location is None else Path(self.location)

    def open(self) -> Image.Image:
        source = self.location if self.location is not None else io.BytesIO(self.data)  # type: ignore[arg-type]
        with Image.open(source) as image:
            return image.convert("RGB")


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    image: ImageRef


Part = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        parts = self.parts
        if len(parts) == 1 and type(parts[0]) is TextPart:  # most turns: no join, no generator
            return parts[0].text
        return "".join(part.text for part in parts if isinstance(part, TextPart))

    @property
    def images(self) -> list[ImageRef]:
        return [part.image for part in self.parts if isinstance(part, ImagePart)]


@dataclass(frozen=True, slots=True)
class Conversation:
    """One training / evaluation sample. The last message is the assistant's reference answer."""

    messages: tuple[Message, ...]
    source: str = field(default="", compare=False)  # "file:line", for error messages and reports

    @property
    def prompt(self) -> tuple[Message, ...]:
        """Everything before the final assistant answer: what a model is asked at evaluation time."""
        return self.messages[:-1]

    @property
    def reference_answer(self) -> str:
        return self.messages[-1].text

    @property
    def question(self) -> str:
        return self.messages[-2].text

    @property
    def images(self) -> list[ImageRef]:
        return [image for message in self.messages for image in message.images]
