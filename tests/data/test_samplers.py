from collections import Counter
from itertools import islice

import pytest
import torch

from detlib.data.samplers import InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler


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
