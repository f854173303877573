"""
Loading torchvision's `maskrcnn_resnet50_fpn` / `fasterrcnn_resnet50_fpn` weights into detlib.

Two things are needed for a torchvision model and its detlib counterpart to compute the same
thing: parameter names and layouts translated (`convert_torchvision_state_dict`), and a config
that builds the same architecture (`torchvision_rcnn_config`). The config differences, and why:

* ResNet-50 with the stride in the 3x3 conv (`STRIDE_IN_1X1: False`) and frozen BN statistics;
* inputs in RGB, 0..255, normalized with ImageNet's statistics scaled by 255;
* anchors with torchvision's rounded cell anchors (`TorchvisionAnchorGenerator`);
* the RoI poolers use the original, unaligned ROIAlign with 2 samples per bin;
* torchvision trains with 2000 proposals per image and smooth-L1 beta 1/9 on the RoI boxes;
* 90 foreground classes (COCO's 91 ids, background excluded); torchvision's class index `c`
  is detlib's `c - 1`.

Known remaining differences: torchvision drops boxes narrower than 0.01 px before the per-class
NMS, detlib drops empty boxes after it; torchvision pastes masks with its own resize-based
method (detlib keeps Detectron2's bilinear paste), so full-image masks can differ at the edges.
"""

import re
from typing import Dict, List, Mapping

import torch

from detlib.config import CfgNode, get_cfg

__all__ = ["convert_torchvision_state_dict", "is_torchvision_state_dict", "torchvision_rcnn_config"]

# (torchvision name pattern, detlib name template, shift). Patterns match whole names; both the
# current layout (Conv2dNormActivation wrappers: "inner_blocks.0.0.weight") and the older one are
# accepted. torchvision counts ResNet stages from layer1 (= res2), FPN blocks and mask convs from 0:
# `{n}` in a template is the pattern's first group plus `shift`.
_RENAMES = [
    (r"backbone\.body\.conv1\.weight", r"backbone.bottom_up.stem.conv1.weight", 0),
    (r"backbone\.body\.bn1\.(\w+)", r"backbone.bottom_up.stem.conv1.norm.\1", 0),
    (r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight", r"backbone.bottom_up.res{n}.\2.conv\3.weight", 1),
    (r"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)", r"backbone.bottom_up.res{n}.\2.conv\3.norm.\4", 1),
    (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight", r"backbone.bottom_up.res{n}.\2.shortcut.weight", 1),
    (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)", r"backbone.bottom_up.res{n}.\2.shortcut.norm.\3", 1),
    (r"backbone\.fpn\.inner_blocks\.(\d)(?:\.0)?\.(weight|bias)", r"backbone.fpn_lateral{n}.\2", 2),
    (r"backbone\.fpn\.layer_blocks\.(\d)(?:\.0)?\.(weight|bias)", r"backbone.fpn_output{n}.\2", 2),
    (r"rpn\.head\.conv(?:\.0\.0)?\.(weight|bias)", r"proposal_generator.rpn_head.conv.\1", 0),
    (r"rpn\.head\.cls_logits\.(weight|bias)", r"proposal_generator.rpn_head.objectness_logits.\1", 0),
    (r"rpn\.head\.bbox_pred\.(weight|bias)", r"proposal_generator.rpn_head.anchor_deltas.\1", 0),
    (r"roi_heads\.box_head\.fc6\.(weight|bias)", r"roi_heads.box_head.fc1.\1", 0),
    (r"roi_heads\.box_head\.fc7\.(weight|bias)", r"roi_heads.box_head.fc2.\1", 0),
    (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)", r"roi_heads.box_predictor.\1.\2", 0),
    (r"roi_heads\.mask_head\.(\d)\.0\.(weight|bias)", r"roi_heads.mask_head.mask_fcn{n}.\2", 1),
    (r"roi_heads\.mask_head\.mask_fcn(\d)\.(weight|bias)", r"roi_heads.mask_head.mask_fcn\1.\2", 0),
    (r"roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)", r"roi_heads.mask_head.deconv.\1", 0),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)", r"roi_heads.mask_head.predictor.\1", 0),
]
_COMPILED = [(re.compile(pattern + r"$"), template, shift) for pattern, template, shift in _RENAMES]


def is_torchvision_state_dict(state_dict: Mapping[str, object]) -> bool:
    """Whether `state_dict` is a torchvision Faster / Mask R-CNN (ResNet-FPN) state dict."""
    return "backbone.body.conv1.weight" in state_dict and any(k.startswith("rpn.head.") for k in state_dict)


def _rename(name: str) -> str:
    for pattern, template, shift in _COMPILED:
        match = pattern.match(name)
        if match is not None:
            if "{n}" in template:
                template = template.replace("{n}", str(int(match.group(1)) + shift))
            return match.expand(template)
    raise KeyError(f"torchvision state dict: no detlib name for parameter '{name}'")


def _background_last(tensor: torch.Tensor) -> torch.Tensor:
    """torchvision's class scores put background first; detlib's put it last."""
    return torch.cat([tensor[1:], tensor[:1]], dim=0)


def convert_torchvision_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """
    Rename the parameters of a torchvision `maskrcnn_resnet50_fpn` / `fasterrcnn_resnet50_fpn`
    state dict to detlib's (Detectron2's) names and layouts: BatchNorm `num_batches_tracked`
    counters are dropped, the background class moves from the first to the last score, and the
    background's box deltas and mask logits (which detlib does not predict) are dropped.

    Raises a KeyError naming any parameter it does not know.
    """
    converted = {}
    for name, value in state_dict.items():
        if name.endswith("num_batches_tracked"):
            continue
        new_name = _rename(name)
        value = torch.as_tensor(value)
        if new_name.startswith("roi_heads.box_predictor.cls_score."):
            value = _background_last(value)
        elif new_name.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:]
        elif new_name.startswith("roi_heads.mask_head.predictor."):
            value = value[1:]
        converted[new_name] = value
    return converted


