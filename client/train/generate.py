"""Drafting replies with a model's chat template."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """`prompt` as a user turn in the model's chat template, ready for the assistant's reply."""
    return str(
        tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    )


@torch.no_grad()
def generate_replies(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Greedy drafts for `prompts`, generated in batches."""
    model.eval()
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [chat_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        output = model.generate(  # type: ignore[operator]  # PeftModel forwards generate() to its base model
            **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        replies.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return replies
