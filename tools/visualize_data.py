#!/usr/bin/env python
"""
Draws a training dataset's ground truth into PNG files, either as loaded from disk
(`--source annotation`) or as the model sees it after the training transforms (`--source dataloader`).

    python tools/visualize_data.py --config-file configs/Shapes/mask_rcnn_shapes.yaml \
        --source dataloader --output vis/ --num 16
"""

import argparse
import logging
import os
import sys
from itertools import islice

import cv2

from detlib.config import get_cfg
from detlib.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detlib.data.detection_utils import read_image
from detlib.visualization.visualizer import Visualizer

logger = logging.getLogger("detlib.visualize_data")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--source", choices=["annotation", "dataloader"], required=True)
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the PNG files")
    parser.add_argument("--num", type=int, default=20, help="number of images to draw")
    parser.add_argument("--scale", type=float, default=None, help="drawing scale (default: short side >= 512 px)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser.parse_args(argv)


def _scale_for(image, scale):
    return scale if scale is not None else max(1.0, 512 / min(image.shape[:2]))


def _save(path: str, rgb) -> None:
    if not cv2.imwrite(path, rgb[:, :, ::-1]):
        raise OSError(f"Could not write {path}.")
    logger.info("Wrote %s", path)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    os.makedirs(args.output, exist_ok=True)
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])

    if args.source == "dataloader":
        loader = build_detection_train_loader(cfg)
        samples = (d for batch in loader for d in batch)
        for i, d in enumerate(islice(samples, args.num)):
            image = d["image"].permute(1, 2, 0).numpy()
            rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
            vis = Visualizer(rgb, metadata, scale=_scale_for(rgb, args.scale))
            # The sampler may return an image twice, with different augmentations.
            _save(os.path.join(args.output, f"{i:04d}_{d['image_id']}.png"), vis.draw_instances_gt(d["instances"]))
    else:
        records = [r for name in cfg.DATASETS.TRAIN for r in DatasetCatalog.get(name)]
        for record in records[: args.num]:
            rgb = read_image(record["file_name"], format="RGB")
            vis = Visualizer(rgb, metadata, scale=_scale_for(rgb, args.scale))
            _save(os.path.join(args.output, f"{record['image_id']}.png"), vis.draw_dataset_dict(record))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    main(sys.argv[1:])
