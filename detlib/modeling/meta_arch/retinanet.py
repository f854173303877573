"""
RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection"): a one-stage detector. Every
anchor of every pyramid level gets K independent class logits and 4 box deltas from a small conv head
shared by the levels; there is no proposal stage and no RoI pooling.

The head (`RetinaNetHead`) owns everything after the backbone: the anchors, their labels, the losses
(`loss_cls`, `loss_box_reg`) and the decoding of detections, so the meta-architecture (`RetinaNet`)
is only normalization, backbone, head and rescaling, as `GeneralizedRCNN` is for the two-stage models.
The focal loss itself is `detlib.layers.losses.sigmoid_focal_loss`, reached through the loss
registry (`MODEL.RETINANET.CLS_LOSS_TYPE: focal`).

Parameter names follow Detectron2's RetinaNet (`head.cls_subnet.0.weight`, `head.cls_score.bias`,
`head.bbox_pred.weight`, ...), so its checkpoints load unchanged.
"""

import inspect
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers import ShapeSpec, batched_nms, cat, get_norm, select_features
from detlib.layers.losses import (
    CLS_LOSS_REGISTRY,
    BoxLoss,
    ClassificationLoss,
    box_loss_from_config,
    build_box_loss,
    build_classification_loss,
    check_loss_weights,
)
from detlib.structures import Boxes, ImageList, Instances, pairwise_iou
from detlib.utils.events import get_event_storage

from ..anchor_generator import build_anchor_generator
from ..backbone import Backbone, build_backbone
from ..box_regression import Box2BoxTransform, dense_box_regression_loss
from ..matcher import Matcher
from .build import META_ARCH_REGISTRY
from .rcnn import _RCNNBase, _rescale_results

__all__ = ["RetinaNetHead", "RetinaNet", "retinanet_cls_loss_from_config"]


def retinanet_cls_loss_from_config(node, path: str = "MODEL.RETINANET") -> ClassificationLoss:
    """
    The classification loss of RetinaNet's config node: `CLS_LOSS_TYPE` built with `CLS_LOSS_PARAMS`.
    Detectron2's `FOCAL_LOSS_ALPHA` / `FOCAL_LOSS_GAMMA` are the one place a loss's `alpha` / `gamma`
    are set; `CLS_LOSS_PARAMS` may not set them too.
    """
    params = dict(node.CLS_LOSS_PARAMS)
    from_detectron2_keys = {"alpha": "FOCAL_LOSS_ALPHA", "gamma": "FOCAL_LOSS_GAMMA"}
    for param, key in from_detectron2_keys.items():
        if param in params:
            raise ValueError(f"{path}.CLS_LOSS_PARAMS sets {param}; set it with {path}.{key} instead")
    # Only a loss that has the parameter receives it (e.g. not "cross_entropy").
    accepted = _factory_parameters(node.CLS_LOSS_TYPE)
    params.update({param: node[key] for param, key in from_detectron2_keys.items() if param in accepted})
    return build_classification_loss(node.CLS_LOSS_TYPE, **params)


def _factory_parameters(name: str) -> Sequence[str]:
    if not isinstance(name, str) or name not in CLS_LOSS_REGISTRY:
        return ()  # build_classification_loss reports the unknown name with the choices
    return list(inspect.signature(CLS_LOSS_REGISTRY.get(name)).parameters)


def _conv_tower(in_channels: int, conv_dims: Sequence[int], norm: str) -> nn.Sequential:
    """3x3 convs with `norm` (if any) and ReLU; indices as in Detectron2 (conv at 0, then norm, ReLU)."""
    layers: List[nn.Module] = []
    for cin, cout in zip([in_channels, *conv_dims[:-1]], conv_dims):
        layers.append(nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1))
        norm_layer = get_norm(norm, cout)
        if norm_layer is not None:
            layers.append(norm_layer)
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _anchor_major(prediction: Tensor, values_per_anchor: int) -> Tensor:
    """(N, A*V, H, W) -> (N, H*W*A, V): the order of the anchors (row, column, cell anchor)."""
    n, _, h, w = prediction.shape
    return prediction.view(n, -1, values_per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, values_per_anchor)


