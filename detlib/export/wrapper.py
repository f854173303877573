"""The model as one function of one image tensor, with plain tensors out: what torch.export and ONNX trace."""

from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ExportableDetector", "output_names"]

# Per output key of a meta-architecture's inference: (exported name, field of the Instances) in order.
_INSTANCE_OUTPUTS = (("boxes", "pred_boxes"), ("scores", "scores"), ("classes", "pred_classes"))
_PROPOSAL_OUTPUTS = (("proposal_boxes", "proposal_boxes"), ("objectness_logits", "objectness_logits"))
# Outputs a traced program does not return: Panoptic FPN's combine step places instances one by one, each
# depending on the ones before (a data-dependent loop); it runs on the exported outputs instead.
_NOT_EXPORTED = ("panoptic_seg",)


def _instance_outputs(model: nn.Module) -> Tuple[Tuple[str, str], ...]:
    heads = getattr(model, "roi_heads", None)
    outputs = _INSTANCE_OUTPUTS
    if getattr(heads, "mask_on", False):
        outputs += (("masks", "pred_masks"),)
    if getattr(heads, "keypoint_on", False):
        outputs += (("keypoints", "pred_keypoints"),)
    return outputs


def output_names(model: nn.Module) -> Tuple[str, ...]:
    """The names of the tensors the exported `model` returns, in order (see `ExportableDetector`)."""
    names: List[str] = []
    for key in model.OUTPUT_KEYS:
        if key == "instances":
            names += [name for name, _ in _instance_outputs(model)]
        elif key == "proposals":
            names += [name for name, _ in _PROPOSAL_OUTPUTS]
        elif key == "sem_seg":
            names.append("sem_seg")
        elif key not in _NOT_EXPORTED:
            raise ValueError(f"{type(model).__name__} has an output '{key}' that export does not know how to flatten")
    return tuple(names)


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
        self.output_names = output_names(model)

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        outputs: Dict[str, Any] = self.model.inference([{"image": image}])[0]
        flat: List[Tensor] = []
        for key in self.model.OUTPUT_KEYS:
            if key in _NOT_EXPORTED:
                continue
            value = outputs[key]
            if key == "instances":
                fields = _instance_outputs(self.model)
            elif key == "proposals":
                fields = _PROPOSAL_OUTPUTS
            else:  # sem_seg
                flat.append(value)
                continue
            for _, field in fields:
                tensor = value.get(field)
                flat.append(tensor.tensor if hasattr(tensor, "tensor") else tensor)
        if "classes" in self.output_names:
            index = self.output_names.index("classes")
            flat[index] = flat[index].to(torch.int64)
        return tuple(flat)
