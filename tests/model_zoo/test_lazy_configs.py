"""Detectron2's Python model-zoo configs (and ViTDet's), shipped under configs/ with their imports changed to
detlib: each loads; each model builds with Detectron2's parameters, name for name and shape for shape (against
Detectron2 itself when installed, else against a recorded signature of its models), so Detectron2 checkpoints
of these configs load with no missing or unexpected keys. The R50/R101-based ones are built for real; the
others on the meta device, which allocates and initializes nothing, so that even ViT-H costs little."""

import contextlib
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Iterator, Sequence

import pytest
import torch

from detlib import model_zoo
from detlib.config import instantiate

REPO = Path(__file__).resolve().parents[2]
CONFIG_ROOT = REPO / "configs"
SIGNATURES = Path(__file__).with_name("d2_lazy_model_signatures.json")

ALL_PY_CONFIGS = sorted(str(p.relative_to(CONFIG_ROOT)) for p in CONFIG_ROOT.rglob("*.py"))
# Detector configs built only from parts detlib has: these must load and instantiate, never skip.
RESNET_CONFIGS = [
    "COCO-Detection/fcos_R_50_FPN_1x.py",
    "COCO-Detection/retinanet_R_50_FPN_1x.py",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.py",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.py",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py",
    "common/models/cascade_rcnn.py",
    *(f"new_baselines/mask_rcnn_R_50_FPN_{n}ep_LSJ.py" for n in (50, 100, 200, 400)),
    *(f"new_baselines/mask_rcnn_R_101_FPN_{n}ep_LSJ.py" for n in (100, 200, 400)),
]

# Configs without a model (parts the others import), and detlib's own (no Detectron2 counterpart).
NOT_DETECTRON2_MODELS = (
    "common/coco_schedule.py",
    "common/optim.py",
    "common/train.py",
    "common/data/",
    "ViTDet/common/",
    "Shapes/",
)
# Every other config: its model is built on the meta device.
META_CONFIGS = [p for p in ALL_PY_CONFIGS if not p.startswith(NOT_DETECTRON2_MODELS) and p not in RESNET_CONFIGS]


@contextlib.contextmanager
def _meta_device() -> Iterator[None]:
    """Build on the meta device. Detectron2's transformer backbones turn their drop-path rates, from
    torch.linspace, into floats (.item()), which a meta tensor cannot give: torch.linspace runs on the CPU."""
    linspace = torch.linspace

    def cpu_linspace(*args, **kwargs):
        return linspace(*args, **{**kwargs, "device": "cpu"})

    torch.linspace = cpu_linspace
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.linspace = linspace


def _load(path: str):
    """The config, or a skip naming the detlib class it needs when that is not there yet (ViT, Swin,
    MViT and RegNet backbones, C4 and panoptic heads, LVIS pieces)."""
    try:
        return model_zoo.get_config(path)
    except (ImportError, AttributeError) as e:
        if path in RESNET_CONFIGS:
            raise
        pytest.skip(f"{path} needs what detlib does not have yet: {e}")


