"""A 64 MB adapter travels the real path: sealed, through the SuperLink and a SuperNode over TLS, and back.

One tenant, one round, on the tiny model with a LoRA so wide that the adapter
is 64 MB of float32: HQ seals it to the tenant (evaluate, train), the tenant
verifies, trains and seals its 64 MB update back, HQ verifies and registers it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deployment_helpers import Federation, free_port, provision, start_hq, start_tenant, write_tenant_config
from grpc_helpers import draft, outcome, stub

from fedloop.proto import feedback_pb2 as pb
from fedloop.server.registry import VersionRegistry
from fedloop.shared.keys import load_identity
from fedloop.shared.run_layout import HQ_NAME

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK = 15_500  # tiny model (hidden 32, MLP 64, 2 layers): 1,088 floats per rank unit -> 67.4 MB
MB64 = 64 * 2**20


def report_feedback(port: int) -> None:
    """The tenant's product reports two edited drafts: what the tenant trains on."""
    channel, service = stub(port)
    for index in range(2):
        draft_id = f"large-{index}"
        service.RecordDraft(
            draft(f"e-{draft_id}", draft_id, user_id=f"user-{index}", model_version="v0000"), timeout=30
        )
        service.RecordOutcome(
            outcome(f"o-{draft_id}", draft_id, action=pb.EDIT_ACCEPT, final_text=f"Your parcel {index} is on its way."),
            timeout=30,
        )
    channel.close()


def test_a_64_mb_adapter_goes_to_the_tenant_and_back(tmp_path: Path, tiny_model_dir: Path) -> None:
    federation = Federation(tmp_path, free_port())
    provision(tmp_path, ("acme",))
    (tmp_path / "settings.toml").write_text(f"""
[federation]
run_name = "large"
tenants = ["acme"]
rounds = 1
[paths]
model = "{tiny_model_dir}"
[lora]
rank = {RANK}
alpha = {RANK}
target_modules = {json.dumps(list(MODULES))}
[train]
max_steps = 1
batch_size = 2
max_seq_len = 32
""")
    try:
        start_hq(federation, ("acme",))
        port = free_port()
        config = write_tenant_config(tmp_path, "acme", "acme-home", port)
        config.write_text(config.read_text() + "[evaluation]\nheld_out_share = 0.0\n")  # both samples train
        start_tenant(federation, "acme", config, port)
        report_feedback(port)
        run, log = federation.start("run", "run", "--settings", "settings.toml", "--config", "hq.toml")
        assert run.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        federation.stop()
    summary = json.loads((tmp_path / "hq-home" / "summary.json").read_text())
    round_1 = summary["rounds"][1]
    assert round_1["contributors"] == {"acme": 2} and not round_1["refused"]
    assert set(round_1["evaluation"]) == {"acme"}  # the merged 64 MB version went back and was evaluated
    assert round_1["bytes_to_hq"]["acme"] > MB64 and round_1["bytes_to_tenant"]["acme"] > 2 * MB64
    registry = VersionRegistry(tmp_path / "hq-home" / "hq", load_identity(tmp_path / "hq-home" / "keys", HQ_NAME))
    assert len(registry.load_adapter(round_1["version"])) > MB64  # decrypted, digest checked
    registry.close()
