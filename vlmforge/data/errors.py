"""The one error a dataset loader raises: it names the file, the line (or row) and the field."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DatasetFormatError(ValueError):
    def __init__(
        self, path: Path | str, message: str, *, line: int | None = None, field: str | None = None, unit: str = "line"
    ):
        self.path = Path(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path.name
        if line is not None:
            where += f" {unit} {line}"
        if field:
            where += f", field {field}"
        super().__init__(f"{where}: {message}")


@contextmanager
def numbered_as(unit: str) -> Iterator[None]:
    """Re-labels errors raised inside as 'row N' / 'record N' for formats whose items are not file lines."""
    try:
        yield
    except DatasetFormatError as err:
        if err.line is None:
            raise
        raise DatasetFormatError(err.path, err.reason, line=err.line, field=err.field, unit=unit) from None
