"""ResNet and FPN backbones: shapes per depth, freezing, norms, torchvision as a numeric reference,
hand-written FPN reference, and the Detectron2 parity checkpoint loading by name."""

import math
import pickle
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from detlib.config import get_cfg
from detlib.layers import BatchNorm2d, FrozenBatchNorm2d, ShapeSpec, SyncBatchNorm2d
from detlib.modeling.backbone import (
    FPN,
    Backbone,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    LastLevelMaxPool,
    ResNet,
    build_backbone,
    build_resnet_backbone,
)

RGB = ShapeSpec(channels=3)
ALL_STAGES = ["res2", "res3", "res4", "res5"]


def resnet_cfg(depth=18, freeze_at=0, out_features=ALL_STAGES, tiny=False, **resnets):
    """A config for a ResNet; `tiny` shrinks the widths of Bottleneck nets (8-channel stem, res2 out 16)."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out_features)
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    if tiny:
        cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
    for key, value in resnets.items():
        setattr(cfg.MODEL.RESNETS, key, value)
    return cfg


# --------------------------------------------------------------------------------------------- shapes
# Blocks per stage from He et al. 2016, Table 1.
PAPER_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_stages_and_output_shapes(depth):
    torch.manual_seed(0)
    model = build_resnet_backbone(resnet_cfg(depth, tiny=depth >= 50), RGB).eval()
    basic = depth < 50
    channels = [64, 128, 256, 512] if basic else [16, 32, 64, 128]
    strides = [4, 8, 16, 32]

    for name, num_blocks in zip(ALL_STAGES, PAPER_BLOCKS[depth]):
        stage = getattr(model, name)
        assert len(stage) == num_blocks
        assert all(type(b) is (BasicBlock if basic else BottleneckBlock) for b in stage)
        # Only a block that changes the channel count needs a projection shortcut.
        has_projection = [b.shortcut is not None for b in stage]
        assert has_projection == [name != "res2" or not basic] + [False] * (num_blocks - 1)

    shapes = model.output_shape()
    assert list(shapes) == ALL_STAGES
    assert [s.channels for s in shapes.values()] == channels
    assert [s.stride for s in shapes.values()] == strides

    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert list(out) == ALL_STAGES
    for name, c, s in zip(ALL_STAGES, channels, strides):
        assert out[name].shape == (2, c, 64 // s, 96 // s)


def test_out_features_subset_builds_only_needed_stages():
    model = build_resnet_backbone(resnet_cfg(18, out_features=["stem", "res3"]), RGB)
    assert not hasattr(model, "res4") and not hasattr(model, "res5")
    assert model.output_shape() == {"stem": ShapeSpec(channels=64, stride=4), "res3": ShapeSpec(channels=128, stride=8)}
    out = model(torch.randn(1, 3, 32, 32))
    assert out["stem"].shape == (1, 64, 8, 8) and out["res3"].shape == (1, 128, 4, 4)


def test_make_stage_per_block_arguments():
    blocks = ResNet.make_stage(BasicBlock, 3, in_channels=8, out_channels=16, stride_per_block=[2, 1, 1], norm="BN")
    assert [b.stride for b in blocks] == [2, 1, 1]
    assert [(b.in_channels, b.out_channels) for b in blocks] == [(8, 16), (16, 16), (16, 16)]
    with pytest.raises(ValueError, match="stride_per_block"):
        ResNet.make_stage(BasicBlock, 3, in_channels=8, out_channels=16, stride_per_block=[2, 1])


def test_resnet_with_classifier():
    stages = [
        ResNet.make_stage(BasicBlock, 1, in_channels=c_in, out_channels=c_out, stride_per_block=[s])
        for c_in, c_out, s in [(8, 8, 1), (8, 16, 2)]
    ]
    model = ResNet(BasicStem(3, 8), stages, num_classes=5)
    assert model(torch.randn(2, 3, 32, 32))["linear"].shape == (2, 5)
    assert model.output_shape() == {}
    features = ResNet(BasicStem(3, 8), stages, num_classes=5, out_features=["res3", "linear"])
    assert set(features(torch.randn(1, 3, 32, 32))) == {"res3", "linear"}


def test_unknown_out_feature_is_rejected():
    with pytest.raises(ValueError, match="res6"):
        build_resnet_backbone(resnet_cfg(18, out_features=["res4", "res6"]), RGB)
    with pytest.raises(ValueError, match="non-empty"):
        build_resnet_backbone(resnet_cfg(18, out_features=[]), RGB)


def test_res5_dilation_keeps_res4_resolution():
    model = build_resnet_backbone(resnet_cfg(50, tiny=True, RES5_DILATION=2), RGB).eval()
    assert model.output_shape()["res5"].stride == 16
    for block in model.res5:
        assert block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2)
        assert block.stride == 1
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["res5"].shape[-2:] == out["res4"].shape[-2:] == (4, 4)


def test_basic_block_depths_reject_bottleneck_options():
    with pytest.raises(ValueError, match="RES5_DILATION"):
        build_resnet_backbone(resnet_cfg(18, RES5_DILATION=2), RGB)
    with pytest.raises(ValueError, match="RES2_OUT_CHANNELS"):
        build_resnet_backbone(resnet_cfg(34, RES2_OUT_CHANNELS=256), RGB)
    with pytest.raises(ValueError, match="DEPTH"):
        build_resnet_backbone(resnet_cfg(26), RGB)


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_stride_in_1x1_places_the_downsampling(stride_in_1x1):
    model = build_resnet_backbone(resnet_cfg(50, tiny=True, STRIDE_IN_1X1=stride_in_1x1), RGB)
    first = model.res3[0]
    assert first.conv1.stride == ((2, 2) if stride_in_1x1 else (1, 1))
    assert first.conv2.stride == ((1, 1) if stride_in_1x1 else (2, 2))
    assert first.shortcut.stride == (2, 2)


def test_resnext_groups_and_width():
    model = build_resnet_backbone(resnet_cfg(50, NUM_GROUPS=32, WIDTH_PER_GROUP=4), RGB)
    assert model.res2[0].conv2.groups == 32
    assert model.res2[0].conv1.out_channels == 128  # 32 groups x 4 channels
    assert model.res5[0].conv1.out_channels == 1024


def test_input_channels_follow_pixel_mean():
    cfg = resnet_cfg(18)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.5], [1.0]
    model = build_backbone(cfg)
    assert model.stem.conv1.in_channels == 1
    assert model(torch.randn(1, 1, 32, 32))["res5"].shape == (1, 512, 1, 1)


def test_unknown_backbone_name_fails():
    cfg = resnet_cfg(18)
    cfg.MODEL.BACKBONE.NAME = "build_no_such_backbone"
    with pytest.raises(KeyError, match="build_no_such_backbone"):
        build_backbone(cfg)


# -------------------------------------------------------------------------------------------- freezing
PARTS = ["stem", "res2", "res3", "res4", "res5"]


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_freeze_at(freeze_at):
    torch.manual_seed(0)
    model = build_resnet_backbone(resnet_cfg(18, freeze_at=freeze_at, NORM="BN"), RGB).train()
    running_means = {
        name: m.running_mean.clone()
        for name, m in model.named_modules()
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))
    }
    x = torch.randn(4, 3, 32, 32)
    loss = sum(f.square().mean() for f in model(x).values())
    assert loss.requires_grad == (freeze_at < len(PARTS))
    if loss.requires_grad:
        loss.backward()

    for index, part in enumerate(PARTS):
        frozen = index < freeze_at
        module = getattr(model, part)
        params = list(module.parameters())
        assert all(p.requires_grad != frozen for p in params), part
        assert all((p.grad is None) == frozen for p in params), part
        norms = [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert norms and all(isinstance(m, FrozenBatchNorm2d if frozen else nn.BatchNorm2d) for m in norms), part
    for name, module in model.named_modules():
        if name in running_means:
            changed = not torch.equal(module.running_mean, running_means[name])
            assert changed == isinstance(module, nn.BatchNorm2d), name


def test_frozen_stages_keep_eval_outputs():
    # Freezing converts BN to FrozenBN with the same statistics: eval-mode features are unchanged.
    torch.manual_seed(0)
    model = build_resnet_backbone(resnet_cfg(18, NORM="BN"), RGB)
    _randomize_batchnorms(model, seed=1)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.freeze(3)
        after = model(x)
    assert isinstance(model.res3[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.res4[0].conv1.norm, nn.BatchNorm2d)
    for name in ALL_STAGES:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- norms
@pytest.mark.parametrize(
    "norm, norm_type",
    [("GN", nn.GroupNorm), ("BN", BatchNorm2d), ("SyncBN", SyncBatchNorm2d), ("FrozenBN", FrozenBatchNorm2d)],
)
def test_resnet_norms_build_and_train(norm, norm_type):
    torch.manual_seed(0)
    model = build_resnet_backbone(resnet_cfg(18, NORM=norm), RGB).train()
    norms = [m.norm for m in model.modules() if hasattr(m, "norm") and isinstance(m, nn.Conv2d)]
    assert len(norms) == 1 + 2 * 8 + 3  # stem, two convs per block, three projection shortcuts
    assert all(type(n) is norm_type for n in norms)
    if norm == "GN":
        assert all(n.num_groups == 32 for n in norms)
    out = model(torch.randn(2, 3, 32, 32))
    out["res5"].sum().backward()
    assert model.stem.conv1.weight.grad is not None


# ------------------------------------------------------------------------- torchvision as a reference
def _randomize_batchnorms(model: nn.Module, seed: int) -> None:
    """Non-trivial statistics and affine parameters in every batch norm, so that norm semantics matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


