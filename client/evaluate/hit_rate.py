"""Hit rate on held-out prompts, judged by simulated users with a fixed rule.

The rule (client/simulated_users.UserJudgement, documented in docs/evaluation.md)
was fixed before any result was seen: similarity = rapidfuzz ratio of the
case-folded draft and reference reply; >= accept_threshold (0.8) is an accept,
>= edit_threshold (0.45) an edit, anything else a reject. The hit rate is the
share of accepts.
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.feedback import Action
from fedloop.client.simulated_users import Conversation, UserJudgement
from fedloop.client.train.generate import generate_replies


def hit_rate(model: PeftModel, tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Conversation],
             judgement: UserJudgement, max_new_tokens: int) -> dict[str, float]:
    """Hit rate, mean similarity and counts of the model's drafts for `conversations`."""
    drafts = generate_replies(model, tokenizer, [c.prompt for c in conversations], max_new_tokens)
    decisions = [judgement.decide(d, c) for d, c in zip(drafts, conversations)]
    count = len(decisions)
    return {"hit-rate": sum(d.action is Action.ACCEPT for d in decisions) / count,
            "edit-rate": sum(d.action is Action.EDIT for d in decisions) / count,
            "mean-similarity": sum(d.similarity for d in decisions) / count,
            "num-examples": count}
