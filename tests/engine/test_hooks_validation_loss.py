"""The validation-loss hook in a DefaultTrainer run: scalars in metrics.json, training unchanged."""

import json

import pytest
import torch
from test_defaults import _tiny_cfg
from tiny_train_net import TinyTrainer, make_records

from detlib.utils.env import seed_all_rng

VAL_BATCHES = 3


class ValidatingTinyTrainer(TinyTrainer):
    @classmethod
    def build_val_loader(cls, cfg):
        records = make_records()[-4 * VAL_BATCHES :]
        return [records[i : i + 4] for i in range(0, len(records), 4)]


def _train(output_dir, val_period, random_augment):
    ValidatingTinyTrainer.random_augment = random_augment
    seed_all_rng(7)
    cfg = _tiny_cfg(output_dir, **{"TEST.VAL_LOSS_PERIOD": str(val_period), "TEST.EVAL_PERIOD": "0"})
    cfg.DATASETS.TEST = ()
    trainer = ValidatingTinyTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def _metrics(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def test_validation_losses_reach_metrics_json_and_match_a_direct_computation(tmp_path):
    trainer = _train(tmp_path, val_period=2, random_augment=False)
    assert [it for _, it in trainer.storage.history("val/loss_mse").values()] == [1, 3, 5]
    records = [r for r in _metrics(tmp_path) if "val/loss_mse" in r]
    assert [r["iteration"] for r in records] == [5]  # the writer's period is longer than the run
    assert set(records[-1]) >= {"val/loss_mse", "val/loss_l1", "val/total_loss"}

    # After the last step (iteration 5 of 6) the weights are final: recompute the losses directly.
    model = trainer.model
    model.train()
    batches = ValidatingTinyTrainer.build_val_loader(trainer.cfg)
    from detlib.utils.events import EventStorage

    with torch.no_grad(), EventStorage():
        direct = [model(batch) for batch in batches]
    for name in ("loss_mse", "loss_l1"):
        expected = sum(float(d[name]) for d in direct) / len(direct)
        assert records[-1][f"val/{name}"] == pytest.approx(expected, rel=1e-6)
    assert records[-1]["val/total_loss"] == pytest.approx(records[-1]["val/loss_mse"] + records[-1]["val/loss_l1"])
    # What forward records during validation stays out of the training's storage.
    assert len(trainer.storage.history("tiny/prediction_norm").values()) == trainer.cfg.SOLVER.MAX_ITER


def test_training_is_identical_with_and_without_the_hook(tmp_path):
    # Random augmentation and model noise: every generator a detector's step draws from is in use.
    without = _train(tmp_path / "without", val_period=0, random_augment=True)
    with_hook = _train(tmp_path / "with", val_period=2, random_augment=True)
    assert any("val/loss_mse" in r for r in _metrics(tmp_path / "with"))
    assert not any("val/loss_mse" in r for r in _metrics(tmp_path / "without"))
    for (name, a), (_, b) in zip(without.model.state_dict().items(), with_hook.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_validation_period_without_a_validation_dataset_is_an_error(tmp_path):
    from detlib.engine import DefaultTrainer

    cfg = _tiny_cfg(tmp_path, **{"TEST.VAL_LOSS_PERIOD": "2"})
    with pytest.raises(ValueError, match="DATASETS.VAL"):
        DefaultTrainer.build_val_loader(cfg)


def test_the_period_scales_with_the_world_size_like_the_evaluation_period():
    from detlib.config import get_cfg
    from detlib.engine.defaults import _scale_to_world_size

    cfg = get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    cfg.TEST.VAL_LOSS_PERIOD, cfg.TEST.EVAL_PERIOD = 500, 5000
    scaled = _scale_to_world_size(cfg, 2)
    assert (scaled.TEST.VAL_LOSS_PERIOD, scaled.TEST.EVAL_PERIOD) == (2000, 20000)
