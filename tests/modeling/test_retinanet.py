"""
RetinaNet: the focal loss against torchvision, the head's shapes and initialization, its losses and
detections on hand-built cases, the configs, a few training steps and the docs' example. Detectron2's
RetinaNet on the same weights is tests/differential/test_retinanet_{default,gn}.py.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from detlib.config import get_cfg
from detlib.layers import ShapeSpec, sigmoid_focal_loss
from detlib.layers.losses import build_box_loss, build_classification_loss
from detlib.model_zoo import get_checkpoint_url, get_config_file
from detlib.modeling import DefaultAnchorGenerator, build_model
from detlib.modeling.box_regression import Box2BoxTransform
from detlib.modeling.dense_heads import RetinaNetHead
from detlib.modeling.matcher import Matcher
from detlib.modeling.meta_arch import RetinaNet
from detlib.structures import Boxes, ImageList, Instances
from detlib.utils.events import EventStorage

REPO = Path(__file__).resolve().parents[2]
# The COCO config shrunk for speed.
SMALL = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.RETINANET.NUM_CLASSES", 5, "MODEL.RETINANET.NUM_CONVS", 2, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
]  # fmt: skip


def _small_cfg(*overrides):
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([str(v) if not isinstance(v, str) else v for v in SMALL + list(overrides)])
    return cfg


def _head(num_classes=3, in_channels=4, sizes=((8,),), ratios=((1.0,),), strides=(8,), **kwargs):
    generator = DefaultAnchorGenerator(
        sizes=[list(s) for s in sizes], aspect_ratios=[list(r) for r in ratios], strides=list(strides)
    )
    args = dict(
        in_features=[f"p{int(math.log2(s))}" for s in strides],
        input_shape=[ShapeSpec(channels=in_channels)] * len(strides),
        num_classes=num_classes,
        anchor_generator=generator,
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
        conv_dims=[in_channels, in_channels],
    )
    args.update(kwargs)
    return RetinaNetHead(**args)


# Focal loss ------------------------------------------------------------------------------------------


def test_focal_loss_by_hand():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0])
    alpha, gamma = 0.25, 2.0
    expected = []
    for x, t in zip(logits.tolist(), targets.tolist()):
        p = 1 / (1 + math.exp(-x))
        p_t = p if t == 1 else 1 - p
        alpha_t = alpha if t == 1 else 1 - alpha
        expected.append(-alpha_t * (1 - p_t) ** gamma * math.log(p_t))
    got = sigmoid_focal_loss(logits, targets, alpha, gamma)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 1.0), (-1, 0.0), (0.75, 3.0)])
def test_focal_loss_matches_torchvision(alpha, gamma):
    torch.manual_seed(0)
    logits = torch.randn(50, 7) * 4
    targets = (torch.rand(50, 7) > 0.8).float()
    expected = tv_sigmoid_focal_loss(logits, targets, alpha, gamma, reduction="sum")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha, gamma, reduction="sum"), expected)
    binary = build_classification_loss("focal", alpha=alpha, gamma=gamma).binary
    torch.testing.assert_close(binary(logits.flatten(), targets.flatten(), None), expected)


# Head ------------------------------------------------------------------------------------------------


def test_head_shapes_order_and_initialization():
    torch.manual_seed(0)
    head = _head(
        num_classes=3, in_channels=8, sizes=((8, 10, 12), (16, 20, 24)), ratios=((0.5, 1.0, 2.0),), strides=(8, 16)
    )
    features = [torch.randn(2, 8, 6, 5), torch.randn(2, 8, 3, 3)]
    logits, deltas = head.predict(features)
    assert [tuple(x.shape) for x in logits] == [(2, 6 * 5 * 9, 3), (2, 3 * 3 * 9, 3)]
    assert [tuple(x.shape) for x in deltas] == [(2, 6 * 5 * 9, 4), (2, 3 * 3 * 9, 4)]
    # Prediction index (row, column, anchor) -> the raw map's channel anchor * K + class at that place.
    raw = head.cls_score(head.cls_subnet(features[0]))
    n, row, col, anchor, k = 1, 4, 2, 7, 2
    assert logits[0][n, (row * 5 + col) * 9 + anchor, k] == raw[n, anchor * 3 + k, row, col]
    raw_deltas = head.bbox_pred(head.bbox_subnet(features[0]))
    torch.testing.assert_close(
        deltas[0][n, (row * 5 + col) * 9 + anchor], raw_deltas[n, anchor * 4 : anchor * 4 + 4, row, col]
    )
    # Every class starts at the prior probability; the convs start small and unbiased.
    torch.testing.assert_close(torch.sigmoid(head.cls_score.bias), torch.full((27,), 0.01))
    assert head.bbox_pred.bias.abs().max() == 0
    assert 0.005 < head.cls_subnet[0].weight.std() < 0.015
    with_parameters = [name for name, child in head.named_children() if any(True for _ in child.parameters())]
    assert with_parameters == ["cls_subnet", "bbox_subnet", "cls_score", "bbox_pred"]


def test_head_with_group_norm_and_refused_batch_norm():
    head = _head(in_channels=32, norm="GN")
    assert [type(m).__name__ for m in head.cls_subnet] == ["Conv2d", "GroupNorm", "ReLU"] * 2
    with pytest.raises(ValueError, match="BatchNorm"):
        _head(norm="BN")


# Losses on a hand-built case ----------------------------------------------------------------------------

# gt A (class 1) and gt B (class 0); each anchor's IoU with its best gt is in the comment.
GT = Instances(
    (64, 64), gt_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])), gt_classes=torch.tensor([1, 0])
)
ANCHORS = Boxes(
    torch.tensor(
        [
            [0.0, 0, 10, 10],  # A, 1.0: foreground, class 1
            [0, 0, 10, 9],  # A, 0.9: foreground, class 1
            [0, 0, 10, 4.5],  # A, 0.45: in the ignore band [0.4, 0.5)
            [20, 20, 30, 25],  # B, 0.5: foreground, class 0
            [50, 50, 60, 60],  # none: background
            [0, 0, 10, 3],  # A, 0.3: background
        ]
    )
)


def test_label_anchors_with_ignore_band():
    head = _head(num_classes=3)
    labels, boxes = head.label_anchors([ANCHORS], [GT])
    assert labels.tolist() == [[1, 1, -1, 0, 3, 3]]
    torch.testing.assert_close(boxes[0, [0, 1, 3]], GT.gt_boxes.tensor[[0, 0, 1]])
    empty = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64))
    labels, _ = head.label_anchors([ANCHORS], [empty])
    assert labels.tolist() == [[3] * 6]


def test_losses_by_hand_with_moving_normalizer():
    torch.manual_seed(0)
    beta = 0.1
    head = _head(num_classes=3, box_loss=build_box_loss("smooth_l1", beta=beta), loss_weight={"loss_box_reg": 2.0})
    logits = torch.randn(1, 6, 3)
    deltas = torch.randn(1, 6, 4) * 0.3
    with EventStorage(0) as storage:
        losses = head.losses([ANCHORS], ([logits], [deltas]), [GT])
        assert storage.history("num_pos_anchors").latest() == 3

    valid = [0, 1, 3, 4, 5]
    targets = torch.tensor([[0.0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    focal = tv_sigmoid_focal_loss(logits[0, valid], targets, alpha=0.25, gamma=2.0, reduction="sum")
    # Deltas (dx, dy, dw, dh) from anchor to gt, weights 1: A from a0 and a1, B from a3.
    target_deltas = torch.tensor(
        [[0.0, 0, 0, 0], [0, (5 - 4.5) / 9, 0, math.log(10 / 9)], [0, (25 - 22.5) / 5, 0, math.log(10 / 5)]]
    )
    box = F.smooth_l1_loss(deltas[0, [0, 1, 3]], target_deltas, beta=beta, reduction="sum")
    normalizer = 0.9 * 100 + 0.1 * 3
    torch.testing.assert_close(losses["loss_cls"], focal / normalizer)
    torch.testing.assert_close(losses["loss_box_reg"], 2.0 * box / normalizer)

    # The normalizer is a moving average: a second step with no positive at all counts as 1.
    no_gt = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64))
    with EventStorage(0):
        losses = head.losses([ANCHORS], ([logits], [deltas]), [no_gt])
    normalizer = 0.9 * normalizer + 0.1 * 1
    all_negative = tv_sigmoid_focal_loss(logits[0], torch.zeros(6, 3), alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(losses["loss_cls"], all_negative / normalizer)
    assert losses["loss_box_reg"] == 0


# Inference -----------------------------------------------------------------------------------------------


def test_inference_threshold_topk_and_class_wise_nms():
    level0 = Boxes(torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]))
    level1 = Boxes(torch.tensor([[100.0, 100, 120, 120]]))
    # Scores: a0/c0 0.9; a1/c0 0.8 (overlaps a0, same class); a1/c1 0.7 (other class); a2/c0 0.3;
    # a2/c1 0.04 (below the threshold); the other level's anchor 0.6 for c1.
    scores0 = torch.tensor([[0.9, 0.01], [0.8, 0.7], [0.3, 0.04]])
    scores1 = torch.tensor([[0.02, 0.6]])
    scores = [scores0, scores1]
    deltas = [torch.zeros(3, 4), torch.zeros(1, 4)]

    head = _head(num_classes=2, score_thresh=0.05, nms_thresh=0.5)
    out = head.decode_image([level0, level1], scores, deltas, (200, 200))
    assert out.pred_classes.tolist() == [0, 1, 1, 0]
    torch.testing.assert_close(out.scores, torch.tensor([0.9, 0.7, 0.6, 0.3]))
    torch.testing.assert_close(
        out.pred_boxes.tensor, torch.cat([level0.tensor[[0, 1]], level1.tensor, level0.tensor[[2]]])
    )
    assert box_iou(level0.tensor[:1], level0.tensor[1:2]).item() > 0.5  # the one NMS removed

    # Top 2 per level: level 0 keeps 0.9 and 0.8 (then NMS drops 0.8), level 1 its 0.6.
    head = _head(num_classes=2, topk_candidates=2)
    out = head.decode_image([level0, level1], scores, deltas, (200, 200))
    torch.testing.assert_close(out.scores, torch.tensor([0.9, 0.6]))
    head = _head(num_classes=2, max_detections_per_image=1)
    assert head.decode_image([level0, level1], scores, deltas, (200, 200)).scores.tolist() == [pytest.approx(0.9)]


def test_inference_decodes_deltas():
    anchors = Boxes(torch.tensor([[10.0, 10, 30, 50]]))
    delta = torch.tensor([[0.1, -0.2, math.log(2.0), 0.0]])
    head = _head(num_classes=1)
    out = head.decode_image([anchors], [torch.tensor([[0.5]])], [delta], (100, 100))
    # Center (20, 30) moves by (0.1 * 20, -0.2 * 40); the width doubles.
    torch.testing.assert_close(out.pred_boxes.tensor, torch.tensor([[2.0, 2, 42, 42]]))


# Configs and the whole model -----------------------------------------------------------------------------


def test_coco_configs_build_detectron2s_retinanet():
    for name, max_iter in (("retinanet_R_50_FPN_1x", 90000), ("retinanet_R_50_FPN_3x", 270000)):
        cfg = get_cfg()
        cfg.merge_from_file(get_config_file(f"COCO-Detection/{name}.yaml"))
        assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet" and cfg.SOLVER.MAX_ITER == max_iter
        assert cfg.SOLVER.BASE_LR == 0.01 and cfg.MODEL.RESNETS.DEPTH == 50
        assert get_checkpoint_url(f"COCO-Detection/{name}.yaml").startswith(f"detectron2://COCO-Detection/{name}/")
    sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
    assert len(sizes) == 5 and all(len(level) == 3 for level in sizes)
    assert sizes[1] == pytest.approx([64, 64 * 2 ** (1 / 3), 64 * 2 ** (2 / 3)])

    model = build_model(_small_cfg())
    assert isinstance(model, RetinaNet)
    assert model.backbone.output_shape()["p7"].stride == 128
    assert model.head.anchor_generator.num_anchors == [9] * 5
    assert model.head.cls_loss.name == "focal" and model.head.cls_loss.params == {"alpha": 0.25, "gamma": 2.0}
    assert model.head.box_loss.name == "smooth_l1" and model.head.box_loss.params == {"beta": 0.0}
    assert not any(k.startswith("head.anchor_generator") for k in model.state_dict())


def test_losses_selected_and_weighted_by_config():
    model = build_model(
        _small_cfg("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "giou", "MODEL.RETINANET.FOCAL_LOSS_GAMMA", 1.5)
    )
    assert model.head.box_loss.name == "giou" and model.head.cls_loss.params["gamma"] == 1.5
    # A loss without alpha / gamma is built without them.
    model = build_model(_small_cfg("MODEL.RETINANET.CLS_LOSS_TYPE", "cross_entropy"))
    assert model.head.cls_loss.name == "cross_entropy" and model.head.cls_loss.params == {"label_smoothing": 0.0}
    cfg = _small_cfg()
    cfg.MODEL.LOSS_WEIGHTS.loss_box_reg = 3.0
    assert build_model(cfg).head.loss_weight == {"loss_cls": 1.0, "loss_box_reg": 3.0}
    cfg = _small_cfg()
    cfg.MODEL.RETINANET.CLS_LOSS_PARAMS.alpha = 0.5
    with pytest.raises(ValueError, match="FOCAL_LOSS_ALPHA"):
        build_model(cfg)


def test_yaml_and_python_configs_build_the_same_retinanet():
    """The COCO YAML config and Detectron2's Python config (through RetinaNet's Detectron2 keywords) give the same
    parameters and the same head settings, so Detectron2's RetinaNet checkpoints load into either."""
    from detlib import model_zoo
    from detlib.config import instantiate

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    yaml_model = build_model(cfg)
    python_model = instantiate(model_zoo.get_config("COCO-Detection/retinanet_R_50_FPN_1x.py").model)
    yaml_head, python_head = yaml_model.head, python_model.head
    signature = {name: tuple(value.shape) for name, value in yaml_model.state_dict().items()}
    assert signature == {name: tuple(value.shape) for name, value in python_model.state_dict().items()}
    for name in ("in_features", "num_classes", "num_anchors", "score_thresh", "topk_candidates", "nms_thresh"):
        assert getattr(yaml_head, name) == getattr(python_head, name), name
    assert yaml_head.max_detections_per_image == python_head.max_detections_per_image
    for name in ("cls_loss", "box_loss"):
        yaml_loss, python_loss = getattr(yaml_head, name), getattr(python_head, name)
        assert (yaml_loss.name, yaml_loss.params) == (python_loss.name, python_loss.params), name
    yaml_anchors, python_anchors = yaml_head.anchor_generator, python_head.anchor_generator
    assert yaml_anchors.strides == python_anchors.strides
    for ours, theirs in zip(yaml_anchors.cell_anchors, python_anchors.cell_anchors):
        torch.testing.assert_close(ours, theirs)
    assert yaml_head.box2box_transform.weights == python_head.box2box_transform.weights
    assert yaml_head.anchor_matcher.thresholds == python_head.anchor_matcher.thresholds


