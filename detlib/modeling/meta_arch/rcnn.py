"""
R-CNN meta-architectures: a backbone, a proposal generator and (for `GeneralizedRCNN`) RoI heads.

Inputs are Detectron2's list of per-image dicts:
  * "image": C x H x W tensor in `input_format` channel order, 0..255, already resized;
  * "height", "width" (optional): the size the outputs are rescaled to (usually the original size);
  * "instances" (training): gt `Instances` with `gt_boxes`, `gt_classes` (and `gt_masks`);
  * "proposals" (without a proposal generator): `Instances` with `proposal_boxes`, `objectness_logits`.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers import move_device_like
from detlib.modeling.backbone import Backbone, build_backbone
from detlib.modeling.postprocessing import detector_postprocess
from detlib.modeling.proposal_generator import build_proposal_generator
from detlib.modeling.roi_heads import build_roi_heads
from detlib.structures import ImageList, Instances
from detlib.utils.events import get_event_storage
from detlib.utils.visualizer import Visualizer

from .build import META_ARCH_REGISTRY

__all__ = ["GeneralizedRCNN", "ProposalNetwork"]

_INPUT_FORMATS = ("BGR", "RGB", "L")
InstancesList = Optional[List[Instances]]


class _RCNNBase(nn.Module):
    """What the R-CNN models share: pixel statistics as buffers, and turning input dicts into a padded batch."""

    def _init_pixel_stats(self, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"PIXEL_MEAN {list(pixel_mean)} and PIXEL_STD {list(pixel_std)} differ in length")
        if any(s <= 0 for s in pixel_std):
            raise ValueError(f"PIXEL_STD must be positive, got {list(pixel_std)}")
        # Not persistent: they come from the config, so checkpoints neither need nor override them.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @staticmethod
    def _shared_parts(cfg) -> Dict[str, Any]:
        """The constructor arguments both models build alike: backbone, proposal generator, pixel statistics."""
        backbone = build_backbone(cfg)
        proposal_generator = build_proposal_generator(cfg, backbone.output_shape())
        return dict(
            backbone=backbone,
            proposal_generator=proposal_generator,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict[str, torch.Tensor]]) -> ImageList:
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

    def _gt_instances(self, batched_inputs: List[Dict]) -> Optional[List[Instances]]:
        if "instances" not in batched_inputs[0]:
            return None
        return [x["instances"].to(self.device) for x in batched_inputs]


def _rescale_results(
    results: List[Instances], batched_inputs: List[Dict], image_sizes: List[Tuple[int, int]], key: str
) -> List[Dict[str, Instances]]:
    """`[{key: results}]`, each rescaled to its input's "height" x "width" (default: the input size)."""
    processed = []
    for per_image, inputs, image_size in zip(results, batched_inputs, image_sizes):
        height = inputs.get("height", image_size[0])
        width = inputs.get("width", image_size[1])
        processed.append({key: detector_postprocess(per_image, height, width)})
    return processed


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN(_RCNNBase):
    """
    Faster / Mask R-CNN: backbone -> proposal generator -> RoI heads. In training it returns the
    merged loss dicts of its parts, which compute their own losses; in inference the detections
    of each image, rescaled to the input's "height" x "width".
    """

    @configurable
    def __init__(
        self,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        backbone: Backbone,
        proposal_generator: Optional[nn.Module],
        roi_heads: nn.Module,
        input_format: Optional[str] = None,
        vis_period: int = 0,
    ):
        """
        Args:
            pixel_mean, pixel_std: per-channel input normalization, in the input's channel order.
            backbone: features from the normalized, padded image batch.
            proposal_generator: `(images, features, gt) -> (proposals, losses)`; None to read
                precomputed "proposals" from the inputs.
            roi_heads: `(images, features, proposals, gt) -> (instances, losses)`.
            input_format: channel order of the input images ("BGR", "RGB", "L").
            vis_period: every this many training iterations, put an image of one input's gt boxes
                and its top proposals in the event storage (0: never).
        """
        super().__init__()
        self.backbone, self.proposal_generator, self.roi_heads = backbone, proposal_generator, roi_heads
        if input_format is not None and input_format not in _INPUT_FORMATS:
            raise ValueError(f"INPUT.FORMAT must be one of {_INPUT_FORMATS}, got '{input_format}'")
        self.input_format = input_format
        if vis_period > 0 and input_format is None:
            raise ValueError("GeneralizedRCNN: vis_period > 0 needs input_format to draw the images")
        self.vis_period = vis_period
        self._init_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        parts = cls._shared_parts(cfg)
        parts["roi_heads"] = build_roi_heads(cfg, parts["backbone"].output_shape())
        return {**parts, "input_format": cfg.INPUT.FORMAT, "vis_period": cfg.VIS_PERIOD}

    def visualize_training(
        self, batched_inputs: List[Dict], proposals: List[Instances], max_proposals: int = 20
    ) -> None:
        """Put the first input's gt boxes (left) and its `max_proposals` best proposals (right) in the storage."""
        image = batched_inputs[0]["image"].permute(1, 2, 0).cpu().numpy()
        if self.input_format == "BGR":
            image = image[:, :, ::-1]
        gt_boxes = batched_inputs[0]["instances"].gt_boxes.tensor.cpu().numpy()
        gt_image = Visualizer(image).overlay_instances(boxes=gt_boxes)
        top = proposals[0].proposal_boxes.tensor[:max_proposals].detach().cpu().numpy()
        proposal_image = Visualizer(image).overlay_instances(boxes=top)
        both = np.concatenate((gt_image, proposal_image), axis=1).transpose(2, 0, 1)
        get_event_storage().put_image("Left: GT bounding boxes;  Right: Predicted proposals", both)

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        Training: the dict of scalar losses of the proposal generator and the RoI heads.
        Inference: see `inference`.
        """
        if not self.training:
            return self.inference(batched_inputs)

        images = self.preprocess_image(batched_inputs)
        gt_instances = self._gt_instances(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self._proposals(images, features, batched_inputs, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)

        return {**detector_losses, **proposal_losses}

    def inference(
        self,
        batched_inputs: List[Dict[str, Tensor]],
        detected_instances: InstancesList = None,
        do_postprocess: bool = True,
    ):
        """
        Args:
            batched_inputs: the input dicts.
            detected_instances: per image, known detections (`pred_boxes`, `pred_classes`) to run only
                the remaining branches (masks) on, instead of detecting.
            do_postprocess: rescale to each input's "height" x "width" and paste the masks.
        Returns:
            with postprocessing, `[{"instances": Instances}]` with `pred_boxes`, `scores`,
            `pred_classes` (and `pred_masks`: H x W bool per detection) at the requested size;
            without, the per-image `Instances` at the input size (masks as N x 1 x M x M probabilities).
        """
        if self.training:
            raise RuntimeError("GeneralizedRCNN.inference needs eval mode")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if detected_instances is None:
            proposals, _ = self._proposals(images, features, batched_inputs, None)
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)

        if do_postprocess:
            return self._postprocess(results, batched_inputs, images.image_sizes)
        return results

    def _proposals(self, images: ImageList, features, batched_inputs, gt_instances):
        if self.proposal_generator is not None:
            return self.proposal_generator(images, features, gt_instances)
        if "proposals" not in batched_inputs[0]:
            raise KeyError("A model without a proposal generator needs 'proposals' in every input")
        return [x["proposals"].to(self.device) for x in batched_inputs], {}

    @staticmethod
    def _postprocess(
        instances: List[Instances], batched_inputs: List[Dict], image_sizes: List[Tuple[int, int]]
    ) -> List[Dict[str, Instances]]:
        """Rescale each image's results to its input's "height" x "width" (default: the input size)."""
        return _rescale_results(instances, batched_inputs, image_sizes, "instances")


@META_ARCH_REGISTRY.register()
class ProposalNetwork(_RCNNBase):
    """An RPN alone: training returns its losses, inference `[{"proposals": Instances}]` at the requested size."""

    @configurable
    def __init__(
        self,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        backbone: Backbone,
        proposal_generator: nn.Module,
    ):
        super().__init__()
        self.backbone, self.proposal_generator = backbone, proposal_generator
        self._init_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        return cls._shared_parts(cfg)

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self.proposal_generator(images, features, self._gt_instances(batched_inputs))
        if self.training:
            return proposal_losses
        return _rescale_results(proposals, batched_inputs, images.image_sizes, "proposals")
