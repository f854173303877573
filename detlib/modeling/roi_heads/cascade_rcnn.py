"""
Cascade R-CNN (Cai & Vasconcelos, CVPR 2018): a chain of box stages, each trained on the boxes the
stage before it predicted, labelled at a stricter IoU, so that every stage learns to refine boxes
of the quality it is given. Each stage computes its own losses.

Shapes below: R RoIs of a stage in the batch, K foreground classes.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers.losses import check_loss_weights
from detlib.modeling.box_regression import Box2BoxTransform
from detlib.modeling.matcher import Matcher
from detlib.modeling.poolers import ROIPooler
from detlib.structures import Boxes, Instances, pairwise_iou
from detlib.utils.events import get_event_storage

from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from .roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, TargetList

__all__ = ["CascadeROIHeads"]

# One stage's raw output: FastRCNNOutputLayers' (class logits, box deltas), and the RoIs it ran on.
_StageOutput = Tuple[Tuple[Tensor, Tensor], List[Instances]]


class _GradientScale(torch.autograd.Function):
    """The identity going forward; the incoming gradient times `scale` going back."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None]:
        return grad * ctx.scale, None


@ROI_HEADS_REGISTRY.register()
class CascadeROIHeads(StandardROIHeads):
    """
    `StandardROIHeads` with S box stages (`box_head[s]`, `box_predictor[s]`, a matcher at IoU
    `ROI_BOX_CASCADE_HEAD.IOUS[s]`) sharing one pooler. Stage 0 runs on the sampled proposals; stage
    s > 0 on stage s - 1's class-agnostic boxes, detached, so no stage's loss reaches an earlier
    stage's predictions. Training returns each stage's losses with a `_stage{s}` suffix; inference
    averages the class probabilities of all stages and keeps the last stage's boxes. The mask branch
    is the standard one: it trains on stage 0's sampled proposals and predicts on the final boxes.
    """

    @configurable
    def __init__(
        self,
        *,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[nn.Module],
        proposal_matchers: Sequence[Matcher],
        **kwargs,
    ):
        """
        Args:
            box_heads: one box head per stage.
            box_predictors: one class-agnostic `FastRCNNOutputLayers` per stage, each with its own
                box coding weights.
            proposal_matchers: one per stage, labelling that stage's RoIs foreground (1) or
                background (0); the first also labels the proposals before sampling.
            kwargs: the arguments of `StandardROIHeads` other than `box_head`, `box_predictor` and
                `proposal_matcher`.
        """
        given = sorted({"box_head", "box_predictor", "proposal_matcher"} & set(kwargs))
        if given:
            raise TypeError(f"CascadeROIHeads takes one per stage (box_heads=, box_predictors=, ...), not {given}")
        counts = {len(box_heads), len(box_predictors), len(proposal_matchers)}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(
                "CascadeROIHeads needs the same number (>= 1) of box_heads, box_predictors and proposal_matchers, "
                f"got {len(box_heads)}, {len(box_predictors)} and {len(proposal_matchers)}"
            )
        # ModuleLists named as Detectron2's (`box_head.0.fc1.weight`, ...), so its checkpoints load.
        super().__init__(
            box_head=nn.ModuleList(box_heads),
            box_predictor=nn.ModuleList(box_predictors),
            proposal_matcher=proposal_matchers[0],
            **kwargs,
        )
        self.proposal_matchers = list(proposal_matchers)

    @property
    def num_stages(self) -> int:
        """S, the number of box stages."""
        return len(self.proposal_matchers)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        del ret["proposal_matcher"]  # replaced by the stages' matchers
        if ret.pop("train_on_pred_boxes"):
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES does not apply to CascadeROIHeads: its later stages "
                "train on predicted boxes already, and its mask head on the first stage's proposals"
            )
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        cascade = cfg.MODEL.ROI_BOX_CASCADE_HEAD
        ious, coder_weights = list(cascade.IOUS), [tuple(w) for w in cascade.BBOX_REG_WEIGHTS]
        if not ious or len(ious) != len(coder_weights):
            raise ValueError(
                "MODEL.ROI_BOX_CASCADE_HEAD: IOUS and BBOX_REG_WEIGHTS give one entry per stage and must have "
                f"the same length (>= 1), got {len(ious)} and {len(coder_weights)}"
            )
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError(
                "CascadeROIHeads regresses one box per RoI, for every class: set MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"
            )
        first_threshold = cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]
        if ious[0] != first_threshold:
            raise ValueError(
                f"MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0] ({ious[0]}) must equal MODEL.ROI_HEADS.IOU_THRESHOLDS[0] "
                f"({first_threshold}): both label the proposals of the first stage"
            )

        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        head = cfg.MODEL.ROI_BOX_HEAD
        scales, pooled_shape = cls._pooled_shape(input_shape, in_features, head.POOLER_RESOLUTION, "ROI_HEADS")
        box_heads = [build_box_head(cfg, pooled_shape) for _ in ious]
        box_predictors = []
        for stage, (box_head, weights) in enumerate(zip(box_heads, coder_weights)):
            args = FastRCNNOutputLayers.from_config(cfg, box_head.output_shape)
            args["box2box_transform"] = Box2BoxTransform(weights=weights)
            args["loss_weight"] = cls._stage_loss_weights(cfg, stage, args["loss_weight"])
            box_predictors.append(FastRCNNOutputLayers(**args))
        return {
            "box_in_features": in_features,
            "box_pooler": ROIPooler(head.POOLER_RESOLUTION, scales, head.POOLER_SAMPLING_RATIO, head.POOLER_TYPE),
            "box_heads": box_heads,
            "box_predictors": box_predictors,
            "proposal_matchers": [Matcher([iou], [0, 1], allow_low_quality_matches=False) for iou in ious],
        }

    @staticmethod
    def _stage_loss_weights(cfg, stage: int, weights: Dict[str, float]) -> Dict[str, float]:
        """
        The loss weights of one stage: the box predictor's (`loss_cls`, `loss_box_reg`, for every
        stage) times the stage's own `MODEL.LOSS_WEIGHTS.loss_cls_stage{s}` / `loss_box_reg_stage{s}`.
        """
        suffix = f"_stage{stage}"
        configured = cfg.MODEL.LOSS_WEIGHTS
        own = {name + suffix: configured.get(name + suffix, 1.0) for name in weights}
        own = check_loss_weights(f"CascadeROIHeads stage {stage} (MODEL.LOSS_WEIGHTS)", own, list(own))
        return {name: weight * own[name + suffix] for name, weight in weights.items()}

    def _forward_box(self, features: Dict[str, Tensor], proposals: List[Instances], targets: TargetList = None):
        """
        Training: every stage's losses. Inference: the detections, scored by all stages.

        Args:
            proposals: per image, stage 0's RoIs; in training sampled and labelled, with their gt.
            targets: per image, the gt instances (training only): later stages label their RoIs with them.
        """
        feature_maps = [features[f] for f in self.box_in_features]
        image_sizes = [p.image_size for p in proposals]
        outputs: List[_StageOutput] = []
        for stage in range(self.num_stages):
            if stage > 0:
                previous_predictor, (previous_predictions, previous_rois) = self.box_predictor[stage - 1], outputs[-1]
                boxes = previous_predictor.predict_boxes(previous_predictions, previous_rois)
                proposals = self._rois_from_boxes(boxes, image_sizes)
                if self.training:
                    proposals = self._label_rois(proposals, targets, stage)
            outputs.append((self._run_stage(feature_maps, proposals, stage), proposals))

        if self.training:
            return self._stage_losses(outputs)
        return self._inference(outputs, image_sizes)

    def _run_stage(self, feature_maps: List[Tensor], rois: List[Instances], stage: int) -> Tuple[Tensor, Tensor]:
        """Stage `stage`'s class logits and box deltas for `rois`."""
        box_features = self.box_pooler(feature_maps, [r.proposal_boxes for r in rois])
        if self.training:
            # Every stage's loss counts fully for its own head, but the features all stages share
            # receive the mean of the stages' gradients rather than their sum (as in the paper's
            # implementation and Detectron2's).
            box_features = _GradientScale.apply(box_features, 1.0 / self.num_stages)
        return self.box_predictor[stage](self.box_head[stage](box_features))

    def _rois_from_boxes(self, boxes: List[Tensor], image_sizes: List[Tuple[int, int]]) -> List[Instances]:
        """The next stage's RoIs: the predicted boxes, detached and clipped to the image."""
        rois = []
        for per_image, image_size in zip(boxes, image_sizes):
            per_image = Boxes(per_image.detach())
            per_image.clip(image_size)
            if self.training:
                # Only in training: at inference the stages' scores are averaged RoI by RoI, so
                # every stage keeps all of them.
                per_image = per_image[per_image.nonempty()]
            rois.append(Instances(image_size, proposal_boxes=per_image))
        return rois

    @torch.no_grad()
    def _label_rois(self, rois: List[Instances], targets: TargetList, stage: int) -> List[Instances]:
        """
        Label a later stage's RoIs with the matcher of `stage`: all of them, without sampling.

        Returns:
            the same `rois` with `gt_classes` (background = K) and, where the image has gt, `gt_boxes`.
        """
        if targets is None:
            raise ValueError("CascadeROIHeads needs the gt instances of every image in training")
        fg_counts = []
        for per_image, target in zip(rois, targets):
            matched_idxs, matched_labels = self.proposal_matchers[stage](
                pairwise_iou(target.gt_boxes, per_image.proposal_boxes)
            )
            is_fg = matched_labels == 1
            if len(target) > 0:
                per_image.gt_classes = torch.where(is_fg, target.gt_classes[matched_idxs], self.num_classes)
                per_image.gt_boxes = target.gt_boxes[matched_idxs]
            else:
                # As in stage 0 (`label_and_sample_proposals`), images without gt carry no gt_boxes.
                per_image.gt_classes = torch.full_like(matched_idxs, self.num_classes)
            fg_counts.append(is_fg.sum())

        # Per-image means; one device-to-host copy for the stage.
        fg_mean = torch.stack(fg_counts).double().mean().item()
        storage = get_event_storage()
        with storage.name_scope(f"stage{stage}"):
            storage.put_scalar("roi_head/num_fg_samples", fg_mean)
            storage.put_scalar("roi_head/num_bg_samples", sum(len(r) for r in rois) / len(rois) - fg_mean)
        return rois

    def _stage_losses(self, outputs: List[_StageOutput]) -> Dict[str, Tensor]:
        """Each stage's predictor's losses, renamed `<loss>_stage<s>`; its statistics under `stage<s>/`."""
        storage = get_event_storage()
        losses = {}
        for stage, (predictions, rois) in enumerate(outputs):
            with storage.name_scope(f"stage{stage}"):
                stage_losses = self.box_predictor[stage].losses(predictions, rois)
            losses.update({f"{name}_stage{stage}": value for name, value in stage_losses.items()})
        return losses

    def _inference(self, outputs: List[_StageOutput], image_sizes: List[Tuple[int, int]]) -> List[Instances]:
        """Detections per image: the stages' mean class probabilities on the last stage's boxes."""
        probs_per_stage = [
            predictor.predict_probs(predictions, rois)
            for predictor, (predictions, rois) in zip(self.box_predictor, outputs)
        ]
        # The sum times 1/S rather than the mean, as Detectron2 computes it (keeps near-ties ordered alike).
        scores = [torch.stack(per_image).sum(dim=0) * (1.0 / self.num_stages) for per_image in zip(*probs_per_stage)]
        last, (predictions, rois) = self.box_predictor[-1], outputs[-1]
        boxes = last.predict_boxes(predictions, rois)
        detections, _ = fast_rcnn_inference(
            boxes, scores, image_sizes, last.test_score_thresh, last.test_nms_thresh, last.test_topk_per_image
        )
        return detections
