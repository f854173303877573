"""ViT pieces against hand-written references: window partitioning, relative and absolute positions, the LN norm,
drop path, activation checkpointing, the simple pyramid's layout, the YAML builder and layer-wise lr decay.
(Features against Detectron2's modules: tests/differential/test_backbones.py.)"""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from detlib.config import get_cfg
from detlib.layers import DropPath, LayerNorm, ShapeSpec, get_norm
from detlib.modeling.backbone import SimpleFeaturePyramid, ViT, build_backbone, get_vit_lr_decay_rate
from detlib.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detlib.modeling.backbone.utils import add_decomposed_rel_pos, get_abs_pos, window_partition, window_unpartition

REPO = Path(__file__).resolve().parents[3]


def test_window_partition_pads_and_round_trips():
    x = torch.randn(2, 5, 7, 3)
    windows, pad_hw = window_partition(x, 3)
    assert pad_hw == (6, 9) and windows.shape == (2 * 2 * 3, 3, 3, 3)
    # Window 4 of image 1 is row 1, column 1 of its 2 x 3 grid: pixels [3:6, 3:6], the last row padding.
    torch.testing.assert_close(windows[6 + 4, :2], x[1, 3:5, 3:6])
    assert windows[6 + 4, 2].abs().sum() == 0
    torch.testing.assert_close(window_unpartition(windows, 3, pad_hw, (5, 7)), x)


def test_decomposed_rel_pos_by_hand():
    torch.manual_seed(0)
    q_size, k_size, c = (2, 3), (2, 3), 4
    q = torch.randn(1, 6, c)
    rel_h, rel_w = torch.randn(2 * 2 - 1, c), torch.randn(2 * 3 - 1, c)
    out = add_decomposed_rel_pos(torch.zeros(1, 6, 6), q, rel_h, rel_w, q_size, k_size)
    for i in range(6):
        for j in range(6):
            (qy, qx), (ky, kx) = divmod(i, 3), divmod(j, 3)
            expected = q[0, i] @ rel_h[qy - ky + 1] + q[0, i] @ rel_w[qx - kx + 2]
            torch.testing.assert_close(out[0, i, j], expected)


def test_abs_pos_drops_the_class_token_and_resizes():
    grid = torch.randn(1, 1 + 4, 3)
    same = get_abs_pos(grid, True, (2, 2))
    torch.testing.assert_close(same, grid[:, 1:].reshape(1, 2, 2, 3))
    # A constant embedding stays constant when resized.
    const = torch.full((1, 9, 2), 0.5)
    torch.testing.assert_close(get_abs_pos(const, False, (5, 4)), torch.full((1, 5, 4, 2), 0.5))


def test_ln_norm_normalizes_channels_of_each_pixel():
    norm = get_norm("LN", 4)
    assert isinstance(norm, LayerNorm)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, 0.0, -1.0]))
    x = torch.randn(2, 4, 3, 5)
    mean = x.mean(1, keepdim=True)
    var = ((x - mean) ** 2).mean(1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight[:, None, None] + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), expected)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    layer = DropPath(0.25)
    y = layer(torch.ones(4000, 3, 2))
    kept = y[:, 0, 0] != 0
    assert torch.all(y[kept] == 1 / 0.75) and torch.all(y[~kept] == 0)
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert torch.equal(layer.eval()(y), y)


