"""LoRA adapters: attaching to a base model, (de)serialisation and PEFT export.

An adapter travels and rests as a safetensors blob of PEFT's own state-dict
keys (`get_peft_model_state_dict`), so `export_peft` only has to add
`adapter_config.json` for any PEFT or vLLM user to load it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from fedloop.shared.files import write_atomic
from fedloop.shared.settings import LoraSettings

AdapterState = dict[str, torch.Tensor]
LORA_A, LORA_B = ".lora_A.", ".lora_B."  # how the two LoRA factors' keys are marked


class ModelLoadError(Exception):
    """The base model is missing or is neither a local HF directory nor a GGUF file."""


def peft_config(lora: LoraSettings) -> LoraConfig:
    """The PEFT `LoraConfig` of the federation's LoRA shape."""
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


@dataclass(frozen=True)
class Placement:
    """Where a base model lives and in which precision (`[train] device` and `dtype`)."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def of(cls, device: str, dtype: str) -> Placement:
        """Resolve the settings' names; "auto" picks CUDA and bfloat16 when a GPU is there, else CPU and float32.

        ModelLoadError if "cuda" is asked for on a machine without one.
        """
        if device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(
                'train.device = "cuda" but torch sees no CUDA device here: install a CUDA build of torch on a '
                'machine with a GPU, or set train.device = "auto" or "cpu"'
            )
        where = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
        if dtype == "auto":
            precision = torch.bfloat16 if where.type == "cuda" else torch.float32
        else:
            precision = getattr(torch, dtype)
        return cls(where, precision)


CPU_FLOAT32 = Placement(torch.device("cpu"), torch.float32)


def check_model_path(model_path: Path) -> None:
    """Raise ModelLoadError unless `model_path` is a .gguf file or a local HF directory of an architecture that
    transformers ships (a checkpoint that needs the Python code in its own directory is refused)."""
    if model_path.suffix == ".gguf" and model_path.is_file():
        return
    config_file = model_path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"no model at {model_path} (neither a .gguf file nor a directory with config.json): run `make model` "
            "or `fedloop model fetch` to create the default one, or set `paths.model` to a local Hugging Face "
            "directory or a .gguf file"
        )
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as error:
        raise ModelLoadError(f"{config_file} is not a JSON object ({error}): restore the model's config.json") from None
    if model_type not in CONFIG_MAPPING:
        raise ModelLoadError(
            f"{config_file}: model_type {model_type!r} is not an architecture transformers ships. Such a checkpoint "
            "(ChatGLM2 and ChatGLM3 are) runs the Python code of its own directory (`trust_remote_code`), which "
            "fedloop never runs inside a tenant's cluster: set `paths.model` to a transformers-native checkpoint "
            "of the family (for GLM, a GLM-4 `-hf` one; docs/sizing.md)"
        )


def load_base_model(
    model_path: Path, placement: Placement = CPU_FLOAT32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (with its chat template) from a local HF directory or a GGUF file, in
    `placement`'s precision on its device.

    A GGUF file is de-quantised on every load (seconds for a small model); `fedloop model fetch` converts the
    default one to a directory once. Nothing is ever fetched from a hub.
    """
    check_model_path(model_path)
    if model_path.suffix == ".gguf":
        source: dict[str, str | Path] = {
            "pretrained_model_name_or_path": model_path.parent,
            "gguf_file": model_path.name,
        }
    else:
        source = {"pretrained_model_name_or_path": model_path}
    tokenizer = AutoTokenizer.from_pretrained(**source, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(**source, local_files_only=True, dtype=placement.dtype)
    torch.nn.Module.to(model, placement.device)  # in place: the module moves its own parameters
    return model, tokenizer


def attach_lora(model: PreTrainedModel, settings: LoraSettings, seed: int) -> PeftModel:
    """Wrap `model` with a freshly initialised LoRA adapter (B = 0, so it starts as the base model)."""
    torch.manual_seed(seed)
    return get_peft_model(model, peft_config(settings))


def adapter_state(model: PeftModel) -> AdapterState:
    """The adapter's tensors under PEFT's saved key names, detached, on the CPU and in float32: the one format
    adapters travel and rest in, whatever device and precision a tenant trains with."""
    return {
        k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in get_peft_model_state_dict(model).items()
    }


def load_adapter_state(model: PeftModel, state: AdapterState) -> None:
    """Replace the adapter weights of `model`; raises ValueError if the shapes do not match."""
    result: Any = set_peft_model_state_dict(model, state)  # PEFT's load result: missing and unexpected keys
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"adapter does not fit this model: missing {missing[:3]}, unexpected "
            f"{list(result.unexpected_keys)[:3]}; check the LoRA settings on both sides"
        )


def adapter_to_bytes(state: AdapterState) -> bytes:
    """Serialise adapter tensors with safetensors."""
    return save_safetensors({k: v.contiguous() for k, v in state.items()})


def adapter_from_bytes(data: bytes) -> AdapterState:
    """Deserialise adapter tensors written by `adapter_to_bytes`."""
    return load_safetensors(data)


def portable_model_name(base_model: str) -> str:
    """`base_model` as an absolute path when it names a local file or directory; a hub-style name as it is."""
    local = Path(base_model).expanduser()
    return str(local.resolve()) if local.exists() else base_model


def export_peft(state: AdapterState, settings: LoraSettings, base_model: str, out_dir: Path) -> None:
    """Write the standard PEFT layout (`adapter_config.json` + `adapter_model.safetensors`), readable by its owner
    only (0600 in a 0700 directory: an adapter is a function of the tenant's data; give an inference server running
    as another user access with a group, on purpose). A `base_model` that is a local path is written absolute, so an
    inference server started anywhere finds it."""
    config = peft_config(settings)
    config.base_model_name_or_path = portable_model_name(base_model)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(out_dir / "adapter_model.safetensors", adapter_to_bytes(state), 0o600)
    document = config.to_dict()  # type: ignore[no-untyped-call]
    write_atomic(out_dir / "adapter_config.json", json.dumps(document, indent=2, default=list).encode(), 0o600)
