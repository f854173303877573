"""Panoptic segmentation from instance and semantic predictions: the combine step of Panoptic FPN."""

from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor

__all__ = ["combine_semantic_and_instance_outputs"]


def combine_semantic_and_instance_outputs(
    pred_masks: Tensor,
    scores: Tensor,
    pred_classes: Tensor,
    semantic: Tensor,
    overlap_threshold: float,
    stuff_area_thresh: float,
    instances_score_thresh: float,
) -> Tuple[Tensor, List[Dict[str, Any]]]:
    """
    One panoptic segmentation from one image's detections and semantic labels (panopticapi's heuristic).

    Instances are placed best score first, while their score is >= `instances_score_thresh`: an instance
    whose mask is empty, or lies on already placed segments for more than `overlap_threshold` of its area,
    is dropped; otherwise it takes the pixels of its mask not yet taken. Then each semantic class but 0 (the
    class of all "things") takes its pixels still free, when they are at least `stuff_area_thresh`.

    It reads plain tensors, so the outputs of an exported model (masks, scores, classes, the argmax of
    `sem_seg`) combine exactly as the eager model's.

    Args:
        pred_masks: N x H x W masks (bool or 0/1); scores: N; pred_classes: N contiguous thing ids.
        semantic: H x W contiguous semantic class ids (the argmax of the semantic logits).
    Returns:
        H x W int32 segment ids (0: no segment), and one dict per segment, in id order: "id", "isthing",
        "category_id" and, for things, "score" and "instance_id" (its index in the inputs); for stuff, "area".
    """
    panoptic = torch.zeros_like(semantic, dtype=torch.int32)
    masks = pred_masks.to(device=semantic.device, dtype=torch.bool)
    areas = masks.flatten(1).sum(dim=1).tolist()
    segments: List[Dict[str, Any]] = []
    for index in torch.argsort(-scores).tolist():
        score = float(scores[index])
        if score < instances_score_thresh:
            break
        if areas[index] == 0:
            continue
        free = masks[index] & (panoptic == 0)
        overlap = areas[index] - int(free.sum())
        if overlap / areas[index] > overlap_threshold:
            continue
        panoptic[free] = len(segments) + 1
        segments.append(
            {
                "id": len(segments) + 1,
                "isthing": True,
                "score": score,
                "category_id": int(pred_classes[index]),
                "instance_id": index,
            }
        )
    for label in torch.unique(semantic).tolist():
        if label == 0:
            continue
        free = (semantic == label) & (panoptic == 0)
        area = int(free.sum())
        if area < stuff_area_thresh:
            continue
        panoptic[free] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "isthing": False, "category_id": label, "area": area})
    return panoptic, segments
