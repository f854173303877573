"""Endless training streams that can start anywhere in constant time, and the record of how far a
trainer has consumed one (what a checkpoint saves so that `--resume` skips nothing by replaying)."""

import logging
from typing import Collection, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch.utils.data.sampler import Sampler

from detlib.utils import comm

__all__ = ["StreamCursor", "EpochStreamSampler", "ConsumedStream"]

logger = logging.getLogger(__name__)


def _rank_and_world(rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    rank = comm.get_rank() if rank is None else rank
    world_size = comm.get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size}).")
    return rank, world_size


class StreamCursor(NamedTuple):
    """A place in one rank's stream: `ordinal` items of this rank come before it; it is item
    `offset` of epoch `epoch`'s index list (the list all ranks share)."""

    ordinal: int
    epoch: int
    offset: int


class EpochStreamSampler(Sampler):
    """
    An endless stream of dataset indices made of epochs. Epoch e's index list (shared by all ranks)
    depends only on (seed, e): each epoch draws from its own generator, so the stream can start at
    any epoch without drawing the ones before it. The epochs are concatenated and rank r takes
    every world_size-th item from item r, so the ranks together see each item of an epoch once.

    Subclasses define `epoch_indices`. Iterating yields indices from `start` on; `positions()`
    also yields each item's cursor.
    """

    def __init__(self, seed: Optional[int] = None, rank: Optional[int] = None, world_size: Optional[int] = None):
        """
        Args:
            seed: must be the same on all ranks; by default one random seed shared by all ranks.
            rank, world_size: default to the current process group's.
        """
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.start = StreamCursor(0, 0, self.rank)
        self.skip: Collection[int] = frozenset()
        self._epoch_cache: Tuple[int, List[int]] = (-1, [])

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """All ranks' indices of epoch `epoch`, a non-empty int64 tensor; draws only from
        `epoch_generator(epoch)`."""
        raise NotImplementedError

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """A generator seeded from (seed, epoch) alone."""
        words = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed((int(words[0]) << 31) ^ int(words[1]))

    def item_seed(self, ordinal: int) -> int:
        """A seed for whatever randomness item `ordinal` of this rank's stream brings along."""
        return int(np.random.SeedSequence([self.seed, self.rank, ordinal]).generate_state(1)[0]) % 2**31

    def _epoch(self, epoch: int) -> List[int]:
        if self._epoch_cache[0] != epoch:
            indices = self.epoch_indices(epoch)
            if len(indices) == 0:
                raise ValueError(f"{type(self).__name__} drew an empty epoch {epoch}")
            self._epoch_cache = (epoch, indices.tolist())
        return self._epoch_cache[1]

    def advance(self, cursor: StreamCursor, steps: int = 1) -> StreamCursor:
        """The cursor `steps` items of this rank later (a few epoch lists are drawn at most)."""
        epoch, offset = cursor.epoch, cursor.offset + steps * self.world_size
        while offset >= len(self._epoch(epoch)):
            offset -= len(self._epoch(epoch))
            epoch += 1
        return StreamCursor(cursor.ordinal + steps, epoch, offset)

    def positions(self) -> Iterator[Tuple[StreamCursor, int]]:
        """(cursor, dataset index) of every item from `start` on, leaving out the ordinals in `skip`."""
        cursor = self.advance(self.start, 0)
        while True:
            if cursor.ordinal not in self.skip:
                yield cursor, self._epoch(cursor.epoch)[cursor.offset]
            cursor = self.advance(cursor)

    def __iter__(self) -> Iterator[int]:
        for _, index in self.positions():
            yield index

    def resume(self, state: Dict) -> None:
        """Start where `ConsumedStream.state_dict()` says a trainer stopped; the state may come from
        a run with another number of ranks, which then restarts at its slowest rank's epoch."""
        self.seed = int(state["seed"])
        self._epoch_cache = (-1, [])
        if int(state["world_size"]) == self.world_size:
            self.start = StreamCursor(int(state["ordinal"]), int(state["epoch"]), int(state["offset"]))
            self.skip = frozenset(int(i) for i in state["consumed_ahead"])
        else:
            logger.warning(
                "The data position was saved by %d ranks and %d run now: rank %d restarts at the beginning of epoch %d",
                state["world_size"],
                self.world_size,
                self.rank,
                state["epoch"],
            )
            self.start = StreamCursor(0, int(state["epoch"]), self.rank)
            self.skip = frozenset()


class ConsumedStream:
    """
    How far a trainer has consumed one rank's stream: the first item not consumed yet, plus the
    items beyond it already consumed (aspect-ratio grouping holds some items back while later ones
    go into batches). Its state is a dict of ints and a list of ints.
    """

    def __init__(self, sampler: EpochStreamSampler):
        self._sampler = sampler
        self.next = sampler.advance(sampler.start, 0)
        self._ahead = set(sampler.skip)
        self.consume(())

    def consume(self, ordinals: Collection[int]) -> None:
        self._ahead.update(ordinals)
        while self.next.ordinal in self._ahead:
            self._ahead.remove(self.next.ordinal)
            self.next = self._sampler.advance(self.next)

    def state_dict(self) -> Dict:
        return {
            "seed": self._sampler.seed,
            "rank": self._sampler.rank,
            "world_size": self._sampler.world_size,
            "ordinal": self.next.ordinal,
            "epoch": self.next.epoch,
            "offset": self.next.offset,
            "consumed_ahead": sorted(self._ahead),
        }
