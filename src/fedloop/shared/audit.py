"""An append-only, tamper-evident audit log: every entry is chained to the one before it by HMAC-SM3.

Entry n stores `digest_n = HMAC-SM3(audit key, digest_{n-1} || canonical [seq,
at, actor, action, subject])`. The audit key is derived from the party's
secret keys (never stored in the database), so someone who can write the
database but does not hold the key files cannot rebuild a chain after an edit.
Editing any field of any entry, deleting or reordering entries breaks the
chain at that point, and `verify` says where. An entry is chained only when
fedloop writes it, in the same transaction: an entry found without a digest is
tampering, never chained on open. A log written by an older fedloop (no chain
columns, or a plain SM3 chain) is chained, or verified under SM3 and
re-chained under the key, once, and the re-chaining is itself an entry. Deleting the
newest entries leaves a shorter but consistent chain: to catch that, keep the
head (`seq:digest`, printed by `fedloop audit verify`) somewhere else and pass
it back as `expected_head`. Entries never hold secrets or originals, only who
did what to which id, and why.

The log lives in the party's own SQLite database (the tenant's store, HQ's
registry), so an entry commits in the same transaction as the action it records.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedloop.shared.crypto import hmac_sm3, sm3_digest
from fedloop.shared.sqlite_db import write_unit

GENESIS = "0" * 64
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    subject TEXT NOT NULL, prev TEXT NOT NULL DEFAULT '', digest TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS audit_chain (keyed INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action."""

    seq: int
    at: float
    actor: str
    action: str
    subject: str
    prev: str
    digest: str


@dataclass(frozen=True)
class AuditVerdict:
    """The outcome of walking the chain: whether it holds, how far, and the first break if any."""

    ok: bool
    entries: int
    head: str  # "seq:digest" of the newest entry, to keep elsewhere
    problem: str | None = None


def audit_key(secret: bytes) -> bytes:
    """The audit chain's HMAC key, derived from a party secret that lives in its key files."""
    return hmac_sm3(secret, b"fedloop/audit-chain/1")


def entry_digest(key: bytes | None, prev: str, seq: int, at: float, actor: str, action: str, subject: str) -> str:
    """HMAC-SM3 under `key` (plain SM3 for a pre-key log: key None) over the previous digest and this entry."""
    body = (
        prev + json.dumps([seq, repr(at), actor, action, subject], ensure_ascii=False, separators=(",", ":"))
    ).encode()
    return (hmac_sm3(key, body) if key is not None else sm3_digest(body)).hex()


