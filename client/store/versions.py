"""Installed versions, locally kept adapter parts, evaluations and the release pointer in the SQLite store."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from fedloop.client.store.sealing import RowSealer
from fedloop.client.store_api import EvaluationKind, InstalledVersion, ReleaseRecord


class SqliteVersionRepository:
    """The `VersionRepository` of a SQLite store (adapters and local parts encrypted at rest)."""

    def __init__(self, sealer: RowSealer) -> None:
        self._sealer = sealer
        self._db = sealer.db

    def install(self, version: InstalledVersion, adapter_bytes: bytes) -> None:
        """Keep a verified global version, its adapter encrypted at rest."""
        self._db.execute(
            "INSERT OR REPLACE INTO installed_versions (version_id, round, parent, digest, adapter, installed_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                version.version_id,
                version.round,
                version.parent,
                version.digest,
                self._sealer.seal("installed_versions", "adapter", version.version_id, adapter_bytes),
                time.time(),
            ),
        )

    def installed(self) -> list[InstalledVersion]:
        """Installed global versions, oldest round first."""
        rows = self._db.execute(
            "SELECT version_id, round, parent, digest FROM installed_versions ORDER BY round, installed_at"
        ).fetchall()
        return [
            InstalledVersion(version_id=r["version_id"], round=r["round"], parent=r["parent"], digest=r["digest"])
            for r in rows
        ]

    def adapter(self, version_id: str) -> bytes:
        """The adapter bytes of an installed version, decrypted; KeyError if it was never installed."""
        row = self._db.execute("SELECT adapter FROM installed_versions WHERE version_id = ?", (version_id,)).fetchone()
        if row is None:
            raise KeyError(version_id)
        return self._sealer.open_bytes("installed_versions", "adapter", version_id, row["adapter"])

    def keep_local_part(self, name: str, data: bytes) -> None:
        """Keep (replace) an adapter part that never leaves the tenant, encrypted at rest."""
        self._db.execute(
            "INSERT OR REPLACE INTO local_parts (name, part, saved_at) VALUES (?, ?, ?)",
            (name, self._sealer.seal("local_parts", "part", name, data), time.time()),
        )

    def local_part(self, name: str) -> bytes | None:
        """A kept local adapter part, decrypted; None if none was kept under `name`."""
        row = self._db.execute("SELECT part FROM local_parts WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._sealer.open_bytes("local_parts", "part", name, row["part"])

    def record_evaluation(self, version_id: str, kind: EvaluationKind, metrics: dict[str, Any]) -> None:
        """Keep an evaluation or training record (aggregate numbers only) with the version it concerns."""
        self._db.execute(
            "INSERT INTO evaluations (version_id, kind, metrics, at) VALUES (?, ?, ?, ?)",
            (version_id, str(kind), json.dumps(metrics, sort_keys=True), time.time()),
        )

    def evaluations(self, version_id: str) -> list[tuple[EvaluationKind, dict[str, Any]]]:
        """(kind, metrics) of every evaluation of `version_id`, oldest first."""
        rows = self._db.execute(
            "SELECT kind, metrics FROM evaluations WHERE version_id = ? ORDER BY seq", (version_id,)
        ).fetchall()
        return [(EvaluationKind(r["kind"]), json.loads(r["metrics"])) for r in rows]

    def evaluations_of_kind(self, kind: EvaluationKind) -> list[tuple[str, dict[str, Any]]]:
        """(version id, metrics) of every record of `kind`, oldest first."""
        rows = self._db.execute(
            "SELECT version_id, metrics FROM evaluations WHERE kind = ? ORDER BY seq", (str(kind),)
        ).fetchall()
        return [(r["version_id"], json.loads(r["metrics"])) for r in rows]

    def latest_evaluation(self, kind: EvaluationKind) -> tuple[str, dict[str, Any]] | None:
        """(version id, metrics) of the newest record of `kind`, or None."""
        row = self._db.execute(
            "SELECT version_id, metrics FROM evaluations WHERE kind = ? ORDER BY seq DESC LIMIT 1", (str(kind),)
        ).fetchone()
        return None if row is None else (row["version_id"], json.loads(row["metrics"]))

    def release_state(self) -> ReleaseRecord | None:
        """The newest release record: what serves, which canary runs and on what share."""
        row = self._db.execute(f"SELECT {_RELEASE_COLUMNS} FROM releases ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else _release(row)

    def release_history(self) -> list[ReleaseRecord]:
        """Every release record, oldest first."""
        return [_release(row) for row in self._db.execute(f"SELECT {_RELEASE_COLUMNS} FROM releases ORDER BY seq")]

    def append_release(self, record: ReleaseRecord) -> None:
        """Move the release pointer: one appended row (a rollback is exactly this)."""
        self._db.execute(
            f"INSERT INTO releases ({_RELEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (record.at_ms, record.action, record.serving, record.canary, record.share, record.reason),
        )


_RELEASE_COLUMNS = "at_ms, action, serving, canary, share, reason"


def _release(row: sqlite3.Row) -> ReleaseRecord:
    return ReleaseRecord(
        at_ms=row["at_ms"],
        action=row["action"],
        serving=row["serving"],
        canary=row["canary"],
        share=row["share"],
        reason=row["reason"],
    )
