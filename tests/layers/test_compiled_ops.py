"""
detlib._C, the compiled ops: the build in use is current, its operators are registered as torch.ops.detlib
with torchvision's schemas and give torchvision's results, and a missing or stale build is refused with
an ImportError that says how to rebuild it. Self-contained (.ci/check_wheel runs it against an installed wheel).
"""

import sys

import pytest
import torch
import torchvision

import detlib
from detlib.layers import _extension, nms, roi_align


def test_current_build_loads_and_is_in_use():
    extension = _extension.load_extension()
    assert extension.ABI_VERSION == _extension.EXPECTED_ABI_VERSION
    assert extension.TORCH_VERSION == torch.__version__
    assert _extension.KERNELS.name == "detlib" and _extension.KERNELS.ops is torch.ops.detlib


@pytest.mark.parametrize("op", ["nms", "roi_align", "_roi_align_backward", "deform_conv2d", "_deform_conv2d_backward"])
def test_operators_have_torchvision_schemas(op):
    ours = getattr(torch.ops.detlib, op).default._schema
    theirs = getattr(torch.ops.torchvision, op).default._schema
    assert [(a.name, str(a.type)) for a in ours.arguments] == [(a.name, str(a.type)) for a in theirs.arguments]
    assert [str(r.type) for r in ours.returns] == [str(r.type) for r in theirs.returns]


def test_operators_compute_torchvision_results():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g, dtype=torch.float64) * 200
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g, dtype=torch.float64) * 60 + 1], dim=1)
    scores = torch.rand(300, generator=g, dtype=torch.float64)
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))

    features = torch.randn(2, 3, 20, 24, generator=g, dtype=torch.float64)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [1.0]], dtype=torch.float64), boxes[:3] / 4], dim=1)
    for aligned in (False, True):
        ours = features.clone().requires_grad_(True)
        theirs = features.clone().requires_grad_(True)
        out = roi_align(ours, rois, (4, 5), 0.5, 2, aligned)
        expected = torchvision.ops.roi_align(theirs, rois, (4, 5), 0.5, 2, aligned)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
        out.square().sum().backward()
        expected.square().sum().backward()
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-12)


def test_missing_build(monkeypatch):
    monkeypatch.setitem(sys.modules, "detlib._C", None)
    monkeypatch.delattr(detlib, "_C", raising=False)
    with pytest.raises(ImportError, match="could not be imported.*pip install -e ."):
        _extension.load_extension()


def test_stale_abi(monkeypatch):
    monkeypatch.setattr(_extension.load_extension(), "ABI_VERSION", _extension.EXPECTED_ABI_VERSION - 1)
    with pytest.raises(ImportError, match="stale.*pip install"):
        _extension.load_extension()


def test_built_against_other_torch(monkeypatch):
    monkeypatch.setattr(_extension.load_extension(), "TORCH_VERSION", "0.0.1")
    with pytest.raises(ImportError, match="built against torch 0.0.1.*pip install"):
        _extension.load_extension()
