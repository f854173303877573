"""
Every Detectron2 model-zoo YAML config ships with detlib, loads, and builds its model at full size with Detectron2's
state-dict layout (every parameter and buffer name and shape), so that the config's Detectron2 checkpoint loads
with no missing or unexpected key.

The layouts are recorded from Detectron2 (`data/detectron2_state_layouts.json`, a digest per config); to record
them again (needs Detectron2): `PYTHONPATH=$PWD python tests/model_zoo/test_zoo_configs.py`.
"""

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Mapping

import pytest
import torch

from detlib import model_zoo
from detlib.config import get_cfg
from detlib.modeling import build_model

REPO = Path(__file__).resolve().parents[2]
PEER_WHEEL = REPO / ".." / "shared" / "peers" / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
ZOO = sorted(
    str(p.relative_to(REPO / "configs"))
    for p in (REPO / "configs").rglob("*.yaml")
    if not p.name.startswith("Base-") and p.parent.name != "Shapes"
)


LAYOUTS = Path(__file__).with_name("data") / "detectron2_state_layouts.json"


def state_layout(state: Mapping[str, torch.Tensor]) -> dict:
    """
    The number of entries of a state dict and a digest of their names and shapes, without batch norms' step
    counters: Detectron2 keeps that of a BN it freezes (FREEZE_AT), detlib drops it, and both checkpointers load a
    file with or without it.
    """
    lines = sorted(f"{name}:{tuple(v.shape)}" for name, v in state.items() if not name.endswith("num_batches_tracked"))
    return {"keys": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()}


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


def test_every_dataset_a_config_names_is_registered():
    from detlib.data import DatasetCatalog

    for config in ZOO:
        cfg = _load(config)
        for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
            assert name in DatasetCatalog.list(), f"{config}: dataset '{name}' is not registered"


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
    torch.manual_seed(0)
    model = build_model(cfg)
    ours, theirs = state_layout(model.state_dict()), json.loads(LAYOUTS.read_text())[config]
    assert ours == theirs, f"{config}: the state dict's names or shapes differ from Detectron2's: {ours} != {theirs}"
    names = dict(model.named_parameters())
    if hasattr(model, "roi_heads") and cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads":
        # The C4 models run res5 in the RoI heads, on pooled res4 features.
        assert "roi_heads.res5.0.conv1.weight" in names and not any(k.startswith("backbone.res5") for k in names)
    depth = cfg.MODEL.RESNETS.DEPTH
    blocks = {18: 2, 34: 3, 50: 3, 101: 3, 152: 3}[depth]
    assert any(f".res2.{blocks - 1}.conv" in k for k in names) and not any(f".res2.{blocks}." in k for k in names)


def _record_detectron2_layouts() -> None:
    from detectron2 import model_zoo as d2_zoo
    from detectron2.config import get_cfg as d2_get_cfg
    from detectron2.modeling import build_model as d2_build_model

    layouts = {}
    for config in ZOO:
        cfg = d2_get_cfg()
        cfg.merge_from_file(d2_zoo.get_config_file(config))
        cfg.MODEL.DEVICE = "cpu"
        layouts[config] = state_layout(d2_build_model(cfg).state_dict())
        print(config, layouts[config]["keys"], flush=True)
    LAYOUTS.parent.mkdir(exist_ok=True)
    LAYOUTS.write_text(json.dumps(layouts, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    _record_detectron2_layouts()
