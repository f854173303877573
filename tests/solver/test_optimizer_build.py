import pytest
import torch
from torch import nn

from detlib.config import get_cfg
from detlib.solver import build_optimizer, get_default_optimizer_params


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)
        self.shared = self.fc  # the same parameters reachable twice


def _groups_by_param(groups):
    return {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_norm_and_bias_parameters_get_their_own_decay_and_lr():
    net = Net()
    groups = get_default_optimizer_params(
        net, base_lr=0.1, weight_decay=1e-4, weight_decay_norm=0.0, bias_lr_factor=2.0, weight_decay_bias=0.5
    )
    hyper = _groups_by_param(groups)
    assert len(hyper) == sum(1 for _ in net.parameters())  # each parameter exactly once
    assert sum(len(g["params"]) for g in groups) == len(hyper)
    assert hyper[id(net.conv.weight)] == (0.1, 1e-4)
    assert hyper[id(net.fc.weight)] == (0.1, 1e-4)
    assert hyper[id(net.conv.bias)] == (0.2, 0.5)
    assert hyper[id(net.fc.bias)] == (0.2, 0.5)
    for p in (net.bn.weight, net.gn.weight):
        assert hyper[id(p)] == (0.1, 0.0)
    # Detectron2's order: the bias settings are an override by name, so they win over the norm's decay.
    for p in (net.bn.bias, net.gn.bias):
        assert hyper[id(p)] == (0.2, 0.5)
    assert len(groups) == 3  # one group per distinct setting


def test_weight_decay_bias_defaults_to_weight_decay_and_overrides_win():
    net = Net()
    groups = get_default_optimizer_params(net, 0.1, 1e-4, 0.0, overrides={"weight": {"weight_decay": 0.0}})
    hyper = _groups_by_param(groups)
    assert hyper[id(net.conv.bias)] == (0.1, 1e-4)
    assert hyper[id(net.conv.weight)] == (0.1, 0.0)


def test_frozen_parameters_are_left_out():
    net = Net()
    net.conv.weight.requires_grad_(False)
    assert id(net.conv.weight) not in _groups_by_param(get_default_optimizer_params(net, 0.1, 0.0, 0.0))


def test_build_sgd_and_adamw_from_config():
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.NESTEROV = 0.05, 0.8, True
    sgd = build_optimizer(cfg, Net())
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"]
    cfg.SOLVER.OPTIMIZER = "AdamW"  # a key that may be added to the defaults; read with .get
    adamw = build_optimizer(cfg, Net())
    assert isinstance(adamw, torch.optim.AdamW)
    assert {g["weight_decay"] for g in adamw.param_groups} == {cfg.SOLVER.WEIGHT_DECAY, 0.0}
    cfg.SOLVER.OPTIMIZER = "Adam"
    with pytest.raises(ValueError, match="AdamW"):
        build_optimizer(cfg, Net())


@pytest.mark.parametrize("clip_type", ["value", "norm"])
def test_gradient_clipping(clip_type):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY = 1.0, 0.0, 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    param = nn.Parameter(torch.zeros(2))
    model = nn.Module()
    model.p = param
    optimizer = build_optimizer(cfg, model)
    param.grad = torch.tensor([3.0, -4.0])
    optimizer.step()
    # value: each element clipped to +-0.5; norm: the gradient (norm 5) rescaled to norm 0.5.
    expected = torch.tensor([-0.5, 0.5]) if clip_type == "value" else torch.tensor([-0.3, 0.4])
    torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-6)
    assert isinstance(optimizer, torch.optim.SGD)
