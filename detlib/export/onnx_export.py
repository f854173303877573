"""ONNX from a torch.export program of a detector, in standard operators that ONNX Runtime runs as is."""

from pathlib import Path
from typing import Sequence, Tuple, Union

import torch
from torch.export import ExportedProgram

from detlib.utils.atomic_write import atomic_path

from .onnx_translations import ONNX_OPSET, custom_translation_table

__all__ = ["export_onnx"]


def export_onnx(
    program: ExportedProgram, example_args: Tuple, path: Union[str, Path], output_names: Sequence[str]
) -> Path:
    """
    Convert `program` (e.g. from `export_program`, with `example_args` its inputs, `(image,)`) to ONNX and write
    it to `path` through a temporary file, so that a failed conversion leaves nothing behind. Inputs are named as
    the program's arguments ("image"); outputs `output_names`. Dynamic sizes (the image's height and width,
    the number of detections) stay dynamic.
    """
    path = Path(path)
    onnx_program = torch.onnx.export(
        program,
        tuple(example_args),
        dynamo=True,
        custom_translation_table=custom_translation_table(),
        opset_version=ONNX_OPSET,
        output_names=list(output_names),
        verbose=False,
    )
    with atomic_path(path) as partial:
        onnx_program.save(partial)
    return path
