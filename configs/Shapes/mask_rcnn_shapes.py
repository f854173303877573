# The Python-config twin of mask_rcnn_shapes.yaml: the same small Mask R-CNN (ResNet-18 + FPN with
# BatchNorm, trained from scratch) on the built-in synthetic shapes dataset, built from Detectron2's
# common model and data configs with the values that yaml file explains. Run it with
#   OMP_NUM_THREADS=1 python tools/lazyconfig_train_net.py --config-file configs/Shapes/mask_rcnn_shapes.py
from fvcore.common.param_scheduler import CosineParamScheduler

import detlib.data.transforms as T
from detlib.config import LazyCall as L
from detlib.layers import ShapeSpec
from detlib.solver import WarmupParamScheduler

from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train

# Model: ResNet-18 with trainable BatchNorm, a 64-channel FPN, heads sized for <= 4 objects an
# image. Helper names start with "_" so that they do not become entries of the config.
_resnet = model.backbone.bottom_up
_resnet.stem.norm = "BN"
_resnet.stages.depth = 18
_resnet.stages.norm = "BN"
del _resnet.stages.stride_in_1x1  # BasicBlock (depth < 50) has no 1x1 conv to put the stride on
_resnet.freeze_at = 0
model.backbone.out_channels = 64
model.backbone.norm = "BN"
model.pixel_std = [57.375, 57.120, 58.395]

_rpn = model.proposal_generator
_rpn.head.in_channels = 64
_rpn.anchor_generator.sizes = [[12], [24], [48], [96], [192]]
_rpn.pre_nms_topk = (1000, 500)
_rpn.post_nms_topk = (128, 50)
_rpn.batch_size_per_image = 128

_heads = model.roi_heads
_heads.num_classes = 4
_heads.batch_size_per_image = 32
_heads.positive_fraction = 0.5
_heads.mask_train_rois_per_image = 12
_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
_heads.box_head.fc_dims = [256, 256]
_heads.box_predictor.input_shape = ShapeSpec(channels=256)
_heads.box_predictor.test_topk_per_image = 20
_heads.mask_head.input_shape = ShapeSpec(channels=64, height=14, width=14)
_heads.mask_head.conv_dims = [64, 64, 64]  # two convs, then the deconv
_heads.mask_head.conv_norm = "BN"
_heads.mask_head.loss_weight = 2.0  # masks train slower than boxes

# Data: 96 px images (scored at their original 128 px), loaded in the training process.
dataloader.train.dataset.names = "shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(96,), max_size=96, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "shapes_val"
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=96, max_size=96)]
dataloader.test.num_workers = 0
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"

# Schedule: SGD at lr 0.04 (batch 8), 50 warmup iterations, then a cosine decay to 0.
optimizer.lr = 0.04
train.max_iter = 800
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=50 / train.max_iter,
    warmup_factor=0.001,
)

train.output_dir = "./output/shapes_lazy"
train.device = "cpu"
train.seed = 0
train.amp.enabled = True  # bfloat16 on a CPU with native support, else float32
train.checkpointer.period = 400
train.eval_period = 400
# detlib's optional training recipes (off here): an EMA of the weights for evaluation, gradient clipping.
train.model_ema = dict(enabled=False, decay=0.999)
train.clip_gradients = dict(enabled=False, clip_type="norm", clip_value=1.0, norm_type=2.0)
