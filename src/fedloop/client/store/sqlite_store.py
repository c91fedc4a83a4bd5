"""The tenant's store on SQLite (WAL): its repositories on one connection, every text column SM4-GCM encrypted.

User and session ids are stored only as keyed SM3 HMAC pseudonyms. Writes
happen inside `transaction()`, so an ingested batch is stored whole or not at
all. `FeedbackStoreAPI` (src/fedloop/client/store/api.py) is the interface a PostgreSQL
implementation would fill.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedloop.client.store.drafts import SqliteDraftRepository
from fedloop.client.store.row_encryption import RowCipher
from fedloop.client.store.samples import SqliteSampleRepository
from fedloop.client.store.schema import ADDED_COLUMNS, ENCRYPTED_COLUMNS, SCHEMA
from fedloop.client.store.versions import SqliteVersionRepository
from fedloop.shared.audit import AuditLog, audit_key
from fedloop.shared.crypto import hmac_sm3
from fedloop.shared.sqlite_db import BUSY_TIMEOUT_S, immediate_transaction, open_database, write_unit
from fedloop.shared.storage_keys import KEY_TAG_POSITION, StorageKeyring


class FeedbackStore:
    """SQLite implementation of the tenant store (`FeedbackStoreAPI`)."""

    def __init__(
        self, path: Path, keys: StorageKeyring, pseudonym_key: bytes, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> None:
        self.path = path
        self._pseudonym_key = pseudonym_key
        self._busy_timeout_s = busy_timeout_s
        self._db = open_database(path, SCHEMA, busy_timeout_s)
        self._db.row_factory = sqlite3.Row  # every repository reads columns by name
        self._add_missing_columns()
        self._lock = threading.RLock()
        self._cipher = RowCipher(self._db, keys, pseudonym_key, self._atomic)
        self.audit_log = AuditLog(self._db, audit_key(pseudonym_key))
        self.drafts = SqliteDraftRepository(self._cipher)
        self.samples = SqliteSampleRepository(self._cipher, self._atomic)
        self.versions = SqliteVersionRepository(self._cipher)
        self._cipher.authenticate_old_rows(self.audit_log)
        self.audit_log.note_first_use("storage-key", [f"storage key {n}" for n in sorted(keys.keys)])

    def _columns(self, table: str) -> set[str]:
        return {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def _add_missing_columns(self) -> None:
        """A store from before a column was added gets it, empty (old drafts then have no recorded context)."""
        for table, column, kind in ADDED_COLUMNS:
            if column not in self._columns(table):
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def use_keys(self, keys: StorageKeyring) -> None:
        """Switch to a (rotated) keyring: new writes use its active key, old values stay readable."""
        self._cipher.keys = keys
        with self._lock:
            self.audit_log.note_first_use("storage-key", [f"storage key {n}" for n in sorted(keys.keys)])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside is committed together, or not at all."""
        with self._lock, immediate_transaction(self._db):
            yield

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        """A write unit: the caller's transaction if one is open on this connection, or one of its own."""
        with self._lock, write_unit(self._db):
            yield

    def writable(self, wait_s: float = 0.2) -> bool:
        """Whether a writer could take the store's write lock within `wait_s` (checked on a connection of its own)."""
        probe = sqlite3.connect(self.path, timeout=wait_s, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return True
        except sqlite3.Error:
            return False
        finally:
            probe.close()

    def pseudonym(self, identifier: str) -> str:
        """The stable keyed pseudonym under which a user or session id is stored."""
        return hmac_sm3(self._pseudonym_key, identifier.encode()).hex()[:32]

    def audit(self, actor: str, action: str, subject: str) -> None:
        """Append an entry to the chained audit log (never containing a secret or an original)."""
        with self._lock:
            self.audit_log.append(actor, action, subject)

    def reencrypt_batch(self, batch_size: int = 500) -> int:
        """Re-encrypt up to `batch_size` values encrypted with a non-active key; returns how many were done.

        Each batch is its own short transaction, so ingestion keeps running during a rotation.
        """
        done = 0
        keys = self._cipher.keys
        with self.transaction():
            for table, (key_expr, columns) in ENCRYPTED_COLUMNS.items():
                for column in columns:
                    rows = self._db.execute(
                        f"SELECT rowid AS row_number, {key_expr} AS row_key, {column} AS encrypted FROM {table} "
                        f"WHERE {column} IS NOT NULL AND substr({column}, {KEY_TAG_POSITION}, 2) != ? LIMIT ?",
                        (keys.active_tag(), batch_size - done),
                    ).fetchall()
                    for row in rows:
                        aad = f"{table}/{column}/{row['row_key']}".encode()
                        reencrypted = keys.encrypt(keys.decrypt(row["encrypted"], aad), aad)
                        self._db.execute(
                            f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (reencrypted, row["row_number"])
                        )
                        done += 1
                    if done >= batch_size:
                        return done
        return done

    def raw_connection(self) -> sqlite3.Connection:
        """The underlying connection, for read-only inspection in tools and tests."""
        return self._db
