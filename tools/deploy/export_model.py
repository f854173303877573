#!/usr/bin/env python
"""
Export a detector built from a config, with its MODEL.WEIGHTS, as one program of one image:

    python tools/deploy/export_model.py --config-file CFG --format {pt2,onnx,aoti} --output DIR \\
        --sample-image IMG [KEY VALUE ...]

The program takes a uint8 (C, H, W) tensor in INPUT.FORMAT channel order, already resized as at test time
(H and W dynamic), and returns boxes (N, 4) XYXY, scores (N,), classes (N,) int64 and, for Mask R-CNN,
masks (N, H, W) bool at the input size. It writes DIR/model.pt2 (torch.export.save; load it with
torch.export.load after `import detlib`), DIR/model.onnx (standard ONNX operators; ONNX Runtime runs it
as is) or DIR/model_aoti.pt2 (an AOTInductor package, compiled for the device of MODEL.DEVICE).
The sample image is resized like the test loader does; only the tracing uses it. See docs/deployment.md.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from detlib.checkpoint import DetectionCheckpointer
from detlib.config import get_cfg
from detlib.export import ExportableDetector, export_program
from detlib.export.inputs import load_test_image
from detlib.modeling import build_model
from detlib.utils.atomic_write import atomic_path

logger = logging.getLogger("detlib.export")
FORMATS = ("pt2", "onnx", "aoti")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's config (YAML)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, help="directory to write the exported model to")
    parser.add_argument("--sample-image", required=True, help="an image file to trace the model with")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config KEY VALUE pairs")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    if not os.path.isfile(args.sample_image):
        raise FileNotFoundError(f"--sample-image {args.sample_image} does not exist")

    model = build_model(cfg)
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: pass the weights to export, e.g. MODEL.WEIGHTS model_final.pth")
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    image = load_test_image(cfg, args.sample_image).to(model.device)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    logger.info(f"Exporting with a {tuple(image.shape[1:])} sample image ...")
    program = export_program(model, image)
    if args.format == "pt2":
        path = output / "model.pt2"
        with atomic_path(path) as partial:
            torch.export.save(program, partial)
    elif args.format == "onnx":
        from detlib.export.onnx_export import export_onnx

        path = export_onnx(program, (image,), output / "model.onnx", ExportableDetector(model).output_names)
    else:
        path = output / "model_aoti.pt2"
        with atomic_path(path, keep_extension=True) as partial:  # AOTInductor insists on a .pt2 name
            torch._inductor.aoti_compile_and_package(program, package_path=partial)
    logger.info(f"Wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(main() and 0)
