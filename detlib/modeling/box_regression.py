"""Box coding (`Box2BoxTransform`) and the box-regression loss of dense predictions (anchors, proposals)."""
import math
from typing import Sequence, Tuple, Union

import torch

from detlib.layers.losses import BoxLoss, resolve_box_loss
from detlib.layers.wrappers import cat
from detlib.structures import Boxes

__all__ = ["Box2BoxTransform", "dense_box_regression_loss"]

# exp() of a larger log-scale delta would make a box over 1000/16 times its anchor: clamp there.
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


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
        src_widths = src_boxes[:, 2] - src_boxes[:, 0]
        src_heights = src_boxes[:, 3] - src_boxes[:, 1]
        src_ctr_x = src_boxes[:, 0] + 0.5 * src_widths
        src_ctr_y = src_boxes[:, 1] + 0.5 * src_heights

        target_widths = target_boxes[:, 2] - target_boxes[:, 0]
        target_heights = target_boxes[:, 3] - target_boxes[:, 1]
        target_ctr_x = target_boxes[:, 0] + 0.5 * target_widths
        target_ctr_y = target_boxes[:, 1] + 0.5 * target_heights

        wx, wy, ww, wh = self.weights
        dx = wx * (target_ctr_x - src_ctr_x) / src_widths
        dy = wy * (target_ctr_y - src_ctr_y) / src_heights
        dw = ww * torch.log(target_widths / src_widths)
        dh = wh * torch.log(target_heights / src_heights)
        # Checked on the device, so a GPU step does not wait for the answer.
        torch._assert_async(
            ((src_widths > 0) & (src_heights > 0)).all(),
            "Box2BoxTransform.get_deltas: source boxes need positive width and height",
        )
        return torch.stack((dx, dy, dw, dh), dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """
        Decode `deltas` (R x 4k: k boxes per source, e.g. one per class) relative to `boxes` (R x 4).
        Returns R x 4k boxes. Decoding is done in float32 whatever the input precision.
        """
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)

        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]

        x1 = pred_ctr_x - 0.5 * pred_w
        y1 = pred_ctr_y - 0.5 * pred_h
        x2 = pred_ctr_x + 0.5 * pred_w
        y2 = pred_ctr_y + 0.5 * pred_h
        return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)


def dense_box_regression_loss(
    anchors: Sequence[Union[Boxes, torch.Tensor]],
    box2box_transform: Box2BoxTransform,
    pred_anchor_deltas: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    fg_mask: torch.Tensor,
    box_reg_loss_type: Union[str, BoxLoss] = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> torch.Tensor:
    """
    Summed box-regression loss of dense predictions over the foreground, for N images and R anchors.

    Args:
        anchors: per feature level, the anchors shared by all images (`Boxes` or R_l x 4 tensors).
        box2box_transform: the coding of `pred_anchor_deltas`.
        pred_anchor_deltas: per level, N x R_l x 4 predicted deltas.
        gt_boxes: per image, the R x 4 gt box matched to each anchor (any value where not foreground).
        fg_mask: N x R bool, the anchors that count (or `...` for all of them).
        box_reg_loss_type: a registered box loss name (see `BOX_LOSS_REGISTRY`) or a built `BoxLoss`.
            Delta losses compare deltas, box losses compare the decoded boxes.
        smooth_l1_beta: `beta` of a named loss that has one.
    """
    box_loss = resolve_box_loss(box_reg_loss_type, smooth_l1_beta)
    if isinstance(anchors[0], Boxes):
        anchors = Boxes.cat(list(anchors)).tensor
    else:
        anchors = cat(list(anchors), dim=0)
    pred_deltas = cat(list(pred_anchor_deltas), dim=1)  # N x R x 4

    if box_loss.space == "deltas":
        target = torch.stack([box2box_transform.get_deltas(anchors, gt) for gt in gt_boxes])
        pred = pred_deltas
    else:
        target = torch.stack(list(gt_boxes))
        pred = torch.stack([box2box_transform.apply_deltas(d, anchors) for d in pred_deltas])
    # Selecting (rather than masking the elementwise loss) keeps the undefined targets of
    # background anchors (e.g. log(0) when an image has no gt) out of the values and gradients.
    return box_loss(pred[fg_mask], target[fg_mask])
