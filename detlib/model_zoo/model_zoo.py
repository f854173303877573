"""Access to the configs that ship with detlib, and to Detectron2's trained models for them."""

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from detlib.checkpoint import DetectionCheckpointer
from detlib.config import LazyConfig, get_cfg
from detlib.modeling import build_model


def _config_root() -> Path:
    """
    Where the configs are: inside the package in an installed wheel (setup.py copies the repository's
    configs/ there at build time), else the repository's configs/ beside the package (a source checkout or
    `pip install -e .`).
    """
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


_CONFIG_ROOT = _config_root()


def get_config_file(config_path: str) -> str:
    """
    Returns the absolute path of a packaged config, given its path relative to `configs/`,
    e.g. "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml" or "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py".
    """
    path = _CONFIG_ROOT / config_path
    if not path.is_file():
        available = sorted(
            str(p.relative_to(_CONFIG_ROOT)) for p in _CONFIG_ROOT.rglob("*") if p.suffix in (".yaml", ".py")
        )
        raise FileNotFoundError(
            f"No packaged config '{config_path}' under {_CONFIG_ROOT}. Available: {', '.join(available)}"
        )
    return str(path)


# Detectron2's published models: config path (without .yaml) -> "<model id>/<file>" under
# detectron2://<config path>/ (facts from Detectron2's MODEL_ZOO.md). The Detectron2 config of each
# entry builds the same network as detlib's config of the same name.
_D2_CHECKPOINTS = {
    "COCO-Detection/faster_rcnn_R_50_FPN_1x": "137257794/model_final_b275ba.pkl",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x": "137849458/model_final_280758.pkl",
    "COCO-Detection/faster_rcnn_R_101_FPN_3x": "137851257/model_final_f6e8b1.pkl",
    "COCO-Detection/retinanet_R_50_FPN_1x": "190397773/model_final_bfca0b.pkl",
    "COCO-Detection/retinanet_R_50_FPN_3x": "190397829/model_final_5bd44e.pkl",
    "COCO-Detection/retinanet_R_101_FPN_3x": "190397697/model_final_971ab9.pkl",
    "COCO-Detection/rpn_R_50_FPN_1x": "137258492/model_final_02ce48.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": "137260431/model_final_a54504.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x": "137849600/model_final_f10217.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x": "138205316/model_final_a3ec72.pkl",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x": "137261548/model_final_04e291.pkl",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x": "137849621/model_final_a6e10b.pkl",
    "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x": "138363331/model_final_997cc7.pkl",
    "Misc/cascade_mask_rcnn_R_50_FPN_1x": "138602847/model_final_e9d89b.pkl",
    "Misc/cascade_mask_rcnn_R_50_FPN_3x": "144998488/model_final_480dd8.pkl",
}


def get_checkpoint_url(config_path: str) -> str:
    """The URL of Detectron2's trained model for a zoo config, e.g.
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml" ->
    "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x/137260431/model_final_a54504.pkl".

    The `detectron2://` prefix resolves through `$DETLIB_DETECTRON2_URL` (a mirror) when loaded.
    """
    name = config_path[: -len(".yaml")] if config_path.endswith(".yaml") else config_path
    if name not in _D2_CHECKPOINTS:
        raise RuntimeError(
            f"No trained model is published for config '{config_path}'. Configs with one: "
            f"{', '.join(sorted(k + '.yaml' for k in _D2_CHECKPOINTS))}"
        )
    return f"detectron2://{name}/{_D2_CHECKPOINTS[name]}"


def get_config(config_path: str, trained: bool = False) -> Any:
    """The config of a packaged config file: a `CfgNode` for a `.yaml` file, the lazy config (an
    omegaconf DictConfig) of a `.py` file. With `trained`, its weights are Detectron2's published model
    for it (`MODEL.WEIGHTS`, or `train.init_checkpoint` of a Python config)."""
    path = get_config_file(config_path)
    if config_path.endswith(".py"):
        cfg = LazyConfig.load(path)
        if trained:
            cfg.train.init_checkpoint = get_checkpoint_url(config_path[: -len(".py")])
        return cfg
    cfg = get_cfg()
    cfg.merge_from_file(path)
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
    return cfg


def get(config_path: str, trained: bool = False, device: Optional[str] = None) -> nn.Module:
    """The model of a zoo config, built and loaded: with `trained`, with Detectron2's published
    weights for it; otherwise with the config's own `MODEL.WEIGHTS` (the ImageNet backbone), as in
    Detectron2. `device` overrides the config's (which falls back to CPU without CUDA). The model is
    in training mode, as built; call `.eval()` for inference.
    """
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(config_path))
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
    if device is None and not torch.cuda.is_available():
        device = "cpu"
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model
