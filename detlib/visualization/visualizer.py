"""Draws detections or ground truth (boxes, masks, keypoints, class names, scores) onto an image with OpenCV."""

from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

from detlib.structures import BoxMode

__all__ = ["Visualizer"]

# Distinct colours (RGB) for classes without `thing_colors` metadata.
_PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
        (170, 255, 195),
        (128, 128, 0),
        (255, 215, 180),
        (0, 0, 128),
    ],
    dtype=np.float32,
)

Mask = Union[np.ndarray, List[Sequence[float]], dict]  # raster, polygons or RLE

# Keypoints are drawn above this visibility (ground truth: 1 or 2) or score (predictions: the
# softmax probability of the heatmap peak, which is low where the head finds no keypoint).
_KEYPOINT_THRESHOLD = 0.05


class Visualizer:
    """
    Draws on a copy of an RGB image. Every `draw_*` / `overlay_instances` call adds to the same
    canvas and returns it as an RGB uint8 H x W x 3 array (H, W = image size x `scale`).

    `metadata` (a dataset's Metadata, optional) supplies `thing_classes` for labels and
    `thing_colors` for per-class colours.
    """

    def __init__(self, img_rgb: np.ndarray, metadata=None, scale: float = 1.0):
        img = np.asarray(img_rgb)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        elif img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Visualizer needs an H x W x 3 RGB image, got shape {img.shape}.")
        self.scale = scale
        self.input_size = img.shape[:2]
        size = (int(round(img.shape[1] * scale)), int(round(img.shape[0] * scale)))
        self.canvas = cv2.resize(np.ascontiguousarray(img, dtype=np.uint8), size, interpolation=cv2.INTER_NEAREST)
        self.metadata = metadata
        self._font_scale = max(0.35, 0.5 * min(size) / 400)
        self._thickness = max(1, int(round(min(size) / 300)))

    def get_image(self) -> np.ndarray:
        return self.canvas

    def _class_names(self) -> Optional[List[str]]:
        return None if self.metadata is None else self.metadata.get("thing_classes")

    def _class_color(self, class_id: int) -> np.ndarray:
        colors = None if self.metadata is None else self.metadata.get("thing_colors")
        if colors is not None and class_id < len(colors):
            return np.asarray(colors[class_id], dtype=np.float32)
        return _PALETTE[class_id % len(_PALETTE)]

    def _label(self, class_id: int, score: Optional[float] = None) -> str:
        names = self._class_names()
        text = names[class_id] if names is not None and 0 <= class_id < len(names) else f"class {class_id}"
        return text if score is None else f"{text} {score * 100:.0f}%"

    def draw_instance_predictions(self, predictions) -> np.ndarray:
        """
        Draws an `Instances` of predictions: `pred_boxes` (Boxes, XYXY pixels of the image),
        `scores`, `pred_classes` and, if present, `pred_masks` (N x H x W) and `pred_keypoints`
        (N x K x 3, drawn where their score exceeds `_KEYPOINT_THRESHOLD`) are used.
        """
        n = len(predictions)
        boxes = predictions.pred_boxes.tensor.detach().cpu().numpy() if predictions.has("pred_boxes") else None
        classes = predictions.pred_classes.tolist() if predictions.has("pred_classes") else [0] * n
        scores = predictions.scores.tolist() if predictions.has("scores") else [None] * n
        masks = None
        if predictions.has("pred_masks"):
            m = predictions.pred_masks
            masks = list((m.tensor if hasattr(m, "tensor") else torch.as_tensor(m)).detach().cpu().numpy().astype(bool))
        keypoints = predictions.pred_keypoints.detach().cpu().numpy() if predictions.has("pred_keypoints") else None
        return self.overlay_instances(
            boxes=boxes,
            labels=[self._label(c, s) for c, s in zip(classes, scores)],
            masks=masks,
            keypoints=keypoints,
            assigned_colors=[self._class_color(c) for c in classes],
        )

    def draw_dataset_dict(self, record: dict) -> np.ndarray:
        """
        Draws a dataset record's `annotations` (boxes in their `bbox_mode`, contiguous
        `category_id`, polygon or RLE `segmentation`), in the coordinates of the image passed in.
        """
        annos = list(record.get("annotations", []))
        boxes = np.asarray(
            [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos], dtype=np.float64
        ).reshape(-1, 4)
        masks = [a["segmentation"] for a in annos] if annos and all("segmentation" in a for a in annos) else None
        classes = [int(a["category_id"]) for a in annos]
        labels = [self._label(c) + (" (crowd)" if a.get("iscrowd", 0) else "") for c, a in zip(classes, annos)]
        keypoints = None
        if annos and all("keypoints" in a for a in annos):
            keypoints = np.asarray([np.asarray(a["keypoints"], np.float64).reshape(-1, 3) for a in annos])
        return self.overlay_instances(
            boxes=boxes,
            labels=labels,
            masks=masks,
            keypoints=keypoints,
            assigned_colors=[self._class_color(c) for c in classes],
        )

    def draw_instances_gt(self, instances) -> np.ndarray:
        """Draws a mapped training sample's `Instances` (gt_boxes, gt_classes, gt_masks, gt_keypoints)."""
        classes = instances.gt_classes.tolist()
        masks = None
        if instances.has("gt_masks"):
            gt = instances.gt_masks
            masks = list(gt.polygons) if hasattr(gt, "polygons") else list(gt.tensor.cpu().numpy())
        return self.overlay_instances(
            boxes=instances.gt_boxes.tensor.cpu().numpy(),
            labels=[self._label(c) for c in classes],
            masks=masks,
            keypoints=instances.gt_keypoints.tensor.cpu().numpy() if instances.has("gt_keypoints") else None,
            assigned_colors=[self._class_color(c) for c in classes],
        )

    def overlay_instances(
        self,
        *,
        boxes: Optional[np.ndarray] = None,
        labels: Optional[Sequence[str]] = None,
        masks: Optional[Sequence[Mask]] = None,
        keypoints: Optional[np.ndarray] = None,
        assigned_colors: Optional[Sequence[np.ndarray]] = None,
        alpha: float = 0.5,
    ) -> np.ndarray:
        """
        Draws N instances, larger ones first so that small ones stay visible.

        Args:
            boxes: N x 4 XYXY in input-image pixels.
            labels: N strings, drawn at each box's top-left corner (or the mask's, without boxes).
            masks: N masks, each an H x W array, a list of flat polygons, or an RLE dict.
            keypoints: N x K x 3 (x, y, visibility or score) in input-image pixels; a keypoint is
                drawn where its third value exceeds `_KEYPOINT_THRESHOLD`.
            assigned_colors: N RGB colours in 0..255; default: one palette colour per instance.
            alpha: opacity of the mask fill.
        """
        counts = [len(x) for x in (boxes, labels, masks, keypoints, assigned_colors) if x is not None]
        n = counts[0] if counts else 0
        if any(c != n for c in counts):
            raise ValueError(f"overlay_instances got arguments of different lengths: {counts}.")
        if n == 0:
            return self.canvas
        h, w = self.input_size
        rasters = [self._to_raster(m, h, w) for m in masks] if masks is not None else None
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        else:
            areas = np.array([r.sum() for r in rasters], dtype=np.float64)
        colors = assigned_colors if assigned_colors is not None else [_PALETTE[i % len(_PALETTE)] for i in range(n)]

        canvas = self.canvas.copy()
        for i in np.argsort(-areas, kind="stable"):
            color = np.asarray(colors[i], dtype=np.float32)
            if rasters is not None:
                self._draw_mask(canvas, rasters[i], color, alpha)
            anchor = None
            if boxes is not None:
                x0, y0, x1, y1 = (boxes[i] * self.scale).round().astype(int)
                cv2.rectangle(canvas, (x0, y0), (x1, y1), _cv_color(color), self._thickness)
                anchor = (x0, y0)
            elif rasters is not None and rasters[i].any():
                ys, xs = np.nonzero(rasters[i])
                anchor = (int(xs.min() * self.scale), int(ys.min() * self.scale))
            if keypoints is not None:
                for x, y, _ in keypoints[i][keypoints[i][:, 2] > _KEYPOINT_THRESHOLD]:
                    center = (int(round(x * self.scale)), int(round(y * self.scale)))
                    cv2.circle(canvas, center, self._thickness + 1, _cv_color(color), -1)
            if labels is not None and anchor is not None:
                self._draw_label(canvas, labels[i], anchor, color)
        self.canvas = canvas
        return self.canvas

    def _to_raster(self, mask: Mask, h: int, w: int) -> np.ndarray:
        if isinstance(mask, dict):
            rle = mask_util.frPyObjects(mask, *mask["size"]) if isinstance(mask["counts"], list) else mask
            return mask_util.decode(rle).astype(bool)
        if isinstance(mask, (list, tuple)):
            polys = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in mask]
            return mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, h, w))).astype(bool)
        return np.asarray(mask, dtype=bool)

    def _draw_mask(self, canvas: np.ndarray, raster: np.ndarray, color: np.ndarray, alpha: float) -> None:
        if self.scale != 1.0:
            size = (canvas.shape[1], canvas.shape[0])
            raster = cv2.resize(raster.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        canvas[raster] = np.rint(canvas[raster] * (1 - alpha) + color * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(raster.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, _cv_color(color * 0.6), self._thickness)

    def _draw_label(self, canvas: np.ndarray, text: str, anchor: Tuple[int, int], color: np.ndarray) -> None:
        font = cv2.FONT_HERSHEY_SIMPLEX
        (tw, th), baseline = cv2.getTextSize(text, font, self._font_scale, 1)
        x = int(np.clip(anchor[0], 0, max(canvas.shape[1] - tw - 2, 0)))
        y = anchor[1] - th - baseline - 2
        if y < 0:  # no room above the box: write inside it
            y = anchor[1]
        cv2.rectangle(canvas, (x, y), (x + tw + 2, y + th + baseline + 2), _cv_color(color * 0.5), -1)
        cv2.putText(canvas, text, (x + 1, y + th + 1), font, self._font_scale, (255, 255, 255), 1, cv2.LINE_AA)


def _cv_color(color: np.ndarray) -> Tuple[int, int, int]:
    """An RGB colour as the int tuple OpenCV drawing takes (the canvas is RGB, so no channel swap)."""
    return tuple(int(round(float(c))) for c in color)
