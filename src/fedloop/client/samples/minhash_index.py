"""Near-duplicate lookup over samples with MinHash LSH (datasketch)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from datasketch import MinHash, MinHashLSH

NUM_PERM = 64
SCHEME = "affine32"  # datasketch's scheme for new MinHashes; rebuilding one from stored values must name it
_SPACES = re.compile(r"\s+")
_PERMUTATIONS = MinHash(num_perm=NUM_PERM, scheme=SCHEME).permutations  # computed once, shared by every MinHash


def shingles(text: str, size: int = 3) -> set[bytes]:
    """Character shingles of the case-folded, space-normalised text (works for Chinese and English)."""
    normal = _SPACES.sub(" ", text.casefold()).strip()
    if len(normal) <= size:
        return {normal.encode()}
    return {normal[i : i + size].encode() for i in range(len(normal) - size + 1)}


def signature(text: str) -> MinHash:
    """The MinHash of `text`'s shingles."""
    minhash = MinHash(num_perm=NUM_PERM, scheme=SCHEME, permutations=_PERMUTATIONS)
    minhash.update_batch(list(shingles(text)))
    return minhash


def signature_bytes(minhash: MinHash) -> bytes:
    """A MinHash's hash values as bytes, for storage."""
    return np.asarray(minhash.hashvalues, dtype=np.uint64).tobytes()


def signature_from_bytes(data: bytes) -> MinHash:
    """Rebuild a MinHash from `signature_bytes`."""
    return MinHash(
        num_perm=NUM_PERM,
        hashvalues=np.frombuffer(data, dtype=np.uint64).copy(),
        scheme=SCHEME,
        permutations=_PERMUTATIONS,
    )


class NearDuplicateIndex:
    """Maps each indexed sample to its cluster id (the caller's choice: a near-duplicate's cluster, or its own id)."""

    def __init__(self, threshold: float) -> None:
        self._lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        self._cluster_of: dict[str, str] = {}
        self._cluster_sizes: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._cluster_of)

    @property
    def cluster_count(self) -> int:
        """How many distinct clusters the indexed samples form."""
        return len(self._cluster_sizes)

    def clusters_near(self, minhash: MinHash) -> set[str]:
        """The cluster ids of the indexed near-duplicates of `minhash` (empty: it has none)."""
        return {self._cluster_of[m] for m in self._lsh.query(minhash)}

    def add(self, sample_id: str, cluster_id: str, minhash: MinHash) -> None:
        """Index a sample under its cluster."""
        self._lsh.insert(sample_id, minhash)
        self._cluster_of[sample_id] = cluster_id
        self._cluster_sizes[cluster_id] += 1

    def remove(self, sample_id: str) -> None:
        """Take a sample out of the index."""
        self._lsh.remove(sample_id)
        cluster_id = self._cluster_of.pop(sample_id)
        self._cluster_sizes[cluster_id] -= 1
        if not self._cluster_sizes[cluster_id]:
            del self._cluster_sizes[cluster_id]
