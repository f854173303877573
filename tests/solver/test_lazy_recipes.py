"""The optimizer recipes Python configs use: layer-wise lr decay for ViT, parameter groups with
Detectron2's keyword names, the common schedules, gradient clipping; checked by hand and, when
Detectron2 is installed, against its functions."""

import functools
import math

import pytest
import torch
from torch import nn

from detlib import model_zoo
from detlib.config import instantiate
from detlib.solver import add_gradient_clipping, get_default_optimizer_params, get_vit_lr_decay_rate

VIT_NAMES = [
    "backbone.net.pos_embed",
    "backbone.net.patch_embed.proj.weight",
    "backbone.net.blocks.0.attn.qkv.weight",
    "backbone.net.blocks.11.mlp.fc2.bias",
    "backbone.net.blocks.3.residual.conv1.weight",
    "backbone.simfp_2.0.weight",
    "roi_heads.box_predictor.cls_score.weight",
    "proposal_generator.rpn_head.conv.weight",
]


def test_vit_lr_decay_rate_by_hand():
    rate = functools.partial(get_vit_lr_decay_rate, lr_decay_rate=0.7, num_layers=12)
    assert rate("backbone.net.pos_embed") == pytest.approx(0.7**13)
    assert rate("backbone.net.patch_embed.proj.weight") == pytest.approx(0.7**13)
    assert rate("backbone.net.blocks.0.attn.qkv.weight") == pytest.approx(0.7**12)
    assert rate("backbone.net.blocks.11.mlp.fc2.bias") == pytest.approx(0.7)
    assert rate("backbone.net.blocks.3.residual.conv1.weight") == 1.0  # residual blocks: not decayed
    assert rate("backbone.simfp_2.0.weight") == 1.0
    assert rate("roi_heads.box_predictor.cls_score.weight") == 1.0


def test_vit_lr_decay_rate_matches_detectron2():
    vit = pytest.importorskip("detectron2.modeling.backbone.vit")
    for name in VIT_NAMES:
        for rate, layers in ((0.7, 12), (0.8, 24), (0.9, 32)):
            assert get_vit_lr_decay_rate(name, rate, layers) == pytest.approx(
                vit.get_vit_lr_decay_rate(name, rate, layers)
            )


class TinyViTDet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.net = nn.Module()
        self.backbone.net.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.backbone.net.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(2))
        self.head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))


def _by_param(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: {k: v for k, v in g.items() if k != "params"} for g in groups for p in g["params"]}


def test_default_optimizer_params_vitdet_recipe_by_hand():
    model = TinyViTDet()
    groups = get_default_optimizer_params(
        model,
        base_lr=1e-4,
        weight_decay_norm=0.0,
        lr_factor_func=functools.partial(get_vit_lr_decay_rate, lr_decay_rate=0.5, num_layers=2),
        overrides={"pos_embed": {"weight_decay": 0.0}},
    )
    hyper = _by_param(model, groups)
    assert hyper["backbone.net.pos_embed"] == {"lr": 1e-4 * 0.5**3, "weight_decay": 0.0}
    assert hyper["backbone.net.blocks.0.1.weight"] == {"lr": pytest.approx(1e-4 * 0.5**2)}  # optimizer's decay
    assert hyper["backbone.net.blocks.1.0.weight"] == {"lr": pytest.approx(1e-4 * 0.5), "weight_decay": 0.0}
    assert hyper["head.0.bias"] == {"lr": 1e-4}
    assert hyper["head.1.weight"] == hyper["head.2.bias"] == {"lr": 1e-4, "weight_decay": 0.0}


def test_default_optimizer_params_match_detectron2():
    d2_build = pytest.importorskip("detectron2.solver.build")
    model = TinyViTDet()
    cases = [
        dict(weight_decay_norm=0.0),
        dict(base_lr=0.02, weight_decay=1e-4, weight_decay_norm=0.0, bias_lr_factor=2.0, weight_decay_bias=0.0),
        dict(
            base_lr=1e-4,
            weight_decay_norm=0.0,
            lr_factor_func=functools.partial(get_vit_lr_decay_rate, lr_decay_rate=0.7, num_layers=2),
            overrides={"pos_embed": {"weight_decay": 0.0}},
        ),
    ]
    for kwargs in cases:
        ours = _by_param(model, get_default_optimizer_params(model, **kwargs))
        theirs = _by_param(model, d2_build.get_default_optimizer_params(model, **kwargs))
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert ours[name] == pytest.approx(theirs[name]), name


def test_common_optim_config_builds_sgd_and_adamw_over_a_model():
    model = TinyViTDet()
    for key, kind, lr in (("SGD", torch.optim.SGD, 0.02), ("AdamW", torch.optim.AdamW, 1e-4)):
        cfg = model_zoo.get_config("common/optim.py")[key]
        cfg.params.model = model
        optimizer = instantiate(cfg)
        assert isinstance(optimizer, kind) and optimizer.defaults["lr"] == lr
        norm_groups = [g for g in optimizer.param_groups if any(p is model.head[1].weight for p in g["params"])]
        assert norm_groups[0]["weight_decay"] == 0.0
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_coco_schedule_1x_by_hand():
    schedule = instantiate(model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x)
    total = 90000
    assert schedule(0.0) == pytest.approx(0.001)
    # Linear warmup over 1000 iterations from 0.001 to 1.
    assert schedule(500 / total) == pytest.approx(0.001 + (1 - 0.001) * 0.5)
    assert schedule(30000 / total) == 1.0
    assert schedule(70000 / total) == pytest.approx(0.1)
    assert schedule(85000 / total) == pytest.approx(0.01)


def test_lsj_schedule_matches_detectron2_over_training():
    d2_zoo = pytest.importorskip("detectron2.model_zoo")
    from detectron2.config import instantiate as d2_instantiate

    path = "new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ.py"
    ours = instantiate(model_zoo.get_config(path).lr_multiplier)
    theirs = d2_instantiate(d2_zoo.get_config(path).lr_multiplier)
    for step in range(0, 1000):
        where = step / 1000
        assert ours(where) == pytest.approx(theirs(where)), where


@pytest.mark.parametrize("clip_type, value", [("value", 0.5), ("norm", 1.0)])
def test_gradient_clipping(clip_type, value):
    param = nn.Parameter(torch.zeros(4))
    optimizer = add_gradient_clipping(torch.optim.SGD, clip_type, value)([param], lr=1.0)
    param.grad = torch.tensor([3.0, -4.0, 0.1, 0.0])
    optimizer.step()
    if clip_type == "value":
        expected = -torch.tensor([0.5, -0.5, 0.1, 0.0])
    else:  # norm 5.01 -> scaled to 1
        grad = torch.tensor([3.0, -4.0, 0.1, 0.0])
        expected = -grad / math.sqrt(25.01)
    torch.testing.assert_close(param.data, expected, rtol=1e-5, atol=1e-5)
