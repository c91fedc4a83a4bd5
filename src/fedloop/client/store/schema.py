"""The SQLite schema of a tenant's store, and which columns are encrypted or authenticated."""

from __future__ import annotations

from fedloop.shared.row_macs import UNMACED_EVERYWHERE

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, kind TEXT NOT NULL, content_mac TEXT NOT NULL, received_at REAL NOT NULL,
    row_mac BLOB);
CREATE TABLE IF NOT EXISTS drafts (
    id TEXT PRIMARY KEY, user_pseudonym TEXT NOT NULL, session_pseudonym TEXT NOT NULL,
    prompt BLOB NOT NULL, draft BLOB NOT NULL, model_version TEXT NOT NULL, prompt_version TEXT NOT NULL,
    position INTEGER NOT NULL, shown_at_ms INTEGER NOT NULL, row_mac BLOB, context BLOB);
CREATE TABLE IF NOT EXISTS outcomes (
    draft_id TEXT PRIMARY KEY REFERENCES drafts(id), action TEXT NOT NULL
        CHECK (action IN ('accept', 'edit', 'reject')),
    final_text BLOB, dwell_ms INTEGER NOT NULL, reward REAL NOT NULL, decided_at_ms INTEGER NOT NULL, row_mac BLOB);
CREATE TABLE IF NOT EXISTS signals (
    event_id TEXT PRIMARY KEY, user_pseudonym TEXT NOT NULL, session_pseudonym TEXT NOT NULL,
    kind TEXT NOT NULL, draft_id TEXT, value BLOB, at_ms INTEGER NOT NULL, row_mac BLOB);
CREATE INDEX IF NOT EXISTS signals_by_session ON signals(session_pseudonym, at_ms);
CREATE TABLE IF NOT EXISTS vault (
    record_id TEXT NOT NULL, placeholder TEXT NOT NULL, original BLOB NOT NULL,
    PRIMARY KEY (record_id, placeholder));
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY, draft_id TEXT NOT NULL UNIQUE REFERENCES drafts(id), cluster_id TEXT NOT NULL,
    user_pseudonym TEXT NOT NULL, prompt BLOB NOT NULL, target BLOB, rejected BLOB, signature BLOB NOT NULL,
    reward REAL NOT NULL, weight REAL NOT NULL, pool TEXT NOT NULL, problem_type TEXT, risk TEXT NOT NULL,
    first_seen_version TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, label TEXT,
    created_at_ms INTEGER NOT NULL, row_mac BLOB, context BLOB);
CREATE INDEX IF NOT EXISTS samples_by_cluster ON samples(cluster_id);
CREATE INDEX IF NOT EXISTS samples_by_user ON samples(user_pseudonym, created_at_ms);
CREATE TABLE IF NOT EXISTS problems (
    draft_id TEXT NOT NULL REFERENCES drafts(id), problem_type TEXT NOT NULL, model_version TEXT NOT NULL,
    detected_at_ms INTEGER NOT NULL, row_mac BLOB, PRIMARY KEY (draft_id, problem_type));
CREATE TABLE IF NOT EXISTS breaker (
    id INTEGER PRIMARY KEY CHECK (id = 1), tripped INTEGER NOT NULL, reason TEXT, changed_at REAL NOT NULL,
    row_mac BLOB);
CREATE TABLE IF NOT EXISTS evaluations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, version_id TEXT NOT NULL, kind TEXT NOT NULL, metrics TEXT NOT NULL,
    at REAL NOT NULL, row_mac BLOB);
CREATE TABLE IF NOT EXISTS installed_versions (
    version_id TEXT PRIMARY KEY, round INTEGER NOT NULL, parent TEXT, digest TEXT NOT NULL, adapter BLOB NOT NULL,
    installed_at REAL NOT NULL, row_mac BLOB);
CREATE TABLE IF NOT EXISTS local_parts (
    name TEXT PRIMARY KEY, part BLOB NOT NULL, saved_at REAL NOT NULL, row_mac BLOB);
CREATE TABLE IF NOT EXISTS releases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, action TEXT NOT NULL, serving TEXT,
    canary TEXT, share REAL NOT NULL, reason TEXT NOT NULL, row_mac BLOB);
CREATE INDEX IF NOT EXISTS drafts_by_version ON drafts(model_version, shown_at_ms);
"""
# The plain columns of each row that a MAC authenticates (with the row's key column first): every table whose
# rows decide anything. A table of neither list fails test_store.py's tamper test.
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
    "events": ("event_id", "kind", "content_mac", "received_at"),
    "signals": ("event_id", "user_pseudonym", "session_pseudonym", "kind", "draft_id", "at_ms"),
    "problems": ("draft_id", "problem_type", "model_version", "detected_at_ms"),
    "breaker": ("id", "tripped", "reason", "changed_at"),
    "evaluations": ("seq", "version_id", "kind", "metrics", "at"),
    "installed_versions": ("version_id", "round", "parent", "digest", "installed_at"),
    "local_parts": ("name", "saved_at"),
    "releases": ("seq", "at_ms", "action", "serving", "canary", "share", "reason"),
}
# Tables without a row MAC, and what protects them instead.
UNMACED_TABLES = {
    **UNMACED_EVERYWHERE,
    "vault": "its one plain value is the placeholder, and the original is SM4-GCM encrypted for record/placeholder",
}
# Columns added after stores were first written: (table, column, type); a store without one gets it on open.
ADDED_COLUMNS = (("drafts", "context", "BLOB"), ("samples", "context", "BLOB"))
# Encrypted columns and the key column of their table: what key rotation walks over.
ENCRYPTED_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "drafts": ("id", ("prompt", "draft", "context")),
    "outcomes": ("draft_id", ("final_text",)),
    "signals": ("event_id", ("value",)),
    "vault": ("record_id || '/' || placeholder", ("original",)),
    "samples": ("id", ("prompt", "target", "rejected", "signature", "context")),
    "installed_versions": ("version_id", ("adapter",)),
    "local_parts": ("name", ("part",)),
}
