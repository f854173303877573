from .batch_norm import FrozenBatchNorm2d, get_norm
from .blocks import CNNBlockBase
from .shape_spec import ShapeSpec
from .wrappers import (
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Linear,
    cat,
    cross_entropy,
    interpolate,
    move_device_like,
    nonzero_tuple,
    shapes_to_tensor,
)
