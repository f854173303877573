"""Non-maximum suppression over XYXY boxes in absolute pixels: torch.ops.detlib.nms (or torchvision's)."""

import torch

from ._extension import KERNELS

__all__ = ["nms", "batched_nms"]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """
    Greedy NMS: visit boxes by decreasing score and drop every later box whose IoU with a kept box is
    greater than `iou_threshold`. Same results as `torchvision.ops.nms`, ties in score included.

    Args:
        boxes: Tensor[N, 4] (x1, y1, x2, y2).
        scores: Tensor[N], same dtype and device as `boxes`.

    Returns:
        int64 Tensor of the kept boxes' indices, by decreasing score.
    """
    return KERNELS.ops.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """
    NMS applied independently to each group of boxes sharing a value of `idxs` (e.g. a class).

    Same results as `torchvision.ops.batched_nms`, which is why the strategy follows it: small inputs
    run one NMS after offsetting each group's boxes so groups cannot overlap (one kernel call), larger
    ones run one NMS per group, where the offset would cost float32 coordinates too much precision.

    Args:
        boxes: Tensor[N, 4] (x1, y1, x2, y2); float16/bfloat16 are computed in float32.
        scores: Tensor[N].
        idxs: integer Tensor[N], the group of each box.

    Returns:
        int64 Tensor of the kept boxes' indices, by decreasing score.
    """
    if boxes.dim() != 2 or boxes.size(-1) != 4:
        raise ValueError(f"batched_nms: boxes must be Tensor[N, 4], got shape {list(boxes.shape)}")
    if scores.shape != (boxes.size(0),):
        raise ValueError(
            f"batched_nms: scores must be Tensor[N] with N={boxes.size(0)}, got shape {list(scores.shape)}"
        )
    if idxs.shape != (boxes.size(0),):
        raise ValueError(f"batched_nms: idxs must be Tensor[N] with N={boxes.size(0)}, got shape {list(idxs.shape)}")
    if idxs.device != boxes.device:
        raise ValueError(f"batched_nms: idxs is on {idxs.device} but boxes are on {boxes.device}")
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    if torch.compiler.is_compiling():
        # A traced program runs on any number of boxes, zero included, and cannot branch on it: the offset
        # strategy always (as torchvision when tracing), its extent defined for zero boxes too.
        extent = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max() + 1
        return nms(boxes + (idxs.to(boxes) * extent)[:, None], scores, iou_threshold)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.numel() <= (4000 if boxes.device.type == "cpu" else 20000):
        offsets = idxs.to(boxes) * (boxes.max() + 1)
        return nms(boxes + offsets[:, None], scores, iou_threshold)

    # index_select rather than advanced indexing: on small tensors it stays on the calling thread,
    # which matters on a busy CPU, where every parallel region waits for a free core.
    by_group = torch.argsort(idxs, stable=True)
    group_sizes = torch.unique_consecutive(idxs.index_select(0, by_group), return_counts=True)[1].tolist()
    kept = torch.cat(
        [
            group.index_select(0, nms(boxes.index_select(0, group), scores.index_select(0, group), iou_threshold))
            for group in by_group.split(group_sizes)
        ]
    )
    # Ascending indices, then torch's default (unstable) sort: ties come out in torchvision's order.
    kept = kept.sort().values
    return kept.index_select(0, scores.index_select(0, kept).sort(descending=True).indices)
