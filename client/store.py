"""The tenant's store: SQLite (WAL) with every text column SM4-GCM encrypted.

Each encrypted value carries its key number and nonce and is bound to
`table/column/row id` as associated data, so a value copied into another row
or column fails to decrypt. User and session ids are stored only as keyed SM3
HMAC pseudonyms. Writes happen inside `transaction()`, so an ingested batch is
stored whole or not at all. `FeedbackStoreAPI` (store_api.py) is the interface
a PostgreSQL implementation would fill.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from fedloop.client.privacy.placeholders import PlaceholderMap
from fedloop.client.store_api import (
    ArmStats,
    DraftRecord,
    InstalledVersion,
    OutcomeRecord,
    ReleaseRecord,
    SampleRecord,
    SignalRecord,
)
from fedloop.shared.audit import AuditEntry, AuditLog, audit_key
from fedloop.shared.crypto import CryptoError, hmac_sm3
from fedloop.shared.sqlite_db import immediate_transaction, open_database
from fedloop.shared.storage_keys import KEY_TAG_POSITION, StorageKeyring

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, kind TEXT NOT NULL, content_mac TEXT NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS drafts (
    id TEXT PRIMARY KEY, user_pseudonym TEXT NOT NULL, session_pseudonym TEXT NOT NULL,
    prompt BLOB NOT NULL, draft BLOB NOT NULL, model_version TEXT NOT NULL, prompt_version TEXT NOT NULL,
    position INTEGER NOT NULL, shown_at_ms INTEGER NOT NULL, row_mac BLOB);
CREATE TABLE IF NOT EXISTS outcomes (
    draft_id TEXT PRIMARY KEY REFERENCES drafts(id), action TEXT NOT NULL
        CHECK (action IN ('accept', 'edit', 'reject')),
    final_text BLOB, dwell_ms INTEGER NOT NULL, reward REAL NOT NULL, decided_at_ms INTEGER NOT NULL, row_mac BLOB);
CREATE TABLE IF NOT EXISTS signals (
    event_id TEXT PRIMARY KEY, user_pseudonym TEXT NOT NULL, session_pseudonym TEXT NOT NULL,
    kind TEXT NOT NULL, draft_id TEXT, value BLOB, at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS signals_by_session ON signals(session_pseudonym, at_ms);
CREATE TABLE IF NOT EXISTS vault (
    record_id TEXT NOT NULL, placeholder TEXT NOT NULL, original BLOB NOT NULL,
    PRIMARY KEY (record_id, placeholder));
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY, draft_id TEXT NOT NULL UNIQUE REFERENCES drafts(id), cluster_id TEXT NOT NULL,
    user_pseudonym TEXT NOT NULL, prompt BLOB NOT NULL, target BLOB, rejected BLOB, signature BLOB NOT NULL,
    reward REAL NOT NULL, weight REAL NOT NULL, pool TEXT NOT NULL, problem_type TEXT, risk TEXT NOT NULL,
    first_seen_version TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, label TEXT,
    created_at_ms INTEGER NOT NULL, row_mac BLOB);
CREATE INDEX IF NOT EXISTS samples_by_cluster ON samples(cluster_id);
CREATE INDEX IF NOT EXISTS samples_by_user ON samples(user_pseudonym, created_at_ms);
CREATE TABLE IF NOT EXISTS problems (
    draft_id TEXT NOT NULL REFERENCES drafts(id), problem_type TEXT NOT NULL, model_version TEXT NOT NULL,
    detected_at_ms INTEGER NOT NULL, PRIMARY KEY (draft_id, problem_type));
CREATE TABLE IF NOT EXISTS breaker (
    id INTEGER PRIMARY KEY CHECK (id = 1), tripped INTEGER NOT NULL, reason TEXT, changed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, version_id TEXT NOT NULL, kind TEXT NOT NULL, metrics TEXT NOT NULL,
    at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS installed_versions (
    version_id TEXT PRIMARY KEY, round INTEGER NOT NULL, parent TEXT, digest TEXT NOT NULL, adapter BLOB NOT NULL,
    installed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS local_parts (
    name TEXT PRIMARY KEY, part BLOB NOT NULL, saved_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS releases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, action TEXT NOT NULL, serving TEXT,
    canary TEXT, share REAL NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS drafts_by_version ON drafts(model_version, shown_at_ms);
"""
# The plain columns of each row that a MAC authenticates (with the row's key column first).
MACED_COLUMNS: dict[str, tuple[str, ...]] = {
    "drafts": (
        "id",
        "user_pseudonym",
        "session_pseudonym",
        "model_version",
        "prompt_version",
        "position",
        "shown_at_ms",
    ),
    "outcomes": ("draft_id", "action", "dwell_ms", "reward", "decided_at_ms"),
    "samples": (
        "id",
        "draft_id",
        "cluster_id",
        "user_pseudonym",
        "reward",
        "weight",
        "pool",
        "problem_type",
        "risk",
        "first_seen_version",
        "status",
        "reason",
        "label",
        "created_at_ms",
    ),
}
# Encrypted columns and the key column of their table: what key rotation walks over.
ENCRYPTED_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "drafts": ("id", ("prompt", "draft")),
    "outcomes": ("draft_id", ("final_text",)),
    "signals": ("event_id", ("value",)),
    "vault": ("record_id || '/' || placeholder", ("original",)),
    "samples": ("id", ("prompt", "target", "rejected", "signature")),
    "installed_versions": ("version_id", ("adapter",)),
    "local_parts": ("name", ("part",)),
}


