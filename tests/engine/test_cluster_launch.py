"""Training under the cluster launchers (torchrun, SLURM), elastic restarts and preemption, on the CPU
with gloo: every way of running 2 processes ends with the weights of one uninterrupted
`--num-gpus 2` run."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detlib.checkpoint import load_checkpoint_file
from detlib.engine import PREEMPTED_EXIT_CODE

SCRIPT = Path(__file__).with_name("tiny_train_net.py")
REPO = Path(__file__).resolve().parents[2]
MAX_ITER = 14


def _train_args(output_dir, *options, step_sleep=0.0):
    return [
        str(SCRIPT),
        "--random-augment",
        "--step-sleep",
        str(step_sleep),
        "--dist-timeout",
        "60",
        *options,
        "MODEL.DEVICE",
        "cpu",
        "SEED",
        "5",
        "OUTPUT_DIR",
        str(output_dir),
        "SOLVER.MAX_ITER",
        str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD",
        "3",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "SOLVER.BASE_LR",
        "0.1",
        "SOLVER.WARMUP_ITERS",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
    ]


def _environment(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def _start(command, **env):
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=_environment(**env)
    )


def _finish(process, expected_code=0):
    output, _ = process.communicate(timeout=300)
    assert process.returncode == expected_code, output[-4000:]
    return output


def _torchrun(*options):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *options]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _final_parameters(output_dir):
    rank0 = torch.load(Path(output_dir) / "parameters_rank0.pt")
    assert torch.equal(rank0, torch.load(Path(output_dir) / "parameters_rank1.pt"))
    return rank0


def _wait_for(path, process, seconds=120):
    deadline = time.time() + seconds
    while not Path(path).exists():
        assert process.poll() is None, "the run ended early:\n" + process.communicate()[0][-3000:]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted `--num-gpus 2` run, started once for the module."""
    output_dir = tmp_path_factory.mktemp("reference")
    process = _start([sys.executable, *_train_args(output_dir, "--num-gpus", "2")])
    cache = {}

    def parameters():
        if not cache:
            assert "World size: 2" in _finish(process)
            cache["parameters"] = _final_parameters(output_dir)
        return cache["parameters"]

    yield parameters
    if process.poll() is None:
        process.kill()


def test_torchrun_and_emulated_slurm_train_exactly_like_spawned_processes(tmp_path, reference):
    torchrun = _start(_torchrun(*_train_args(tmp_path / "torchrun")))
    port, slurm_tasks = str(_free_port()), []
    for rank in range(2):
        slurm_env = dict(
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_NTASKS="2",
            SLURM_NODEID="0",
            SLURM_TASKS_PER_NODE="2",
            SLURM_JOB_NODELIST="localhost",
            SLURM_JOB_ID="4711",
            MASTER_PORT=port,
        )
        slurm_tasks.append(_start([sys.executable, *_train_args(tmp_path / "slurm")], **slurm_env))
    assert "World size: 2" in _finish(torchrun)
    assert "World size: 2" in _finish(slurm_tasks[0])
    _finish(slurm_tasks[1])
    expected = reference()
    torch.testing.assert_close(_final_parameters(tmp_path / "torchrun"), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(_final_parameters(tmp_path / "slurm"), expected, rtol=0, atol=1e-6)


def test_worker_killed_under_torchrun_restarts_from_last_checkpoint(tmp_path, reference):
    output_dir = tmp_path / "elastic"
    run = _start(
        _torchrun(
            "--max-restarts", "1", "--monitor-interval", "0.2", *_train_args(output_dir, "--resume", step_sleep=0.15)
        )
    )
    _wait_for(output_dir / "last_checkpoint", run)
    _wait_for(output_dir / "pid_rank1", run)
    os.kill(int((output_dir / "pid_rank1").read_text()), signal.SIGKILL)
    output = _finish(run)
    assert "Resuming at iteration" in output  # the restarted workers continued from a checkpoint
    torch.testing.assert_close(_final_parameters(output_dir), reference(), rtol=0, atol=1e-6)


def test_sigterm_saves_a_complete_checkpoint_exits_with_its_code_and_resume_continues(tmp_path, reference):
    output_dir = tmp_path / "preempted"
    run = _start([sys.executable, *_train_args(output_dir, "--num-gpus", "2", step_sleep=0.15)])
    _wait_for(output_dir / "last_checkpoint", run)
    run.send_signal(signal.SIGTERM)  # to the launching process, as SLURM does; it forwards it
    output = _finish(run, expected_code=PREEMPTED_EXIT_CODE)
    assert "Preempted (SIGTERM)" in output
    assert not (output_dir / "model_final.pth").exists()
    assert not list(output_dir.glob(".*.tmp"))
    last = output_dir / (output_dir / "last_checkpoint").read_text().strip()
    checkpoint = load_checkpoint_file(str(last))
    stopped_at = checkpoint["iteration"]
    assert last.name == f"model_{stopped_at:07d}.pth" and stopped_at < MAX_ITER - 1
    assert len(checkpoint["data_positions"]) == 2 and len(checkpoint["rng_states"]) == 2

    resumed = _finish(_start([sys.executable, *_train_args(output_dir, "--num-gpus", "2", "--resume")]))
    assert f"Resuming at iteration {stopped_at + 1}" in resumed
    torch.testing.assert_close(_final_parameters(output_dir), reference(), rtol=0, atol=1e-6)
