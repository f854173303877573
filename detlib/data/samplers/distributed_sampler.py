"""Index samplers for training (infinite, shuffled, sharded) and inference (each index once)."""

import logging
import math
from collections import defaultdict
from typing import Iterator, List, Optional

import torch
from torch.utils.data.sampler import Sampler

from .stream import EpochStreamSampler, _rank_and_world

__all__ = ["TrainingSampler", "RepeatFactorTrainingSampler", "InferenceSampler"]

logger = logging.getLogger(__name__)


class TrainingSampler(EpochStreamSampler):
    """
    An endless stream of dataset indices whose epochs are permutations of range(size) (or
    range(size) itself without shuffling), split among ranks and resumable anywhere
    (see `EpochStreamSampler`).
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: Optional[int] = None,
        *,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        """
        Args:
            size: number of items in the dataset.
            seed: must be the same on all ranks; by default one random seed shared by all ranks.
            rank, world_size: default to the current process group's.
        """
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"TrainingSampler needs a positive dataset size, got {size!r}.")
        self._size = size
        self._shuffle = shuffle
        super().__init__(seed, rank, world_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        if not self._shuffle:
            return torch.arange(self._size)
        return torch.randperm(self._size, generator=self.epoch_generator(epoch))


class RepeatFactorTrainingSampler(EpochStreamSampler):
    """
    Like TrainingSampler, but image i appears r_i times per epoch in expectation, r_i >= 1 (LVIS's
    repeat-factor sampling). Each epoch repeats image i floor(r_i) times plus once more with
    probability r_i - floor(r_i).
    """

    def __init__(
        self,
        repeat_factors: torch.Tensor,
        *,
        shuffle: bool = True,
        seed: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        """
        Args:
            repeat_factors: float tensor (N,), one factor per dataset item.
        """
        self._int_part = torch.trunc(repeat_factors)
        self._frac_part = repeat_factors - self._int_part
        self._shuffle = shuffle
        super().__init__(seed, rank, world_size)

    @staticmethod
    def repeat_factors_from_category_frequency(
        dataset_dicts: List[dict], repeat_thresh: float, sqrt: bool = True
    ) -> torch.Tensor:
        """
        r_i = max over the categories c in image i of max(1, g(t / f_c)), where f_c is the fraction
        of images that contain c, t = `repeat_thresh`, and g is sqrt (or the identity).
        """
        images_with = defaultdict(int)
        for record in dataset_dicts:
            for cat_id in {ann["category_id"] for ann in record["annotations"]}:
                images_with[cat_id] += 1
        num_images = len(dataset_dicts)
        category_rep = {}
        for cat_id, count in images_with.items():
            ratio = repeat_thresh / (count / num_images)
            category_rep[cat_id] = max(1.0, math.sqrt(ratio) if sqrt else ratio)
        factors = [
            max((category_rep[ann["category_id"]] for ann in record["annotations"]), default=1.0)
            for record in dataset_dicts
        ]
        return torch.tensor(factors, dtype=torch.float32)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        generator = self.epoch_generator(epoch)
        # Stochastic rounding keeps the expected number of repeats equal to the factor.
        rounded_up = torch.rand(len(self._frac_part), generator=generator) < self._frac_part
        repeats = (self._int_part + rounded_up).long()
        indices = torch.repeat_interleave(torch.arange(len(repeats)), repeats)
        if self._shuffle:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        return indices


class InferenceSampler(Sampler):
    """
    Splits range(size) into world_size contiguous shards (sizes differ by at most one) and yields
    this rank's shard in order, so the ranks together visit every index exactly once.
    """

    def __init__(self, size: int, *, rank: Optional[int] = None, world_size: Optional[int] = None):
        if size < 0:
            raise ValueError(f"InferenceSampler needs a non-negative size, got {size}.")
        self._size = size
        rank, world_size = _rank_and_world(rank, world_size)
        self._local_indices = self._get_local_indices(size, world_size, rank)

    @staticmethod
    def _get_local_indices(total_size: int, world_size: int, rank: int) -> range:
        shard, left = divmod(total_size, world_size)
        begin = rank * shard + min(rank, left)
        end = begin + shard + (1 if rank < left else 0)
        return range(begin, end)

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)
