"""Every Detectron2 model-zoo YAML config ships with detlib, loads, and builds its model at full size."""

import zipfile
from pathlib import Path

import pytest
import torch

from detlib import model_zoo
from detlib.config import get_cfg
from detlib.modeling import build_model
from detlib.modeling.meta_arch.build import META_ARCH_REGISTRY

REPO = Path(__file__).resolve().parents[2]
PEER_WHEEL = REPO / ".." / "shared" / "peers" / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
ZOO = sorted(
    str(p.relative_to(REPO / "configs"))
    for p in (REPO / "configs").rglob("*.yaml")
    if not p.name.startswith("Base-") and p.parent.name != "Shapes"
)


def _load(config: str):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _architecture(cfg) -> tuple:
    """What decides the modules a config builds: configs that agree on all of it build the same network."""
    m = cfg.MODEL
    return (
        m.META_ARCHITECTURE, m.BACKBONE.NAME, m.BACKBONE.FREEZE_AT, m.MASK_ON, m.KEYPOINT_ON,
        m.PROPOSAL_GENERATOR.NAME, m.RPN.IN_FEATURES, m.ROI_HEADS.NAME, m.ROI_HEADS.NUM_CLASSES,
        m.RESNETS.DEPTH, m.RESNETS.NUM_GROUPS, m.RESNETS.WIDTH_PER_GROUP, m.RESNETS.NORM, m.RESNETS.RES5_DILATION,
        m.RESNETS.OUT_FEATURES, m.RESNETS.DEFORM_ON_PER_STAGE, m.RESNETS.DEFORM_MODULATED, m.FPN.NORM,
        m.ROI_BOX_HEAD.NUM_CONV, m.ROI_BOX_HEAD.NUM_FC, m.ROI_BOX_HEAD.NORM, m.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG,
        m.ROI_BOX_HEAD.USE_FED_LOSS, m.ROI_BOX_HEAD.USE_SIGMOID_CE, m.ROI_MASK_HEAD.NUM_CONV, m.ROI_MASK_HEAD.NORM,
        m.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK, m.SEM_SEG_HEAD.NUM_CLASSES,
    )  # fmt: skip


def _first_of_each_architecture():
    firsts = {}
    for config in ZOO:
        firsts.setdefault(repr(_architecture(_load(config))), config)
    return sorted(firsts.values())


@pytest.mark.skipif(not PEER_WHEEL.is_file(), reason="the Detectron2 peer wheel is not available")
def test_the_zoo_is_detectron2s_59_yaml_configs():
    with zipfile.ZipFile(PEER_WHEEL) as wheel:
        prefix = "detectron2/model_zoo/configs/"
        theirs = sorted(
            name[len(prefix) :]
            for name in wheel.namelist()
            if name.startswith(prefix) and name.endswith(".yaml")
            and "quick_schedules/" not in name and not Path(name).name.startswith("Base-")
        )  # fmt: skip
    assert len(theirs) == 59
    assert ZOO == theirs


@pytest.mark.parametrize("config", ZOO)
def test_every_zoo_config_loads_with_its_base_files(config):
    cfg = _load(config)
    assert cfg.DATASETS.TRAIN, config
    assert cfg.VERSION == 2


def test_every_config_with_a_published_model_has_its_url():
    # Detectron2 0.6 publishes none for these (its model_zoo.py table): the LVIS v1, GIoU, class-agnostic,
    # semantic-only and Pascal VOC FPN configs.
    without = {
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml",
        "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
        "LVISv1-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml",
        "LVISv1-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml",
        "Misc/mask_rcnn_R_50_FPN_1x_cls_agnostic.yaml",
        "Misc/semantic_R_50_FPN_1x.yaml",
        "PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml",
    }
    for config in ZOO:
        if config in without:
            with pytest.raises(RuntimeError, match="No trained model"):
                model_zoo.get_checkpoint_url(config)
        else:
            assert model_zoo.get_checkpoint_url(config).startswith(f"detectron2://{config[:-5]}/"), config


@pytest.mark.parametrize("config", _first_of_each_architecture())
def test_each_architecture_of_the_zoo_builds(config):
    cfg = _load(config)
    if cfg.MODEL.META_ARCHITECTURE not in META_ARCH_REGISTRY:
        pytest.skip(f"{cfg.MODEL.META_ARCHITECTURE} is not part of this branch (Panoptic FPN / semantic segmentation)")
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        pytest.importorskip("detlib.layers.deform_conv", reason="the deformable convolution is another branch's")
    torch.manual_seed(0)
    model = build_model(cfg)
    names = dict(model.named_parameters())
    assert names, config
    if hasattr(model, "roi_heads") and cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads":
        # The C4 models run res5 in the RoI heads, on pooled res4 features.
        assert "roi_heads.res5.0.conv1.weight" in names and not any(k.startswith("backbone.res5") for k in names)
    depth = cfg.MODEL.RESNETS.DEPTH
    blocks = {18: 2, 34: 3, 50: 3, 101: 3, 152: 3}[depth]
    assert any(f".res2.{blocks - 1}.conv" in k for k in names) and not any(f".res2.{blocks}." in k for k in names)
