"""The generation engine seam: what the draft service asks of whatever runs the model.

The draft service (routing, checks, recording) stays in front; an engine owns
the model and every adapter in it. A request names the adapter that must
produce it, and the finished `Generation` names the adapter that did, so the
service records exactly the version that drafted. Requests are submitted, not
called: the engine batches them on its own worker, and each caller reads its
own reply from a `GenerationHandle`, piece by piece or whole, from a thread or
from an event loop. `TransformersEngine` (transformers_engine.py) is the CPU
default; a vLLM engine would fill the same protocol.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from fedloop.client.store.api import ChatMessage
from fedloop.shared.adapter import AdapterState


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy when `temperature` is 0 (drafts are then reproducible)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """Whether the reply is the model's greedy one."""
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """One reply to generate: with which adapter, for which conversation, within which budget."""

    adapter: str
    messages: tuple[ChatMessage, ...]
    max_new_tokens: int
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    """A finished reply: its text, why it ended ("stop" or "length"), its token counts and the adapter that made it."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    adapter: str


class EngineBusy(Exception):
    """The engine's queue is full: retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineStopped(Exception):
    """The engine's worker is not running (it was closed or it died): nothing more is generated."""


@dataclass(frozen=True)
class EngineHealth:
    """What `/ready` reports of the engine."""

    alive: bool  # the worker thread runs
    stalled_s: float  # how long the batch in progress has run (0 when idle)
    stall_limit_s: float  # a batch running longer counts as stuck
    queued: int
    max_queue: int

    def checks(self) -> dict[str, bool]:
        """The engine's part of `/ready`, by name: alive, not stuck, room in the queue."""
        return {
            "worker_alive": self.alive,
            "worker_not_stuck": self.stalled_s <= self.stall_limit_s,
            "queue_below_limit": self.queued < self.max_queue,
        }


# What a handle carries: a text piece, the finished Generation, or the exception that ended it.
Event = str | Generation | BaseException


class GenerationHandle:
    """One submitted request's reply as the worker produces it; read it once, from a thread or an event loop."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self._events: deque[Event] = deque()
        self._arrived = threading.Condition()
        self._wake: Callable[[], None] | None = None
        self._cancelled = threading.Event()

    # -- the worker's side ------------------------------------------------------------------------
    def push(self, event: Event) -> None:
        """Hand the reader a piece, the finished Generation or the error that ended the request."""
        with self._arrived:
            self._events.append(event)
            self._arrived.notify_all()
            wake = self._wake
        if wake is not None:
            wake()

    @property
    def cancelled(self) -> bool:
        """Whether the reader gave up (a closed stream): the worker stops generating for it."""
        return self._cancelled.is_set()

    # -- the reader's side ------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating for this request (its reader went away)."""
        self._cancelled.set()

    def events(self) -> Iterator[Event]:
        """Every event, blocking until the request ends (the last event is a Generation or an exception)."""
        while True:
            with self._arrived:
                while not self._events:
                    self._arrived.wait()
                event = self._events.popleft()
            yield event
            if not isinstance(event, str):
                return

    async def events_async(self) -> AsyncIterator[Event]:
        """The same events, awaited in an event loop without holding a thread."""
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(arrived.set)

        with self._arrived:
            self._wake = wake
        while True:
            with self._arrived:
                taken = list(self._events)
                self._events.clear()
            for event in taken:
                yield event
                if not isinstance(event, str):
                    return
            if not taken:
                await arrived.wait()
                arrived.clear()

    def result(self) -> Generation:
        """The finished Generation (blocking); the exception that ended the request is raised."""
        return finished(list(self.events())[-1])

    async def result_async(self) -> Generation:
        """The finished Generation, awaited."""
        last: Event = ""
        async for event in self.events_async():
            last = event
        return finished(last)


def finished(event: Event) -> Generation:
    """The Generation a request ended with, or raise the exception it ended with."""
    if isinstance(event, BaseException):
        raise event
    if not isinstance(event, Generation):
        raise EngineStopped("the request ended without a reply")
    return event


class GenerationEngine(Protocol):
    """What the draft service needs from an engine that owns the model."""

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue `request`; EngineBusy at once when the queue is full, EngineStopped when the worker is gone."""
        ...

    def load(self, version: str, state: AdapterState) -> None:
        """Make `version`'s adapter available (ValueError if it does not fit the model)."""
        ...

    def unload(self, version: str) -> None:
        """Drop `version`'s adapter once no queued request needs it."""
        ...

    def loaded(self) -> set[str]:
        """The versions whose adapters are available."""
        ...

    @property
    def context_length(self) -> int:
        """The most tokens the model attends to: prompt and reply together."""
        ...

    def prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """How many tokens `messages` are in the model's chat template (counted, nothing generated)."""
        ...

    def health(self) -> EngineHealth:
        """The worker's state, for `/ready`."""
        ...

    def close(self) -> None:
        """Stop the worker; queued requests end with EngineStopped."""
        ...
