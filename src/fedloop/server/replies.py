"""Every field HQ reads from a tenant's reply, validated before it is used.

A tenant is one party among several: a reply with a missing field, a field of
the wrong type, an oversized one or one HQ does not know refuses that tenant
with a named reason (`ReplyRefused`), and the run goes on with the others.
Enrolment claims, training replies (the sealed update and its metrics) and
evaluation replies (metrics only) each have their rules here, in one place.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedloop.shared.echo import echoed
from fedloop.shared.protocol import ENROL, HIT_RATE, METRICS, NUM_EXAMPLES, SEALED

if TYPE_CHECKING:
    from flwr.app import RecordDict

MAX_METRICS = 64  # numbers a tenant may report per reply
MAX_METRIC_NAME = 64


class ReplyRefused(Exception):
    """A tenant's reply does not have the shape HQ reads; `reason` is the short code counted in round reports."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class EnrolClaim(BaseModel):
    """What a tenant answers HQ's enrolment challenge with: its name, its key id, its signature (hex)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    tenant: str = Field(min_length=1, max_length=64)
    key_id: str = Field(min_length=1, max_length=128)
    signature: str = Field(min_length=2, max_length=512, pattern=r"^(?:[0-9a-f]{2})+$")


def _records(content: RecordDict, allowed: dict[str, str], what: str) -> None:
    """Refuse records other than `allowed` (name -> kind: config, metric, array) or of another kind."""
    kinds = {
        **{name: "config" for name in content.config_records},
        **{name: "metric" for name in content.metric_records},
        **{name: "array" for name in content.array_records},
    }
    unexpected = {name: kind for name, kind in kinds.items() if allowed.get(name) != kind}
    if unexpected:
        raise ReplyRefused(f"{what} carries records HQ does not read: {echoed(sorted(unexpected.items()))}")


def enrol_claim(content: RecordDict) -> EnrolClaim:
    """The enrolment claim of a reply; ReplyRefused naming the field at fault."""
    _records(content, {ENROL: "config"}, "the enrolment reply")
    if ENROL not in content.config_records:
        raise ReplyRefused("the enrolment reply has no `enrol` record")
    try:
        return EnrolClaim.model_validate(dict(content.config_records[ENROL]))
    except ValidationError as err:
        problem = err.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "enrol"
        raise ReplyRefused(f"the enrolment claim's {echoed(field)[1:-1]} is invalid: {problem['msg']}") from None


def reported_metrics(content: RecordDict, training: bool) -> dict[str, float]:
    """The numbers a training (with its sealed update) or evaluation reply reports, checked: at most MAX_METRICS
    finite numbers under short names, a non-negative integer sample count, a hit rate in [0, 1]."""
    allowed = {METRICS: "metric", **({SEALED: "array"} if training else {})}
    what = "the training reply" if training else "the evaluation reply"
    _records(content, allowed, what)
    if training and SEALED not in content.array_records:
        raise ReplyRefused(f"{what} has no sealed update (`{SEALED}` record)")
    if METRICS not in content.metric_records:
        raise ReplyRefused(f"{what} has no `metrics` record")
    record = content.metric_records[METRICS]
    if len(record) > MAX_METRICS:
        raise ReplyRefused(f"{what} reports {len(record)} metrics; at most {MAX_METRICS} are read")
    figures: dict[str, float] = {}
    for name, value in record.items():
        if len(name) > MAX_METRIC_NAME:
            raise ReplyRefused(f"{what} names a metric {echoed(name)}, longer than {MAX_METRIC_NAME} characters")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ReplyRefused(f"{what}'s metric {echoed(name)} is {echoed(value)}, not a finite number")
        figures[name] = float(value)
    count = figures.get(NUM_EXAMPLES)
    if count is None or count < 0 or count != int(count):
        raise ReplyRefused(f"{what}'s {NUM_EXAMPLES} is {echoed(count)}, not a count")
    if not training and count > 0 and not 0.0 <= figures.get(HIT_RATE, -1.0) <= 1.0:
        raise ReplyRefused(f"{what}'s {HIT_RATE} is {echoed(figures.get(HIT_RATE))}, not a share in [0, 1]")
    return figures
