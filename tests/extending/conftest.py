"""A tiny Mask R-CNN on the shapes config and a fixed two-image batch, shared by the tests of docs/extend.md."""

import sys
from pathlib import Path

import pytest
import torch

from detlib.config import get_cfg
from detlib.structures import BitMasks, Boxes, Instances
from detlib.utils.events import EventStorage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "projects" / "MaskScoring"))

# The shapes Mask R-CNN made small enough that building it and one training step take well under a second.
TINY_OVERRIDES = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.FPN.OUT_CHANNELS",
    "16",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
    "8",
]


SHAPES_CONFIG = REPO / "configs" / "Shapes" / "mask_rcnn_shapes.yaml"
MASK_SCORING_CONFIG = REPO / "projects" / "MaskScoring" / "configs" / "mask_scoring_R18_FPN_shapes.yaml"


def make_cfg(*overrides, config_file=SHAPES_CONFIG):
    cfg = get_cfg()
    cfg.merge_from_file(str(config_file))
    # The tests compare weighted losses with unweighted ones; the shapes config weights loss_mask.
    cfg.MODEL.LOSS_WEIGHTS.clear()
    cfg.merge_from_list(TINY_OVERRIDES + [str(x) for x in overrides])
    return cfg


@pytest.fixture
def tiny_cfg():
    """`tiny_cfg("KEY", value, ...)`: the tiny config with command-line style overrides."""
    return make_cfg


@pytest.fixture
def tiny_overrides():
    """The overrides that make the shapes config tiny, as command-line arguments."""
    return list(TINY_OVERRIDES)


@pytest.fixture
def tiny_mask_scoring_cfg():
    """`tiny_cfg` on the Mask Scoring project's config."""
    return lambda *overrides: make_cfg(*overrides, config_file=MASK_SCORING_CONFIG)


def _image(height, width, boxes, classes, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 255, (3, height, width), generator=g, dtype=torch.uint8)
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = True  # a little inside the box, like a real object
    instances = Instances(
        (height, width),
        gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
        gt_classes=torch.tensor(classes),
        gt_masks=BitMasks(masks),
    )
    return {"image": image, "instances": instances}


@pytest.fixture
def batch():
    return [
        _image(64, 64, [[4, 6, 40, 30], [30, 28, 60, 62]], [0, 2], seed=0),
        _image(64, 64, [[10, 10, 50, 44]], [3], seed=1),
    ]


def training_losses(model, batch, seed=0):
    """The loss dict of one training forward, with the samplers' randomness fixed by `seed`."""
    model.train()
    torch.manual_seed(seed)
    with EventStorage(0) as storage:
        losses = model(batch)
    return losses, storage


@pytest.fixture
def run_losses():
    return training_losses
