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

from fedloop.client.store.api import ChatMessage
from fedloop.client.store.schema import MACED_COLUMNS
from fedloop.shared.crypto import hmac_sm3
from fedloop.shared.row_macs import RowAuthenticator
from fedloop.shared.storage_keys import StorageKeyring


class RowCipher(RowAuthenticator):
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

    def encrypt(self, table: str, column: str, row_id: str, value: str | bytes | None) -> bytes | None:
        """`value` encrypted for `table/column/row_id` (None stays None)."""
        if value is None:
            return None
        data = value.encode() if isinstance(value, str) else value
        return self.keys.encrypt(data, f"{table}/{column}/{row_id}".encode())

    def encrypt_messages(self, table: str, column: str, row_id: str, messages: Sequence[ChatMessage]) -> bytes | None:
        """A conversation encrypted as JSON for `table/column/row_id` (none stays NULL)."""
        return self.encrypt(table, column, row_id, json.dumps(list(messages), ensure_ascii=False)) if messages else None

    def decrypt_messages(
        self, table: str, column: str, row_id: str, encrypted: bytes | None
    ) -> tuple[ChatMessage, ...]:
        """An encrypted conversation, decrypted (NULL: none, as in rows from before conversations were kept)."""
        text = self.decrypt_text(table, column, row_id, encrypted)
        return tuple(json.loads(text)) if text else ()

    def decrypt_text(self, table: str, column: str, row_id: str, encrypted: bytes | None) -> str | None:
        """An encrypted text value, decrypted (None stays None)."""
        return None if encrypted is None else self.decrypt_bytes(table, column, row_id, encrypted).decode()

    def decrypt_bytes(self, table: str, column: str, row_id: str, encrypted: bytes) -> bytes:
        """An encrypted binary value, decrypted."""
        return self.keys.decrypt(encrypted, f"{table}/{column}/{row_id}".encode())