def test_detectron2_keywords_configure_the_head():
    backbone = build_model(_small_cfg()).backbone
    head = RetinaNetHead(input_shape=[ShapeSpec(channels=32)] * 3, num_classes=4, num_anchors=9, conv_dims=[32])
    with pytest.raises(RuntimeError, match="no levels"):
        head(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), {})
    sizes = [[s, s * 1.25, s * 1.5] for s in (32, 64, 128)]
    generator = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32])
    matcher = Matcher([0.3, 0.6], [0, -1, 1], allow_low_quality_matches=False)
    transform = Box2BoxTransform((2.0, 2.0, 1.0, 1.0))
    common = dict(backbone=backbone, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)
    model = RetinaNet(
        **common,
        head=head,
        head_in_features=["p3", "p4", "p5"],
        anchor_generator=generator,
        anchor_matcher=matcher,
        box2box_transform=transform,
        num_classes=4,
        focal_loss_gamma=1.5,
        smooth_l1_beta=0.2,
        test_score_thresh=0.1,
        test_topk_candidates=10,
        test_nms_thresh=0.4,
        max_detections_per_image=3,
    )
    assert model.head is head and head.in_features == ["p3", "p4", "p5"]
    assert head.anchor_generator is generator and head.anchor_matcher is matcher
    assert head.box2box_transform is transform
    assert head.cls_loss.name == "focal" and head.cls_loss.params == {"alpha": 0.25, "gamma": 1.5}
    assert head.box_loss.name == "smooth_l1" and head.box_loss.params == {"beta": 0.2}
    assert (head.score_thresh, head.topk_candidates, head.nms_thresh, head.max_detections_per_image) == (
        0.1,
        10,
        0.4,
        3,
    )
    model.train()
    with EventStorage(0):
        losses = model(_inputs())
    assert set(losses) == {"loss_cls", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())

    # The type alone: its beta is the head's only while the type is kept.
    RetinaNet(**common, head=head, box_reg_loss_type="giou")
    assert head.box_loss.name == "giou"
    with pytest.raises(ValueError, match="num_classes"):
        RetinaNet(**common, head=head, num_classes=5)
    with pytest.raises(ValueError, match="3 levels"):
        RetinaNet(**common, head=head, head_in_features=["p3", "p4"])
    with pytest.raises(ValueError, match="9 anchors"):
        RetinaNet(
            **common, head=head, anchor_generator=DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[1.0], strides=[8])
        )
    with pytest.raises(ValueError, match="vis_period"):
        RetinaNet(**common, head=head, vis_period=20)


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    sizes = [(96, 128), (120, 80)]
    inputs = []
    for i, (h, w) in enumerate(sizes):
        image = torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8)
        boxes = torch.tensor([[8.0, 10, 50, 70], [30, 20, 70, 60], [5, 40, 75, 90]])[: 2 + i]
        classes = torch.tensor([1, 4, 2])[: 2 + i]
        instances = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=classes)
        inputs.append({"image": image, "instances": instances, "height": 2 * h, "width": 2 * w})
    return inputs


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("Shapes/retinanet_shapes.yaml"))
    cfg.merge_from_list(["MODEL.RETINANET.NUM_CLASSES", "5", "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.FPN.NORM", ""])
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs = _inputs()
    totals = []
    with EventStorage(0):
        for _ in range(8):
            losses = model(inputs)
            assert set(losses) == {"loss_cls", "loss_box_reg"}
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
    assert all(math.isfinite(t) for t in totals)
    assert totals[-1] < 0.8 * totals[0], totals

    model.eval()
    with torch.no_grad():
        outputs = model([{k: v for k, v in x.items() if k != "instances"} for x in inputs])
    for out, x in zip(outputs, inputs):
        instances = out["instances"]
        assert instances.image_size == (x["height"], x["width"])
        assert len(instances) <= cfg.TEST.DETECTIONS_PER_IMAGE
        assert bool((instances.scores[:-1] >= instances.scores[1:]).all())


