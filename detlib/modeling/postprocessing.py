"""Turning per-box predictions into per-image outputs at the size the caller asked for."""

from typing import Tuple, Union

import torch
import torch.nn.functional as F

from detlib.structures import Boxes, Instances

__all__ = ["detector_postprocess", "paste_masks_in_image", "sem_seg_postprocess"]

# Pasting materializes a float sampling grid (2 values) and a float output per pixel of each mask's
# window; chunks of masks are sized to keep that working set under this many bytes.
_PASTE_MEMORY_BUDGET = 256 * 1024**2
_BYTES_PER_PIXEL = 4 * 4
# Masks are chunked in order of window size; small chunks keep each window close to the chunk's
# largest, so little is sampled in vain, while the per-chunk overhead stays negligible.
_MAX_MASKS_PER_CHUNK = 16


def _paste_windows(
    masks: torch.Tensor, boxes: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """
    Bilinearly resample `masks` (K x M x M probabilities) into `boxes` (K x 4, XYXY pixels), each on
    the height x width window of image pixels whose top-left pixel is (x0[k], y0[k]).
    Returns K x height x width.

    Pixel (i, j) is sampled at its center (j + 0.5, i + 0.5). The box spans the mask exactly, edge to
    edge, which is `grid_sample`'s convention with `align_corners=False`; outside the mask the
    sample is zero.
    """
    xs = (x0[:, None] + torch.arange(width, device=boxes.device)).to(torch.float32) + 0.5
    ys = (y0[:, None] + torch.arange(height, device=boxes.device)).to(torch.float32) + 0.5
    bx0, by0, bx1, by1 = boxes.to(torch.float32).unbind(dim=1)
    # Pixel centers in the grid's [-1, 1] box coordinates: K x width and K x height.
    gx = (xs - bx0[:, None]) / (bx1 - bx0)[:, None] * 2 - 1
    gy = (ys - by0[:, None]) / (by1 - by0)[:, None] * 2 - 1
    num = boxes.shape[0]
    grid = torch.stack((gx[:, None, :].expand(num, height, width), gy[:, :, None].expand(num, height, width)), dim=3)
    pasted = F.grid_sample(masks[:, None].to(torch.float32), grid, mode="bilinear", align_corners=False)
    return pasted[:, 0]


def _paste_separable(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """
    `_paste_windows` on the whole height x width image, computed as two batched matrix products: bilinear
    sampling with zero padding is separable, the weight of mask cell c for a pixel at (cell-unit) position p
    being max(0, 1 - |p - c|) along each axis. Far cheaper than materializing a sampling grid per pixel.
    """
    side = masks.shape[-1]
    cells = torch.arange(side, device=boxes.device, dtype=torch.float32)
    x0, y0, x1, y1 = boxes.to(torch.float32).unbind(dim=1)

    def weights(start: torch.Tensor, end: torch.Tensor, size: int) -> torch.Tensor:
        centers = torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5
        # Pixel centers in mask cells, whose centers are at 0, 1, ... (grid_sample with align_corners=False).
        position = (centers[None, :] - start[:, None]) / (end - start)[:, None] * side - 0.5
        return (1 - (position[:, :, None] - cells).abs()).clamp(min=0)  # K x size x side

    return weights(y0, y1, height) @ masks.to(torch.float32) @ weights(x0, x1, width).transpose(1, 2)


def paste_masks_in_image(
    masks: torch.Tensor, boxes: Union[Boxes, torch.Tensor], image_shape: Tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """
    Paste per-box mask probabilities into full images.

    Each M x M mask is stretched over its box with bilinear interpolation, sampled at every pixel
    center of the image, and thresholded. Only the pixels near each box are sampled: masks are
    processed in chunks of similar box size, each mask on a window of the chunk's largest size
    placed at its own box, so work follows the boxes' area and memory stays bounded.

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
    if torch.compiler.is_compiling():
        # The windows' sizes depend on the boxes, which a traced program cannot branch on: each mask is
        # interpolated over the whole image instead. Beyond its window a mask interpolates below 0.5, so for
        # thresholds >= 0.5 the result is the same.
        return _paste_separable(masks, boxes, image_shape[0], image_shape[1]) >= threshold
    if len(boxes) != len(masks):
        raise ValueError(f"paste_masks_in_image: {len(boxes)} boxes for {len(masks)} masks")
    img_h, img_w = int(image_shape[0]), int(image_shape[1])
    device = boxes.device
    result = torch.zeros((len(masks), img_h, img_w), dtype=torch.bool, device=device)
    if len(masks) == 0:
        return result

    # Where a box edge falls on a pixel center, bilinear sampling can reach the threshold there:
    # windows reach one pixel beyond the box on each side (clipped to the image).
    x0 = (torch.floor(boxes[:, 0]) - 1).clamp(min=0).long()
    y0 = (torch.floor(boxes[:, 1]) - 1).clamp(min=0).long()
    x1 = (torch.ceil(boxes[:, 2]) + 1).clamp(max=img_w).long()
    y1 = (torch.ceil(boxes[:, 3]) + 1).clamp(max=img_h).long()
    win_w, win_h = (x1 - x0).clamp(min=0), (y1 - y0).clamp(min=0)
    order = torch.argsort(win_w * win_h)

    # Windows are at most the image, so this many masks always fit in the budget.
    chunk_size = max(1, min(_MAX_MASKS_PER_CHUNK, _PASTE_MEMORY_BUDGET // max(img_h * img_w * _BYTES_PER_PIXEL, 1)))
    for chunk in order.split(chunk_size):
        height, width = int(win_h[chunk].max()), int(win_w[chunk].max())
        if height == 0 or width == 0:
            continue
        pasted = _paste_windows(masks[chunk], boxes[chunk], x0[chunk], y0[chunk], height, width) >= threshold
        # Set the mask pixels of each window, leaving out the parts beyond its own clipped window.
        rows = y0[chunk, None] + torch.arange(height, device=device)
        cols = x0[chunk, None] + torch.arange(width, device=device)
        inside = (rows < y1[chunk, None])[:, :, None] & (cols < x1[chunk, None])[:, None, :]
        k, r, c = (pasted & inside).nonzero(as_tuple=True)
        result[chunk[k], rows[k, r], cols[k, c]] = True
    return result


def detector_postprocess(
    results: Instances, output_height: int, output_width: int, mask_threshold: float = 0.5
) -> Instances:
    """
    Rescale the predictions of one image from the size the model saw (`results.image_size`) to
    `output_height` x `output_width` (usually the original image size): boxes are scaled, clipped
    and the empty ones dropped; `pred_masks` (N x 1 x M x M probabilities) become N x H x W bool
    masks pasted at the output size; `pred_keypoints` (N x K x 3: x, y, score) are scaled.

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
    if results.has("pred_keypoints"):
        # Python-float factors, not a tensor made of them: in a traced program they are symbolic.
        keypoints = results.pred_keypoints
        results.pred_keypoints = torch.cat(
            [keypoints[..., :1] * scale_x, keypoints[..., 1:2] * scale_y, keypoints[..., 2:]], dim=-1
        )
    return results


def sem_seg_postprocess(
    result: torch.Tensor, image_size: Tuple[int, int], output_height: int, output_width: int
) -> torch.Tensor:
    """
    Per-class scores of one image of a padded batch (C x H_pad x W_pad) at the size the caller asked for:
    the padding beyond `image_size` (the image's size in the batch) is cut off, and the rest is resized
    bilinearly (pixel centers aligned, `align_corners=False`) to C x output_height x output_width.
    """
    if torch.compiler.is_compiling():
        # A slice would keep the padded batch's strides, and resizing it asks whether they are contiguous: for a
        # traced program, whether the padded size equals the image size, a guard on the input size. Gathering
        # the rows and columns gives a contiguous tensor of the same values.
        rows = torch.arange(image_size[0], device=result.device)
        cols = torch.arange(image_size[1], device=result.device)
        cropped = result.index_select(1, rows).index_select(2, cols)
    else:
        cropped = result[:, : image_size[0], : image_size[1]]
    return F.interpolate(cropped[None], size=(output_height, output_width), mode="bilinear", align_corners=False)[0]
