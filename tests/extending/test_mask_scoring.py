"""
The worked example of docs/extend.md, projects/MaskScoring: its IoU targets by hand, its head's loss
and rescoring, selection by one config line, and a few training iterations from the command line
with the stock trainer, its loss and diagnostics reaching metrics.json.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mask_scoring import MaskIoUHead, MaskScoringROIHeads, mask_iou_targets  # on sys.path by conftest.py

from detlib.layers import ShapeSpec
from detlib.modeling.meta_arch.build import build_model
from detlib.modeling.roi_heads import StandardROIHeads
from detlib.structures import BitMasks, Boxes, Instances
from detlib.utils.events import EventStorage

REPO = Path(__file__).resolve().parents[2]


def _rois():
    """Two RoIs in a 16 x 16 image, with hand-countable masks (a 4 x 4 grid: each cell is 2 x 2 pixels)."""
    wide = torch.zeros(16, 16, dtype=torch.bool)
    wide[0:8, :] = True  # 128 pixels; the RoI [0, 0, 8, 8] sees 64 of them
    small = torch.zeros(16, 16, dtype=torch.bool)
    small[10:14, 10:14] = True  # 16 pixels, all inside the RoI [8, 8, 16, 16]
    return Instances(
        (16, 16),
        proposal_boxes=Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]])),
        gt_classes=torch.tensor([2, 0]),
        gt_masks=BitMasks(torch.stack([wide, small])),
    )


def test_mask_iou_targets_by_hand():
    probs = torch.zeros(2, 4, 4)
    probs[0, :2] = 0.9  # the top half of RoI 0: 32 pixels, all on the gt
    probs[1] = 0.7  # all of RoI 1: 64 pixels, 16 of them on the gt
    # RoI 0: 32 / (32 + 128 - 32), counting the gt pixels outside the RoI. RoI 1: 16 / 64.
    torch.testing.assert_close(mask_iou_targets(probs, [_rois()]), torch.tensor([0.25, 0.25]))
    probs[0] = 0.9  # all of RoI 0: 64 / 128
    probs[1, 1:3, 1:3] = 0.2  # RoI 1 without the gt: 0 / (48 + 16)
    torch.testing.assert_close(mask_iou_targets(probs, [_rois()]), torch.tensor([0.5, 0.0]))


def _head():
    torch.manual_seed(0)
    return MaskIoUHead(ShapeSpec(channels=4, height=2, width=2), num_classes=3, conv_dims=[8, 8], fc_dims=[16])


def test_maskiou_head_loss_scalars_and_gradients():
    head = _head().train()
    head.loss_weight = 2.0
    features = torch.randn(2, 4, 2, 2)
    mask_logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    with EventStorage(0) as storage:
        losses = head(features, mask_logits, [_rois()])

    gt_probs = mask_logits.detach()[[0, 1], [2, 0]].sigmoid()  # each RoI's gt class
    predicted = head.predict(features, gt_probs)[[0, 1], [2, 0]]
    targets = mask_iou_targets(gt_probs, [_rois()])
    assert set(losses) == {"loss_maskiou"}
    assert losses["loss_maskiou"].item() == pytest.approx(2.0 * ((predicted - targets) ** 2).mean().item(), rel=1e-6)
    scalars = {name: value for name, (value, _) in storage.latest().items()}
    assert scalars["mask_scoring/mask_iou"] == pytest.approx(targets.mean().item(), rel=1e-6)
    assert scalars["mask_scoring/iou_abs_error"] == pytest.approx((predicted - targets).abs().mean().item(), rel=1e-5)

    losses["loss_maskiou"].backward()
    assert mask_logits.grad is None  # the scored mask is an input, not trained by this loss
    assert head.predictor.weight.grad.abs().sum() > 0


def test_maskiou_head_rescores_detections():
    head = _head().eval()
    features, mask_logits = torch.randn(3, 4, 2, 2), torch.randn(3, 3, 4, 4)
    detections = Instances((16, 16), pred_classes=torch.tensor([1, 1, 2]), scores=torch.tensor([0.9, 0.5, 0.3]))
    head(features, mask_logits, [detections])
    probs = mask_logits[[0, 1, 2], [1, 1, 2]].sigmoid()
    ious = head.predict(features, probs)[[0, 1, 2], [1, 1, 2]].clamp(0, 1)
    torch.testing.assert_close(detections.pred_mask_ious, ious)
    torch.testing.assert_close(detections.scores, torch.tensor([0.9, 0.5, 0.3]) * ious)


def _shared_weights(stock_cfg, scoring_cfg):
    stock, scoring = build_model(stock_cfg), build_model(scoring_cfg)
    missing, unexpected = scoring.load_state_dict(stock.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("roi_heads.maskiou_head.") for k in missing)
    return stock, scoring


def test_one_config_line_adds_the_head_and_its_loss(tiny_cfg, tiny_mask_scoring_cfg, batch, run_losses):
    stock, scoring = _shared_weights(tiny_cfg(), tiny_mask_scoring_cfg())
    assert type(scoring.roi_heads) is MaskScoringROIHeads and type(stock.roi_heads) is StandardROIHeads
    base, _ = run_losses(stock, batch)
    losses, storage = run_losses(scoring, batch)
    assert set(losses) == set(base) | {"loss_maskiou"}
    for name in base:  # the stock losses are untouched
        assert losses[name].item() == pytest.approx(base[name].item(), rel=1e-6), name
    assert math.isfinite(losses["loss_maskiou"].item()) and losses["loss_maskiou"].item() > 0
    assert 0 <= storage.latest()["mask_scoring/mask_iou"][0] <= 1

    _, weighted = _shared_weights(tiny_cfg(), tiny_mask_scoring_cfg("MODEL.LOSS_WEIGHTS.loss_maskiou", 4.0))
    weighted.load_state_dict(scoring.state_dict())
    scaled, _ = run_losses(weighted, batch)
    assert scaled["loss_maskiou"].item() == pytest.approx(4.0 * losses["loss_maskiou"].item(), rel=1e-6)


def test_inference_scores_are_box_scores_times_mask_iou(tiny_cfg, tiny_mask_scoring_cfg, batch):
    stock, scoring = _shared_weights(tiny_cfg(), tiny_mask_scoring_cfg())
    inputs = [{"image": x["image"]} for x in batch]
    with torch.no_grad():
        expected = stock.eval().inference(inputs, do_postprocess=False)
        results = scoring.eval().inference(inputs, do_postprocess=False)
    assert sum(len(r) for r in results) > 0
    for ours, theirs in zip(results, expected):
        torch.testing.assert_close(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
        torch.testing.assert_close(ours.pred_masks, theirs.pred_masks)
        assert ((ours.pred_mask_ious >= 0) & (ours.pred_mask_ious <= 1)).all()
        torch.testing.assert_close(ours.scores, theirs.scores * ours.pred_mask_ious)


def test_trains_from_the_command_line_with_the_stock_trainer(tmp_path, tiny_overrides):
    command = [
        sys.executable,
        str(REPO / "projects" / "MaskScoring" / "train_net.py"),
        "--config-file",
        str(REPO / "projects" / "MaskScoring" / "configs" / "mask_scoring_R18_FPN_shapes.yaml"),
        *tiny_overrides,
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        "2",
        "DATASETS.TEST",
        "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "OUTPUT_DIR",
        str(tmp_path),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # Run from the repository so the shapes dataset is generated (once) under its datasets/.
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    last = records[-1]
    assert last["iteration"] == 1
    for name in ("loss_maskiou", "loss_mask", "loss_cls", "loss_rpn_cls", "total_loss"):
        assert math.isfinite(last[name]), name
    assert 0 <= last["mask_scoring/mask_iou"] <= 1
    assert math.isfinite(last["mask_scoring/iou_abs_error"])
    assert (tmp_path / "model_final.pth").is_file()


def test_no_foreground_gives_a_zero_loss_connected_to_every_parameter():
    head = MaskIoUHead(
        ShapeSpec(channels=4, height=2, width=2), num_classes=3, conv_dims=[8, 8], fc_dims=[16], conv_norm="BN"
    ).train()
    empty = Instances(
        (16, 16),
        proposal_boxes=Boxes(torch.zeros(0, 4)),
        gt_classes=torch.zeros(0, dtype=torch.int64),
        gt_masks=BitMasks(torch.zeros(0, 16, 16)),
    )
    with EventStorage(0):
        losses = head(torch.zeros(0, 4, 2, 2), torch.zeros(0, 3, 4, 4), [empty])
    assert losses["loss_maskiou"].item() == 0
    losses["loss_maskiou"].backward()  # distributed training needs a gradient for every parameter
    assert all(p.grad is not None and not p.grad.any() for p in head.parameters())
