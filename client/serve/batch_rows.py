"""Per-row control of one batched `generate` call: each row has its own budget, stop strings, sampling and reader.

transformers decodes a batch in lock step; `RowTracker` (a stopping criterion,
called once per step with every row's newest token) ends each row on its own
terms, hands its reader the new text as soon as it is final, and finishes the
row's Generation the moment the row ends, not when the whole batch does.
`RowSampler` (a logits processor) samples the rows that asked for a
temperature with their own seeded generator and leaves greedy rows untouched,
so one batch can mix both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase, StoppingCriteria

from fedloop.client.serve.engine import Generation, GenerationHandle


@dataclass
class Row:
    """One request's place in the batch and what it has produced so far."""

    handle: GenerationHandle
    adapter: str
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already handed to the reader
    done: bool = False


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cuts = [text.index(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class RowTracker(StoppingCriteria):
    """Ends each row at its end-of-turn token, its budget, a stop string or its reader's cancel; streams its text."""

    def __init__(self, rows: list[Row], tokenizer: PreTrainedTokenizerBase) -> None:
        self.rows = rows
        self._tokenizer = tokenizer
        self._eos = tokenizer.eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        """Take every open row's newest token; True for each row that is finished."""
        newest = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, newest, strict=True):
            if not row.done:
                self._advance(row, int(token))
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    def _advance(self, row: Row, token: int) -> None:
        request = row.handle.request
        if token == self._eos:
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
            final = len(text) - hold if not text.endswith("\ufffd") else len(text.rstrip("\ufffd")) - hold
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

    def finish_open_rows(self) -> None:
        """End the rows that `generate` left open (it stops at the largest budget; each row has ended by then)."""
        for row in self.rows:
            if not row.done:
                self._finish(row, "length")


class RowSampler(LogitsProcessor):
    """Samples the rows with a temperature (top-p, own seeded generator); greedy rows keep their scores."""

    def __init__(self, rows: list[Row]) -> None:
        self._sampled = []
        for index, row in enumerate(rows):
            sampling = row.handle.request.sampling
            if not sampling.greedy:
                generator = torch.Generator()
                if sampling.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(sampling.seed)
                self._sampled.append((index, sampling.temperature, sampling.top_p, generator))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Replace each sampled row's scores by a one-hot on its drawn token (greedy decoding then picks it)."""
        for index, temperature, top_p, generator in self._sampled:
            probs = torch.softmax(scores[index].float().cpu() / temperature, dim=-1)
            ordered, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(ordered, dim=-1) - ordered < top_p  # the smallest head whose mass reaches top_p
            ordered = torch.where(keep, ordered, torch.zeros_like(ordered))
            token = order[torch.multinomial(ordered / ordered.sum(), 1, generator=generator)]
            scores[index] = torch.full_like(scores[index], float("-inf"))
            scores[index, token] = 0.0
        return scores
