"""Where a continuous run stands between rounds, and why its next round waits (`schedule.json`).

Kept apart from src/fedloop/server/continuous.py, which drives rounds: `fedloop status
--hq` and HQ's metrics read the state without importing the strategy (and the
model libraries behind it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedloop.shared.settings import Settings


@dataclass(frozen=True)
class ScheduleState:
    """Where a continuous run stands between rounds: each tenant's new samples, and why no round runs yet."""

    at: float
    rounds_done: int
    counts: dict[str, int]
    ready: list[str]
    needed: int
    min_new_samples: int
    last_round_at: float
    next_due_at: float | None
    start: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON form `schedule.json` holds."""
        return asdict(self)


def schedule_state(
    counts: dict[str, int], settings: Settings, now: float, last_round_at: float, rounds_done: int
) -> ScheduleState:
    """Whether a round starts now, and why (not)."""
    schedule = settings.schedule
    needed = schedule.min_tenants or settings.aggregation.min_tenants
    ready = sorted(name for name, count in counts.items() if count >= schedule.min_new_samples)
    due_at = last_round_at + schedule.max_interval_s if schedule.max_interval_s else None
    if len(ready) >= needed:
        start, reason = True, f"{len(ready)} tenants have {schedule.min_new_samples} new samples ({', '.join(ready)})"
    elif due_at is not None and now >= due_at:
        start, reason = True, f"{schedule.max_interval_s:g} s since the last round"
    else:
        start = False
        reason = (
            f"waiting: {len(ready)} of the {needed} tenants a round needs have {schedule.min_new_samples} new samples"
            + (f"; a round is due at the latest in {due_at - now:.0f} s" if due_at is not None else "")
        )
    return ScheduleState(
        now, rounds_done, counts, ready, needed, schedule.min_new_samples, last_round_at, due_at, start, reason
    )


def read_schedule_state(state_file: Path) -> dict[str, Any] | None:
    """The last `schedule.json` a continuous run wrote, or None."""
    try:
        return dict(json.loads(state_file.read_text()))
    except (OSError, ValueError):
        return None
