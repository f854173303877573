"""`ShapeSpec`: what a module knows about a tensor it will receive or produce."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

__all__ = ["ShapeSpec", "select_features"]


@dataclass
class ShapeSpec:
    """
    Static description of a feature map; any field may be unknown (None).

    `stride` is the ratio of the input image size to this feature map's size
    (4 for `res2`/`p2`, 32 for `res5`/`p5`).
    """

    channels: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    stride: Optional[int] = None


def select_features(input_shape: Dict[str, "ShapeSpec"], names: Sequence[str], key: str) -> List["ShapeSpec"]:
    """
    The shapes of the features `names`, in that order. A name the backbone does not produce is an
    error naming the config key `key` that asked for it and the features there are.
    """
    missing = [name for name in names if name not in input_shape]
    if missing:
        raise ValueError(f"{key} {missing} are not among the backbone's outputs {sorted(input_shape)}")
    return [input_shape[name] for name in names]
