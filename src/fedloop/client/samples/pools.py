"""Sample pools and the human decisions that move samples between them.

Lifecycle: `problem -> candidate -> secondary_baseline -> core_baseline`. The
pipeline puts new samples in `candidate` and flagged ones in `problem`; samples
at or above `curation.review_risk` (default: high, e.g. a resident-id number)
wait with status `awaiting_review` and never train until an operator decides
(`fedloop samples review decide`); only an operator moves a sample into a
baseline pool (`fedloop samples review promote`, or a Label Studio annotation
imported with `fedloop samples review import`).
Every move and label is audited with the operator's name.

Label Studio: `export_label_studio` writes tasks (redacted texts only) for the
labelling config in `configs/label_studio.xml`; `import_label_studio` reads
Label Studio's JSON export and applies each task's latest annotation: the
`pool` choice and the `label` text.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedloop.client.store.api import FeedbackStoreAPI, Pool, SampleQuery, SampleRecord, SampleStatus

POOLS: tuple[Pool, ...] = tuple(Pool)  # lifecycle order


class ReviewError(ValueError):
    """A review action was refused; nothing changed."""


def _sample(store: FeedbackStoreAPI, sample_id: str) -> SampleRecord:
    found = store.samples.find(SampleQuery(sample_id=sample_id))
    if not found:
        raise ReviewError(f"unknown sample {sample_id!r}: see `fedloop samples review list`")
    return found[0]


def _operator(operator: str) -> str:
    if not operator.strip():
        raise ReviewError("an operator name is required: every pool change is audited")
    return operator.strip()


def move(store: FeedbackStoreAPI, sample_id: str, pool: str, operator: str) -> SampleRecord:
    """Put a sample in `pool` (any direction) on an operator's decision."""
    operator = _operator(operator)
    if pool not in POOLS:
        raise ReviewError(f"unknown pool {pool!r}: use one of {', '.join(POOLS)}")
    with store.transaction():
        sample = _sample(store, sample_id)
        if sample.status != SampleStatus.ADMITTED:
            raise ReviewError(
                f"sample {sample_id!r} is {sample.status} ({sample.reason}); only admitted samples can enter a pool"
            )
        store.samples.move(sample_id, Pool(pool))
        store.audit(operator, "sample.move", f"{sample_id}: {sample.pool} -> {pool}")
    return _sample(store, sample_id)


def promote(store: FeedbackStoreAPI, sample_id: str, pool: str, operator: str) -> SampleRecord:
    """Move a sample up the lifecycle (to a later pool)."""
    current = _sample(store, sample_id).pool
    if pool not in POOLS or POOLS.index(pool) <= POOLS.index(current):
        raise ReviewError(
            f"promote goes up from '{current}': choose one of {', '.join(POOLS[POOLS.index(current) + 1 :]) or 'none'}"
        )
    return move(store, sample_id, pool, operator)


def demote(store: FeedbackStoreAPI, sample_id: str, pool: str, operator: str) -> SampleRecord:
    """Move a sample down the lifecycle (to an earlier pool)."""
    current = _sample(store, sample_id).pool
    if pool not in POOLS or POOLS.index(pool) >= POOLS.index(current):
        raise ReviewError(
            f"demote goes down from '{current}': choose one of {', '.join(POOLS[: POOLS.index(current)]) or 'none'}"
        )
    return move(store, sample_id, pool, operator)


class Decision(StrEnum):
    """A reviewer's decision on a sample that waits for review."""

    ADMIT = "admit"  # it may train
    REJECT = "reject"


DECISIONS = {Decision.ADMIT: SampleStatus.ADMITTED, Decision.REJECT: SampleStatus.REJECTED}


def decide(store: FeedbackStoreAPI, sample_id: str, decision: str, operator: str) -> SampleRecord:
    """Admit (it may train) or reject a sample that waits for review (curation.review_risk); audited."""
    operator = _operator(operator)
    if decision not in DECISIONS:
        raise ReviewError(f"unknown decision {decision!r}: use admit or reject")
    with store.transaction():
        sample = _sample(store, sample_id)
        if sample.status != SampleStatus.AWAITING_REVIEW:
            raise ReviewError(f"sample {sample_id!r} is {sample.status}, not awaiting review")
        store.samples.set_status(sample_id, DECISIONS[Decision(decision)], f"{decision}ed by {operator} on review")
        store.audit(operator, "sample.review", f"{sample_id}: {decision} (was: {sample.reason})")
    return _sample(store, sample_id)


def label(store: FeedbackStoreAPI, sample_id: str, text: str, operator: str) -> SampleRecord:
    """Attach a free-text label (e.g. a problem type or a note) to a sample."""
    operator = _operator(operator)
    with store.transaction():
        _sample(store, sample_id)
        store.samples.set_label(sample_id, text)
        store.audit(operator, "sample.label", f"{sample_id}: {text[:80]}")
    return _sample(store, sample_id)


def export_label_studio(store: FeedbackStoreAPI, out: Path, pools: tuple[Pool, ...] = POOLS) -> int:
    """Write Label Studio tasks for admitted samples in `pools`; returns how many."""
    tasks = [
        {
            "data": {
                "sample_id": s.id,
                "prompt": s.prompt,
                "reply": s.target or "",
                "rejected": s.rejected or "",
                "pool": s.pool,
                "problem_type": s.problem_type or "",
                "risk": s.risk,
            }
        }
        for s in store.samples.find(SampleQuery(status=SampleStatus.ADMITTED, pools=pools))
    ]
    out.write_text(json.dumps(tasks, ensure_ascii=False, indent=2))
    return len(tasks)


def _latest_annotation(task: dict[str, Any]) -> tuple[str | None, str | None]:
    annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    if not annotations:
        return None, None
    pool = text = None
    for result in annotations[-1].get("result", []):
        value = result.get("value", {})
        if result.get("from_name") == "pool" and value.get("choices"):
            pool = value["choices"][0]
        if result.get("from_name") == "label" and value.get("text"):
            text = value["text"][0]
    return pool, text


def import_label_studio(store: FeedbackStoreAPI, path: Path, operator: str) -> dict[str, int]:
    """Apply annotations from a Label Studio JSON export; returns counts of moves and labels.

    Every task is checked before anything changes: an unknown sample or pool
    refuses the whole file.
    """
    try:
        tasks = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReviewError(f"{path} is not a readable Label Studio JSON export: {err}") from None
    if not isinstance(tasks, list):
        raise ReviewError(f"{path}: expected a JSON list of tasks (Label Studio 'JSON' export)")
    decisions = []
    for number, task in enumerate(tasks):
        sample_id = task.get("data", {}).get("sample_id") if isinstance(task, dict) else None
        if not sample_id:
            raise ReviewError(f"{path}: task #{number} has no data.sample_id; export tasks with fedloop first")
        pool, text = _latest_annotation(task)
        if pool is not None and pool not in POOLS:
            raise ReviewError(f"{path}: task #{number} chooses unknown pool {pool!r}")
        _sample(store, sample_id)
        decisions.append((sample_id, pool, text))
    counts = {"moved": 0, "labelled": 0}
    for sample_id, pool, text in decisions:
        if pool is not None and pool != _sample(store, sample_id).pool:
            move(store, sample_id, pool, operator)
            counts["moved"] += 1
        if text is not None:
            label(store, sample_id, text, operator)
            counts["labelled"] += 1
    return counts
