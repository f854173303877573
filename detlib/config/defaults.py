"""
detlib's default configuration.

Keys and default values follow Detectron2 (v0.6 schema, VERSION 2) so that a Detectron2 YAML file,
including a full `cfg.dump()`, loads unchanged. Keys for features detlib does not implement
(RetinaNet, keypoints, panoptic segmentation, cascade heads, ...) are kept for that reason only.
Keys added by detlib are marked "detlib:".

Conventions: sizes are in pixels of the resized input image unless stated; lists of per-level
values are ordered from the finest feature map to the coarsest.
"""

from .config import CfgNode as CN

_C = CN()

# Config schema version; Detectron2's version-1 files are rejected.
_C.VERSION = 2

# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.LOAD_PROPOSALS = False  # read precomputed proposals from DATASETS.PROPOSAL_FILES_* instead of an RPN
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINT_ON = False
_C.MODEL.DEVICE = "cuda"
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # name in META_ARCH_REGISTRY
# Checkpoint to initialize from: a local path, or a Detectron2 / torchvision URL-like name.
_C.MODEL.WEIGHTS = ""
# torch.compile the backbone, RPN head and box head (opt-in: the first batches of each input size are slow).
_C.MODEL.COMPILE = False
# Memory layout of the model's 4-D weights, which convolutions propagate to their outputs: "channels_last",
# "contiguous" (NCHW), or "auto": channels_last on the CPU, where oneDNN convolutions run faster in it
# (docs/benchmarks.md), contiguous elsewhere (not measured on CUDA yet). Results are the same up to rounding.
_C.MODEL.MEMORY_FORMAT = "auto"
# Per-channel mean and std subtracted from / divided into the input image, in INPUT.FORMAT channel
# order. The defaults match the Caffe2-converted ImageNet ResNets (BGR, 0..255, std 1).
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
# detlib: per-loss multipliers applied by the heads, e.g. {"loss_mask": 2.0}; a missing name means 1.0.
_C.MODEL.LOSS_WEIGHTS = CN(new_allowed=True)

# Backbone -----------------------------------------------------------------------------------------
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"  # name in BACKBONE_REGISTRY
# Stages 1..FREEZE_AT are frozen (1 = the stem, 2 = stem + res2, ...); 0 trains everything.
_C.MODEL.BACKBONE.FREEZE_AT = 2

# Feature pyramid network --------------------------------------------------------------------------
_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = []  # backbone outputs the pyramid is built on, e.g. ["res2", ..., "res5"]
_C.MODEL.FPN.OUT_CHANNELS = 256
_C.MODEL.FPN.NORM = ""  # "" (none), "GN", "BN", "SyncBN", ...
_C.MODEL.FPN.FUSE_TYPE = "sum"  # merge of the top-down and lateral paths: "sum" or "avg"

# Proposal generator -------------------------------------------------------------------------------
_C.MODEL.PROPOSAL_GENERATOR = CN()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"  # name in PROPOSAL_GENERATOR_REGISTRY
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0  # proposals with a side shorter than this are dropped

# Anchors ------------------------------------------------------------------------------------------
_C.MODEL.ANCHOR_GENERATOR = CN()
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"  # name in ANCHOR_GENERATOR_REGISTRY
# Anchor side lengths (sqrt of the area), one list per feature level, or a single list shared by all.
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
# Height / width ratios, one list per level or a single shared list.
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
# Angles in degrees, only for rotated anchors.
_C.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]
# Anchor centers sit at (i + OFFSET) * stride; 0.0 or 0.5.
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

# Region proposal network --------------------------------------------------------------------------
_C.MODEL.RPN = CN()
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"  # name in RPN_HEAD_REGISTRY
_C.MODEL.RPN.IN_FEATURES = ["res4"]
# Anchors reaching more than this many pixels outside the image are ignored in training; < 0 keeps all.
_C.MODEL.RPN.BOUNDARY_THRESH = -1
# Anchor labelling by IoU with the best ground truth: below 0.3 negative (0), between ignored (-1),
# from 0.7 positive (1).
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
# Anchors sampled per image for the losses, and the largest positive share of them.
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
# Box regression loss: "smooth_l1", "giou", "diou", "ciou" (or a name registered by the user).
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
# detlib: parameters of the box regression loss by name (beta defaults to SMOOTH_L1_BETA).
_C.MODEL.RPN.BBOX_REG_LOSS_PARAMS = CN(new_allowed=True)
# Weights (wx, wy, ww, wh) of the anchor-to-box delta encoding.
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0  # 0 makes smooth-L1 plain L1
_C.MODEL.RPN.LOSS_WEIGHT = 1.0  # multiplies both RPN losses
# detlib: objectness loss, a name in CLS_LOSS_REGISTRY ("cross_entropy", "focal" or a user's), and
# its parameters by name (e.g. {"gamma": 1.5}); unset parameters keep the loss's defaults.
_C.MODEL.RPN.CLS_LOSS_TYPE = "cross_entropy"
_C.MODEL.RPN.CLS_LOSS_PARAMS = CN(new_allowed=True)
# Boxes kept per feature level before NMS, and per image after NMS (over all levels).
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
# Channels of the head's hidden convs; -1 means "same as the input features".
_C.MODEL.RPN.CONV_DIMS = [-1]

