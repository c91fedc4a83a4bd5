"""A simulated product for demos, benchmarks and tests: simulated users asking a tenant for drafts.

Each tenant's users ask templated support questions (sometimes with PII in
them) and share a hidden preferred reply style. The product asks the tenant's
draft service for a draft (the function its HTTP endpoint calls), shows it,
and reports what the user did by draft id (the function its outcome route
calls): a draft similar enough to the reply the user wants is accepted as is,
a close one is edited into it, anything else is rejected and the user writes
their own. Nothing of this module is part of a deployed tenant.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fedloop.client.ingest.recorder import Action, FeedbackError
from fedloop.client.samples.curation import text_similarity
from fedloop.client.serve.drafts import DraftRequest, DraftService

SIMULATED_DWELL_MS = 4000  # simulated users read a draft for 4 s before deciding

_NAMES = ("Li Lei", "Wang Fang", "Anna", "Tom", "Zhang Wei", "Maria")
_INTENTS: tuple[tuple[str, str], ...] = (
    ("Where is my order {order}? It has not arrived.", "Your order {order} has shipped and arrives in 2 days"),
    ("I want a refund for order {order}.", "A refund for order {order} is on its way to you"),
    ("How do I reset my password?", "Use the Forgot password link on the login page to reset it"),
    ("Can I change the address for order {order}?", "Yes, reply with the new address and we update order {order}"),
    ("Please cancel my order {order}.", "Order {order} is cancelled and you will not be charged"),
    ("Is order {order} paid already?", "Yes, payment for order {order} was received"),
)
STYLES: dict[str, str] = {
    "formal": "Dear customer, {core}. Kind regards, Support team",
    "friendly": "Hi there! {core} :) Cheers!",
    "brief": "{core}.",
}


@dataclass(frozen=True)
class Conversation:
    """One support question with the reply its user wants."""

    user_id: str
    prompt: str
    preferred_reply: str


@dataclass(frozen=True)
class Decision:
    """What a simulated user did with a draft."""

    action: Action
    final_text: str | None
    similarity: float


class TenantTraffic:
    """A tenant's population of users with one hidden preferred style."""

    def __init__(self, tenant: str, style: str, seed: int) -> None:
        self.tenant = tenant
        self.style = STYLES[style]
        self.seed = seed

    def conversations(self, count: int, batch: int) -> list[Conversation]:
        """`count` conversations of batch number `batch` (the same batch always gives the same ones).

        About one in four questions carries a phone number or e-mail address.
        """
        rng = random.Random(f"{self.tenant}/{self.seed}/{batch}")
        result = []
        for _ in range(count):
            question, answer = rng.choice(_INTENTS)
            order = str(rng.randint(10000, 99999))
            prompt = question.format(order=order)
            roll = rng.random()
            if roll < 0.125:
                prompt += f" Call me on 13{rng.randint(100000000, 999999999)}."
            elif roll < 0.25:
                prompt += f" My e-mail is user{rng.randint(1, 999)}@example.com."
            user = f"{self.tenant}-user-{rng.randint(1, 50)}"
            result.append(Conversation(user, prompt, self.style.format(core=answer.format(order=order))))
        return result


@dataclass(frozen=True)
class UserJudgement:
    """The fixed rule by which simulated users judge a draft."""

    accept_threshold: float
    edit_threshold: float

    def decide(self, draft: str, conversation: Conversation) -> Decision:
        """Accept if similarity >= accept_threshold, edit if >= edit_threshold, else reject and rewrite."""
        score = text_similarity(draft, conversation.preferred_reply)
        if score >= self.accept_threshold:
            return Decision(Action.ACCEPT, None, score)
        if score >= self.edit_threshold:
            return Decision(Action.EDIT, conversation.preferred_reply, score)
        return Decision(Action.REJECT, conversation.preferred_reply, score)


@dataclass
class ServedRound:
    """What the product was served in one round: drafts and accepts per version, and refused requests."""

    round: int
    tenant: str
    served: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> str:
        """One JSON line for the product's log."""
        return json.dumps(
            {
                "round": self.round,
                "tenant": self.tenant,
                "served": dict(self.served),
                "accepted": dict(self.accepted),
                "refused": dict(self.refused),
            },
            sort_keys=True,
        )


@dataclass(frozen=True)
class SimulatedProduct:
    """A tenant's product with simulated users, using the tenant only through its draft service."""

    tenant: str
    drafts: DraftService
    judgement: UserJudgement
    model: str = "fedloop"  # the routing alias
    max_tokens: int = 40
    prompt_version: str = "default"
    log_path: Path | None = None

    def serve(self, conversations: list[Conversation], round_: int) -> ServedRound:
        """Each conversation's user asks for a draft, reads it and accepts, edits or rejects it."""
        report = ServedRound(round_, self.tenant)
        requests = [
            DraftRequest(
                c.user_id,
                ({"role": "user", "content": c.prompt},),
                self.model,
                self.max_tokens,
                prompt_version=self.prompt_version,
            )
            for c in conversations
        ]
        for conversation, result in zip(conversations, self.drafts.draft(requests), strict=True):
            if isinstance(result, FeedbackError):
                report.refused[result.status] += 1
                continue
            decision = self.judgement.decide(result.generation.text, conversation)
            self.drafts.record_outcome(result.draft_id, decision.action, decision.final_text, SIMULATED_DWELL_MS)
            report.served[result.version] += 1
            report.accepted[result.version] += decision.action is Action.ACCEPT
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as log:
                log.write(report.as_json() + "\n")
        return report


def read_product_log(path: Path) -> list[ServedRound]:
    """The rounds a simulated product logged (none if it never ran)."""
    if not path.exists():
        return []
    rounds = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        rounds.append(
            ServedRound(
                entry["round"],
                entry["tenant"],
                Counter(entry["served"]),
                Counter(entry["accepted"]),
                Counter(entry["refused"]),
            )
        )
    return rounds
