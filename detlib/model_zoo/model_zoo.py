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
    "COCO-Detection/faster_rcnn_R_50_C4_1x": "137257644/model_final_721ade.pkl",
    "COCO-Detection/faster_rcnn_R_50_DC5_1x": "137847829/model_final_51d356.pkl",
    "COCO-Detection/faster_rcnn_R_50_FPN_1x": "137257794/model_final_b275ba.pkl",
    "COCO-Detection/faster_rcnn_R_50_C4_3x": "137849393/model_final_f97cb7.pkl",
    "COCO-Detection/faster_rcnn_R_50_DC5_3x": "137849425/model_final_68d202.pkl",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x": "137849458/model_final_280758.pkl",
    "COCO-Detection/faster_rcnn_R_101_C4_3x": "138204752/model_final_298dad.pkl",
    "COCO-Detection/faster_rcnn_R_101_DC5_3x": "138204841/model_final_3e0943.pkl",
    "COCO-Detection/faster_rcnn_R_101_FPN_3x": "137851257/model_final_f6e8b1.pkl",
    "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x": "139173657/model_final_68b088.pkl",
    "COCO-Detection/retinanet_R_50_FPN_1x": "190397773/model_final_bfca0b.pkl",
    "COCO-Detection/retinanet_R_50_FPN_3x": "190397829/model_final_5bd44e.pkl",
    "COCO-Detection/retinanet_R_101_FPN_3x": "190397697/model_final_971ab9.pkl",
    "COCO-Detection/rpn_R_50_C4_1x": "137258005/model_final_450694.pkl",
    "COCO-Detection/rpn_R_50_FPN_1x": "137258492/model_final_02ce48.pkl",
    "COCO-Detection/fast_rcnn_R_50_FPN_1x": "137635226/model_final_e5f7ce.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x": "137259246/model_final_9243eb.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x": "137260150/model_final_4f86c3.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": "137260431/model_final_a54504.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x": "137849525/model_final_4ce675.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x": "137849551/model_final_84107b.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x": "137849600/model_final_f10217.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x": "138363239/model_final_a2914c.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_DC5_3x": "138363294/model_final_0464b7.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x": "138205316/model_final_a3ec72.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x": "139653917/model_final_2d9806.pkl",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x": "137261548/model_final_04e291.pkl",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x": "137849621/model_final_a6e10b.pkl",
    "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x": "138363331/model_final_997cc7.pkl",
    "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x": "139686956/model_final_5ad38f.pkl",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x": "139514544/model_final_dbfeb4.pkl",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x": "139514569/model_final_c10459.pkl",
    "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x": "139514519/model_final_cafdb1.pkl",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": "144219072/model_final_571f7c.pkl",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x": "144219035/model_final_824ab5.pkl",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x": "144219108/model_final_5e3439.pkl",
    "Cityscapes/mask_rcnn_R_50_FPN": "142423278/model_final_af9cf5.pkl",
    "PascalVOC-Detection/faster_rcnn_R_50_C4": "142202221/model_final_b1acc2.pkl",
    "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5": "138602867/model_final_65c703.pkl",
    "Misc/mask_rcnn_R_50_FPN_3x_dconv_c3-c5": "144998336/model_final_821d0b.pkl",
    "Misc/cascade_mask_rcnn_R_50_FPN_1x": "138602847/model_final_e9d89b.pkl",
    "Misc/cascade_mask_rcnn_R_50_FPN_3x": "144998488/model_final_480dd8.pkl",
    "Misc/mask_rcnn_R_50_FPN_3x_syncbn": "169527823/model_final_3b3c51.pkl",
    "Misc/mask_rcnn_R_50_FPN_3x_gn": "138602888/model_final_dc5d9e.pkl",
    "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn": "138602908/model_final_01ca85.pkl",
    "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn": "183808979/model_final_da7b4c.pkl",
    "Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn": "184226666/model_final_5ce33e.pkl",
    "Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x": "139797668/model_final_be35db.pkl",
    "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv": "18131413/model_0039999_e76410.pkl",
    "Detectron1-Comparisons/faster_rcnn_R_50_FPN_noaug_1x": "137781054/model_final_7ab50c.pkl",
    "Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x": "137781281/model_final_62ca52.pkl",
    "Detectron1-Comparisons/keypoint_rcnn_R_50_FPN_1x": "137781195/model_final_cce136.pkl",
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
