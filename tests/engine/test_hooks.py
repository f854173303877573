import itertools
import logging

import pytest
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler
from torch import nn

from detlib.checkpoint import DetectionCheckpointer, load_checkpoint_file
from detlib.engine import SimpleTrainer, hooks
from detlib.solver import LRMultiplier
from detlib.utils.events import CommonMetricPrinter, EventWriter


class RandomLoss(nn.Module):
    """Draws from torch's generator every step, like a detector's sampling, and records the draw."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.draws = []

    def forward(self, batch):
        draw = torch.rand(())
        self.draws.append(draw.item())
        return {"loss": (self.weight * batch).sum() * draw}


def _trainer(model=None):
    model = model or RandomLoss()
    return SimpleTrainer(model, itertools.repeat(torch.ones(2)), torch.optim.SGD(model.parameters(), lr=0.1))


def test_callback_hooks_run_in_order_around_each_step():
    events = []
    trainer = _trainer()
    trainer.register_hooks(
        [
            hooks.CallbackHook(
                before_train=lambda t: events.append(("before_train", t.iter)),
                before_step=lambda t: events.append(("before_step", t.iter)),
                after_step=lambda t: events.append(("after_step", t.iter)),
                after_train=lambda t: events.append(("after_train", t.iter)),
            ),
            None,  # ignored
        ]
    )
    trainer.train(5, 7)
    assert events == [
        ("before_train", 5),
        ("before_step", 5),
        ("after_step", 5),
        ("before_step", 6),
        ("after_step", 6),
        ("after_train", 7),
    ]


def test_iteration_timer_records_one_time_per_iteration():
    trainer = _trainer()
    trainer.register_hooks([hooks.IterationTimer(warmup_iter=1)])
    trainer.train(0, 4)
    times = trainer.storage.history("time").values()
    assert [it for _, it in times] == [0, 1, 2, 3]


def test_lr_scheduler_hook_records_the_lr_each_step_used():
    model = RandomLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = MultiStepParamScheduler([1.0, 0.1, 0.01], milestones=[2, 4], num_updates=6)
    trainer = SimpleTrainer(model, itertools.repeat(torch.ones(2)), optimizer)
    trainer.register_hooks([hooks.LRScheduler(optimizer, LRMultiplier(optimizer, schedule, max_iter=6))])
    trainer.train(0, 6)
    lrs = [v for v, _ in trainer.storage.history("lr").values()]
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_periodic_checkpointer_saves_every_period_and_at_the_end(tmp_path):
    trainer = _trainer()
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path), optimizer=trainer.optimizer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, period=3, max_to_keep=2)])
    trainer.train(0, 10)
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    # Iterations 2, 5, 8 were saved; only the newest two periodic ones are kept.
    assert names == ["model_0000005.pth", "model_0000008.pth", "model_final.pth"]
    assert load_checkpoint_file(str(tmp_path / "model_0000008.pth"))["iteration"] == 8
    final = load_checkpoint_file(str(tmp_path / "model_final.pth"))
    assert final["iteration"] == 9
    torch.testing.assert_close(final["model"]["weight"], trainer.model.weight.detach())
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_final.pth")


def test_eval_hook_runs_periodically_and_after_training_and_records_flat_results():
    calls = []

    def evaluate():
        calls.append(trainer.iter)
        torch.rand(100)  # evaluation may draw random numbers ...
        return {"bbox": {"AP": 10.0 * len(calls), "AP50": 1.0}}

    trainer = _trainer()
    trainer.register_hooks([hooks.EvalHook(3, evaluate)])
    trainer.train(0, 9)
    assert calls == [2, 5, 9]  # after iterations 2 and 5, and once after training (not twice at 9)
    history = trainer.storage.history("bbox/AP").values()
    assert history == [(10.0, 2), (20.0, 5), (30.0, 9)]
    assert trainer.storage.latest()["bbox/AP50"] == (1.0, 9)

    # ... without changing the training's random stream.
    plain = _trainer()
    torch.manual_seed(0)
    plain.train(0, 9)
    torch.manual_seed(0)
    evaluated = _trainer()
    evaluated.register_hooks([hooks.EvalHook(2, lambda: {"draw": torch.rand(7).sum().item()})])
    evaluated.train(0, 9)
    assert evaluated.model.draws == plain.model.draws


def test_eval_hook_rejects_non_numeric_results():
    trainer = _trainer()
    trainer.register_hooks([hooks.EvalHook(1, lambda: {"bbox": {"AP": "high"}})])
    with pytest.raises(ValueError, match="bbox/AP"):
        trainer.train(0, 2)


def test_best_checkpointer_saves_only_improvements(tmp_path):
    aps = iter([5.0, 9.0, 7.0, 8.0])
    trainer = _trainer()
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path))
    best = hooks.BestCheckpointer(2, checkpointer, "bbox/AP")
    saves = []
    real_save = checkpointer.save
    checkpointer.save = lambda name, **extra: (saves.append((name, extra["iteration"])), real_save(name, **extra))
    trainer.register_hooks([hooks.EvalHook(2, lambda: {"bbox": {"AP": next(aps)}}), best])
    trainer.train(0, 8)
    assert saves == [("model_best", 1), ("model_best", 3)]
    assert best.best_metric == 9.0
    saved = load_checkpoint_file(str(tmp_path / "model_best.pth"))
    assert saved["best_metric"] == 9.0 and saved["iteration"] == 3


class CountingWriter(EventWriter):
    def __init__(self):
        self.iterations = []
        self.closed = False

    def write(self):
        from detlib.utils.events import get_event_storage

        self.iterations.append(get_event_storage().iter)

    def close(self):
        self.closed = True


def test_periodic_writer_writes_every_period_on_the_last_iteration_and_at_the_end():
    writer = CountingWriter()
    trainer = _trainer()
    trainer.register_hooks([hooks.PeriodicWriter([writer], period=4)])
    trainer.train(0, 10)
    assert writer.iterations == [3, 7, 9, 10]
    assert writer.closed


def test_console_printer_shows_eta_losses_and_lr(caplog):
    model = RandomLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = SimpleTrainer(model, itertools.repeat(torch.ones(2)), optimizer)
    scheduler = LRMultiplier(optimizer, MultiStepParamScheduler([1.0], milestones=[], num_updates=10), max_iter=10)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(optimizer, scheduler),
            hooks.PeriodicWriter([CommonMetricPrinter(max_iter=10)], period=5),
        ]
    )
    with caplog.at_level(logging.INFO, logger="detlib.utils.events"):
        trainer.train(0, 10)
    lines = [r.getMessage() for r in caplog.records if r.name == "detlib.utils.events"]
    assert len(lines) == 2  # after iterations 4 and 9; nothing after training
    assert lines[0].startswith("eta: ") and "iter: 4" in lines[0]
    for field in ("loss: ", "total_loss: ", "time: ", "data_time: ", "lr: 0.5"):
        assert field in lines[1]
    assert trainer.storage.latest()["eta_seconds"][0] >= 0
