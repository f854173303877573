"""Box codings (`Box2BoxTransform`, FCOS's `Box2BoxTransformLinear`) and the box-regression loss of dense predictions (anchors, proposals)."""

import math
from typing import Sequence, Tuple, Union

import torch

from detlib.layers.losses import BoxLoss, BoxLossKind
from detlib.layers.wrappers import cat
from detlib.structures import Boxes

__all__ = ["Box2BoxTransform", "Box2BoxTransformLinear", "dense_box_regression_loss"]

# exp() of a larger log-scale delta would make a box over 1000/16 times its anchor: clamp there.
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _center_form(boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(center x, center y, width, height) columns of R x 4 XYXY boxes."""
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * width, boxes[:, 1] + 0.5 * height, width, height


class Box2BoxTransform:
    """
    The R-CNN box coding. A target box is encoded relative to a source box (anchor or proposal) as
    (dx, dy, dw, dh): center offsets in units of the source's width and height, and log size
    ratios, each multiplied by its weight. Boxes are XYXY in absolute pixels.
    """

    def __init__(self, weights: Tuple[float, float, float, float], scale_clamp: float = _DEFAULT_SCALE_CLAMP):
        """
        Args:
            weights: multipliers (wx, wy, ww, wh) of the four deltas, e.g. (10, 10, 5, 5) so that
                deltas of proposals have roughly unit variance.
            scale_clamp: dw and dh are clamped to at most this when decoding.
        """
        if len(weights) != 4:
            raise ValueError(f"Box2BoxTransform needs 4 weights (wx, wy, ww, wh), got {tuple(weights)}")
        self.weights = tuple(weights)
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """
        Deltas (R x 4) that `apply_deltas` turns `src_boxes` (R x 4) into `target_boxes` (R x 4) with.
        Source boxes must have positive width and height.
        """
        if not (isinstance(src_boxes, torch.Tensor) and isinstance(target_boxes, torch.Tensor)):
            raise TypeError(
                f"get_deltas takes tensors, got {type(src_boxes).__name__} and {type(target_boxes).__name__}"
            )
        # R-CNN's box parametrisation (Girshick et al. 2014, eq. 6-9): t_x = (G_x - P_x) / P_w,
        # t_w = log(G_w / P_w), likewise for y and h, each t scaled by its weight. Parity with
        # Detectron2's regression targets depends on the order kept here: weight times difference
        # first, then the division by the source size.
        src_x, src_y, src_w, src_h = _center_form(src_boxes)
        tgt_x, tgt_y, tgt_w, tgt_h = _center_form(target_boxes)
        wx, wy, ww, wh = self.weights
        deltas = torch.stack(
            (
                wx * (tgt_x - src_x) / src_w,
                wy * (tgt_y - src_y) / src_h,
                ww * torch.log(tgt_w / src_w),
                wh * torch.log(tgt_h / src_h),
            ),
            dim=1,
        )
        # Checked on the device, so a GPU step does not wait for the answer.
        torch._assert_async(
            ((src_w > 0) & (src_h > 0)).all(),
            "Box2BoxTransform.get_deltas: source boxes need positive width and height",
        )
        return deltas

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """
        Decode `deltas` (R x 4k: k boxes per source, e.g. one per class) relative to `boxes` (R x 4).
        Returns R x 4k boxes. Decoding is done in float32 whatever the input precision.
        """
        deltas = deltas.float()
        # The inverse of `get_deltas`: G_x = P_w * t_x / w_x + P_x, G_w = P_w * exp(t_w / w_w), the
        # log-size deltas clamped before exp(). Parity with Detectron2's decoded boxes depends on
        # this order (divide by the weight, scale by the size, add the center; half of the size).
        anc_x, anc_y, anc_w, anc_h = (v[:, None] for v in _center_form(boxes.to(deltas.dtype)))
        wx, wy, ww, wh = self.weights
        center_x = deltas[:, 0::4] / wx * anc_w + anc_x
        center_y = deltas[:, 1::4] / wy * anc_h + anc_y
        half_w = 0.5 * (torch.exp(torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)) * anc_w)
        half_h = 0.5 * (torch.exp(torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)) * anc_h)
        corners = (center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h)
        return torch.stack(corners, dim=-1).reshape(deltas.shape)


class Box2BoxTransformLinear:
    """
    FCOS's box coding: a target box is encoded relative to a source box (an anchor point, a square of
    the level's stride) as the distances (l, t, r, b) from the source's center to the target's left,
    top, right and bottom edges, divided by the source's width / height when `normalize_by_size`.
    Boxes are XYXY in absolute pixels.
    """

    def __init__(self, normalize_by_size: bool = True):
        """
        Args:
            normalize_by_size: measure the distances in units of the source box's size (its stride).
        """
        self.normalize_by_size = normalize_by_size

    def _sizes(self, boxes: torch.Tensor) -> torch.Tensor:
        """R x 4 (w, h, w, h) of R x 4 XYXY boxes."""
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        return torch.stack((width, height, width, height), dim=1)

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """
        Distances (R x 4) from the centers of `src_boxes` to the edges of `target_boxes` (both R x 4),
        positive where the center is inside the target.
        """
        if not (isinstance(src_boxes, torch.Tensor) and isinstance(target_boxes, torch.Tensor)):
            raise TypeError(
                f"get_deltas takes tensors, got {type(src_boxes).__name__} and {type(target_boxes).__name__}"
            )
        center = torch.cat(((src_boxes[:, :2] + src_boxes[:, 2:]) * 0.5,) * 2, dim=1)
        sign = center.new_tensor([1.0, 1.0, -1.0, -1.0])
        deltas = (center - target_boxes) * sign
        return deltas / self._sizes(src_boxes) if self.normalize_by_size else deltas

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """
        Decode `deltas` (R x 4k, k boxes per source) relative to `boxes` (R x 4) into R x 4k boxes.
        Negative distances are taken as 0, so every decoded box contains its source's center.
        """
        deltas = torch.relu(deltas)
        boxes = boxes.to(deltas.dtype)
        num_boxes = deltas.shape[1] // 4
        if self.normalize_by_size:
            deltas = deltas * self._sizes(boxes).repeat(1, num_boxes)
        center = torch.cat(((boxes[:, :2] + boxes[:, 2:]) * 0.5,) * 2, dim=1).repeat(1, num_boxes)
        sign = deltas.new_tensor([-1.0, -1.0, 1.0, 1.0]).repeat(num_boxes)
        return center + sign * deltas


def dense_box_regression_loss(
    anchors: Sequence[Union[Boxes, torch.Tensor]],
    box2box_transform: Union[Box2BoxTransform, Box2BoxTransformLinear],
    pred_anchor_deltas: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    fg_mask: torch.Tensor,
    box_loss: BoxLoss,
) -> torch.Tensor:
    """
    Summed box-regression loss of dense predictions over the foreground, for N images and R anchors.

    Args:
        anchors: per feature level, the anchors shared by all images (`Boxes` or R_l x 4 tensors).
        box2box_transform: the coding of `pred_anchor_deltas`.
        pred_anchor_deltas: per level, N x R_l x 4 predicted deltas.
        gt_boxes: per image, the R x 4 gt box matched to each anchor (any value where not foreground).
        fg_mask: N x R bool, the anchors that count (or `...` for all of them).
        box_loss: compares deltas or decoded boxes, as its `kind` says.
    """
    if isinstance(anchors[0], Boxes):
        anchors = Boxes.cat(list(anchors)).tensor
    else:
        anchors = cat(list(anchors), dim=0)
    pred_deltas = cat(list(pred_anchor_deltas), dim=1)  # N x R x 4

    if box_loss.kind is BoxLossKind.DELTAS:
        target = torch.stack([box2box_transform.get_deltas(anchors, gt) for gt in gt_boxes])
        pred = pred_deltas
    else:
        target = torch.stack(list(gt_boxes))
        pred = torch.stack([box2box_transform.apply_deltas(d, anchors) for d in pred_deltas])
    # Selecting (rather than masking the elementwise loss) keeps the undefined targets of
    # background anchors (e.g. log(0) when an image has no gt) out of the values and gradients.
    return box_loss(pred[fg_mask], target[fg_mask])
