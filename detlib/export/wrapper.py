"""The model as one function of one image tensor, with plain tensors out: what torch.export and ONNX trace."""

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ExportableDetector", "output_names"]

# Per output key of a meta-architecture's inference: (exported name, field of the Instances) in order.
_INSTANCE_OUTPUTS = (("boxes", "pred_boxes"), ("scores", "scores"), ("classes", "pred_classes"))
_PROPOSAL_OUTPUTS = (("proposal_boxes", "proposal_boxes"), ("objectness_logits", "objectness_logits"))
# Outputs a traced program does not return: Panoptic FPN's combine step places instances one by one, each
# depending on the ones before (a data-dependent loop); it runs on the exported outputs instead.
_NOT_EXPORTED = ("panoptic_seg",)


def _flat_outputs(model: nn.Module) -> Tuple[Tuple[str, str, Optional[str]], ...]:
    """(output key, exported name, field of the key's Instances or None for a plain tensor) of each tensor the
    exported `model` returns, in order."""
    heads = getattr(model, "roi_heads", None)
    instance_outputs = _INSTANCE_OUTPUTS
    if getattr(heads, "mask_on", False):
        instance_outputs += (("masks", "pred_masks"),)
    if getattr(heads, "keypoint_on", False):
        instance_outputs += (("keypoints", "pred_keypoints"),)
    flat = []
    for key in model.OUTPUT_KEYS:
        if key == "instances":
            flat += [(key, name, field) for name, field in instance_outputs]
        elif key == "proposals":
            flat += [(key, name, field) for name, field in _PROPOSAL_OUTPUTS]
        elif key == "sem_seg":
            flat.append((key, "sem_seg", None))
        elif key not in _NOT_EXPORTED:
            raise ValueError(f"{type(model).__name__} has an output '{key}' that export does not know how to flatten")
    return tuple(flat)


def output_names(model: nn.Module) -> Tuple[str, ...]:
    """The names of the tensors the exported `model` returns, in order (see `ExportableDetector`)."""
    return tuple(name for _, name, _ in _flat_outputs(model))


class ExportableDetector(nn.Module):
    """
    Wraps a meta-architecture (any `MetaArchitecture`) in eval mode: `forward(image)` runs the model's
    own `inference` (its preprocessing, heads and postprocessing, at the input size) on one image and
    returns its outputs as a flat tuple of tensors, named by `output_names`:

    * "instances": boxes (N, 4) float XYXY in input pixels, scores (N,), classes (N,) int64, best first;
      masks (N, H, W) bool when the model predicts masks; keypoints (N, K, 3) float (x, y, score) when
      it predicts keypoints;
    * "proposals": proposal_boxes (N, 4), objectness_logits (N,);
    * "sem_seg": (C, H, W) float per-class scores;
    * "panoptic_seg" is not returned: `detlib.modeling.combine_semantic_and_instance_outputs(masks, scores,
      classes, sem_seg.argmax(0), ...)` (with the model's `combine_*` thresholds) makes it from the outputs.

    Args of forward:
        image: uint8 (C, H, W) in the model's input format, already resized as for testing.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.training:
            raise ValueError("ExportableDetector needs the model in eval mode (call model.eval())")
        self.model = model
        self._flat_outputs = _flat_outputs(model)
        self.output_names = tuple(name for _, name, _ in self._flat_outputs)

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        outputs: Dict[str, Any] = self.model.inference([{"image": image}])[0]
        flat: List[Tensor] = []
        for key, name, field in self._flat_outputs:
            value = outputs[key] if field is None else outputs[key].get(field)
            if hasattr(value, "tensor"):  # Boxes
                value = value.tensor
            flat.append(value.to(torch.int64) if name == "classes" else value)
        return tuple(flat)
