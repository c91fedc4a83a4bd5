"""Simulated customer-support traffic for demos and tests.

Each tenant's users ask templated support questions (sometimes with PII in
them) and share a hidden preferred reply style. A user compares a draft with
the reply they want: similar enough is accepted as is, close is edited into
the wanted reply, anything else is rejected and the user writes their own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fedloop.client.feedback import Action
from fedloop.client.samples.curation import text_similarity

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
