"""The CPU default engine: one worker thread owns a transformers model with every served version as a PEFT adapter.

Requests wait in a bounded queue. The worker takes the oldest, waits up to
`serve.max_batch_wait_ms` for more (up to `serve.max_batch_size`), and drafts
them in one `generate` call in which each row runs its own adapter (PEFT's
mixed-adapter batches: `adapter_names`, with `__base__` for the base model).
Adapter loads and unloads are queued to the same worker, so nothing changes
the model while it generates and no lock is held by a reader; an unload waits
until no queued request needs the adapter. The worker sets torch's thread
count once (`serve.threads`), so every draft, streamed or not, runs with the
same thread team.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model, set_peft_model_state_dict

from fedloop.client.serve.batch_rows import Row, RowSampler, RowTracker
from fedloop.client.serve.engine import (
    EngineBusy,
    EngineHealth,
    EngineStopped,
    GenerationHandle,
    GenerationRequest,
)
from fedloop.client.store_api import BASE_VERSION
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
        self._batch_started: float | None = None
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

    def health(self) -> EngineHealth:
        """The worker's state, for `/ready`."""
        with self._changed:
            started = self._batch_started
            return EngineHealth(
                alive=self._worker.is_alive() and not self._closed,
                stalled_s=0.0 if started is None else time.monotonic() - started,
                stall_limit_s=self._serve.stall_after_s,
                queued=len(self._queue),
                max_queue=self._serve.max_queue,
            )

    def close(self) -> None:
        """Stop the worker after the batch in progress; queued requests end with EngineStopped."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._worker.join(timeout=60)

    # -- the worker --------------------------------------------------------------------------------
    def _command(self, action: Callable[[], None], wait: bool = True) -> None:
        """Run `action` on the worker before its next batch; with `wait`, return (or raise) when it has run."""
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
        """Delete retired adapters that no queued request names."""
        with self._changed:
            needed = {handle.request.adapter for handle in self._queue}
            gone = {v for v in self._retiring if v not in needed}
            self._versions -= gone
            self._retiring -= gone
        for version in gone:
            self._model.set_adapter(EMPTY_ADAPTER)
            self._model.delete_adapter(version)

    def _run(self) -> None:
        torch.set_num_threads(self._serve.threads or cores_available())
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._generate(batch)
                self._drop_retired()
        finally:
            with self._changed:
                self._closed = True
                stranded = list(self._queue)
                self._queue.clear()
                commands = list(self._commands)
                self._commands.clear()
            for handle in stranded:
                handle.push(EngineStopped("the generation worker stopped before this draft: retry"))
            for _, done in commands:
                done.set_exception(EngineStopped("the generation worker stopped"))

    def _next_batch(self) -> list[GenerationHandle] | None:
        """Run queued commands; then the next batch (None once closed)."""
        with self._changed:
            while not self._queue and not self._commands and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            commands = list(self._commands)
            self._commands.clear()
        for action, done in commands:
            try:
                action()
                done.set_result(None)
            except Exception as err:  # the caller gets the error; the worker goes on
                done.set_exception(err)
        deadline = time.monotonic() + self._serve.max_batch_wait_ms / 1000
        with self._changed:
            while self._queue and len(self._queue) < self._serve.max_batch_size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    break
            batch: list[GenerationHandle] = []
            while self._queue and len(batch) < self._serve.max_batch_size:
                handle = self._queue.popleft()
                if not handle.cancelled:
                    batch.append(handle)
            self._batch_started = time.monotonic() if batch else None
        return batch

    def _generate(self, batch: list[GenerationHandle]) -> None:
        ready = []
        for handle in batch:
            adapter = handle.request.adapter
            if adapter == BASE_VERSION or adapter in self._versions:
                ready.append(handle)
            else:
                handle.push(EngineStopped(f"version {adapter} is not loaded: retry, the release pointer moved"))
        try:
            if ready:
                self._generate_rows(ready)
        except Exception as err:  # a failed batch fails its requests, not the worker
            log.exception("a batch of %d drafts failed", len(ready))
            for handle in ready:
                handle.push(err)
        finally:
            with self._changed:
                self._batch_started = None

    @torch.no_grad()
    def _generate_rows(self, batch: list[GenerationHandle]) -> None:
        texts = [chat_text(self.tokenizer, handle.request.messages) for handle in batch]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self._model.device
        )
        adapters = [h.request.adapter for h in batch]
        rows = [
            Row(handle, adapter, int(mask.sum()))
            for handle, adapter, mask in zip(batch, adapters, encoded["attention_mask"], strict=True)
        ]
        tracker = RowTracker(rows, self.tokenizer)
        self._model.generate(
            **encoded,
            adapter_names=[PEFT_BASE if a == BASE_VERSION else a for a in adapters],
            max_new_tokens=max(h.request.max_new_tokens for h in batch),
            min_new_tokens=1,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=[tracker],
            logits_processor=[RowSampler(rows)],
        )
        tracker.finish_open_rows()