# ROI heads ----------------------------------------------------------------------------------------
_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"  # name in ROI_HEADS_REGISTRY
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80  # foreground classes, background excluded
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
# Proposal labelling by IoU with the best ground truth: below 0.5 background, else foreground.
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
# Proposals sampled per image for the losses, and the largest foreground share of them.
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
# Inference: detections below this score are dropped before per-class NMS at this IoU.
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
# Add the ground-truth boxes to the proposals in training.
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True

# Box head -----------------------------------------------------------------------------------------
_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NAME = ""  # name in ROI_BOX_HEAD_REGISTRY
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
# detlib: parameters of the box regression loss by name (beta defaults to SMOOTH_L1_BETA).
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_PARAMS = CN(new_allowed=True)
# Weights (wx, wy, ww, wh) of the proposal-to-box delta encoding.
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
# Pooled feature size and ROIAlign sampling points per bin (0 = adaptive).
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
# "ROIAlignV2" (half-pixel aligned), "ROIAlign", "ROIPool", ...
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 0
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
_C.MODEL.ROI_BOX_HEAD.NORM = ""  # norm of the convs
# One box regressor shared by all classes instead of one per class.
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
# Cascade-style: feed predicted boxes (not proposals) to later stages.
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False
# Federated loss (LVIS): sigmoid classification over the image's classes plus sampled others.
_C.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False
_C.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = False
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = 50
# detlib: per-class weights of the classification loss, NUM_CLASSES + 1 values (background last);
# empty means unweighted.
_C.MODEL.ROI_BOX_HEAD.CLS_LOSS_WEIGHTS = []
# detlib: classification loss of the box predictor, a name in CLS_LOSS_REGISTRY, and its parameters.
_C.MODEL.ROI_BOX_HEAD.CLS_LOSS_TYPE = "cross_entropy"
_C.MODEL.ROI_BOX_HEAD.CLS_LOSS_PARAMS = CN(new_allowed=True)

# Cascade box heads (CascadeROIHeads): one stage per entry of both ----------------------------------
_C.MODEL.ROI_BOX_CASCADE_HEAD = CN()
_C.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = (
    (10.0, 10.0, 5.0, 5.0),
    (20.0, 20.0, 10.0, 10.0),
    (30.0, 30.0, 15.0, 15.0),
)
_C.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5, 0.6, 0.7)

# Mask head ----------------------------------------------------------------------------------------
_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"  # name in ROI_MASK_HEAD_REGISTRY
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 0
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
_C.MODEL.ROI_MASK_HEAD.NORM = ""
# One mask per box instead of one per class.
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False
_C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"
# In training, at most this many foreground proposals per image (drawn at random) train the mask head; 0 = all
# of them, as in Detectron2. Proposals of one object overlap heavily, so fewer cost less and teach nearly as much.
_C.MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE = 0

# Keypoint head (not implemented by detlib) --------------------------------------------------------
_C.MODEL.ROI_KEYPOINT_HEAD = CN()
_C.MODEL.ROI_KEYPOINT_HEAD.NAME = "KRCNNConvDeconvUpsampleHead"
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = tuple(512 for _ in range(8))
_C.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 17
# Training images with fewer visible keypoints are skipped.
_C.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 1
_C.MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS = True
_C.MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT = 1.0
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE = "ROIAlignV2"

# Semantic segmentation head (SemanticSegmentor, PanopticFPN) -----------------------------------------
_C.MODEL.SEM_SEG_HEAD = CN()
_C.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
_C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
_C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255  # label value excluded from the loss
_C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 54
_C.MODEL.SEM_SEG_HEAD.CONVS_DIM = 128
_C.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4  # output stride of the predictions
_C.MODEL.SEM_SEG_HEAD.NORM = "GN"
_C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0

