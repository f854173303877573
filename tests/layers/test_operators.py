"""
torch.ops.detlib as PyTorch operators: torch.library.opcheck (schema, fake kernels, autograd registration,
AOT dispatch with dynamic shapes), and torch.compile / torch.export through detlib.layers and the modules
that use them, with no graph break caused by detlib's ops and outputs equal to eager.
"""

import pytest
import torch
import torchvision

from detlib.config import get_cfg
from detlib.layers import _extension, batched_nms, nms, roi_align
from detlib.modeling.backbone import build_backbone
from detlib.modeling.poolers import ROIPooler
from detlib.structures import Boxes

pytestmark = pytest.mark.skipif(_extension.KERNELS.name != "detlib", reason="detlib._C is not loaded")


def random_boxes(n: int, seed: int, size: float = 100.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def random_scores(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(dtype)


def compile_and_count_breaks(fn, *args):
    """fn compiled (aot_eager: fake kernels and autograd traced, no C++ compiler needed), its output on
    args, and dynamo's graph-break reasons for it."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager", fullgraph=False)(*args), explanation


def assert_no_breaks(explanation):
    reasons = [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


# -------------------------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("n", [0, 1, 50])
def test_opcheck_nms(n):
    torch.library.opcheck(torch.ops.detlib.nms.default, (random_boxes(n, n), random_scores(n, n), 0.5))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_opcheck_roi_align(aligned, dtype, memory_format):
    # channels_last: the CPU kernels work in that layout and the backward kernel returns it; the fake kernels agree.
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 3, 12, 16, generator=g, dtype=dtype).contiguous(memory_format=memory_format)
    features.requires_grad_(True)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [0.0], [1.0]]), random_boxes(4, 3, size=40.0)], 1).to(dtype)
    torch.library.opcheck(torch.ops.detlib.roi_align.default, (features, rois, 0.25, 3, 2, 2, aligned))
    grad = torch.randn(4, 3, 3, 2, generator=g, dtype=dtype).contiguous(memory_format=memory_format)
    torch.library.opcheck(
        torch.ops.detlib._roi_align_backward.default, (grad, rois, 0.25, 3, 2, 2, 3, 12, 16, 2, aligned)
    )


# -------------------------------------------------------------------------------------- torch.compile


def test_compiled_nms_and_batched_nms_equal_eager():
    boxes, scores = random_boxes(300, 1), random_scores(300, 1)
    groups = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(2))

    def suppress(boxes, scores, groups):
        return nms(boxes, scores, 0.5), batched_nms(boxes, scores, groups, 0.5)

    (kept, kept_per_group), explanation = compile_and_count_breaks(suppress, boxes, scores, groups)
    assert_no_breaks(explanation)
    assert torch.equal(kept, torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(kept_per_group, torchvision.ops.batched_nms(boxes, scores, groups, 0.5))


def test_compiled_roi_align_forward_and_backward_equal_eager():
    g = torch.Generator().manual_seed(4)
    features = torch.randn(2, 4, 20, 24, generator=g)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [1.0]]), random_boxes(3, 4, size=60.0)], dim=1)

    def pooled_and_grad(features, rois):
        features = features.detach().requires_grad_(True)
        out = roi_align(features, rois, (7, 7), 0.25, 0, True)
        (grad,) = torch.autograd.grad(out.square().sum(), features)
        return out, grad

    (out, grad), explanation = compile_and_count_breaks(pooled_and_grad, features, rois)
    assert not [r for r in explanation.break_reasons if "detlib" in str(r.reason)]
    expected_out, expected_grad = pooled_and_grad(features, rois)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(grad, expected_grad)


def test_compiled_backbone_equals_eager():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        compiled, explanation = compile_and_count_breaks(backbone, image)
        expected = backbone(image)
    assert_no_breaks(explanation)
    assert list(compiled) == list(expected)
    for name in expected:
        torch.testing.assert_close(compiled[name], expected[name], rtol=1e-4, atol=1e-5)


def test_compiled_roi_pooler_equals_eager():
    pooler = ROIPooler((7, 7), scales=(1 / 4, 1 / 8, 1 / 16), sampling_ratio=0, pooler_type="ROIAlignV2")
    g = torch.Generator().manual_seed(5)
    features = [torch.randn(2, 8, 64 // s, 64 // s, generator=g) for s in (4, 8, 16)]
    # Sides 10..200 px: boxes land on all three levels.
    boxes = [Boxes(random_boxes(12, 6 + i, size=64.0) * torch.tensor([1.0, 1.0, 3.0, 3.0])) for i in range(2)]

    def pool(features, boxes_a, boxes_b):
        return pooler(features, [Boxes(boxes_a), Boxes(boxes_b)])

    args = (features, boxes[0].tensor, boxes[1].tensor)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled, explanation = compile_and_count_breaks(pool, *args)
    assert_no_breaks(explanation)
    torch.testing.assert_close(compiled, pool(*args), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------- torch.export


class _PoolKept(torch.nn.Module):
    """NMS, then ROIAlign of the kept boxes: an output size that depends on the data."""

    def forward(self, features, boxes, scores):
        kept = boxes.index_select(0, nms(boxes, scores, 0.5))
        rois = torch.cat([kept.new_zeros((kept.size(0), 1)), kept], dim=1)
        return roi_align(features, rois, (4, 4), 0.5, 2, True)


def test_exported_program_calls_detlib_ops_and_equals_eager():
    features = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(7))
    num_boxes = torch.export.Dim("num_boxes", min=2)
    program = torch.export.export(
        _PoolKept(),
        (features, random_boxes(30, 8, size=60.0), random_scores(30, 8)),
        dynamic_shapes={"features": None, "boxes": {0: num_boxes}, "scores": {0: num_boxes}},
    )
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"detlib.nms.default", "detlib.roi_align.default"} <= targets
    boxes, scores = random_boxes(50, 9, size=60.0), random_scores(50, 9)  # other data, other output size
    torch.testing.assert_close(program.module()(features, boxes, scores), _PoolKept()(features, boxes, scores))
