"""HQ's version registry: every global adapter version, its lineage and its proof.

Rows live in SQLite; adapter blobs live beside it as SM4-GCM encrypted files
(version id as associated data). A blob is written atomically before its row
is committed, so a crash leaves at worst an unreferenced blob, never a row
without its adapter. Each version's manifest (everything but its status and
metrics, which change over time) is signed with HQ's SM2 key.

Release: a version is `candidate` when created, `canary` while tenants try it
on a share of their traffic, `stable` when promoted, `rolled_back` when pulled.
The stable pointer is the newest row of `releases`; rolling back the stable
version appends the previous stable one, so a rollback is one small
transaction (a pointer swap), and the history of the pointer is kept.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedloop.shared.audit import AuditLog, audit_key
from fedloop.shared.crypto import CryptoError, sm3_digest
from fedloop.shared.files import write_atomic
from fedloop.shared.keys import Identity
from fedloop.shared.sqlite_db import immediate_transaction, open_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    id TEXT PRIMARY KEY,
    parent TEXT REFERENCES versions(id),
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    contributors TEXT NOT NULL,
    method TEXT NOT NULL,
    digest TEXT NOT NULL,
    signature BLOB NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS releases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL REFERENCES versions(id),
    action TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    version TEXT,
    finished_at REAL NOT NULL,
    report TEXT NOT NULL
);
"""
STATUSES = ("candidate", "canary", "stable", "rolled_back")
_NEXT_STATUS = {"candidate": "canary", "canary": "stable"}


class RegistryError(Exception):
    """A registry lookup or integrity check failed."""


