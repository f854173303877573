"""FCOS by hand: the linear box coding, point assignment (center sampling, size ranges, smallest box), centerness
targets, the three losses and the sqrt(class * centerness) scores on tiny cases; the YAML and Detectron2-keyword
paths that configure the head."""

import math

import pytest
import torch

from detlib.config import get_cfg
from detlib.layers import ShapeSpec
from detlib.modeling import build_model
from detlib.modeling.box_regression import Box2BoxTransformLinear
from detlib.modeling.dense_heads import FCOSHead
from detlib.structures import Boxes, ImageList, Instances
from detlib.utils.events import EventStorage


def test_linear_transform_by_hand():
    transform = Box2BoxTransformLinear(normalize_by_size=True)
    point = torch.tensor([[0.0, 0.0, 8.0, 8.0]])  # center (4, 4), stride 8
    target = torch.tensor([[1.0, 2.0, 10.0, 20.0]])
    deltas = transform.get_deltas(point, target)
    torch.testing.assert_close(deltas, torch.tensor([[3 / 8, 2 / 8, 6 / 8, 16 / 8]]))
    torch.testing.assert_close(transform.apply_deltas(deltas, point), target)
    # Two boxes per source, one with negative distances (taken as 0: the box collapses on the center).
    two = transform.apply_deltas(torch.tensor([[1.0, 1.0, 1.0, 1.0, -1.0, 0.5, -2.0, 0.0]]), point)
    torch.testing.assert_close(two, torch.tensor([[-4.0, -4.0, 12.0, 12.0, 4.0, 0.0, 4.0, 4.0]]))
    unnormalized = Box2BoxTransformLinear(normalize_by_size=False)
    torch.testing.assert_close(unnormalized.get_deltas(point, target), torch.tensor([[3.0, 2.0, 6.0, 16.0]]))


def _head(num_levels: int = 3, strides=(8, 16, 32), num_classes: int = 2, **kwargs) -> FCOSHead:
    return FCOSHead(
        input_shape=[ShapeSpec(channels=4)] * num_levels,
        num_classes=num_classes,
        conv_dims=[4],
        in_features=[f"p{i}" for i in range(num_levels)],
        strides=list(strides),
        **kwargs,
    )


def _points(head: FCOSHead, sizes):
    return head.anchor_generator([torch.zeros(1, 1, h, w) for h, w in sizes])


def test_assignment_by_hand():
    # 160 x 160 image, strides 8 / 16 / 32: size ranges (0, 64), (64, 128), (128, inf).
    head = _head()
    anchors = _points(head, [(20, 20), (10, 10), (5, 5)])
    box = Boxes(torch.tensor([[0.0, 0.0, 150.0, 150.0]]))  # center (75, 75)
    eligible = head.match_points(anchors, box)[0] > 0
    per_level = eligible.split([400, 100, 25])
    # Stride 8: points 4 + 8k within 12 px of 75 (68, 76, 84) reach >= 75 > 64: none. Stride 32: the points
    # within 48 px (48, 80, 112) reach at most 112 < 128: none. Stride 16: 56, 72, 88 (within 24 px) in both
    # x and y, reaching 78 to 94: the 9 positives.
    assert per_level[0].sum() == 0 and per_level[2].sum() == 0
    centers = Boxes.cat(anchors).get_centers()[400:500][per_level[1]]
    assert sorted({float(x) for x in centers[:, 0]}) == [56.0, 72.0, 88.0]
    assert sorted({float(y) for y in centers[:, 1]}) == [56.0, 72.0, 88.0]
    assert per_level[1].sum() == 9