def _torchvision_overrides(mask_on: bool) -> List[object]:
    """The (KEY, VALUE, ...) list of `torchvision_rcnn_config`."""
    return [
        "MODEL.META_ARCHITECTURE", "GeneralizedRCNN",
        "MODEL.MASK_ON", mask_on,
        "INPUT.FORMAT", "RGB",
        "MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53],
        "MODEL.PIXEL_STD", [58.395, 57.12, 57.375],
        "INPUT.MIN_SIZE_TEST", 800,
        "INPUT.MAX_SIZE_TEST", 1333,
        "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
        "MODEL.BACKBONE.FREEZE_AT", 2,
        "MODEL.RESNETS.DEPTH", 50,
        "MODEL.RESNETS.STRIDE_IN_1X1", False,
        "MODEL.RESNETS.NORM", "FrozenBN",
        "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"],
        "MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res5"],
        "MODEL.FPN.OUT_CHANNELS", 256,
        "MODEL.ANCHOR_GENERATOR.NAME", "TorchvisionAnchorGenerator",
        "MODEL.ANCHOR_GENERATOR.SIZES", [[32], [64], [128], [256], [512]],
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[0.5, 1.0, 2.0]],
        "MODEL.ANCHOR_GENERATOR.OFFSET", 0.0,
        "MODEL.RPN.IN_FEATURES", ["p2", "p3", "p4", "p5", "p6"],
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 2000,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 1000,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 2000,
        "MODEL.RPN.POST_NMS_TOPK_TEST", 1000,
        "MODEL.RPN.NMS_THRESH", 0.7,
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 256,
        "MODEL.RPN.POSITIVE_FRACTION", 0.5,
        "MODEL.ROI_HEADS.NAME", "StandardROIHeads",
        "MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p4", "p5"],
        "MODEL.ROI_HEADS.NUM_CLASSES", 90,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 512,
        "MODEL.ROI_HEADS.POSITIVE_FRACTION", 0.25,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.05,
        "MODEL.ROI_HEADS.NMS_THRESH_TEST", 0.5,
        "TEST.DETECTIONS_PER_IMAGE", 100,
        "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.NUM_FC", 2,
        "MODEL.ROI_BOX_HEAD.FC_DIM", 1024,
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7,
        "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", 2,
        "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlign",
        "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", [10.0, 10.0, 5.0, 5.0],
        "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", 1.0 / 9,
        "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead",
        "MODEL.ROI_MASK_HEAD.NUM_CONV", 4,
        "MODEL.ROI_MASK_HEAD.CONV_DIM", 256,
        "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", 14,
        "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", 2,
        "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlign",
    ]  # fmt: skip


def torchvision_rcnn_config(cfg: CfgNode = None, mask_on: bool = True) -> CfgNode:
    """
    A config whose model has the architecture of torchvision's `maskrcnn_resnet50_fpn`
    (`mask_on=True`) or `fasterrcnn_resnet50_fpn` (`mask_on=False`): `cfg` (default `get_cfg()`)
    with the overrides listed in this module's docstring. Set the input sizes
    (`INPUT.MIN_SIZE_TEST`, ...) afterwards to match the torchvision model's `min_size`/`max_size`.
    """
    cfg = get_cfg() if cfg is None else cfg.clone()
    cfg.merge_from_list(_torchvision_overrides(mask_on))
    return cfg
