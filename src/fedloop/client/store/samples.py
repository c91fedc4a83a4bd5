"""Curated samples and their pools in the SQLite store, and the moderation breaker."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from fedloop.client.store.api import (
    APART_CLUSTER,
    HELD_OUT_CLUSTER,
    Pool,
    SampleQuery,
    SampleRecord,
    SampleStatus,
    Slice,
)
from fedloop.client.store.row_encryption import RowCipher


class SqliteSampleRepository:
    """The `SampleRepository` of a SQLite store (texts and signatures encrypted, rows authenticated)."""

    def __init__(self, cipher: RowCipher, atomic: Callable[[], AbstractContextManager[None]]) -> None:
        self._cipher = cipher
        self._db = cipher.db
        self._atomic = atomic  # the store's write unit: a change and its new MAC are written together

    def insert(self, sample: SampleRecord, signature: bytes) -> None:
        """Store a curated sample with its MinHash signature (both encrypted)."""
        encrypt = self._cipher.encrypt
        self._cipher.insert(
            "samples",
            {
                "id": sample.id,
                "draft_id": sample.draft_id,
                "cluster_id": sample.cluster_id,
                "user_pseudonym": sample.user_pseudonym,
                "prompt": encrypt("samples", "prompt", sample.id, sample.prompt),
                "target": encrypt("samples", "target", sample.id, sample.target),
                "rejected": encrypt("samples", "rejected", sample.id, sample.rejected),
                "signature": encrypt("samples", "signature", sample.id, signature),
                "reward": sample.reward,
                "weight": sample.weight,
                "pool": str(sample.pool),
                "problem_type": sample.problem_type,
                "risk": sample.risk,
                "first_seen_version": sample.first_seen_version,
                "status": str(sample.status),
                "reason": sample.reason,
                "label": sample.label,
                "created_at_ms": sample.created_at_ms,
                "context": self._cipher.encrypt_messages("samples", "context", sample.id, sample.context),
            },
        )

    def find(self, query: SampleQuery = SampleQuery()) -> list[SampleRecord]:
        """The samples the query selects, oldest first, decrypted and checked against their row MACs."""
        conditions, params = ["1 = 1"], []
        for column, value in (
            ("id", query.sample_id),
            ("draft_id", query.draft_id),
            ("user_pseudonym", query.user_pseudonym),
            ("status", query.status),
        ):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(str(value))
        if query.pools is not None:
            conditions.append(f"pool IN ({', '.join('?' * len(query.pools))})")
            params += [str(pool) for pool in query.pools]
        if query.with_target or query.trainable:
            conditions.append("target IS NOT NULL")
        if query.trainable:
            conditions.append("weight > 0")
        if query.slice is not None:
            held_out, apart = f"cluster_id LIKE '{HELD_OUT_CLUSTER}%'", f"cluster_id LIKE '{APART_CLUSTER}%'"
            conditions.append(
                {Slice.HELD_OUT: held_out, Slice.APART: apart, Slice.TRAIN: f"NOT {held_out} AND NOT {apart}"}[
                    query.slice
                ]
            )
        rows = self._db.execute(
            f"SELECT * FROM samples WHERE {' AND '.join(conditions)} ORDER BY created_at_ms, rowid", params
        ).fetchall()
        return [self._record(row) for row in rows]

    def _record(self, row: sqlite3.Row) -> SampleRecord:
        self._cipher.check("samples", row)
        sample_id = row["id"]
        return SampleRecord(
            id=sample_id,
            draft_id=row["draft_id"],
            cluster_id=row["cluster_id"],
            user_pseudonym=row["user_pseudonym"],
            prompt=self._cipher.decrypt_text("samples", "prompt", sample_id, row["prompt"]) or "",
            target=self._cipher.decrypt_text("samples", "target", sample_id, row["target"]),
            rejected=self._cipher.decrypt_text("samples", "rejected", sample_id, row["rejected"]),
            reward=row["reward"],
            weight=row["weight"],
            pool=Pool(row["pool"]),
            problem_type=row["problem_type"],
            risk=row["risk"],
            first_seen_version=row["first_seen_version"],
            status=SampleStatus(row["status"]),
            reason=row["reason"],
            label=row["label"],
            created_at_ms=row["created_at_ms"],
            context=self._cipher.decrypt_messages("samples", "context", sample_id, row["context"]),
        )

    def move(self, sample_id: str, pool: Pool) -> None:
        """Put a sample in another pool."""
        self._update(sample_id, {"pool": str(pool)})

    def set_status(self, sample_id: str, status: SampleStatus, reason: str | None) -> None:
        """Change a sample's status, with why (None: no reason)."""
        self._update(sample_id, {"status": str(status), "reason": reason})

    def set_label(self, sample_id: str, label: str) -> None:
        """Attach a reviewer's label."""
        self._update(sample_id, {"label": label})

    def flag_problem(self, sample_id: str, problem_type: str, risk: str) -> None:
        """Move a sample to the problem pool, naming the problem and its risk."""
        self._update(sample_id, {"pool": str(Pool.PROBLEM), "problem_type": problem_type, "risk": risk})

    def _update(self, sample_id: str, changes: dict[str, object]) -> None:
        """Change plain columns of one sample and re-MAC it; an edited row is refused, not laundered."""
        with self._atomic():
            self._cipher.checked_rows("samples", "id = ?", (sample_id,))
            assignments = ", ".join(f"{column} = ?" for column in changes)
            self._db.execute(f"UPDATE samples SET {assignments} WHERE id = ?", (*changes.values(), sample_id))
            self._cipher.set_row_mac("samples", sample_id)

    def signatures(self) -> list[tuple[str, str, bytes]]:
        """(sample id, cluster id, MinHash signature) of every sample, for rebuilding the LSH index."""
        rows = self._db.execute("SELECT id, cluster_id, signature FROM samples").fetchall()
        return [
            (r["id"], r["cluster_id"], self._cipher.decrypt_bytes("samples", "signature", r["id"], r["signature"]))
            for r in rows
        ]

    def user_count(self, user_pseudonym: str, since_ms: int) -> int:
        """Samples a user contributed since `since_ms`."""
        row = self._db.execute(
            "SELECT COUNT(*) AS n FROM samples WHERE user_pseudonym = ? AND created_at_ms >= ?",
            (user_pseudonym, since_ms),
        ).fetchone()
        return int(row["n"])

    def recent_statuses(self, limit: int) -> list[SampleStatus]:
        """Statuses of the latest `limit` samples (newest first)."""
        rows = self._db.execute("SELECT status FROM samples ORDER BY created_at_ms DESC, rowid DESC LIMIT ?", (limit,))
        return [SampleStatus(row["status"]) for row in rows]

    def counts(self) -> dict[tuple[SampleStatus, Pool], int]:
        """How many samples have each (status, pool)."""
        rows = self._db.execute("SELECT status, pool, COUNT(*) AS n FROM samples GROUP BY status, pool").fetchall()
        return {(SampleStatus(r["status"]), Pool(r["pool"])): r["n"] for r in rows}

    def count_admitted_since(self, since_ms: int) -> int:
        """How many admitted samples were created since `since_ms` (a trigger for a round, not a decision: plain
        count, no MAC check)."""
        row = self._db.execute(
            "SELECT COUNT(*) AS n FROM samples WHERE status = ? AND created_at_ms >= ?",
            (str(SampleStatus.ADMITTED), since_ms),
        ).fetchone()
        return int(row["n"])

    def breaker_state(self) -> tuple[bool, str | None]:
        """(tripped, reason) of the moderation breaker."""
        row = self._cipher.checked_row("breaker", "id = 1")
        return (False, None) if row is None else (bool(row["tripped"]), row["reason"])

    def set_breaker(self, tripped: bool, reason: str | None) -> None:
        """Trip or reset the moderation breaker."""
        columns = {"id": 1, "tripped": int(tripped), "reason": reason, "changed_at": time.time()}
        self._cipher.insert("breaker", columns, "OR REPLACE")
