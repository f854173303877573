"""
Deformable convolution: detlib.layers.deform_conv2d (torch.ops.detlib.deform_conv2d) against
torchvision.ops.deform_conv2d, forward and all five gradients, within a rounding bound derived per element;
float64 gradcheck; torch.library.opcheck; torch.compile without graph breaks; Detectron2's module API.
"""

import inspect
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
import torchvision

from detlib.layers import DeformConv, ModulatedDeformConv, _extension, deform_conv2d, get_norm

needs_extension = pytest.mark.skipif(_extension.KERNELS.name != "detlib", reason="detlib._C is not loaded")


@dataclass(frozen=True)
class Case:
    batch: int = 2
    channels: int = 4
    size: Tuple[int, int] = (9, 11)
    out_channels: int = 6
    kernel: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    offset_scale: float = 2.0  # offsets up to this many pixels: samples reach past the border

    @property
    def out_size(self) -> Tuple[int, int]:
        return tuple(
            (n + 2 * p - (d * (k - 1) + 1)) // s + 1
            for n, p, d, k, s in zip(self.size, self.padding, self.dilation, self.kernel, self.stride)
        )

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]


CASES = {
    "3x3": Case(),
    "stride2-dilation2": Case(size=(12, 13), stride=(2, 2), padding=(2, 2), dilation=(2, 2)),
    "groups-offset-groups": Case(channels=8, out_channels=4, groups=2, offset_groups=4),
    "asymmetric": Case(
        channels=6, kernel=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1), groups=3, offset_groups=2
    ),
    "far-outside": Case(batch=1, offset_scale=12.0),  # most samples beyond the map: zero, and zero gradient
    "1x1": Case(kernel=(1, 1), padding=(0, 0), offset_groups=2),
}


