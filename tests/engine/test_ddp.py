"""`--num-gpus 2` on a CPU machine: two gloo processes train in lockstep and match one process
with the same total batch."""

import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("tiny_train_net.py")
REPO = Path(__file__).resolve().parents[2]


def _start(output_dir, num_gpus):
    command = [
        sys.executable,
        str(SCRIPT),
        "--num-gpus",
        str(num_gpus),
        "MODEL.DEVICE",
        "cpu",
        "SEED",
        "5",
        "OUTPUT_DIR",
        str(output_dir),
        "SOLVER.MAX_ITER",
        "12",
        "SOLVER.CHECKPOINT_PERIOD",
        "5",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "SOLVER.BASE_LR",
        "0.1",
        "SOLVER.WARMUP_ITERS",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _finish(process):
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


def test_two_gloo_processes_equal_one_process_with_same_total_batch(tmp_path):
    ddp_run, single_run = _start(tmp_path / "ddp", num_gpus=2), _start(tmp_path / "single", num_gpus=1)
    assert "World size: 2" in _finish(ddp_run)
    _finish(single_run)

    rank0 = torch.load(tmp_path / "ddp" / "parameters_rank0.pt")
    rank1 = torch.load(tmp_path / "ddp" / "parameters_rank1.pt")
    assert torch.equal(rank0, rank1)  # also checked after every step inside the run
    single = torch.load(tmp_path / "single" / "parameters_rank0.pt")
    torch.testing.assert_close(rank0, single, rtol=1e-5, atol=1e-6)
    # Training moved the weights: the agreement is not that of two untouched initializations.
    final = torch.load(tmp_path / "single" / "model_final.pth", weights_only=False)["model"]
    early = torch.load(tmp_path / "single" / "model_0000004.pth", weights_only=False)["model"]
    assert any(not torch.equal(final[k], early[k]) for k in final)

    # Each rank's random state is checkpointed (ranks are seeded SEED + rank, so they differ).
    rng_states = torch.load(tmp_path / "ddp" / "model_final.pth", weights_only=False)["rng_states"]
    assert len(rng_states) == 2 and not torch.equal(rng_states[0]["torch"], rng_states[1]["torch"])