def torchvision_to_detlib(state_dict):
    """Rename torchvision ResNet keys to Detectron2's layout (written independently of detlib's code)."""
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue
        key = re.sub(r"^conv1\.", "stem.conv1.", key)
        key = re.sub(r"^bn1\.", "stem.conv1.norm.", key)
        key = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", key)
        key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
        key = key.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        renamed[key] = value
    return renamed


def torchvision_stage_outputs(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outputs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outputs.append(x)
    return outputs


@pytest.mark.parametrize(
    "tv_name, depth, norm, extra, grad",
    [
        ("resnet18", 18, "FrozenBN", {}, True),  # FrozenBN's autograd path
        ("resnet18", 18, "BN", {}, False),
        # torchvision puts the stride on the 3x3 conv.
        ("resnet50", 50, "FrozenBN", {"STRIDE_IN_1X1": False}, False),
        ("resnext50_32x4d", 50, "FrozenBN", {"STRIDE_IN_1X1": False, "NUM_GROUPS": 32, "WIDTH_PER_GROUP": 4}, False),
    ],
)
def test_matches_torchvision_resnet(tv_name, depth, norm, extra, grad):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, tv_name)(weights=None)
    _randomize_batchnorms(reference, seed=0)
    reference.eval()
    model = build_resnet_backbone(resnet_cfg(depth, NORM=norm, **extra), RGB).eval()
    incompatible = model.load_state_dict(torchvision_to_detlib(reference.state_dict()), strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torchvision_stage_outputs(reference, x)
    with torch.set_grad_enabled(grad):
        out = model(x)
    for name, ref in zip(ALL_STAGES, expected):
        assert out[name].shape == ref.shape
        scale = ref.abs().max()
        assert (out[name].detach() - ref).abs().max() <= 1e-5 * scale, name


# ------------------------------------------------------------------------------------------------- FPN
def fpn_cfg(depth=18, out_channels=16, norm="", fuse_type="sum", in_features=ALL_STAGES):
    cfg = resnet_cfg(depth, out_features=in_features)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = list(in_features)
    cfg.MODEL.FPN.OUT_CHANNELS = out_channels
    cfg.MODEL.FPN.NORM = norm
    cfg.MODEL.FPN.FUSE_TYPE = fuse_type
    return cfg


def test_fpn_shapes_names_and_divisibility():
    model = build_backbone(fpn_cfg())
    assert isinstance(model, FPN) and isinstance(model, Backbone)
    assert model.size_divisibility == 32
    assert model.padding_constraints == {"square_size": 0}
    shapes = model.output_shape()
    assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32, 64]
    assert all(s.channels == 16 for s in shapes.values())

    own_keys = {k for k in model.state_dict() if not k.startswith("bottom_up.")}
    expected = {
        f"fpn_{kind}{level}.{p}" for kind in ("lateral", "output") for level in range(2, 6) for p in ("weight", "bias")
    }
    assert own_keys == expected

    out = model(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 16, 16, 24),
        "p3": (1, 16, 8, 12),
        "p4": (1, 16, 4, 6),
        "p5": (1, 16, 2, 3),
        "p6": (1, 16, 1, 2),
    }