def _brute_force_labels(centers, strides, level_of, num_levels, boxes, classes, radius, background):
    """The FCOS rule point by point, in plain Python."""
    labels = []
    for (x, y), stride, level in zip(centers.tolist(), strides.tolist(), level_of):
        low = 0.0 if level == 0 else 4 * stride
        high = math.inf if level == num_levels - 1 else 8 * stride
        best, best_area = background, math.inf
        for (x0, y0, x1, y1), cls in zip(boxes.tolist(), classes.tolist()):
            distances = (x - x0, y - y0, x1 - x, y1 - y)
            near = abs(x - (x0 + x1) / 2) < radius * stride and abs(y - (y0 + y1) / 2) < radius * stride
            area = (x1 - x0) * (y1 - y0)
            if near and min(distances) > 0 and low < max(distances) < high and area < best_area:
                best, best_area = cls, area
        labels.append(best)
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_match_the_rule_point_by_point(seed):
    generator = torch.Generator().manual_seed(seed)
    head = _head(num_classes=5, center_sampling_radius=1.5)
    sizes = [(24, 32), (12, 16), (6, 8)]
    anchors = _points(head, sizes)
    xy = torch.rand(8, 2, generator=generator) * torch.tensor([256.0, 192.0])
    wh = torch.rand(8, 2, generator=generator) * 180 + 4
    boxes = torch.cat([xy, xy + wh], dim=1)  # overlapping boxes of distinct areas, some off the image
    classes = torch.randint(0, 5, (8,), generator=generator)
    gt = Instances((192, 256), gt_boxes=Boxes(boxes), gt_classes=classes)
    empty = Instances((192, 256), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64))
    labels, matched = head.label_points(anchors, [gt, empty])
    points = Boxes.cat(anchors)
    strides = points.tensor[:, 2] - points.tensor[:, 0]
    level_of = [level for level, (h, w) in enumerate(sizes) for _ in range(h * w)]
    expected = _brute_force_labels(points.get_centers(), strides, level_of, 3, boxes, classes, 1.5, 5)
    assert labels[0].tolist() == expected
    assert sum(label != 5 for label in expected) > 20
    assert (labels[1] == 5).all()
    positive = labels[0] != 5
    assert (classes[torch.cdist(matched[0][positive], boxes).argmin(dim=1)] == labels[0][positive]).all()


def _constant_head(cls_bias: float, box_bias: float, ctr_bias: float, **kwargs) -> FCOSHead:
    """One level of stride 8 whose predictions are its biases everywhere."""
    head = _head(num_levels=1, strides=[8], **kwargs)
    with torch.no_grad():
        for conv in (head.cls_score, head.bbox_pred, head.ctrness):
            conv.weight.zero_()
        head.cls_score.bias.fill_(cls_bias)
        head.bbox_pred.bias.fill_(box_bias)
        head.ctrness.bias.fill_(ctr_bias)
    return head


def _focal(p: float, target: int, alpha: float = 0.25, gamma: float = 2.0) -> float:
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_losses_by_hand():
    b, c = -1.0, 0.3
    head = _constant_head(b, 1.0, c).train()
    images = ImageList(torch.zeros(1, 3, 32, 32), [(32, 32)])
    gt = Instances((32, 32), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 16.0, 16.0]])), gt_classes=torch.tensor([1]))
    with EventStorage(0):
        _, losses = head(images, {"p0": torch.zeros(1, 4, 4, 4)}, [gt])
    # 16 points at 4, 12, 20, 28; those within 12 px of (8, 8) and inside the box: (4|12, 4|12).
    normalizer = 0.9 * 300 + 0.1 * 4
    p = 1 / (1 + math.exp(-b))
    cls = 4 * _focal(p, 1) + (16 * 2 - 4) * _focal(p, 0)
    # Each positive predicts its point +- 8 px: e.g. [-4, -4, 12, 12] against [0, 0, 16, 16]: intersection
    # 144, union 368, enclosing box 400.
    giou = 144 / 368 - (400 - 368) / 400
    # Centerness of (4, 4) in the box: sqrt(4/12 * 4/12) = 1/3 (the same for the four points).
    q = 1 / (1 + math.exp(-c))
    bce = -(1 / 3 * math.log(q) + 2 / 3 * math.log(1 - q))
    expected = {"loss_fcos_cls": cls, "loss_fcos_loc": 4 * (1 - giou), "loss_fcos_ctr": 4 * bce}
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value / normalizer, rel=1e-5), name
    assert head.centerness_targets(_points(head, [(4, 4)]), gt.gt_boxes.tensor[None].expand(1, 16, 4))[0, 0].item() == (
        pytest.approx(1 / 3)
    )


def test_scores_are_sqrt_of_class_times_centerness():
    b, c = 0.5, -0.4
    head = _constant_head(b, 1.0, c, score_thresh=0.0, nms_thresh=1.0).eval()
    images = ImageList(torch.zeros(1, 3, 32, 32), [(32, 32)])
    results, _ = head(images, {"p0": torch.zeros(1, 4, 4, 4)})
    expected = math.sqrt(1 / (1 + math.exp(-b)) / (1 + math.exp(-c)))
    assert len(results[0]) == 16 * 2  # every point, both classes (NMS at IoU 1 keeps them)
    torch.testing.assert_close(results[0].scores, torch.full((32,), expected))
    # Boxes are the points +- 1 stride.
    first = results[0].pred_boxes.tensor[results[0].pred_classes == 0]
    assert {tuple(box) for box in first.tolist()} == {
        (x - 8.0, y - 8.0, x + 8.0, y + 8.0) for x in (4, 12, 20, 28) for y in (4, 12, 20, 28)
    }


