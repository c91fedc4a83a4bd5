"""Where a run keeps its files: keys, HQ registry, tenant stores, summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HQ_NAME = "hq"


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run directory (`runs/<run>/`)."""

    root: Path

    @property
    def keys(self) -> Path:
        """Key files of HQ and every tenant (in production each party keeps only its own)."""
        return self.root / "keys"

    @property
    def hq(self) -> Path:
        """HQ's registry database and encrypted blobs."""
        return self.root / "hq"

    def tenant(self, name: str) -> Path:
        """Tenant `name`'s private data directory."""
        return self.root / "tenants" / name

    def product_log(self, name: str) -> Path:
        """What tenant `name`'s simulated product was served each round (JSON lines; simulation only)."""
        return self.root / "product" / f"{name}.jsonl"

    @property
    def schedule(self) -> Path:
        """Where a continuous run says why its next round has not started yet (src/fedloop/server/continuous.py)."""
        return self.root / "schedule.json"

    @property
    def summary(self) -> Path:
        """The run summary written by HQ at the end."""
        return self.root / "summary.json"
