"""Losses: reward-weighted SFT, DPO (Rafailov et al., 2023) and KTO (Ethayarajh et al., 2024), on per-sequence
log-probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedloop.client.train.data import IGNORE_INDEX


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log-probabilities of the labelled tokens per sequence, and how many tokens were labelled.

    `logits[:, t]` predicts `labels[:, t + 1]`; IGNORE_INDEX positions do not count.
    """
    following = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # shift the labels, not the (large) logits
    token_nll = F.cross_entropy(
        logits.float().flatten(0, 1), following.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(following.shape)
    return -token_nll.sum(-1), (following != IGNORE_INDEX).sum(-1)


def weighted_sft_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean per-token negative log-likelihood of each sequence, averaged with `weights`."""
    logprobs, counts = sequence_logprobs(logits, labels)
    per_sequence = -logprobs / counts.clamp(min=1)
    return (per_sequence * weights).sum() / weights.sum().clamp(min=1e-8)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Mean of -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) over the pairs."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()


def kto_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    policy_mismatched: torch.Tensor,
    reference_mismatched: torch.Tensor,
    desirable: torch.Tensor,
    weights: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO, Eq. (7) of Ethayarajh et al. (2024), averaged with the sample `weights`.

    r = log pi(y|x) - log ref(y|x) per item; the reference point z0 is the batch's
    mean log-ratio on mismatched (prompt, other item's reply) pairs, clamped at 0
    and not differentiated (as in the paper and TRL). A desirable item costs
    desirable_weight * (1 - sigmoid(beta (r - z0))), an undesirable one
    undesirable_weight * (1 - sigmoid(beta (z0 - r))).
    """
    z0 = (policy_mismatched - reference_mismatched).mean().clamp(min=0).detach()
    ratio = policy - reference
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio))),
    )
    return (losses * weights).sum() / weights.sum().clamp(min=1e-8)
