r"""
Backbones against Detectron2's modules: ViT + SimpleFeaturePyramid, Swin, MViTv2, RegNet / AnyNet.

Each `BackboneCase` builds the same module in both libraries from the same keyword arguments (tiny widths and
depths, but every code path of the full models: window and global attention with padding, interpolated
absolute and relative positions, residual blocks, shifted windows, patch merging of odd sizes, pooling
attention with residual pooling, frozen and trainable BatchNorm, squeeze-excitation). Detectron2's module
gets seeded random weights (`seeded_weights`: far from any initialization, so an ignored parameter shows);
detlib's module must load its state dict with no missing or unexpected key, and give the same features in
evaluation mode on seeded inputs:

* in float64, within `FLOAT64_RTOL` of the output's scale: the two compute the same function;
* in float32, within a tolerance derived from float32 arithmetic itself: `F32_ERROR_FACTOR` times Detectron2's
  own float32 error (its float32 output against its float64 output) plus a few float32 ulps of the scale.

Full-size models of Detectron2's configs (ViTDet-B, Swin-B, MViTv2-B, RegNetX / Y-4GF) are only built, to
check that parameter names and shapes agree, so that the zoo's checkpoints load.

Detectron2's outputs, parameter shapes and float32 errors are recorded in `data/backbone_<case>.pt`, so that
CI without Detectron2 runs the same comparisons. Regenerate after changing a case (needs Detectron2 and timm):

    PYTHONPATH=$PWD python tests/differential/test_backbones.py --regenerate
"""

import argparse
import hashlib
import importlib
import sys
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
import torch.nn as nn

DATA_DIR = Path(__file__).resolve().with_name("data")

FLOAT64_RTOL = 1e-10
F32_ERROR_FACTOR = 4.0
F32_ULPS = 4.0


def _module(library: str, name: str):
    """`<library>.modeling.backbone.<name>`."""
    return importlib.import_module(f"{library}.modeling.backbone.{name}")


