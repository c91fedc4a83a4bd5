"""A 64 MB adapter travels the real path: sealed, through the SuperLink and a SuperNode over TLS, and back.

One tenant, one round, on the tiny model with a LoRA so wide that the adapter
is 64 MB of float32: HQ seals it to the tenant (evaluate, train), the tenant
verifies, trains and seals its 64 MB update back, HQ verifies and registers it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deployment_helpers import run_one_tenant_round

from fedloop.server.registry import VersionRegistry
from fedloop.shared.keys import load_identity
from fedloop.shared.run_layout import HQ_NAME

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

RANK = 15_500  # tiny model (hidden 32, MLP 64, 2 layers): 1,088 floats per rank unit -> 67.4 MB
MB64 = 64 * 2**20


def test_a_64_mb_adapter_goes_to_the_tenant_and_back(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = run_one_tenant_round(tmp_path, tiny_model_dir, RANK, edited_drafts=2, timeout=600)
    assert run.returncode == 0, run.log
    summary = json.loads((tmp_path / "hq-home" / "summary.json").read_text())
    round_1 = summary["rounds"][1]
    assert round_1["contributors"] == {"acme": 2} and not round_1["refused"]
    assert set(round_1["evaluation"]) == {"acme"}  # the merged 64 MB version went back and was evaluated
    assert round_1["bytes_to_hq"]["acme"] > MB64 and round_1["bytes_to_tenant"]["acme"] > 2 * MB64
    registry = VersionRegistry(tmp_path / "hq-home" / "hq", load_identity(tmp_path / "hq-home" / "keys", HQ_NAME))
    assert len(registry.load_adapter(round_1["version"])) > MB64  # decrypted, digest checked
    registry.close()
