"""Drafting for a tenant's users: route by the release pointer, draft with that version, record the draft.

The HTTP endpoint (http.py) and the simulated product both call `DraftService`,
so every simulated run exercises the production path. A request is checked
whole before anything is generated or stored; a draft is recorded (redacted,
encrypted, with its model and prompt version) through the same ingestion
pipeline as the FeedbackService, and its outcome is reported by draft id.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fedloop.client.feedback import Action, FeedbackError, FeedbackRecorder
from fedloop.client.ingest.validation import IngestError, check_identifier, check_text
from fedloop.client.release.controller import ReleaseController
from fedloop.client.release.loop import ReleaseLoop
from fedloop.client.serve.engine import ChatMessage, DraftEngine, Generation
from fedloop.client.store_api import ReleaseRecord
from fedloop.client.tenant_runtime import TenantRuntime
from fedloop.shared.adapter import adapter_from_bytes

log = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class DraftRequest:
    """A product's request for a draft: who asks, the conversation so far, and which model name it used."""

    user_id: str
    messages: tuple[ChatMessage, ...]
    model: str
    max_tokens: int | None = None
    session_id: str = "default"
    prompt_version: str = "default"


@dataclass(frozen=True)
class Draft:
    """A recorded draft: its id (for the outcome), the version that drafted it and the reply."""

    draft_id: str
    version: str
    canary: bool
    generation: Generation


@dataclass(frozen=True)
class DraftStream:
    """A draft being streamed: id and version are known up front; `pieces` records the draft when exhausted."""

    draft_id: str
    version: str
    canary: bool
    pieces: Iterator[str]
    finished: list[Draft]  # holds the recorded draft once `pieces` is exhausted


