"""
The protocol every meta-architecture implements, and the parts they all share.

A meta-architecture is called on Detectron2's list of per-image dicts:
  * "image": C x H x W tensor in `input_format` channel order, 0..255, already resized;
  * "height", "width" (optional): the size its outputs are rescaled to (usually the original size);
  * "instances", "sem_seg" (training): the ground truth its heads need.

In training, `forward` returns a dict of scalar losses, computed by the heads inside their own forward; in
inference it returns `inference(batched_inputs)`: per image, a dict of the model's `OUTPUT_KEYS`
("instances", "proposals", "sem_seg", "panoptic_seg") at the requested size. Export and compile wrap
`inference`, so every family has exactly one inference path.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from detlib.layers import move_device_like
from detlib.structures import ImageList, Instances

from ..backbone import Backbone
from ..postprocessing import detector_postprocess, sem_seg_postprocess

__all__ = ["MetaArchitecture", "INPUT_FORMATS"]

INPUT_FORMATS = ("BGR", "RGB", "L")


class MetaArchitecture(nn.Module):
    """
    Base of every meta-architecture: pixel statistics, the padded input batch, the training / inference
    split of `forward`, and rescaling outputs to each input's requested size.

    Subclasses implement `training_losses(batched_inputs)` and `inference(batched_inputs, do_postprocess)`,
    and name the per-image outputs of inference in `OUTPUT_KEYS`.
    """

    OUTPUT_KEYS: Tuple[str, ...] = ("instances",)

    def __init__(
        self,
        *,
        backbone: Backbone,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: Optional[str] = None,
    ):
        """
        Args:
            backbone: features from the normalized, padded image batch.
            pixel_mean, pixel_std: per-channel input normalization, in the input's channel order.
            input_format: channel order of the input images ("BGR", "RGB", "L"), for drawing them.
        """
        super().__init__()
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"PIXEL_MEAN {list(pixel_mean)} and PIXEL_STD {list(pixel_std)} differ in length")
        if any(s <= 0 for s in pixel_std):
            raise ValueError(f"PIXEL_STD must be positive, got {list(pixel_std)}")
        if input_format is not None and input_format not in INPUT_FORMATS:
            raise ValueError(f"INPUT.FORMAT must be one of {INPUT_FORMATS}, got '{input_format}'")
        self.backbone = backbone
        self.input_format = input_format
        # Not persistent: they come from the config, so checkpoints neither need nor override them.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        """Training: `training_losses(batched_inputs)`, a dict of scalar losses. Inference: `inference(...)`."""
        if not self.training:
            return self.inference(batched_inputs)
        return self.training_losses(batched_inputs)

    def training_losses(self, batched_inputs: List[Dict[str, Any]]) -> Dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement training_losses")

    def inference(self, batched_inputs: List[Dict[str, Any]], do_postprocess: bool = True):
        """
        Returns:
            with `do_postprocess`, per image a dict of `OUTPUT_KEYS` at the input's "height" x "width";
            without, the model's raw per-image outputs at the size of its input image.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement inference")

    def preprocess_image(self, batched_inputs: List[Dict[str, Any]]) -> ImageList:
        """Normalize each input's "image" and pad the batch (with 0, after normalization) to the backbone's stride."""
        images = []
        for i, x in enumerate(batched_inputs):
            if "image" not in x:
                raise KeyError(f"Model input {i} has no 'image'; its keys are {sorted(x)}")
            image = move_device_like(x["image"], self.pixel_mean)
            if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"Model input {i}: 'image' must be {self.pixel_mean.shape[0]} x H x W, got {tuple(image.shape)}"
                )
            images.append((image - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(
            images, self.backbone.size_divisibility, padding_constraints=self.backbone.padding_constraints
        )

    def ground_truth(self, batched_inputs: List[Dict[str, Any]], required: bool = False) -> Optional[List[Instances]]:
        """Each input's "instances" on the model's device; None when the inputs have none (an error if `required`)."""
        missing = [i for i, x in enumerate(batched_inputs) if "instances" not in x]
        if missing:
            if required:
                raise KeyError(
                    f"{type(self).__name__} needs 'instances' in every input in training; inputs {missing} lack it"
                )
            return None
        return [x["instances"].to(self.device) for x in batched_inputs]

    def sem_seg_ground_truth(self, batched_inputs: List[Dict[str, Any]], ignore_value: int) -> Tensor:
        """Each input's "sem_seg" (H x W class ids), padded with `ignore_value` as `preprocess_image` pads images."""
        missing = [i for i, x in enumerate(batched_inputs) if "sem_seg" not in x]
        if missing:
            raise KeyError(
                f"{type(self).__name__} needs 'sem_seg' in every input in training; inputs {missing} lack it"
            )
        targets = [move_device_like(x["sem_seg"], self.pixel_mean) for x in batched_inputs]
        return ImageList.from_tensors(
            targets, self.backbone.size_divisibility, ignore_value, self.backbone.padding_constraints
        ).tensor

    @staticmethod
    def postprocess(
        outputs: List[Dict[str, Any]], batched_inputs: List[Dict[str, Any]], image_sizes: List[Tuple[int, int]]
    ) -> List[Dict[str, Any]]:
        """
        The one place outputs are rescaled: each image's outputs, predicted for its padded-batch image of
        `image_sizes[i]`, at its input's "height" x "width" (default: that size). "instances" and
        "proposals" go through `detector_postprocess` (boxes scaled and clipped, masks pasted, keypoints
        scaled), "sem_seg" (C x H x W scores of the padded batch) is cropped to the image and resized;
        other keys pass unchanged.
        """
        processed = []
        for per_image, inputs, image_size in zip(outputs, batched_inputs, image_sizes):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            rescaled = {}
            for key, value in per_image.items():
                if key in ("instances", "proposals"):
                    value = detector_postprocess(value, height, width)
                elif key == "sem_seg":
                    value = sem_seg_postprocess(value, image_size, height, width)
                rescaled[key] = value
            processed.append(rescaled)
        return processed
