"""How a tenant's store protects its rows: SM4-GCM per value, SM3 HMAC per row.

Each encrypted value carries its key number and nonce and is bound to
`table/column/row id` as associated data, so a value copied into another row
or column fails to decrypt. Each row of every table whose plain columns decide
anything (MACED_COLUMNS: drafts, outcomes, samples, the release pointer,
problems, the breaker, evaluations, installed versions, signals, events) carries
an HMAC over them, so an SQL edit of a weight, a pool, an action or a release is
caught when the row is read (src/fedloop/shared/row_macs.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from fedloop.client.store.schema import MACED_COLUMNS
from fedloop.client.store_api import ChatMessage
from fedloop.shared.crypto import hmac_sm3
from fedloop.shared.row_macs import RowAuthenticator
from fedloop.shared.storage_keys import StorageKeyring


class RowSealer(RowAuthenticator):
    """Encryption of values and authentication of rows (MACED_COLUMNS) for one store's connection."""

    def __init__(
        self,
        db: sqlite3.Connection,
        keys: StorageKeyring,
        pseudonym_key: bytes,
        atomic: Callable[[], AbstractContextManager[None]],
    ) -> None:
        super().__init__(db, hmac_sm3(pseudonym_key, b"fedloop/row-mac/1"), MACED_COLUMNS, atomic)
        self.keys = keys  # replaced on rotation (FeedbackStore.use_keys)

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