def test_shapes_config_trains_and_evaluates_with_train_net(tmp_path):
    env = dict(os.environ, DETLIB_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [
        sys.executable, str(REPO / "tests" / "tools" / "shapes_train_net.py"),
        "--config-file", str(REPO / "configs" / "Shapes" / "retinanet_shapes.yaml"),
        "DATASETS.TRAIN", '("shapes_mini_train",)', "DATASETS.TEST", '("shapes_mini_val",)',
        "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
        "DATALOADER.NUM_WORKERS", "0", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "OUTPUT_DIR", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert re.search(r"loss_cls: [0-9.]+\s+loss_box_reg: [0-9.]+", log), log[-3000:]
    assert re.search(r"Final shapes_mini_val bbox: AP [0-9.]+", log), log[-3000:]
    assert (tmp_path / "out" / "model_final.pth").is_file()


# The example in docs/extend.md -------------------------------------------------------------------------


def test_docs_center_sampling_example():
    text = (REPO / "docs" / "extend.md").read_text()
    (code,) = re.findall(r"```python\n# retinanet example: center_sampling\n(.*?)```", text, re.DOTALL)
    namespace = {"__name__": "docs_retinanet_example"}
    exec(compile(code, "<docs/extend.md retinanet example>", "exec"), namespace)

    model = build_model(_small_cfg("MODEL.DENSE_HEAD.NAME", "CenterSampledHead"))
    assert type(model) is RetinaNet
    assert type(model.head).__name__ == "CenterSampledHead"
    gt = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10]])), gt_classes=torch.tensor([2]))
    # The gt's best anchor (IoU 0.09, foreground as its best match) has its center (11, 11) outside it.
    anchors = Boxes(torch.tensor([[6.0, 6, 16, 16], [50, 50, 60, 60]]))
    base = _head(num_classes=5)
    assert base.label_anchors([anchors], [gt])[0].tolist() == [[2, 5]]
    assert model.head.label_anchors([anchors], [gt])[0].tolist() == [[-1, 5]]
    with EventStorage(0):
        losses = model(_inputs())
    assert set(losses) == {"loss_cls", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
