"""Thin wrappers over torch ops: a convolution that carries its norm and activation, and small tensor helpers."""

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batch_norm import FrozenBatchNorm2d

__all__ = [
    "Conv2d",
    "ConvTranspose2d",
    "Linear",
    "cat",
    "cross_entropy",
    "interpolate",
    "move_device_like",
    "nonzero_tuple",
    "shapes_to_tensor",
]

# Plain torch modules, exported under the names model code imports from `detlib.layers`.
ConvTranspose2d = nn.ConvTranspose2d
Linear = nn.Linear
interpolate = F.interpolate


class Conv2d(nn.Conv2d):
    """
    `nn.Conv2d` followed by an optional norm and activation: conv -> norm -> activation.

    The norm is a child module named `norm`, so its parameters appear as `<conv>.norm.weight` etc.
    """

    def __init__(
        self,
        *args,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        **kwargs,
    ):
        """
        Args:
            *args, **kwargs: those of `nn.Conv2d`.
            norm: module applied to the convolution's output, e.g. from `get_norm`.
            activation: callable applied last, e.g. `F.relu`.
        """
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The batch size is tested last: while exporting it can be data-dependent (and training is off).
        if self.training and isinstance(self.norm, nn.SyncBatchNorm) and x.numel() == 0:
            raise ValueError(
                f"SyncBatchNorm cannot normalize an empty batch; this Conv2d got input of shape {tuple(x.shape)}."
            )
        if self._folds_norm(x):
            x = self._conv_forward(x, *self.norm.fold_into(self.weight, self.bias))
        else:
            x = self._conv_forward(x, self.weight, self.bias)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _folds_norm(self, x: torch.Tensor) -> bool:
        # A frozen norm is an affine map of the convolution's output, so at inference it goes into the
        # convolution's weight and bias: one pass over the activations instead of two. Folding on every call
        # (a few MB of weights, nothing cached) means changed weights or statistics are always used as they are.
        # Training keeps the unfolded graph, so its gradients and losses are those of the peers.
        return isinstance(self.norm, FrozenBatchNorm2d) and not self.training and not torch.is_grad_enabled()


def cat(tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """`torch.cat` that returns a single tensor as is instead of copying it."""
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"cat expects a list or tuple of tensors, got {type(tensors).__name__}.")
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat(tensors, dim)


def cross_entropy(input: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean", **kwargs) -> torch.Tensor:
    """`F.cross_entropy` that gives a zero loss (still connected to `input`) for an empty mean-reduced batch."""
    if target.numel() == 0 and reduction == "mean":
        return input.sum() * 0.0
    return F.cross_entropy(input, target, reduction=reduction, **kwargs)


def nonzero_tuple(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Indices of non-zero elements, one 1D tensor per dimension (`torch.nonzero(x, as_tuple=True)`), for 0-d too."""
    if x.dim() == 0:
        return x.unsqueeze(0).nonzero().unbind(1)
    return x.nonzero().unbind(1)


def move_device_like(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Move `src` to the device of `dst`."""
    return src.to(dst.device)


def shapes_to_tensor(x: List[Union[int, torch.Tensor]], device: Optional[torch.device] = None) -> torch.Tensor:
    """
    Turn a list of sizes into a 1D tensor.

    Sizes that are already tensors (as they are while tracing) are stacked, so a traced graph keeps them dynamic.
    """
    if x and all(isinstance(t, torch.Tensor) for t in x):
        stacked = torch.stack(list(x))
        return stacked if device is None else stacked.to(device)
    return torch.as_tensor(x, device=device)
