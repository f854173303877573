"""SyncBatchNorm2d: over two gloo processes it is nn.BatchNorm2d on the concatenated batch (outputs, input and
parameter gradients, running statistics); in one process it is nn.BatchNorm2d."""

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from detlib.engine.launch import launch
from detlib.layers import SyncBatchNorm2d, get_norm

CHANNELS = 5
# Unequal batch sizes per process: the statistics must weigh each sample, not each process, equally.
BATCH_SIZES = (3, 1)


def _inputs():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, CHANNELS, 4, 6, generator=g) * 3 + 1 for n in BATCH_SIZES]
    grads = [torch.randn(n, CHANNELS, 4, 6, generator=g) for n in BATCH_SIZES]
    return xs, grads


def _affine(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, CHANNELS))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, CHANNELS))
    return bn


def _run_rank(out_dir: str) -> None:
    rank = dist.get_rank()
    xs, grads = _inputs()
    bn = _affine(SyncBatchNorm2d(CHANNELS, momentum=0.3))
    x = xs[rank].clone().requires_grad_(True)
    for _ in range(2):  # twice: the running statistics' update is checked after two steps
        y = bn(x)
    y.backward(grads[rank])
    torch.save(
        {
            "y": y.detach(),
            "x_grad": x.grad,
            "weight_grad": bn.weight.grad,
            "bias_grad": bn.bias.grad,
            "running_mean": bn.running_mean,
            "running_var": bn.running_var,
        },
        f"{out_dir}/rank{rank}.pt",
    )


def test_two_processes_equal_batch_norm_over_the_concatenated_batch(tmp_path):
    launch(_run_rank, num_gpus_per_machine=2, args=(str(tmp_path),))
    xs, grads = _inputs()
    bn = _affine(nn.BatchNorm2d(CHANNELS, momentum=0.3))
    x = torch.cat(xs).requires_grad_(True)
    for _ in range(2):
        y = bn(x)
    y.backward(torch.cat(grads))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad, rtol=1e-4, atol=1e-5)
    # DDP averages the parameter gradients; their sum over the processes is the whole batch's gradient.
    for name, reference in (("weight_grad", bn.weight.grad), ("bias_grad", bn.bias.grad)):
        torch.testing.assert_close(ranks[0][name] + ranks[1][name], reference, rtol=1e-4, atol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["running_var"], bn.running_var, rtol=1e-5, atol=1e-6)
    # Not the per-process statistics: rank 1's lone sample normalized alone would give other outputs.
    alone = _affine(nn.BatchNorm2d(CHANNELS))(xs[1])
    assert not torch.allclose(ranks[1]["y"], alone.detach(), atol=1e-2)


@pytest.mark.parametrize("training", [True, False])
def test_one_process_is_plain_batch_norm(training):
    xs, _ = _inputs()
    sync, plain = _affine(SyncBatchNorm2d(CHANNELS)), _affine(nn.BatchNorm2d(CHANNELS))
    sync.train(training)
    plain.train(training)
    torch.testing.assert_close(sync(xs[0]), plain(xs[0]))
    assert sync.state_dict().keys() == plain.state_dict().keys()


def test_config_names_build_the_synchronized_norm():
    assert type(get_norm("SyncBN", 8)) is SyncBatchNorm2d
    with pytest.raises(ValueError, match="Unknown norm 'SyncGN'.*SyncBN"):
        get_norm("SyncGN", 8)
