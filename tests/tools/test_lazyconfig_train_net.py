"""End to end: tools/lazyconfig_train_net.py trains the shapes Python config for a few iterations
(checkpoints, metrics, evaluation), resumes it, evaluates a checkpoint with --eval-only, and writes a
config.yaml that loads back as data and builds the same model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from detlib.config import LazyConfig, instantiate

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "tools" / "shapes_lazyconfig_train_net.py"  # the tool + small registered splits
CONFIG = REPO / "configs" / "Shapes" / "mask_rcnn_shapes.py"


def _run(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETLIB_DATASETS": str(tmp_path / "datasets")}
    overrides = [
        "dataloader.train.dataset.names=shapes_mini_train",
        "dataloader.test.dataset.names=shapes_mini_val",
        f"train.output_dir={tmp_path / 'out'}",
        "train.checkpointer.period=2",
        "train.eval_period=0",
        "train.log_period=1",
    ]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--config-file", str(CONFIG), *args, *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _iterations(out_dir):
    lines = (out_dir / "metrics.json").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines if "total_loss" in line]


def test_train_resume_and_evaluate(tmp_path):
    out = tmp_path / "out"
    ema = ["train.model_ema.enabled=True", "train.clip_gradients.enabled=True"]
    log = _run(tmp_path, "train.max_iter=3", *ema)
    assert {"model_0000001.pth", "model_final.pth", "config.yaml", "last_checkpoint"} <= set(os.listdir(out))
    assert _iterations(out) == [0, 1, 2]
    assert "Evaluation results" in log and "'bbox'" in log and "'segm'" in log

    assert "model_ema" in torch.load(out / "model_final.pth", weights_only=False)
    log = _run(tmp_path, "--resume", "train.max_iter=5", *ema)
    assert "Resuming at iteration 3" in log
    assert _iterations(out) == [0, 1, 2, 3, 4]

    # The saved config is data: it loads with the allowlist and builds the model the .py config builds.
    saved = LazyConfig.load(out / "config.yaml")
    assert saved.train.max_iter == 5 and saved.dataloader.train.dataset.names == "shapes_mini_train"
    from_py = LazyConfig.load(CONFIG)
    ours = {k: v.shape for k, v in instantiate(saved.model).state_dict().items()}
    assert ours == {k: v.shape for k, v in instantiate(from_py.model).state_dict().items()}

    log = _run(tmp_path, "--eval-only", f"train.init_checkpoint={out / 'model_final.pth'}")
    assert "Evaluation results" in log and "segm" in log


def test_shapes_python_config_builds_the_yaml_configs_model():
    from detlib.config import get_cfg
    from detlib.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "Shapes" / "mask_rcnn_shapes.yaml"))
    from_yaml = build_model(cfg)
    from_py = instantiate(LazyConfig.load(CONFIG).model)
    assert {k: v.shape for k, v in from_py.state_dict().items()} == {
        k: v.shape for k, v in from_yaml.state_dict().items()
    }
    for get in (
        lambda m: m.proposal_generator.pre_nms_topk,
        lambda m: m.proposal_generator.post_nms_topk,
        lambda m: [a.tolist() for a in m.proposal_generator.anchor_generator.cell_anchors],
        lambda m: m.roi_heads.box_predictor.test_topk_per_image,
        lambda m: m.roi_heads.mask_head.loss_weight,
        lambda m: m.pixel_std.flatten().tolist(),
    ):
        assert get(from_py) == get(from_yaml)