class RetinaNetHead(nn.Module):
    """
    RetinaNet's dense head over the pyramid levels `in_features`: a classification subnet and a box
    subnet (each a stack of 3x3 convs, shared by the levels), ending in `cls_score` (A*K logits per
    location) and `bbox_pred` (A*4 deltas).

    Training: anchors are matched to the gt boxes by IoU (positives, negatives, and an ignore band
    between), and the head returns its losses, each summed and divided by a moving average of the
    number of positive anchors per batch (Detectron2's loss normalizer). Inference: per level, the
    `topk_candidates` best (anchor, class) scores above `score_thresh` are decoded, then per-class
    NMS over all levels keeps at most `max_detections_per_image`.
    """

    LOSS_NAMES = ("loss_cls", "loss_box_reg")

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        in_channels: int,
        num_classes: int,
        anchor_generator: nn.Module,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        conv_dims: Sequence[int],
        norm: str = "",
        prior_prob: float = 0.01,
        cls_loss: Optional[ClassificationLoss] = None,
        box_loss: Optional[BoxLoss] = None,
        loss_weight: Union[float, Mapping[str, float]] = 1.0,
        normalizer_momentum: float = 0.9,
        initial_normalizer: float = 100.0,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
    ):
        """
        Args:
            in_features: names of the pyramid levels the head runs on, e.g. ["p3", ..., "p7"].
            in_channels: channels of every level.
            num_classes: K, the number of foreground classes (one sigmoid each; no background logit).
            anchor_generator: per-level anchors, the same number A per location on every level.
            anchor_matcher: labels anchors by IoU (0 background, -1 ignored, 1 foreground).
            box2box_transform: the coding of the predicted deltas.
            conv_dims: output channels of the convs of each subnet.
            norm: norm after each subnet conv ("" for none, "GN", ...). It is shared by the levels, so
                a BatchNorm would mix their statistics: "BN" and "SyncBN" are refused.
            prior_prob: the foreground probability every class logit starts at (its bias), so that
                the many background anchors do not swamp the first iterations.
            cls_loss: classification loss, used in its binary form (default: focal, alpha 0.25, gamma 2).
            box_loss: box regression loss over the positives (default: smooth-L1 with beta 0.1).
            loss_weight: multiplier of both losses, or per loss ({"loss_cls": w, "loss_box_reg": w}).
            normalizer_momentum, initial_normalizer: the loss normalizer starts at `initial_normalizer`
                and moves each step to `momentum * old + (1 - momentum) * max(#positive anchors, 1)`.
            score_thresh, topk_candidates, nms_thresh, max_detections_per_image: inference, see above.
        """
        super().__init__()
        if norm in ("BN", "SyncBN"):
            raise ValueError(
                f"RetinaNetHead: norm {norm!r} would share one BatchNorm across the pyramid levels and per-level "
                "BatchNorm is not implemented; use 'GN' or '' (MODEL.RETINANET.NORM)"
            )
        if not 0 < prior_prob < 1:
            raise ValueError(
                f"RetinaNetHead: prior_prob (MODEL.RETINANET.PRIOR_PROB) must be in (0, 1), got {prior_prob}"
            )
        if not 0 <= normalizer_momentum < 1:
            raise ValueError(f"RetinaNetHead: normalizer_momentum must be in [0, 1), got {normalizer_momentum}")
        num_anchors = set(anchor_generator.num_anchors)
        if len(num_anchors) != 1:
            raise ValueError(
                f"RetinaNetHead needs the same number of anchors on every level, got {anchor_generator.num_anchors}"
            )
        num_anchors = num_anchors.pop()
        conv_dims = list(conv_dims)
        last_dim = conv_dims[-1] if conv_dims else in_channels
        self.in_features = list(in_features)
        self.num_classes = num_classes
        self.cls_subnet = _conv_tower(in_channels, conv_dims, norm)
        self.bbox_subnet = _conv_tower(in_channels, conv_dims, norm)
        self.cls_score = nn.Conv2d(last_dim, num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(last_dim, num_anchors * anchor_generator.box_dim, kernel_size=3, stride=1, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        # sigmoid(bias) = prior_prob.
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.cls_loss = cls_loss if cls_loss is not None else build_classification_loss("focal")
        self.box_loss = box_loss if box_loss is not None else build_box_loss("smooth_l1", beta=0.1)
        self.loss_weight = check_loss_weights("RetinaNet", loss_weight, self.LOSS_NAMES)
        self.normalizer_momentum = normalizer_momentum
        self.initial_normalizer = float(initial_normalizer)
        # A plain attribute, not a buffer: like Detectron2's, it is neither saved nor synchronized
        # between processes. Kept as a tensor so that updating it does not wait for the device.
        self._loss_normalizer: Optional[Tensor] = None
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.max_detections_per_image = max_detections_per_image

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        node = cfg.MODEL.RETINANET
        shapes = select_features(input_shape, node.IN_FEATURES, "MODEL.RETINANET.IN_FEATURES")
        channels = {shape.channels for shape in shapes}
        if len(channels) != 1:
            raise ValueError(f"RetinaNetHead shares its convs across levels, which have channels {sorted(channels)}")
        in_channels = channels.pop()
        weights = cfg.MODEL.LOSS_WEIGHTS
        return {
            "in_features": node.IN_FEATURES,
            "in_channels": in_channels,
            "num_classes": node.NUM_CLASSES,
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "anchor_matcher": Matcher(node.IOU_THRESHOLDS, node.IOU_LABELS, allow_low_quality_matches=True),
            "box2box_transform": Box2BoxTransform(weights=node.BBOX_REG_WEIGHTS),
            "conv_dims": [in_channels] * node.NUM_CONVS,
            "norm": node.NORM,
            "prior_prob": node.PRIOR_PROB,
            "cls_loss": retinanet_cls_loss_from_config(node),
            "box_loss": box_loss_from_config(node, "MODEL.RETINANET", beta_key="SMOOTH_L1_LOSS_BETA"),
            "loss_weight": {name: weights.get(name, 1.0) for name in cls.LOSS_NAMES},
            "score_thresh": node.SCORE_THRESH_TEST,
            "topk_candidates": node.TOPK_CANDIDATES_TEST,
            "nms_thresh": node.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    def predict(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            features: per level, N x C x Hi x Wi.
        Returns:
            per level, class logits N x (Hi*Wi*A) x K and box deltas N x (Hi*Wi*A) x 4, in anchor order.
        """
        box_dim = self.anchor_generator.box_dim
        logits = [_anchor_major(self.cls_score(self.cls_subnet(x)), self.num_classes) for x in features]
        deltas = [_anchor_major(self.bbox_pred(self.bbox_subnet(x)), box_dim) for x in features]
        return logits, deltas

    def forward(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: Optional[List[Instances]] = None
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """
        Args:
            images: the padded batch (its `image_sizes` are the sizes detections refer to).
            features: feature maps by name, including `in_features`.
            gt_instances: per image, `Instances` with `gt_boxes` and `gt_classes`; needed in training.
        Returns:
            training: ([], the loss dict); inference: per image, `Instances(pred_boxes, scores,
            pred_classes)` in decreasing score order at the input size, and an empty dict.
        """
        levels = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(levels)
        pred_logits, pred_deltas = self.predict(levels)
        if self.training:
            if gt_instances is None:
                raise ValueError("RetinaNetHead needs gt_instances in training")
            gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
            return [], self.losses(anchors, pred_logits, pred_deltas, gt_labels, gt_boxes)
        return self.inference(anchors, pred_logits, pred_deltas, images.image_sizes), {}

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]) -> Tuple[Tensor, Tensor]:
        """
        Returns:
            N x R int64 labels over the R anchors of all levels: the matched gt class in [0, K) for a
            foreground anchor, K for background, -1 for ignored; and N x R x 4 matched gt boxes
            (meaningful only on foreground anchors).
        """
        anchors = Boxes.cat(anchors)
        labels, matched_boxes = [], []
        for instances in gt_instances:
            gt_boxes = instances.gt_boxes
            matched_idxs, match_labels = self.anchor_matcher(pairwise_iou(gt_boxes, anchors))
            if len(instances) == 0:
                labels.append(torch.full_like(matched_idxs, self.num_classes))
                matched_boxes.append(torch.zeros_like(anchors.tensor))
                continue
            per_anchor = instances.gt_classes[matched_idxs].clone()
            per_anchor[match_labels == 0] = self.num_classes
            per_anchor[match_labels == -1] = -1
            labels.append(per_anchor)
            matched_boxes.append(gt_boxes.tensor[matched_idxs])
        return torch.stack(labels), torch.stack(matched_boxes)

    def _update_normalizer(self, num_positive: Tensor) -> Tensor:
        """The moving average of max(#positives, 1) after this step (Detectron2's `loss_normalizer`)."""
        previous = self._loss_normalizer
        if previous is None:
            previous = torch.tensor(self.initial_normalizer, dtype=torch.float32, device=num_positive.device)
        momentum = self.normalizer_momentum
        updated = previous.to(num_positive.device) * momentum + num_positive.clamp(min=1).float() * (1 - momentum)
        self._loss_normalizer = updated
        return updated

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        pred_deltas: List[Tensor],
        gt_labels: Tensor,
        gt_boxes: Tensor,
    ) -> Dict[str, Tensor]:
        """
        The classification loss over the (anchor, class) pairs of every non-ignored anchor, with
        target 1 for an anchor's matched class and 0 otherwise (background anchors: 0 for all K),
        and the box loss over the foreground anchors; each summed, divided by the loss normalizer
        and weighted.

        Args:
            anchors: per level, the anchors shared by the images.
            pred_logits, pred_deltas: output of `predict`.
            gt_labels, gt_boxes: output of `label_anchors`.
        """
        num_images = gt_labels.shape[0]
        valid = gt_labels >= 0
        positive = valid & (gt_labels != self.num_classes)
        num_positive = positive.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_positive / num_images)
        normalizer = self._update_normalizer(num_positive)

        logits = cat(pred_logits, dim=1)  # N x R x K
        # Ignored anchors get a background target and weight 0: weighting rather than selecting
        # keeps the loss free of a data-dependent shape.
        targets = F.one_hot(gt_labels.clamp(min=0), self.num_classes + 1)[..., : self.num_classes]
        weights = valid[..., None].expand_as(logits).to(logits.dtype)
        loss_cls = self.cls_loss.binary(logits.flatten(), targets.flatten().to(logits.dtype), weights.flatten())
        loss_box = dense_box_regression_loss(
            anchors, self.box2box_transform, pred_deltas, list(gt_boxes), positive, self.box_loss
        )
        return {
            "loss_cls": loss_cls / normalizer * self.loss_weight["loss_cls"],
            "loss_box_reg": loss_box / normalizer * self.loss_weight["loss_box_reg"],
        }

    @torch.no_grad()
    def inference(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        pred_deltas: List[Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """Per image, the detections of `decode_image`."""
        return [
            self.decode_image(anchors, [x[i] for x in pred_logits], [x[i] for x in pred_deltas], image_size)
            for i, image_size in enumerate(image_sizes)
        ]

    def decode_image(
        self, anchors: List[Boxes], logits: List[Tensor], deltas: List[Tensor], image_size: Tuple[int, int]
    ) -> Instances:
        """
        Detections of one image from its per-level logits (R_l x K) and deltas (R_l x 4): on each
        level the `topk_candidates` best (anchor, class) scores that exceed `score_thresh`, then
        per-class NMS over all levels, best first, at most `max_detections_per_image`.
        """
        scores, classes, boxes = [], [], []
        for anchors_l, logits_l, deltas_l in zip(anchors, logits, deltas):
            flat = logits_l.sigmoid().flatten()
            # The top k above the threshold are the top k overall, less those below the threshold;
            # the threshold is applied once over all levels below.
            top_scores, top_idxs = flat.topk(min(self.topk_candidates, flat.numel()))
            anchor_idxs = top_idxs // self.num_classes
            scores.append(top_scores)
            classes.append(top_idxs % self.num_classes)
            boxes.append(self.box2box_transform.apply_deltas(deltas_l[anchor_idxs], anchors_l.tensor[anchor_idxs]))
        scores, classes, boxes = cat(scores), cat(classes), cat(boxes)
        above = scores > self.score_thresh
        scores, classes, boxes = scores[above], classes[above], boxes[above]
        keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.max_detections_per_image]
        return Instances(image_size, pred_boxes=Boxes(boxes[keep]), scores=scores[keep], pred_classes=classes[keep])


@META_ARCH_REGISTRY.register()
class RetinaNet(_RCNNBase):
    """
    RetinaNet: backbone (ResNet + FPN with p6/p7) -> `RetinaNetHead`. Training returns the head's
    loss dict (`loss_cls`, `loss_box_reg`); inference `[{"instances": Instances(pred_boxes, scores,
    pred_classes)}]` rescaled to each input's "height" x "width".
    """

    @configurable
    def __init__(
        self, *, pixel_mean: Sequence[float], pixel_std: Sequence[float], backbone: Backbone, head: RetinaNetHead
    ):
        """
        Args:
            pixel_mean, pixel_std: per-channel input normalization, in the input's channel order.
            backbone: features from the normalized, padded image batch.
            head: `(images, features, gt) -> (detections, losses)`.
        """
        super().__init__()
        self.backbone, self.head = backbone, head
        self._init_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "backbone": backbone,
            "head": RetinaNetHead(cfg, backbone.output_shape()),
        }

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """
        Args:
            batched_inputs: Detectron2's per-image dicts ("image", optional "height" / "width", and
                "instances" in training).
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if self.training:
            gt_instances = self._gt_instances(batched_inputs)
            if gt_instances is None:
                raise KeyError("RetinaNet needs 'instances' in every input in training")
            _, losses = self.head(images, features, gt_instances)
            return losses
        results, _ = self.head(images, features)
        return _rescale_results(results, batched_inputs, images.image_sizes, "instances")
