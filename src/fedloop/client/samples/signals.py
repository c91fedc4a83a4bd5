"""Derived signals: rules over a session's implicit events that flag low-quality interactions.

Immediate rules run when a signal arrives: a repeated question (normalised
similarity to one of the last N user messages) and a dialogue state that has
not advanced for N turns. Absence rules need time to pass and run in `sweep`:
a CTA shown but not clicked, a cart with no order, a draft with no response,
and a session with drafts but no conversion at all. Each flags the draft the
user was reacting to: the latest draft shown before the triggering event.

An absence is evidence only if the product reports the thing that is absent:
"no response" needs a product that sends USER_MESSAGE signals, "no conversion"
one that sends conversion signals (CTA_CLICKED, ORDER_EVENT, CART_EVENT). A
product that sends only drafts and outcomes gets no absence flags at all, and a
draft that has an outcome was answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedloop.client.samples.curation import text_similarity
from fedloop.client.store.api import SignalRecord
from fedloop.client.tenant_settings import SignalsSection

CONVERSIONS = {"CTA_CLICKED", "ORDER_EVENT", "CART_EVENT"}


@dataclass(frozen=True)
class Flag:
    """A problem found on a draft."""

    draft_id: str
    model_version: str
    problem_type: str


def _draft_before(drafts: list[tuple[str, str, int]], at_ms: int) -> tuple[str, str, int] | None:
    earlier = [d for d in drafts if d[2] <= at_ms]
    return earlier[-1] if earlier else None


def immediate_flags(
    latest: SignalRecord, history: list[SignalRecord], drafts: list[tuple[str, str, int]], rules: SignalsSection
) -> list[Flag]:
    """Flags caused by `latest`, given the session's earlier signals (oldest first) and drafts."""
    draft = _draft_before(drafts, latest.at_ms)
    if draft is None:
        return []
    flags = []
    if latest.kind == "USER_MESSAGE" and latest.value:
        earlier = [s.value for s in history if s.kind == "USER_MESSAGE" and s.value and s.event_id != latest.event_id]
        recent = earlier[-rules.repeated_question_lookback :]
        if any(text_similarity(latest.value, text) >= rules.repeated_question_similarity for text in recent):
            flags.append(Flag(draft[0], draft[1], "repeated_question"))
    if latest.kind == "DIALOGUE_STATE":
        states = [s.value for s in history if s.kind == "DIALOGUE_STATE"]
        last = states[-rules.stuck_dialogue_turns :]
        if len(last) == rules.stuck_dialogue_turns and len(set(last)) == 1:
            flags.append(Flag(draft[0], draft[1], "dialogue_stuck"))
    return flags


def absence_flags(
    signals: list[SignalRecord],
    drafts: list[tuple[str, str, int]],
    now_ms: int,
    rules: SignalsSection,
    reported: set[str],
    answered: set[str],
) -> list[Flag]:
    """Flags for things that should have happened by `now_ms` and did not.

    `reported`: the signal kinds this tenant's product has ever sent; `answered`: drafts with an outcome.
    """
    flags: list[Flag] = []

    def flag_before(at_ms: int, problem: str) -> None:
        draft = _draft_before(drafts, at_ms)
        if draft is not None:
            flags.append(Flag(draft[0], draft[1], problem))

    for index, signal in enumerate(signals):
        later = signals[index + 1 :]
        if (
            signal.kind == "CTA_SHOWN"
            and now_ms - signal.at_ms > rules.cta_window_ms
            and not any(s.kind == "CTA_CLICKED" and s.at_ms - signal.at_ms <= rules.cta_window_ms for s in later)
        ):
            flag_before(signal.at_ms, "cta_not_clicked")
        if (
            signal.kind == "CART_EVENT"
            and now_ms - signal.at_ms > rules.order_window_ms
            and not any(s.kind == "ORDER_EVENT" and s.at_ms - signal.at_ms <= rules.order_window_ms for s in later)
        ):
            flag_before(signal.at_ms, "no_order")
    for draft_id, version, shown in drafts if "USER_MESSAGE" in reported else ():
        if (
            draft_id not in answered
            and now_ms - shown > rules.no_response_ms
            and not any(s.kind == "USER_MESSAGE" and shown < s.at_ms <= shown + rules.no_response_ms for s in signals)
        ):
            flags.append(Flag(draft_id, version, "long_no_response"))
    if drafts and reported & CONVERSIONS:
        last_activity = max([d[2] for d in drafts] + [s.at_ms for s in signals])
        if now_ms - last_activity > rules.conversion_window_ms and not any(s.kind in CONVERSIONS for s in signals):
            flags.append(Flag(drafts[-1][0], drafts[-1][1], "no_conversion"))
    return flags
