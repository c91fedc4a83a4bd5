"""The rows being decoded together, with their key/value cache: rows join between steps and leave when they end.

Rows are left-padded to one cache length: a joining group (prefilled on its
own) and the running rows are padded on the left to the longer of the two and
stacked; a padded position has attention mask 0, so it changes no row's
attention. When rows leave, the columns that no remaining row uses are
dropped, so the cache does not grow while the batch never empties. Each row
keeps its own positions (its count of real tokens), so a row's tokens do not
depend on who shares its batch. Only plain full-attention caches can do this
(`joinable`); others (sliding windows) decode whole batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

from fedloop.client.serve.batch_rows import Row

RECLAIM_COLUMNS = 16  # unused leading cache columns worth copying the cache to drop


def joinable(cache: DynamicCache) -> bool:
    """Whether rows can join and leave this kind of cache mid-batch: plain full-attention layers only."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pairs = []
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None
        pairs.append((layer.keys, layer.values))
    return pairs


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]
    return F.pad(tensor, pad)


@dataclass
class RunningBatch:
    """Rows in decoding: their cache, attention mask (left-padded) and the token each produced last."""

    rows: list[Row]
    cache: DynamicCache
    mask: torch.Tensor  # [rows, cache length]
    last: torch.Tensor  # [rows]
    config: PretrainedConfig

    def join(self, other: RunningBatch) -> None:
        """Add `other`'s rows (prefilled on their own) to this batch."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        merged = [
            (
                torch.cat([_pad_left(k1, length, 2), _pad_left(k2, length, 2)]),
                torch.cat([_pad_left(v1, length, 2), _pad_left(v2, length, 2)]),
            )
            for (k1, v1), (k2, v2) in zip(_layers(self.cache), _layers(other.cache), strict=True)
        ]
        self.cache = DynamicCache(ddp_cache_data=merged, config=self.config)
        self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(other.mask, length, 1)])
        self.last = torch.cat([self.last, other.last])
        self.rows += other.rows

    def drop_finished(self) -> None:
        """Remove the rows that ended, and the cache columns no remaining row uses."""
        keep = [index for index, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        chosen = torch.tensor(keep, device=self.mask.device)
        self.mask, self.last = self.mask[chosen], self.last[chosen]
        start = int((self.mask.sum(dim=0) > 0).nonzero().min())  # leading columns every remaining row pads
        if start < RECLAIM_COLUMNS or not joinable(self.cache):  # not worth a copy of the cache, or not possible
            self.cache.batch_select_indices(chosen)
            return
        self.mask = self.mask[:, start:]
        kept = [(k[chosen][:, :, start:], v[chosen][:, :, start:]) for k, v in _layers(self.cache)]
        self.cache = DynamicCache(ddp_cache_data=kept, config=self.config)
