from .anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator, build_anchor_generator
from .backbone import (
    BACKBONE_REGISTRY,
    FPN,
    Backbone,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    MViT,
    RegNet,
    ResNet,
    SimpleFeaturePyramid,
    SwinTransformer,
    ViT,
    build_backbone,
    build_resnet_backbone,
    get_vit_lr_decay_rate,
    make_stage,
)
from .box_regression import Box2BoxTransform, Box2BoxTransformLinear, dense_box_regression_loss
from .dense_heads import DENSE_HEAD_REGISTRY, DenseHead, FCOSHead, RetinaNetHead, build_dense_head
from .matcher import Matcher
from .meta_arch import (
    FCOS,
    META_ARCH_REGISTRY,
    DenseDetector,
    GeneralizedRCNN,
    MetaArchitecture,
    PanopticFPN,
    ProposalNetwork,
    RetinaNet,
    SemanticSegmentor,
    build_model,
)
from .panoptic import combine_semantic_and_instance_outputs
from .poolers import ROIPooler
from .postprocessing import detector_postprocess, sem_seg_postprocess
from .proposal_generator import (
    PROPOSAL_GENERATOR_REGISTRY,
    RPN,
    RPN_HEAD_REGISTRY,
    StandardRPNHead,
    build_proposal_generator,
    build_rpn_head,
)
from .roi_heads import (
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_KEYPOINT_HEAD_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    KRCNNConvDeconvUpsampleHead,
    MaskRCNNConvUpsampleHead,
    ROIHeads,
    StandardROIHeads,
    build_box_head,
    build_keypoint_head,
    build_mask_head,
    build_roi_heads,
)
from .sampling import subsample_labels
from .sem_seg_heads import SEM_SEG_HEADS_REGISTRY, SemSegFPNHead, build_sem_seg_head
from .torchvision_anchors import TorchvisionAnchorGenerator