# Panoptic FPN -------------------------------------------------------------------------------------------
_C.MODEL.PANOPTIC_FPN = CN()
_C.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 1.0
# Merging instance and semantic predictions into one panoptic output at inference.
_C.MODEL.PANOPTIC_FPN.COMBINE = CN()
_C.MODEL.PANOPTIC_FPN.COMBINE.ENABLED = True
_C.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 0.5
_C.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 4096
_C.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.5

# RetinaNet ------------------------------------------------------------------------------------------
# One-stage detectors (DenseDetector and its subclasses): the head from DENSE_HEAD_REGISTRY; empty for the
# meta-architecture's own (RetinaNet: RetinaNetHead).
_C.MODEL.DENSE_HEAD = CN()
_C.MODEL.DENSE_HEAD.NAME = ""

_C.MODEL.RETINANET = CN()
_C.MODEL.RETINANET.NUM_CLASSES = 80
_C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
_C.MODEL.RETINANET.NUM_CONVS = 4
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]
_C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]
# Initial foreground probability of the classifier (sets its bias).
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000  # per level
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
_C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1
# Box regression loss: "smooth_l1", "l1", "giou", "diou", "ciou" (or a name registered by the user).
_C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"
# detlib: parameters of the box regression loss by name (beta defaults to SMOOTH_L1_LOSS_BETA).
_C.MODEL.RETINANET.BBOX_REG_LOSS_PARAMS = CN(new_allowed=True)
# detlib: classification loss, a name in CLS_LOSS_REGISTRY used in its binary form (one sigmoid per
# anchor and class), and its parameters by name; alpha and gamma default to FOCAL_LOSS_ALPHA / _GAMMA.
_C.MODEL.RETINANET.CLS_LOSS_TYPE = "focal"
_C.MODEL.RETINANET.CLS_LOSS_PARAMS = CN(new_allowed=True)
_C.MODEL.RETINANET.NORM = ""

# FCOS (meta-architecture "FCOS", head "FCOSHead"): keys named after Detectron2's FCOS arguments.
_C.MODEL.FCOS = CN()
_C.MODEL.FCOS.NUM_CLASSES = 80
_C.MODEL.FCOS.HEAD_IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
_C.MODEL.FCOS.CONV_DIMS = [256, 256, 256, 256]
_C.MODEL.FCOS.NORM = "GN"
_C.MODEL.FCOS.PRIOR_PROB = 0.01
# A point is positive only within this many strides of its box's center.
_C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
_C.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
_C.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
_C.MODEL.FCOS.CLS_LOSS_TYPE = "focal"
_C.MODEL.FCOS.CLS_LOSS_PARAMS = CN(new_allowed=True)
_C.MODEL.FCOS.BBOX_REG_LOSS_TYPE = "giou"
_C.MODEL.FCOS.BBOX_REG_LOSS_PARAMS = CN(new_allowed=True)
_C.MODEL.FCOS.SMOOTH_L1_BETA = 0.0  # used only with a box loss that has a beta
# Inference ranks sqrt(class probability * centerness).
_C.MODEL.FCOS.TEST_SCORE_THRESH = 0.2
_C.MODEL.FCOS.TEST_TOPK_CANDIDATES = 1000  # per level
_C.MODEL.FCOS.TEST_NMS_THRESH = 0.6

# ResNet -------------------------------------------------------------------------------------------
_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50  # 18, 34 (BasicBlock) or 50, 101, 152 (Bottleneck)
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]  # any of "stem", "res2" .. "res5"
# ResNeXt: groups of the 3x3 conv and channels per group (1 and 64 give a plain ResNet).
_C.MODEL.RESNETS.NUM_GROUPS = 1
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
_C.MODEL.RESNETS.NORM = "FrozenBN"  # "FrozenBN", "BN", "SyncBN", "GN"
# Put the stride-2 of a bottleneck in its first 1x1 conv (MSRA / Caffe2 weights) rather than the 3x3.
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
# Dilation of res5 (1 or 2); 2 keeps res5 at stride 16.
_C.MODEL.RESNETS.RES5_DILATION = 1
# Output channels of res2 (doubling each stage after) and of the stem; use 64 / 64 for R18 and R34.
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Deformable convolutions (not implemented by detlib).
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
_C.MODEL.RESNETS.DEFORM_MODULATED = False
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1

