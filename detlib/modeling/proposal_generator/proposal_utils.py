"""Turning dense box predictions into per-image proposals, and adding the gt boxes to them."""

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

from detlib.layers import batched_nms, cat
from detlib.structures import Boxes, Instances

__all__ = ["find_top_rpn_proposals", "add_ground_truth_to_proposals"]


def find_top_rpn_proposals(
    proposals: List[Tensor],
    pred_objectness_logits: List[Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> List[Instances]:
    """
    Per image: keep the `pre_nms_topk` highest-scoring boxes of each feature level, clip them to the
    image, drop those with a side not above `min_box_size`, run NMS within each level, and keep the
    `post_nms_topk` best of what survives, sorted by decreasing objectness.

    Args:
        proposals: per level, N x Hi*Wi*A x 4 decoded boxes (XYXY, input-image pixels).
        pred_objectness_logits: per level, N x Hi*Wi*A.
        image_sizes: (height, width) of each of the N images, before padding.
        training: whether non-finite boxes or scores mean divergence (raise) or are just dropped.
    Returns:
        per image, `Instances` with `proposal_boxes` (`Boxes`) and `objectness_logits` (tensor).
    """
    num_images = len(image_sizes)
    device = proposals[0].device
    batch_idx = torch.arange(num_images, device=device)[:, None]

    topk_scores, topk_proposals, level_ids = [], [], []
    for level, (boxes, logits) in enumerate(zip(proposals, pred_objectness_logits)):
        k = min(logits.shape[1], pre_nms_topk)
        # topk sorts, so the candidates of a level are in decreasing score order.
        scores, idx = logits.topk(k, dim=1)
        topk_scores.append(scores)
        topk_proposals.append(boxes[batch_idx, idx])
        level_ids.append(torch.full((k,), level, dtype=torch.int64, device=device))
    topk_scores = cat(topk_scores, dim=1)
    topk_proposals = cat(topk_proposals, dim=1)
    level_ids = cat(level_ids, dim=0)

    results = []
    for n, image_size in enumerate(image_sizes):
        boxes, scores, levels = topk_proposals[n], topk_scores[n], level_ids
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if training and not finite.all():
            raise FloatingPointError(
                "RPN: predicted proposal boxes or objectness logits contain Inf/NaN; training has diverged"
            )
        # Filtered whether or not any is dropped: no branch on the values, so inference can be exported.
        boxes, scores, levels = boxes[finite], scores[finite], levels[finite]
        boxes = Boxes(boxes)
        boxes.clip(image_size)
        keep = boxes.nonempty(threshold=min_box_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]

        keep = batched_nms(boxes.tensor, scores, levels, nms_thresh)[:post_nms_topk]
        result = Instances(image_size)
        result.proposal_boxes = boxes[keep]
        result.objectness_logits = scores[keep]
        results.append(result)
    return results


# The objectness logit of a certain object, P = 1 - 1e-10.
_GT_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


def add_ground_truth_to_proposals(
    gt: Union[List[Instances], List[Boxes]], proposals: List[Instances]
) -> List[Instances]:
    """
    Append each image's gt boxes to its proposals, with a near-certain objectness logit, so that the
    second stage always sees well-placed boxes early in training.

    Args:
        gt: per image, `Instances` with `gt_boxes` (and any other field the proposals have), or `Boxes`.
        proposals: per image, `Instances` with `proposal_boxes` and `objectness_logits`.
    Returns:
        per image, the proposals followed by the gt boxes, with the fields of `proposals`.
    """
    if gt is None:
        raise ValueError("add_ground_truth_to_proposals needs the gt of every image, got None")
    if len(proposals) != len(gt):
        raise ValueError(f"add_ground_truth_to_proposals: {len(gt)} gt entries for {len(proposals)} images")
    return [_add_ground_truth_to_image(gt_i, proposals_i) for gt_i, proposals_i in zip(gt, proposals)]


def _add_ground_truth_to_image(gt: Union[Instances, Boxes], proposals: Instances) -> Instances:
    if isinstance(gt, Boxes):
        gt = Instances(proposals.image_size, gt_boxes=gt)
    gt_boxes = gt.gt_boxes
    logits = proposals.objectness_logits
    available = dict(gt.get_fields())
    available["proposal_boxes"] = gt_boxes
    available["objectness_logits"] = torch.full((len(gt_boxes),), _GT_LOGIT, dtype=logits.dtype, device=logits.device)
    missing = [name for name in proposals.get_fields() if name not in available]
    if missing:
        raise ValueError(f"Proposal field(s) {missing} have no counterpart in the gt fields {sorted(gt.get_fields())}")
    gt_proposals = Instances(proposals.image_size, **{name: available[name] for name in proposals.get_fields()})
    return Instances.cat([proposals, gt_proposals])
