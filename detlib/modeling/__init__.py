from .anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator, build_anchor_generator
from .box_regression import Box2BoxTransform, dense_box_regression_loss
from .matcher import Matcher
from .sampling import subsample_labels
from .backbone import (
    BACKBONE_REGISTRY,
    FPN,
    Backbone,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    ResNet,
    build_backbone,
    build_resnet_backbone,
    make_stage,
)
from .proposal_generator import (
    PROPOSAL_GENERATOR_REGISTRY,
    RPN,
    RPN_HEAD_REGISTRY,
    StandardRPNHead,
    build_proposal_generator,
    build_rpn_head,
)
