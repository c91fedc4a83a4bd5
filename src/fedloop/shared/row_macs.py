"""Row MACs: an HMAC-SM3 over each row's plain columns, checked whenever the row is read.

Whoever can write a party's SQLite file but does not hold its key files can
change no authenticated column of any row without the next read naming the row
(CryptoError). The key is derived from the party's secret keys and never stored
in the database. Both parties use this: the tenant's store (src/fedloop/client/store) and
HQ's registry (src/fedloop/server/registry.py), each with its own table of authenticated
columns (the row's key column first). Deleting a row is not a change of a row:
the audit log, which records every move in the same transaction, is where a
deletion shows.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager

from fedloop.shared.audit import AuditLog
from fedloop.shared.crypto import CryptoError, hmac_sm3

# The tables of every party's database that carry no row MAC, and what protects them instead.
UNMACED_EVERYWHERE = {
    "audit": "an HMAC-SM3 chain (src/fedloop/shared/audit.py)",
    "audit_chain": "a marker that the chain is keyed; dropping it is reported as an audit entry",
    "sqlite_sequence": "SQLite's own counters of AUTOINCREMENT keys",
}


class RowAuthenticator:
    """The row MACs of one database connection, over `columns` (table -> authenticated columns, key first)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        key: bytes,
        columns: Mapping[str, tuple[str, ...]],
        atomic: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self.db = db
        self._key = key
        self._columns = columns
        self._atomic = atomic  # a write unit: the caller's transaction, or one of its own

    def row_mac(self, table: str, row: sqlite3.Row | Mapping[str, object]) -> bytes:
        """The HMAC of a row's authenticated columns, read by name (bytes as hex)."""
        fields = [row[column] for column in self._columns[table]]
        plain = [value.hex() if isinstance(value, bytes) else value for value in fields]
        return hmac_sm3(self._key, json.dumps([table, *plain], separators=(",", ":")).encode())

    def check(self, table: str, row: sqlite3.Row) -> sqlite3.Row:
        """`row`, if its `row_mac` matches its authenticated columns; CryptoError naming them otherwise."""
        mac = row["row_mac"]
        if mac is None or not hmac.compare_digest(self.row_mac(table, row), mac):
            raise CryptoError(
                f"row {table}/{row[self._columns[table][0]]} failed its integrity check: its plain fields "
                f"({', '.join(self._columns[table][1:])}) were changed outside fedloop"
            )
        return row

    def checked_rows(
        self, table: str, where: str = "1", params: Sequence[object] = (), order: str = "rowid"
    ) -> list[sqlite3.Row]:
        """Every row of `table` matching the fixed condition `where` in the fixed `order`, each checked."""
        rows = self.db.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY {order}", tuple(params)).fetchall()
        return [self.check(table, row) for row in rows]

    def checked_row(self, table: str, where: str, params: Sequence[object] = ()) -> sqlite3.Row | None:
        """The one row of `table` matching `where` (checked), or None."""
        row = self.db.execute(f"SELECT * FROM {table} WHERE {where}", tuple(params)).fetchone()
        return None if row is None else self.check(table, row)

    def set_row_mac(self, table: str, key: object) -> None:
        """Recompute a row's MAC after fedloop changed its plain columns (the row named by its key column)."""
        key_column = self._columns[table][0]
        row = self.db.execute(f"SELECT rowid FROM {table} WHERE {key_column} = ?", (key,)).fetchone()
        self.mac_row(table, row[0])

    def mac_row(self, table: str, rowid: int) -> None:
        """(Re)compute the MAC of the row with this rowid from its columns as stored."""
        row = self.db.execute(f"SELECT * FROM {table} WHERE rowid = ?", (rowid,)).fetchone()
        self.db.execute(f"UPDATE {table} SET row_mac = ? WHERE rowid = ?", (self.row_mac(table, row), rowid))

    def insert(self, table: str, columns: Mapping[str, object], conflict: str = "") -> bool:
        """Insert one authenticated row, its columns by name, with its MAC in the same statement (a reader on this
        connection never sees the row without it); False when `conflict` ("OR IGNORE") kept an existing row. A
        sequence key left out is the next one, taken in the same write unit."""
        with self._atomic():
            key = self._columns[table][0]
            row = dict(columns) if key in columns else {key: self._next_sequence(table, key), **columns}
            names = [*row, "row_mac"]
            cursor = self.db.execute(
                f"INSERT {conflict} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [*row.values(), self.row_mac(table, row)],
            )
            return cursor.rowcount == 1

    def _next_sequence(self, table: str, key: str) -> int:
        """The next AUTOINCREMENT value of `table`: above every key it ever handed out, deleted rows' too."""
        (highest,) = self.db.execute(f"SELECT COALESCE(MAX({key}), 0) FROM {table}").fetchone()
        handed_out = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        return max(int(highest), int(handed_out[0]) if handed_out else 0) + 1

    def authenticate_old_rows(self, audit: AuditLog) -> None:
        """A database from before row MACs (a table without the column): add it and MAC the rows as they are, once,
        recorded in the audit log. Only a missing column triggers this; a MAC cleared with SQL fails its check."""
        missing = [
            table
            for table in self._columns
            if "row_mac" not in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
        ]
        if not missing:
            return
        added = 0
        with self._atomic():
            for table in missing:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN row_mac BLOB")
                for (rowid,) in self.db.execute(f"SELECT rowid FROM {table}").fetchall():
                    self.mac_row(table, rowid)
                    added += 1
            audit.append(
                "fedloop", "store.row-macs", f"{added} rows from before row MACs authenticated ({', '.join(missing)})"
            )
