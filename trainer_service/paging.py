"""Pages of a table, newest first, keyed by the last row's (created_at, id): pages stay stable while rows are
added. Used by ListFineTuningJobs and ListFiles."""

from __future__ import annotations

from typing import Any

from .errors import InvalidArgumentError


def newest_first(query: str, params: list[Any], *, page_token: str, page_size: int) -> tuple[str, list[Any]]:
    """`query` (a `SELECT ... WHERE ...`) narrowed to the page after `page_token`, one row more than the page so
    the caller can tell whether another page follows."""
    if page_token:
        created_at, row_id = _decode(page_token)
        query += " AND (created_at < ? OR (created_at = ? AND id < ?))"
        params = [*params, created_at, created_at, row_id]
    return query + " ORDER BY created_at DESC, id DESC LIMIT ?", [*params, page_size + 1]


def page_and_token(items: list, page_size: int) -> tuple[list, str]:
    """The page (of what `newest_first` fetched) and the token of the next one ("" on the last page)."""
    page = items[:page_size]
    return page, f"{page[-1].created_at!r}/{page[-1].id}" if len(items) > page_size else ""


def _decode(token: str) -> tuple[float, str]:
    created_at, _, row_id = token.partition("/")
    try:
        return float(created_at), row_id
    except ValueError:
        raise InvalidArgumentError("page_token", "not a token this service issued") from None
