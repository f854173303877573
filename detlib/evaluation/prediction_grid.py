"""A picture of what a model predicts on a dataset: its detections drawn on a grid of images."""

import math
from typing import List

import cv2
import numpy as np
import torch
from torch import nn

from detlib.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detlib.data.detection_utils import read_image
from detlib.visualization.visualizer import Visualizer

from .evaluator import inference_context


def _tile(panels: List[np.ndarray], cell: int, cols: int) -> np.ndarray:
    """Fits each H x W x 3 panel into a `cell` x `cell` square (aspect kept) and tiles them."""
    rows = math.ceil(len(panels) / cols)
    grid = np.full((rows * cell, cols * cell, 3), 255, dtype=np.uint8)
    for k, panel in enumerate(panels):
        scale = cell / max(panel.shape[:2])
        h, w = int(panel.shape[0] * scale), int(panel.shape[1] * scale)
        r, c = divmod(k, cols)
        grid[r * cell : r * cell + h, c * cell : c * cell + w] = cv2.resize(panel, (w, h), interpolation=cv2.INTER_AREA)
    return grid


def write_prediction_grid(
    model: nn.Module,
    cfg,
    dataset_name: str,
    path: str,
    num_images: int = 8,
    score_threshold: float = 0.5,
    cell_size: int = 320,
) -> str:
    """
    Runs `model` on the first `num_images` records of `dataset_name` (mapped like the test loader
    maps them) and writes their detections above `score_threshold` as one PNG grid to `path`.
    """
    records = DatasetCatalog.get(dataset_name)[:num_images]
    if not records:
        raise ValueError(f"Dataset '{dataset_name}' is empty: no predictions to draw.")
    mapper = DatasetMapper(cfg, is_train=False)
    metadata = MetadataCatalog.get(dataset_name)
    panels = []
    with inference_context(model), torch.no_grad():
        for record in records:
            instances = model([mapper(record)])[0]["instances"].to("cpu")
            instances = instances[instances.scores >= score_threshold]
            image = read_image(record["file_name"], format="RGB")
            panels.append(Visualizer(image, metadata).draw_instance_predictions(instances))
    grid = _tile(panels, cell_size, cols=min(4, len(panels)))
    if not cv2.imwrite(path, np.ascontiguousarray(grid[:, :, ::-1])):
        raise OSError(f"Could not write the prediction grid to {path}.")
    return path
