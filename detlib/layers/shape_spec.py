"""`ShapeSpec`: what a module knows about a tensor it will receive or produce."""

from dataclasses import dataclass
from typing import Optional

__all__ = ["ShapeSpec"]


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
