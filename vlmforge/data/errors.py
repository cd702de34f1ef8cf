"""The one error a dataset loader raises: it names the file, the line (or row) and the field."""

from __future__ import annotations

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