def _ln(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


# -- the cases -------------------------------------------------------------------------------------------
def vit_sfp(library: str) -> nn.Module:
    vit = _module(library, "vit")
    net = vit.ViT(
        img_size=96,  # 6 x 6 relative-position grid, interpolated to the 8 x 5 input
        patch_size=16,
        embed_dim=32,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        drop_path_rate=0.1,
        norm_layer=_ln,
        window_size=3,  # 8 x 5 tokens padded to 9 x 6
        window_block_indexes=[0, 2],
        residual_block_indexes=[1],
        use_rel_pos=True,
        pretrain_img_size=64,  # 4 x 4 absolute positions (and a class token), resized bicubically
        pretrain_use_cls_token=True,
    )
    top_block = _module(library, "fpn").LastLevelMaxPool()
    return vit.SimpleFeaturePyramid(net, "last_feat", 8, (4.0, 2.0, 1.0, 0.5), top_block=top_block, norm="LN")


def swin(library: str) -> nn.Module:
    return _module(library, "swin").SwinTransformer(
        pretrain_img_size=32,
        embed_dim=8,
        depths=(2, 2, 2, 2),
        num_heads=(2, 2, 4, 4),
        window_size=3,
        drop_path_rate=0.1,
        ape=True,
        out_indices=(0, 1, 2, 3),
    )


def mvit(library: str) -> nn.Module:
    return _module(library, "mvit").MViT(
        img_size=64,
        embed_dim=8,
        depth=6,
        num_heads=1,
        last_block_indexes=(0, 2, 4, 5),
        adaptive_kv_stride=4,
        adaptive_window_size=8,
        mlp_ratio=2.0,
        drop_path_rate=0.1,
        norm_layer=_ln,
        use_abs_pos=True,
        pretrain_img_size=32,
    )


def regnetx(library: str) -> nn.Module:
    regnet = _module(library, "regnet")
    # Widths 8, 16, 32 (depths 1, 1, 3); stem and s1 frozen (FrozenBatchNorm), the rest BatchNorm.
    return regnet.RegNet(
        stem_class=regnet.SimpleStem,
        stem_width=8,
        block_class=regnet.ResBottleneckBlock,
        depth=5,
        w_a=8.0,
        w_0=8,
        w_m=2.0,
        group_width=4,
        freeze_at=2,
        norm="BN",
        out_features=["s1", "s2", "s3"],
    )


def regnety(library: str) -> nn.Module:
    regnet = _module(library, "regnet")
    return regnet.RegNet(
        stem_class=regnet.ResStem,
        stem_width=8,
        block_class=regnet.ResBottleneckBlock,
        depth=5,
        w_a=12.0,
        w_0=16,
        w_m=1.5,
        group_width=8,
        bottleneck_ratio=0.5,
        se_ratio=0.25,
        norm="BN",
        out_features=["stem", "s1", "s2", "s3"],
    )


def anynet(library: str, block: str) -> nn.Module:
    regnet = _module(library, "regnet")
    return regnet.AnyNet(
        stem_class=regnet.ResStem,
        stem_width=8,
        block_class=getattr(regnet, block),
        depths=[1, 2],
        widths=[8, 16],
        group_widths=[1, 1],
        strides=[1, 2],
        bottleneck_ratios=[1.0, 1.0],
        se_ratio=0.0,
        activation_class=nn.ReLU,
        norm="BN",
        out_features=["stem", "s1", "s2"],
    )


# Full-size models of Detectron2's configs: names and shapes only.
def vitdet_b(library: str) -> nn.Module:
    vit = _module(library, "vit")
    net = vit.ViT(
        img_size=1024,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        drop_path_rate=0.1,
        window_size=14,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=_ln,
        window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
        residual_block_indexes=[],
        use_rel_pos=True,
        out_feature="last_feat",
    )
    top_block = _module(library, "fpn").LastLevelMaxPool()
    return vit.SimpleFeaturePyramid(
        net, "last_feat", 256, (4.0, 2.0, 1.0, 0.5), top_block=top_block, norm="LN", square_pad=1024
    )


def swin_b(library: str) -> nn.Module:
    return _module(library, "swin").SwinTransformer(
        depths=[2, 2, 18, 2], drop_path_rate=0.4, embed_dim=128, num_heads=[4, 8, 16, 32]
    )


def mvitv2_b(library: str) -> nn.Module:
    return _module(library, "mvit").MViT(
        embed_dim=96,
        depth=24,
        num_heads=1,
        last_block_indexes=(1, 4, 20, 23),
        residual_pooling=True,
        drop_path_rate=0.4,
        norm_layer=_ln,
        out_features=("scale2", "scale3", "scale4", "scale5"),
    )


def regnet_4gf(library: str, y: bool) -> nn.Module:
    regnet = _module(library, "regnet")
    shape = (
        dict(depth=22, w_a=31.41, w_0=96, w_m=2.24, group_width=64, se_ratio=0.25)
        if y
        else dict(depth=23, w_a=38.65, w_0=96, w_m=2.43, group_width=40)
    )
    return regnet.RegNet(
        stem_class=regnet.SimpleStem,
        stem_width=32,
        block_class=regnet.ResBottleneckBlock,
        freeze_at=2,
        norm="FrozenBN",
        out_features=["s1", "s2", "s3", "s4"],
        **shape,
    )


@dataclass(frozen=True)
class BackboneCase:
    """A module built by `build(library)` in either library; `input_shape` None: names and shapes only."""

    name: str
    build: Callable[[str], nn.Module]
    input_shape: Optional[Tuple[int, ...]] = None
    seed: int = 0
    needs_timm: bool = field(default=True)

    @property
    def reference_path(self) -> Path:
        return DATA_DIR / f"backbone_{self.name}.pt"


CASES = [
    BackboneCase("vit_sfp", vit_sfp, (2, 3, 128, 80)),
    BackboneCase("swin", swin, (2, 3, 70, 90)),
    BackboneCase("mvit", mvit, (2, 3, 72, 88)),
    BackboneCase("regnetx", regnetx, (2, 3, 64, 48), needs_timm=False),
    BackboneCase("regnety", regnety, (2, 3, 64, 48), needs_timm=False),
    BackboneCase("anynet_basic", partial(anynet, block="ResBasicBlock"), (2, 3, 40, 56), needs_timm=False),
    BackboneCase("anynet_vanilla", partial(anynet, block="VanillaBlock"), (2, 3, 40, 56), needs_timm=False),
    BackboneCase("vitdet_b", vitdet_b),
    BackboneCase("swin_b", swin_b),
    BackboneCase("mvitv2_b", mvitv2_b),
    BackboneCase("regnetx_4gf_dds", partial(regnet_4gf, y=False), needs_timm=False),
    BackboneCase("regnety_4gf_dds", partial(regnet_4gf, y=True), needs_timm=False),
]
FORWARD_CASES = [c for c in CASES if c.input_shape is not None]


# -- weights and inputs ----------------------------------------------------------------------------------
_TABLES = ("pos_embed", "rel_pos_h", "rel_pos_w", "relative_position_bias_table")


def seeded_weights(
    shapes: Mapping[str, Sequence[int]], int_buffers: Mapping[str, torch.Tensor], seed: int
) -> Dict[str, torch.Tensor]:
    """
    A state dict of these names and shapes with random float64 values, and the integer buffers as given (Swin's
    relative position index, BatchNorm's step counter): norm scales in [0.5, 1.5], biases and running means
    ~ N(0, 0.1), running variances in [0.5, 2], position tables ~ N(0, 0.5), other weights He-normal over their
    fan-in. One NumPy stream per name, so a value does not depend on which other entries a case has.
    """
    weights = {}
    for name, shape in shapes.items():
        if name in int_buffers:
            weights[name] = int_buffers[name].clone()
            continue
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        leaf, shape = name.rsplit(".", 1)[-1], tuple(shape)
        if leaf == "running_var":
            array = rng.uniform(0.5, 2.0, shape)
        elif leaf in ("running_mean", "bias"):
            array = rng.normal(0.0, 0.1, shape)
        elif leaf == "weight" and len(shape) == 1:
            array = rng.uniform(0.5, 1.5, shape)
        elif leaf in _TABLES:
            array = rng.normal(0.0, 0.5, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            array = rng.normal(0.0, fan_in**-0.5, shape)
        weights[name] = torch.from_numpy(array)
    return weights


def seeded_input(case: BackboneCase) -> torch.Tensor:
    rng = np.random.default_rng([case.seed, 11])
    return torch.from_numpy(rng.normal(0.0, 1.0, case.input_shape))


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _loaded(model: nn.Module, weights: Mapping[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """`model` in `dtype` and evaluation mode with Detectron2's state dict `weights` loaded: no key may be missing
    or unexpected (a FrozenBatchNorm2d drops a BatchNorm step counter as it loads, as it does for checkpoints)."""
    model = model.to(dtype).eval()
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    result = model.load_state_dict(cast, assign=cast and next(iter(cast.values())).is_meta)
    assert not result.missing_keys and not result.unexpected_keys, result
    return model


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {name: value.double() for name, value in model(x.to(next(model.parameters()).dtype)).items()}


def detectron2_reference(case: BackboneCase) -> Dict[str, Any]:
    """What a case records: the names and shapes of Detectron2's state dict; for a forward case also its integer
    buffers, its float64 features, its float32 error on each, and the digests of the weights and inputs."""
    torch.manual_seed(0)
    model = case.build("detectron2")
    state = model.state_dict()
    reference: Dict[str, Any] = {"param_shapes": {name: tuple(value.shape) for name, value in state.items()}}
    if case.input_shape is None:
        return reference
    reference["int_buffers"] = {name: value for name, value in state.items() if not value.is_floating_point()}
    weights = seeded_weights(reference["param_shapes"], reference["int_buffers"], case.seed)
    x = seeded_input(case)
    exact = features(_loaded(model, weights, torch.float64), x)
    single = features(_loaded(model, weights, torch.float32), x)
    reference["outputs64"] = exact
    reference["error32"] = {k: float((single[k] - exact[k]).abs().max()) for k in exact}
    reference["weights_sha256"] = _digest(weights)
    reference["input_sha256"] = _digest({"x": x})
    return reference


def compare(case: BackboneCase, reference: Mapping[str, Any]) -> None:
    """detlib's module against a reference from `detectron2_reference` (live or recorded)."""
    torch.manual_seed(0)
    shapes = {name: tuple(shape) for name, shape in reference["param_shapes"].items()}
    if case.input_shape is None:
        # Names and shapes only: built without memory; loading checks both.
        with torch.device("meta"):
            model = case.build("detlib")
        _loaded(model, {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}, torch.float32)
        return
    model = case.build("detlib")
    # Integer buffers (relative position indices) are computed, not learned: ours must equal Detectron2's.
    for name, value in model.state_dict().items():
        if name in reference["int_buffers"]:
            assert torch.equal(value, reference["int_buffers"][name]), f"{name} differs from Detectron2's"
    weights = seeded_weights(shapes, reference["int_buffers"], case.seed)
    x = seeded_input(case)
    stale = f"; rerun `python {__file__} --regenerate` if the case changed"
    assert _digest(weights) == reference["weights_sha256"], "weights differ" + stale
    assert _digest({"x": x}) == reference["input_sha256"], "inputs differ" + stale

    exact = reference["outputs64"]
    ours64 = features(_loaded(model, weights, torch.float64), x)
    ours32 = features(_loaded(model, weights, torch.float32), x)
    assert list(ours64) == list(exact), "output names or order differ"
    for name, expected in exact.items():
        assert ours64[name].shape == expected.shape, name
        scale = float(expected.abs().max())
        diff64 = float((ours64[name] - expected).abs().max())
        assert diff64 <= FLOAT64_RTOL * scale, f"{name}: float64 features differ by {diff64:.3g} (scale {scale:.3g})"
        tol32 = F32_ERROR_FACTOR * reference["error32"][name] + F32_ULPS * torch.finfo(torch.float32).eps * scale
        diff32 = float((ours32[name] - expected).abs().max())
        assert diff32 <= tol32, (
            f"{name}: float32 features off by {diff32:.3g}, tolerance {tol32:.3g} (scale {scale:.3g})"
        )


def _skip_without_peers(case: BackboneCase) -> None:
    pytest.importorskip("detectron2")
    if case.needs_timm:
        pytest.importorskip("timm")  # Detectron2's transformer blocks import timm's Mlp and DropPath


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matches_recorded_detectron2(case: BackboneCase) -> None:
    compare(case, torch.load(case.reference_path, weights_only=True))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matches_live_detectron2(case: BackboneCase) -> None:
    _skip_without_peers(case)
    compare(case, detectron2_reference(case))


@pytest.mark.parametrize("case", FORWARD_CASES, ids=[c.name for c in FORWARD_CASES])
def test_features_depend_on_weights(case: BackboneCase) -> None:
    """The comparison can fail: the recorded features move when one weight tensor is perturbed."""
    reference = torch.load(case.reference_path, weights_only=True)
    weights = seeded_weights(reference["param_shapes"], reference["int_buffers"], case.seed)
    # The first multi-dimensional weight (the stem or patch embedding, or the position embedding) feeds every output.
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.dim() > 1)
    weights[name] = weights[name] * 1.01
    moved = features(_loaded(case.build("detlib"), weights, torch.float64), seeded_input(case))
    assert any(not torch.allclose(moved[k], v, rtol=0, atol=1e-6) for k, v in reference["outputs64"].items())


def regenerate(names: Sequence[str]) -> None:
    DATA_DIR.mkdir(exist_ok=True)
    for case in CASES:
        if names and case.name not in names:
            continue
        path = case.reference_path
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(detectron2_reference(case), tmp)
        tmp.replace(path)
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Record Detectron2's backbone features (needs Detectron2 and timm).")
    parser.add_argument("--regenerate", action="store_true", required=True)
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    regenerate(args.cases)
