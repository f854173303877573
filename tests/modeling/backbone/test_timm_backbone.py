"""timm models as backbones: channels and strides from timm's feature_info, the features themselves, and one
training step of Mask R-CNN on shapes for five model families, under FPN or (a plain ViT) the simple pyramid."""

import math
from pathlib import Path

import pytest
import torch

from detlib.config import get_cfg
from detlib.layers import ShapeSpec
from detlib.modeling.backbone import FPN, SimpleFeaturePyramid, TimmBackbone, build_backbone

timm = pytest.importorskip("timm")

from shapes_step import shapes_batch, shapes_cfg, train_one_step  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
SHAPES = str(REPO / "configs" / "Shapes" / "mask_rcnn_shapes.yaml")


def test_outputs_are_timm_features_named_by_stride():
    torch.manual_seed(0)
    backbone = TimmBackbone("resnet18", out_indices=(1, 2, 3, 4)).eval()
    reference = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4))
    reference.load_state_dict(backbone.body.state_dict())
    reference.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours, theirs = backbone(x), reference(x)
    assert list(ours) == ["res2", "res3", "res4", "res5"]
    for (name, value), expected, (shape_name, shape) in zip(ours.items(), theirs, backbone.output_shape().items()):
        assert shape_name == name
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
        assert value.shape[1] == shape.channels and value.shape[-1] * shape.stride == x.shape[-1]
    assert backbone.size_divisibility == 32


def test_distinct_strides_are_required():
    with pytest.raises(ValueError, match="distinct strides"):
        TimmBackbone("vit_tiny_patch16_224", out_indices=(5, 11), model_kwargs={"dynamic_img_size": True})


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = TimmBackbone("resnet18", out_indices=(1,), pretrained_file=str(path))
    torch.testing.assert_close(backbone.body.state_dict()["conv1.weight"], source.state_dict()["conv1.weight"])


def test_yaml_builders():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_timm_fpn_backbone"
    cfg.MODEL.TIMM.NAME = "resnet18"
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    fpn = build_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(fpn, FPN) and isinstance(fpn.bottom_up, TimmBackbone)
    assert {k: v.stride for k, v in fpn.output_shape().items()} == {f"p{k}": 2**k for k in range(2, 7)}

    cfg.MODEL.BACKBONE.NAME = "build_timm_sfp_backbone"
    cfg.MODEL.TIMM.NAME = "vit_tiny_patch16_224"
    cfg.MODEL.TIMM.OUT_INDICES = [11]
    cfg.MODEL.TIMM.KWARGS.dynamic_img_size = True
    sfp = build_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(sfp, SimpleFeaturePyramid) and sfp.in_feature == "res4"
    with torch.no_grad():
        out = sfp.eval()(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {f"p{k}": (64 // 2**k, 64 // 2**k) for k in range(2, 7)}


# (timm model, out_indices, builder, extra keyword arguments of create_model): five families.
FAMILIES = [
    ("resnet18", [1, 2, 3, 4], "build_timm_fpn_backbone", {}),
    ("convnext_atto", [0, 1, 2, 3], "build_timm_fpn_backbone", {}),
    ("efficientnet_b0", [1, 2, 3, 4], "build_timm_fpn_backbone", {}),
    ("regnetx_002", [1, 2, 3, 4], "build_timm_fpn_backbone", {}),
    ("vit_tiny_patch16_224", [11], "build_timm_sfp_backbone", {"dynamic_img_size": True}),
]


@pytest.mark.parametrize("name, out_indices, builder, kwargs", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_trains_a_step_of_mask_rcnn_on_shapes(name, out_indices, builder, kwargs):
    overrides = [
        "MODEL.BACKBONE.NAME", builder,
        "MODEL.TIMM.NAME", name,
        "MODEL.TIMM.OUT_INDICES", str(out_indices),
        "MODEL.FPN.IN_FEATURES", "[]",
        "MODEL.FPN.OUT_CHANNELS", "16",
    ]  # fmt: skip
    for key, value in kwargs.items():
        overrides += [f"MODEL.TIMM.KWARGS.{key}", str(value)]
    cfg = shapes_cfg(SHAPES, overrides)
    losses = train_one_step(cfg, shapes_batch())
    assert all(math.isfinite(v) and v >= 0 for v in losses.values())
