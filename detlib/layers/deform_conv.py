"""
Deformable convolution (v1, Dai et al. 2017) and its modulated form (v2, Zhu et al. 2019):
torch.ops.detlib.deform_conv2d (or torchvision's, same schema and math), as a function and as Detectron2's
`DeformConv` / `ModulatedDeformConv` modules.
"""

from typing import Callable, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ._extension import KERNELS

__all__ = ["deform_conv2d", "DeformConv", "ModulatedDeformConv"]

IntPair = Union[int, Tuple[int, int]]


def _shape(t: torch.Tensor) -> list:
    return list(t.shape)


def _check_arguments(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    out_hw: Tuple[int, int],
) -> Tuple[int, int]:
    """Check the shapes of deform_conv2d's tensors; return (groups, offset_groups) as the shapes imply them."""
    if input.dim() != 4:
        raise ValueError(f"deform_conv2d: input must be Tensor[N, C, H, W], got shape {_shape(input)}")
    if weight.dim() != 4:
        raise ValueError(f"deform_conv2d: weight must be Tensor[C_out, C_in / groups, kH, kW], got {_shape(weight)}")
    channels, (kernel_h, kernel_w) = input.size(1), weight.shape[2:]
    if weight.size(1) == 0 or channels % weight.size(1) != 0:
        raise ValueError(
            f"deform_conv2d: input's {channels} channels are not a multiple of weight's {weight.size(1)} input "
            f"channels per group (input {_shape(input)}, weight {_shape(weight)})"
        )
    groups = channels // weight.size(1)
    if weight.size(0) % groups != 0:
        raise ValueError(
            f"deform_conv2d: weight's {weight.size(0)} output channels are not divisible by groups={groups} "
            f"(weight {_shape(weight)}, input {_shape(input)})"
        )
    if min(out_hw) <= 0:
        raise ValueError(
            f"deform_conv2d: input {_shape(input)} is too small for kernel {kernel_h}x{kernel_w}: the output "
            f"would be {out_hw[0]}x{out_hw[1]}"
        )
    taps = kernel_h * kernel_w
    expected_rows = (input.size(0), None, *out_hw)
    if offset.dim() != 4 or offset.size(1) % (2 * taps) != 0 or offset.size(1) == 0:
        raise ValueError(
            f"deform_conv2d: offset must be Tensor[N, 2 * offset_groups * {kernel_h} * {kernel_w}, "
            f"{out_hw[0]}, {out_hw[1]}], got shape {_shape(offset)}"
        )
    offset_groups = offset.size(1) // (2 * taps)
    if (offset.size(0), None, *offset.shape[2:]) != expected_rows:
        raise ValueError(
            f"deform_conv2d: offset must be Tensor[{input.size(0)}, {offset.size(1)}, {out_hw[0]}, {out_hw[1]}] "
            f"(batch and output size of input {_shape(input)}), got shape {_shape(offset)}"
        )
    if channels % offset_groups != 0:
        raise ValueError(
            f"deform_conv2d: input's {channels} channels are not divisible by the {offset_groups} offset groups "
            f"of offset {_shape(offset)}"
        )
    if mask is not None and _shape(mask) != [input.size(0), offset_groups * taps, *out_hw]:
        raise ValueError(
            f"deform_conv2d: mask must be Tensor[{input.size(0)}, {offset_groups * taps}, {out_hw[0]}, "
            f"{out_hw[1]}] (one weight per offset pair), got shape {_shape(mask)}"
        )
    if bias is not None and _shape(bias) != [weight.size(0)]:
        raise ValueError(f"deform_conv2d: bias must be Tensor[{weight.size(0)}], got shape {_shape(bias)}")
    return groups, offset_groups


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Deformable convolution with `torchvision.ops.deform_conv2d`'s signature and results; differentiable
    w.r.t. input, offset, weight, bias and mask.

    Args:
        input: Tensor[N, C_in, H, W].
        offset: Tensor[N, 2 * offset_groups * kH * kW, H_out, W_out]: for each offset group and kernel tap
            (row-major), the (dy, dx) added to the tap's sampling position, in input pixels.
        weight: Tensor[C_out, C_in / groups, kH, kW]; `groups` is implied by C_in.
        bias: Tensor[C_out] or None.
        mask: Tensor[N, offset_groups * kH * kW, H_out, W_out] modulating each sample (v2), or None (v1).

    Returns:
        Tensor[N, C_out, H_out, W_out].
    """
    stride_h, stride_w = _pair(stride)
    pad_h, pad_w = _pair(padding)
    dil_h, dil_w = _pair(dilation)
    if min(stride_h, stride_w) < 1 or min(pad_h, pad_w) < 0 or min(dil_h, dil_w) < 1:
        raise ValueError(
            f"deform_conv2d: need stride >= 1, padding >= 0, dilation >= 1, got stride={stride}, "
            f"padding={padding}, dilation={dilation}"
        )
    if input.dim() != 4 or weight.dim() != 4:
        _check_arguments(input, offset, weight, bias, mask, (1, 1))  # raises, naming the tensor
    out_h = (input.size(2) + 2 * pad_h - (dil_h * (weight.size(2) - 1) + 1)) // stride_h + 1
    out_w = (input.size(3) + 2 * pad_w - (dil_w * (weight.size(3) - 1) + 1)) // stride_w + 1
    groups, offset_groups = _check_arguments(input, offset, weight, bias, mask, (out_h, out_w))

    compute_dtype = input.dtype
    if input.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(input.device.type):
        compute_dtype = torch.float32  # as torchvision under autocast: sample and accumulate in float32

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(compute_dtype)

    use_mask = mask is not None
    # The operator takes a tensor either way; without a mask it reads none of it (an empty one, as torchvision).
    mask_arg = cast(mask) if use_mask else input.new_zeros((input.size(0), 0), dtype=compute_dtype)
    bias_arg = cast(bias) if bias is not None else input.new_zeros((weight.size(0),), dtype=compute_dtype)
    out = KERNELS.ops.deform_conv2d(
        cast(input),
        cast(weight),
        cast(offset),
        mask_arg,
        bias_arg,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dil_h,
        dil_w,
        groups,
        offset_groups,
        use_mask,
    )
    return out.to(input.dtype)


class _DeformConvBase(nn.Module):
    """What DeformConv and ModulatedDeformConv share: Detectron2's constructor, parameters and norm/activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair,
        padding: IntPair,
        dilation: IntPair,
        groups: int,
        deformable_groups: int,
        bias: bool,
        norm: Optional[nn.Module],
        activation: Optional[Callable[[torch.Tensor], torch.Tensor]],
    ):
        super().__init__()
        name = type(self).__name__
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(
                f"{name}: in_channels={in_channels} and out_channels={out_channels} must be divisible by "
                f"groups={groups}"
            )
        if in_channels % deformable_groups != 0:
            raise ValueError(
                f"{name}: in_channels={in_channels} must be divisible by deformable_groups={deformable_groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.with_bias = bias
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def _convolve(self, x: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        taps = self.kernel_size[0] * self.kernel_size[1]
        if offset.dim() == 4 and offset.size(1) != 2 * self.deformable_groups * taps:
            raise ValueError(
                f"{type(self).__name__}: offset must have 2 * deformable_groups * kH * kW = "
                f"{2 * self.deformable_groups * taps} channels, got shape {_shape(offset)}"
            )
        x = deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.with_bias}"
        )


class DeformConv(_DeformConvBase):
    """
    Deformable convolution v1, Detectron2's `DeformConv`: conv(x sampled at offset positions) -> norm ->
    activation. Parameters `weight` [C_out, C_in / groups, kH, kW] and `bias` (None unless bias=True).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            deformable_groups,
            bias,
            norm,
            activation,
        )

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """x: Tensor[N, C_in, H, W]; offset: Tensor[N, 2 * deformable_groups * kH * kW, H_out, W_out] of (dy, dx)."""
        return self._convolve(x, offset, None)


class ModulatedDeformConv(_DeformConvBase):
    """
    Modulated deformable convolution (v2), Detectron2's `ModulatedDeformConv`: each sample is scaled by its
    mask value before the convolution. As in Detectron2, `bias` defaults to True (initialized to zero).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = True,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            deformable_groups,
            bias,
            norm,
            activation,
        )

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        x: Tensor[N, C_in, H, W]; offset: Tensor[N, 2 * deformable_groups * kH * kW, H_out, W_out] of (dy, dx);
        mask: Tensor[N, deformable_groups * kH * kW, H_out, W_out] (Detectron2 passes a sigmoid).
        """
        return self._convolve(x, offset, mask)