def tiny_vit(**kwargs) -> ViT:
    args = dict(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2, window_size=2)
    args.update(window_block_indexes=[0, 2], use_rel_pos=True, pretrain_img_size=64, **kwargs)
    return ViT(**args)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny_vit()
    checkpointed = tiny_vit(use_act_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 48)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        model(x)["last_feat"].square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_simple_feature_pyramid_layout():
    net = tiny_vit()
    sfp = SimpleFeaturePyramid(net, "last_feat", 8, (4.0, 2.0, 1.0, 0.5), top_block=LastLevelMaxPool(), norm="LN")
    assert [name for name, _ in sfp.named_children() if name.startswith("simfp")] == [
        f"simfp_{k}" for k in (2, 3, 4, 5)
    ]
    # Two transposed convolutions (32 -> 16 -> 8 channels) with a norm and GELU between for stride 4.
    assert [type(m).__name__ for m in sfp.simfp_2] == ["ConvTranspose2d", "LayerNorm", "GELU", "ConvTranspose2d"] + [
        "Conv2d"
    ] * 2
    assert sfp.simfp_2[4].in_channels == 8 and sfp.simfp_2[4].bias is None
    out = sfp(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 8, 16, 24),
        "p3": (1, 8, 8, 12),
        "p4": (1, 8, 4, 6),
        "p5": (1, 8, 2, 3),
        "p6": (1, 8, 1, 2),
    }
    assert sfp.padding_constraints == {"size_divisiblity": 32, "square_size": 0}
    with pytest.raises(ValueError, match="top block reads 'res5'"):
        SimpleFeaturePyramid(net, "last_feat", 8, (4.0, 2.0, 1.0), top_block=LastLevelP6P7(8, 8))


def test_yaml_builder_follows_the_config():
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "Shapes" / "mask_rcnn_vit_tiny_shapes.yaml"))
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    vit = backbone.net
    assert len(vit.blocks) == 4 and vit.pos_embed.shape == (1, 256, 128)
    assert [b.window_size for b in vit.blocks] == [8, 0] * 2
    assert vit.blocks[1].attn.rel_pos_h.shape == (2 * 16 - 1, 32)  # global: the 16 x 16 token map
    assert vit.blocks[0].attn.rel_pos_h.shape == (2 * 8 - 1, 32)  # windowed: an 8 x 8 window
    assert isinstance(vit.blocks[0].norm1, nn.LayerNorm) and vit.blocks[0].norm1.eps == 1e-6
    assert {k: v.stride for k, v in backbone.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}


def test_yaml_builder_adds_the_max_pooled_level_after_the_coarsest_scale():
    # A stride-8 ViT (patch 8) with factors (2, 1, 0.5) gives strides 4, 8, 16, and the pooled level 32 after them.
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_vit_sfp_backbone"
    cfg.merge_from_list(["MODEL.VIT.PATCH_SIZE", 8, "MODEL.VIT.EMBED_DIM", 32, "MODEL.VIT.DEPTH", 1])
    cfg.merge_from_list(["MODEL.VIT.NUM_HEADS", 2, "MODEL.VIT.IMG_SIZE", 64, "MODEL.VIT.PRETRAIN_IMG_SIZE", 64])
    cfg.merge_from_list(["MODEL.VIT.WINDOW_BLOCK_INDEXES", [], "MODEL.SFP.SCALE_FACTORS", [2.0, 1.0, 0.5]])
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    assert {k: v.stride for k, v in backbone.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    out = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (16, 24),
        "p3": (8, 12),
        "p4": (4, 6),
        "p5": (2, 3),
    }
    assert torch.equal(out["p5"], out["p4"][..., ::2, ::2])


def test_vit_lr_decay_rate_by_layer():
    # 12 blocks, rate 0.5: embeddings are layer 0, block i layer i + 1, everything else layer 13 (factor 1).
    rate = lambda name: get_vit_lr_decay_rate(name, lr_decay_rate=0.5, num_layers=12)  # noqa: E731
    assert rate("backbone.net.pos_embed") == 0.5**13
    assert rate("backbone.net.patch_embed.proj.weight") == 0.5**13
    assert rate("backbone.net.blocks.0.attn.qkv.weight") == 0.5**12
    assert rate("backbone.net.blocks.11.mlp.fc2.bias") == 0.5
    assert rate("backbone.net.blocks.3.residual.conv1.weight") == 1.0
    assert rate("backbone.simfp_2.0.weight") == 1.0
    assert rate("roi_heads.box_predictor.cls_score.weight") == 1.0
