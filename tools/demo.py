#!/usr/bin/env python
"""Draws a model's predictions (boxes, masks, class names, scores) on images into PNG files.

    python tools/demo.py --config-file configs/Shapes/mask_rcnn_shapes.yaml \
        --input img1.png img2.jpg --output out/ --opts MODEL.WEIGHTS output/model_final.pth

Small images read better drawn larger: `--scale 4` writes the 128 px shapes images at 512 px.
"""

import argparse
import logging
import os
import sys

import cv2

from detlib.config import get_cfg
from detlib.data import MetadataCatalog
from detlib.data.detection_utils import read_image
from detlib.engine import DefaultPredictor
from detlib.utils.logger import setup_logger
from detlib.visualization.visualizer import Visualizer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files")
    parser.add_argument("--output", required=True, help="directory for the drawn PNGs")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--scale", type=float, default=1.0, help="size of the drawn PNGs relative to the inputs")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config KEY VALUE pairs")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logger = setup_logger(name="detlib")
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()

    predictor = DefaultPredictor(cfg)
    dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused"
    metadata = MetadataCatalog.get(dataset)
    os.makedirs(args.output, exist_ok=True)
    for path in args.input:
        image = read_image(path, format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        drawn = Visualizer(image[:, :, ::-1], metadata, scale=args.scale).draw_instance_predictions(instances)
        out_path = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(out_path, drawn[:, :, ::-1])
        logger.info("%s: %d instances -> %s", path, len(instances), out_path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
