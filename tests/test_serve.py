"""The OpenAI-compatible draft endpoint on a real uvicorn server on 127.0.0.1, driven by the official `openai` client.

Drafts come from the versions the release pointer names (serving and canary
stay loaded); each is recorded with its version and answered with its draft
id; outcomes are reported by draft id; bad requests are refused with a 4xx that
names the field, and nothing of them is stored; a rollback reaches the next
request within a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from serve_helpers import Endpoint, install_versions, start_endpoint

from fedloop.client.release.controller import ReleaseController
from fedloop.client.store import FeedbackStore
from fedloop.client.tenant_settings import ReleaseSection
from fedloop.shared.keys import load_identity

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Where is my order 12345? It has not arrived."}
]


@pytest.fixture()
def endpoint(make_tenant, tiny_model_dir: Path) -> Iterator[Endpoint]:
    runtime = make_tenant(
        "acme",
        release=ReleaseSection(
            canary_share=0.5,
            widened_share=0.5,
            min_drafts_per_arm=5,
            min_users_per_arm=5,
            decide_every_outcomes=1,
            guard_h=0,
        ),
    )
    install_versions(runtime, tiny_model_dir, ("v0", "v1"))
    controller = ReleaseController(runtime.store, runtime.settings.release)
    controller.offer("v0", "gates passed")
    controller.offer("v1", "gates passed")  # canary on half of the users
    served = start_endpoint(runtime, tiny_model_dir)
    yield served
    served.stop()


def client(endpoint: Endpoint, key: str = "unused-on-loopback") -> openai.OpenAI:
    return openai.OpenAI(base_url=endpoint.base_url, api_key=key, max_retries=0)


def test_drafts_come_from_the_routed_version_and_are_recorded_with_it(endpoint: Endpoint) -> None:
    api = client(endpoint)
    seen = {}
    for index in range(16):
        user = f"customer-{index}"
        completion = api.chat.completions.create(model="fedloop", messages=QUESTION, user=user, max_tokens=8)
        routed = endpoint.controller.route(endpoint.runtime.store.pseudonym(user))
        assert completion.model == routed and completion.choices[0].message.content
        stored = endpoint.runtime.store.drafts.get_draft(completion.id)
        assert stored is not None and stored.model_version == routed and stored.draft
        assert completion.model_extra is not None
        seen[routed] = completion.model_extra["fedloop"]["canary"]
    assert seen == {"v0": False, "v1": True}  # both arms drafted, the canary flagged
    assert {"v0", "v1"} <= endpoint.service.loaded()  # both stay loaded: switching costs no reload


def test_streaming_carries_the_draft_id_and_records_the_whole_draft(endpoint: Endpoint) -> None:
    chunks = list(
        client(endpoint).chat.completions.create(
            model="fedloop", messages=QUESTION, user="streamer", max_tokens=8, stream=True
        )
    )
    assert len({c.id for c in chunks}) == 1 and chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    stored = endpoint.runtime.store.drafts.get_draft(chunks[0].id)
    assert stored is not None and stored.draft == text.strip() and stored.model_version == chunks[0].model


def test_outcomes_by_draft_id_drive_release_decisions_as_they_arrive(endpoint: Endpoint) -> None:
    api = client(endpoint)
    for index in range(40):
        completion = api.chat.completions.create(model="fedloop", messages=QUESTION, user=f"u{index}", max_tokens=4)
        action = "reject" if completion.model == "v1" else "accept"  # the canary drafts badly
        reply = httpx.post(
            f"{endpoint.base_url}/drafts/{completion.id}/outcome",
            json={"action": action, "final_text": "It ships today." if action == "reject" else None, "dwell_ms": 3000},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        current = endpoint.controller.state()
        if current is not None and current.canary is None:
            break
    state = endpoint.controller.state()
    assert state is not None and (state.action, state.serving, state.canary) == (
        "rollback",
        "v0",
        None,
    )  # no round needed
    after = api.chat.completions.create(model="fedloop", messages=QUESTION, user="u1", max_tokens=4)
    assert after.model == "v0"


def test_a_rolled_back_version_is_not_listed_and_cannot_be_named_until_readmitted(endpoint: Endpoint) -> None:
    """Issue 30: v0006, refused at both tenants, was still listed in /v1/models and drafted when named."""
    api = client(endpoint)
    endpoint.controller.rollback("operator: complaints")
    assert [m.id for m in api.models.list().data] == ["fedloop", "v0"]
    with pytest.raises(openai.NotFoundError, match="refused or rolled back here"):
        api.chat.completions.create(model="v1", messages=QUESTION, user="named", max_tokens=4)
    assert httpx.get(f"{endpoint.base_url}/models/v1", timeout=10).status_code == 404
    endpoint.controller.readmit("v1", "operator: the complaints were about shipping")
    assert api.chat.completions.create(model="v1", messages=QUESTION, user="named", max_tokens=4).model == "v1"


def test_bad_requests_get_a_4xx_naming_the_field_and_store_nothing(endpoint: Endpoint) -> None:
    api = client(endpoint)
    store = endpoint.runtime.store
    before = store.drafts.count_events()
    cases: list[tuple[dict[str, Any], int, str]] = [
        (dict(model="fedloop", messages=QUESTION), 400, "user"),
        (dict(model="fedloop", messages=[], user="u"), 400, "messages"),
        (
            dict(model="fedloop", messages=[{"role": "user", "content": "x" * 70_000}], user="u"),
            400,
            "messages[0].content",
        ),
        (dict(model="v9", messages=QUESTION, user="u"), 404, "model"),
        (dict(model="fedloop", messages=QUESTION, user="u", max_tokens=10_000), 400, "max_tokens"),
        (dict(model="fedloop", messages=QUESTION, user="u", extra_body={"usr": "typo"}), 400, "usr"),
    ]
    for arguments, status, param in cases:
        with pytest.raises(openai.APIStatusError) as refused:
            api.chat.completions.create(**arguments)
        error = cast(dict[str, Any], refused.value.body)
        assert refused.value.status_code == status and error["param"] == param, (arguments, error)
        assert param.split("[")[0] in error["message"]
    unknown = httpx.post(f"{endpoint.base_url}/drafts/no-such-draft/outcome", json={"action": "accept"}, timeout=30)
    assert unknown.status_code == 404 and "no-such-draft" in unknown.json()["error"]["message"]
    assert store.drafts.count_events() == before


def test_a_rollback_reaches_the_next_draft_within_a_second(endpoint: Endpoint, tmp_path: Path) -> None:
    api = client(endpoint)
    endpoint.controller.promote("operator: v1 serves everyone")
    assert api.chat.completions.create(model="fedloop", messages=QUESTION, user="u", max_tokens=2).model == "v1"
    settings = endpoint.runtime.settings
    identity = load_identity(Path(settings.tenant.keys_dir), settings.tenant.name)
    operator_side = FeedbackStore(settings.store_path, identity.storage, identity.pseudonym_key)  # as the CLI opens it
    started = time.monotonic()
    ReleaseController(operator_side, settings.release, actor="li.wei").rollback("li.wei: complaints")
    while api.chat.completions.create(model="fedloop", messages=QUESTION, user="u", max_tokens=2).model != "v0":
        assert time.monotonic() - started < 5
    elapsed = time.monotonic() - started
    operator_side.close()
    assert elapsed < 1.0, f"rollback took {elapsed:.3f} s to reach a draft"


def test_an_endpoint_with_api_keys_refuses_requests_without_one(make_tenant, tiny_model_dir: Path) -> None:
    runtime = make_tenant("bolt")
    install_versions(runtime, tiny_model_dir, ("v0",))
    ReleaseController(runtime.store, runtime.settings.release).offer("v0", "gates passed")
    served = start_endpoint(runtime, tiny_model_dir, api_keys=[b"k-3f9a1c"])
    try:
        for key in ("wrong-key", ""):
            with pytest.raises(openai.AuthenticationError):
                client(served, key or "-").chat.completions.create(model="fedloop", messages=QUESTION, user="u")
        ok = client(served, "k-3f9a1c").chat.completions.create(
            model="fedloop", messages=QUESTION, user="u", max_tokens=2
        )
        assert ok.model == "v0"
    finally:
        served.stop()


def test_before_any_release_the_base_model_drafts_under_the_name_base(make_tenant, tiny_model_dir: Path) -> None:
    runtime = make_tenant("cobalt")
    served = start_endpoint(runtime, tiny_model_dir)
    try:
        completion = client(served).chat.completions.create(model="fedloop", messages=QUESTION, user="u", max_tokens=4)
        extra = completion.model_extra or {}
        assert completion.model == "base" and extra["fedloop"]["canary"] is False
        assert runtime.store.drafts.get_draft(completion.id).model_version == "base"
    finally:
        served.stop()


def test_release_export_writes_peft_directories_and_a_routing_manifest(
    endpoint: Endpoint, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import json

    from peft import PeftModel
    from serve_helpers import LORA
    from typer.testing import CliRunner

    from fedloop.cli import app
    from fedloop.shared.adapter import load_base_model

    settings = endpoint.runtime.settings
    config, federation = tmp_path / "tenant.toml", tmp_path / "federation.toml"
    config.write_text(
        f'[tenant]\nname = "acme"\nkeys_dir = "{settings.tenant.keys_dir}"\n'
        f'data_dir = "{settings.tenant.data_dir}"\n[release]\ncanary_share = 0.5\nwidened_share = 0.5\nguard_h = 0\n'
    )
    federation.write_text(f'[paths]\nmodel = "{tiny_model_dir}"\n[lora]\nrank = {LORA.rank}\nalpha = {LORA.alpha}\n')
    out = tmp_path / "export"
    result = CliRunner().invoke(
        app,
        [
            "release",
            "export",
            "--config",
            str(config),
            "--settings",
            str(federation),
            "--out",
            str(out),
            "--operator",
            "li.wei",
            "--reason",
            "vLLM pool",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "routing.json").read_text())
    assert (manifest["serving"], manifest["canary"], manifest["canary_share"]) == ("v0", "v1", 0.5)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and all(p.stat().st_mode & 0o077 == 0 for p in written)  # adapters are the tenant's data: 0600
    assert all((out / v).stat().st_mode & 0o077 == 0 for v in ("v0", "v1"))
    for version in ("v0", "v1"):
        base, _ = load_base_model(tiny_model_dir)
        PeftModel.from_pretrained(base, out / version)  # any PEFT (or vLLM) user loads it as it is
    last = endpoint.runtime.store.audit_log.entries()[-1]
    assert (last.actor, last.action) == ("li.wei", "release-export") and "vLLM pool" in last.subject


def test_the_release_is_exported_again_after_every_move_with_its_rollback_target(
    endpoint: Endpoint, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import json

    from serve_helpers import LORA

    from fedloop.client.release.export import ExportOnMove
    from fedloop.client.release.loop import ReleaseLoop
    from fedloop.shared.settings import PathsSection, Settings

    out = tmp_path / "vllm-adapters"
    tenant = endpoint.runtime.settings.model_copy(
        update={"release": endpoint.runtime.settings.release.model_copy(update={"export_dir": str(out)})}
    )
    federation = Settings(paths=PathsSection(model=str(tiny_model_dir)), lora=LORA)
    exporter = ExportOnMove(endpoint.runtime.store, federation, tenant)
    loop = ReleaseLoop(endpoint.controller, tenant.release, exporter.check)

    def manifest() -> dict[str, Any]:
        return cast(dict[str, Any], json.loads((out / "routing.json").read_text()))

    loop.decide_now()
    assert (manifest()["serving"], manifest()["canary"]) == ("v0", "v1")
    endpoint.controller.promote("operator: v1 for everyone")
    loop.decide_now()
    assert (manifest()["serving"], manifest()["canary"], manifest()["rollback_target"]) == ("v1", None, "v0")
    assert (out / "v0" / "adapter_model.safetensors").exists()  # the rollback target stays loadable
    endpoint.controller.rollback("operator: complaints")
    loop.decide_now()
    assert manifest()["serving"] == "v0"
    exports = [e for e in endpoint.runtime.store.audit_log.entries() if e.action == "release-export"]
    assert len(exports) == 3 and all(e.actor == "fedloop" for e in exports)
