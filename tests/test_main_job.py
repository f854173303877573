"""
The main job, shortened: `tools/train_net.py --config-file configs/Shapes/mask_rcnn_shapes.yaml`
trains for a few iterations on a small shapes split, evaluates it periodically and at the end,
prints the final COCO APs and writes its training report. `--eval-only` then evaluates the trained
weights written as a Detectron2 model-zoo pickle and must reproduce the final evaluation exactly.
"""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from detlib.checkpoint import load_checkpoint_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "tools" / "shapes_train_net.py"  # train_net.py + small registered splits
CONFIG = REPO / "configs" / "Shapes" / "mask_rcnn_shapes.yaml"
MAX_ITER = 20
EVAL_PERIOD = 10
VAL = "shapes_mini_val"

SHORT_RUN = [
    "DATASETS.TRAIN",
    '("shapes_mini_train",)',
    "DATASETS.TEST",
    f'("{VAL}",)',
    "SOLVER.MAX_ITER",
    str(MAX_ITER),
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "5",
    "SOLVER.CHECKPOINT_PERIOD",
    str(EVAL_PERIOD),
    "TEST.EVAL_PERIOD",
    str(EVAL_PERIOD),
    "DATALOADER.NUM_WORKERS",
    "0",
    # A barely trained classifier scores everything low; keep every detection so that the
    # evaluations compared below have predictions to compare.
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
]
FINAL_LINE = re.compile(rf"Final {VAL} (bbox|segm): (AP [^\n]*)")


def _train_net(tmp_root: Path, output_dir: Path, *args: str) -> str:
    env = dict(os.environ, DETLIB_DATASETS=str(tmp_root / "datasets"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        str(SCRIPT),
        "--config-file",
        str(CONFIG),
        *args,
        *SHORT_RUN,
        "OUTPUT_DIR",
        str(output_dir),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    return log


def _final_aps(log: str) -> dict:
    return dict(FINAL_LINE.findall(log))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("main_job")
    output_dir = root / "train"
    return root, output_dir, _train_net(root, output_dir)


def test_training_evaluates_checkpoints_and_reports(trained):
    _, output_dir, log = trained

    records = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines() if line.strip()]
    assert all(isinstance(r, dict) and "iteration" in r for r in records)
    iterations = [r["iteration"] for r in records]
    assert iterations == sorted(iterations) and iterations[-1] == MAX_ITER
    training = [r for r in records if "total_loss" in r]
    assert training and all(np.isfinite(r["total_loss"]) and r["lr"] > 0 for r in training)
    evaluations = [r for r in records if "bbox/AP" in r]
    # The periodic evaluation is recorded at its iteration, the final one after the last.
    assert [r["iteration"] for r in evaluations] == [EVAL_PERIOD - 1, MAX_ITER]
    assert all("segm/AP" in r for r in evaluations)

    final = _final_aps(log)
    assert set(final) == {"bbox", "segm"}, log[-3000:]
    for task in ("bbox", "segm"):
        printed_ap = float(final[task].split()[1])
        assert printed_ap == pytest.approx(evaluations[-1][f"{task}/AP"], abs=0.005)

    assert (output_dir / "model_final.pth").is_file()
    assert (output_dir / f"model_{EVAL_PERIOD - 1:07d}.pth").is_file()
    assert (output_dir / "inference" / VAL / "coco_instances_results.json").is_file()
    for name in ("losses.png", "lr.png", "ap.png", "predictions.png"):
        image = cv2.imread(str(output_dir / name))
        assert image is not None and image.std() > 0, f"{name} is missing, unreadable or blank"


def _write_detectron2_pickle(weights: Path, path: Path) -> None:
    """The layout of a Detectron2 model-zoo `.pkl`: NumPy arrays under 'model'."""
    state_dict = load_checkpoint_file(str(weights))["model"]
    model = {name: tensor.cpu().numpy() for name, tensor in state_dict.items()}
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f)


def test_eval_only_of_detectron2_pickle_reproduces_final_evaluation(trained):
    root, train_dir, train_log = trained
    pkl = root / "model_final.pkl"
    _write_detectron2_pickle(train_dir / "model_final.pth", pkl)

    eval_dir = root / "eval_pkl"
    log = _train_net(root, eval_dir, "--eval-only", "MODEL.WEIGHTS", str(pkl))

    assert _final_aps(log) == _final_aps(train_log)
    results = [
        json.loads((d / "inference" / VAL / "coco_instances_results.json").read_text()) for d in (train_dir, eval_dir)
    ]
    assert len(results[0]) > 0 and len(results[0]) == len(results[1])
    for trained_det, loaded_det in zip(*results):
        assert trained_det["image_id"] == loaded_det["image_id"]
        assert trained_det["category_id"] == loaded_det["category_id"]
        assert trained_det["segmentation"] == loaded_det["segmentation"]
        np.testing.assert_allclose(trained_det["bbox"], loaded_det["bbox"], rtol=0, atol=1e-4)
        assert trained_det["score"] == pytest.approx(loaded_det["score"], abs=1e-6)