@dataclass(frozen=True)
class VersionRecord:
    """One global adapter version."""

    id: str
    parent: str | None
    run: str
    round: int
    contributors: dict[str, int]
    method: str
    digest: str
    status: str
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> bytes:
        """The canonical bytes HQ signs: everything but the status and metrics, which change over time."""
        document = {k: v for k, v in asdict(self).items() if k not in ("status", "metrics")}
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class VersionRegistry:
    """Stores, signs and serves global versions."""

    def __init__(self, root: Path, hq: Identity) -> None:
        self._blobs = root / "blobs"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._hq = hq
        self._db = open_database(root / "registry.db", _SCHEMA)
        self.audit_log = AuditLog(self._db, audit_key(hq.pseudonym_key))
        self.audit_log.note_first_use("sm2-key", [f"HQ SM2 key {hq.public.key_id}"])

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def create(
        self,
        adapter: bytes,
        parent: str | None,
        run: str,
        round_: int,
        contributors: dict[str, int],
        method: str,
        settings: dict[str, Any] | None = None,
    ) -> VersionRecord:
        """Record a new version: encrypted blob first, then the signed row.

        `settings` are what produced it (aggregation and LoRA settings), kept with the signed manifest.
        """
        digest = sm3_digest(adapter).hex()
        (count,) = self._db.execute("SELECT COUNT(*) FROM versions").fetchone()
        record = VersionRecord(
            f"v{count:04d}-{digest[:8]}",
            parent,
            run,
            round_,
            dict(contributors),
            method,
            digest,
            "candidate",
            dict(settings or {}),
        )
        write_atomic(self._blob_path(record.id), self._hq.storage.seal(adapter, f"version/{record.id}".encode()), 0o600)
        signature = self._hq.signing_key.sign(record.manifest())
        self._db.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{}')",
            (
                record.id,
                parent,
                run,
                round_,
                json.dumps(record.contributors),
                method,
                digest,
                signature,
                record.status,
                time.time(),
                json.dumps(record.settings, sort_keys=True),
            ),
        )
        return record

    def _blob_path(self, version_id: str) -> Path:
        return self._blobs / f"{version_id}.sm4"

    def get(self, version_id: str) -> VersionRecord:
        """The record of `version_id`; raises RegistryError if unknown."""
        row = self._db.execute(
            "SELECT id, parent, run, round, contributors, method, digest, status, settings, metrics "
            "FROM versions WHERE id = ?",
            (version_id,),
        ).fetchone()
        if row is None:
            raise RegistryError(f"unknown version {version_id!r}: `fedloop versions list` shows the known ones")
        return VersionRecord(
            row[0],
            row[1],
            row[2],
            row[3],
            json.loads(row[4]),
            row[5],
            row[6],
            row[7],
            json.loads(row[8]),
            json.loads(row[9]),
        )

    def versions(self) -> list[VersionRecord]:
        """All versions, oldest first."""
        ids = [r[0] for r in self._db.execute("SELECT id FROM versions ORDER BY created_at, id")]
        return [self.get(i) for i in ids]

    def latest(self) -> VersionRecord | None:
        """The newest version that was not rolled back: where the next run continues from."""
        row = self._db.execute(
            "SELECT id FROM versions WHERE status != 'rolled_back' ORDER BY created_at DESC, id DESC LIMIT 1"
        ).fetchone()
        return self.get(row[0]) if row else None

    def lineage(self, version_id: str) -> list[VersionRecord]:
        """`version_id` and its ancestors, root first."""
        chain = [self.get(version_id)]
        while chain[-1].parent is not None:
            chain.append(self.get(chain[-1].parent))
        return chain[::-1]

    def signature_valid(self, version_id: str) -> bool:
        """Whether the stored HQ signature matches the version's manifest."""
        (signature,) = self._db.execute("SELECT signature FROM versions WHERE id = ?", (version_id,)).fetchone()
        return self._hq.public.key.verify(self.get(version_id).manifest(), signature)

    def load_adapter(self, version_id: str) -> bytes:
        """Decrypt a version's adapter and check it against the recorded SM3 digest."""
        record = self.get(version_id)
        try:
            adapter = self._hq.storage.open(self._blob_path(version_id).read_bytes(), f"version/{version_id}".encode())
        except (OSError, CryptoError) as err:
            raise RegistryError(f"blob of version {version_id!r} is missing or corrupt: {err}") from None
        if sm3_digest(adapter).hex() != record.digest:
            raise RegistryError(f"blob of version {version_id!r} does not match its recorded digest")
        return adapter

    def record_metrics(self, version_id: str, metrics: dict[str, Any]) -> None:
        """Merge `metrics` (e.g. hit rate per tenant) into the version's metrics."""
        merged = {**self.get(version_id).metrics, **metrics}
        self._db.execute(
            "UPDATE versions SET metrics = ? WHERE id = ?", (json.dumps(merged, sort_keys=True), version_id)
        )

    def stable(self) -> VersionRecord | None:
        """The version the stable pointer names: the newest release not rolled back since, if any."""
        row = self._db.execute(
            "SELECT r.version FROM releases r JOIN versions v ON v.id = r.version "
            "WHERE v.status = 'stable' ORDER BY r.seq DESC LIMIT 1"
        ).fetchone()
        return self.get(row[0]) if row else None

    def record_round(self, run: str, round_: int, version: str | None, report: dict[str, Any]) -> None:
        """Keep what happened in a round (contributors, refusals, bytes, timings, evaluations: no tenant data)."""
        self._db.execute(
            "INSERT INTO rounds (run, round, version, finished_at, report) VALUES (?, ?, ?, ?, ?)",
            (run, round_, version, time.time(), json.dumps(report, sort_keys=True)),
        )

    def rounds(self, run: str | None = None) -> list[dict[str, Any]]:
        """Round reports, oldest first (of one run, or of all), each with its run, round and finish time."""
        where, params = ("WHERE run = ?", (run,)) if run else ("", ())
        rows = self._db.execute(
            f"SELECT run, round, version, finished_at, report FROM rounds {where} ORDER BY seq", params
        ).fetchall()
        return [
            {**json.loads(report), "run": r, "round": n, "version": v, "finished_at": at}
            for r, n, v, at, report in rows
        ]

    def audit(self, actor: str, action: str, subject: str) -> None:
        """Append an entry to HQ's chained audit log."""
        self.audit_log.append(actor, action, subject)

    def promote(self, version_id: str, actor: str = "hq") -> VersionRecord:
        """candidate → canary, or canary → stable (moving the stable pointer); returns the updated record."""
        record = self.get(version_id)
        target = _NEXT_STATUS.get(record.status)
        if target is None:
            raise RegistryError(
                f"version {version_id} is {record.status}; only a candidate or a canary can be promoted"
            )
        with immediate_transaction(self._db):
            self._db.execute("UPDATE versions SET status = ? WHERE id = ?", (target, version_id))
            if target == "stable":
                self._db.execute(
                    "INSERT INTO releases (version, action, at) VALUES (?, 'promote', ?)", (version_id, time.time())
                )
            self.audit_log.append(actor, "version.promote", f"{version_id}: {record.status} -> {target}")
        return self.get(version_id)

    def rollback(self, version_id: str, actor: str = "hq") -> VersionRecord | None:
        """Mark `version_id` rolled back; if it was the stable one, point stable back at the one before.

        Returns the stable version afterwards (None if there is none left).
        """
        record = self.get(version_id)
        if record.status == "rolled_back":
            raise RegistryError(f"version {version_id} is already rolled back")
        with immediate_transaction(self._db):
            self._db.execute("UPDATE versions SET status = 'rolled_back' WHERE id = ?", (version_id,))
            if record.status == "stable":
                previous = self.stable()
                if previous is not None:
                    self._db.execute(
                        "INSERT INTO releases (version, action, at) VALUES (?, 'rollback', ?)",
                        (previous.id, time.time()),
                    )
            self.audit_log.append(actor, "version.rollback", f"{version_id}: {record.status} -> rolled_back")
        return self.stable()
