#!/usr/bin/env python
"""
Converts any checkpoint detlib can load (detlib or Detectron2 `.pth`/`.pkl`, Caffe2 ImageNet backbones,
torchvision detection weights, a URL) into a `.safetensors` file of its model weights only. Such a
file holds nothing but tensors, so it can be shared and loaded without any risk of running code.

    python tools/convert_weights.py detectron2://ImageNetPretrained/MSRA/R-50.pkl R-50.safetensors
    python tools/convert_weights.py output/model_final.pth model_final.safetensors

A file that references code is refused; pass --allow-unsafe only for a file you trust.
"""

import argparse
import logging
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from detlib.checkpoint import load_checkpoint_file
from detlib.utils.atomic_write import atomic_write

logger = logging.getLogger("detlib.convert_weights")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="a checkpoint file or URL")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument(
        "--allow-unsafe", action="store_true", help="read an input that references code (only files you trust)"
    )
    return parser.parse_args(argv)


def to_tensors(state_dict: Dict[str, Any], source: str) -> Dict[str, torch.Tensor]:
    """Each weight as a contiguous tensor that owns its memory (safetensors refuses shared storage)."""
    tensors = {}
    for name, value in state_dict.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{source}: weight '{name}' is a {type(value).__name__}, not a tensor or array")
        tensors[name] = value.detach().cpu().contiguous().clone()
    return tensors


def convert(source: str, output: str, allow_unsafe: bool = False) -> int:
    """Write the model weights of `source` to `output` (.safetensors); returns how many were written."""
    if not output.endswith(".safetensors"):
        raise ValueError(f"Output {output} must end in .safetensors")
    checkpoint = load_checkpoint_file(source, allow_unsafe=allow_unsafe)
    tensors = to_tensors(checkpoint["model"], source)
    # ImageNet backbones carry ResNet-relative names; the flag tells the loader to place them.
    metadata = {"matching_heuristics": str(bool(checkpoint.get("matching_heuristics", False)))}
    data = safetensors_bytes(tensors, metadata=metadata)
    with atomic_write(output) as f:
        f.write(data)
    return len(tensors)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    count = convert(args.input, args.output, allow_unsafe=args.allow_unsafe)
    logger.info("Wrote %d tensors to %s", count, args.output)


if __name__ == "__main__":
    sys.exit(main())
