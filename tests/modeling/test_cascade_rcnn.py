"""
CascadeROIHeads: each stage's labels at its IoU, its box coding and losses, the detached boxes and
scaled gradients between stages, the averaged scores, the zoo configs, and Detectron2's checkpoints
and outputs on the same weights.
"""

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detlib.checkpoint import DetectionCheckpointer
from detlib.config import ConfigKeyError, get_cfg
from detlib.layers import ShapeSpec
from detlib.model_zoo import get_checkpoint_url, get_config_file
from detlib.modeling import Matcher, build_model
from detlib.modeling.roi_heads import CascadeROIHeads, build_roi_heads
from detlib.structures import Boxes, ImageList, Instances
from detlib.utils.events import EventStorage

REPO = Path(__file__).resolve().parents[2]
ZOO_CONFIGS = ["Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml", "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"]
# Stage 0 labels at IoU 0.5, stage 1 at 0.6, stage 2 at 0.7, each with its own box coding.
IOUS = (0.5, 0.6, 0.7)
CODER_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
# Background logit last.
CLASS_BIAS = [0.5, 1.0, -0.5, 2.0]


def _heads_cfg(*overrides):
    """The 1x zoo config's RoI heads on one 4-channel feature map of stride 4, every proposal sampled."""
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(ZOO_CONFIGS[0]))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.MASK_ON", "False",
            "MODEL.ROI_HEADS.IN_FEATURES", "['p2']",
            "MODEL.ROI_HEADS.NUM_CLASSES", "3",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "1000",
            "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False",
            "MODEL.ROI_BOX_HEAD.FC_DIM", "8",
            "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "2",
            *[str(x) for x in overrides],
        ]
    )  # fmt: skip
    return cfg


def _heads(*overrides) -> CascadeROIHeads:
    torch.manual_seed(0)
    return build_roi_heads(_heads_cfg(*overrides), {"p2": ShapeSpec(channels=4, stride=4)})


def _set_constant_predictions(heads, class_bias, delta_bias):
    """Make stage s predict the logits `class_bias[s]` and the deltas `delta_bias[s]` for every RoI."""
    for predictor, logits, deltas in zip(heads.box_predictor, class_bias, delta_bias):
        with torch.no_grad():
            for layer, bias in ((predictor.cls_score, logits), (predictor.bbox_pred, deltas)):
                layer.weight.zero_()
                layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def _deltas_by_hand(src, dst, weights):
    """The (dx, dy, dw, dh) R-CNN coding of box `dst` relative to box `src`, from its definition."""
    sw, sh, dw, dh = src[2] - src[0], src[3] - src[1], dst[2] - dst[0], dst[3] - dst[1]
    wx, wy, ww, wh = weights
    dx = wx * ((dst[0] + dw / 2) - (src[0] + sw / 2)) / sw
    dy = wy * ((dst[1] + dh / 2) - (src[1] + sh / 2)) / sh
    return [dx, dy, ww * math.log(dw / sw), wh * math.log(dh / sh)]


GT_BOX = [20.0, 20.0, 60.0, 60.0]
# Same x-range as the gt, shorter: IoU 40/40 = 1, 26/40 = 0.65, 22/40 = 0.55, 16/40 = 0.4.
ROIS = [[20.0, 20.0, 60.0, 60.0], [20.0, 20.0, 60.0, 46.0], [20.0, 20.0, 60.0, 42.0], [20.0, 20.0, 60.0, 36.0]]
ROI_IOUS = [1.0, 0.65, 0.55, 0.4]


def _one_image(rois, gt_boxes=(GT_BOX,), gt_classes=(1,)):
    proposals = Instances((100, 100), proposal_boxes=Boxes(torch.tensor(rois)))
    proposals.objectness_logits = torch.zeros(len(rois))
    gt = Instances(
        (100, 100), gt_boxes=Boxes(torch.tensor(gt_boxes).reshape(-1, 4)), gt_classes=torch.tensor(gt_classes)
    )
    return proposals, gt


