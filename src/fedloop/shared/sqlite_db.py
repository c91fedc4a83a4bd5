"""SQLite connections as fedloop uses them: WAL, full fsync on commit, foreign keys on, a deliberate busy timeout.

Several processes write one file (a tenant's service and its Flower ClientApp; an operator command). A writer
that finds the file locked waits up to the busy timeout, then gets `DatabaseBusy`, which services answer as
"unavailable, retry" (503 + Retry-After on the draft endpoint, UNAVAILABLE over gRPC); nothing is half-written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 5.0  # how long a writer waits for another to finish before it is told the database is busy


class DatabaseBusy(Exception):
    """Another writer held the database longer than the busy timeout; nothing was written: retry."""


class DatabaseFileError(Exception):
    """A database file is not a readable SQLite database (cut short, overwritten or of another kind)."""


def open_database(path: Path, schema: str, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Open (creating if needed) the database at `path` in autocommit mode and apply `schema`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
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
    """BEGIN IMMEDIATE (take the write lock now), COMMIT on success, ROLLBACK on any exception.

    DatabaseBusy when another writer kept the lock past the busy timeout.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            raise DatabaseBusy(f"the database is busy: another writer held it ({err})") from None
        raise
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextmanager
def write_unit(db: sqlite3.Connection) -> Iterator[None]:
    """The caller's open transaction on `db`, or an immediate one of its own."""
    if db.in_transaction:
        yield
        return
    with immediate_transaction(db):
        yield