# ViT (ViTDet's plain backbone), for MODEL.BACKBONE.NAME "build_vit_sfp_backbone" ------------------------
# Keyword arguments of `ViT` (see its docstring); the defaults are ViTDet's ViT-B. Its norm is LayerNorm with
# eps 1e-6, as in ViTDet's configs.
_C.MODEL.VIT = CN()
_C.MODEL.VIT.IMG_SIZE = 1024  # input size the relative position tables of global blocks are sized for
_C.MODEL.VIT.PATCH_SIZE = 16
_C.MODEL.VIT.EMBED_DIM = 768
_C.MODEL.VIT.DEPTH = 12
_C.MODEL.VIT.NUM_HEADS = 12
_C.MODEL.VIT.MLP_RATIO = 4.0
_C.MODEL.VIT.QKV_BIAS = True
_C.MODEL.VIT.DROP_PATH_RATE = 0.1
_C.MODEL.VIT.USE_ABS_POS = True
_C.MODEL.VIT.USE_REL_POS = True
_C.MODEL.VIT.WINDOW_SIZE = 14
# Blocks attending within windows; the others (2, 5, 8, 11 for ViT-B) attend globally.
_C.MODEL.VIT.WINDOW_BLOCK_INDEXES = [0, 1, 3, 4, 6, 7, 9, 10]
_C.MODEL.VIT.RESIDUAL_BLOCK_INDEXES = []
_C.MODEL.VIT.USE_ACT_CHECKPOINT = False
_C.MODEL.VIT.PRETRAIN_IMG_SIZE = 224  # sizes the absolute position embeddings (pretrained checkpoints)
_C.MODEL.VIT.PRETRAIN_USE_CLS_TOKEN = True

# Simple feature pyramid (ViTDet) over the last map of a plain backbone ("build_vit_sfp_backbone",
# "build_timm_sfp_backbone"); its width is MODEL.FPN.OUT_CHANNELS, and a max-pooled p6 follows the last level.
_C.MODEL.SFP = CN()
_C.MODEL.SFP.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]  # one level each: stride = input stride / factor
_C.MODEL.SFP.NORM = "LN"
_C.MODEL.SFP.SQUARE_PAD = 0  # > 0: pad inputs to this square size (ViTDet: 1024)

# timm backbones ("build_timm_fpn_backbone", "build_timm_sfp_backbone"; needs `pip install detlib[timm]`) -----
# The model's `features_only` outputs are named res<k> for stride 2**k.
_C.MODEL.TIMM = CN()
_C.MODEL.TIMM.NAME = "resnet50"  # any name timm.create_model knows
_C.MODEL.TIMM.OUT_INDICES = [1, 2, 3, 4]  # feature levels of timm's feature_info to output
# Load timm's pretrained weights: from PRETRAINED_FILE when set, else from the Hugging Face / timm cache
# (set HF_HUB_OFFLINE=1 to forbid downloads).
_C.MODEL.TIMM.PRETRAINED = False
_C.MODEL.TIMM.PRETRAINED_FILE = ""
# Further keyword arguments of timm.create_model, e.g. {img_size: 512} or {dynamic_img_size: True} for a ViT.
_C.MODEL.TIMM.KWARGS = CN(new_allowed=True)

# ---------------------------------------------------------------------------------------------------
# Input pipeline
# ---------------------------------------------------------------------------------------------------
_C.INPUT = CN()
# Training resize: shortest edge drawn from MIN_SIZE_TRAIN ("choice": one of the values; "range": a
# uniform integer between the two values), longest edge capped at MAX_SIZE_TRAIN. 0 disables resizing.
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# "horizontal", "vertical" or "none".
_C.INPUT.RANDOM_FLIP = "horizontal"
# Random crop before resizing. TYPE "relative" / "relative_range" take SIZE as fractions of the image,
# "absolute" / "absolute_range" as pixels.
_C.INPUT.CROP = CN({"ENABLED": False})
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = [0.9, 0.9]
# Channel order and range the model sees: "BGR", "RGB", "L", ...
_C.INPUT.FORMAT = "BGR"
# How instance masks are kept in training: "polygon" or "bitmask".
_C.INPUT.MASK_FORMAT = "polygon"

# ---------------------------------------------------------------------------------------------------
# Datasets (names registered in DatasetCatalog)
# ---------------------------------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.TEST = ()
# Held-out datasets whose training losses are recorded every TEST.VAL_LOSS_PERIOD iterations.
_C.DATASETS.VAL = ()
# Precomputed proposals, one file per dataset above (with MODEL.LOAD_PROPOSALS), and how many of
# them to keep per image.
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
_C.DATASETS.PROPOSAL_FILES_TEST = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