def _signature(model: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _digest(signature: dict) -> str:
    text = "\n".join(f"{k} {list(s)}" for k, s in sorted(signature.items()))
    return hashlib.sha256(text.encode()).hexdigest()


# Configs whose backbones come from the `vit` work (ViT, Swin, MViTv2, RegNet): checked the same way
# once detlib has the classes; the base-size ones only, the large models are slow to build on a CPU.
OTHER_BACKBONE_CONFIGS = [
    "COCO-InstanceSegmentation/mask_rcnn_regnetx_4gf_dds_fpn_1x.py",
    "COCO-InstanceSegmentation/mask_rcnn_regnety_4gf_dds_fpn_1x.py",
    "ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py",
    "ViTDet/COCO/cascade_mask_rcnn_vitdet_b_100ep.py",
    "ViTDet/COCO/cascade_mask_rcnn_swin_b_in21k_50ep.py",
    "ViTDet/COCO/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py",
]
D2_VITDET_CONFIGS = REPO.parent / "shared" / "peers" / "detectron2-ViTDet-configs"


# Detectron2's activation checkpointing (ViT, MViT) needs fairscale; its wrapper keeps the parameter names.
_HAS_FAIRSCALE = importlib.util.find_spec("fairscale") is not None


def _detectron2_model(path: str, act_checkpoint: bool = True):
    """Detectron2's model of the same config: from its model zoo, or for ViTDet's project configs from
    the copy of them beside the peer wheel; without `act_checkpoint`, with activation checkpointing off."""
    from detectron2 import model_zoo as d2_zoo
    from detectron2.config import LazyConfig as D2LazyConfig
    from detectron2.config import instantiate as d2_instantiate

    if path.startswith("ViTDet/"):
        local = D2_VITDET_CONFIGS / path[len("ViTDet/") :]
        if not local.is_file():
            pytest.skip(f"Detectron2's ViTDet configs are not at {D2_VITDET_CONFIGS}")
        model = D2LazyConfig.load(str(local)).model
    else:
        model = d2_zoo.get_config(path).model
    backbone = model.backbone.get("net") or model.backbone.get("bottom_up") if "backbone" in model else None
    if not act_checkpoint and backbone is not None and backbone.get("use_act_checkpoint"):
        backbone.use_act_checkpoint = False
    return d2_instantiate(model)


@pytest.mark.parametrize("path", ALL_PY_CONFIGS)
def test_python_config_loads(path):
    cfg = _load(path)
    assert len(cfg) > 0
    if "train" in cfg:
        assert cfg.train.max_iter > 0 and "output_dir" in cfg.train


def test_every_detectron2_python_detector_config_is_shipped():
    d2_dirs = ("COCO-Detection", "COCO-InstanceSegmentation", "COCO-Keypoints", "COCO-PanopticSegmentation")
    shipped = [p for p in ALL_PY_CONFIGS if p.split("/")[0] in d2_dirs or p.startswith("new_baselines/")]
    assert len(shipped) == 21  # Detectron2 0.6: 8 COCO-* configs and 13 new_baselines


@pytest.mark.parametrize("path", RESNET_CONFIGS)
def test_resnet_config_model_has_detectron2_parameters(path):
    cfg = _load(path)
    model = instantiate(cfg.model)
    signature = _signature(model)
    try:
        d2_model = _detectron2_model(path)
    except ImportError:
        recorded = json.loads(SIGNATURES.read_text())[path]
        assert (len(signature), _digest(signature)) == (recorded["num_tensors"], recorded["sha256"])
        return
    d2_signature = _signature(d2_model)
    missing = sorted(set(d2_signature) - set(signature))
    unexpected = sorted(set(signature) - set(d2_signature))
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
    assert signature == d2_signature
    model.load_state_dict(d2_model.state_dict(), strict=True)
    # The recorded signature, which CI compares against without Detectron2, is Detectron2's.
    recorded = json.loads(SIGNATURES.read_text())[path]
    assert (recorded["num_tensors"], recorded["sha256"]) == (len(d2_signature), _digest(d2_signature))


def test_config_saved_by_detectron2_builds_the_same_model(tmp_path):
    pytest.importorskip("detectron2")
    from detectron2 import model_zoo as d2_zoo
    from detectron2.config import LazyConfig as D2LazyConfig
    from detectron2.config import instantiate as d2_instantiate

    from detlib.config import LazyConfig

    path = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"
    d2_cfg = d2_zoo.get_config(path)
    D2LazyConfig.save(d2_cfg, str(tmp_path / "config.yaml"))
    cfg = LazyConfig.load(tmp_path / "config.yaml")  # as data: no opt-in
    assert _signature(instantiate(cfg.model)) == _signature(d2_instantiate(d2_cfg.model))
    assert cfg.optimizer.lr == d2_cfg.optimizer.lr and cfg.train.max_iter == d2_cfg.train.max_iter


@pytest.mark.parametrize("path", META_CONFIGS)
def test_config_model_built_on_meta_has_detectron2_parameters(path):
    with _meta_device():
        signature = _signature(instantiate(model_zoo.get_config(path).model))
    recorded = json.loads(SIGNATURES.read_text())[path]
    assert (len(signature), _digest(signature)) == (recorded["num_tensors"], recorded["sha256"])
    if importlib.util.find_spec("detectron2") is not None:
        with _meta_device():
            d2_signature = _signature(_detectron2_model(path, act_checkpoint=_HAS_FAIRSCALE))
        missing = sorted(set(d2_signature) - set(signature))
        unexpected = sorted(set(signature) - set(d2_signature))
        assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
        assert signature == d2_signature


@pytest.mark.parametrize("path", OTHER_BACKBONE_CONFIGS)
def test_other_backbone_config_model_has_detectron2_parameters(path):
    cfg = _load(path)  # skips, naming the class, until detlib has it
    model = instantiate(cfg.model)
    pytest.importorskip("detectron2")
    d2_signature = _signature(_detectron2_model(path))
    signature = _signature(model)
    missing = sorted(set(d2_signature) - set(signature))
    unexpected = sorted(set(signature) - set(d2_signature))
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
    assert signature == d2_signature


@pytest.mark.parametrize(
    "path",
    [
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.py",
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py",
        "common/models/cascade_rcnn.py",
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
    ],
)
def test_config_gives_detectron2_detections_with_its_weights(path):
    pytest.importorskip("detectron2")
    from detlib.structures import pairwise_iou

    torch.manual_seed(0)
    d2_model = _detectron2_model(path).eval()
    with torch.no_grad():
        # Random weights behind identity (Frozen)BN blow activations up; a running std of 20 keeps them in
        # range, and a classifier bias toward a few classes makes scores clear the test threshold.
        for name, buffer in d2_model.named_buffers():
            if name.endswith("running_var"):
                buffer.fill_(400.0)
        predictors = d2_model.roi_heads.box_predictor
        for predictor in predictors if isinstance(predictors, torch.nn.ModuleList) else [predictors]:
            predictor.cls_score.bias[: min(5, predictor.num_classes)] += 4.0
    model = instantiate(model_zoo.get_config(path).model).eval()
    model.load_state_dict(d2_model.state_dict(), strict=True)
    image = torch.randint(0, 256, (3, 200, 240), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    inputs = [{"image": image, "height": 200, "width": 240}]
    with torch.no_grad():
        ours, theirs = model(inputs)[0]["instances"], d2_model(inputs)[0]["instances"]
    assert len(theirs) > 10 and len(ours) == len(theirs)
    # Each of Detectron2's detections has one of ours: IoU > 0.99, same class, score within 1e-3.
    iou = pairwise_iou(theirs.pred_boxes, ours.pred_boxes)
    same = (theirs.pred_classes[:, None] == ours.pred_classes[None]) & (
        (theirs.scores[:, None] - ours.scores[None]).abs() < 1e-3
    )
    best = torch.where(same, iou, torch.zeros_like(iou)).max(dim=1)
    assert (best.values > 0.99).float().mean() >= 0.98
    matched = best.values > 0.99
    if theirs.has("pred_masks"):
        agreement = (theirs.pred_masks[matched] == ours.pred_masks[best.indices[matched]]).float().mean()
        assert agreement >= 0.999
    if theirs.has("pred_keypoints"):
        torch.testing.assert_close(
            ours.pred_keypoints[best.indices[matched]], theirs.pred_keypoints[matched], atol=1e-2, rtol=1e-3
        )


def record_signatures(paths: Sequence[str]) -> None:
    """Record the signatures of Detectron2's models of `paths` in d2_lazy_model_signatures.json, keeping the
    others (run with Detectron2 installed)."""
    records = json.loads(SIGNATURES.read_text())
    for path in paths:
        with _meta_device():
            signature = _signature(_detectron2_model(path, act_checkpoint=_HAS_FAIRSCALE))
        records[path] = {"num_tensors": len(signature), "sha256": _digest(signature)}
        print(path, records[path]["num_tensors"])
    SIGNATURES.write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    record_signatures(sys.argv[1:] or [*RESNET_CONFIGS, *META_CONFIGS])
