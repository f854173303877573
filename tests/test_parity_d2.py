"""
Parity with Detectron2 (shared/parity/d2_case_a, see its README): the model built from the stored
config with the stored Detectron2 weights gives Detectron2's detections and training losses.
"""

import json
import re

import numpy as np
import pytest
import torch

from detlib.checkpoint import DetectionCheckpointer
from detlib.config import get_cfg
from detlib.modeling import build_model
from detlib.structures import Boxes, Instances, PolygonMasks, pairwise_iou
from detlib.utils.events import EventStorage


@pytest.fixture(scope="module")
def model(d2_case):
    cfg = get_cfg()
    cfg.merge_from_file(str(d2_case / "config.yaml"))
    model = build_model(cfg)
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(str(d2_case / "model.pkl"))
    keys = checkpointer.incompatible_keys
    assert not keys.missing and not keys.unexpected and not keys.shape_mismatch, keys
    return model


def test_weights_load_exactly(model, d2_case):
    import pickle

    with open(d2_case / "model.pkl", "rb") as f:
        stored = pickle.load(f, encoding="latin1")["model"]
    state = model.state_dict()
    assert set(state) == set(stored)
    for name, value in stored.items():
        assert torch.equal(state[name], torch.from_numpy(value)), name


@pytest.mark.parametrize("stem", ["img0_480x640", "img1_300x500", "img2_640x427"])
def test_inference_matches_detectron2(model, stem, d2_case):
    expected = np.load(d2_case / "expected_inference.npz")
    height, width = (int(v) for v in expected[f"{stem}__orig_hw"])
    image = torch.from_numpy(expected[f"{stem}__input_image_chw_bgr_uint8"])
    model.eval()
    with torch.no_grad():
        out = model([{"image": image, "height": height, "width": width}])[0]["instances"]

    exp_boxes = torch.from_numpy(expected[f"{stem}__pred_boxes"])
    exp_scores = torch.from_numpy(expected[f"{stem}__scores"])
    exp_classes = torch.from_numpy(expected[f"{stem}__pred_classes"])
    exp_masks = torch.from_numpy(expected[f"{stem}__pred_masks"]).bool()
    assert out.image_size == (height, width)
    assert len(out) == len(exp_boxes)
    assert out.pred_masks.shape == exp_masks.shape

    # Each expected detection is matched by one of ours: same class, IoU > 0.99, close score.
    iou = pairwise_iou(Boxes(exp_boxes), out.pred_boxes)
    iou[exp_classes[:, None] != out.pred_classes[None, :]] = 0
    best_iou, match = iou.max(dim=1)
    assert (best_iou > 0.99).all()
    assert len(set(match.tolist())) == len(match)
    assert (out.scores[match] - exp_scores).abs().max() < 1e-4
    assert (out.pred_boxes.tensor[match] - exp_boxes).abs().max() < 1e-2

    ours = out.pred_masks[match]
    inter = (ours & exp_masks).flatten(1).sum(1).float()
    union = (ours | exp_masks).flatten(1).sum(1).float()
    assert (inter[union > 0] / union[union > 0]).min() > 0.99
    assert (ours == exp_masks).float().mean() > 0.999


def _train_batch(case):
    data = np.load(case / "train_inputs.npz")
    batch = []
    for stem in json.loads((case / "expected_losses.json").read_text())["batch_order"]:
        image = torch.from_numpy(data[f"{stem}__image_chw_bgr_uint8"])
        classes = torch.from_numpy(data[f"{stem}__gt_classes"])
        polygons = [dict() for _ in range(len(classes))]
        for key in data.files:
            m = re.fullmatch(rf"{stem}__gt_polygon_(\d+)_(\d+)", key)
            if m:
                polygons[int(m[1])][int(m[2])] = data[key]
        instances = Instances(
            tuple(image.shape[1:]),
            gt_boxes=Boxes(torch.from_numpy(data[f"{stem}__gt_boxes"])),
            gt_classes=classes,
            gt_masks=PolygonMasks([[parts[i] for i in sorted(parts)] for parts in polygons]),
        )
        batch.append({"image": image, "instances": instances})
    return batch


def test_training_losses_match_detectron2(model, d2_case):
    expected = json.loads((d2_case / "expected_losses.json").read_text())
    model.train()
    try:
        with EventStorage(0):
            torch.manual_seed(expected["torch_seed_before_forward"])
            losses = model(_train_batch(d2_case))
    finally:
        model.eval()
    assert set(losses) == set(expected["losses"])
    for name, value in expected["losses"].items():
        assert losses[name].item() == pytest.approx(value, rel=1e-4), name
