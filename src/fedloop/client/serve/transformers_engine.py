"""The CPU default engine: one worker thread owns a transformers model with every served version as a PEFT adapter.

Continuous batching: requests wait in a bounded queue; between two decoding
steps the worker lets waiting requests join the rows already decoding (up to
`serve.max_batch_size`): it prefills the newcomers on their own, pads both
caches to one length and decodes all rows together, each row with its own
adapter (PEFT's mixed-adapter batches: `adapter_names`, `__base__` for the
base model). A row leaves as soon as it ends, and its reader has its reply
then. Adapter loads and unloads are queued to the same worker, so nothing
changes the model during a step and no lock is held by a reader; an unload
waits until no queued or running request needs the adapter. The worker sets
torch's thread count once (`serve.threads`), so every draft, streamed or not,
runs with the same thread team. A model with sliding-window attention decodes
in whole batches instead (rows join only an empty batch).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from transformers import DynamicCache

from fedloop.client.serve.batch_rows import Row, RowText, next_tokens
from fedloop.client.serve.engine import (
    EngineBusy,
    EngineHealth,
    EngineStopped,
    GenerationHandle,
    GenerationRequest,
)
from fedloop.client.serve.running_batch import RunningBatch, joinable
from fedloop.client.store.api import BASE_VERSION, ChatMessage
from fedloop.client.tenant_settings import ServeSection
from fedloop.client.train.generate import chat_text
from fedloop.shared.adapter import CPU_FLOAT32, AdapterState, Placement, load_base_model, peft_config
from fedloop.shared.settings import LoraSettings

log = logging.getLogger(__name__)
EMPTY_ADAPTER = "fedloop-empty"  # the slot PEFT needs before any version is loaded (B = 0: the base model)
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


def cores_available() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class TransformersEngine:
    """The base model from a local path, with named adapters for the versions that draft, behind one worker."""

    def __init__(
        self,
        model_path: Path,
        lora: LoraSettings,
        placement: Placement = CPU_FLOAT32,
        serve: ServeSection | None = None,
    ) -> None:
        self._serve = serve or ServeSection()
        base, self.tokenizer = load_base_model(model_path, placement)
        self._lora = lora
        self._model: PeftModel = get_peft_model(base, peft_config(lora), adapter_name=EMPTY_ADAPTER)
        self._model.eval()
        self._versions: set[str] = set()
        self._retiring: set[str] = set()
        self._queue: deque[GenerationHandle] = deque()
        self._commands: deque[tuple[Callable[[], None], Future[None]]] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._step_started: float | None = None
        self._running: RunningBatch | None = None
        end_ids = base.generation_config.eos_token_id
        self._end_ids = {self.tokenizer.eos_token_id} | set(
            end_ids if isinstance(end_ids, list) else [end_ids] if end_ids is not None else []
        )
        self._text = RowText(self.tokenizer, self._end_ids)
        self._counter = copy.deepcopy(self.tokenizer)  # request threads count with their own copy, under a lock:
        self._counting = threading.Lock()  # a fast tokenizer shared with the worker's padded calls is not reentrant
        self._context_length = int(getattr(base.config, "max_position_embeddings", 0) or 0)
        self._joinable = joinable(DynamicCache(config=base.config))
        self.rows_per_step: Counter[int] = Counter()  # decoding steps by how many rows they ran (benchmarks)
        self._worker = threading.Thread(target=self._run, name="fedloop-generation", daemon=True)
        self._worker.start()

    # -- the protocol ------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue `request`; EngineBusy at once when `serve.max_queue` requests already wait."""
        handle = GenerationHandle(request)
        with self._changed:
            if self._closed or not self._worker.is_alive():
                raise EngineStopped("the generation worker is not running: restart the tenant service")
            if len(self._queue) >= self._serve.max_queue:
                raise EngineBusy(
                    f"{len(self._queue)} drafts are waiting (serve.max_queue): retry in a moment",
                    self._serve.retry_after_s,
                )
            self._queue.append(handle)
            self._changed.notify_all()
        return handle

    def load(self, version: str, state: AdapterState) -> None:
        """Add `version`'s adapter on the worker; ValueError if it does not fit the model's LoRA shape."""
        self._command(lambda: self._load(version, state))

    def unload(self, version: str) -> None:
        """Drop `version`'s adapter once no queued request needs it (returns at once)."""
        self._command(lambda: self._retire(version), wait=False)

    def loaded(self) -> set[str]:
        """The versions whose adapters are available (those being retired are not)."""
        with self._changed:
            return self._versions - self._retiring

    @property
    def context_length(self) -> int:
        """The model's `max_position_embeddings` (0 when its config names none)."""
        return self._context_length

    def prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of `messages` in the chat template, as the worker will encode them."""
        text = chat_text(self._counter, messages)
        with self._counting:
            return len(self._counter(text, add_special_tokens=False)["input_ids"])

    def health(self) -> EngineHealth:
        """The worker's state, for `/ready`."""
        with self._changed:
            started = self._step_started
            return EngineHealth(
                alive=self._worker.is_alive() and not self._closed,
                stalled_s=0.0 if started is None else time.monotonic() - started,
                stall_limit_s=self._serve.stall_after_s,
                queued=len(self._queue),
                max_queue=self._serve.max_queue,
            )

    def close(self) -> None:
        """Stop the worker after the step in progress; queued and running requests end with EngineStopped."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._worker.join(timeout=60)

    # -- the worker --------------------------------------------------------------------------------
    def _command(self, action: Callable[[], None], wait: bool = True) -> None:
        """Run `action` on the worker before its next step; with `wait`, return (or raise) when it has run."""
        done: Future[None] = Future()
        with self._changed:
            if self._closed or not self._worker.is_alive():
                raise EngineStopped("the generation worker is not running: restart the tenant service")
            self._commands.append((action, done))
            self._changed.notify_all()
        if wait:
            done.result()

    def _load(self, version: str, state: AdapterState) -> None:
        self._retiring.discard(version)
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
        with self._changed:
            self._versions.add(version)

    def _retire(self, version: str) -> None:
        if version in self._versions:
            self._retiring.add(version)

    def _drop_retired(self) -> None:
        """Delete retired adapters that no queued or running request names."""
        if not self._retiring:  # the usual case, checked after every step
            return
        with self._changed:
            needed = {handle.request.adapter for handle in self._queue}
            needed |= {row.adapter for row in self._running.rows} if self._running else set()
            gone = {v for v in self._retiring if v not in needed}
            self._versions -= gone
            self._retiring -= gone
        for version in gone:
            self._model.set_adapter(EMPTY_ADAPTER)
            self._model.delete_adapter(version)

    def _run(self) -> None:
        torch.set_num_threads(self._serve.threads or cores_available())
        try:
            while self._admit():
                if self._running is not None:
                    self._guarded(self._running.rows, self._decode)
                self._drop_retired()
        finally:
            with self._changed:
                self._closed = True
                stranded = list(self._queue) + ([row.handle for row in self._running.rows] if self._running else [])
                self._queue.clear()
                commands = list(self._commands)
                self._commands.clear()
            for handle in stranded:
                handle.push(EngineStopped("the generation worker stopped before this draft ended: retry"))
            for _, done in commands:
                done.set_exception(EngineStopped("the generation worker stopped"))

    def _admit(self) -> bool:
        """Run queued commands, then let waiting requests join the running batch; False once closed."""
        with self._changed:
            while self._running is None and not self._queue and not self._commands and not self._closed:
                self._changed.wait()
            if self._closed:
                return False
            commands = list(self._commands)
            self._commands.clear()
        for action, done in commands:
            try:
                action()
                done.set_result(None)
            except Exception as err:  # the caller gets the error; the worker goes on
                done.set_exception(err)
        running = len(self._running.rows) if self._running else 0
        if running and not self._joinable:
            return True  # this model's cache cannot take rows mid-batch: they wait for the batch to end
        joining: list[GenerationHandle] = []
        with self._changed:
            while self._queue and running + len(joining) < self._serve.max_batch_size:
                handle = self._queue.popleft()
                adapter = handle.request.adapter
                if handle.cancelled:
                    continue
                if adapter != BASE_VERSION and adapter not in self._versions:
                    handle.push(EngineStopped(f"version {adapter} is not loaded: retry, the release pointer moved"))
                    continue
                joining.append(handle)
        if joining:
            rows = [Row.of(handle, 0) for handle in joining]
            self._guarded(rows, lambda: self._prefill(rows))
        return True

    def _guarded(self, rows: list[Row], step: Callable[[], None]) -> None:
        """Run a model step, timed for /ready; a failed step fails its rows, not the worker."""
        with self._changed:
            self._step_started = time.monotonic()
        try:
            step()
        except Exception as err:
            log.exception("a generation step of %d drafts failed", len(rows))
            for row in rows:
                if not row.done:
                    row.done = True
                    row.handle.push(err)
            self._drop_ended()
        finally:
            with self._changed:
                self._step_started = None

    def _forward(
        self, rows: list[Row], input_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """One forward pass of `rows` (each with its own adapter); float32 logits of the last position."""
        names = [PEFT_BASE if row.adapter == BASE_VERSION else row.adapter for row in rows]
        per_row: dict[str, list[str]] = {}
        if len(set(names)) == 1:  # one adapter: PEFT's plain path, no per-row dispatch
            self._model.set_adapter(EMPTY_ADAPTER if names[0] == PEFT_BASE else names[0])
        else:
            per_row = {"adapter_names": names}
        width = input_ids.shape[1]
        output = self._model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(dim=-1) - 1).clamp(min=0)[:, -width:],
            cache=cache,  # the rows' positions come from position_ids; the cache appends
            use_cache=True,
            logits_to_keep=1,  # the last position only: the vocabulary projection of a prompt is most of its cost
            **per_row,
        )
        return output.logits[:, -1].float()

    @torch.no_grad()
    def _prefill(self, rows: list[Row]) -> None:
        """Encode the joining rows' conversations, take their first tokens and add them to the running batch."""
        texts = [chat_text(self.tokenizer, row.handle.request.messages) for row in rows]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self._model.device
        )
        mask = encoded["attention_mask"]
        for row, row_mask in zip(rows, mask, strict=True):
            row.prompt_tokens = int(row_mask.sum())
        cache = DynamicCache(config=self._model.config)
        logits = self._forward(rows, encoded["input_ids"], mask, cache)
        logits[:, list(self._end_ids)] = float("-inf")  # at least one new token, as `min_new_tokens=1`
        tokens = next_tokens(rows, logits)
        joined = RunningBatch(rows, cache, mask, torch.tensor(tokens), self._model.config)
        if self._running is None:
            self._running = joined
        else:
            self._running.join(joined)
        self._take(rows, tokens)

    @torch.no_grad()
    def _decode(self) -> None:
        """One step for every running row."""
        batch = self._running
        assert batch is not None
        self.rows_per_step[len(batch.rows)] += 1
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.mask.shape[0], 1))], dim=1)
        logits = self._forward(batch.rows, batch.last[:, None], batch.mask, batch.cache)
        tokens = next_tokens(batch.rows, logits)
        batch.last = torch.tensor(tokens)
        self._take(batch.rows, tokens)

    def _take(self, rows: list[Row], tokens: list[int]) -> None:
        """Hand each row its token, then drop the rows that ended."""
        for row, token in zip(rows, tokens, strict=True):
            if not row.done:
                self._text.advance(row, token)
        self._drop_ended()

    def _drop_ended(self) -> None:
        """Remove the ended rows from the running batch, and the batch itself when none is left."""
        if self._running is not None:
            self._running.drop_finished()
            if not self._running.rows:
                self._running = None
