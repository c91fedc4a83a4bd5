"""Drafting for a tenant's users: route by the release pointer, draft with that version, record the draft.

The HTTP endpoint (http.py) and the simulated product both call `DraftService`,
so every simulated run exercises the production path. A request is checked
whole, and its user's rate limit charged, before anything is generated; the
generation engine (engine.py) drafts it in a batch with others; the draft is
recorded (the whole conversation, redacted and encrypted, with the version
whose adapter produced it) through the same ingestion pipeline as the
FeedbackService before its id is trusted by the outcome route.

A draft id is handed out when generation starts (a stream's first chunk
carries it). Until the draft is recorded the outcome route answers that it is
still being drafted; if recording fails it answers that the draft was never
recorded, so no id a client saw is ever unknown.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from fedloop.client.ingest.recorder import Action, FeedbackError, FeedbackRecorder
from fedloop.client.ingest.runtime import TenantRuntime
from fedloop.client.ingest.validation import CONTEXT_ROLES, IngestError, check_identifier, check_text
from fedloop.client.release.controller import ReleaseController
from fedloop.client.release.loop import ReleaseLoop
from fedloop.client.serve.engine import (
    EngineBusy,
    EngineStopped,
    Generation,
    GenerationEngine,
    GenerationHandle,
    GenerationRequest,
    Sampling,
)
from fedloop.client.store.api import ChatMessage, ReleaseRecord
from fedloop.client.tenant_settings import ServeSection
from fedloop.shared.adapter import adapter_from_bytes
from fedloop.shared.echo import echoed

FAILED_IDS_KEPT = 10_000  # ids of drafts that failed after they were handed out, remembered for the outcome route


def prompt_token_limit(serve: ServeSection, context_length: int) -> int:
    """serve.max_prompt_tokens, or the model's context length minus serve.max_new_tokens when it is 0; ValueError
    naming the keys when a prompt and the longest draft cannot fit the model's context together."""
    if serve.max_prompt_tokens == 0 and context_length == 0:
        raise ValueError("serve.max_prompt_tokens: the model's config names no context length: set it")
    limit = serve.max_prompt_tokens or context_length - serve.max_new_tokens
    if limit < 1 or (context_length and limit + serve.max_new_tokens > context_length):
        raise ValueError(
            f"serve.max_prompt_tokens ({serve.max_prompt_tokens or 'from the model'}) + serve.max_new_tokens "
            f"({serve.max_new_tokens}) must fit the model's context length {context_length}: lower them"
        )
    return limit


def _too_long(size: str, limit: str, cut: bool) -> FeedbackError:
    """The 400 of a conversation over a prompt limit (OpenAI's code for it: context_length_exceeded)."""
    fix = (
        "even its last user message with the system messages does not fit: shorten them"
        if cut
        else 'send fewer or shorter messages, or have the operator set serve.truncate = "oldest"'
    )
    return FeedbackError(
        "INVALID_ARGUMENT",
        f"the conversation is {size}; the limit is {limit}: {fix}; nothing was generated",
        "messages",
        "context_length_exceeded",
    )


@dataclass(frozen=True)
class DraftRequest:
    """A product's request for a draft: who asks, the conversation so far, and which model name it used."""

    user_id: str
    messages: tuple[ChatMessage, ...]
    model: str
    max_tokens: int | None = None
    session_id: str = "default"
    prompt_version: str = "default"
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()
    draft_id: str = ""  # the client's own id for the draft ("" = fedloop makes one)


@dataclass(frozen=True)
class Draft:
    """A recorded draft: its id (for the outcome), the version that drafted it and the reply."""

    draft_id: str
    version: str
    canary: bool
    generation: Generation


@dataclass(frozen=True)
class PendingDraft:
    """A checked and routed request whose generation is under way: its id and version are known already."""

    request: DraftRequest
    draft_id: str
    version: str
    canary: bool
    handle: GenerationHandle


