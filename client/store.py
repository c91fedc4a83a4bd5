"""The tenant's feedback store: SQLite (WAL) with every text column SM4-GCM encrypted.

Each encrypted value carries its own nonce and is bound to `table/column/record
id` as associated data, so a value copied into another row or column fails to
decrypt. User ids are stored only as keyed SM3 HMAC pseudonyms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from fedloop.shared.crypto import hmac_sm3, open_field, seal_field, sm3_digest
from fedloop.shared.sqlite_db import open_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS drafts (
    id TEXT PRIMARY KEY,
    user_pseudonym TEXT NOT NULL,
    prompt BLOB NOT NULL,
    draft BLOB NOT NULL,
    model_version TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    draft_id TEXT PRIMARY KEY REFERENCES drafts(id),
    action TEXT NOT NULL CHECK (action IN ('accept', 'edit', 'reject')),
    final_text BLOB,
    reward REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS installed_versions (
    version_id TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    parent TEXT,
    digest TEXT NOT NULL,
    adapter BLOB NOT NULL,
    installed_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class TrainingExample:
    """A prompt and the reply the user ended up with, with the outcome's reward."""

    prompt: str
    target: str
    reward: float


@dataclass(frozen=True)
class InstalledVersion:
    """A global version this tenant verified and installed."""

    version_id: str
    round: int
    parent: str | None
    digest: str


class FeedbackStore:
    """Encrypted-at-rest storage of drafts, outcomes and installed global versions."""

    def __init__(self, path: Path, storage_key: bytes) -> None:
        self._key = storage_key
        self._pseudonym_key = sm3_digest(b"fedloop/pseudonym/" + storage_key)
        self._db = open_database(path, _SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _seal(self, table: str, column: str, record_id: str, text: str) -> bytes:
        return seal_field(self._key, text.encode(), f"{table}/{column}/{record_id}".encode())

    def _open(self, table: str, column: str, record_id: str, sealed: bytes) -> str:
        return open_field(self._key, sealed, f"{table}/{column}/{record_id}".encode()).decode()

    def pseudonym(self, user_id: str) -> str:
        """The stable keyed pseudonym under which `user_id` is stored."""
        return hmac_sm3(self._pseudonym_key, user_id.encode()).hex()[:32]

    def insert_draft(self, draft_id: str, user_id: str, prompt: str, draft: str, model_version: str) -> None:
        """Store a shown draft (texts already redacted by the caller)."""
        self._db.execute(
            "INSERT INTO drafts VALUES (?, ?, ?, ?, ?, ?)",
            (draft_id, self.pseudonym(user_id), self._seal("drafts", "prompt", draft_id, prompt),
             self._seal("drafts", "draft", draft_id, draft), model_version, time.time()),
        )

    def has_draft(self, draft_id: str) -> bool:
        """Whether a draft with this id was recorded."""
        return self._db.execute("SELECT 1 FROM drafts WHERE id = ?", (draft_id,)).fetchone() is not None

    def has_outcome(self, draft_id: str) -> bool:
        """Whether this draft already has an outcome."""
        return self._db.execute("SELECT 1 FROM outcomes WHERE draft_id = ?", (draft_id,)).fetchone() is not None

    def insert_outcome(self, draft_id: str, action: str, final_text: str | None, reward: float) -> None:
        """Store the user's decision on a draft (final text already redacted by the caller)."""
        sealed = None if final_text is None else self._seal("outcomes", "final_text", draft_id, final_text)
        self._db.execute("INSERT INTO outcomes VALUES (?, ?, ?, ?, ?)",
                         (draft_id, action, sealed, reward, time.time()))

    def training_examples(self) -> list[TrainingExample]:
        """Every decided draft with a reply to learn from, oldest first.

        Accepted drafts teach the draft itself; edited and rejected drafts teach
        the text the user sent instead (a rejection without a reply teaches nothing).
        """
        rows = self._db.execute(
            "SELECT d.id, d.prompt, d.draft, o.action, o.final_text, o.reward "
            "FROM drafts d JOIN outcomes o ON o.draft_id = d.id ORDER BY d.created_at, d.id"
        ).fetchall()
        examples = []
        for draft_id, prompt, draft, action, final_text, reward in rows:
            if action == "accept":
                target = self._open("drafts", "draft", draft_id, draft)
            elif final_text is not None:
                target = self._open("outcomes", "final_text", draft_id, final_text)
            else:
                continue
            examples.append(TrainingExample(self._open("drafts", "prompt", draft_id, prompt), target, reward))
        return examples

    def outcome_counts(self) -> dict[str, int]:
        """How many drafts ended in each action."""
        return dict(self._db.execute("SELECT action, COUNT(*) FROM outcomes GROUP BY action").fetchall())

    def install_version(self, version: InstalledVersion, adapter_bytes: bytes) -> None:
        """Keep a verified global version, its adapter encrypted at rest."""
        self._db.execute(
            "INSERT OR REPLACE INTO installed_versions VALUES (?, ?, ?, ?, ?, ?)",
            (version.version_id, version.round, version.parent, version.digest,
             seal_field(self._key, adapter_bytes, f"installed_versions/adapter/{version.version_id}".encode()),
             time.time()),
        )

    def installed_versions(self) -> list[InstalledVersion]:
        """Installed global versions, oldest round first."""
        rows = self._db.execute(
            "SELECT version_id, round, parent, digest FROM installed_versions ORDER BY round, installed_at"
        ).fetchall()
        return [InstalledVersion(*row) for row in rows]