class FeedbackStore:
    """SQLite implementation of the tenant store."""

    def __init__(self, path: Path, keys: StorageKeyring, pseudonym_key: bytes) -> None:
        self.path = path
        self._keys = keys
        self._pseudonym_key = pseudonym_key
        self._db = open_database(path, _SCHEMA)
        self._lock = threading.RLock()
        self.audit_log = AuditLog(self._db, audit_key(pseudonym_key))
        self._row_key = hmac_sm3(pseudonym_key, b"fedloop/row-mac/1")
        self._mac_rows_without_one()
        self.audit_log.note_first_use("storage-key", [f"storage key {n}" for n in sorted(keys.keys)])

    # -- row authentication --------------------------------------------------------------------
    def _row_mac(self, table: str, fields: tuple) -> bytes:
        return hmac_sm3(self._row_key, json.dumps([table, *fields], separators=(",", ":")).encode())

    def _check_row(self, table: str, fields: tuple, mac: bytes | None) -> None:
        if mac is None or not hmac.compare_digest(self._row_mac(table, fields), mac):
            raise CryptoError(
                f"row {table}/{fields[0]} failed its integrity check: its plain fields "
                f"({', '.join(MACED_COLUMNS[table][1:])}) were changed outside fedloop"
            )

    def _maced_select(self, table: str, where: str, params: tuple = ()) -> list[tuple]:
        """The MAC'd columns of matching rows, each checked against its row MAC."""
        columns = MACED_COLUMNS[table]
        rows = self._db.execute(f"SELECT {', '.join(columns)}, row_mac FROM {table} WHERE {where}", params)
        checked = []
        for row in rows.fetchall():
            self._check_row(table, row[:-1], row[-1])
            checked.append(row[:-1])
        return checked

    def _set_row_mac(self, table: str, key: str) -> None:
        columns = MACED_COLUMNS[table]
        row = self._db.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE {columns[0]} = ?", (key,)).fetchone()
        self._db.execute(f"UPDATE {table} SET row_mac = ? WHERE {columns[0]} = ?", (self._row_mac(table, row), key))

    def _mac_rows_without_one(self) -> None:
        """A store from before row MACs (the column is missing): add it and MAC the rows as they are, once (audited).

        Only a missing column triggers this; a row whose MAC was later cleared with SQL fails its check instead.
        """
        missing = [
            table
            for table in MACED_COLUMNS
            if "row_mac" not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
        ]
        if not missing:
            return
        added = 0
        with self.transaction():
            for table in missing:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN row_mac BLOB")
                key_column = MACED_COLUMNS[table][0]
                for (key,) in self._db.execute(f"SELECT {key_column} FROM {table}").fetchall():
                    self._set_row_mac(table, key)
                    added += 1
            self.audit_log.append(
                "fedloop", "store.row-macs", f"{added} rows from before row MACs authenticated ({', '.join(missing)})"
            )

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def use_keys(self, keys: StorageKeyring) -> None:
        """Switch to a (rotated) keyring: new writes use its active key, old values stay readable."""
        self._keys = keys
        with self._lock:
            self.audit_log.note_first_use("storage-key", [f"storage key {n}" for n in sorted(keys.keys)])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside is committed together, or not at all."""
        with self._lock, immediate_transaction(self._db):
            yield

    # -- encryption helpers -------------------------------------------------------------------
    def _seal(self, table: str, column: str, row_id: str, value: str | bytes | None) -> bytes | None:
        if value is None:
            return None
        data = value.encode() if isinstance(value, str) else value
        return self._keys.seal(data, f"{table}/{column}/{row_id}".encode())

    def _open(self, table: str, column: str, row_id: str, sealed: bytes | None) -> str | None:
        if sealed is None:
            return None
        return self._keys.open(sealed, f"{table}/{column}/{row_id}".encode()).decode()

    def pseudonym(self, identifier: str) -> str:
        """The stable keyed pseudonym under which a user or session id is stored."""
        return hmac_sm3(self._pseudonym_key, identifier.encode()).hex()[:32]

    # -- events (idempotency) -----------------------------------------------------------------
    def event_mac(self, event_id: str) -> str | None:
        """The content MAC stored for `event_id`, or None if it was never stored."""
        row = self._db.execute("SELECT content_mac FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return row[0] if row else None

    def insert_event(self, event_id: str, kind: str, content_mac: str) -> None:
        """Remember that `event_id` was stored with this content MAC."""
        self._db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (event_id, kind, content_mac, time.time()))

    def count_events(self) -> int:
        """How many distinct events are stored."""
        return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    # -- drafts, outcomes, signals ------------------------------------------------------------
    def insert_draft(self, draft: DraftRecord) -> None:
        """Store a shown draft (texts already redacted, ids already pseudonymised)."""
        self._db.execute(
            "INSERT INTO drafts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                draft.id,
                draft.user_pseudonym,
                draft.session_pseudonym,
                self._seal("drafts", "prompt", draft.id, draft.prompt),
                self._seal("drafts", "draft", draft.id, draft.draft),
                draft.model_version,
                draft.prompt_version,
                draft.position,
                draft.shown_at_ms,
                self._row_mac(
                    "drafts",
                    (
                        draft.id,
                        draft.user_pseudonym,
                        draft.session_pseudonym,
                        draft.model_version,
                        draft.prompt_version,
                        draft.position,
                        draft.shown_at_ms,
                    ),
                ),
            ),
        )

    def get_draft(self, draft_id: str) -> DraftRecord | None:
        """A stored draft, decrypted, or None."""
        row = self._db.execute("SELECT * FROM drafts WHERE id = ?", (draft_id,)).fetchone()
        if row is None:
            return None
        self._check_row("drafts", (row[0], row[1], row[2], row[5], row[6], row[7], row[8]), row[9])
        return DraftRecord(
            row[0],
            row[1],
            row[2],
            self._open("drafts", "prompt", row[0], row[3]) or "",
            self._open("drafts", "draft", row[0], row[4]) or "",
            row[5],
            row[6],
            row[7],
            row[8],
        )

    def has_outcome(self, draft_id: str) -> bool:
        """Whether this draft already has an outcome."""
        return self._db.execute("SELECT 1 FROM outcomes WHERE draft_id = ?", (draft_id,)).fetchone() is not None

    def insert_outcome(self, outcome: OutcomeRecord) -> None:
        """Store the user's decision on a draft (final text already redacted)."""
        self._db.execute(
            "INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                outcome.draft_id,
                outcome.action,
                self._seal("outcomes", "final_text", outcome.draft_id, outcome.final_text),
                outcome.dwell_ms,
                outcome.reward,
                outcome.decided_at_ms,
                self._row_mac(
                    "outcomes",
                    (outcome.draft_id, outcome.action, outcome.dwell_ms, outcome.reward, outcome.decided_at_ms),
                ),
            ),
        )

    def get_outcome(self, draft_id: str) -> OutcomeRecord | None:
        """The outcome of a draft, decrypted, or None."""
        row = self._db.execute("SELECT * FROM outcomes WHERE draft_id = ?", (draft_id,)).fetchone()
        if row is None:
            return None
        self._check_row("outcomes", (row[0], row[1], row[3], row[4], row[5]), row[6])
        return OutcomeRecord(
            row[0], row[1], self._open("outcomes", "final_text", row[0], row[2]), row[3], row[4], row[5]
        )

    def insert_signal(self, signal: SignalRecord) -> None:
        """Store an implicit signal (value already redacted)."""
        self._db.execute(
            "INSERT INTO signals VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                signal.event_id,
                signal.user_pseudonym,
                signal.session_pseudonym,
                signal.kind,
                signal.draft_id,
                self._seal("signals", "value", signal.event_id, signal.value),
                signal.at_ms,
            ),
        )

    def session_signals(self, session_pseudonym: str, limit: int = 200) -> list[SignalRecord]:
        """The latest `limit` signals of a session, oldest first, decrypted."""
        rows = self._db.execute(
            "SELECT * FROM (SELECT * FROM signals WHERE session_pseudonym = ? ORDER BY at_ms DESC, rowid DESC "
            "LIMIT ?) ORDER BY at_ms, rowid",
            (session_pseudonym, limit),
        ).fetchall()
        return [
            SignalRecord(r[0], r[1], r[2], r[3], r[4], self._open("signals", "value", r[0], r[5]), r[6]) for r in rows
        ]

    def session_drafts(self, session_pseudonym: str) -> list[tuple[str, str, int]]:
        """(draft id, model version, shown at) of a session's drafts, oldest first."""
        return self._db.execute(
            "SELECT id, model_version, shown_at_ms FROM drafts WHERE session_pseudonym = ? ORDER BY shown_at_ms, rowid",
            (session_pseudonym,),
        ).fetchall()

    def signal_kinds(self) -> set[str]:
        """Every signal kind the product has ever reported."""
        return {row[0] for row in self._db.execute("SELECT DISTINCT kind FROM signals")}

    def open_sessions(self, since_ms: int) -> list[str]:
        """Sessions with a draft shown since `since_ms`."""
        return [
            r[0]
            for r in self._db.execute(
                "SELECT DISTINCT session_pseudonym FROM drafts WHERE shown_at_ms >= ?", (since_ms,)
            )
        ]

    def outcome_counts(self) -> dict[str, int]:
        """How many drafts ended in each action."""
        return dict(self._db.execute("SELECT action, COUNT(*) FROM outcomes GROUP BY action").fetchall())

    # -- vault and audit ----------------------------------------------------------------------
    def placeholder_map(self, record_id: str) -> PlaceholderMap:
        """The placeholders already assigned in a record, decrypted from the vault."""
        rows = self._db.execute("SELECT placeholder, original FROM vault WHERE record_id = ?", (record_id,)).fetchall()
        return PlaceholderMap({self._open("vault", "original", f"{record_id}/{p}", o) or "": p for p, o in rows})

    def vault_add(self, record_id: str, placeholder: str, original: str) -> None:
        """Keep the original behind a placeholder, encrypted."""
        self._db.execute(
            "INSERT INTO vault VALUES (?, ?, ?)",
            (record_id, placeholder, self._seal("vault", "original", f"{record_id}/{placeholder}", original)),
        )

    def vault_lookup(self, record_id: str, placeholder: str) -> str | None:
        """The original behind a placeholder, or None (callers must audit the reveal)."""
        row = self._db.execute(
            "SELECT original FROM vault WHERE record_id = ? AND placeholder = ?", (record_id, placeholder)
        ).fetchone()
        return None if row is None else self._open("vault", "original", f"{record_id}/{placeholder}", row[0])

    def audit(self, actor: str, action: str, subject: str) -> None:
        """Append an entry to the chained audit log (never containing a secret or an original)."""
        with self._lock:
            self.audit_log.append(actor, action, subject)

    def audit_entries(self) -> list[AuditEntry]:
        """All audit entries, oldest first."""
        return self.audit_log.entries()

    # -- samples ------------------------------------------------------------------------------
    def insert_sample(self, sample: SampleRecord, signature: bytes) -> None:
        """Store a curated sample with its MinHash signature (both encrypted)."""
        s = sample
        self._db.execute(
            "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.id,
                s.draft_id,
                s.cluster_id,
                s.user_pseudonym,
                self._seal("samples", "prompt", s.id, s.prompt),
                self._seal("samples", "target", s.id, s.target),
                self._seal("samples", "rejected", s.id, s.rejected),
                self._seal("samples", "signature", s.id, signature),
                s.reward,
                s.weight,
                s.pool,
                s.problem_type,
                s.risk,
                s.first_seen_version,
                s.status,
                s.reason,
                s.label,
                s.created_at_ms,
                self._row_mac(
                    "samples",
                    (
                        s.id,
                        s.draft_id,
                        s.cluster_id,
                        s.user_pseudonym,
                        s.reward,
                        s.weight,
                        s.pool,
                        s.problem_type,
                        s.risk,
                        s.first_seen_version,
                        s.status,
                        s.reason,
                        s.label,
                        s.created_at_ms,
                    ),
                ),
            ),
        )

    def _sample(self, row: tuple) -> SampleRecord:
        sid = row[0]
        self._check_row("samples", (*row[:4], *row[8:18]), row[18])
        return SampleRecord(
            sid,
            row[1],
            row[2],
            row[3],
            self._open("samples", "prompt", sid, row[4]) or "",
            self._open("samples", "target", sid, row[5]),
            self._open("samples", "rejected", sid, row[6]),
            row[8],
            row[9],
            row[10],
            row[11],
            row[12],
            row[13],
            row[14],
            row[15],
            row[16],
            row[17],
        )

    def samples(self, where: str = "1=1", params: tuple = ()) -> list[SampleRecord]:
        """Samples matching a SQL condition over the samples table, oldest first."""
        rows = self._db.execute(f"SELECT * FROM samples WHERE {where} ORDER BY created_at_ms, rowid", params)
        return [self._sample(r) for r in rows.fetchall()]

    def sample_signatures(self) -> list[tuple[str, str, bytes]]:
        """(sample id, cluster id, MinHash signature) of every sample, for rebuilding the LSH index."""
        rows = self._db.execute("SELECT id, cluster_id, signature FROM samples").fetchall()
        return [(r[0], r[1], self._keys.open(r[2], f"samples/signature/{r[0]}".encode())) for r in rows]

    def update_sample(self, sample_id: str, **fields: object) -> None:
        """Change plain (unencrypted) fields of a sample: pool, status, reason, label, weight, problem_type, risk."""
        allowed = {"pool", "status", "reason", "label", "weight", "problem_type", "risk"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"can only update {sorted(allowed)}, got {sorted(fields)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._lock, nullcontext() if self._db.in_transaction else self.transaction():
            self._maced_select("samples", "id = ?", (sample_id,))  # an edited row is not laundered by an update
            self._db.execute(f"UPDATE samples SET {assignments} WHERE id = ?", (*fields.values(), sample_id))
            self._set_row_mac("samples", sample_id)

    def user_sample_count(self, user_pseudonym: str, since_ms: int) -> int:
        """Samples a user contributed since `since_ms`."""
        return self._db.execute(
            "SELECT COUNT(*) FROM samples WHERE user_pseudonym = ? AND created_at_ms >= ?", (user_pseudonym, since_ms)
        ).fetchone()[0]

    def recent_statuses(self, limit: int) -> list[str]:
        """Statuses of the latest `limit` samples (newest first)."""
        return [
            r[0]
            for r in self._db.execute(
                "SELECT status FROM samples ORDER BY created_at_ms DESC, rowid DESC LIMIT ?", (limit,)
            )
        ]

    # -- problems -----------------------------------------------------------------------------
    def record_problem(self, draft_id: str, problem_type: str, model_version: str, at_ms: int) -> bool:
        """Flag a draft with a problem type; returns False if it was already flagged so."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO problems VALUES (?, ?, ?, ?)", (draft_id, problem_type, model_version, at_ms)
        )
        return cursor.rowcount == 1

    def problem_rate(self, problem_type: str, model_version: str) -> tuple[int, int]:
        """(drafts of `model_version` flagged with `problem_type`, all drafts of `model_version`)."""
        flagged = self._db.execute(
            "SELECT COUNT(*) FROM problems WHERE problem_type = ? AND model_version = ?", (problem_type, model_version)
        ).fetchone()[0]
        total = self._db.execute("SELECT COUNT(*) FROM drafts WHERE model_version = ?", (model_version,)).fetchone()[0]
        return flagged, total

    # -- breaker ------------------------------------------------------------------------------
    def breaker_state(self) -> tuple[bool, str | None]:
        """(tripped, reason) of the moderation breaker."""
        row = self._db.execute("SELECT tripped, reason FROM breaker WHERE id = 1").fetchone()
        return (False, None) if row is None else (bool(row[0]), row[1])

    def set_breaker(self, tripped: bool, reason: str | None) -> None:
        """Trip or reset the moderation breaker."""
        self._db.execute("INSERT OR REPLACE INTO breaker VALUES (1, ?, ?, ?)", (int(tripped), reason, time.time()))

    # -- evaluations --------------------------------------------------------------------------
    def record_evaluation(self, version_id: str, kind: str, metrics: dict[str, Any]) -> None:
        """Keep an evaluation or training record (aggregate numbers only) with the version it concerns."""
        self._db.execute(
            "INSERT INTO evaluations (version_id, kind, metrics, at) VALUES (?, ?, ?, ?)",
            (version_id, kind, json.dumps(metrics, sort_keys=True), time.time()),
        )

    def evaluations(self, version_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(kind, metrics) of every evaluation of `version_id`, oldest first."""
        rows = self._db.execute(
            "SELECT kind, metrics FROM evaluations WHERE version_id = ? ORDER BY seq", (version_id,)
        ).fetchall()
        return [(kind, json.loads(metrics)) for kind, metrics in rows]

    def latest_evaluation(self, kind: str) -> tuple[str, dict[str, Any]] | None:
        """(version id, metrics) of the newest record of `kind` (e.g. "training"), or None."""
        row = self._db.execute(
            "SELECT version_id, metrics FROM evaluations WHERE kind = ? ORDER BY seq DESC LIMIT 1", (kind,)
        ).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    # -- figures for operators (metrics, status, reports) --------------------------------------
    def sample_counts(self) -> dict[tuple[str, str], int]:
        """How many samples have each (status, pool)."""
        rows = self._db.execute("SELECT status, pool, COUNT(*) FROM samples GROUP BY status, pool").fetchall()
        return {(status, pool): count for status, pool, count in rows}

    def problem_types(self) -> list[str]:
        """Every problem type a derived-signal rule has flagged so far."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT problem_type FROM problems ORDER BY problem_type")]

    def drafting_versions(self) -> list[str]:
        """Model versions that drafted, in the order they first did."""
        return [
            r[0]
            for r in self._db.execute(
                "SELECT model_version FROM drafts GROUP BY model_version ORDER BY MIN(shown_at_ms), MIN(rowid)"
            )
        ]

    def evaluations_of_kind(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """(version id, metrics) of every record of `kind`, oldest first."""
        rows = self._db.execute("SELECT version_id, metrics FROM evaluations WHERE kind = ? ORDER BY seq", (kind,))
        return [(version, json.loads(metrics)) for version, metrics in rows.fetchall()]

    def outcomes_by_version(self) -> list[tuple[str, str, int, int]]:
        """(model version, prompt version, decided drafts, accepted drafts) for every pair that served."""
        return self._db.execute(
            "SELECT d.model_version, d.prompt_version, COUNT(*), COALESCE(SUM(o.action = 'accept'), 0) "
            "FROM drafts d JOIN outcomes o ON o.draft_id = d.id GROUP BY d.model_version, d.prompt_version "
            "ORDER BY MIN(d.shown_at_ms)"
        ).fetchall()

    # -- installed versions -------------------------------------------------
    def install_version(self, version: InstalledVersion, adapter_bytes: bytes) -> None:
        """Keep a verified global version, its adapter encrypted at rest."""
        self._db.execute(
            "INSERT OR REPLACE INTO installed_versions VALUES (?, ?, ?, ?, ?, ?)",
            (
                version.version_id,
                version.round,
                version.parent,
                version.digest,
                self._seal("installed_versions", "adapter", version.version_id, adapter_bytes),
                time.time(),
            ),
        )

    def installed_versions(self) -> list[InstalledVersion]:
        """Installed global versions, oldest round first."""
        rows = self._db.execute(
            "SELECT version_id, round, parent, digest FROM installed_versions ORDER BY round, installed_at"
        ).fetchall()
        return [InstalledVersion(*row) for row in rows]

    def installed_adapter(self, version_id: str) -> bytes:
        """The adapter bytes of an installed version, decrypted; KeyError if it was never installed."""
        row = self._db.execute("SELECT adapter FROM installed_versions WHERE version_id = ?", (version_id,)).fetchone()
        if row is None:
            raise KeyError(version_id)
        return self._keys.open(row[0], f"installed_versions/adapter/{version_id}".encode())

    def keep_local_part(self, name: str, data: bytes) -> None:
        """Keep (replace) an adapter part that never leaves the tenant, encrypted at rest."""
        self._db.execute(
            "INSERT OR REPLACE INTO local_parts VALUES (?, ?, ?)",
            (name, self._seal("local_parts", "part", name, data), time.time()),
        )

    def local_part(self, name: str) -> bytes | None:
        """A kept local adapter part, decrypted; None if none was kept under `name`."""
        row = self._db.execute("SELECT part FROM local_parts WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._keys.open(row[0], f"local_parts/part/{name}".encode())

    # -- release pointer ----------------------------------------------------------------------
    def release_state(self) -> ReleaseRecord | None:
        """The newest release record: what serves, which canary runs and on what share."""
        row = self._db.execute(
            "SELECT at_ms, action, serving, canary, share, reason FROM releases ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return ReleaseRecord(*row) if row else None

    def release_history(self) -> list[ReleaseRecord]:
        """Every release record, oldest first."""
        rows = self._db.execute("SELECT at_ms, action, serving, canary, share, reason FROM releases ORDER BY seq")
        return [ReleaseRecord(*row) for row in rows.fetchall()]

    def append_release(self, record: ReleaseRecord) -> None:
        """Move the release pointer: one appended row (a rollback is exactly this)."""
        self._db.execute(
            "INSERT INTO releases (at_ms, action, serving, canary, share, reason) VALUES (?, ?, ?, ?, ?, ?)",
            (record.at_ms, record.action, record.serving, record.canary, record.share, record.reason),
        )

    def arm_stats(self, model_version: str, since_ms: int) -> ArmStats:
        """Decided drafts of `model_version` shown since `since_ms`: accepts, rejects, drafts flagged by a rule.

        Every draft and outcome counted is checked against its row MAC: an SQL edit cannot sway a release.
        """
        self._maced_select("drafts", "model_version = ? AND shown_at_ms >= ?", (model_version, since_ms))
        actions = [
            row[1]
            for row in self._maced_select(
                "outcomes",
                "draft_id IN (SELECT id FROM drafts WHERE model_version = ? AND shown_at_ms >= ?)",
                (model_version, since_ms),
            )
        ]
        (flagged,) = self._db.execute(
            "SELECT COUNT(DISTINCT p.draft_id) FROM problems p JOIN drafts d ON d.id = p.draft_id "
            "WHERE d.model_version = ? AND d.shown_at_ms >= ?",
            (model_version, since_ms),
        ).fetchone()
        return ArmStats(model_version, len(actions), actions.count("accept"), actions.count("reject"), flagged)

    # -- key rotation -------------------------------------------------------------------------
    def reencrypt_batch(self, batch_size: int = 500) -> int:
        """Re-encrypt up to `batch_size` values sealed with a non-active key; returns how many were done.

        Each batch is its own short transaction, so ingestion keeps running during a rotation.
        """
        done = 0
        active = self._keys.active_tag()
        with self.transaction():
            for table, (key_expr, columns) in ENCRYPTED_COLUMNS.items():
                for column in columns:
                    rows = self._db.execute(
                        f"SELECT rowid, {key_expr}, {column} FROM {table} "
                        f"WHERE {column} IS NOT NULL AND substr({column}, {KEY_TAG_POSITION}, 2) != ? LIMIT ?",
                        (active, batch_size - done),
                    ).fetchall()
                    for rowid, row_key, sealed in rows:
                        aad = f"{table}/{column}/{row_key}".encode()
                        resealed = self._keys.seal(self._keys.open(sealed, aad), aad)
                        self._db.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (resealed, rowid))
                        done += 1
                    if done >= batch_size:
                        return done
        return done

    def raw_connection(self) -> sqlite3.Connection:
        """The underlying connection, for read-only inspection in tools and tests."""
        return self._db
