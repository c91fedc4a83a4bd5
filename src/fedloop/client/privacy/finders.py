"""Finding PII in many texts at once: in this process, or in a pool of worker processes.

Finding is the expensive, pure part of redaction (Presidio analysis); assigning
placeholders needs the record's vault and stays in the pipeline. A pool lets the
service analyse the texts of concurrent requests on every core while the main
process handles gRPC and the store.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol

from fedloop.client.privacy.placeholders import Finding
from fedloop.client.privacy.redaction import Redactor

_worker_redactor: Redactor | None = None


class Finder(Protocol):
    """Finds PII in texts."""

    def find_many(self, texts: Sequence[str]) -> list[list[Finding]]:
        """Findings of each text, in order."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


class LocalFinder:
    """Finds PII in this process."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def find_many(self, texts: Sequence[str]) -> list[list[Finding]]:
        """Findings of each text, in order."""
        return [self._redactor.find(text) for text in texts]

    def close(self) -> None:
        """Nothing to release."""


def _start_worker() -> None:
    global _worker_redactor
    _worker_redactor = Redactor()


def _find_in_worker(texts: list[str]) -> list[list[Finding]]:
    assert _worker_redactor is not None, "worker initialiser did not run"
    return [_worker_redactor.find(text) for text in texts]


class PoolFinder:
    """Finds PII in `workers` separate processes (started with 'spawn': safe beside gRPC threads)."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker
        )
        for future in [self._pool.submit(_find_in_worker, ["warm-up"]) for _ in range(workers)]:
            future.result()  # every worker has loaded Presidio before the service takes traffic

    def find_many(self, texts: Sequence[str]) -> list[list[Finding]]:
        """Findings of each text, in order, computed in chunks across the workers."""
        if not texts:
            return []
        size = max(1, -(-len(texts) // self._workers))
        chunks = [list(texts[i : i + size]) for i in range(0, len(texts), size)]
        return [found for chunk in self._pool.map(_find_in_worker, chunks) for found in chunk]

    def close(self) -> None:
        """Stop the workers."""
        self._pool.shutdown(cancel_futures=True)
