"""A column that changes a table's constraints (the job and file stores' `project`, which moved their UNIQUE
keys) cannot be added in place: SQLite cannot drop a constraint. Its documented procedure is create, copy, drop,
rename, in one transaction."""

from __future__ import annotations

import sqlite3


def has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    return column in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def rebuild_with_column(db: sqlite3.Connection, table: str, column: str, create_sql: str, columns: str,
                        indexes: tuple[str, ...]) -> None:
    """Rebuilds `table` from `create_sql` (a CREATE TABLE of `{name}`) unless it has `column` already; `columns`
    are the ones copied over, `indexes` are made again on the new table."""
    if has_column(db, table, column):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if not has_column(db, table, column):  # another process may have rebuilt it meanwhile
            staging = f"{table}_rebuilt"
            db.execute(create_sql.replace("{name}", staging))
            db.execute(f"INSERT INTO {staging} ({columns}) SELECT {columns} FROM {table}")
            db.execute(f"DROP TABLE {table}")
            db.execute(f"ALTER TABLE {staging} RENAME TO {table}")
            for index in indexes:
                db.execute(index)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
