"""The model as one function of one image tensor, with plain tensors out: what torch.export and ONNX trace."""

from typing import Tuple

import torch
from torch import Tensor, nn

__all__ = ["ExportableDetector", "OUTPUT_NAMES"]


class ExportableDetector(nn.Module):
    """
    Wraps a GeneralizedRCNN in eval mode: `forward(image)` runs the model's own inference path (its
    preprocessing, heads and detector postprocessing, at the input size) on one image and returns the
    detections as tensors, best first.

    Args of forward:
        image: uint8 (3, H, W) in the model's input format, already resized as for testing.
    Returns:
        boxes (N, 4) float XYXY in input pixels, scores (N,), classes (N,) int64, and when the model
        predicts masks, masks (N, H, W) bool.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.training:
            raise ValueError("ExportableDetector needs the model in eval mode (call model.eval())")
        self.model = model
        self.has_masks = bool(getattr(model.roi_heads, "mask_on", False))

    @property
    def output_names(self) -> Tuple[str, ...]:
        return OUTPUT_NAMES if self.has_masks else OUTPUT_NAMES[:3]

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        instances = self.model.inference([{"image": image}])[0]["instances"]
        outputs = (instances.pred_boxes.tensor, instances.scores, instances.pred_classes.to(torch.int64))
        if self.has_masks:
            outputs += (instances.pred_masks,)
        return outputs


OUTPUT_NAMES = ("boxes", "scores", "classes", "masks")