# ---------------------------------------------------------------------------------------------------
# Data loader
# ---------------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4  # worker processes per GPU
# Batch images of similar aspect ratio (both wider than tall, or both taller) to reduce padding.
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"  # or "RepeatFactorTrainingSampler"
# RepeatFactorTrainingSampler: images with a class rarer than this frequency are repeated;
# REPEAT_SQRT uses sqrt(threshold / frequency) as the repeat factor.
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
_C.DATALOADER.REPEAT_SQRT = True
# detlib: one weight per DATASETS.TRAIN entry; each training image comes from dataset i with probability
# weight_i / sum(weights). Empty: the datasets are concatenated (each sampled in proportion to its size).
_C.DATALOADER.SAMPLING_RATIOS = ()
# Drop training images that have no annotation left after filtering.
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
# detlib: log and count samples that fail to load or map, and skip them, instead of failing.
_C.DATALOADER.SKIP_BAD_SAMPLES = False

# ---------------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# "SGD" (with MOMENTUM / NESTEROV) or "AdamW".
_C.SOLVER.OPTIMIZER = "SGD"
# "WarmupMultiStepLR", "WarmupCosineLR" or "WarmupStepWithFixedGammaLR".
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
_C.SOLVER.BASE_LR_END = 0.0  # final learning rate of the cosine schedule
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0  # weight decay of normalization-layer parameters
# Multi-step schedule: the learning rate is multiplied by GAMMA at each iteration in STEPS.
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
# WarmupStepWithFixedGammaLR: number of evenly spaced decays.
_C.SOLVER.NUM_DECAYS = 3
# Warmup: the learning rate ramps from BASE_LR * WARMUP_FACTOR to BASE_LR over WARMUP_ITERS
# ("linear" or "constant").
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
# Stretch the schedule so that it does not depend on the warmup length.
_C.SOLVER.RESCALE_INTERVAL = False
_C.SOLVER.CHECKPOINT_PERIOD = 5000  # iterations between checkpoints
# Images per batch summed over all workers.
_C.SOLVER.IMS_PER_BATCH = 16
# If > 0, IMS_PER_BATCH, BASE_LR, MAX_ITER, STEPS, ... were tuned for this many workers and are
# rescaled linearly to the actual world size.
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
# Bias parameters: learning-rate multiplier, and weight decay (None = WEIGHT_DECAY).
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None
# Gradient clipping: "value" clips each element to +-CLIP_VALUE, "norm" rescales each parameter's
# gradient to norm CLIP_VALUE (in NORM_TYPE norm).
_C.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
# Automatic mixed precision training.
_C.SOLVER.AMP = CN({"ENABLED": False})
# "float16" (with a gradient scaler) or "bfloat16".
_C.SOLVER.AMP.PRECISION = "float16"

# ---------------------------------------------------------------------------------------------------
# Test / evaluation
# ---------------------------------------------------------------------------------------------------
_C.TEST = CN()
# Sanity checks after evaluation: [["bbox", "AP", 38.5, 0.2], ...] = (task, metric, value, tolerance).
_C.TEST.EXPECTED_RESULTS = []
_C.TEST.EVAL_PERIOD = 0  # iterations between evaluations during training; 0 = only at the end
# Iterations between validation losses (the model's losses on DATASETS.VAL, as val/<loss>); 0 = off.
_C.TEST.VAL_LOSS_PERIOD = 0
# Keypoint OKS sigmas for COCO keypoint evaluation; empty = COCO's.
_C.TEST.KEYPOINT_OKS_SIGMAS = []
_C.TEST.DETECTIONS_PER_IMAGE = 100
# Opt-in low-precision inference: the backbone, RPN head and box head run under autocast (bfloat16 on a CPU
# with AVX-512 BF16/AMX, float16 on CUDA); boxes, scores and masks are computed in float32 after them.
# Faster, with a small accuracy cost (docs/benchmarks.md).
_C.TEST.AMP = CN({"ENABLED": False})
# Test-time augmentation (not implemented by detlib).
_C.TEST.AUG = CN({"ENABLED": False})
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True
# Recompute BatchNorm statistics on training data before evaluation.
_C.TEST.PRECISE_BN = CN({"ENABLED": False})
_C.TEST.PRECISE_BN.NUM_ITER = 200

# ---------------------------------------------------------------------------------------------------
# Miscellaneous
# ---------------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"  # checkpoints, logs and metrics go here
# Random seed; negative picks a fresh one per run (then runs are not reproducible).
_C.SEED = -1
_C.CUDNN_BENCHMARK = False
# torch.backends float32 matmul precision: "" (leave as is), "highest", "high" or "medium".
_C.FLOAT32_PRECISION = ""
# Iterations between visualizations of training inputs and proposals; 0 disables them.
_C.VIS_PERIOD = 0

# A free slot for quick experiments, kept for Detectron2 compatibility.
_C.GLOBAL = CN()
_C.GLOBAL.HACK = 1.0
