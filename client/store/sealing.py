"""How a tenant's store protects its rows: SM4-GCM per value, SM3 HMAC per row.

Each encrypted value carries its key number and nonce and is bound to
`table/column/row id` as associated data, so a value copied into another row
or column fails to decrypt. Each row of drafts, outcomes and samples carries an
HMAC over its plain columns, so an SQL edit of a weight, a pool or an action is
caught when the row is read.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
from collections.abc import Mapping, Sequence

from fedloop.client.store.schema import MACED_COLUMNS
from fedloop.client.store_api import ChatMessage
from fedloop.shared.crypto import CryptoError, hmac_sm3
from fedloop.shared.storage_keys import StorageKeyring


class RowSealer:
    """Encryption of values and authentication of rows for one store's connection."""

    def __init__(self, db: sqlite3.Connection, keys: StorageKeyring, pseudonym_key: bytes) -> None:
        self.db = db
        self.keys = keys  # replaced on rotation (FeedbackStore.use_keys)
        self._row_key = hmac_sm3(pseudonym_key, b"fedloop/row-mac/1")

    def seal(self, table: str, column: str, row_id: str, value: str | bytes | None) -> bytes | None:
        """`value` encrypted for `table/column/row_id` (None stays None)."""
        if value is None:
            return None
        data = value.encode() if isinstance(value, str) else value
        return self.keys.seal(data, f"{table}/{column}/{row_id}".encode())

    def seal_messages(self, table: str, column: str, row_id: str, messages: Sequence[ChatMessage]) -> bytes | None:
        """A conversation encrypted as JSON for `table/column/row_id` (none stays NULL)."""
        return self.seal(table, column, row_id, json.dumps(list(messages), ensure_ascii=False)) if messages else None

    def open_messages(self, table: str, column: str, row_id: str, sealed: bytes | None) -> tuple[ChatMessage, ...]:
        """A sealed conversation, decrypted (NULL: none, as in rows from before conversations were kept)."""
        text = self.open_text(table, column, row_id, sealed)
        return tuple(json.loads(text)) if text else ()

    def open_text(self, table: str, column: str, row_id: str, sealed: bytes | None) -> str | None:
        """A sealed text value, decrypted (None stays None)."""
        return None if sealed is None else self.open_bytes(table, column, row_id, sealed).decode()

    def open_bytes(self, table: str, column: str, row_id: str, sealed: bytes) -> bytes:
        """A sealed binary value, decrypted."""
        return self.keys.open(sealed, f"{table}/{column}/{row_id}".encode())

    def row_mac(self, table: str, row: sqlite3.Row | Mapping[str, object]) -> bytes:
        """The HMAC of a row's authenticated columns, read by name."""
        fields = [row[column] for column in MACED_COLUMNS[table]]
        return hmac_sm3(self._row_key, json.dumps([table, *fields], separators=(",", ":")).encode())

    def check(self, table: str, row: sqlite3.Row) -> sqlite3.Row:
        """`row`, if its `row_mac` matches its authenticated columns; CryptoError naming them otherwise."""
        mac = row["row_mac"]
        if mac is None or not hmac.compare_digest(self.row_mac(table, row), mac):
            raise CryptoError(
                f"row {table}/{row[MACED_COLUMNS[table][0]]} failed its integrity check: its plain fields "
                f"({', '.join(MACED_COLUMNS[table][1:])}) were changed outside fedloop"
            )
        return row

    def checked_rows(self, table: str, where: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        """Every row of `table` matching the fixed condition `where`, each checked against its row MAC."""
        rows = self.db.execute(f"SELECT * FROM {table} WHERE {where}", tuple(params)).fetchall()
        return [self.check(table, row) for row in rows]

    def set_row_mac(self, table: str, key: str) -> None:
        """Recompute a row's MAC after a change of its plain columns."""
        key_column = MACED_COLUMNS[table][0]
        row = self.db.execute(f"SELECT * FROM {table} WHERE {key_column} = ?", (key,)).fetchone()
        self.db.execute(f"UPDATE {table} SET row_mac = ? WHERE {key_column} = ?", (self.row_mac(table, row), key))

    def insert(self, table: str, columns: Mapping[str, object]) -> None:
        """Insert one authenticated row: its columns by name, and the MAC of its plain ones."""
        names = [*columns, "row_mac"]
        values = [*columns.values(), self.row_mac(table, columns)]
        self.db.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values)
