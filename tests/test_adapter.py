"""Adapter (de)serialisation and export in the standard PEFT layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from tiny_model import write_tiny_gguf

from fedloop.shared.adapter import (
    ModelLoadError,
    adapter_from_bytes,
    adapter_state,
    adapter_to_bytes,
    attach_lora,
    export_peft,
    load_adapter_state,
    load_base_model,
)
from fedloop.shared.model_fetch import convert_gguf
from fedloop.shared.settings import LoraSettings


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


def test_base_model_loads_from_a_gguf_file_with_its_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    gguf_path = write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    from_gguf, gguf_tokenizer = load_base_model(gguf_path)
    from_dir, dir_tokenizer = load_base_model(tiny_model_dir)
    messages = [{"role": "user", "content": "Where is my order? Thanks"}]
    prompt = dir_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    ids = dir_tokenizer(prompt, return_tensors="pt")["input_ids"]
    assert torch.equal(gguf_tokenizer(prompt, return_tensors="pt")["input_ids"], ids)
    with torch.no_grad():
        assert torch.allclose(from_gguf(ids).logits, from_dir(ids).logits, atol=1e-5)


def test_a_missing_model_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model.gguf.*fedloop model fetch"):
        load_base_model(tmp_path / "model.gguf")


def test_a_checkpoint_that_needs_its_own_code_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    """A ChatGLM3-style directory: its config names a model_type transformers does not ship and maps the Auto
    classes to Python files inside the directory, which would run in the tenant's cluster if loaded."""
    ran = tmp_path / "the directory's code ran"
    code = f"open({str(ran)!r}, 'w').close()\n"
    for module in ("configuration_chatglm", "modeling_chatglm", "tokenization_chatglm"):
        (tmp_path / f"{module}.py").write_text(code)
    auto_map = {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None],
    }
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chatglm", "auto_map": auto_map}))
    with pytest.raises(ModelLoadError, match="model_type 'chatglm'.*trust_remote_code.*transformers-native"):
        load_base_model(tmp_path)
    assert not ran.exists()


def test_a_converted_gguf_is_a_plain_directory_with_the_same_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`fedloop model fetch` saves the weights de-quantised; a config still naming the GGUF quantiser made
    transformers treat the directory as a packed GGUF checkpoint (untrainable, warning on every bfloat16 load)."""
    gguf_path = write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    convert_gguf(gguf_path, tmp_path / "converted")
    assert "quantization_config" not in json.loads((tmp_path / "converted" / "config.json").read_text())
    converted, tokenizer = load_base_model(tmp_path / "converted")
    assert getattr(converted, "hf_quantizer", None) is None
    ids = tokenizer("Where is my order?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, load_base_model(gguf_path)[0](ids).logits)


def test_a_config_json_that_is_not_json_names_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{ truncated")
    with pytest.raises(ModelLoadError, match="config.json is not a JSON object.*restore the model's config.json"):
        load_base_model(tmp_path)
