"""One base model with every version it serves loaded as a named PEFT adapter.

Switching versions between requests is `set_adapter`, a pointer change: no
weights are read, decrypted or copied. Generation is greedy (drafts are
reproducible) and one request at a time holds the model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from transformers import TextIteratorStreamer

from fedloop.client.store_api import BASE_VERSION
from fedloop.shared.adapter import CPU_FLOAT32, AdapterState, Placement, load_base_model, peft_config
from fedloop.shared.settings import LoraSettings

EMPTY_ADAPTER = "fedloop-empty"  # the slot PEFT needs before any version is loaded (B = 0: the base model)
ChatMessage = dict[str, str]


@dataclass(frozen=True)
class Generation:
    """A drafted reply with why it ended ("stop" or "length") and its token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class StreamedGeneration:
    """A reply arriving piece by piece; `result` is set once the iteration is exhausted."""

    pieces: Iterator[str]
    result: Generation | None = field(default=None)

    def __iter__(self) -> Iterator[str]:
        return self.pieces


class DraftEngine:
    """The base model from a local path, with named adapters for the versions that draft."""

    def __init__(self, model_path: Path, lora: LoraSettings, placement: Placement = CPU_FLOAT32) -> None:
        base, self.tokenizer = load_base_model(model_path, placement)
        self._lora = lora
        self._model: PeftModel = get_peft_model(base, peft_config(lora), adapter_name=EMPTY_ADAPTER)
        self._model.eval()
        self._versions: set[str] = set()
        self._lock = threading.RLock()

    def loaded(self) -> set[str]:
        """The versions whose adapters are in memory."""
        return set(self._versions)

    def load(self, version: str, state: AdapterState) -> None:
        """Add `version`'s adapter; ValueError if it does not fit the model's LoRA shape."""
        with self._lock:
            if version in self._versions:
                return
            self._model.add_adapter(version, peft_config(self._lora))
            result: Any = set_peft_model_state_dict(self._model, state, adapter_name=version)
            missing = [k for k in result.missing_keys if "lora_" in k and f".{version}." in k]
            if missing or result.unexpected_keys:
                self._model.delete_adapter(version)
                raise ValueError(
                    f"version {version} does not fit the served model's LoRA settings: missing "
                    f"{missing[:2]}, unexpected {list(result.unexpected_keys)[:2]}"
                )
            self._versions.add(version)

    def unload(self, version: str) -> None:
        """Drop `version`'s adapter from memory."""
        with self._lock:
            if version in self._versions:
                self._model.set_adapter(EMPTY_ADAPTER)
                self._model.delete_adapter(version)
                self._versions.discard(version)

    def _use(self, version: str) -> None:
        """Make `version` the active adapter; BASE_VERSION is the base model (the empty adapter, B = 0)."""
        self._model.set_adapter(EMPTY_ADAPTER if version == BASE_VERSION else version)

    def _encode(self, conversations: Sequence[Sequence[ChatMessage]]) -> dict[str, torch.Tensor]:
        texts = [
            self.tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._model.device)

    def _finish(self, new_tokens: torch.Tensor, max_new_tokens: int) -> tuple[str, int]:
        eos = self.tokenizer.eos_token_id
        ids = new_tokens.tolist()
        if eos in ids:
            return "stop", ids.index(eos) + 1
        pad = self.tokenizer.pad_token_id
        produced = len([i for i in ids if i != pad]) if pad != eos else len(ids)
        return ("length" if produced >= max_new_tokens else "stop"), produced

    @torch.no_grad()
    def generate(
        self, version: str, conversations: Sequence[Sequence[ChatMessage]], max_new_tokens: int
    ) -> list[Generation]:
        """Greedy replies of `version` to each conversation, in one batch."""
        with self._lock:
            self._use(version)
            encoded = self._encode(conversations)
            output = self._model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                min_new_tokens=1,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        prompt_length = encoded["input_ids"].shape[1]
        results = []
        for row, mask in zip(output, encoded["attention_mask"], strict=True):
            reason, produced = self._finish(row[prompt_length:], max_new_tokens)
            text = str(self.tokenizer.decode(row[prompt_length:], skip_special_tokens=True)).strip()
            results.append(Generation(text, reason, int(mask.sum()), produced))
        return results

    def stream(self, version: str, conversation: Sequence[ChatMessage], max_new_tokens: int) -> StreamedGeneration:
        """`version`'s greedy reply as it is generated; the model is held until the stream is exhausted."""
        streamed = StreamedGeneration(iter(()))

        def pieces() -> Iterator[str]:
            with self._lock:
                self._use(version)
                encoded = self._encode([conversation])
                streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
                output: list[torch.Tensor] = []

                def run() -> None:
                    try:
                        with torch.no_grad():
                            output.append(
                                self._model.generate(
                                    **encoded,
                                    max_new_tokens=max_new_tokens,
                                    min_new_tokens=1,
                                    do_sample=False,
                                    pad_token_id=self.tokenizer.pad_token_id,
                                    streamer=streamer,
                                )
                            )
                    finally:
                        streamer.end()  # a failed generation must not leave the reader waiting

                worker = threading.Thread(target=run, name="fedloop-stream", daemon=True)
                worker.start()
                text = []
                for piece in streamer:
                    text.append(piece)
                    if piece:
                        yield piece
                worker.join()
            if not output:
                raise RuntimeError(f"version {version} failed to generate: see the log")
            new_tokens = output[0][0][encoded["input_ids"].shape[1] :]
            reason, produced = self._finish(new_tokens, max_new_tokens)
            streamed.result = Generation("".join(text).strip(), reason, int(encoded["attention_mask"].sum()), produced)

        streamed.pieces = pieces()
        return streamed
