"""The chained audit log catches edits and deletions; `fedloop status` and `fedloop audit` on both sides."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedloop.cli import app
from fedloop.client.release.controller import ReleaseController
from fedloop.client.store import FeedbackStore
from fedloop.client.tenant_settings import ReleaseSection
from fedloop.server.registry import VersionRegistry
from fedloop.shared.keys import init_keys


@pytest.fixture
def tenant_config(tmp_path: Path) -> Path:
    """A tenant TOML whose store already holds a few audited actions."""
    identity = init_keys("tenant", "acme", tmp_path / "keys")
    store = FeedbackStore(tmp_path / "data" / "feedback.db", identity.storage, identity.pseudonym_key)
    controller = ReleaseController(store, ReleaseSection(), actor="li.wei")
    controller.offer("v1", "gates passed")
    controller.offer("v2", "gates passed")
    controller.rollback("complaints")
    store.audit("ana", "vault.reveal", "draft-1 <CN_MOBILE_1>; reason: call back")
    store.close()
    config = tmp_path / "tenant.toml"
    config.write_text(f'[tenant]\nname = "acme"\nkeys_dir = "{tmp_path / "keys"}"\ndata_dir = "{tmp_path / "data"}"\n')
    return config


def tamper(database: Path, sql: str) -> None:
    with sqlite3.connect(database) as db:
        db.execute(sql)


def test_an_intact_log_verifies_and_any_edit_or_deletion_is_named(tenant_config: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--tenant", str(tenant_config)])
    assert ok.exit_code == 0 and "audit log intact: 5 entries" in ok.output  # key first use + 3 release + reveal
    database = tmp_path / "data" / "feedback.db"

    tamper(database, "UPDATE audit SET actor = 'someone-else' WHERE action = 'vault.reveal'")
    edited = runner.invoke(app, ["audit", "verify", "--tenant", str(tenant_config)])
    assert edited.exit_code == 1 and "entry 5 was altered" in edited.output
    tamper(database, "UPDATE audit SET actor = 'ana' WHERE action = 'vault.reveal'")
    assert runner.invoke(app, ["audit", "verify", "--tenant", str(tenant_config)]).exit_code == 0

    tamper(database, "DELETE FROM audit WHERE seq = 3")
    deleted = runner.invoke(app, ["audit", "verify", "--tenant", str(tenant_config)])
    assert deleted.exit_code == 1 and "entries 3..3 are missing" in deleted.output


def test_deleting_the_newest_entries_is_caught_against_a_kept_head(tenant_config: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    head = runner.invoke(app, ["audit", "verify", "--tenant", str(tenant_config)]).output.split("head ")[1].split()[0]
    tamper(tmp_path / "data" / "feedback.db", "DELETE FROM audit WHERE seq = 5")
    assert runner.invoke(app, ["audit", "verify", "--tenant", str(tenant_config)]).exit_code == 0  # still a chain
    truncated = runner.invoke(app, ["audit", "verify", "--tenant", str(tenant_config), "--expect-head", head])
    assert truncated.exit_code == 1 and "newer entries were deleted" in truncated.output


def test_tenant_status_json(tenant_config: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--tenant", str(tenant_config), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["tenant"] == "acme" and status["serving"] == "v1" and status["canary"] is None
    assert status["last_release_action"]["action"] == "rollback"
    assert status["breaker"] == {"tripped": False, "reason": None} and status["audit"]["intact"]
    assert status["keys"]["sm2"]["age_days"] >= 0 and status["keys"]["storage"]["active_key"] == 1
    table = CliRunner().invoke(app, ["status", "--tenant", str(tenant_config)])
    assert table.exit_code == 0 and "serving" in table.output and "v1" in table.output


def test_hq_status_and_audit_show_release_decisions_and_refusals(tmp_path: Path) -> None:
    keys = tmp_path / "hq-home" / "keys"
    init_keys("tenant", "acme", tmp_path / "acme-keys")
    keys.mkdir(parents=True)
    (keys / "acme.sm2.pub.json").write_bytes((tmp_path / "acme-keys" / "acme.sm2.pub.json").read_bytes())
    registry = VersionRegistry(tmp_path / "hq-home" / "hq", init_keys("hq", "hq", keys))
    first = registry.create(b"a0", None, "run", 0, {}, "init")
    second = registry.create(b"a1", first.id, "run", 1, {"acme": 3}, "exact")
    registry.record_round(
        "run",
        1,
        second.id,
        {
            "contributors": {"acme": 3},
            "duration_s": 9.0,
            "refused": {},
            "evaluation": {"acme": {"gates-passed": 0}, "bolt": {"gates-passed": 1}},
        },
    )
    registry.promote(second.id, "hq-ops")
    registry.audit("hq", "update.refused", "run run round 1 bolt: bad-signature")
    registry.close()
    config = tmp_path / "hq.toml"
    config.write_text(f'[hq]\nhome = "{tmp_path / "hq-home"}"\n')
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--hq", str(config), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["newest"] == second.id and status["versions_by_status"] == {"candidate": 1, "canary": 1}
    assert status["last_round"]["round"] == 1 and status["trusted_tenants"] == ["acme"]
    assert status["last_round"]["finished_at"].endswith(" UTC") and status["last_round"]["finished_at"][:2] == "20"
    assert status["refused_by_tenant_gates"] == {second.id: ["acme"]}
    table = runner.invoke(app, ["status", "--hq", str(config)])
    assert f"refused_by_tenant_gates.{second.id}" in table.output and "['acme']" in table.output
    shown = runner.invoke(app, ["audit", "show", "--hq", str(config)])
    assert shown.exit_code == 0 and "version.promote" in shown.output and "update.refused" in shown.output
    assert runner.invoke(app, ["audit", "verify", "--hq", str(config)]).exit_code == 0
    neither = runner.invoke(app, ["status"])
    assert neither.exit_code == 2 and "--tenant" in neither.output


def test_an_edit_with_the_chain_rebuilt_by_someone_without_the_key_files_is_caught(
    tenant_config: Path, tmp_path: Path
) -> None:
    """The attacker can write the database and knows the format, so they re-chain it with SM3 (or any key)."""
    from fedloop.shared.audit import GENESIS, entry_digest

    database = tmp_path / "data" / "feedback.db"
    tamper(database, "UPDATE audit SET actor = 'someone-else' WHERE action = 'vault.reveal'")
    with sqlite3.connect(database) as db:
        prev = GENESIS
        for seq, at, actor, action, subject in db.execute(
            "SELECT seq, at, actor, action, subject FROM audit ORDER BY seq"
        ).fetchall():
            digest = entry_digest(None, prev, seq, at, actor, action, subject)
            db.execute("UPDATE audit SET prev = ?, digest = ? WHERE seq = ?", (prev, digest, seq))
            prev = digest
    rebuilt = CliRunner().invoke(app, ["audit", "verify", "--tenant", str(tenant_config)])
    print(rebuilt.output)
    assert rebuilt.exit_code == 1 and "entry 1 was altered after it was written, or its chain was rebuilt" in " ".join(
        rebuilt.output.split()
    )


def test_a_log_from_before_the_audit_key_is_rechained_once_and_says_so(tmp_path: Path) -> None:
    from fedloop.shared.audit import GENESIS, entry_digest

    identity = init_keys("tenant", "acme", tmp_path / "keys")
    database = tmp_path / "old.db"
    with sqlite3.connect(database) as db:  # an SM3-chained log as the previous fedloop wrote it
        db.execute(
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,"
            " action TEXT NOT NULL, subject TEXT NOT NULL, prev TEXT NOT NULL DEFAULT '', "
            "digest TEXT NOT NULL DEFAULT '')"
        )
        db.execute(
            "INSERT INTO audit VALUES (1, 1.5, 'ana', 'sample.move', 's-1', ?, ?)",
            (GENESIS, entry_digest(None, GENESIS, 1, 1.5, "ana", "sample.move", "s-1")),
        )
    store = FeedbackStore(database, identity.storage, identity.pseudonym_key)
    entries = store.audit_log.entries()
    assert store.audit_log.verify().ok and [e.action for e in entries][:2] == ["sample.move", "audit.keyed"]
    store.close()


FORGERIES = {
    "edited": "UPDATE audit SET actor = 'someone-else', digest = '' WHERE seq = 1",
    "appended": "INSERT INTO audit (at, actor, action, subject, prev, digest) "
    "SELECT 1.0, 'mallory', 'version.promote', 'v9', digest, '' FROM audit ORDER BY seq DESC LIMIT 1",
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize("side", ["tenant", "hq"])
def test_an_entry_forged_or_edited_with_an_empty_digest_is_tampering_not_rechained(
    side: str, forgery: str, tenant_config: Path, tmp_path: Path
) -> None:
    """Without the key files: edit an entry and clear its digest, or append one with digest ''. Every open used to
    re-chain such rows under the audit key, so `audit verify` said "intact", even against a kept head."""
    if side == "tenant":
        database, target = tmp_path / "data" / "feedback.db", ["--tenant", str(tenant_config)]
    else:
        registry = VersionRegistry(tmp_path / "hq-home" / "hq", init_keys("hq", "hq", tmp_path / "hq-home" / "keys"))
        registry.create(b"a0", None, "run", 0, {}, "init")
        registry.close()
        (tmp_path / "hq.toml").write_text(f'[hq]\nhome = "{tmp_path / "hq-home"}"\n')
        database, target = tmp_path / "hq-home" / "hq" / "registry.db", ["--hq", str(tmp_path / "hq.toml")]
    runner = CliRunner()
    intact = runner.invoke(app, ["audit", "verify", *target])
    assert intact.exit_code == 0, intact.output
    head = intact.output.split("head ")[1].split()[0]
    tamper(database, FORGERIES[forgery])
    for expect_head in ([], ["--expect-head", head], []):  # each verify opens the database: nothing re-chains it
        verdict = runner.invoke(app, ["audit", "verify", *target, *expect_head])
        print(verdict.output)
        assert verdict.exit_code == 1 and "has no digest: it was written or edited outside fedloop" in " ".join(
            verdict.output.split()
        )
