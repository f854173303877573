"""
torchvision's Mask R-CNN weights, converted, give torchvision's detections in detlib.

The torchvision model has random weights, made well-conditioned so that its outputs are a
meaningful comparison: the BatchNorm statistics are calibrated on the test image (otherwise 50
unnormalized layers blow the activations up and every score saturates at 1), the box-regression
layers are shrunk (otherwise boxes degenerate to slivers whose IoU is ill-conditioned), and the
classifier is scaled so that scores spread over (0.05, 1).
"""

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

from detlib.checkpoint import DetectionCheckpointer
from detlib.checkpoint.torchvision import (
    convert_torchvision_state_dict,
    is_torchvision_state_dict,
    torchvision_rcnn_config,
)
from detlib.modeling import build_model
from detlib.structures import Boxes, pairwise_iou

HEIGHT, WIDTH = 96, 128
TOPK_PROPOSALS, DETECTIONS = 100, 20


def _image():
    return torch.randint(0, 256, (3, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


@pytest.fixture(scope="module")
def torchvision_model():
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        min_size=HEIGHT,
        max_size=WIDTH,
        rpn_post_nms_top_n_test=TOPK_PROPOSALS,
        box_detections_per_img=DETECTIONS,
    )
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0  # running statistics := this batch's
    with torch.no_grad():
        model.backbone.body.train()
        model.backbone.body(model.transform([_image().float() / 255])[0].tensors)
        model.roi_heads.box_predictor.cls_score.weight.mul_(8.0)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(0.1)
        model.rpn.head.bbox_pred.weight.mul_(0.1)
    return model.eval()


def _detlib_model(mask_on=True):
    cfg = torchvision_rcnn_config(mask_on=mask_on)
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.RPN.POST_NMS_TOPK_TEST", TOPK_PROPOSALS,
        "TEST.DETECTIONS_PER_IMAGE", DETECTIONS,
    ])  # fmt: skip
    return build_model(cfg).eval()


def test_conversion_names_and_layouts(torchvision_model):
    state = torchvision_model.state_dict()
    assert is_torchvision_state_dict(state)
    converted = convert_torchvision_state_dict(state)
    model = _detlib_model()
    assert set(converted) == set(model.state_dict())
    assert all(converted[k].shape == v.shape for k, v in model.state_dict().items())

    # Background moves from the first class to the last; detlib predicts no background box or mask.
    cls_w = state["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(converted["roi_heads.box_predictor.cls_score.weight"][-1], cls_w[0])
    assert torch.equal(converted["roi_heads.box_predictor.cls_score.weight"][:-1], cls_w[1:])
    for ours, theirs, rows in [
        ("roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.bias", slice(4, None)),
        ("roi_heads.mask_head.predictor.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight", slice(1, None)),
        ("backbone.bottom_up.res3.0.shortcut.norm.running_var", "backbone.body.layer2.0.downsample.1.running_var", ...),
    ]:
        assert torch.equal(converted[ours], state[theirs][rows]), ours
    assert torch.equal(converted["backbone.fpn_output5.weight"], state["backbone.fpn.layer_blocks.3.0.weight"])
    assert torch.equal(converted["roi_heads.mask_head.mask_fcn4.bias"], state["roi_heads.mask_head.3.0.bias"])


def test_older_torchvision_names_and_unknown_names():
    old = {
        "backbone.fpn.inner_blocks.0.weight": torch.zeros(1),
        "rpn.head.conv.weight": torch.zeros(1),
        "roi_heads.mask_head.mask_fcn2.bias": torch.zeros(1),
    }
    assert set(convert_torchvision_state_dict(old)) == {
        "backbone.fpn_lateral2.weight", "proposal_generator.rpn_head.conv.weight", "roi_heads.mask_head.mask_fcn2.bias"
    }  # fmt: skip
    with pytest.raises(KeyError, match="roi_heads.keypoint_head.x"):
        convert_torchvision_state_dict({"roi_heads.keypoint_head.x": torch.zeros(1)})
    assert not is_torchvision_state_dict({"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)})


def test_faster_rcnn_weights_load_strictly():
    torch.manual_seed(0)
    state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    model = _detlib_model(mask_on=False)
    model.load_state_dict(convert_torchvision_state_dict(state), strict=True)


def test_same_detections_as_torchvision(torchvision_model, tmp_path):
    path = tmp_path / "maskrcnn_torchvision.pth"
    torch.save(torchvision_model.state_dict(), path)
    model = _detlib_model()
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(str(path))
    keys = checkpointer.incompatible_keys
    assert not keys.missing and not keys.unexpected and not keys.shape_mismatch

    image = _image()
    with torch.no_grad():
        tv = torchvision_model
        images, _ = tv.transform([image.float() / 255])
        features = tv.backbone(images.tensors)
        proposals, _ = tv.rpn(images, features)
        expected = tv.roi_heads(features, proposals, images.image_sizes)[0][0]
        # The converted model's config reads RGB 0..255 input (INPUT.FORMAT RGB), as torchvision does.
        ours = model.inference([{"image": image}], do_postprocess=False)[0]

    assert len(expected["boxes"]) == DETECTIONS
    assert expected["scores"].min() > 0.05 and expected["scores"].max() < 0.99
    assert len(ours) == len(expected["boxes"])
    iou = pairwise_iou(Boxes(expected["boxes"]), ours.pred_boxes)
    iou[(expected["labels"] - 1)[:, None] != ours.pred_classes[None, :]] = 0
    best, match = iou.max(dim=1)
    assert (best > 0.99).all()
    assert len(set(match.tolist())) == len(match)
    assert (ours.scores[match] - expected["scores"]).abs().max() < 1e-3
    # Mask probabilities before pasting (the two libraries paste into the image differently).
    assert (ours.pred_masks[match] - expected["masks"]).abs().max() < 1e-3
