"""NaiveSyncBatchNorm (the LSJ baselines' head norm) against BatchNorm2d over the whole batch, on one
and on two processes; channel LayerNorm ("LN") by hand and against Detectron2's."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from detlib.layers import LayerNorm, NaiveSyncBatchNorm, get_norm


def _batch(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 5, 4, generator=g) * 2 + 1 for n in sizes]


def test_naive_sync_bn_is_batchnorm_on_one_process():
    x = _batch([4])[0]
    ours, reference = NaiveSyncBatchNorm(3, stats_mode="N"), nn.BatchNorm2d(3)
    torch.testing.assert_close(ours(x), reference(x))
    torch.testing.assert_close(ours.running_var, reference.running_var)
    assert isinstance(get_norm("naiveSyncBN_N", 3), NaiveSyncBatchNorm)


def _two_rank_worker(rank, init_file, sizes, stats_mode, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        norm = NaiveSyncBatchNorm(3, stats_mode=stats_mode)
        with torch.no_grad():
            norm.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        x = _batch(sizes)[rank].requires_grad_()
        out = norm(x)
        (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
        torch.save(
            {"out": out.detach(), "mean": norm.running_mean, "weight_grad": norm.weight.grad, "x_grad": x.grad},
            f"{results}/{rank}.pt",
        )
        dist.barrier()  # no rank tears gloo down while the other is still inside a collective
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sizes, stats_mode", [((2, 2), ""), ((3, 1), "N")])
def test_naive_sync_bn_on_two_processes_normalizes_the_whole_batch(tmp_path, sizes, stats_mode):
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), sizes, stats_mode, str(tmp_path)), nprocs=2)
    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        reference.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    parts = [p.requires_grad_() for p in _batch(sizes)]
    expected = reference(torch.cat(parts))
    # The same loss as the ranks: each weights its outputs by 0, 1, 2, ... in its own order.
    weights = torch.cat([torch.arange(p.numel()).reshape(p.shape) for p in parts])
    (expected * weights).sum().backward()
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    torch.testing.assert_close(torch.cat([r["out"] for r in results]), expected.detach(), atol=1e-5, rtol=1e-5)
    # Gradients flow through the all-reduced statistics to every rank's inputs.
    for part, r in zip(parts, results):
        torch.testing.assert_close(r["x_grad"], part.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(sum(r["weight_grad"] for r in results), reference.weight.grad, atol=1e-3, rtol=1e-4)
    # Running means agree; running variances do not compare: BatchNorm2d keeps the unbiased batch
    # variance, NaiveSyncBatchNorm (as Detectron2's) the population variance.
    for r in results:
        torch.testing.assert_close(r["mean"], reference.running_mean)


def test_channel_layer_norm_by_hand():
    x = torch.randn(2, 4, 3, 5)
    norm = LayerNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight[:, None, None] + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(get_norm("LN", 4), LayerNorm)
    assert set(norm.state_dict()) == {"weight", "bias"}


def test_channel_layer_norm_matches_detectron2():
    d2_layers = pytest.importorskip("detectron2.layers.batch_norm")
    x = torch.randn(2, 6, 4, 4)
    ours, theirs = LayerNorm(6), d2_layers.LayerNorm(6)
    with torch.no_grad():
        theirs.weight.uniform_(-1, 1)
        theirs.bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