class DraftService:
    """A tenant's draft endpoint logic over its store, release pointer and generation engine."""

    def __init__(
        self, runtime: TenantRuntime, engine: GenerationEngine, release_loop: ReleaseLoop | None = None
    ) -> None:
        self._settings = runtime.settings
        self._store = runtime.store
        self._engine = engine
        self._pipeline = runtime.pipeline
        self._release = ReleaseController(runtime.store, runtime.settings.release)
        self._recorder = FeedbackRecorder(runtime.pipeline)
        self._loop = release_loop or ReleaseLoop(self._release, runtime.settings.release)
        self._max_prompt_tokens = prompt_token_limit(runtime.settings.serve, engine.context_length)
        self._synced: ReleaseRecord | None = None
        self._routing = threading.Lock()  # a route and its submission happen between two release moves
        self._ids = threading.Lock()
        self._in_flight: set[str] = set()
        self._failed: OrderedDict[str, str] = OrderedDict()

    # -- the release pointer and the loaded adapters ---------------------------------------------
    def sync(self) -> ReleaseRecord | None:
        """Read the release pointer; load the serving, canary and rollback-target adapters, drop the others."""
        with self._routing:
            return self._sync()

    def _sync(self) -> ReleaseRecord | None:
        state = self._store.versions.release_state()
        if state != self._synced:
            wanted = {v for v in (state.serving, state.canary) if v} if state else set()
            target = self._release.rollback_target() if state else None
            wanted |= {target} if target else set()
            for version in sorted(wanted - self._engine.loaded()):
                self._load(version)
            for version in self._engine.loaded() - wanted:
                self._engine.unload(version)  # once no queued draft needs it
            self._synced = state
        return state

    def _load(self, version: str) -> None:
        self._engine.load(version, adapter_from_bytes(self._store.versions.adapter(version)))

    def loaded(self) -> set[str]:
        """The versions whose adapters are in memory now."""
        return self._engine.loaded()

    def servable(self) -> list[str]:
        """Ids of the versions a request may name, oldest first: installed (verified) here, and neither refused by
        this tenant's gates nor rolled back here (unless an operator re-admitted them)."""
        declined = self._release.declined()
        return [v.version_id for v in self._store.versions.installed() if v.version_id not in declined]

    @property
    def retry_after_s(self) -> int:
        """The Retry-After of a 503 (full queue, busy store) or a 429."""
        return self._settings.serve.retry_after_s

    def ready(self) -> dict[str, bool]:
        """What `/ready` checks: the worker alive and not stuck, room in its queue, the store writable."""
        return {**self._engine.health().checks(), "store_writable": self._store.writable()}

    # -- checks ------------------------------------------------------------------------------------
    def _fit(self, messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
        """The conversation within serve.max_prompt_bytes, then serve.max_prompt_tokens (bytes first: nothing is
        tokenised beyond counting). With serve.truncate = "oldest" its oldest turns after the leading system
        messages are cut until it fits; otherwise, or when even the last message does not fit, FeedbackError
        (400, context_length_exceeded) naming the limit."""
        serve, limit = self._settings.serve, self._max_prompt_tokens
        cut = serve.truncate == "oldest"
        first = next(i for i, m in enumerate(messages) if m["role"] != "system")  # the last message is the user's
        most = len(messages) - 1 - first  # turns that may be cut

        def kept(dropped: int) -> tuple[ChatMessage, ...]:
            return messages[:first] + messages[first + dropped :]

        def size(dropped: int) -> int:
            return sum(len(m["content"].encode()) for m in kept(dropped))

        dropped = 0
        while size(dropped) > serve.max_prompt_bytes:
            if not cut or dropped == most:
                raise _too_long(f"{size(dropped)} bytes", f"{serve.max_prompt_bytes} (serve.max_prompt_bytes)", cut)
            dropped += 1
        tokens = self._engine.prompt_tokens(kept(dropped))
        if tokens <= limit:
            return kept(dropped)
        if not cut or self._engine.prompt_tokens(kept(most)) > limit:
            raise _too_long(f"{tokens} tokens", f"{limit} (serve.max_prompt_tokens)", cut)
        low, high = dropped + 1, most  # the fewest turns to cut: kept(high) fits, kept(low - 1) does not
        while low < high:
            middle = (low + high) // 2
            if self._engine.prompt_tokens(kept(middle)) <= limit:
                high = middle
            else:
                low = middle + 1
        return kept(high)

    def _check(self, request: DraftRequest) -> int:
        """The request's token budget; FeedbackError naming the field at fault otherwise."""
        limits, serve = self._settings.ingest, self._settings.serve
        for field, value, fix in (
            ("user", request.user_id, "send the product's stable id of the user in `user` or `metadata.user`"),
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
                f"messages has {len(request.messages)} entries; the limit is {serve.max_messages} "
                "(serve.max_messages): send the latest turns only",
                "messages",
            )
        for index, message in enumerate(request.messages):
            if message.get("role") not in CONTEXT_ROLES:
                raise FeedbackError(
                    "INVALID_ARGUMENT",
                    f"messages[{index}].role is {echoed(message.get('role'))}: use one of {', '.join(CONTEXT_ROLES)}",
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
        return budget

    def _new_draft_id(self, request: DraftRequest) -> str:
        """The client's draft id when it sent one (refused if used before), else a new one; now in flight."""
        draft_id = request.draft_id or uuid.uuid4().hex
        if request.draft_id:
            try:
                check_identifier("draft_id", draft_id, self._settings.ingest)
            except IngestError as err:
                raise FeedbackError(err.status, f"{err}: send a fresh id of your own, or none", "draft_id") from None
        with self._ids:
            if draft_id in self._in_flight or draft_id in self._failed or self._store.drafts.get_draft(draft_id):
                raise FeedbackError(
                    "ALREADY_EXISTS",
                    f"draft id {echoed(draft_id)} was used before: send a fresh id for each draft",
                    "draft_id",
                )
            self._in_flight.add(draft_id)
        return draft_id

    def _route(self, request: DraftRequest, state: ReleaseRecord | None) -> tuple[str, bool]:
        """The version that drafts for this request and whether it is the canary."""
        alias = self._settings.serve.model_alias
        if request.model != alias:
            if request.model not in (servable := self.servable()):
                raise FeedbackError(
                    "NOT_FOUND",
                    f"model {echoed(request.model)} is not a servable version (not installed, or refused or rolled "
                    f"back here): use {alias!r} (routed by the release pointer) or one of {servable}",
                    "model",
                )
            if request.model not in self._engine.loaded():
                self._load(request.model)
            return request.model, state is not None and request.model == state.canary
        version = self._release.route_in(state, self._store.pseudonym(request.user_id))  # the base model before any
        return version, state is not None and version == state.canary

    # -- drafting ----------------------------------------------------------------------------------
    def start(self, request: DraftRequest) -> PendingDraft:
        """Check, charge the user's rate limit, route and queue the generation; FeedbackError if refused.

        Nothing is generated for a refused request and nothing of it is stored.
        """
        budget = self._check(request)
        request = replace(request, messages=self._fit(request.messages))
        try:
            self._pipeline.admit([request.user_id])
        except IngestError as err:
            raise FeedbackError(err.status, str(err), "user") from None
        draft_id = self._new_draft_id(request)
        try:
            with self._routing:
                state = self._sync()
                version, canary = self._route(request, state)
                handle = self._engine.submit(
                    GenerationRequest(version, request.messages, budget, request.sampling, request.stop)
                )
        except (EngineBusy, EngineStopped) as err:
            self._forget(draft_id)
            raise FeedbackError("UNAVAILABLE", f"{err}; nothing was recorded") from None
        except BaseException:
            self._forget(draft_id)
            raise
        return PendingDraft(request, draft_id, version, canary, handle)

    def finish(self, pending: PendingDraft, generation: Generation) -> Draft:
        """Record the finished draft with the version whose adapter produced it; FeedbackError if it cannot be."""
        try:
            if generation.adapter != pending.version:  # the engine names the adapter of the row: never trust less
                raise FeedbackError(
                    "UNAVAILABLE", f"draft generated by {generation.adapter}, routed to {pending.version}: retry"
                )
            if not generation.text:
                raise FeedbackError(
                    "UNAVAILABLE",
                    f"version {pending.version} produced an empty draft for this prompt; nothing was recorded: "
                    "ask again or rephrase",
                )
            request = pending.request
            *context, last = request.messages
            self._recorder.record_draft(
                request.user_id,
                last["content"],
                generation.text,
                pending.version,
                request.session_id,
                request.prompt_version,
                pending.draft_id,
                context,
                admitted=True,
            )
        except FeedbackError as err:
            self.fail(pending, str(err))
            raise
        except BaseException as err:
            self.fail(pending, f"recording failed: {type(err).__name__}")
            raise
        self._forget(pending.draft_id)
        return Draft(pending.draft_id, pending.version, pending.canary, generation)

    def fail(self, pending: PendingDraft, reason: str) -> None:
        """The draft will never be recorded (its generation or recording failed, its reader left)."""
        pending.handle.cancel()
        with self._ids:
            self._in_flight.discard(pending.draft_id)
            self._failed[pending.draft_id] = reason
            while len(self._failed) > FAILED_IDS_KEPT:
                self._failed.popitem(last=False)

    def generation_failed(self, pending: PendingDraft, cause: object) -> FeedbackError:
        """The draft's generation ended with `cause`: void its id; the error to answer (503, retry)."""
        self.fail(pending, f"generation failed: {cause}")
        return FeedbackError("UNAVAILABLE", f"the draft could not be generated ({cause}); nothing was recorded: retry")

    def _forget(self, draft_id: str) -> None:
        with self._ids:
            self._in_flight.discard(draft_id)

    def draft(self, requests: Sequence[DraftRequest]) -> list[Draft | FeedbackError]:
        """Draft for every request (the engine batches them); each is recorded, or its error returned.

        A bad request is refused alone. Requests are queued in slices of half the engine's queue, so a large
        call leaves room for the endpoint's users.
        """
        results: list[Draft | FeedbackError] = []
        step = max(1, self._settings.serve.max_queue // 2)
        for first in range(0, len(requests), step):
            started: list[PendingDraft | FeedbackError] = []
            for request in requests[first : first + step]:
                try:
                    started.append(self.start(request))
                except FeedbackError as err:
                    started.append(err)
            results += [pending if isinstance(pending, FeedbackError) else self._wait(pending) for pending in started]
        return results

    def _wait(self, pending: PendingDraft) -> Draft | FeedbackError:
        try:
            generation = pending.handle.result()
        except Exception as err:
            return self.generation_failed(pending, err)
        try:
            return self.finish(pending, generation)
        except FeedbackError as err:
            return err

    def draft_one(self, request: DraftRequest) -> Draft:
        """Draft for one request; FeedbackError if it is refused."""
        [result] = self.draft([request])
        if isinstance(result, FeedbackError):
            raise result
        return result

    # -- outcomes ----------------------------------------------------------------------------------
    def record_outcome(
        self, draft_id: str, action: Action | str, final_text: str | None = None, dwell_ms: int = 0
    ) -> float:
        """Record what the user did with a draft (FeedbackError if refused); release decisions follow outcomes."""
        with self._ids:
            drafting, failed = draft_id in self._in_flight, self._failed.get(draft_id)
        if drafting:
            raise FeedbackError(
                "FAILED_PRECONDITION",
                f"draft {echoed(draft_id)} is still being drafted: report its outcome after its reply has ended",
                "draft_id",
            )
        if failed is not None:
            raise FeedbackError(
                "FAILED_PRECONDITION",
                f"draft {echoed(draft_id)} was never recorded ({failed}): its user saw no complete draft, so there is "
                "no outcome to report",
                "draft_id",
            )
        reward = self._recorder.record_outcome(draft_id, action, final_text, dwell_ms)
        self._loop.outcomes_recorded()
        return reward
