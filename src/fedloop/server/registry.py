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
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedloop.shared.audit import AuditLog, audit_key
from fedloop.shared.crypto import CryptoError, hmac_sm3, sm3_digest
from fedloop.shared.files import write_atomic
from fedloop.shared.keys import Identity
from fedloop.shared.row_macs import UNMACED_EVERYWHERE, RowAuthenticator
from fedloop.shared.sqlite_db import immediate_transaction, open_database, write_unit

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
    metrics TEXT NOT NULL DEFAULT '{}',
    row_mac BLOB
);
CREATE TABLE IF NOT EXISTS releases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL REFERENCES versions(id),
    action TEXT NOT NULL,
    at REAL NOT NULL,
    row_mac BLOB
);
CREATE TABLE IF NOT EXISTS rounds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    version TEXT,
    finished_at REAL NOT NULL,
    report TEXT NOT NULL,
    row_mac BLOB
);
"""
# The columns each row's MAC authenticates (key first): every table whose rows decide anything.
MACED_COLUMNS: dict[str, tuple[str, ...]] = {
    "versions": (
        "id",
        "parent",
        "run",
        "round",
        "contributors",
        "method",
        "digest",
        "signature",
        "status",
        "created_at",
        "settings",
        "metrics",
    ),
    "releases": ("seq", "version", "action", "at"),
    "rounds": ("seq", "run", "round", "version", "finished_at", "report"),
}
UNMACED_TABLES = UNMACED_EVERYWHERE
STATUSES = ("candidate", "canary", "stable", "rolled_back", "declined")
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
        self._db.row_factory = sqlite3.Row
        self.audit_log = AuditLog(self._db, audit_key(hq.pseudonym_key))
        self._rows = RowAuthenticator(
            self._db, hmac_sm3(hq.pseudonym_key, b"fedloop/hq-row-mac/1"), MACED_COLUMNS, lambda: write_unit(self._db)
        )
        self._rows.authenticate_old_rows(self.audit_log)
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
        write_atomic(
            self._blob_path(record.id), self._hq.storage.encrypt(adapter, f"version/{record.id}".encode()), 0o600
        )
        signature = self._hq.signing_key.sign(record.manifest())
        self._rows.insert(
            "versions",
            {
                "id": record.id,
                "parent": parent,
                "run": run,
                "round": round_,
                "contributors": json.dumps(record.contributors),
                "method": method,
                "digest": digest,
                "signature": signature,
                "status": record.status,
                "created_at": time.time(),
                "settings": json.dumps(record.settings, sort_keys=True),
                "metrics": "{}",
            },
        )
        return record

    def _blob_path(self, version_id: str) -> Path:
        return self._blobs / f"{version_id}.sm4"

    def get(self, version_id: str) -> VersionRecord:
        """The record of `version_id`; raises RegistryError if unknown."""
        return _version(self._version_row(version_id))

    def _version_row(self, version_id: str) -> sqlite3.Row:
        rows = self._checked("versions", "id = ?", (version_id,))
        if not rows:
            raise RegistryError(f"unknown version {version_id!r}: `fedloop versions list` shows the known ones")
        return rows[0]

    def _checked(
        self, table: str, where: str = "1", params: tuple[object, ...] = (), order: str = "rowid"
    ) -> list[sqlite3.Row]:
        """Rows checked against their MACs; RegistryError naming one that was changed outside fedloop."""
        try:
            return self._rows.checked_rows(table, where, params, order)
        except CryptoError as err:
            raise RegistryError(str(err)) from None

    def versions(self) -> list[VersionRecord]:
        """All versions, oldest first."""
        ids = [r[0] for r in self._db.execute("SELECT id FROM versions ORDER BY created_at, id")]
        return [self.get(i) for i in ids]

    def latest(self) -> VersionRecord | None:
        """The newest version that was neither rolled back nor declined by every tenant: where the next run continues
        from."""
        row = self._db.execute(
            "SELECT id FROM versions WHERE status NOT IN ('rolled_back', 'declined') "
            "ORDER BY created_at DESC, id DESC LIMIT 1"
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
        row = self._version_row(version_id)
        return self._hq.public.key.verify(_version(row).manifest(), row["signature"])

    def load_adapter(self, version_id: str) -> bytes:
        """Decrypt a version's adapter and check it against the recorded SM3 digest."""
        record = self.get(version_id)
        try:
            adapter = self._hq.storage.decrypt(
                self._blob_path(version_id).read_bytes(), f"version/{version_id}".encode()
            )
        except (OSError, CryptoError) as err:
            raise RegistryError(f"blob of version {version_id!r} is missing or corrupt: {err}") from None
        if sm3_digest(adapter).hex() != record.digest:
            raise RegistryError(f"blob of version {version_id!r} does not match its recorded digest")
        return adapter

    def record_metrics(self, version_id: str, metrics: dict[str, Any]) -> None:
        """Merge `metrics` (e.g. hit rate per tenant) into the version's metrics."""
        merged = {**self.get(version_id).metrics, **metrics}
        with write_unit(self._db):
            self._db.execute(
                "UPDATE versions SET metrics = ? WHERE id = ?", (json.dumps(merged, sort_keys=True), version_id)
            )
            self._rows.set_row_mac("versions", version_id)

    def stable(self) -> VersionRecord | None:
        """The version the stable pointer names: the newest release not rolled back since, if any."""
        for release in self._checked("releases", order="seq DESC"):
            record = self.get(release["version"])
            if record.status == "stable":
                return record
        return None

    def record_round(self, run: str, round_: int, version: str | None, report: dict[str, Any]) -> None:
        """Keep what happened in a round (contributors, refusals, bytes, timings, evaluations: no tenant data)."""
        self._rows.insert(
            "rounds",
            {
                "run": run,
                "round": round_,
                "version": version,
                "finished_at": time.time(),
                "report": json.dumps(report, sort_keys=True),
            },
        )

    def rounds(self, run: str | None = None) -> list[dict[str, Any]]:
        """Round reports, oldest first (of one run, or of all), each with its run, round and finish time."""
        where, params = ("run = ?", (run,)) if run else ("1", ())
        return [
            {
                **json.loads(r["report"]),
                "run": r["run"],
                "round": r["round"],
                "version": r["version"],
                "finished_at": r["finished_at"],
            }
            for r in self._checked("rounds", where, params, order="seq")
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
            self._rows.set_row_mac("versions", version_id)
            if target == "stable":
                self._rows.insert("releases", {"version": version_id, "action": "promote", "at": time.time()})
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
            self._rows.set_row_mac("versions", version_id)
            if record.status == "stable":
                previous = self.stable()
                if previous is not None:
                    self._rows.insert("releases", {"version": previous.id, "action": "rollback", "at": time.time()})
            self.audit_log.append(actor, "version.rollback", f"{version_id}: {record.status} -> rolled_back")
        return self.stable()

    def decline(self, version_id: str, tenants: list[str], actor: str = "hq") -> None:
        """Mark a version that every tenant which evaluated it refused or rolled back: no run continues from it."""
        record = self.get(version_id)
        if record.status in ("declined", "rolled_back"):
            return
        with immediate_transaction(self._db):
            self._db.execute("UPDATE versions SET status = 'declined' WHERE id = ?", (version_id,))
            self._rows.set_row_mac("versions", version_id)
            self.audit_log.append(
                actor, "version.declined", f"{version_id}: {record.status} -> declined by {', '.join(tenants)}"
            )


def _version(row: sqlite3.Row) -> VersionRecord:
    """A checked `versions` row as its record."""
    return VersionRecord(
        row["id"],
        row["parent"],
        row["run"],
        row["round"],
        json.loads(row["contributors"]),
        row["method"],
        row["digest"],
        row["status"],
        json.loads(row["settings"]),
        json.loads(row["metrics"]),
    )
