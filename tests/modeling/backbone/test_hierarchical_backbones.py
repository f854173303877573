"""Swin, MViT and RegNet as Detectron2's configs use them: under detlib's FPN (with "LN" for MViT), and their
freezing options. (Their features against Detectron2's modules: tests/differential/test_backbones.py.)"""

from functools import partial

import pytest
import torch
import torch.nn as nn

from detlib.layers import FrozenBatchNorm2d, LayerNorm
from detlib.modeling.backbone import FPN, MViT, RegNet, SwinTransformer
from detlib.modeling.backbone.fpn import LastLevelMaxPool
from detlib.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem


def tiny_swin(**kwargs) -> SwinTransformer:
    return SwinTransformer(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3, **kwargs)


def tiny_mvit(**kwargs) -> MViT:
    return MViT(img_size=64, embed_dim=8, depth=4, last_block_indexes=(0, 1, 2, 3), adaptive_window_size=8, **kwargs)


def tiny_regnet(**kwargs) -> RegNet:
    args = dict(stem_width=8, depth=6, w_a=8.0, w_0=8, w_m=1.5, group_width=4, out_features=["s1", "s2", "s3", "s4"])
    return RegNet(stem_class=SimpleStem, block_class=ResBottleneckBlock, **args, **kwargs)


@pytest.mark.parametrize(
    "build, in_features, norm",
    [
        (tiny_swin, ("p0", "p1", "p2", "p3"), ""),
        (
            partial(tiny_mvit, norm_layer=partial(nn.LayerNorm, eps=1e-6)),
            ("scale2", "scale3", "scale4", "scale5"),
            "LN",
        ),
        (tiny_regnet, ("s1", "s2", "s3", "s4"), ""),
    ],
    ids=["swin", "mvit", "regnet"],
)
def test_under_fpn(build, in_features, norm):
    torch.manual_seed(0)
    fpn = FPN(build(), in_features, 16, norm=norm, top_block=LastLevelMaxPool(), square_pad=0)
    if norm == "LN":
        assert isinstance(fpn.fpn_output2.norm, LayerNorm)
    out = fpn.eval()(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"p{k}": (1, 16, 64 // 2**k, 96 // 2**k) for k in (2, 3, 4, 5)
    } | {"p6": (1, 16, 1, 2)}


def test_regnet_4gf_widths_and_freezing():
    # RegNetX-4.0GF of the DDS paper (pycls): four stages of widths 80, 240, 560, 1360 and depths 2, 5, 14, 2.
    model = RegNet(
        stem_class=SimpleStem,
        stem_width=32,
        block_class=ResBottleneckBlock,
        depth=23,
        w_a=38.65,
        w_0=96,
        w_m=2.43,
        group_width=40,
        freeze_at=2,
        norm="BN",
        out_features=["s1", "s2", "s3", "s4"],
    )
    assert [s.channels for s in model.output_shape().values()] == [80, 240, 560, 1360]
    assert [len(list(stage.children())) for stage, _ in model.stages_and_names] == [2, 5, 14, 2]
    assert [s.stride for s in model.output_shape().values()] == [4, 8, 16, 32]
    # freeze_at=2: the stem and s1 are frozen (no gradients, FrozenBatchNorm), s2 trains.
    assert isinstance(model.stem.bn, FrozenBatchNorm2d) and isinstance(model.s1.b1.f.a_bn, FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in model.s1.parameters())
    assert isinstance(model.s2.b1.f.a_bn, nn.BatchNorm2d) and all(p.requires_grad for p in model.s2.parameters())


def test_swin_frozen_stages():
    model = tiny_swin(frozen_stages=2, ape=True, pretrain_img_size=32)
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not model.absolute_pos_embed.requires_grad
    assert not any(p.requires_grad for p in model.layers[0].parameters())
    assert all(p.requires_grad for p in model.layers[1].parameters())


def test_mvit_outputs_a_subset_of_stages():
    model = tiny_mvit(out_features=("scale3", "scale5"))
    assert [name for name, _ in model.named_children() if name.endswith("_norm")] == ["scale3_norm", "scale5_norm"]
    out = model.eval()(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"scale3": (1, 16, 8, 8), "scale5": (1, 64, 2, 2)}
