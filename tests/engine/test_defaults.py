import json
import random

import numpy as np
import pytest
import torch
import yaml
from tiny_train_net import TinyTrainer

from detlib.config import get_cfg
from detlib.data import build_detection_train_loader
from detlib.engine import DefaultTrainer, default_argument_parser, default_setup
from detlib.engine.defaults import _amp_precision, _scale_to_world_size, verify_results
from detlib.evaluation import DatasetEvaluator
from detlib.modeling import META_ARCH_REGISTRY
from detlib.utils.env import seed_all_rng


def test_argument_parser_takes_run_options_and_trailing_overrides():
    args = default_argument_parser().parse_args(
        ["--config-file", "a.yaml", "--resume", "--num-gpus", "2", "SOLVER.BASE_LR", "0.1", "MODEL.WEIGHTS", "w.pkl"]
    )
    assert args.config_file == "a.yaml" and args.resume and not args.eval_only
    assert (args.num_gpus, args.num_machines, args.machine_rank, args.dist_url) == (2, 1, 0, "auto")
    assert args.opts == ["SOLVER.BASE_LR", "0.1", "MODEL.WEIGHTS", "w.pkl"]


def test_default_setup_writes_config_and_log_and_seeds(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    cfg.SEED = 42
    cfg.SOLVER.BASE_LR = 0.123
    default_setup(cfg, default_argument_parser().parse_args([]))
    draws = (random.random(), np.random.rand(), torch.rand(()).item())
    seed_all_rng(42)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == draws

    reloaded = get_cfg()
    reloaded.merge_from_file(str(tmp_path / "run" / "config.yaml"))
    assert yaml.safe_load(reloaded.dump()) == yaml.safe_load(cfg.dump())
    assert reloaded.SOLVER.BASE_LR == 0.123
    assert "Environment info" in (tmp_path / "run" / "log.txt").read_text()


def test_config_rescaled_to_the_world_size_by_the_linear_rule():
    cfg = get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 16, 0.02, 90000
    cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, cfg.TEST.EVAL_PERIOD = (60000, 80000), 1000, 5000
    scaled = _scale_to_world_size(cfg, 2)
    assert (scaled.SOLVER.IMS_PER_BATCH, scaled.SOLVER.MAX_ITER, scaled.SOLVER.STEPS) == (4, 360000, (240000, 320000))
    assert scaled.SOLVER.BASE_LR == pytest.approx(0.005)
    assert (scaled.SOLVER.WARMUP_ITERS, scaled.TEST.EVAL_PERIOD, scaled.SOLVER.REFERENCE_WORLD_SIZE) == (4000, 20000, 2)
    assert cfg.SOLVER.IMS_PER_BATCH == 16  # the original is untouched
    assert _scale_to_world_size(cfg, 8) is cfg


class MeanPredictionEvaluator(DatasetEvaluator):
    """Scores a regression model by its mean squared error on fixed inputs."""

    def reset(self):
        self.errors = []

    def process(self, inputs, outputs):
        targets = torch.stack([torch.as_tensor(d["y"]) for d in inputs])
        self.errors.append(((outputs - targets) ** 2).mean().item())

    def evaluate(self):
        return {"regression": {"MSE": float(np.mean(self.errors)), "batches": len(self.errors)}}


class EvaluatingTinyTrainer(TinyTrainer):
    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        records = cls.records()
        return [records[i : i + 4] for i in range(0, 12, 4)]

    @staticmethod
    def records():
        from tiny_train_net import make_records

        return make_records()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return MeanPredictionEvaluator()


def _tiny_cfg(output_dir, **overrides):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.IMS_PER_BATCH = 6, 100, 2
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_ITERS = 0.01, 0
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASETS.TEST = ("tiny_val",)
    cfg.TEST.EVAL_PERIOD = 3
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def test_default_trainer_evaluates_periodically_and_records_results(tmp_path):
    trainer = EvaluatingTinyTrainer(_tiny_cfg(tmp_path))
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert results["regression"]["batches"] == 3
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    evaluations = [(r["iteration"], r["regression/MSE"]) for r in records if "regression/MSE" in r]
    assert [it for it, _ in evaluations] == [2, 6]  # after iteration 2, and after training
    assert evaluations[-1][1] == pytest.approx(results["regression"]["MSE"])
    assert (tmp_path / "model_final.pth").exists()

    # The same numbers from a direct evaluation of the trained model.
    direct = EvaluatingTinyTrainer.test(trainer.cfg, trainer.model)
    assert direct == results


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    trainer = EvaluatingTinyTrainer(_tiny_cfg(tmp_path))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 0
    trainer.checkpointer.save("model_0000003", iteration=3)
    resumed = EvaluatingTinyTrainer(_tiny_cfg(tmp_path))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4


def test_expected_results_are_verified(tmp_path):
    cfg = _tiny_cfg(tmp_path, **{"TEST.EXPECTED_RESULTS": "[['regression', 'MSE', -1.0, 0.01]]"})
    trainer = EvaluatingTinyTrainer(cfg)
    with pytest.raises(AssertionError, match="regression/MSE"):
        trainer.train()
    verify_results(cfg.clone(), {"regression": {"MSE": -1.005}})


def test_test_needs_one_evaluator_per_dataset(tmp_path):
    cfg = _tiny_cfg(tmp_path)
    with pytest.raises(ValueError, match="2 evaluators given for 1 test datasets"):
        DefaultTrainer.test(cfg, torch.nn.Linear(1, 1), [MeanPredictionEvaluator(), MeanPredictionEvaluator()])


class PredictorProbe(torch.nn.Module):
    """Records what the predictor feeds the model."""

    def __init__(self, cfg):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.seen = []

    def forward(self, batched_inputs):
        assert not self.training
        self.seen.extend(batched_inputs)
        return [{"instances": "predictions"} for _ in batched_inputs]


def _register_probe():
    # Registered for the test; tests/conftest.py removes it afterwards.
    META_ARCH_REGISTRY.register(PredictorProbe)


@pytest.mark.parametrize("input_format", ["BGR", "RGB"])
def test_default_predictor_loads_weights_resizes_and_orders_channels(tmp_path, input_format):
    _register_probe()
    from detlib.engine import DefaultPredictor

    torch.save({"model": {"scale": torch.tensor([3.0])}}, tmp_path / "w.pth")
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "PredictorProbe"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = str(tmp_path / "w.pth")
    cfg.INPUT.FORMAT = input_format
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 20, 100
    predictor = DefaultPredictor(cfg)
    assert predictor.model.scale.item() == 3.0

    bgr = np.zeros((10, 30, 3), dtype=np.uint8)
    bgr[..., 0] = 255  # blue
    assert predictor(bgr) == {"instances": "predictions"}
    (seen,) = predictor.model.seen
    assert (seen["height"], seen["width"]) == (10, 30)
    assert seen["image"].shape == (3, 20, 60) and seen["image"].dtype == torch.uint8
    blue_channel = 0 if input_format == "BGR" else 2
    assert seen["image"][blue_channel].min() == 255 and seen["image"].sum() == 255 * 20 * 60
    with pytest.raises(ValueError, match="H, W, 3"):
        predictor(np.zeros((10, 30), dtype=np.uint8))


class CountingTinyTrainer(TinyTrainer):
    """Records the index of every training record its loader decodes."""

    decoded = []

    @classmethod
    def build_train_loader(cls, cfg):
        from tiny_train_net import make_records

        def mapper(record):
            cls.decoded.append(record["index"])
            return record

        return build_detection_train_loader(
            make_records(), mapper=mapper, total_batch_size=cfg.SOLVER.IMS_PER_BATCH, aspect_ratio_grouping=False
        )


def test_resume_reads_no_sample_of_the_batches_already_trained_on(tmp_path):
    cfg = _tiny_cfg(tmp_path, **{"SOLVER.MAX_ITER": "30", "SOLVER.CHECKPOINT_PERIOD": "12", "SEED": "3"})
    cfg.DATASETS.TEST = ()
    seed_all_rng(3)
    CountingTinyTrainer.decoded = []
    trainer = CountingTinyTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    uninterrupted = list(CountingTinyTrainer.decoded)
    assert len(uninterrupted) == 30 * 2

    # Resume from the checkpoint after iteration 23: 24 batches (48 records, more than one epoch
    # of the 37 records) lie behind it.
    trainer.checkpointer.tag_last_checkpoint("model_0000023.pth")
    CountingTinyTrainer.decoded = []
    resumed = CountingTinyTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 24 and CountingTinyTrainer.decoded == []
    resumed.train()
    assert CountingTinyTrainer.decoded == uninterrupted[48:]
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fast_bfloat16", [True, False])
def test_bfloat16_training_on_a_cpu_without_native_bfloat16_runs_in_float32(monkeypatch, fast_bfloat16):
    from detlib.engine import defaults
    from detlib.modeling import acceleration

    monkeypatch.setattr(acceleration, "cpu_has_fast_bfloat16", lambda: fast_bfloat16)
    warned = []
    monkeypatch.setattr(defaults.logger, "warning", lambda message, *args: warned.append(message % args))
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16"])
    assert _amp_precision(cfg) == (torch.bfloat16 if fast_bfloat16 else None)
    assert len(warned) == (0 if fast_bfloat16 else 1)
    assert all("training in float32" in w for w in warned)
    cfg.SOLVER.AMP.ENABLED = False
    assert _amp_precision(cfg) is None
