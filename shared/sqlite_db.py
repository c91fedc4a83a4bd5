"""SQLite connections as fedloop uses them: WAL, full fsync on commit, foreign keys on."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DatabaseFileError(Exception):
    """A database file is not a readable SQLite database (cut short, overwritten or of another kind)."""


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating if needed) the database at `path` in autocommit mode and apply `schema`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(schema)
    except sqlite3.DatabaseError as err:
        db.close()
        raise DatabaseFileError(
            f"{path} is not a readable SQLite database ({err}): it was cut short or "
            "overwritten; restore it from a backup, or move it away to start empty"
        ) from None
    return db


@contextmanager
def immediate_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock now), COMMIT on success, ROLLBACK on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
