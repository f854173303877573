"""
R-CNN meta-architectures: a backbone, a proposal generator and (for `GeneralizedRCNN`) RoI heads. Their
inputs and outputs follow the protocol of `MetaArchitecture` (base.py); without a proposal generator, each
input carries precomputed "proposals" (`Instances` with `proposal_boxes`, `objectness_logits`).
"""

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from torch import Tensor, nn

from detlib.config import configurable
from detlib.modeling.backbone import Backbone, build_backbone
from detlib.modeling.proposal_generator import build_proposal_generator
from detlib.modeling.roi_heads import build_roi_heads
from detlib.structures import ImageList, Instances
from detlib.utils.events import get_event_storage
from detlib.visualization.visualizer import Visualizer

from .base import MetaArchitecture
from .build import META_ARCH_REGISTRY

__all__ = ["GeneralizedRCNN", "ProposalNetwork"]

InstancesList = Optional[List[Instances]]


def _backbone_and_proposals(cfg) -> Dict[str, Any]:
    """The constructor arguments both R-CNN models build alike: backbone, proposal generator, pixel statistics."""
    backbone = build_backbone(cfg)
    return dict(
        backbone=backbone,
        proposal_generator=build_proposal_generator(cfg, backbone.output_shape()),
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
    )


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN(MetaArchitecture):
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
        super().__init__(backbone=backbone, pixel_mean=pixel_mean, pixel_std=pixel_std, input_format=input_format)
        self.proposal_generator, self.roi_heads = proposal_generator, roi_heads
        if vis_period > 0 and input_format is None:
            raise ValueError("GeneralizedRCNN: vis_period > 0 needs input_format to draw the images")
        self.vis_period = vis_period

    @classmethod
    def from_config(cls, cfg):
        parts = _backbone_and_proposals(cfg)
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

    def training_losses(self, batched_inputs: List[Dict[str, Any]]) -> Dict[str, Tensor]:
        """The merged scalar losses of the proposal generator and the RoI heads."""
        images = self.preprocess_image(batched_inputs)
        gt_instances = self.ground_truth(batched_inputs)
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
        # Pasting masks at the output size is the last large allocation; the feature maps (~80 MB for R50-FPN at
        # 800x1216) need not be alive for it.
        del features

        if do_postprocess:
            return self.postprocess([{"instances": r} for r in results], batched_inputs, images.image_sizes)
        return results

    def _proposals(self, images: ImageList, features, batched_inputs, gt_instances):
        if self.proposal_generator is not None:
            return self.proposal_generator(images, features, gt_instances)
        if "proposals" not in batched_inputs[0]:
            raise KeyError("A model without a proposal generator needs 'proposals' in every input")
        return [x["proposals"].to(self.device) for x in batched_inputs], {}


@META_ARCH_REGISTRY.register()
class ProposalNetwork(MetaArchitecture):
    """An RPN alone: training returns its losses, inference `[{"proposals": Instances}]` at the requested size."""

    OUTPUT_KEYS = ("proposals",)

    @configurable
    def __init__(
        self,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        backbone: Backbone,
        proposal_generator: nn.Module,
    ):
        super().__init__(backbone=backbone, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.proposal_generator = proposal_generator

    @classmethod
    def from_config(cls, cfg):
        return _backbone_and_proposals(cfg)

    def training_losses(self, batched_inputs: List[Dict[str, Any]]) -> Dict[str, Tensor]:
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        _, losses = self.proposal_generator(images, features, self.ground_truth(batched_inputs, required=True))
        return losses

    def inference(self, batched_inputs: List[Dict[str, Any]], do_postprocess: bool = True):
        """Per image, the RPN's proposals (`proposal_boxes`, `objectness_logits`), best first."""
        if self.training:
            raise RuntimeError("ProposalNetwork.inference needs eval mode")
        images = self.preprocess_image(batched_inputs)
        proposals, _ = self.proposal_generator(images, self.backbone(images.tensor), None)
        if do_postprocess:
            return self.postprocess([{"proposals": p} for p in proposals], batched_inputs, images.image_sizes)
        return proposals
