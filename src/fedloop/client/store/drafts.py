"""Drafts and outcomes in the SQLite store, with the product's signals, the problems derived from them, and the
PII vault."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from fedloop.client.privacy.placeholders import PlaceholderMap
from fedloop.client.store.api import Action, DraftRecord, OutcomeRecord, SignalRecord, UserRates, WindowEvent
from fedloop.client.store.row_encryption import RowCipher

_KEYS_PER_QUERY = 500  # keys in one `IN (...)`: well under SQLite's limit of bound parameters


class SqliteDraftRepository:
    """The `DraftRepository` of a SQLite store (texts encrypted, drafts and outcomes authenticated)."""

    def __init__(self, cipher: RowCipher) -> None:
        self._cipher = cipher
        self._db = cipher.db

    # -- events (idempotency) -----------------------------------------------------------------
    def event_mac(self, event_id: str) -> str | None:
        """The content MAC stored for `event_id`, or None if it was never stored."""
        row = self._cipher.checked_row("events", "event_id = ?", (event_id,))
        return None if row is None else str(row["content_mac"])

    def insert_event(self, event_id: str, kind: str, content_mac: str) -> None:
        """Remember that `event_id` was stored with this content MAC."""
        columns = {"event_id": event_id, "kind": kind, "content_mac": content_mac, "received_at": time.time()}
        self._cipher.insert("events", columns)

    def count_events(self) -> int:
        """How many distinct events are stored."""
        return int(self._db.execute("SELECT COUNT(*) AS n FROM events").fetchone()["n"])

    # -- drafts and outcomes --------------------------------------------------------------------
    def insert_draft(self, draft: DraftRecord) -> None:
        """Store a shown draft (texts already redacted, ids already pseudonymised)."""
        columns = {
            "id": draft.id,
            "user_pseudonym": draft.user_pseudonym,
            "session_pseudonym": draft.session_pseudonym,
            "prompt": self._cipher.encrypt("drafts", "prompt", draft.id, draft.prompt),
            "draft": self._cipher.encrypt("drafts", "draft", draft.id, draft.draft),
            "model_version": draft.model_version,
            "prompt_version": draft.prompt_version,
            "position": draft.position,
            "shown_at_ms": draft.shown_at_ms,
            "context": self._cipher.encrypt_messages("drafts", "context", draft.id, draft.context),
        }
        self._cipher.insert("drafts", columns)

    def get_draft(self, draft_id: str) -> DraftRecord | None:
        """A stored draft, decrypted, or None."""
        row = self._db.execute("SELECT * FROM drafts WHERE id = ?", (draft_id,)).fetchone()
        if row is None:
            return None
        self._cipher.check("drafts", row)
        return DraftRecord(
            id=row["id"],
            user_pseudonym=row["user_pseudonym"],
            session_pseudonym=row["session_pseudonym"],
            prompt=self._cipher.decrypt_text("drafts", "prompt", row["id"], row["prompt"]) or "",
            draft=self._cipher.decrypt_text("drafts", "draft", row["id"], row["draft"]) or "",
            model_version=row["model_version"],
            prompt_version=row["prompt_version"],
            position=row["position"],
            shown_at_ms=row["shown_at_ms"],
            context=self._cipher.decrypt_messages("drafts", "context", row["id"], row["context"]),
        )

    def has_outcome(self, draft_id: str) -> bool:
        """Whether this draft already has an outcome."""
        return self._db.execute("SELECT 1 FROM outcomes WHERE draft_id = ?", (draft_id,)).fetchone() is not None

    def insert_outcome(self, outcome: OutcomeRecord) -> None:
        """Store the user's decision on a draft (final text already redacted)."""
        columns = {
            "draft_id": outcome.draft_id,
            "action": str(outcome.action),
            "final_text": self._cipher.encrypt("outcomes", "final_text", outcome.draft_id, outcome.final_text),
            "dwell_ms": outcome.dwell_ms,
            "reward": outcome.reward,
            "decided_at_ms": outcome.decided_at_ms,
        }
        self._cipher.insert("outcomes", columns)

    def get_outcome(self, draft_id: str) -> OutcomeRecord | None:
        """The outcome of a draft, decrypted, or None."""
        row = self._db.execute("SELECT * FROM outcomes WHERE draft_id = ?", (draft_id,)).fetchone()
        if row is None:
            return None
        self._cipher.check("outcomes", row)
        return OutcomeRecord(
            draft_id=row["draft_id"],
            action=Action(row["action"]),
            final_text=self._cipher.decrypt_text("outcomes", "final_text", row["draft_id"], row["final_text"]),
            dwell_ms=row["dwell_ms"],
            reward=row["reward"],
            decided_at_ms=row["decided_at_ms"],
        )

    def outcome_counts(self) -> dict[Action, int]:
        """How many drafts ended in each action."""
        rows = self._db.execute("SELECT action, COUNT(*) AS n FROM outcomes GROUP BY action").fetchall()
        return {Action(row["action"]): row["n"] for row in rows}

    def outcomes_by_version(self) -> list[tuple[str, str, int, int]]:
        """(model version, prompt version, decided drafts, accepted drafts) for every pair that served."""
        rows = self._db.execute(
            "SELECT d.model_version AS model_version, d.prompt_version AS prompt_version, COUNT(*) AS decided, "
            "COALESCE(SUM(o.action = ?), 0) AS accepted "
            "FROM drafts d JOIN outcomes o ON o.draft_id = d.id GROUP BY d.model_version, d.prompt_version "
            "ORDER BY MIN(d.shown_at_ms)",
            (str(Action.ACCEPT),),
        ).fetchall()
        return [(r["model_version"], r["prompt_version"], r["decided"], r["accepted"]) for r in rows]

    def drafting_versions(self) -> list[str]:
        """Model versions that drafted, in the order they first did."""
        rows = self._db.execute(
            "SELECT model_version FROM drafts GROUP BY model_version ORDER BY MIN(shown_at_ms), MIN(rowid)"
        )
        return [row["model_version"] for row in rows]

    def window_events(
        self, versions: Sequence[str], since_ms: int, after_outcome: int, after_problem: int
    ) -> tuple[list[WindowEvent], list[WindowEvent]]:
        """Outcomes and problem flags of the versions' drafts shown since `since_ms`, recorded after the rowids
        `after_outcome` / `after_problem`, oldest first. Only the new rows are read (a range of rowids joined to
        drafts by key), and each outcome, problem and draft is checked against its row MAC: an SQL edit cannot sway
        a release."""
        marks = ", ".join("?" * len(versions))
        window = f"d.model_version IN ({marks}) AND d.shown_at_ms >= ?"
        events = []
        for table, after in (("outcomes", after_outcome), ("problems", after_problem)):
            rowids = [
                row[0]
                for row in self._db.execute(
                    # CROSS JOIN keeps SQLite from walking the window's drafts: new rows first, then their drafts
                    f"SELECT t.rowid FROM {table} t CROSS JOIN drafts d ON d.id = t.draft_id "
                    f"WHERE t.rowid > ? AND {window} ORDER BY t.rowid",
                    (after, *versions, since_ms),
                )
            ]
            rows = self._checked_in(table, "rowid", rowids)
            drafts = {row["id"]: row for row in self._checked_in("drafts", "id", [r["draft_id"] for r in rows])}
            events.append(
                [
                    WindowEvent(
                        row["event_rowid"],
                        row["draft_id"],
                        drafts[row["draft_id"]]["user_pseudonym"],
                        drafts[row["draft_id"]]["model_version"],
                        Action(row["action"]) if table == "outcomes" else None,
                    )
                    for row in rows
                ]
            )
        return events[0], events[1]

    def _checked_in(self, table: str, column: str, keys: list[object]) -> list[sqlite3.Row]:
        """The rows of `table` whose `column` is one of `keys` (with their rowid as `event_rowid`), each checked,
        in rowid order."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[start : start + _KEYS_PER_QUERY]
            rows += self._db.execute(
                f"SELECT rowid AS event_rowid, * FROM {table} WHERE {column} IN ({', '.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
        return sorted((self._cipher.check(table, row) for row in rows), key=lambda row: row["event_rowid"])

    def user_rates(self, since_ms: int, until_ms: int) -> list[UserRates]:
        """Per user: decided drafts shown in [since_ms, until_ms) and how many were accepted, rejected, flagged by a
        rule. Every row counted is checked against its row MAC."""
        span = "shown_at_ms >= ? AND shown_at_ms < ?"
        drafts = self._cipher.checked_rows("drafts", span, (since_ms, until_ms))
        inside = f"draft_id IN (SELECT id FROM drafts WHERE {span})"
        outcomes = {
            row["draft_id"]: Action(row["action"])
            for row in self._cipher.checked_rows("outcomes", inside, (since_ms, until_ms))
        }
        flagged = {row["draft_id"] for row in self._cipher.checked_rows("problems", inside, (since_ms, until_ms))}
        per_user: dict[str, list[int]] = {}
        for draft in drafts:
            action = outcomes.get(draft["id"])
            if action is None:
                continue
            counts = per_user.setdefault(draft["user_pseudonym"], [0, 0, 0, 0])
            counts[0] += 1
            counts[1] += action == Action.ACCEPT
            counts[2] += action == Action.REJECT
            counts[3] += draft["id"] in flagged
        return [UserRates(user, n, (a, r, f)) for user, (n, a, r, f) in per_user.items()]

    # -- signals --------------------------------------------------------------------------------
    def insert_signal(self, signal: SignalRecord) -> None:
        """Store an implicit signal (value already redacted)."""
        columns = {
            "event_id": signal.event_id,
            "user_pseudonym": signal.user_pseudonym,
            "session_pseudonym": signal.session_pseudonym,
            "kind": signal.kind,
            "draft_id": signal.draft_id,
            "value": self._cipher.encrypt("signals", "value", signal.event_id, signal.value),
            "at_ms": signal.at_ms,
        }
        self._cipher.insert("signals", columns)

    def session_signals(self, session_pseudonym: str, limit: int = 200) -> list[SignalRecord]:
        """The latest `limit` signals of a session, oldest first, decrypted."""
        rows = self._db.execute(
            "SELECT * FROM (SELECT rowid AS position, * FROM signals WHERE session_pseudonym = ? "
            "ORDER BY at_ms DESC, rowid DESC LIMIT ?) ORDER BY at_ms, position",
            (session_pseudonym, limit),
        ).fetchall()
        for row in rows:
            self._cipher.check("signals", row)
        return [
            SignalRecord(
                event_id=r["event_id"],
                user_pseudonym=r["user_pseudonym"],
                session_pseudonym=r["session_pseudonym"],
                kind=r["kind"],
                draft_id=r["draft_id"],
                value=self._cipher.decrypt_text("signals", "value", r["event_id"], r["value"]),
                at_ms=r["at_ms"],
            )
            for r in rows
        ]

    def session_drafts(self, session_pseudonym: str) -> list[tuple[str, str, int]]:
        """(draft id, model version, shown at) of a session's drafts, oldest first."""
        rows = self._db.execute(
            "SELECT id, model_version, shown_at_ms FROM drafts WHERE session_pseudonym = ? ORDER BY shown_at_ms, rowid",
            (session_pseudonym,),
        ).fetchall()
        return [(r["id"], r["model_version"], r["shown_at_ms"]) for r in rows]

    def signal_kinds(self) -> set[str]:
        """Every signal kind the product has ever reported."""
        return {row["kind"] for row in self._db.execute("SELECT DISTINCT kind FROM signals")}

    def open_sessions(self, since_ms: int) -> list[str]:
        """Sessions with a draft shown since `since_ms`."""
        rows = self._db.execute("SELECT DISTINCT session_pseudonym FROM drafts WHERE shown_at_ms >= ?", (since_ms,))
        return [row["session_pseudonym"] for row in rows]

    # -- problems -------------------------------------------------------------------------------
    def record_problem(self, draft_id: str, problem_type: str, model_version: str, at_ms: int) -> bool:
        """Flag a draft with a problem type; returns False if it was already flagged so."""
        columns = {
            "draft_id": draft_id,
            "problem_type": problem_type,
            "model_version": model_version,
            "detected_at_ms": at_ms,
        }
        return self._cipher.insert("problems", columns, "OR IGNORE")

    def problem_rate(self, problem_type: str, model_version: str) -> tuple[int, int]:
        """(drafts of `model_version` flagged with `problem_type`, all drafts of `model_version`)."""
        flagged = len(
            self._cipher.checked_rows(
                "problems", "problem_type = ? AND model_version = ?", (problem_type, model_version)
            )
        )
        total = self._db.execute(
            "SELECT COUNT(*) AS n FROM drafts WHERE model_version = ?", (model_version,)
        ).fetchone()["n"]
        return flagged, total

    def problem_types(self) -> list[str]:
        """Every problem type a derived-signal rule has flagged so far."""
        return sorted({row["problem_type"] for row in self._cipher.checked_rows("problems")})

    # -- vault ----------------------------------------------------------------------------------
    def placeholder_map(self, record_id: str) -> PlaceholderMap:
        """The placeholders already assigned in a record, decrypted from the vault."""
        rows = self._db.execute("SELECT placeholder, original FROM vault WHERE record_id = ?", (record_id,))
        return PlaceholderMap(
            {self._original(record_id, r["placeholder"], r["original"]): r["placeholder"] for r in rows}
        )

    def vault_add(self, record_id: str, placeholder: str, original: str) -> None:
        """Keep the original behind a placeholder, encrypted."""
        encrypted = self._cipher.encrypt("vault", "original", _vault_key(record_id, placeholder), original)
        self._db.execute(
            "INSERT INTO vault (record_id, placeholder, original) VALUES (?, ?, ?)", (record_id, placeholder, encrypted)
        )

    def vault_lookup(self, record_id: str, placeholder: str) -> str | None:
        """The original behind a placeholder, or None (callers must audit the reveal)."""
        row = self._db.execute(
            "SELECT original FROM vault WHERE record_id = ? AND placeholder = ?", (record_id, placeholder)
        ).fetchone()
        return None if row is None else self._original(record_id, placeholder, row["original"])

    def _original(self, record_id: str, placeholder: str, encrypted: bytes) -> str:
        return self._cipher.decrypt_text("vault", "original", _vault_key(record_id, placeholder), encrypted) or ""


def _vault_key(record_id: str, placeholder: str) -> str:
    """A vault row's key, as ENCRYPTED_COLUMNS names it for key rotation: record id / placeholder."""
    return f"{record_id}/{placeholder}"