class DraftService:
    """A tenant's draft endpoint logic over its store, release pointer and draft engine."""

    def __init__(self, runtime: TenantRuntime, engine: DraftEngine, release_loop: ReleaseLoop | None = None) -> None:
        self._settings = runtime.settings
        self._store = runtime.store
        self._engine = engine
        self._release = ReleaseController(runtime.store, runtime.settings.release)
        self._recorder = FeedbackRecorder(runtime.pipeline)
        self._loop = release_loop or ReleaseLoop(self._release, runtime.settings.release)
        self._synced: ReleaseRecord | None = None
        self._sync_lock = threading.Lock()

    # -- the release pointer and the loaded adapters ---------------------------------------------
    def sync(self) -> ReleaseRecord | None:
        """Read the release pointer; load the serving, canary and rollback-target adapters, drop the others."""
        state = self._store.versions.release_state()
        with self._sync_lock:
            if state != self._synced:
                wanted = {v for v in (state.serving, state.canary) if v} if state else set()
                target = self._release.rollback_target() if state else None
                wanted |= {target} if target else set()
                for version in sorted(wanted - self._engine.loaded()):
                    self._load(version)
                for version in self._engine.loaded() - wanted:
                    self._engine.unload(version)
                self._synced = state
        return state

    def _load(self, version: str) -> None:
        self._engine.load(version, adapter_from_bytes(self._store.versions.adapter(version)))

    def loaded(self) -> set[str]:
        """The versions whose adapters are in memory now."""
        return self._engine.loaded()

    def installed(self) -> list[str]:
        """Ids of the versions this tenant verified and installed, oldest first."""
        return [v.version_id for v in self._store.versions.installed()]

    # -- checks ------------------------------------------------------------------------------------
    def _check(self, request: DraftRequest) -> tuple[str, int]:
        """The prompt to record and the token budget; FeedbackError naming the field otherwise."""
        limits, serve = self._settings.ingest, self._settings.serve
        for field, value, fix in (
            ("user", request.user_id, "send the product's stable id of the user in `user`"),
            ("metadata.session_id", request.session_id, "or leave it out"),
            ("metadata.prompt_version", request.prompt_version, "or leave it out"),
        ):
            try:
                check_identifier(field, value, limits)
            except IngestError as err:
                raise FeedbackError(err.status, f"{err}: {fix}", field) from None
        if not request.messages:
            raise FeedbackError(
                "INVALID_ARGUMENT",
                "messages is empty: send the conversation, ending with the user's message",
                "messages",
            )
        if len(request.messages) > serve.max_messages:
            raise FeedbackError(
                "INVALID_ARGUMENT",
                f"messages has {len(request.messages)} entries; the limit is "
                f"{serve.max_messages} (serve.max_messages): send the latest "
                "turns only",
                "messages",
            )
        for index, message in enumerate(request.messages):
            if message.get("role") not in ROLES:
                raise FeedbackError(
                    "INVALID_ARGUMENT",
                    f"messages[{index}].role is {message.get('role')!r}: use one of {', '.join(ROLES)}",
                    f"messages[{index}].role",
                )
            try:
                check_text(
                    f"messages[{index}].content", message.get("content", ""), limits, required=message["role"] == "user"
                )
            except IngestError as err:
                raise FeedbackError(
                    "INVALID_ARGUMENT", f"{err}: shorten the message or raise the limit", f"messages[{index}].content"
                ) from None
        if request.messages[-1]["role"] != "user":
            raise FeedbackError(
                "INVALID_ARGUMENT",
                'the last message must be the user\'s (role "user"): it is what the draft replies to',
                f"messages[{len(request.messages) - 1}]",
            )
        budget = request.max_tokens if request.max_tokens is not None else serve.max_new_tokens
        if not 1 <= budget <= serve.max_new_tokens:
            raise FeedbackError(
                "INVALID_ARGUMENT",
                f"max_tokens is {budget}: use 1..{serve.max_new_tokens} (serve.max_new_tokens)",
                "max_tokens",
            )
        return request.messages[-1]["content"], budget

    def _route(self, request: DraftRequest, state: ReleaseRecord | None) -> tuple[str, bool]:
        """The version that drafts for this request and whether it is the canary."""
        alias = self._settings.serve.model_alias
        if request.model != alias:
            if request.model not in self.installed():
                raise FeedbackError(
                    "NOT_FOUND",
                    f"model {request.model!r} is not an installed version: use "
                    f"{alias!r} (routed by the release pointer) or one of "
                    f"{self.installed()}",
                    "model",
                )
            if request.model not in self._engine.loaded():
                self._load(request.model)
            return request.model, state is not None and request.model == state.canary
        version = self._release.route_in(state, self._store.pseudonym(request.user_id))  # the base model before any
        return version, state is not None and version == state.canary

    # -- drafting ----------------------------------------------------------------------------------
    def _record(
        self, request: DraftRequest, prompt: str, version: str, canary: bool, generation: Generation, draft_id: str = ""
    ) -> Draft:
        if not generation.text:
            raise FeedbackError(
                "UNAVAILABLE",
                f"version {version} produced an empty draft for this prompt; nothing "
                "was recorded: ask again or rephrase",
            )
        draft_id = self._recorder.record_draft(
            request.user_id, prompt, generation.text, version, request.session_id, request.prompt_version, draft_id
        )
        return Draft(draft_id, version, canary, generation)

    def draft(self, requests: Sequence[DraftRequest]) -> list[Draft | FeedbackError]:
        """Draft for every request (those of one version in one batch); each is recorded, or its error returned.

        Every request is checked and routed before anything is generated; a bad one is refused alone.
        """
        state = self.sync()
        results: list[Draft | FeedbackError] = []
        plans: dict[int, tuple[str, int, str, bool]] = {}  # request index -> prompt, budget, version, canary
        for index, request in enumerate(requests):
            try:
                plans[index] = (*self._check(request), *self._route(request, state))
                results.append(FeedbackError("UNAVAILABLE", "not drafted"))  # replaced below
            except FeedbackError as err:
                results.append(err)
        groups: dict[tuple[str, int], list[int]] = {}
        for index, (_, budget, version, _) in plans.items():
            groups.setdefault((version, budget), []).append(index)
        for (version, budget), indexes in groups.items():
            generations = self._engine.generate(version, [requests[i].messages for i in indexes], budget)
            for index, generation in zip(indexes, generations, strict=True):
                prompt, _, _, canary = plans[index]
                try:
                    results[index] = self._record(requests[index], prompt, version, canary, generation)
                except FeedbackError as err:
                    results[index] = err
        return results

    def draft_one(self, request: DraftRequest) -> Draft:
        """Draft for one request; FeedbackError if it is refused."""
        [result] = self.draft([request])
        if isinstance(result, FeedbackError):
            raise result
        return result

    def stream(self, request: DraftRequest) -> DraftStream:
        """Check and route now (errors raise before anything streams); the draft is recorded when the stream ends."""
        state = self.sync()
        prompt, budget = self._check(request)
        version, canary = self._route(request, state)
        draft_id = uuid.uuid4().hex
        streamed = self._engine.stream(version, request.messages, budget)
        finished: list[Draft] = []

        def pieces() -> Iterator[str]:
            yield from streamed
            assert streamed.result is not None
            finished.append(self._record(request, prompt, version, canary, streamed.result, draft_id))

        return DraftStream(draft_id, version, canary, pieces(), finished)

    # -- outcomes ----------------------------------------------------------------------------------
    def record_outcome(
        self, draft_id: str, action: Action | str, final_text: str | None = None, dwell_ms: int = 0
    ) -> float:
        """Record what the user did with a draft (FeedbackError if refused); release decisions follow outcomes."""
        reward = self._recorder.record_outcome(draft_id, action, final_text, dwell_ms)
        self._loop.outcomes_recorded()
        return reward
