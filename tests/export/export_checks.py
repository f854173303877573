"""Shared by the export tests: image sizes, running a program in ONNX Runtime, and the comparison of exported
detections with the eager model's."""

from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np
import pytest
import torch

from detlib.export import ExportableDetector
from detlib.structures import Boxes, pairwise_iou

# (height, width) of the images the exported programs run on; the sample they are exported with differs.
SAMPLE_SIZE = (128, 160)
RUN_SIZES = [(160, 120), (96, 208)]


def eager_outputs(model: torch.nn.Module, image: torch.Tensor):
    with torch.no_grad():
        return ExportableDetector(model)(image)


def onnxruntime_runner(
    model: torch.nn.Module, program, sample: torch.Tensor, path: Path
) -> Callable[[torch.Tensor], List[torch.Tensor]]:
    """`program` (exported from `model` wrapped in `ExportableDetector`) converted to ONNX at `path` and loaded in
    ONNX Runtime on the CPU, its outputs named as the wrapper names them: a function from an image to its outputs.
    Skips the test without onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    from detlib.export.onnx_export import export_onnx

    names = ExportableDetector(model).output_names
    export_onnx(program, (sample,), path, names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(names)
    return lambda image: [torch.from_numpy(np.asarray(a)) for a in session.run(None, {"image": image.numpy()})]


def assert_same_detections(expected: Sequence, actual: Sequence, names: Sequence[str] = ()) -> None:
    """
    The exported program's detections match the eager model's: on at least 98% of the eager detections a
    detection of the same class at IoU > 0.99 with a score within 1e-3 (each matched once), counts within 2%,
    the matched pasted masks agree on at least 99% of their pixels, and matched keypoints are within 0.5 px.
    `names` are the outputs' names (`ExportableDetector.output_names`); without them a fourth output is masks.
    """
    names = list(names) or ["boxes", "scores", "classes", "masks"][: len(expected)]
    actual = [torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a for a in actual]
    assert len(actual) == len(expected)
    boxes, scores, classes = expected[:3]
    got_boxes, got_scores, got_classes = actual[:3]
    assert got_boxes.dtype == torch.float32 and got_boxes.shape[1:] == (4,)
    assert got_classes.dtype == torch.int64
    num = len(boxes)
    assert abs(len(got_boxes) - num) <= 0.02 * num
    if num == 0:
        return
    iou = pairwise_iou(Boxes(boxes), Boxes(got_boxes))
    compatible = (iou > 0.99) & (classes[:, None] == got_classes[None, :])
    compatible &= (scores[:, None] - got_scores[None, :]).abs() < 1e-3
    matches, taken = [], set()
    for i in range(num):
        for j in torch.nonzero(compatible[i]).flatten().tolist():
            if j not in taken:
                taken.add(j)
                matches.append((i, j))
                break
    assert len(matches) >= 0.98 * num, f"{len(matches)} of {num} detections matched"
    rows, cols = (torch.tensor(index) for index in zip(*matches))
    if "masks" in names:
        index = names.index("masks")
        masks, got_masks = expected[index], actual[index].bool()
        assert got_masks.shape[1:] == masks.shape[1:]
        agree = (masks[rows] == got_masks[cols]).float().mean()
        assert agree >= 0.99, f"pasted masks agree on {agree:.4f} of the pixels"
    if "keypoints" in names:
        index = names.index("keypoints")
        keypoints, got_keypoints = expected[index][rows], actual[index][cols]
        assert got_keypoints.shape[1:] == keypoints.shape[1:] and keypoints.shape[-1] == 3
        offset = (keypoints[..., :2] - got_keypoints[..., :2]).abs().max()
        assert offset <= 0.5, f"matched keypoints are up to {offset:.3f} px apart"
        torch.testing.assert_close(got_keypoints[..., 2], keypoints[..., 2], rtol=0, atol=1e-3)
