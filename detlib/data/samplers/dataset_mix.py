"""Training on several datasets at once, at a chosen mix."""

from typing import Optional, Sequence

import torch

from .stream import EpochStreamSampler

__all__ = ["DatasetMixSampler"]


class DatasetMixSampler(EpochStreamSampler):
    """
    Indices into the concatenation of several datasets (dataset 0's items first), drawn at chosen
    ratios. Every item of an epoch picks dataset d with probability ratios[d] / sum(ratios) and
    takes d's next item from a permutation of d, cycled when d is picked more often than it has
    items. An epoch has sum(dataset_sizes) items; it is split among ranks and resumable anywhere
    like every `EpochStreamSampler`.
    """

    def __init__(
        self,
        dataset_sizes: Sequence[int],
        ratios: Sequence[float],
        *,
        shuffle: bool = True,
        seed: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        """
        Args:
            dataset_sizes: number of items of each dataset, in concatenation order.
            ratios: one non-negative weight per dataset, not all zero.
        """
        if len(ratios) != len(dataset_sizes):
            raise ValueError(f"{len(ratios)} sampling ratios given for {len(dataset_sizes)} datasets: {list(ratios)}")
        if any(size <= 0 for size in dataset_sizes):
            raise ValueError(f"Every dataset needs at least one item, got sizes {list(dataset_sizes)}")
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"Sampling ratios must be non-negative and not all zero, got {list(ratios)}")
        self._sizes = [int(s) for s in dataset_sizes]
        self._firsts = torch.cumsum(torch.tensor([0] + self._sizes[:-1]), 0).tolist()
        self._weights = torch.tensor([float(r) for r in ratios], dtype=torch.float64)
        self._shuffle = shuffle
        super().__init__(seed, rank, world_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        generator = self.epoch_generator(epoch)
        total = sum(self._sizes)
        picks = torch.multinomial(self._weights, total, replacement=True, generator=generator)
        indices = torch.empty(total, dtype=torch.int64)
        for dataset, (size, first) in enumerate(zip(self._sizes, self._firsts)):
            slots = torch.nonzero(picks == dataset).flatten()
            order = torch.randperm(size, generator=generator) if self._shuffle else torch.arange(size)
            laps = -(-len(slots) // size)
            indices[slots] = first + order.repeat(laps)[: len(slots)]
        return indices