def _features(seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return {"p2": torch.randn(1, 4, 25, 25, generator=g).requires_grad_(requires_grad)}


def _images():
    return ImageList(torch.zeros(1, 3, 100, 100), [(100, 100)])


def test_each_stage_labels_at_its_iou_and_codes_boxes_with_its_weights():
    heads = _heads().train()
    assert [m.thresholds[1] for m in heads.proposal_matchers] == list(IOUS)
    # Zero deltas: every stage's boxes are its RoIs, so all stages see the same four boxes.
    _set_constant_predictions(heads, [CLASS_BIAS] * 3, [[0.0] * 4] * 3)
    proposals, gt = _one_image(ROIS)
    with EventStorage(0) as storage:
        _, losses = heads(_images(), _features(), [proposals], [gt])

    bias = torch.tensor(CLASS_BIAS)
    nll = (torch.logsumexp(bias, 0) - bias).tolist()  # the loss of a RoI labelled with each class
    for stage, threshold in enumerate(IOUS):
        foreground = [i for i, iou in enumerate(ROI_IOUS) if iou >= threshold]
        assert len(foreground) == 3 - stage  # 0.5: A, B, C; 0.6: A, B; 0.7: A
        expected_cls = sum(nll[1] if i in foreground else nll[3] for i in range(4)) / 4
        assert losses[f"loss_cls_stage{stage}"].item() == pytest.approx(expected_cls, rel=1e-6)
        # L1 of the zero predicted deltas against the stage's gt deltas, over all four RoIs.
        l1 = sum(abs(d) for i in foreground for d in _deltas_by_hand(ROIS[i], GT_BOX, CODER_WEIGHTS[stage]))
        assert losses[f"loss_box_reg_stage{stage}"].item() == pytest.approx(l1 / 4, rel=1e-5)
        prefix = "" if stage == 0 else f"stage{stage}/"
        assert storage.latest()[f"{prefix}roi_head/num_fg_samples"][0] == len(foreground)
        assert storage.latest()[f"{prefix}roi_head/num_bg_samples"][0] == 4 - len(foreground)
        assert f"stage{stage}/fast_rcnn/cls_accuracy" in storage.latest()
    assert set(losses) == {f"{n}_stage{s}" for n in ("loss_cls", "loss_box_reg") for s in range(3)}


def test_an_image_without_gt_is_all_background_in_every_stage():
    heads = _heads().train()
    _set_constant_predictions(heads, [CLASS_BIAS] * 3, [[0.0] * 4] * 3)
    proposals, gt = _one_image(ROIS, gt_boxes=(), gt_classes=())
    with EventStorage(0):
        _, losses = heads(_images(), _features(), [proposals], [gt])
    bias = torch.tensor(CLASS_BIAS)
    for stage in range(3):
        assert losses[f"loss_cls_stage{stage}"].item() == pytest.approx(
            (torch.logsumexp(bias, 0) - bias[3]).item(), rel=1e-6
        )
        assert losses[f"loss_box_reg_stage{stage}"].item() == 0


def test_no_gradient_reaches_earlier_stages_and_shared_features_get_the_stage_mean():
    heads = _heads().train()
    proposals, gt = _one_image(ROIS)
    features = _features(requires_grad=True)
    with EventStorage(0):
        sampled, losses = heads(_images(), features, [proposals], [gt])
    later = sum(v for k, v in losses.items() if not k.endswith("_stage0"))
    later.backward(retain_graph=True)
    for module in (heads.box_head[0], heads.box_predictor[0]):
        assert all(p.grad is None for p in module.parameters())  # stage 0's boxes are detached
    for stage in (1, 2):
        assert heads.box_predictor[stage].bbox_pred.weight.grad.abs().sum() > 0
    assert features["p2"].grad.abs().sum() > 0  # later stages still train the features they pool

    # Stage 0's loss reaches the pooled features scaled by 1 / 3: the same computation without the
    # cascade's scaling gives three times the gradient.
    features["p2"].grad = None
    losses["loss_cls_stage0"].backward()
    reference = features["p2"].detach().clone().requires_grad_(True)
    pooled = heads.box_pooler([reference], [p.proposal_boxes for p in sampled])
    with EventStorage(0):
        direct = heads.box_predictor[0].losses(heads.box_predictor[0](heads.box_head[0](pooled)), sampled)
    direct["loss_cls"].backward()
    torch.testing.assert_close(features["p2"].grad * 3, reference.grad, rtol=1e-5, atol=1e-9)


def test_inference_averages_the_stages_scores_on_the_last_stages_boxes():
    heads = _heads(
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        0.0,
        "MODEL.ROI_HEADS.NMS_THRESH_TEST",
        1.0,
        "TEST.DETECTIONS_PER_IMAGE",
        -1,
    ).eval()
    stage_logits = [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 3.0, 1.0]]
    # Stage 1 moves each box down by 0.1 of its height (dy = 2 / wy), stage 2 right by 0.1 of its
    # width (dx = 3 / wx); stage 0 keeps it. Only the last stage's output is the detection's box.
    _set_constant_predictions(heads, stage_logits, [[0.0] * 4, [0.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    rois = [[10.0, 10.0, 30.0, 40.0], [50.0, 50.0, 90.0, 70.0]]
    proposals, _ = _one_image(rois)
    with torch.no_grad():
        (detections,), losses = heads(_images(), _features(), [proposals])
    assert losses == {}

    mean_probs = torch.stack([torch.tensor(b).softmax(0) for b in stage_logits]).mean(0)
    expected = []
    for x0, y0, x1, y1 in rois:
        dx, dy = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
        box = [x0 + dx, y0 + dy, x1 + dx, y1 + dy]
        expected += [(box, c, mean_probs[c].item()) for c in range(3)]
    found = sorted(
        zip(detections.pred_boxes.tensor.tolist(), detections.pred_classes.tolist(), detections.scores.tolist()),
        key=lambda d: (d[0][0], d[1]),
    )
    assert len(found) == len(expected) == 6
    for (box, cls, score), (exp_box, exp_cls, exp_score) in zip(found, expected):
        assert cls == exp_cls
        assert box == pytest.approx(exp_box, abs=1e-4)
        assert score == pytest.approx(exp_score, rel=1e-6)
    # Not any one stage's scores: the mean differs from each.
    assert all((torch.tensor(b).softmax(0)[:3] - mean_probs[:3]).abs().max() > 0.05 for b in stage_logits)


def test_per_stage_loss_weights_multiply_the_shared_ones():
    _, gt = _one_image(ROIS)
    results = []
    for overrides in ([], ["MODEL.LOSS_WEIGHTS.loss_cls_stage1", 0.5, "MODEL.LOSS_WEIGHTS.loss_box_reg", 2.0]):
        heads = _heads(*overrides).train()
        _set_constant_predictions(heads, [CLASS_BIAS] * 3, [[0.0] * 4] * 3)
        with EventStorage(0):
            results.append(heads(_images(), _features(), [_one_image(ROIS)[0]], [gt])[1])
    plain, weighted = results
    for stage in range(3):
        cls_factor = 0.5 if stage == 1 else 1.0
        name = f"loss_cls_stage{stage}"
        assert weighted[name].item() == pytest.approx(cls_factor * plain[name].item(), rel=1e-6)
        name = f"loss_box_reg_stage{stage}"
        assert weighted[name].item() == pytest.approx(2.0 * plain[name].item(), rel=1e-6)
    with pytest.raises(ValueError, match="loss_box_reg_stage2.*-1.0"):
        _heads("MODEL.LOSS_WEIGHTS.loss_box_reg_stage2", -1.0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False], "CLS_AGNOSTIC_BBOX_REG"),
        (["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5, 0.6)"], "IOUS and BBOX_REG_WEIGHTS"),
        (["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.4, 0.6, 0.7)"], r"IOUS\[0\].*IOU_THRESHOLDS\[0\]"),
        (["MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", True], "TRAIN_ON_PRED_BOXES"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        _heads(*overrides)


def test_constructor_checks_one_part_per_stage():
    heads = _heads()
    parts = dict(
        box_in_features=["p2"],
        box_pooler=heads.box_pooler,
        num_classes=3,
        batch_size_per_image=8,
        positive_fraction=0.25,
    )
    with pytest.raises(ValueError, match="same number"):
        CascadeROIHeads(
            box_heads=list(heads.box_head),
            box_predictors=list(heads.box_predictor)[:2],
            proposal_matchers=[Matcher([0.5], [0, 1])] * 3,
            **parts,
        )
    with pytest.raises(TypeError, match="one per stage"):
        CascadeROIHeads(
            box_heads=list(heads.box_head),
            box_predictors=list(heads.box_predictor),
            proposal_matchers=[Matcher([0.5], [0, 1])] * 3,
            proposal_matcher=Matcher([0.5], [0, 1]),
            **parts,
        )


def _tiny_model_cfg(config, *overrides):
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(config))
    cfg.merge_from_list([str(x) for x in TINY_MODEL + list(overrides)])
    return cfg


# The zoo model made small (and every anchor and proposal sampled, so no random draw) for the
# comparisons with Detectron2.
TINY_MODEL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.ROI_HEADS.NUM_CLASSES", 3,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 100000,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 16,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 100000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
]  # fmt: skip


def test_an_unknown_stage_loss_weight_is_rejected():
    with pytest.raises(ConfigKeyError, match="loss_cls_stage3"):
        build_model(_tiny_model_cfg(ZOO_CONFIGS[0], "MODEL.LOSS_WEIGHTS.loss_cls_stage3", 2.0))


@pytest.mark.parametrize("config", ZOO_CONFIGS)
def test_zoo_configs_are_detectron2s(config):
    pytest.importorskip("detectron2")
    from detectron2 import model_zoo as d2_zoo
    from detectron2.config import get_cfg as d2_get_cfg

    ours, theirs = get_cfg(), d2_get_cfg()
    ours.merge_from_file(get_config_file(config))
    theirs.merge_from_file(d2_zoo.get_config_file(config))
    for section in ("MODEL", "SOLVER", "INPUT", "DATASETS", "TEST"):
        for key, value in theirs[section].items():
            if key in ours[section] and not isinstance(value, dict):
                assert ours[section][key] == value, f"{section}.{key}"
    for key in ("ROI_HEADS", "ROI_BOX_HEAD", "ROI_BOX_CASCADE_HEAD", "RPN", "RESNETS", "FPN", "ROI_MASK_HEAD"):
        common = set(ours.MODEL[key]) & set(theirs.MODEL[key])
        assert {k: ours.MODEL[key][k] for k in common} == {k: theirs.MODEL[key][k] for k in common}, key
    assert ours.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
    ours_url, theirs_url = get_checkpoint_url(config), d2_zoo.get_checkpoint_url(config)
    assert ours_url.split("/")[-2:] == theirs_url.split("/")[-2:]


def _spread_weights(state_dict, seed):
    """Detectron2's initial weights, with prediction layers that give spread-out scores and small box moves."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, value in state_dict.items():
        value = value.detach().clone()
        if name.endswith("cls_score.weight"):
            value = torch.randn(value.shape, generator=g) * 0.01
        elif name.endswith("cls_score.bias"):
            value = torch.zeros_like(value)
            value[-1] = 3.0  # a background bias, so that few boxes pass the score threshold
        elif name.endswith("bbox_pred.weight"):
            value = torch.randn(value.shape, generator=g) * 0.0005
        weights[name] = value.numpy()
    return weights


def _training_losses_and_gradients(net, structures, storage_class, image, polygons, gt_boxes, gt_classes):
    targets = structures.Instances(
        tuple(image.shape[1:]),
        gt_boxes=structures.Boxes(gt_boxes),
        gt_classes=gt_classes,
        gt_masks=structures.PolygonMasks(polygons),
    )
    net.train()
    with storage_class(0):
        losses = net([{"image": image, "instances": targets}])
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in losses.items()}, grads


def test_detectron2_checkpoint_loads_and_trains_the_same(tmp_path):
    # Detections, masks and losses over several seeds: tests/differential/test_cascade_mask_rcnn.py.
    # Here: the gradients, which carry the stages' detaching and the 1/3 scaling of the features' share.
    pytest.importorskip("detectron2")
    import detectron2.structures as d2_structures
    from detectron2 import model_zoo as d2_zoo
    from detectron2.config import get_cfg as d2_get_cfg
    from detectron2.modeling import build_model as d2_build_model
    from detectron2.utils.events import EventStorage as D2EventStorage

    import detlib.structures as our_structures

    d2_cfg = d2_get_cfg()
    d2_cfg.merge_from_file(d2_zoo.get_config_file(ZOO_CONFIGS[0]))
    d2_cfg.merge_from_list([str(x) for x in TINY_MODEL])
    torch.manual_seed(0)
    d2 = d2_build_model(d2_cfg)
    weights = _spread_weights(d2.state_dict(), seed=1)
    d2.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2"}, f)

    model = build_model(_tiny_model_cfg(ZOO_CONFIGS[0]))
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(str(path))
    assert checkpointer.incompatible_keys == ([], [], [])
    assert "roi_heads.box_predictor.2.bbox_pred.weight" in weights  # Detectron2's names, per stage

    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 120, 144), generator=g, dtype=torch.uint8)
    gt = (
        [[np.array([10, 12, 70, 12, 70, 80, 10, 80.0])], [np.array([60, 40, 140, 40, 100, 110.0])]],
        torch.tensor([[10.0, 12.0, 70.0, 80.0], [60.0, 40.0, 140.0, 110.0]]),
        torch.tensor([0, 2]),
    )
    d2_losses, d2_grads = _training_losses_and_gradients(d2, d2_structures, D2EventStorage, image, *gt)
    losses, grads = _training_losses_and_gradients(model, our_structures, EventStorage, image, *gt)

    assert set(losses) == set(d2_losses)
    for name, value in d2_losses.items():
        assert value > 0, name  # every stage has foreground, so every term is exercised
        assert losses[name] == pytest.approx(value, rel=1e-4), name
    assert set(grads) == set(d2_grads)
    for name in ("backbone.fpn_output2.weight", "roi_heads.box_head.0.fc1.weight", "roi_heads.box_head.2.fc2.weight"):
        scale = d2_grads[name].abs().max()
        torch.testing.assert_close(grads[name] / scale, d2_grads[name] / scale, rtol=0, atol=1e-4)


def test_trains_on_shapes_with_the_stock_trainer(tmp_path):
    command = [
        sys.executable,
        str(REPO / "tests" / "tools" / "shapes_train_net.py"),
        "--config-file", str(REPO / "configs" / "Shapes" / "mask_rcnn_shapes.yaml"),
        "MODEL.ROI_HEADS.NAME", "CascadeROIHeads",
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True",
        "MODEL.FPN.OUT_CHANNELS", "16",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "8",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
        "DATASETS.TRAIN", "('shapes_mini_train',)",
        "DATASETS.TEST", "('shapes_mini_val',)",
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "3",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), DETLIB_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").read_text().splitlines()]
    last = next(r for r in reversed(records) if "total_loss" in r)
    assert last["iteration"] == 2
    # The final evaluation ran the cascade's inference, masks included, through the COCO evaluator.
    assert {"bbox/AP", "segm/AP"} <= set(records[-1])
    stage_losses = [f"{n}_stage{s}" for n in ("loss_cls", "loss_box_reg") for s in range(3)]
    for name in stage_losses + ["loss_mask", "loss_rpn_cls", "total_loss", "stage2/roi_head/num_fg_samples"]:
        assert math.isfinite(last[name]), name
    assert "loss_cls" not in last
    assert (tmp_path / "out" / "model_final.pth").is_file()