def _yaml_cfg(depth: int = 18):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "FCOS"
    cfg.MODEL.BACKBONE.NAME = "build_fcos_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    if depth == 50:
        return cfg
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FCOS.CONV_DIMS = [32]
    cfg.MODEL.FCOS.NUM_CLASSES = 4
    cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 2.5
    cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA = 1.5
    cfg.MODEL.FCOS.TEST_SCORE_THRESH = 0.3
    cfg.MODEL.FCOS.TEST_TOPK_CANDIDATES = 50
    cfg.MODEL.FCOS.TEST_NMS_THRESH = 0.55
    cfg.TEST.DETECTIONS_PER_IMAGE = 7
    cfg.MODEL.LOSS_WEIGHTS.loss_fcos_ctr = 0.5
    return cfg


def test_yaml_defaults_build_the_python_configs_model():
    """MODEL.FCOS's defaults with build_fcos_resnet_fpn_backbone: the model of fcos_R_50_FPN_1x.py, parameter
    for parameter (so Detectron2's FCOS checkpoints load into either)."""
    from detlib import model_zoo
    from detlib.config import instantiate

    yaml_model = build_model(_yaml_cfg(depth=50))
    python_model = instantiate(model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py").model)
    signature = {name: tuple(value.shape) for name, value in yaml_model.state_dict().items()}
    assert signature == {name: tuple(value.shape) for name, value in python_model.state_dict().items()}
    assert yaml_model.backbone.top_block.in_feature == "p5"
    for name in ("in_features", "score_thresh", "topk_candidates", "nms_thresh", "center_sampling_radius"):
        assert getattr(yaml_model.head, name) == getattr(python_model.head, name), name


def test_yaml_config_builds_fcos():
    model = build_model(_yaml_cfg())
    head = model.head
    assert type(head) is FCOSHead and head.num_classes == 4
    assert head.in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert head.anchor_generator.strides == [8, 16, 32, 64, 128]
    assert head.center_sampling_radius == 2.5 and head.cls_loss.params == {"alpha": 0.25, "gamma": 1.5}
    assert head.box_loss.name == "giou"
    assert head.loss_weight == {"loss_fcos_cls": 1.0, "loss_fcos_loc": 1.0, "loss_fcos_ctr": 0.5}
    assert (head.score_thresh, head.topk_candidates, head.nms_thresh, head.max_detections_per_image) == (
        0.3,
        50,
        0.55,
        7,
    )
    model.train()
    image = torch.randint(0, 255, (3, 160, 192), dtype=torch.uint8)
    gt = Instances((160, 192), gt_boxes=Boxes(torch.tensor([[10.0, 8.0, 120.0, 100.0]])), gt_classes=torch.tensor([2]))
    with EventStorage(0):
        losses = model([{"image": image, "instances": gt}])
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_detectron2_keywords_configure_the_head():
    from detlib.modeling.meta_arch import FCOS

    backbone = build_model(_yaml_cfg()).backbone
    head = FCOSHead(input_shape=[ShapeSpec(channels=32)] * 3, num_classes=4, conv_dims=[32])
    with pytest.raises(RuntimeError, match="no levels"):
        head(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), {})
    model = FCOS(
        backbone=backbone,
        head=head,
        head_in_features=["p3", "p4", "p5"],
        num_classes=4,
        center_sampling_radius=1.0,
        focal_loss_alpha=0.5,
        test_score_thresh=0.1,
        test_topk_candidates=10,
        test_nms_thresh=0.4,
        max_detections_per_image=3,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    )
    assert model.head is head and head.in_features == ["p3", "p4", "p5"]
    assert head.anchor_generator.strides == [8, 16, 32]
    assert head.center_sampling_radius == 1.0 and head.cls_loss.params == {"alpha": 0.5, "gamma": 2.0}
    assert (head.score_thresh, head.topk_candidates, head.nms_thresh, head.max_detections_per_image) == (
        0.1,
        10,
        0.4,
        3,
    )
    with pytest.raises(ValueError, match="num_classes"):
        FCOS(backbone=backbone, head=head, num_classes=5, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)
    with pytest.raises(ValueError, match="3 levels"):
        FCOS(backbone=backbone, head=head, head_in_features=["p3"], pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)
