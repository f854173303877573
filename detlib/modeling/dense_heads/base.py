"""
What every one-stage head shares: locations on each pyramid level (anchors, or points as anchors of one
size), the training / inference split of its forward, the moving-average loss normalizer, and decoding
detections from per-level scores and box deltas (top-k per level, threshold, class-wise NMS).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from detlib.layers import batched_nms, cat
from detlib.structures import Boxes, ImageList, Instances

__all__ = ["DenseHead", "anchor_major"]


def anchor_major(prediction: Tensor, values_per_anchor: int) -> Tensor:
    """(N, A*V, H, W) -> (N, H*W*A, V): the order of the anchors (row, column, cell anchor)."""
    n, _, h, w = prediction.shape
    return prediction.view(n, -1, values_per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, values_per_anchor)


class DenseHead(nn.Module):
    """
    Base of one-stage heads. Subclasses implement

    * `predict(levels)`: per level N x C x Hi x Wi in, a tuple of per-level lists out, the first two being
      class logits N x R_l x K and box deltas N x R_l x 4 in anchor order (`anchor_major`), any further
      ones the head's own (FCOS's centerness);
    * `losses(anchors, predictions, gt_instances)`: the head's loss dict;

    and may override `scores(predictions)`, the per-level N x R_l x K class probabilities that inference
    ranks (default: the sigmoid of the logits).

    A head may be built before it knows its levels or anchors (Detectron2's Python configs give those to the
    detector, not to the head): its detector then sets them, and any of `SETTINGS`, through `configure`.
    """

    # What `configure` may set (besides the levels); subclasses add their own.
    SETTINGS: Tuple[str, ...] = (
        "box2box_transform",
        "score_thresh",
        "topk_candidates",
        "nms_thresh",
        "max_detections_per_image",
    )

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        num_classes: int,
        anchor_generator: Optional[nn.Module],
        box2box_transform,
        num_levels: Optional[int] = None,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        normalizer_momentum: float = 0.9,
        initial_normalizer: float = 100.0,
    ):
        """
        Args:
            in_features: names of the pyramid levels the head runs on, e.g. ["p3", ..., "p7"]; empty until
                the detector sets them (`configure`).
            num_classes: K, the number of foreground classes (one sigmoid each; no background logit).
            anchor_generator: per-level anchors, the same number A per location on every level; None until
                set (`configure`).
            box2box_transform: decodes the predicted deltas against the anchors (`apply_deltas`).
            num_levels: the number of levels the head was built for, when its layers fix it; the levels
                it is given must be that many.
            score_thresh, topk_candidates, nms_thresh, max_detections_per_image: inference: on each level the
                `topk_candidates` best (anchor, class) scores above `score_thresh`, then class-wise NMS at
                `nms_thresh` over all levels keeps at most `max_detections_per_image`, best first.
            normalizer_momentum, initial_normalizer: the loss normalizer starts at `initial_normalizer` and
                moves each step to `momentum * old + (1 - momentum) * max(#positives, 1)` (Detectron2's).
        """
        super().__init__()
        if not 0 <= normalizer_momentum < 1:
            raise ValueError(f"{type(self).__name__}: normalizer_momentum must be in [0, 1), got {normalizer_momentum}")
        self.num_levels = num_levels
        self._check_num_levels(in_features)
        self.in_features = list(in_features)
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.normalizer_momentum = normalizer_momentum
        self.initial_normalizer = float(initial_normalizer)
        # A plain attribute, not a buffer: like Detectron2's, it is neither saved nor synchronized
        # between processes. Kept as a tensor so that updating it does not wait for the device.
        self._loss_normalizer: Optional[Tensor] = None

    def set_levels(self, in_features: Sequence[str], strides: Optional[Sequence[int]] = None) -> None:
        """
        The pyramid levels the head runs on, by name, with their strides when the detector knows them. A head
        with an anchor generator of its own does not need the strides; one whose anchors follow from them
        (FCOS's points) overrides this to build its anchors.
        """
        if strides is not None and len(strides) != len(in_features):
            raise ValueError(f"{type(self).__name__}: in_features {list(in_features)} but strides {list(strides)}")
        self._check_num_levels(in_features)
        self.in_features = list(in_features)

    def _check_num_levels(self, in_features: Sequence[str]) -> None:
        if in_features and self.num_levels is not None and len(in_features) != self.num_levels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_levels} levels, got in_features {list(in_features)}"
            )

    def configure(
        self, *, in_features: Optional[Sequence[str]] = None, strides: Optional[Sequence[int]] = None, **settings
    ) -> None:
        """
        Set, after construction, the levels (`in_features`, with their `strides`: see `set_levels`) and any of
        the non-module settings named in `SETTINGS`. This is how a detector hands its head what Detectron2's
        detector keywords carry.
        """
        unknown = sorted(set(settings) - set(self.SETTINGS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.configure: no setting {unknown}; the settings are {list(self.SETTINGS)}"
            )
        if in_features is not None:
            self.set_levels(in_features, strides)
        elif strides is not None:
            raise ValueError(f"{type(self).__name__}.configure: strides without in_features")
        for name, value in settings.items():
            setattr(self, name, value)

    def predict(self, levels: List[Tensor]) -> Tuple[List[Tensor], ...]:
        raise NotImplementedError(f"{type(self).__name__} does not implement predict")

    def losses(
        self, anchors: List[Boxes], predictions: Tuple[List[Tensor], ...], gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement losses")

    def scores(self, predictions: Tuple[List[Tensor], ...]) -> List[Tensor]:
        """Per level, N x R_l x K class probabilities: the sigmoid of the logits."""
        return [logits.sigmoid() for logits in predictions[0]]

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
        if not self.in_features or self.anchor_generator is None:
            raise RuntimeError(
                f"{type(self).__name__} has no levels or no anchors yet: give it in_features and its anchors, or "
                "build it inside its detector (which sets them through configure)"
            )
        levels = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(levels)
        predictions = self.predict(levels)
        if self.training:
            if gt_instances is None:
                raise ValueError(f"{type(self).__name__} needs gt_instances in training")
            return [], self.losses(anchors, predictions, gt_instances)
        return self.inference(anchors, predictions, images.image_sizes), {}

    def update_loss_normalizer(self, num_positive: Tensor) -> Tensor:
        """The moving average of max(#positives, 1) after this step, which the losses are divided by."""
        previous = self._loss_normalizer
        if previous is None:
            previous = torch.tensor(self.initial_normalizer, dtype=torch.float32, device=num_positive.device)
        momentum = self.normalizer_momentum
        updated = previous.to(num_positive.device) * momentum + num_positive.clamp(min=1).float() * (1 - momentum)
        self._loss_normalizer = updated
        return updated

    @torch.no_grad()
    def inference(
        self, anchors: List[Boxes], predictions: Tuple[List[Tensor], ...], image_sizes: List[Tuple[int, int]]
    ) -> List[Instances]:
        """Per image, the detections of `decode_image`."""
        scores, deltas = self.scores(predictions), predictions[1]
        return [
            self.decode_image(anchors, [x[i] for x in scores], [x[i] for x in deltas], image_size)
            for i, image_size in enumerate(image_sizes)
        ]

    def decode_image(
        self, anchors: List[Boxes], scores: List[Tensor], deltas: List[Tensor], image_size: Tuple[int, int]
    ) -> Instances:
        """
        Detections of one image from its per-level class probabilities (R_l x K) and deltas (R_l x 4): on
        each level the `topk_candidates` best (anchor, class) scores that exceed `score_thresh`, then
        class-wise NMS over all levels, best first, at most `max_detections_per_image`.
        """
        kept_scores, kept_classes, kept_boxes = [], [], []
        for anchors_l, scores_l, deltas_l in zip(anchors, scores, deltas):
            flat = scores_l.flatten()
            # The top k above the threshold are the top k overall, less those below the threshold;
            # the threshold is applied once over all levels below.
            top_scores, top_idxs = flat.topk(min(self.topk_candidates, flat.numel()))
            anchor_idxs = top_idxs // self.num_classes
            kept_scores.append(top_scores)
            kept_classes.append(top_idxs % self.num_classes)
            kept_boxes.append(self.box2box_transform.apply_deltas(deltas_l[anchor_idxs], anchors_l.tensor[anchor_idxs]))
        scores_all, classes, boxes = cat(kept_scores), cat(kept_classes), cat(kept_boxes)
        above = scores_all > self.score_thresh
        scores_all, classes, boxes = scores_all[above], classes[above], boxes[above]
        keep = batched_nms(boxes, scores_all, classes, self.nms_thresh)[: self.max_detections_per_image]
        return Instances(image_size, pred_boxes=Boxes(boxes[keep]), scores=scores_all[keep], pred_classes=classes[keep])