def make_tensors(case: Case, dtype: torch.dtype, masked: bool, seed: int = 0) -> Dict[str, Optional[torch.Tensor]]:
    """Inputs of one case and the gradient that flows into its output (offsets uniform in +-offset_scale)."""
    g = torch.Generator().manual_seed(seed)
    n, (oh, ow) = case.batch, case.out_size

    def randn(*shape):
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)

    offset = torch.rand(n, 2 * case.offset_groups * case.taps, oh, ow, generator=g, dtype=torch.float64) * 2 - 1
    mask = torch.rand(n, case.offset_groups * case.taps, oh, ow, generator=g, dtype=torch.float64) * 1.5 - 0.25
    return {
        "input": randn(n, case.channels, *case.size),
        "offset": (offset * case.offset_scale).to(dtype),
        "weight": randn(case.out_channels, case.channels // case.groups, *case.kernel),
        "bias": randn(case.out_channels),
        "mask": mask.to(dtype) if masked else None,
        "upstream": randn(n, case.out_channels, oh, ow),
    }


GRADIENTS = ("input", "offset", "weight", "bias", "mask")


def forward_backward(fn, case: Case, tensors) -> Dict[str, torch.Tensor]:
    """fn's output on `tensors` and the gradients of <output, upstream> w.r.t. every input."""
    leaves = {k: tensors[k].clone().requires_grad_(True) for k in GRADIENTS if tensors[k] is not None}
    out = fn(
        leaves["input"],
        leaves["offset"],
        leaves["weight"],
        leaves["bias"],
        stride=case.stride,
        padding=case.padding,
        dilation=case.dilation,
        mask=leaves.get("mask"),
    )
    out.backward(tensors["upstream"])
    return {"output": out.detach(), **{k: t.grad for k, t in leaves.items()}}


def rounding_bounds(case: Case, tensors) -> Dict[str, torch.Tensor]:
    """
    Per element, n * eps * M: M bounds the sum of the absolute values of the terms that make the element
    (the same operator on absolute values, with nonnegative bilinear weights, in float64) and n the length of the
    longest chain of roundings that produce it. Two implementations that each keep within n * u * M of the exact
    value (u = eps / 2, the standard bound for a sum of n terms in any order) differ by at most n * eps * M.
    """
    eps = torch.finfo(tensors["input"].dtype).eps
    d = {k: (t.double().abs() if t is not None else None) for k, t in tensors.items()}
    mask = d["mask"] if d["mask"] is not None else torch.ones(1, dtype=torch.float64)
    geometry = dict(stride=case.stride, padding=case.padding, dilation=case.dilation)
    magnitude = {k: d[k].clone().requires_grad_(True) for k in ("input", "weight", "bias")}
    masked = mask.expand(case.batch, case.offset_groups * case.taps, *case.out_size).clone().requires_grad_(True)
    out = torchvision.ops.deform_conv2d(
        magnitude["input"], tensors["offset"].double(), magnitude["weight"], magnitude["bias"], mask=masked, **geometry
    )
    out.backward(d["upstream"])

    # The offset's gradient: |d sample / d offset| <= 2 max|input| per channel; summed over the offset group's
    # channels of |mask| * |column gradient|, where column gradient = weight^T x upstream (per group).
    n, (oh, ow) = case.batch, case.out_size
    out_per_group, in_per_group = case.out_channels // case.groups, case.channels // case.groups
    weight = d["weight"].reshape(case.groups, out_per_group, in_per_group, case.taps)
    upstream = d["upstream"].reshape(n, case.groups, out_per_group, oh * ow)
    columns = torch.einsum("gock,ngop->ngckp", weight, upstream).reshape(n, case.channels, case.taps, oh * ow)
    per_offset_group = columns.reshape(n, case.offset_groups, -1, case.taps, oh * ow).sum(2)
    offset_magnitude = 2 * d["input"].amax() * mask * per_offset_group.reshape(n, -1, oh, ow)
    offset_magnitude = offset_magnitude.repeat_interleave(2, dim=1)

    pixels = n * oh * ow
    max_offset = tensors["offset"].abs().max().item()
    # Output pixels whose sample for one tap can touch a given input pixel: |sample - pixel| < 1 on each axis.
    touching = math.prod(int((2 * max_offset + 2) // s) + 1 for s in case.stride)
    column_terms = out_per_group + 1
    chains = {
        "output": in_per_group * case.taps + 7,  # GEMM, 4 bilinear terms, mask, bias
        "input": column_terms + case.taps * touching + 2,
        "weight": pixels + 6,
        "bias": pixels,
        "mask": column_terms + case.channels // case.offset_groups + 6,
        "offset": column_terms + case.channels // case.offset_groups + 8,
    }
    sums = {
        "output": out.detach(),
        "input": magnitude["input"].grad,
        "weight": magnitude["weight"].grad,
        "bias": magnitude["bias"].grad,
        "mask": masked.grad,
        "offset": offset_magnitude,
    }
    return {k: chains[k] * eps * sums[k] for k in chains}


def assert_within(name: str, ours: torch.Tensor, theirs: torch.Tensor, bound: torch.Tensor) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, name
    excess = (ours.double() - theirs.double()).abs() - bound
    worst = excess.argmax() if excess.numel() else None
    assert excess.numel() == 0 or excess.max() <= 0, (
        f"{name}: |ours - torchvision| exceeds the rounding bound by {excess.max().item():.3g} at flat index "
        f"{worst.item()} (ours {ours.flatten()[worst].item()}, torchvision {theirs.flatten()[worst].item()}, "
        f"bound {bound.flatten()[worst].item():.3g})"
    )


@needs_extension
@pytest.mark.parametrize("masked", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torchvision(name, dtype, masked):
    case = CASES[name]
    tensors = make_tensors(case, dtype, masked, seed=len(name))
    ours = forward_backward(deform_conv2d, case, tensors)
    theirs = forward_backward(torchvision.ops.deform_conv2d, case, tensors)
    assert set(ours) == set(theirs) == {"output", *(k for k in GRADIENTS if tensors[k] is not None)}
    bounds = rounding_bounds(case, tensors)
    for key in ours:
        assert_within(key, ours[key], theirs[key], bounds[key])
    assert ours["output"].abs().max() > 0 and ours["offset"].abs().max() > 0  # a case that tests something


@needs_extension
def test_rounding_bound_is_tight_enough_to_catch_a_wrong_tap():
    """The bound above is orders of magnitude below the effect of a real mistake: one tap's offsets swapped."""
    case = CASES["3x3"]
    tensors = make_tensors(case, torch.float32, masked=True)
    swapped = dict(tensors, offset=tensors["offset"].clone())
    swapped["offset"][:, [0, 1]] = swapped["offset"][:, [2, 3]]
    ours = forward_backward(deform_conv2d, case, swapped)["output"]
    theirs = forward_backward(torchvision.ops.deform_conv2d, case, tensors)["output"]
    bound = rounding_bounds(case, tensors)["output"]
    assert ((ours - theirs).abs() > bound).float().mean() > 0.5


@needs_extension
@pytest.mark.parametrize("masked", [False, True], ids=["v1", "v2"])
def test_gradcheck_float64(masked):
    case = Case(batch=1, channels=4, size=(5, 6), out_channels=2, stride=(2, 1), groups=2, offset_groups=2)
    tensors = make_tensors(case, torch.float64, masked, seed=3)
    names = [k for k in GRADIENTS if tensors[k] is not None]
    leaves = tuple(tensors[k].clone().requires_grad_(True) for k in names)

    def convolve(*args):
        t = dict(zip(names, args))
        return deform_conv2d(
            t["input"], t["offset"], t["weight"], t["bias"], case.stride, case.padding, case.dilation, t.get("mask")
        )

    assert torch.autograd.gradcheck(convolve, leaves)


@pytest.mark.parametrize("masked", [False, True], ids=["v1", "v2"])
def test_empty_batch(masked):
    case = Case(batch=0)
    tensors = make_tensors(case, torch.float32, masked)
    ours = forward_backward(deform_conv2d, case, tensors)
    assert ours["output"].shape == (0, case.out_channels, *case.out_size)
    assert torch.equal(ours["weight"], torch.zeros_like(tensors["weight"]))
    assert torch.equal(ours["bias"], torch.zeros_like(tensors["bias"]))
    assert ours["input"].shape == tensors["input"].shape and ours["offset"].shape == tensors["offset"].shape


# ------------------------------------------------------------------------------------ operator registration


@needs_extension
@pytest.mark.parametrize("masked", [False, True], ids=["v1", "v2"])
def test_opcheck(masked):
    case = CASES["groups-offset-groups"]
    t = make_tensors(case, torch.float64, masked)
    mask = t["mask"] if masked else t["input"].new_zeros((case.batch, 0))
    scalars = (*case.stride, *case.padding, *case.dilation, case.groups, case.offset_groups, masked)
    inputs = [t["input"], t["weight"], t["offset"], mask, t["bias"]]
    for x in inputs[: 5 if masked else 3] + inputs[4:]:
        x.requires_grad_(True)
    torch.library.opcheck(torch.ops.detlib.deform_conv2d.default, (*inputs, *scalars))
    torch.library.opcheck(
        torch.ops.detlib._deform_conv2d_backward.default, (t["upstream"], *(x.detach() for x in inputs), *scalars)
    )


class _DeformBlock(torch.nn.Module):
    """Detectron2's deformable bottleneck conv in small: a conv predicts offsets and mask for ModulatedDeformConv."""

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Conv2d(4, 27, 3, padding=1)
        self.conv = ModulatedDeformConv(
            4, 6, 3, padding=1, bias=False, norm=torch.nn.GroupNorm(2, 6), activation=F.relu
        )

    def forward(self, x):
        offset_mask = self.offset(x)
        offset_x, offset_y, mask = torch.chunk(offset_mask, 3, dim=1)
        return self.conv(x, torch.cat((offset_x, offset_y), dim=1), mask.sigmoid())


@needs_extension
def test_compiles_without_graph_breaks_and_equals_eager():
    """Forward in one graph (fullgraph=True), backward through the registered autograd formula, both as eager."""
    torch.manual_seed(0)
    block = _DeformBlock()
    torch.nn.init.normal_(block.offset.weight, std=0.3)  # offsets of a pixel or two
    x = torch.randn(2, 4, 10, 12)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(block)(x)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_count == 1
    torch._dynamo.reset()

    def output_and_grads(model):
        x_ = x.clone().requires_grad_(True)
        out = model(x_)
        out.square().sum().backward()
        grads = [x_.grad] + [p.grad.clone() for p in block.parameters()]
        block.zero_grad()
        return out.detach(), grads

    compiled = output_and_grads(torch.compile(block, backend="aot_eager", fullgraph=True))
    expected = output_and_grads(block)
    torch.testing.assert_close(compiled, expected)


# --------------------------------------------------------------------------------------------- modules


def test_modules_have_detectron2_constructors_and_parameter_names():
    signature = [
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "deformable_groups",
        "bias",
        "norm",
        "activation",
    ]
    for cls, bias_default in ((DeformConv, False), (ModulatedDeformConv, True)):
        parameters = inspect.signature(cls).parameters
        assert list(parameters) == signature
        assert parameters["bias"].default is bias_default
        assert cls(8, 4, 3).weight.shape == (4, 8, 3, 3)
    assert [n for n, _ in DeformConv(8, 4, 3, groups=2).named_parameters()] == ["weight"]
    modulated = ModulatedDeformConv(8, 4, 3, norm=get_norm("FrozenBN", 4))
    assert list(modulated.state_dict()) == [
        "weight",
        "bias",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
    ]
    assert torch.equal(modulated.bias, torch.zeros(4))


def test_modules_equal_torchvision_then_norm_and_activation():
    torch.manual_seed(1)
    x = torch.randn(2, 8, 9, 10)
    offset = torch.randn(2, 2 * 2 * 9, 5, 5)
    mask = torch.rand(2, 2 * 9, 5, 5)
    module = ModulatedDeformConv(8, 4, 3, stride=2, padding=1, groups=2, deformable_groups=2, activation=F.relu)
    torch.nn.init.normal_(module.bias)
    expected = torchvision.ops.deform_conv2d(x, offset, module.weight, module.bias, 2, 1, mask=mask).relu()
    torch.testing.assert_close(module(x, offset, mask), expected, rtol=1e-5, atol=1e-5)

    module = DeformConv(8, 4, 3, dilation=2, deformable_groups=4, norm=torch.nn.BatchNorm2d(4).eval())
    offset = torch.randn(2, 2 * 4 * 9, 5, 6)
    expected = module.norm(torchvision.ops.deform_conv2d(x, offset, module.weight, dilation=2))
    torch.testing.assert_close(module(x, offset), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [DeformConv, ModulatedDeformConv])
def test_modules_on_an_empty_batch(cls):
    module = cls(4, 6, 3, stride=2, padding=1)
    x = torch.zeros(0, 4, 10, 9, requires_grad=True)
    args = (torch.zeros(0, 18, 5, 5),) + ((torch.zeros(0, 9, 5, 5),) if cls is ModulatedDeformConv else ())
    out = module(x, *args)
    assert out.shape == (0, 6, 5, 5)
    out.sum().backward()
    assert torch.equal(module.weight.grad, torch.zeros_like(module.weight))


def test_bad_arguments_are_named():
    x = torch.randn(1, 4, 8, 8)
    weight = torch.randn(6, 4, 3, 3)
    with pytest.raises(ValueError, match=r"offset must be Tensor\[N, 2 \* offset_groups \* 3 \* 3.*\[1, 17, 6, 6\]"):
        deform_conv2d(x, torch.zeros(1, 17, 6, 6), weight)
    with pytest.raises(ValueError, match=r"offset must be Tensor\[1, 18, 6, 6\].*got shape \[1, 18, 8, 8\]"):
        deform_conv2d(x, torch.zeros(1, 18, 8, 8), weight)
    with pytest.raises(ValueError, match=r"mask must be Tensor\[1, 9, 6, 6\].*got shape \[1, 18, 6, 6\]"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), weight, mask=torch.zeros(1, 18, 6, 6))
    with pytest.raises(ValueError, match=r"4 channels are not a multiple of weight's 3"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), torch.randn(6, 3, 3, 3))
    with pytest.raises(ValueError, match=r"input \[1, 4, 8, 8\] is too small for kernel 9x9"):
        deform_conv2d(x, torch.zeros(1, 162, 1, 1), torch.randn(6, 4, 9, 9))
    with pytest.raises(ValueError, match=r"bias must be Tensor\[6\]"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), weight, torch.zeros(4))
    with pytest.raises(ValueError, match="in_channels=6 must be divisible by deformable_groups=4"):
        DeformConv(6, 6, 3, deformable_groups=4)
    with pytest.raises(ValueError, match=r"offset must have 2 \* deformable_groups \* kH \* kW = 36 channels"):
        DeformConv(4, 6, 3, deformable_groups=2)(x, torch.zeros(1, 18, 6, 6))


@needs_extension
def test_operator_checks_direct_calls():
    x, weight, bias = torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.zeros(6)
    with pytest.raises(RuntimeError, match=r"deform_conv2d: offset must be \[1, 18, 6, 6\]"):
        torch.ops.detlib.deform_conv2d(
            x, weight, torch.zeros(1, 18, 7, 6), x.new_zeros(1, 0), bias, 1, 1, 0, 0, 1, 1, 1, 1, False
        )
    with pytest.raises(RuntimeError, match="deform_conv2d: offset must have input's dtype Float"):
        torch.ops.detlib.deform_conv2d(
            x,
            weight,
            torch.zeros(1, 18, 6, 6, dtype=torch.float64),
            x.new_zeros(1, 0),
            bias,
            1,
            1,
            0,
            0,
            1,
            1,
            1,
            1,
            False,
        )


@needs_extension
def test_channels_last_and_strided_inputs_give_the_same_results():
    """detlib's CPU models run channels_last: such inputs (and sliced offsets) are read as the NCHW ones."""
    case = CASES["groups-offset-groups"]
    tensors = make_tensors(case, torch.float32, masked=True)
    expected = forward_backward(deform_conv2d, case, tensors)
    offset_mask = torch.cat([tensors["offset"], tensors["mask"]], dim=1)  # one conv's output, sliced
    strided = dict(
        tensors,
        input=tensors["input"].contiguous(memory_format=torch.channels_last),
        offset=offset_mask[:, : tensors["offset"].size(1)],
        mask=offset_mask[:, tensors["offset"].size(1) :],
    )
    assert not strided["offset"].is_contiguous()
    ours = forward_backward(deform_conv2d, case, strided)
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=0, atol=0, msg=key)
