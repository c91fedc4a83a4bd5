"""Installed versions, locally kept adapter parts, evaluations and the release pointer in the SQLite store."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from fedloop.client.store.api import EvaluationKind, InstalledVersion, ReleaseRecord
from fedloop.client.store.row_encryption import RowCipher


class SqliteVersionRepository:
    """The `VersionRepository` of a SQLite store (adapters and local parts encrypted at rest)."""

    def __init__(self, cipher: RowCipher) -> None:
        self._cipher = cipher

    def install(self, version: InstalledVersion, adapter_bytes: bytes) -> None:
        """Keep a verified global version, its adapter encrypted at rest."""
        columns = {
            "version_id": version.version_id,
            "round": version.round,
            "parent": version.parent,
            "digest": version.digest,
            "adapter": self._cipher.encrypt("installed_versions", "adapter", version.version_id, adapter_bytes),
            "installed_at": time.time(),
        }
        self._cipher.insert("installed_versions", columns, "OR REPLACE")

    def installed(self) -> list[InstalledVersion]:
        """Installed global versions, oldest round first."""
        rows = self._cipher.checked_rows("installed_versions", order="round, installed_at")
        return [
            InstalledVersion(version_id=r["version_id"], round=r["round"], parent=r["parent"], digest=r["digest"])
            for r in rows
        ]

    def last_installed_ms(self) -> int | None:
        """When the newest version was installed here (ms), or None before any."""
        row = self._cipher.db.execute("SELECT MAX(installed_at) AS at FROM installed_versions").fetchone()
        return None if row["at"] is None else int(row["at"] * 1000)

    def adapter(self, version_id: str) -> bytes:
        """The adapter bytes of an installed version, decrypted; KeyError if it was never installed."""
        row = self._cipher.checked_row("installed_versions", "version_id = ?", (version_id,))
        if row is None:
            raise KeyError(version_id)
        return self._cipher.decrypt_bytes("installed_versions", "adapter", version_id, row["adapter"])

    def keep_local_part(self, name: str, data: bytes) -> None:
        """Keep (replace) an adapter part that never leaves the tenant, encrypted at rest."""
        columns = {
            "name": name,
            "part": self._cipher.encrypt("local_parts", "part", name, data),
            "saved_at": time.time(),
        }
        self._cipher.insert("local_parts", columns, "OR REPLACE")

    def local_part(self, name: str) -> bytes | None:
        """A kept local adapter part, decrypted; None if none was kept under `name`."""
        row = self._cipher.checked_row("local_parts", "name = ?", (name,))
        return None if row is None else self._cipher.decrypt_bytes("local_parts", "part", name, row["part"])

    def record_evaluation(self, version_id: str, kind: EvaluationKind, metrics: dict[str, Any]) -> None:
        """Keep an evaluation or training record (aggregate numbers only) with the version it concerns."""
        columns = {"version_id": version_id, "kind": str(kind), "metrics": json.dumps(metrics, sort_keys=True)}
        self._cipher.insert("evaluations", {**columns, "at": time.time()})

    def evaluations(self, version_id: str) -> list[tuple[EvaluationKind, dict[str, Any]]]:
        """(kind, metrics) of every evaluation of `version_id`, oldest first."""
        rows = self._cipher.checked_rows("evaluations", "version_id = ?", (version_id,), order="seq")
        return [(EvaluationKind(r["kind"]), json.loads(r["metrics"])) for r in rows]

    def evaluations_of_kind(self, kind: EvaluationKind) -> list[tuple[str, dict[str, Any]]]:
        """(version id, metrics) of every record of `kind`, oldest first."""
        rows = self._cipher.checked_rows("evaluations", "kind = ?", (str(kind),), order="seq")
        return [(r["version_id"], json.loads(r["metrics"])) for r in rows]

    def latest_evaluation(self, kind: EvaluationKind) -> tuple[str, dict[str, Any]] | None:
        """(version id, metrics) of the newest record of `kind`, or None."""
        row = self._cipher.checked_row(
            "evaluations", "seq = (SELECT MAX(seq) FROM evaluations WHERE kind = ?)", (str(kind),)
        )
        return None if row is None else (row["version_id"], json.loads(row["metrics"]))

    def release_state(self) -> ReleaseRecord | None:
        """The newest release record: what serves, which canary runs and on what share."""
        row = self._cipher.checked_row("releases", "seq = (SELECT MAX(seq) FROM releases)")
        return None if row is None else _release(row)

    def release_history(self) -> list[ReleaseRecord]:
        """Every release record, oldest first."""
        return [_release(row) for row in self._cipher.checked_rows("releases", order="seq")]

    def append_release(self, record: ReleaseRecord) -> None:
        """Move the release pointer: one appended row (a rollback is exactly this)."""
        self._cipher.insert(
            "releases",
            {
                "at_ms": record.at_ms,
                "action": record.action,
                "serving": record.serving,
                "canary": record.canary,
                "share": record.share,
                "reason": record.reason,
            },
        )


def _release(row: sqlite3.Row) -> ReleaseRecord:
    return ReleaseRecord(
        at_ms=row["at_ms"],
        action=row["action"],
        serving=row["serving"],
        canary=row["canary"],
        share=row["share"],
        reason=row["reason"],
    )
