"""Turning per-box predictions into per-image outputs at the size the caller asked for."""
from typing import Tuple, Union

import torch
import torch.nn.functional as F

from detlib.structures import Boxes, Instances

__all__ = ["detector_postprocess", "paste_masks_in_image"]

# Pasting materializes a float sampling grid (2 values) and a float output per pixel of each mask's
# region; chunks of masks are sized to keep that working set under this many bytes.
_PASTE_MEMORY_BUDGET = 256 * 1024**2
_BYTES_PER_PIXEL = 4 * 4


def _paste_chunk(masks: torch.Tensor, boxes: torch.Tensor, region: Tuple[int, int, int, int]) -> torch.Tensor:
    """
    Bilinearly resample `masks` (K x M x M probabilities) into `boxes` (K x 4, XYXY pixels) on the
    pixels of `region` = (x0, y0, x1, y1) of the image. Returns K x (y1 - y0) x (x1 - x0).

    Pixel (i, j) is sampled at its center (j + 0.5, i + 0.5). The box spans the mask exactly, edge to
    edge, which is `grid_sample`'s convention with `align_corners=False`; outside the mask the
    sample is zero.
    """
    x0, y0, x1, y1 = region
    xs = torch.arange(x0, x1, device=boxes.device, dtype=torch.float32) + 0.5
    ys = torch.arange(y0, y1, device=boxes.device, dtype=torch.float32) + 0.5
    bx0, by0, bx1, by1 = boxes.to(torch.float32).unbind(dim=1)
    # Pixel centers in the grid's [-1, 1] box coordinates: K x W and K x H.
    gx = (xs[None, :] - bx0[:, None]) / (bx1 - bx0)[:, None] * 2 - 1
    gy = (ys[None, :] - by0[:, None]) / (by1 - by0)[:, None] * 2 - 1
    num, height, width = len(boxes), len(ys), len(xs)
    grid = torch.stack(
        (gx[:, None, :].expand(num, height, width), gy[:, :, None].expand(num, height, width)), dim=3
    )
    pasted = F.grid_sample(masks[:, None].to(torch.float32), grid, mode="bilinear", align_corners=False)
    return pasted[:, 0]


def paste_masks_in_image(
    masks: torch.Tensor, boxes: Union[Boxes, torch.Tensor], image_shape: Tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """
    Paste per-box mask probabilities into full images.

    Each M x M mask is stretched over its box with bilinear interpolation, sampled at every pixel
    center of the image, and thresholded. Masks are processed in chunks that cover only the union of
    their boxes, so memory stays bounded for many masks on large images.

    Args:
        masks: N x M x M mask probabilities in [0, 1].
        boxes: N boxes, XYXY in pixels of the output image.
        image_shape: (height, width) of the output image.
        threshold: a pixel is in the mask where the interpolated probability is >= threshold.
    Returns:
        N x height x width bool tensor.
    """
    if masks.dim() != 3 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"paste_masks_in_image: masks must be N x M x M, got shape {tuple(masks.shape)}")
    if isinstance(boxes, Boxes):
        boxes = boxes.tensor
    if len(boxes) != len(masks):
        raise ValueError(f"paste_masks_in_image: {len(boxes)} boxes for {len(masks)} masks")
    img_h, img_w = int(image_shape[0]), int(image_shape[1])
    device = boxes.device
    result = torch.zeros((len(masks), img_h, img_w), dtype=torch.bool, device=device)
    if len(masks) == 0:
        return result

    # Where a box edge falls on a pixel, bilinear sampling can still reach the threshold one pixel
    # beyond the box; regions are widened by that pixel (and clipped to the image).
    per_mask_bytes = max(img_h * img_w * _BYTES_PER_PIXEL, 1)
    chunk_size = max(1, _PASTE_MEMORY_BUDGET // per_mask_bytes)
    for start in range(0, len(masks), chunk_size):
        chunk_boxes = boxes[start : start + chunk_size]
        lo = torch.floor(chunk_boxes[:, :2].min(dim=0).values) - 1
        hi = torch.ceil(chunk_boxes[:, 2:].max(dim=0).values) + 1
        x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        x1, y1 = min(int(hi[0]), img_w), min(int(hi[1]), img_h)
        if x1 <= x0 or y1 <= y0:
            continue
        pasted = _paste_chunk(masks[start : start + chunk_size], chunk_boxes, (x0, y0, x1, y1))
        result[start : start + chunk_size, y0:y1, x0:x1] = pasted >= threshold
    return result


def detector_postprocess(
    results: Instances, output_height: int, output_width: int, mask_threshold: float = 0.5
) -> Instances:
    """
    Rescale the predictions of one image from the size the model saw (`results.image_size`) to
    `output_height` x `output_width` (usually the original image size): boxes are scaled, clipped
    and the empty ones dropped; `pred_masks` (N x 1 x M x M probabilities) become N x H x W bool
    masks pasted at the output size.

    Returns a new `Instances` of size (output_height, output_width); the boxes of `results` are
    rescaled in place.
    """
    scale_x = output_width / results.image_size[1]
    scale_y = output_height / results.image_size[0]
    results = Instances((output_height, output_width), **results.get_fields())

    if results.has("pred_boxes"):
        output_boxes = results.pred_boxes
    elif results.has("proposal_boxes"):
        output_boxes = results.proposal_boxes
    else:
        raise ValueError(f"detector_postprocess: predictions have no boxes; fields are {list(results.get_fields())}")
    output_boxes.scale(scale_x, scale_y)
    output_boxes.clip(results.image_size)
    results = results[output_boxes.nonempty()]

    if results.has("pred_masks"):
        mask_probs = results.pred_masks
        if mask_probs.dim() == 4:
            mask_probs = mask_probs[:, 0]
        results.pred_masks = paste_masks_in_image(
            mask_probs, results.pred_boxes, (output_height, output_width), threshold=mask_threshold
        )
    return results
