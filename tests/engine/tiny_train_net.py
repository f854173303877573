"""`tools/train_net.py`'s `main`, run with a tiny non-detection trainer: a small regression model
on a synthetic dataset, fast enough for kill-and-resume and multi-process tests.

    python tests/engine/tiny_train_net.py [--random-augment] [--step-sleep S] [train_net args]

With `--random-augment`, every source of randomness a detector's training step has is exercised:
the mapper draws from NumPy and Python's generators (like augmentations) and the model from
torch's (like proposal sampling). Without it a step is a deterministic function of the sampled
indices, so that a 2-process run can be compared with a 1-process one.
"""

import datetime
import os
import random
import sys
import time

import numpy as np
import torch
from torch import nn

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [REPO, os.path.join(REPO, "tools")]

import train_net  # noqa: E402

from detlib.data import build_detection_train_loader  # noqa: E402
from detlib.engine import CallbackHook, DefaultTrainer, default_argument_parser, launch  # noqa: E402
from detlib.utils import comm  # noqa: E402
from detlib.utils.events import get_event_storage  # noqa: E402

NUM_RECORDS = 37
IN_FEATURES = 6


def make_records():
    """Targets are a fixed linear function of the inputs plus a per-record offset."""
    generator = np.random.RandomState(1234)
    weights = generator.randn(IN_FEATURES, 2)
    records = []
    for index in range(NUM_RECORDS):
        x = generator.randn(IN_FEATURES).astype(np.float32)
        records.append({"index": index, "x": x, "y": (x @ weights + 0.1 * index / NUM_RECORDS).astype(np.float32)})
    return records


class TinyRegressor(nn.Module):
    """Returns its own losses in training, like a detector, and records a diagnostic scalar."""

    def __init__(self, random_noise: bool):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IN_FEATURES, 16), nn.Tanh(), nn.Linear(16, 2))
        self.random_noise = random_noise

    def forward(self, batch):
        x = torch.stack([torch.as_tensor(d["x"]) for d in batch])
        prediction = self.net(x)
        if not self.training:
            return prediction
        if self.random_noise:
            prediction = prediction + 0.01 * torch.randn_like(prediction)
        y = torch.stack([torch.as_tensor(d["y"]) for d in batch])
        get_event_storage().put_scalar("tiny/prediction_norm", prediction.detach().norm())
        return {"loss_mse": ((prediction - y) ** 2).mean(), "loss_l1": 0.1 * (prediction - y).abs().mean()}


def augment(record):
    out = dict(record)
    out["x"] = record["x"] + np.float32(0.05) * np.random.randn(IN_FEATURES).astype(np.float32)
    out["x"] = out["x"] * np.float32(random.choice([0.9, 1.0, 1.1]))
    return out


class TinyTrainer(DefaultTrainer):
    random_augment = False
    step_sleep = 0.0

    @classmethod
    def build_model(cls, cfg):
        return TinyRegressor(random_noise=cls.random_augment).to(cfg.MODEL.DEVICE)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(
            make_records(),
            mapper=augment if cls.random_augment else None,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=False,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    def build_hooks(self):
        return super().build_hooks() + [
            CallbackHook(before_train=_write_pid, after_step=_check_ranks_agree, after_train=_save_rank_parameters)
        ]

    def run_step(self):
        super().run_step()
        if self.step_sleep:
            time.sleep(self.step_sleep)  # leaves the test time to kill the run mid-training


def _parameters(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def _check_ranks_agree(trainer):
    """Every rank must hold bit-identical parameters after every step."""
    gathered = comm.all_gather(_parameters(trainer))
    for rank, params in enumerate(gathered):
        if not torch.equal(params, gathered[0]):
            raise AssertionError(f"rank {rank} parameters differ from rank 0's at iteration {trainer.iter}")


def _write_pid(trainer):
    """Lets a test kill one chosen worker of a launcher it does not control (torchrun)."""
    with open(os.path.join(trainer.cfg.OUTPUT_DIR, f"pid_rank{comm.get_rank()}"), "w") as f:
        f.write(str(os.getpid()))


def _save_rank_parameters(trainer):
    path = os.path.join(trainer.cfg.OUTPUT_DIR, f"parameters_rank{comm.get_rank()}.pt")
    torch.save(_parameters(trainer), path)


def worker(args, random_augment, step_sleep):
    TinyTrainer.random_augment = random_augment
    TinyTrainer.step_sleep = step_sleep
    train_net.main(args, trainer_class=TinyTrainer)


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--random-augment", action="store_true")
    parser.add_argument("--step-sleep", type=float, default=0.0)
    args = parser.parse_args()
    launch(
        worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        timeout=datetime.timedelta(seconds=args.dist_timeout),
        args=(args, args.random_augment, args.step_sleep),
    )
