"""Tensor-style indexing for plain Python lists (list fields of `Instances`, `PolygonMasks`)."""

from typing import Any, List

import numpy as np
import torch

__all__ = ["index_list"]


def index_list(values: List[Any], item: Any) -> List[Any]:
    """
    Select from `values` with anything that selects rows of a tensor: an int (giving a one-element
    list), a slice, a bool mask of the same length, or integer indices (list, array or tensor).
    """
    if isinstance(item, (int, np.integer)):
        return [values[item]]
    if isinstance(item, slice):
        return values[item]
    index = torch.as_tensor(item)
    if index.dtype == torch.bool:
        if index.shape != (len(values),):
            raise IndexError(f"Bool mask of shape {tuple(index.shape)} for {len(values)} elements")
        index = index.nonzero().squeeze(1)
    return [values[i] for i in index.reshape(-1).tolist()]
