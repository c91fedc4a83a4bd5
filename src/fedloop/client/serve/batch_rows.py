"""One request's row in the running batch: how its next token is chosen, when it ends, what its reader gets.

Each row has its own budget, stop strings, sampling (greedy, or a temperature
with top-p and its own seeded generator) and reader. `advance` takes the row's
newest token, hands the reader the new text as soon as it is final (text that
might still become a stop string is held back), and finishes the row's
Generation the moment the row ends, whatever the other rows do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from fedloop.client.serve.engine import Generation, GenerationHandle


@dataclass
class Row:
    """One request's place in the batch and what it has produced so far."""

    handle: GenerationHandle
    prompt_tokens: int
    generator: torch.Generator | None = None  # set for a sampled row
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already handed to the reader
    done: bool = False

    @property
    def adapter(self) -> str:
        """The adapter this row is generated with."""
        return self.handle.request.adapter

    @classmethod
    def of(cls, handle: GenerationHandle, prompt_tokens: int) -> Row:
        """A new row; a sampled one gets a generator seeded with its request's seed (or at random)."""
        sampling = handle.request.sampling
        generator = None
        if not sampling.greedy:
            generator = torch.Generator()
            if sampling.seed is None:
                generator.seed()
            else:
                generator.manual_seed(sampling.seed)
        return cls(handle, prompt_tokens, generator)


def next_tokens(rows: Sequence[Row], logits: torch.Tensor) -> list[int]:
    """Each row's next token from its last-position logits: argmax, or a top-p draw at its temperature."""
    chosen = logits.argmax(dim=-1).tolist()
    for index, row in enumerate(rows):
        if row.generator is None:
            continue
        sampling = row.handle.request.sampling
        probs = torch.softmax(logits[index].float().cpu() / sampling.temperature, dim=-1)
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < sampling.top_p  # the smallest head whose mass reaches top_p
        ordered = torch.where(keep, ordered, torch.zeros_like(ordered))
        chosen[index] = int(order[torch.multinomial(ordered / ordered.sum(), 1, generator=row.generator)])
    return [int(token) for token in chosen]


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cuts = [text.index(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class RowText:
    """Turns a row's tokens into what its reader sees, and ends the row on its own terms."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, end_ids: set[int]) -> None:
        self._tokenizer = tokenizer
        self._end_ids = end_ids

    def advance(self, row: Row, token: int) -> None:
        """Take the row's newest token: end the row at an end-of-turn token, its budget, a stop string or its
        reader's cancel; otherwise hand the reader the text that is final."""
        request = row.handle.request
        if token in self._end_ids:
            self._finish(row, "stop", ended_by_eos=True)
            return
        row.tokens.append(token)
        text = self._text(row)
        cut, stopped = _cut_at_stop(text, request.stop)
        if stopped:
            self._finish(row, "stop", cut)
        elif len(row.tokens) >= request.max_new_tokens:
            self._finish(row, "length", text)
        elif row.handle.cancelled:
            self._finish(row, "stop", text)
        else:
            hold = max((len(s) - 1 for s in request.stop), default=0)  # a stop string may be arriving
            final = len(text.rstrip("\ufffd")) - hold  # an incomplete character waits for its next byte
            if final > row.sent:
                row.handle.push(text[row.sent : final])
                row.sent = final

    def _text(self, row: Row) -> str:
        return str(self._tokenizer.decode(row.tokens, skip_special_tokens=True))

    def _finish(self, row: Row, reason: str, text: str | None = None, ended_by_eos: bool = False) -> None:
        text = self._text(row) if text is None else text
        if len(text) > row.sent:
            row.handle.push(text[row.sent :])
        row.sent, row.done = len(text), True
        produced = len(row.tokens) + (1 if ended_by_eos else 0)  # the end-of-turn token is generated too
        row.handle.push(Generation(text.strip(), reason, row.prompt_tokens, produced, row.adapter))
