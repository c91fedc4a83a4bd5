"""Qwen2-architecture models built from their published configs with random weights, for speed and memory figures.

Speed and memory do not depend on the weights' values, so a model of the right
shape measures what a trained one would, without downloading it. The tokenizer
is SmolLM2's (local, from `make model`): its ids are a subset of every
vocabulary below, and the embedding rows keep the config's vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, Qwen2Config, Qwen2ForCausalLM

# The sizes of Qwen2-0.5B, 1.5B and 7B (their config.json on the Hugging Face hub).
QWEN2_SIZES: dict[str, dict[str, Any]] = {
    "qwen2-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}


def qwen2_config(size: str, **overrides: Any) -> Qwen2Config:
    """The config of `size` (a key of QWEN2_SIZES), with any field overridden."""
    return Qwen2Config(**(QWEN2_SIZES[size] | {"max_position_embeddings": 4096} | overrides))


def write_random_model(config: Qwen2Config, tokenizer_dir: Path, out_dir: Path, dtype: torch.dtype) -> Path:
    """Save a randomly initialised model of `config` in `dtype` with the tokenizer of `tokenizer_dir`; return
    `out_dir`, which `paths.model` can point at."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config.eos_token_id, config.pad_token_id, config.bos_token_id = (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id or tokenizer.eos_token_id,
        tokenizer.bos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    torch.nn.Module.to(model, dtype)  # in place
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@dataclass(frozen=True)
class DecoderShape:
    """The linear layers' sizes of a decoder-only transformer (Qwen2 naming)."""

    layers: int
    hidden: int
    kv_width: int  # key/value heads × head size
    intermediate: int

    def modules(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of every linear layer LoRA adapts, under PEFT's module names."""
        per_layer = {
            "self_attn.q_proj": (self.hidden, self.hidden),
            "self_attn.k_proj": (self.hidden, self.kv_width),
            "self_attn.v_proj": (self.hidden, self.kv_width),
            "self_attn.o_proj": (self.hidden, self.hidden),
            "mlp.gate_proj": (self.hidden, self.intermediate),
            "mlp.up_proj": (self.hidden, self.intermediate),
            "mlp.down_proj": (self.intermediate, self.hidden),
        }
        return {
            f"base_model.model.model.layers.{layer}.{name}": size
            for layer in range(self.layers)
            for name, size in per_layer.items()
        }

    @classmethod
    def of(cls, config: Qwen2Config) -> DecoderShape:
        """The linear layers' sizes of a model config."""
        head_size = config.hidden_size // config.num_attention_heads
        kv_heads = config.num_key_value_heads or config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, kv_heads * head_size, config.intermediate_size)


def parameter_count(config: PretrainedConfig) -> int:
    """How many parameters a causal LM of `config` has (built on the meta device: no memory, no values)."""
    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
