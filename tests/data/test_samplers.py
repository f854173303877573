import json
import math
from collections import Counter
from itertools import islice

import pytest
import torch

from detlib.data.samplers import (
    ConsumedStream,
    DatasetMixSampler,
    InferenceSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)


def _take(sampler, n):
    return list(islice(iter(sampler), n))


def test_training_sampler_is_deterministic_for_a_seed():
    a = _take(TrainingSampler(10, seed=3, rank=0, world_size=1), 30)
    b = _take(TrainingSampler(10, seed=3, rank=0, world_size=1), 30)
    c = _take(TrainingSampler(10, seed=4, rank=0, world_size=1), 30)
    assert a == b and a != c
    for epoch in range(3):  # each epoch is a permutation
        assert sorted(a[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    assert _take(TrainingSampler(4, shuffle=False, seed=0, rank=0, world_size=1), 9) == [0, 1, 2, 3, 0, 1, 2, 3, 0]


def test_training_sampler_shards_across_two_ranks():
    full = _take(TrainingSampler(10, seed=7, rank=0, world_size=1), 40)
    r0 = _take(TrainingSampler(10, seed=7, rank=0, world_size=2), 20)
    r1 = _take(TrainingSampler(10, seed=7, rank=1, world_size=2), 20)
    assert r0 == full[0::2] and r1 == full[1::2]
    # within one epoch the two ranks see disjoint halves that together cover the dataset
    assert sorted(r0[:5] + r1[:5]) == list(range(10))


def test_inference_sampler_covers_every_index_exactly_once():
    for size in range(0, 12):
        for world in range(1, 5):
            shards = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
            assert [i for shard in shards for i in shard] == list(range(size))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
            lengths = [len(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
            assert lengths == list(map(len, shards))


def test_sampler_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank 2"):
        InferenceSampler(5, rank=2, world_size=2)


def test_repeat_factors_from_category_frequency():
    # category 0 in all 4 images, category 1 in one image; threshold 0.5:
    # f_0 = 1 -> r = max(1, sqrt(0.5)) = 1; f_1 = 0.25 -> r = sqrt(2)
    dicts = [{"annotations": [{"category_id": 0}]} for _ in range(3)]
    dicts.append({"annotations": [{"category_id": 0}, {"category_id": 1}]})
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5)
    torch.testing.assert_close(factors, torch.tensor([1.0, 1.0, 1.0, 2**0.5]))
    linear = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5, sqrt=False)
    torch.testing.assert_close(linear, torch.tensor([1.0, 1.0, 1.0, 2.0]))


def test_repeat_factor_sampler_repeats_in_expectation_and_is_deterministic():
    factors = torch.tensor([1.0, 2.5, 1.0])
    stream = _take(RepeatFactorTrainingSampler(factors, seed=0, rank=0, world_size=1), 9000)
    assert stream == _take(RepeatFactorTrainingSampler(factors, seed=0, rank=0, world_size=1), 9000)
    counts = Counter(stream)
    # per epoch: 1 + 2.5 + 1 = 4.5 items on average, so image 1 is 2.5 / 4.5 of the stream
    assert counts[1] / len(stream) == pytest.approx(2.5 / 4.5, abs=0.02)
    assert counts[0] / len(stream) == pytest.approx(1 / 4.5, abs=0.02)


def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    import json
    import os

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        training = _take(TrainingSampler(9), 12)  # seed drawn on each rank, rank 0's is used by both
        inference = list(InferenceSampler(9))
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
            json.dump({"training": training, "inference": inference}, f)
        # Tearing gloo down while the other rank is still inside a collective aborts the process
        # ("terminate called without an active exception"), as CI saw once under load.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_samplers_shard_in_a_real_two_process_group(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2))
    assert r0["inference"] + r1["inference"] == list(range(9))
    # a shared seed: the ranks' first 9 indices interleave into one permutation of the dataset
    first_epoch = [i for pair in zip(r0["training"], r1["training"]) for i in pair][:9]
    assert sorted(first_epoch) == list(range(9))


def _consumed_state(sampler, ordinals):
    consumed = ConsumedStream(sampler)
    consumed.consume(ordinals)
    return consumed.state_dict()


def _samplers(rank=0, world_size=1):
    return [
        TrainingSampler(7, seed=2, rank=rank, world_size=world_size),
        RepeatFactorTrainingSampler(torch.tensor([1.0, 2.5, 1.0, 1.7]), seed=2, rank=rank, world_size=world_size),
        DatasetMixSampler([3, 5], [1.0, 3.0], seed=2, rank=rank, world_size=world_size),
    ]


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("which", range(3))
def test_stream_resumes_at_any_point_like_the_uninterrupted_stream(which, world_size):
    for rank in range(world_size):
        stream = _take(_samplers(rank, world_size)[which], 60)
        for consumed in (0, 1, 6, 7, 23, 41):
            resumed = _samplers(rank, world_size)[which]
            resumed.seed = 999  # the saved seed wins, as for a run whose seed was drawn at random
            resumed.resume(_consumed_state(_samplers(rank, world_size)[which], range(consumed)))
            assert _take(resumed, 60 - consumed) == stream[consumed:]


def test_resuming_draws_only_the_epoch_it_resumes_in(monkeypatch):
    drawn = []
    real = TrainingSampler.epoch_indices
    monkeypatch.setattr(TrainingSampler, "epoch_indices", lambda self, e: drawn.append(e) or real(self, e))
    state = {"seed": 4, "rank": 0, "world_size": 1, "ordinal": 10**9, "epoch": 10**8, "offset": 3, "consumed_ahead": []}
    sampler = TrainingSampler(10, seed=4, rank=0, world_size=1)
    sampler.resume(state)
    first = _take(sampler, 8)
    assert drawn == [10**8, 10**8 + 1]
    assert first[:7] == TrainingSampler(10, seed=4, rank=0, world_size=1).epoch_indices(10**8).tolist()[3:]


def test_items_consumed_out_of_order_are_not_drawn_again():
    stream = _take(TrainingSampler(9, seed=1, rank=0, world_size=1), 20)
    state = _consumed_state(TrainingSampler(9, seed=1, rank=0, world_size=1), [0, 1, 3, 4, 7])
    assert (state["ordinal"], state["consumed_ahead"]) == (2, [3, 4, 7])
    assert json.loads(json.dumps(state)) == state  # plain ints and lists: safe for weights_only loading
    resumed = TrainingSampler(9, seed=0, rank=0, world_size=1)
    resumed.resume(state)
    assert _take(resumed, 5) == [stream[2], stream[5], stream[6], stream[8], stream[9]]
    # A stream resumed from that state records the same position before consuming anything.
    assert ConsumedStream(resumed).state_dict() == state


def test_resuming_with_another_world_size_restarts_the_epoch():
    state = _consumed_state(TrainingSampler(10, seed=3, rank=1, world_size=2), range(12))  # epoch 2
    resumed = TrainingSampler(10, seed=0, rank=0, world_size=3)
    resumed.resume(state)
    epoch = TrainingSampler(10, seed=3, rank=0, world_size=1).epoch_indices(2).tolist()
    assert _take(resumed, 4) == epoch[0::3]


def test_dataset_mix_holds_its_ratios_over_10k_draws():
    sizes, ratios = [5, 20, 7], [1.0, 2.0, 1.0]
    stream = _take(DatasetMixSampler(sizes, ratios, seed=0, rank=0, world_size=1), 10_000)
    dataset_of = [0] * 5 + [1] * 20 + [2] * 7
    counts = Counter(dataset_of[i] for i in stream)
    n = len(stream)
    for dataset, ratio in enumerate(ratios):
        p = ratio / sum(ratios)
        # four standard deviations of a binomial proportion: fails by chance once in ~16000 seeds
        assert abs(counts[dataset] / n - p) < 4 * math.sqrt(p * (1 - p) / n), (dataset, counts)
    # Within a dataset every item comes up equally often: its permutation is cycled.
    per_item = Counter(stream)
    for first, size in ((0, 5), (5, 20), (25, 7)):
        seen = [per_item[i] for i in range(first, first + size)]
        assert max(seen) - min(seen) <= math.ceil(max(seen) * 0.25), seen


def test_dataset_mix_is_deterministic_and_split_among_ranks():
    full = _take(DatasetMixSampler([4, 6], [1, 1], seed=5, rank=0, world_size=1), 40)
    assert full == _take(DatasetMixSampler([4, 6], [1, 1], seed=5, rank=0, world_size=1), 40)
    assert full != _take(DatasetMixSampler([4, 6], [1, 1], seed=6, rank=0, world_size=1), 40)
    ranks = [_take(DatasetMixSampler([4, 6], [1, 1], seed=5, rank=r, world_size=2), 20) for r in range(2)]
    assert ranks[0] == full[0::2] and ranks[1] == full[1::2]
    # A zero weight leaves a dataset out.
    assert set(_take(DatasetMixSampler([4, 6], [0, 1], seed=5, rank=0, world_size=1), 50)) == set(range(4, 10))


def test_dataset_mix_rejects_bad_ratios():
    with pytest.raises(ValueError, match="2 sampling ratios given for 3 datasets"):
        DatasetMixSampler([1, 2, 3], [1, 1], seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="non-negative and not all zero"):
        DatasetMixSampler([1, 2], [0, 0], seed=0, rank=0, world_size=1)