class AuditLog:
    """The chained audit table of one SQLite database (autocommit connection, as `open_database` makes)."""

    def __init__(self, db: sqlite3.Connection, key: bytes) -> None:
        self._db = db
        self._key = key
        db.executescript(AUDIT_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(audit)")}
        unchained = "digest" not in columns  # a log from before the chain existed: chained once, here
        for column in ("prev", "digest"):
            if column not in columns:
                db.execute(f"ALTER TABLE audit ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
        if unchained:
            self._chain_old_log()
        elif db.execute("SELECT keyed FROM audit_chain").fetchone() is None:
            self._key_the_chain()

    def _chain_old_log(self) -> None:
        """Once: chain a log from before the chain existed under the key, and record that."""
        (count,) = self._db.execute("SELECT COUNT(*) FROM audit").fetchone()

        def chain() -> None:
            self._chain_all("SELECT seq, at, actor, action, subject FROM audit ORDER BY seq")
            self._db.execute("DELETE FROM audit_chain")
            self._db.execute("INSERT INTO audit_chain VALUES (1)")

        self._write(chain)
        if count:
            self.append("fedloop", "audit.keyed", f"{count} entries from before the audit chain chained under its key")

    def _key_the_chain(self) -> None:
        """Once per database: re-chain an intact SM3 chain (older fedloop) under the key, and record that."""
        unkeyed = self._walk(None)
        if unkeyed.ok:
            self._write(lambda: self._chain_all("SELECT seq, at, actor, action, subject FROM audit ORDER BY seq"))
        self._write(lambda: self._db.execute("INSERT INTO audit_chain VALUES (1)"))
        if unkeyed.entries:
            self.append(
                "fedloop",
                "audit.keyed",
                f"{unkeyed.entries} SM3-chained entries re-chained under the audit key"
                if unkeyed.ok
                else f"SM3 chain was already broken: {unkeyed.problem}",
            )

    def _last_digest(self) -> str:
        row = self._db.execute("SELECT digest FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return row[0] if row and row[0] else GENESIS

    def _chain_all(self, query: str) -> None:
        """Chain every entry `query` selects (seq, at, actor, action, subject), oldest first."""
        for row in self._db.execute(query).fetchall():
            self._chain(*row)

    def _chain(self, seq: int, at: float, actor: str, action: str, subject: str) -> None:
        previous = self._db.execute(
            "SELECT digest FROM audit WHERE seq < ? ORDER BY seq DESC LIMIT 1", (seq,)
        ).fetchone()
        prev = previous[0] if previous else GENESIS
        self._db.execute(
            "UPDATE audit SET prev = ?, digest = ? WHERE seq = ?",
            (prev, entry_digest(self._key, prev, seq, at, actor, action, subject), seq),
        )

    def _write(self, work: Callable[[], object]) -> None:
        """Run `work` inside the caller's transaction, or in one of its own."""
        with write_unit(self._db):
            work()

    def append(self, actor: str, action: str, subject: str) -> None:
        """Record that `actor` did `action` to `subject` (never a secret or an original)."""

        def work() -> None:
            prev = self._last_digest()
            at = time.time()
            cursor = self._db.execute(
                "INSERT INTO audit (at, actor, action, subject, prev) VALUES (?, ?, ?, ?, ?)",
                (at, actor, action, subject, prev),
            )
            seq = int(cursor.lastrowid or 0)
            self._db.execute(
                "UPDATE audit SET digest = ? WHERE seq = ?",
                (entry_digest(self._key, prev, seq, at, actor, action, subject), seq),
            )

        self._write(work)

    def note_first_use(self, kind: str, key_names: list[str]) -> None:
        """Record, once each, that this party started using a key (key creation as this database sees it)."""
        seen = {row[0] for row in self._db.execute("SELECT subject FROM audit WHERE action = ?", (f"keys.{kind}",))}
        for name in key_names:
            if name not in seen:
                self.append("fedloop", f"keys.{kind}", name)

    def entries(self) -> list[AuditEntry]:
        """Every entry, oldest first."""
        rows = self._db.execute("SELECT seq, at, actor, action, subject, prev, digest FROM audit ORDER BY seq")
        return [AuditEntry(*row) for row in rows.fetchall()]

    def verify(self, expected_head: str | None = None) -> AuditVerdict:
        """Walk the chain from the start; report the first entry that does not follow from the one before."""
        return self._walk(self._key, expected_head)

    def _walk(self, key: bytes | None, expected_head: str | None = None) -> AuditVerdict:
        entries = self.entries()
        prev, expected_seq = GENESIS, None
        for entry in entries:
            if expected_seq is not None and entry.seq != expected_seq:
                return AuditVerdict(
                    False,
                    len(entries),
                    "",
                    f"entries {expected_seq}..{entry.seq - 1} are missing (deleted) before entry {entry.seq}",
                )
            if not entry.digest:
                return AuditVerdict(
                    False,
                    len(entries),
                    "",
                    f"entry {entry.seq} has no digest: it was written or edited outside fedloop, which chains every "
                    f"entry in the transaction that writes it ({entry.action} by {entry.actor})",
                )
            if entry.prev != prev:
                return AuditVerdict(
                    False,
                    len(entries),
                    "",
                    f"entry {entry.seq} does not follow the entry before it (an earlier entry was deleted or altered)",
                )
            if entry_digest(key, prev, entry.seq, entry.at, entry.actor, entry.action, entry.subject) != entry.digest:
                return AuditVerdict(
                    False,
                    len(entries),
                    "",
                    f"entry {entry.seq} was altered after it was written, "
                    f"or its chain was rebuilt without the audit key "
                    f"({entry.action} by {entry.actor})",
                )
            prev, expected_seq = entry.digest, entry.seq + 1
        head = f"{entries[-1].seq}:{entries[-1].digest}" if entries else f"0:{GENESIS}"
        if expected_head is not None and not self._holds(expected_head, entries):
            return AuditVerdict(
                False,
                len(entries),
                head,
                f"the recorded head {expected_head} is not in the chain "
                "(newer entries were deleted, or the log was replaced)",
            )
        return AuditVerdict(True, len(entries), head)

    @staticmethod
    def _holds(expected_head: str, entries: list[AuditEntry]) -> bool:
        seq, _, digest = expected_head.partition(":")
        return any(str(e.seq) == seq and e.digest == digest for e in entries) or (seq == "0" and digest == GENESIS)
