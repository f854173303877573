"""Kill a training run with SIGKILL at a random moment, resume it, and get the same weights as a
run that was never interrupted; no checkpoint on disk is ever partial."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from detlib.checkpoint import DetectionCheckpointer, load_checkpoint_file

SCRIPT = Path(__file__).with_name("tiny_train_net.py")
REPO = Path(__file__).resolve().parents[2]
MAX_ITER = 60
PERIOD = 7  # not a divisor of MAX_ITER: the run ends between two periodic checkpoints


def _command(output_dir, *extra):
    return [
        sys.executable,
        str(SCRIPT),
        "--random-augment",
        "--step-sleep",
        "0.02",
        *extra,
        "MODEL.DEVICE",
        "cpu",
        "SEED",
        "11",
        "OUTPUT_DIR",
        str(output_dir),
        "SOLVER.MAX_ITER",
        str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD",
        str(PERIOD),
        "SOLVER.IMS_PER_BATCH",
        "3",
        "SOLVER.BASE_LR",
        "0.05",
        "SOLVER.WARMUP_ITERS",
        "5",
        "SOLVER.STEPS",
        "(40,)",
        "SOLVER.WEIGHT_DECAY",
        "0.001",
        "DATALOADER.NUM_WORKERS",
        "0",
    ]


def _run(output_dir, *extra):
    result = subprocess.run(_command(output_dir, *extra), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _final_weights(output_dir):
    return load_checkpoint_file(str(Path(output_dir) / "model_final.pth"))["model"]


def _assert_all_checkpoints_complete(output_dir):
    files = sorted(Path(output_dir).glob("*.pth"))
    for f in files:
        data = load_checkpoint_file(str(f))  # a truncated file fails to unpickle
        assert {"model", "optimizer", "scheduler", "iteration", "rng_states"} <= set(data), f
    return files


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    reference_run = subprocess.Popen(
        _command(reference), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_command(interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.time() + 120
        while not (interrupted / "last_checkpoint").exists():
            assert process.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.01)
        # Anywhere in the next ~8 checkpoint periods, including in the middle of a save.
        time.sleep(random.uniform(0.0, 8 * PERIOD * 0.02))
        assert process.poll() is None, "training finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert not (interrupted / "model_final.pth").exists()
    checkpoints = _assert_all_checkpoints_complete(interrupted)
    last = DetectionCheckpointer(torch.nn.Linear(1, 1), str(interrupted)).get_checkpoint_file()
    assert Path(last) in checkpoints
    resumed_from = load_checkpoint_file(last)["iteration"] + 1

    reference_output, _ = reference_run.communicate(timeout=300)
    assert reference_run.returncode == 0, reference_output[-3000:]
    assert "eta: " in reference_output  # the console shows progress with an ETA

    stdout = _run(interrupted, "--resume")
    assert f"Resuming at iteration {resumed_from}" in stdout
    _assert_all_checkpoints_complete(interrupted)
    assert not list(interrupted.glob(".*.tmp"))

    expected, actual = _final_weights(reference), _final_weights(interrupted)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)

    # metrics.json of the resumed run parses line by line, one record per logged iteration.
    lines = (interrupted / "metrics.json").read_text().splitlines()
    iterations = [json.loads(line)["iteration"] for line in lines]
    assert iterations == sorted(set(iterations))
    reference_lines = (reference / "metrics.json").read_text().splitlines()
    assert iterations == [json.loads(line)["iteration"] for line in reference_lines]


def test_checkpoint_killed_while_writing_leaves_previous_one(tmp_path):
    """A process SIGKILLed in the middle of writing a checkpoint leaves the previous checkpoint
    complete and named by last_checkpoint; the partial write is a hidden temporary file that the
    next checkpointer removes."""
    program = f"""
import os, signal, torch
from detlib.checkpoint import DetectionCheckpointer
model = torch.nn.Linear(64, 64)
ckpt = DetectionCheckpointer(model, {str(tmp_path)!r})
ckpt.save("model_0000001", iteration=1)
real_save = torch.save
def dying_save(obj, f):
    import io
    buffer = io.BytesIO()
    real_save(obj, buffer)
    f.write(buffer.getvalue()[:4096])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
ckpt.save("model_0000002", iteration=2)
"""
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000001.pth"]
    assert len(list(tmp_path.glob(".model_0000002.pth.*.tmp"))) == 1
    checkpointer = DetectionCheckpointer(torch.nn.Linear(64, 64), str(tmp_path))
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 1
    assert not list(tmp_path.glob(".*.tmp"))
