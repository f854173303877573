"""The input an exported detector takes, made from an image file as the test-time pipeline would."""

import os

import torch

from detlib.data.detection_utils import build_test_resize, read_image

__all__ = ["load_test_image"]


def load_test_image(cfg, path: str) -> torch.Tensor:
    """The image file at `path` as the test loader hands it to the model: INPUT.FORMAT channel order, resized by
    INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, uint8 (C, H, W)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image {path} does not exist")
    image = read_image(path, format=cfg.INPUT.FORMAT)
    image = build_test_resize(cfg).get_transform(image).apply_image(image)
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.as_tensor(image.transpose(2, 0, 1).copy())
