"""SemSegEvaluator on label maps small enough to score by hand."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from detlib.data.datasets import register_sem_seg
from detlib.evaluation import SemSegEvaluator


def _one_hot(pred: np.ndarray, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(pred), num_classes).permute(2, 0, 1).float()


def _dataset(tmp_path, name, labels, classes):
    """Registers images 0..n-1 (JPEG stand-ins) with `labels` as their label PNGs."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i, label in enumerate(labels):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(b"")
        Image.fromarray(np.asarray(label, dtype=np.uint8)).save(tmp_path / "labels" / f"{i}.png")
    register_sem_seg(name, {"stuff_classes": classes}, str(tmp_path / "labels"), str(tmp_path / "images"))
    return [{"file_name": str(tmp_path / "images" / f"{i}.jpg")} for i in range(len(labels))]


def _run(evaluator, inputs, preds, num_classes):
    evaluator.reset()
    for inp, pred in zip(inputs, preds):
        evaluator.process([inp], [{"sem_seg": _one_hot(np.asarray(pred), num_classes)}])
    return evaluator.evaluate()["sem_seg"]


def test_metrics_match_a_hand_computed_case_with_ignored_pixels(tmp_path):
    # Pixels (pred, gt) outside the ignored one: (0,0) (1,0) (1,1) (2,2) | (0,2) (1,1) (0,1); the
    # prediction under the ignored pixel (2) counts nowhere.
    gt = [[0, 0, 1, 255], [2, 2, 1, 1]]
    pred = [[0, 1, 1, 2], [2, 0, 1, 0]]
    inputs = _dataset(tmp_path, "semseg_hand", [gt], ["a", "b", "c"])
    m = _run(SemSegEvaluator("semseg_hand", distributed=False), inputs, [pred], 3)
    # class a: TP 1, GT 2, predicted 3 -> IoU 1/4, acc 1/2; b: TP 2, GT 3, predicted 3 -> 2/4, 2/3;
    # c: TP 1, GT 2, predicted 1 -> 1/2, 1/2.
    assert m["IoU-a"] == pytest.approx(25) and m["IoU-b"] == pytest.approx(50) and m["IoU-c"] == pytest.approx(50)
    assert m["ACC-a"] == pytest.approx(50) and m["ACC-b"] == pytest.approx(200 / 3) and m["ACC-c"] == pytest.approx(50)
    assert m["mIoU"] == pytest.approx(100 * (1 / 4 + 1 / 2 + 1 / 2) / 3)
    assert m["fwIoU"] == pytest.approx(100 * (1 / 4 * 2 + 1 / 2 * 3 + 1 / 2 * 2) / 7)
    assert m["mACC"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert m["pACC"] == pytest.approx(100 * 4 / 7)


def test_classes_absent_from_the_ground_truth_are_left_out_of_the_means(tmp_path):
    # Two images; class "d" (3) is predicted once but never in the ground truth; ignore label 9 from
    # the arguments. Image 0: (pred, gt) = (0,0) (3,0); image 1: (1,1) (1,1) (2,1), ignored 9 -> pred 0.
    inputs = _dataset(tmp_path, "semseg_absent", [[[0, 0]], [[1, 1, 1, 9]]], ["a", "b", "c", "d"])
    preds = [[[0, 3]], [[1, 1, 2, 0]]]
    m = _run(SemSegEvaluator("semseg_absent", distributed=False, ignore_label=9), inputs, preds, 4)
    assert math.isnan(m["IoU-d"]) and math.isnan(m["ACC-d"]) and math.isnan(m["IoU-c"])
    # a: TP 1, GT 2, predicted 1 -> IoU 1/2, acc 1/2; b: TP 2, GT 3, predicted 2 -> IoU 2/3, acc 2/3.
    assert m["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert m["mACC"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert m["fwIoU"] == pytest.approx(100 * (1 / 2 * 2 / 5 + 2 / 3 * 3 / 5))
    assert m["pACC"] == pytest.approx(100 * 3 / 5)


def test_a_label_that_is_no_class_names_the_file(tmp_path):
    inputs = _dataset(tmp_path, "semseg_bad", [[[0, 7]]], ["a", "b"])
    evaluator = SemSegEvaluator("semseg_bad", distributed=False)
    with pytest.raises(ValueError, match=r"0\.png: label 7 is neither a class \(0\.\.1\) nor the ignore label 255"):
        evaluator.process(inputs, [{"sem_seg": _one_hot(np.array([[0, 1]]), 2)}])
    with pytest.raises(ValueError, match="scores 3 classes, not 2"):
        evaluator.process(inputs, [{"sem_seg": _one_hot(np.array([[0, 1]]), 3)}])
