"""Drafting replies with a model's chat template."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedloop.client.store.api import ChatMessage


def chat_text(tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage]) -> str:
    """`messages` in the model's chat template, ready for the assistant's reply.

    Serving, training and the held-out evaluation all render a conversation through this one function, so a
    version learns and is measured on exactly the input it drafts from.
    """
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))


@torch.no_grad()
def generate_replies(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[ChatMessage]],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Greedy drafts for `conversations` (each ending with the user's message), generated in batches."""
    model.eval()
    replies: list[str] = []
    for start in range(0, len(conversations), batch_size):
        texts = [chat_text(tokenizer, c) for c in conversations[start : start + batch_size]]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        output = model.generate(  # type: ignore[operator]  # PeftModel forwards generate() to its base model
            **encoded,
            max_new_tokens=max_new_tokens,
            min_new_tokens=1,  # as serving drafts
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        replies.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return replies
