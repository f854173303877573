"""Frozen batch norm, and `get_norm`: the one place a norm name from the config becomes a module."""

import logging
from typing import Callable, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn as nn
import torch.nn.functional as F

from .layer_norm import LayerNorm

__all__ = ["BatchNorm2d", "FrozenBatchNorm2d", "SyncBatchNorm2d", "NaiveSyncBatchNorm", "LayerNorm", "get_norm"]


def _scale_and_shift(
    mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inference batch norm as one scale and shift per channel: y = x * scale + shift."""
    scale = weight * (var + eps).rsqrt()
    return scale, bias - mean * scale


def _affine_batch_norm(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Inference batch norm of an N x C x H x W map, written out as its scale and shift."""
    scale, shift = _scale_and_shift(mean, var, weight, bias, eps)
    return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)


class BatchNorm2d(nn.BatchNorm2d):
    """
    `nn.BatchNorm2d` (same parameters, statistics and training), whose inference inside a traced program
    (torch.export, torch.compile) is the affine transform written out: aten's batch norm branches on an
    empty input, which a program cannot when the batch is a data-dependent number of RoIs (a mask head's
    BN). Eager inference keeps the fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not torch.compiler.is_compiling() or not (self.track_running_stats and self.affine):
            return super().forward(x)
        return _affine_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)


class FrozenBatchNorm2d(nn.Module):
    """
    Batch norm whose statistics and affine parameters are fixed: `y = (x - mean) / sqrt(var + eps) * w + b`.

    All four tensors are buffers (never trained, never touched by weight decay) and are named as in
    `nn.BatchNorm2d`, so checkpoints of either kind load into the other by name.
    """

    # Version 3: `running_var` is the plain variance (older Detectron checkpoints stored var + eps);
    # version 2 added the running statistics, version 1 had only weight and bias.
    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        # Identity until a checkpoint fills them: unit scale, zero shift, and statistics that
        # cancel (var + eps == 1).
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0 - eps)):
            self.register_buffer(name, torch.full((num_features,), fill))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or torch.compiler.is_compiling():
            # F.batch_norm's backward also computes gradients for weight and bias; a plain affine
            # transform does not, which saves memory when only the input needs a gradient. Traced
            # programs take it too (see `BatchNorm2d`).
            return _affine_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        # Without autograd the fused kernel is the faster path.
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def fold_into(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        The weight and bias of a convolution that computes `self(conv(x))` in one op, given the preceding
        convolution's `weight` (out_channels first) and `bias` (None for none). The buffers are untouched, so
        checkpoints keep the unfolded names and values.
        """
        scale, shift = _scale_and_shift(self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        if bias is not None:
            shift = shift + bias * scale
        return weight * scale.reshape(-1, *([1] * (weight.dim() - 1))).to(weight.dtype), shift.to(weight.dtype)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # An nn.BatchNorm2d checkpoint carries a step counter, meaningless once frozen. Its version number
        # is BatchNorm's own, not one of ours, and its statistics are already in the current format.
        from_batchnorm = state_dict.pop(prefix + "num_batches_tracked", None) is not None
        version = None if from_batchnorm else local_metadata.get("version", None)
        if version is None or version < 2:
            # Checkpoints from before running statistics were stored: identity statistics.
            state_dict.setdefault(prefix + "running_mean", torch.zeros_like(self.running_mean))
            state_dict.setdefault(prefix + "running_var", torch.ones_like(self.running_var))
        if version is not None and version < 3:
            logging.getLogger(__name__).info("FrozenBatchNorm %s is upgraded to version 3.", prefix.rstrip("."))
            state_dict[prefix + "running_var"] = state_dict[prefix + "running_var"] - self.eps
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """
        Replace every `nn.BatchNorm2d` / `nn.SyncBatchNorm` in `module` by a `FrozenBatchNorm2d` with
        the same statistics, affine parameters and eps.

        Children are replaced in place; if `module` itself is a batch norm a new module is returned,
        so always use the return value.
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, eps=module.eps)
            # Assigning to a buffer's name replaces the buffer, keeping the source's device and dtype.
            if module.affine:
                frozen.weight = module.weight.detach().clone()
                frozen.bias = module.bias.detach().clone()
            if module.track_running_stats:
                frozen.running_mean = module.running_mean.clone()
                frozen.running_var = module.running_var.clone()
            return frozen
        for name, child in module.named_children():
            converted = cls.convert_frozen_batchnorm(child)
            if converted is not child:
                module.add_module(name, converted)
        return module


class SyncBatchNorm2d(BatchNorm2d):
    """
    Batch norm whose training statistics are those of the whole batch over all processes of the default group:
    each process's output equals `nn.BatchNorm2d` applied to the concatenation of every process's input, and so
    do the running statistics. Works on any device and backend (gloo too, unlike `nn.SyncBatchNorm`). With one
    process, or in eval mode, it is `nn.BatchNorm2d`; its state dict is `nn.BatchNorm2d`'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"SyncBatchNorm2d takes N x C x H x W inputs, got shape {tuple(x.shape)}")
        channels = x.shape[1]
        # One all-reduce of [sum, sum of squares, count]; autograd flows through it, so each process's
        # gradient includes the other processes' dependence on its statistics. Processes may hold different
        # batch sizes (also 0); the statistics stay on the device (no host sync).
        local = x.float()
        count = torch.full((1,), local.numel() / channels, dtype=local.dtype, device=local.device)
        stats = torch.cat([local.sum(dim=(0, 2, 3)), (local * local).sum(dim=(0, 2, 3)), count])
        stats = dist_nn.all_reduce(stats)
        total = stats[-1].clamp(min=1)  # all batches empty: zeros in, zeros out
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean * mean).clamp(min=0)

        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum
                self.num_batches_tracked.add_(1)
                if momentum is None:  # a cumulative moving average, as in nn.BatchNorm2d
                    momentum = 1.0 / float(self.num_batches_tracked)
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))

        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        return (local * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(x.dtype)


class NaiveSyncBatchNorm(BatchNorm2d):
    """
    Batch norm whose training statistics are averaged over all processes with one all-reduce.

    Unlike `nn.SyncBatchNorm` it accepts an empty batch on some workers (ROI heads may see no boxes).
    `stats_mode=""` averages the per-worker means with equal weight (every worker needs a non-empty
    batch); `stats_mode="N"` weights each worker by its batch size, so empty batches count for nothing.
    On a single process, or in eval mode, it is `nn.BatchNorm2d`.
    """

    def __init__(self, *args, stats_mode: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        if stats_mode not in ("", "N"):
            raise ValueError(f"NaiveSyncBatchNorm stats_mode must be '' or 'N', got {stats_mode!r}")
        self._stats_mode = stats_mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not self.training or not distributed or torch.distributed.get_world_size() == 1:
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce  # differentiable all-reduce

        batch, channels = input.shape[0], input.shape[1]
        dtype = input.dtype
        x = input.float()  # statistics in float32 under autocast
        mean = x.mean(dim=[0, 2, 3]) if batch > 0 else x.sum(dim=[0, 2, 3])
        mean_sq = (x * x).mean(dim=[0, 2, 3]) if batch > 0 else x.sum(dim=[0, 2, 3])
        if self._stats_mode == "":
            if batch == 0:
                raise ValueError("NaiveSyncBatchNorm(stats_mode='') got an empty batch; use stats_mode='N'")
            stats = all_reduce(torch.cat([mean, mean_sq])) / torch.distributed.get_world_size()
            momentum = self.momentum
        else:
            count = x.new_full((1,), float(batch))
            stats = all_reduce(torch.cat([mean * batch, mean_sq * batch, count]))
            total = stats[-1].detach()
            momentum = self.momentum * (total > 0).float()  # no worker had data: keep the running stats
            stats = stats[:-1] / total.clamp(min=1)
        mean, mean_sq = torch.split(stats, channels)
        var = mean_sq - mean * mean
        with torch.no_grad():
            self.running_mean += momentum * (mean.detach() - self.running_mean)
            self.running_var += momentum * (var.detach() - self.running_var)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return (x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(dtype)


def _group_norm_32(num_channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, num_channels)


_NORMS = {
    "BN": BatchNorm2d,
    # Synchronized across processes when training is distributed; plain BN on a single process.
    "SyncBN": SyncBatchNorm2d,
    "naiveSyncBN": NaiveSyncBatchNorm,
    # PyTorch's own (CUDA and a few other devices only).
    "nnSyncBN": nn.SyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": _group_norm_32,
    # Over the channels of each pixel (ViTDet, ConvNeXt); see `LayerNorm`.
    "LN": LayerNorm,
    # Detectron2's NaiveSyncBatchNorm: workers' means averaged with equal weight, or by batch size ("_N").
    "naiveSyncBN_N": lambda channels: NaiveSyncBatchNorm(channels, stats_mode="N"),
}


def get_norm(norm: Union[str, Callable[[int], nn.Module], None], out_channels: int) -> Optional[nn.Module]:
    """
    Build the normalization layer named by a config string.

    Args:
        norm: "" or None (no norm: returns None), "BN", "SyncBN" (`SyncBatchNorm2d`), "naiveSyncBN" /
            "naiveSyncBN_N" (`NaiveSyncBatchNorm`), "nnSyncBN" (`nn.SyncBatchNorm`), "FrozenBN", "GN" (32 groups),
            "LN" (`LayerNorm` over channels), or a callable taking the channel count and returning a module.
        out_channels: number of channels the norm acts on.
    """
    if norm is None or norm == "":
        return None
    if isinstance(norm, str):
        if norm not in _NORMS:
            raise ValueError(f"Unknown norm {norm!r}; expected one of {sorted(_NORMS)}, '' or a callable.")
        norm = _NORMS[norm]
    return norm(out_channels)
