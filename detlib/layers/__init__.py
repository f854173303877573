from .batch_norm import BatchNorm2d, FrozenBatchNorm2d, NaiveSyncBatchNorm, SyncBatchNorm2d, get_norm
from .blocks import CNNBlockBase
from .deform_conv import DeformConv, ModulatedDeformConv, deform_conv2d
from .layer_norm import LayerNorm
from .losses import (
    BOX_LOSS_REGISTRY,
    CLS_LOSS_REGISTRY,
    BoxLoss,
    BoxLossKind,
    ClassificationLoss,
    build_box_loss,
    build_classification_loss,
    ciou_loss,
    diou_loss,
    giou_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from .nms import batched_nms, nms
from .roi_align import ROIAlign, roi_align
from .shape_spec import ShapeSpec, select_features
from .transformer import DropPath, Mlp
from .wrappers import (
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
