"""Adapter (de)serialisation and export in the standard PEFT layout."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from fedloop.shared.adapter import (LoraSettings, adapter_from_bytes, adapter_state, adapter_to_bytes, attach_lora,
                                    export_peft, load_adapter_state, load_base_model)
from fedloop.server.strategy import fedavg


def test_round_trip_and_peft_export_loads_in_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = LoraSettings(rank=4, alpha=8)
    model, _ = load_base_model(tiny_model_dir)
    peft_model = attach_lora(model, settings, seed=1)
    state = {k: torch.randn_like(v) for k, v in adapter_state(peft_model).items()}
    assert all(torch.equal(state[k], v) for k, v in adapter_from_bytes(adapter_to_bytes(state)).items())

    export_peft(state, settings, str(tiny_model_dir), tmp_path / "export")
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    fresh, _ = load_base_model(tiny_model_dir)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "export")
    assert all(torch.equal(state[k], v) for k, v in adapter_state(loaded).items())

    load_adapter_state(peft_model, state)
    assert all(torch.equal(state[k], v) for k, v in adapter_state(peft_model).items())


def test_fedavg_is_sample_weighted() -> None:
    a = {"w": torch.zeros(2, 2)}
    b = {"w": torch.ones(2, 2)}
    merged = fedavg([(a, 30), (b, 10)])
    assert torch.allclose(merged["w"], torch.full((2, 2), 0.25))
