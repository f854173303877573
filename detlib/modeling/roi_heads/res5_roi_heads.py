"""
The RoI heads of the C4 models (Faster / Mask R-CNN on a ResNet's res4): ResNet's last stage, res5, is the
box head, run on each RoI's pooled res4 features; the mask head shares its output.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers import CNNBlockBase, ShapeSpec, select_features
from detlib.modeling.backbone.resnet import BottleneckBlock, ResNet
from detlib.modeling.poolers import ROIPooler
from detlib.structures import ImageList, Instances

from .fast_rcnn import FastRCNNOutputLayers
from .mask_head import build_mask_head
from .roi_heads import ROI_HEADS_REGISTRY, ROIHeads, TargetList, select_foreground_proposals

__all__ = ["Res5ROIHeads"]


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeads(ROIHeads):
    """
    `pooler` -> `res5` (a ResNet stage, stride 2) -> mean over the positions -> `box_predictor`; with masks,
    `mask_head` on the same res5 features of the foreground RoIs (training) or of the detections (inference).
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        pooler: ROIPooler,
        res5: nn.Module,
        box_predictor: nn.Module,
        mask_head: Optional[nn.Module] = None,
        **kwargs,
    ):
        """
        Args:
            in_features: the one feature map the RoIs are pooled from (e.g. ["res4"]).
            pooler: pools each RoI's features from it.
            res5: the blocks run on the pooled features (a `ResNet` stage).
            box_predictor: scores and box deltas from the res5 features averaged over their positions.
            mask_head: masks from the res5 features; None without masks.
            kwargs: the arguments of `ROIHeads`.
        """
        super().__init__(**kwargs)
        if len(in_features) != 1:
            raise ValueError(f"Res5ROIHeads pools from one feature map, got MODEL.ROI_HEADS.IN_FEATURES {in_features}")
        self.in_features = in_features
        self.pooler, self.box_predictor = pooler, box_predictor
        self.res5 = nn.Sequential(*res5) if isinstance(res5, (list, tuple)) else res5
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_head = mask_head

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("Res5ROIHeads has no keypoint branch: MODEL.KEYPOINT_ON needs StandardROIHeads")
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        (shape,) = select_features(input_shape, in_features[:1], "MODEL.ROI_HEADS.IN_FEATURES")
        head = cfg.MODEL.ROI_BOX_HEAD
        resolution = head.POOLER_RESOLUTION
        res5, channels = cls._build_res5_block(cfg)
        ret = super().from_config(cfg)
        ret.update(
            in_features=in_features,
            pooler=ROIPooler(resolution, (1.0 / shape.stride,), head.POOLER_SAMPLING_RATIO, head.POOLER_TYPE),
            res5=res5,
            box_predictor=FastRCNNOutputLayers(cfg, ShapeSpec(channels=channels, height=1, width=1)),
        )
        if cfg.MODEL.MASK_ON:
            # res5 halves the pooled size: its output is resolution / 2 square, which the mask head upsamples.
            ret["mask_head"] = build_mask_head(cfg, ShapeSpec(channels=channels, width=resolution, height=resolution))
        return ret

    @classmethod
    def _build_res5_block(cls, cfg) -> Tuple[nn.Sequential, int]:
        """res5 as `build_resnet_backbone` would build it (3 bottleneck blocks, the first with stride 2)."""
        r = cfg.MODEL.RESNETS
        if r.DEFORM_ON_PER_STAGE[-1]:
            raise ValueError("Res5ROIHeads does not build deformable res5 blocks (MODEL.RESNETS.DEFORM_ON_PER_STAGE)")
        factor = 2**3  # res5's channels relative to res2's
        out_channels = r.RES2_OUT_CHANNELS * factor
        blocks: List[CNNBlockBase] = ResNet.make_stage(
            BottleneckBlock,
            3,
            stride_per_block=[2, 1, 1],
            in_channels=out_channels // 2,
            bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * factor,
            out_channels=out_channels,
            num_groups=r.NUM_GROUPS,
            norm=r.NORM,
            stride_in_1x1=r.STRIDE_IN_1X1,
        )
        return nn.Sequential(*blocks), out_channels

    def _shared_roi_transform(self, features: Dict[str, Tensor], boxes) -> Tensor:
        return self.res5(self.pooler([features[f] for f in self.in_features], boxes))

    def forward(
        self, images: ImageList, features: Dict[str, Tensor], proposals: List[Instances], targets: TargetList = None
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """See `StandardROIHeads.forward`; the losses are `loss_cls`, `loss_box_reg` (and `loss_mask`)."""
        del images
        if self.training:
            proposals = self.label_and_sample_proposals(proposals, targets)
        box_features = self._shared_roi_transform(features, [p.proposal_boxes for p in proposals])
        predictions = self.box_predictor(box_features.mean(dim=[2, 3]))

        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            if self.mask_on:
                foreground, selected = select_foreground_proposals(proposals, self.num_classes)
                losses.update(self.mask_head(box_features[torch.cat(selected, dim=0)], foreground))
            return proposals, losses
        del box_features
        pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def forward_with_given_boxes(self, features: Dict[str, Tensor], instances: List[Instances]) -> List[Instances]:
        """Inference: `instances` (with `pred_boxes`, `pred_classes`) with `pred_masks` added when masks are on."""
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference; call eval() first")
        if not self.mask_on:
            return instances
        return self.mask_head(self._shared_roi_transform(features, [i.pred_boxes for i in instances]), instances)
