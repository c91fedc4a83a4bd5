"""Build a tiny Llama-style causal LM with its own BPE tokenizer in a few seconds (tests only)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedloop.client.evaluate.drift import general_texts
from fedloop.simulation.product import STYLES, TenantTraffic

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write a ~35k-parameter model, briefly pretrained, and its tokenizer to `out_dir`; return it."""
    corpus = []
    for index, style in enumerate(STYLES):
        for conversation in TenantTraffic(f"corpus{index}", style, seed).conversations(200, batch=0):
            corpus += [conversation.prompt, conversation.preferred_reply]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    _pretrain(model, tokenizer, corpus + general_texts(), seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_wider_model(tiny_dir: Path, out_dir: Path, hidden: int = 512, layers: int = 8, seed: int = 0) -> Path:
    """The tiny model's tokenizer on a wider, untrained Llama (a few ms per token): where generation time must
    outweigh per-request costs, as it does for real models."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    small = LlamaConfig.from_pretrained(tiny_dir)
    config = small.__class__(
        **{
            **small.to_dict(),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 8,
            "num_key_value_heads": 8,
        }
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _pretrain(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, texts: list[str], seed: int, steps: int = 150
) -> None:
    """A few seconds of plain language modelling, so that the model has peaked, text-like predictions."""
    rng = random.Random(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        batch = tokenizer(rng.sample(texts, 16), return_tensors="pt", padding=True, truncation=True, max_length=48)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _permute_for_gguf(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order for q/k projections (transformers undoes it when it reads a GGUF)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_tiny_gguf(model_dir: Path, out_path: Path) -> Path:
    """Write the tiny model of `model_dir` as a llama-architecture GGUF file (f32), the way llama.cpp would."""
    import gguf
    from transformers import AutoTokenizer

    model = LlamaForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = model.config
    writer = gguf.GGUFWriter(str(out_path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    assert config.num_key_value_heads is not None and config.rope_parameters is not None
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"] or 0.0))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token in SPECIALS else 1 for token, _ in vocab])
    merges = json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"]
    writer.add_token_merges([" ".join(pair) if isinstance(pair, list) else pair for pair in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(CHAT_TEMPLATE)
    state = model.state_dict()
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        q = _permute_for_gguf(state[prefix + "self_attn.q_proj.weight"], config.num_attention_heads)
        k = _permute_for_gguf(state[prefix + "self_attn.k_proj.weight"], int(config.num_key_value_heads or 0))
        for name, tensor in (
            ("attn_q", q),
            ("attn_k", k),
            ("attn_v", state[prefix + "self_attn.v_proj.weight"]),
            ("attn_output", state[prefix + "self_attn.o_proj.weight"]),
            ("ffn_gate", state[prefix + "mlp.gate_proj.weight"]),
            ("ffn_up", state[prefix + "mlp.up_proj.weight"]),
            ("ffn_down", state[prefix + "mlp.down_proj.weight"]),
            ("attn_norm", state[prefix + "input_layernorm.weight"]),
            ("ffn_norm", state[prefix + "post_attention_layernorm.weight"]),
        ):
            writer.add_tensor(f"blk.{layer}.{name}.weight", tensor.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
