"""Random sampling of positive and negative training examples at a fixed ratio."""

from typing import Tuple

import torch

__all__ = ["subsample_labels"]


def subsample_labels(
    labels: torch.Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Pick at most `num_samples` elements of `labels`, aiming at `positive_fraction` positives and
    filling the rest with negatives; when positives are too few, more negatives are taken.

    Args:
        labels: (N,) label of each element: -1 ignore, `bg_label` negative, anything else positive.
        num_samples: how many to pick at most.
        positive_fraction: the largest share of positives among the picked, in [0, 1].
        bg_label: the label of negatives.
    Returns:
        the indices of the picked positives and of the picked negatives, in random order, int64.
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    pos_idx = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
    neg_idx = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
    return pos_idx, neg_idx
