"""
Keypoint annotations of instances, and the conversions between keypoints and the per-RoI heatmaps
a keypoint head predicts.

Coordinates are continuous image coordinates: pixel (i, j) covers [j, j + 1) x [i, i + 1), so its
center is (j + 0.5, i + 0.5) (Heckbert, "What is the coordinate of a pixel?", 1990). Heatmap cells
follow the same rule inside their RoI, in both directions of the conversion.
"""

from typing import Any, List, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Keypoints", "heatmaps_to_keypoints", "keypoints_to_heatmap"]


class Keypoints:
    """
    N instances of K keypoints as an (N, K, 3) float32 tensor `tensor` of (x, y, visibility) in
    image pixels. Visibility follows COCO: 0 not labeled (x = y = 0), 1 labeled but occluded,
    2 labeled and visible.
    """

    def __init__(self, keypoints: Union[torch.Tensor, np.ndarray, Sequence]):
        device = keypoints.device if isinstance(keypoints, torch.Tensor) else torch.device("cpu")
        tensor = torch.as_tensor(keypoints, dtype=torch.float32, device=device)
        if tensor.numel() == 0 and tensor.dim() != 3:
            tensor = tensor.reshape(0, 0, 3)
        if tensor.dim() != 3 or tensor.shape[2] != 3:
            raise ValueError(f"Keypoints need an (N, K, 3) tensor of (x, y, visibility), got {tuple(tensor.shape)}")
        self.tensor = tensor

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def to(self, *args: Any, **kwargs: Any) -> "Keypoints":
        return Keypoints(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __getitem__(self, item) -> "Keypoints":
        """Instances selected by an int, a slice, an index tensor or a bool mask."""
        if isinstance(item, int):
            return Keypoints(self.tensor[item][None])
        return Keypoints(self.tensor[item])

    def __repr__(self) -> str:
        return f"Keypoints(num_instances={len(self)}, num_keypoints={self.tensor.shape[1]})"

    @staticmethod
    def cat(keypoints_list: List["Keypoints"]) -> "Keypoints":
        if not keypoints_list or not all(isinstance(k, Keypoints) for k in keypoints_list):
            raise TypeError("Keypoints.cat needs a non-empty list of Keypoints")
        return Keypoints(torch.cat([k.tensor for k in keypoints_list], dim=0))

    def hflip(self, image_width: float, flip_indices: Sequence[int]) -> "Keypoints":
        """
        The keypoints of the horizontally mirrored image: x becomes `image_width - x` and keypoint i
        takes the place of keypoint `flip_indices[i]`'s mirror image (a left eye becomes a right eye).
        Unlabeled keypoints stay (0, 0, 0).
        """
        num_keypoints = self.tensor.shape[1]
        indices = torch.as_tensor(list(flip_indices), dtype=torch.long, device=self.device)
        if indices.numel() != num_keypoints or sorted(indices.tolist()) != list(range(num_keypoints)):
            raise ValueError(
                f"Keypoints.hflip: flip_indices must be a permutation of 0..{num_keypoints - 1}, got {list(flip_indices)}"
            )
        flipped = self.tensor[:, indices].clone()
        flipped[..., 0] = image_width - flipped[..., 0]
        flipped[flipped[..., 2] == 0] = 0
        return Keypoints(flipped)

    def to_heatmap(self, boxes: torch.Tensor, heatmap_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Training targets of the keypoints in `boxes` (N x 4 XYXY): see `keypoints_to_heatmap`."""
        return keypoints_to_heatmap(self.tensor, boxes, heatmap_size)


def keypoints_to_heatmap(
    keypoints: torch.Tensor, boxes: torch.Tensor, heatmap_size: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    The heatmap cell of each keypoint inside its instance's box, as a training target.

    The box [x0, x1) x [y0, y1) is divided into S x S cells (S = `heatmap_size`); a keypoint falls
    in cell (floor((y - y0) * S / h), floor((x - x0) * S / w)), and one exactly on the right or
    bottom edge of the box in the last cell.

    Args:
        keypoints: (N, K, 3) keypoints (x, y, visibility).
        boxes: (N, 4) XYXY boxes, one per instance.
        heatmap_size: S.
    Returns:
        targets: (N, K) int64 flat cell index row * S + col, 0 where not valid;
        valid: (N, K) bool, the keypoint is labeled (visibility > 0) and inside its box.
    """
    if boxes.numel() == 0:
        empty = torch.zeros((0, keypoints.shape[1]), dtype=torch.int64, device=boxes.device)
        return empty, empty.bool()
    x0, y0, x1, y1 = (boxes[:, i : i + 1] for i in range(4))
    x, y = keypoints[..., 0], keypoints[..., 1]
    col = ((x - x0) * (heatmap_size / (x1 - x0))).floor().long()
    row = ((y - y0) * (heatmap_size / (y1 - y0))).floor().long()
    # The box's far edges belong to it (a keypoint there is labeled in the last cell).
    col = torch.where(x == x1, heatmap_size - 1, col)
    row = torch.where(y == y1, heatmap_size - 1, row)
    inside = (col >= 0) & (col < heatmap_size) & (row >= 0) & (row < heatmap_size)
    valid = inside & (keypoints[..., 2] > 0)
    targets = torch.where(valid, row * heatmap_size + col, torch.zeros_like(col))
    return targets, valid


def _bicubic_weights(sizes: torch.Tensor, length: int, source_size: int) -> torch.Tensor:
    """
    (R, length, source_size): row j of RoI i holds the weights with which `F.interpolate(mode="bicubic",
    align_corners=False)` mixes the `source_size` source cells into output cell j of a resampling to
    `sizes[i]` cells (rows j >= sizes[i] are padding). PyTorch's rule: source coordinate
    (j + 0.5) * source_size / size - 0.5, cubic convolution with A = -0.75 over the four nearest cells,
    indices beyond the border clamped to it.
    """
    a = -0.75
    scale = (source_size / sizes).to(torch.float32)  # (R,)
    position = scale[:, None] * (torch.arange(length, device=sizes.device, dtype=torch.float32) + 0.5) - 0.5
    floor = position.floor()
    t = position - floor
    taps = [
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
        ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
    ]
    weights = position.new_zeros((*position.shape, source_size))
    for offset, tap in zip((-1, 0, 1, 2), taps):
        index = (floor.long() + offset).clamp(0, source_size - 1)
        weights.scatter_add_(2, index[..., None], tap[..., None])
    return weights


def _peaks_padded(maps: torch.Tensor, ceil_sizes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The peak of each RoI's bicubically resampled heatmaps without a loop over RoIs, for traced programs
    (whose number of RoIs and their sizes are data): every RoI is resampled on a grid of the largest RoI's
    size, as the separable product (rows x S) @ logits @ (S x columns), and cells beyond its own size are
    left out of the maximum. Returns the peak logits, rows and columns, each (R, K).
    """
    num_rois, num_keypoints, side = maps.shape[:3]
    # At least 1: an empty batch of RoIs still makes valid (empty) grids.
    largest = torch.cat([ceil_sizes.flatten(), ceil_sizes.new_ones(1)]).max().long().item()
    torch._check(largest >= 1)
    width, height = ceil_sizes[:, 0], ceil_sizes[:, 1]
    rows = _bicubic_weights(height, largest, side)  # (R, L, S)
    cols = _bicubic_weights(width, largest, side)
    cells = torch.arange(largest, device=maps.device)
    outside = (cells[None, :, None] >= height[:, None, None]) | (cells[None, None, :] >= width[:, None, None])
    peaks, flat = [], []
    for k in range(num_keypoints):  # one keypoint at a time bounds the working set to R x L x L
        resampled = rows @ maps[:, k] @ cols.transpose(1, 2)
        value, index = resampled.masked_fill(outside, float("-inf")).flatten(1).max(dim=1)
        peaks.append(value)
        flat.append(index)
    peak, flat_index = torch.stack(peaks, dim=1), torch.stack(flat, dim=1)
    return peak, flat_index // largest, flat_index % largest


def heatmaps_to_keypoints(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """
    Image coordinates and scores of the keypoints from per-RoI heatmap logits.

    Each RoI's S x S logits are resampled bicubically to the RoI's size in pixels, rounded up
    (ceil(h) x ceil(w), sides at least 1); the keypoint is the center of the largest resampled
    cell, mapped back into the box, whose true size is usually a fraction of a pixel smaller.
    Its score is the softmax probability of that resampled logit against the S x S logits.

    Args:
        maps: (R, K, S, S) heatmap logits.
        boxes: (R, 4) XYXY boxes of the RoIs.
    Returns:
        (R, K, 4): x, y, the resampled logit at the peak, and its score.
    """
    num_rois, num_keypoints = maps.shape[:2]
    sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)  # (R, 2): width, height
    ceil_sizes = sizes.ceil()
    # The resampled grid has whole pixels; a cell's center is scaled back to the box's true size.
    cell_scale = sizes / ceil_sizes
    # The normalizer of each keypoint's softmax over the S x S logits, written out: torch.logsumexp
    # branches on an empty input, which a traced program with a data-dependent number of RoIs cannot.
    flat_maps = maps.flatten(2)
    top = flat_maps.amax(dim=2, keepdim=True)
    log_normalizer = (top + (flat_maps - top).exp().sum(dim=2, keepdim=True).log())[..., 0]
    if torch.compiler.is_compiling():
        peak_logit, row, col = _peaks_padded(maps, ceil_sizes)
    else:
        # RoIs differ in size, so each is resampled on its own grid.
        peaks, rows, cols = [], [], []
        for i, (width, height) in enumerate(ceil_sizes.tolist()):
            resampled = F.interpolate(
                maps[i : i + 1], size=(int(height), int(width)), mode="bicubic", align_corners=False
            )
            peak, flat_index = resampled[0].flatten(1).max(dim=1)
            peaks.append(peak)
            rows.append(flat_index // int(width))
            cols.append(flat_index % int(width))
        empty = maps.new_zeros((0, num_keypoints))
        peak_logit = torch.stack(peaks) if peaks else empty
        row = torch.stack(rows) if rows else empty.long()
        col = torch.stack(cols) if cols else empty.long()
    cell_center = torch.stack([col, row], dim=2).to(maps.dtype) + 0.5  # (R, K, 2)
    xy = cell_center * cell_scale[:, None, :] + boxes[:, None, :2]
    score = torch.exp(peak_logit - log_normalizer)
    return torch.cat([xy, peak_logit[..., None], score[..., None]], dim=2)
