"""
ONNX export: detlib's operators in standard ONNX operators (NonMaxSuppression, RoiAlign, DeformConv) give
torchvision's results in ONNX Runtime, and
parity case A's Mask / Faster R-CNN converted from torch.export gives the eager detections on other image
sizes, also when none survives.
"""

import numpy as np
import onnx
import pytest
import torch
import torchvision
from export_checks import RUN_SIZES, SAMPLE_SIZE, assert_same_detections, eager_outputs

from detlib.export import ExportableDetector
from detlib.export.onnx_export import export_onnx
from detlib.layers import DeformConv, ModulatedDeformConv, nms, roi_align

ort = pytest.importorskip("onnxruntime")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class _Ops(torch.nn.Module):
    def __init__(self, aligned: bool, sampling_ratio: int):
        super().__init__()
        self.aligned, self.sampling_ratio = aligned, sampling_ratio

    def forward(self, boxes, scores, features, rois):
        pooled = roi_align(features, rois, (5, 4), 0.25, self.sampling_ratio, self.aligned)
        return nms(boxes, scores, 0.5), pooled


@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 0), (False, 2)])
def test_operators_run_in_onnxruntime_as_torchvision(tmp_path, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(60, 2, generator=g) * 100
    boxes = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=g) * 40], dim=1)
    scores = torch.rand(60, generator=g)
    features = torch.randn(2, 3, 30, 40, generator=g)
    rois = torch.cat([torch.randint(0, 2, (20, 1), generator=g).float(), boxes[:20]], dim=1)
    module = _Ops(aligned, sampling_ratio)
    args = (boxes, scores, features, rois)
    program = torch.export.export(module, args, strict=False)
    export_onnx(program, args, tmp_path / "ops.onnx", ["keep", "pooled"])
    session = _session(tmp_path / "ops.onnx")
    keep, pooled = session.run(None, {spec.name: value.numpy() for spec, value in zip(session.get_inputs(), args)})
    np.testing.assert_array_equal(keep, torchvision.ops.nms(boxes, scores, 0.5).numpy())
    expected = torchvision.ops.roi_align(features, rois, (5, 4), 0.25, sampling_ratio, aligned)
    np.testing.assert_allclose(pooled, expected.numpy(), atol=1e-5)


class _DeformConvs(torch.nn.Module):
    """v2 with groups and offset groups, then v1 with stride and dilation (DeformConv has opset 19's attributes)."""

    def __init__(self):
        super().__init__()
        self.modulated = ModulatedDeformConv(4, 6, 3, padding=1, groups=2, deformable_groups=2)
        self.plain = DeformConv(6, 4, 3, stride=2, padding=2, dilation=2)
        torch.nn.init.normal_(self.modulated.bias)

    def forward(self, x, offset, mask, offset2):
        return self.plain(self.modulated(x, offset, mask), offset2)


def test_deform_conv_runs_in_onnxruntime_as_torchvision(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 11, 13, generator=g)
    offset, mask = torch.randn(2, 36, 11, 13, generator=g) * 2, torch.rand(2, 18, 11, 13, generator=g)
    offset2 = torch.randn(2, 18, 6, 7, generator=g) * 2
    module = _DeformConvs()
    args = (x, offset, mask, offset2)
    program = torch.export.export(module, args, strict=False)
    path = export_onnx(program, args, tmp_path / "deform.onnx", ["out"])
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("DeformConv") == 2, ops
    session = _session(path)
    (out,) = session.run(None, {spec.name: value.numpy() for spec, value in zip(session.get_inputs(), args)})
    m, p = module.modulated, module.plain
    with torch.no_grad():
        hidden = torchvision.ops.deform_conv2d(x, offset, m.weight, m.bias, padding=1, mask=mask)
        expected = torchvision.ops.deform_conv2d(hidden, offset2, p.weight, stride=2, padding=2, dilation=2)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def onnx_models(exported, case_images, tmp_path_factory):
    """`onnx_models(mask_on, score_thresh=None)`: (eager model, ONNX Runtime session of its export)."""
    cache = {}

    def get(mask_on: bool, score_thresh: float = None):
        key = (mask_on, score_thresh)
        if key not in cache:
            model, program = exported(mask_on, score_thresh)
            path = tmp_path_factory.mktemp("onnx") / "model.onnx"
            names = ExportableDetector(model).output_names
            export_onnx(program, (case_images([SAMPLE_SIZE])[0],), path, names)
            cache[key] = model, _session(path)
        return cache[key]

    return get


@pytest.mark.parametrize("mask_on", [True, False], ids=["mask_rcnn", "faster_rcnn"])
def test_onnxruntime_matches_eager_on_other_sizes(onnx_models, case_images, mask_on):
    model, session = onnx_models(mask_on)
    assert [o.name for o in session.get_outputs()] == list(ExportableDetector(model).output_names)
    for image in case_images(RUN_SIZES):
        expected = eager_outputs(model, image)
        assert len(expected[0]) > 10
        actual = session.run(None, {"image": image.numpy()})
        assert_same_detections(expected, actual)


def test_onnxruntime_no_detection_gives_empty_outputs(onnx_models, case_images):
    _, session = onnx_models(True, score_thresh=1.0)
    for image in case_images(RUN_SIZES):
        boxes, scores, classes, masks = session.run(None, {"image": image.numpy()})
        assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)
        assert masks.shape == (0, *image.shape[1:])
