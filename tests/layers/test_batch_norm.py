"""FrozenBatchNorm2d against nn.BatchNorm2d in eval mode, its checkpoint compatibility, and get_norm."""

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from detlib.layers import BatchNorm2d, FrozenBatchNorm2d, get_norm


def _random_bn(num_features: int, eps: float = 1e-5, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(num_features, eps=eps)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(num_features, generator=g) * 2 - 0.5)
        bn.bias.copy_(torch.randn(num_features, generator=g))
        bn.running_mean.copy_(torch.randn(num_features, generator=g))
        bn.running_var.copy_(torch.rand(num_features, generator=g) * 3 + 0.1)
    return bn.eval()


def _frozen_like(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    # BatchNorm's state dict carries BatchNorm's version number (2), which must not be read as an old
    # FrozenBatchNorm2d format: a wrong eps correction would show with eps=1e-3 below.
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    frozen.load_state_dict(bn.state_dict())
    return frozen


@pytest.mark.parametrize("requires_grad", [False, True])
def test_frozen_bn_equals_eval_batchnorm(requires_grad):
    bn = _random_bn(6, eps=1e-3)
    frozen = _frozen_like(bn)
    x = torch.randn(2, 6, 5, 7, requires_grad=requires_grad)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)
    # By definition, with the stats written out independently of both modules.
    expected = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-3)
    expected = expected * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-5)


def test_frozen_bn_gradients_reach_input_only():
    bn = _random_bn(4)
    frozen = _frozen_like(bn)
    assert list(frozen.parameters()) == []
    x1 = torch.randn(3, 4, 4, 4, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    (frozen(x1) ** 2).sum().backward()
    (bn(x2) ** 2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)


def test_frozen_bn_does_not_update_in_training_mode():
    frozen = _frozen_like(_random_bn(4))
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen.train()
    frozen(torch.randn(8, 4, 3, 3) * 5 + 2)
    for key, value in frozen.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_frozen_bn_half_precision_input_keeps_dtype():
    frozen = _frozen_like(_random_bn(4))
    x = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    assert frozen(x).dtype == torch.bfloat16


def test_convert_frozen_batchnorm_replaces_nested_and_top_level():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        _random_bn(4, seed=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 1), _random_bn(4, eps=1e-4, seed=2)),
    ).eval()
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], FrozenBatchNorm2d) and isinstance(model[3][1], FrozenBatchNorm2d)
    assert model[3][1].eps == 1e-4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)

    bn = _random_bn(5, seed=3)
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(frozen, name), getattr(bn, name).detach()), name
    # The copies are independent of the source module.
    with torch.no_grad():
        bn.weight.add_(1)
    assert not torch.equal(frozen.weight, bn.weight.detach())


def test_convert_frozen_batchnorm_converts_syncbn():
    model = nn.Sequential(nn.SyncBatchNorm(3))
    assert isinstance(FrozenBatchNorm2d.convert_frozen_batchnorm(model)[0], FrozenBatchNorm2d)


def _versioned_state(tensors: dict, version):
    state = OrderedDict(tensors)
    state._metadata = OrderedDict({"": {"version": version}})
    return state


def test_loads_batchnorm_checkpoint_with_step_counter():
    bn = _random_bn(3)
    assert "num_batches_tracked" in bn.state_dict()
    frozen = FrozenBatchNorm2d(3)
    frozen.load_state_dict(bn.state_dict(), strict=True)
    torch.testing.assert_close(frozen.running_var, bn.running_var)


def test_version2_checkpoint_running_var_included_eps():
    # Checkpoints before version 3 stored var + eps in running_var.
    frozen = FrozenBatchNorm2d(2, eps=0.01)
    state = _versioned_state(
        {
            "weight": torch.ones(2),
            "bias": torch.zeros(2),
            "running_mean": torch.zeros(2),
            "running_var": torch.tensor([1.01, 4.01]),
        },
        version=2,
    )
    frozen.load_state_dict(state)
    torch.testing.assert_close(frozen.running_var, torch.tensor([1.0, 4.0]))
    x = torch.ones(1, 2, 1, 1)
    torch.testing.assert_close(frozen(x).flatten(), torch.tensor([1 / 1.01**0.5, 1 / 4.01**0.5]))


def test_version1_checkpoint_without_running_stats():
    # The oldest checkpoints had only the affine part; statistics default to mean 0, var 1 - eps + eps.
    frozen = FrozenBatchNorm2d(2)
    frozen.load_state_dict(
        _versioned_state({"weight": torch.tensor([2.0, 3.0]), "bias": torch.tensor([1.0, 0.0])}, version=1)
    )
    x = torch.tensor([1.0, -2.0]).reshape(1, 2, 1, 1)
    torch.testing.assert_close(frozen(x).flatten(), torch.tensor([3.0, -6.0]), rtol=0, atol=1e-6)


def test_get_norm_names():
    assert get_norm("", 8) is None
    assert get_norm(None, 8) is None
    bn = get_norm("BN", 8)
    assert type(bn) is BatchNorm2d and isinstance(bn, nn.BatchNorm2d) and bn.num_features == 8
    assert type(get_norm("nnSyncBN", 8)) is nn.SyncBatchNorm
    frozen = get_norm("FrozenBN", 8)
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.num_features == 8
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32 and gn.num_channels == 64
    custom = get_norm(lambda c: nn.GroupNorm(4, c), 8)
    assert custom.num_groups == 4 and custom.num_channels == 8


def test_get_norm_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"'BatchNorm'.*FrozenBN"):
        get_norm("BatchNorm", 8)


def test_syncbn_runs_as_batchnorm_on_one_process():
    torch.manual_seed(0)
    sync, plain = get_norm("SyncBN", 4).train(), get_norm("BN", 4).train()
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_mean, plain.running_mean)


class _FirstRows(nn.Module):
    """A norm over the first k rows of a batch, k a value: the shape a mask head's norm sees in a program."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        n = k.item()
        torch._check_is_size(n)
        torch._check(n <= x.shape[0])
        return self.norm(x[:n])


@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "SyncBN"])
def test_inference_exports_on_a_data_dependent_batch_as_eager(norm):
    g = torch.Generator().manual_seed(0)
    module = get_norm(norm, 4)
    for name in ("weight", "bias", "running_mean"):
        getattr(module, name).data.normal_(generator=g)
    module.running_var.data.uniform_(0.5, 2.0, generator=g)
    module = _FirstRows(module.eval())
    x = torch.randn(6, 4, 3, 5, generator=g)
    program = torch.export.export(module, (x, torch.tensor(3)), strict=False).module()
    for k in (0, 2, 6):  # an empty batch too
        torch.testing.assert_close(program(x, torch.tensor(k)), module(x, torch.tensor(k)), rtol=1e-6, atol=1e-6)