@pytest.mark.parametrize("fuse_type", ["sum", "avg"])
def test_fpn_matches_hand_written_top_down_pass(fuse_type):
    torch.manual_seed(0)
    model = build_backbone(fpn_cfg(fuse_type=fuse_type)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        c = model.bottom_up(x)

        def conv(name, t, padding):
            m = getattr(model, name)
            return F.conv2d(t, m.weight, m.bias, padding=padding)

        merged = {5: conv("fpn_lateral5", c["res5"], 0)}
        for level in (4, 3, 2):
            coarser = merged[level + 1].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
            merged[level] = conv(f"fpn_lateral{level}", c[f"res{level}"], 0) + coarser
            if fuse_type == "avg":
                merged[level] = merged[level] / 2
        expected = {f"p{level}": conv(f"fpn_output{level}", merged[level], 1) for level in (2, 3, 4, 5)}
        expected["p6"] = expected["p5"][:, :, ::2, ::2]
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for name, ref in expected.items():
        torch.testing.assert_close(out[name], ref, rtol=1e-5, atol=1e-5)


def test_fpn_norm_drops_conv_bias():
    model = build_backbone(fpn_cfg(out_channels=32, norm="GN"))
    for level in range(2, 6):
        for kind in ("lateral", "output"):
            conv = getattr(model, f"fpn_{kind}{level}")
            assert conv.bias is None and isinstance(conv.norm, nn.GroupNorm)
    assert model(torch.randn(1, 3, 64, 64))["p6"].shape == (1, 32, 1, 1)


def test_fpn_rejects_non_doubling_strides():
    bottom_up = build_resnet_backbone(resnet_cfg(18), RGB)
    with pytest.raises(ValueError, match="double"):
        FPN(bottom_up, ["res2", "res4"], out_channels=8)
    with pytest.raises(ValueError, match="res6"):
        FPN(bottom_up, ["res5", "res6"], out_channels=8)


def test_fpn_top_block_needs_its_input_level():
    bottom_up = build_resnet_backbone(resnet_cfg(18, out_features=["res2", "res3", "res4"]), RGB)
    with pytest.raises(ValueError, match=r"reads 'p5'.*only \['p2', 'p3', 'p4'\]"):
        FPN(bottom_up, ["res2", "res3", "res4"], out_channels=8, top_block=LastLevelMaxPool())


def test_retinanet_fpn_p3_to_p7():
    cfg = fpn_cfg(in_features=["res3", "res4", "res5"])
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    model = build_backbone(cfg)
    assert {k: s.stride for k, s in model.output_shape().items()} == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    assert model.top_block.p6.in_channels == 512  # computed from res5, not p5
    out = model(torch.randn(1, 3, 128, 128))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


# ------------------------------------------------------------------------------------------ initialization
def test_initialization_follows_caffe2():
    torch.manual_seed(0)
    model = build_backbone(fpn_cfg(depth=34, out_channels=256))
    # ResNet convs: MSRA fill, normal with std sqrt(2 / fan_out).
    w = model.bottom_up.res4[1].conv1.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(w.std().item() / math.sqrt(2 / fan_out) - 1) < 0.02
    # FPN convs: Xavier fill, uniform in +-sqrt(3 / fan_in), zero bias.
    conv = model.fpn_output3
    bound = math.sqrt(3 / (conv.weight.shape[1] * 9))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.99 * bound
    assert abs(conv.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.02
    assert torch.all(conv.bias == 0)


# ------------------------------------------------------------------------------ Detectron2 parity weights
def test_loads_detectron2_parity_checkpoint_by_name(d2_case):
    cfg = get_cfg()
    cfg.merge_from_file(str(d2_case / "config.yaml"))
    model = build_backbone(cfg)
    with open(d2_case / "model.pkl", "rb") as f:
        weights = pickle.load(f, encoding="latin1")["model"]
    checkpoint = {k[len("backbone.") :]: torch.from_numpy(v) for k, v in weights.items() if k.startswith("backbone.")}
    state = model.state_dict()
    assert sorted(checkpoint) == sorted(state), set(checkpoint) ^ set(state)
    assert {k: tuple(v.shape) for k, v in checkpoint.items()} == {k: tuple(v.shape) for k, v in state.items()}
    assert "bottom_up.stem.conv1.norm.running_var" in state and "bottom_up.res3.0.shortcut.weight" in state

    incompatible = model.load_state_dict(checkpoint, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint[key]), key
    # FREEZE_AT 2 with FrozenBN: stem and res2 take no gradients, res3 onwards do.
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "res2"}
    assert all(isinstance(m, FrozenBatchNorm2d) for m in model.bottom_up.modules() if hasattr(m, "running_var"))
