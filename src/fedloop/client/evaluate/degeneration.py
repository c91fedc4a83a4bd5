"""Degenerate drafts: empty replies and replies that loop (the same few tokens over and over).

A version can raise the held-out hit rate on average and still produce
`Click on "Account Settings" > "Account Settings" > ...` for some users. The gate
compares the share of degenerate drafts of the candidate with that of the
serving version (the base model before anything serves) on the same held-out
prompts, so a small model's own habits do not count against a version.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fedloop.client.evaluate.drift import GateResult
from fedloop.client.store.api import EvaluationKind

TOKEN = re.compile(r"[\u3400-\u9fff]|[^\W_]+|[^\w\s]")  # a CJK character, a word, or a punctuation mark
NGRAM = 3
MIN_NGRAMS = 6  # shorter drafts are judged on emptiness only
MAX_REPEATED_SHARE = 0.5  # more than half of a draft's 3-grams repeat an earlier one: a loop


def degeneration(draft: str) -> str | None:
    """Why `draft` is degenerate ("empty" or "loop"), or None."""
    tokens = TOKEN.findall(draft)
    if not tokens:
        return "empty"
    grams = [tuple(tokens[i : i + NGRAM]) for i in range(len(tokens) - NGRAM + 1)]
    if len(grams) >= MIN_NGRAMS and 1 - len(set(grams)) / len(grams) > MAX_REPEATED_SHARE:
        return "loop"
    return None


def degenerate_share(drafts: Sequence[str]) -> float:
    """Share of degenerate drafts (0 for none)."""
    return sum(degeneration(d) is not None for d in drafts) / len(drafts) if drafts else 0.0


def degeneration_gate(candidate: Sequence[str], reference: Sequence[str], bound: float) -> GateResult:
    """Refuse a candidate whose degenerate share exceeds the reference's by more than `bound`."""
    if not candidate or len(reference) != len(candidate):
        return GateResult(EvaluationKind.DEGENERATE_SHARE_INCREASE, 0.0, bound, "insufficient evidence")
    increase = degenerate_share(candidate) - degenerate_share(reference)
    return GateResult(
        EvaluationKind.DEGENERATE_SHARE_INCREASE, increase, bound, "refuse" if increase > bound else "pass"
    )
