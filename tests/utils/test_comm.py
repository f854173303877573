import json

import torch

from detlib.engine import launch
from detlib.utils import comm


def test_single_process_defaults():
    assert (comm.get_world_size(), comm.get_rank(), comm.get_local_rank(), comm.get_local_size()) == (1, 0, 0, 1)
    assert comm.is_main_process()
    comm.synchronize()
    assert comm.all_gather({"a": 1}) == [{"a": 1}]
    assert comm.gather("x") == ["x"]
    losses = {"loss": torch.tensor(2.0)}
    assert comm.reduce_dict(losses) is losses
    assert 0 <= comm.shared_random_seed() < 2**31


def _collectives(output_file):
    rank = comm.get_rank()
    result = {
        "rank": rank,
        "world_size": comm.get_world_size(),
        "local": [comm.get_local_rank(), comm.get_local_size()],
        "all_gather": comm.all_gather({"rank": rank, "payload": [rank] * (rank + 1)}),
        "gather": comm.gather(rank * 10),
        "reduce": {
            k: v.item()
            for k, v in comm.reduce_dict({"b": torch.tensor(float(rank + 1)), "a": torch.tensor(4.0 * rank)}).items()
        },
        "seed": comm.shared_random_seed(),
    }
    with open(f"{output_file}.{rank}", "w") as f:
        json.dump(result, f)


def test_collectives_in_two_gloo_processes(tmp_path):
    output = str(tmp_path / "result")
    launch(_collectives, num_gpus_per_machine=2, args=(output,))
    r0, r1 = (json.load(open(f"{output}.{rank}")) for rank in (0, 1))
    assert (r0["world_size"], r1["world_size"]) == (2, 2)
    assert (r0["local"], r1["local"]) == ([0, 2], [1, 2])
    expected = [{"rank": 0, "payload": [0]}, {"rank": 1, "payload": [1, 1]}]
    assert r0["all_gather"] == r1["all_gather"] == expected
    assert r0["gather"] == [0, 10] and r1["gather"] == []
    assert r0["reduce"] == {"a": 2.0, "b": 1.5}  # averaged on rank 0
    assert r0["seed"] == r1["seed"]
