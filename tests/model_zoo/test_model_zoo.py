"""Detectron2's trained models for detlib's zoo configs: their URLs, and `model_zoo.get`."""

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from detlib import model_zoo
from detlib.config import get_cfg
from detlib.modeling import build_model

REPO = Path(__file__).resolve().parents[2]
PEER_WHEEL = REPO / ".." / "shared" / "peers" / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
ZOO_CONFIGS = sorted(
    str(p.relative_to(REPO / "configs"))
    for p in (REPO / "configs").rglob("*.yaml")
    if not p.name.startswith("Base-") and p.parent.name != "Shapes"
)


def _detectron2_table():
    """Detectron2's own config -> "<id>/<file>" table, read from the source in its wheel."""
    with zipfile.ZipFile(PEER_WHEEL) as wheel:
        source = wheel.read("detectron2/model_zoo/model_zoo.py").decode()
    return dict(re.findall(r'"([\w\-./]+)": "(\d+/model_\w+\.pkl)"', source))


def test_the_mask_rcnn_url_is_detectron2s():
    # From Detectron2's MODEL_ZOO.md: R50-FPN Mask R-CNN 1x is model 137260431, file model_final_a54504.pkl.
    assert model_zoo.get_checkpoint_url("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml") == (
        "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x/137260431/model_final_a54504.pkl"
    )


@pytest.mark.skipif(not PEER_WHEEL.is_file(), reason="the Detectron2 peer wheel is not available")
@pytest.mark.parametrize("config", ZOO_CONFIGS)
def test_every_shipped_zoo_config_has_detectron2s_url(config):
    name = config[: -len(".yaml")]
    table = _detectron2_table()
    if name not in table:
        with pytest.raises(RuntimeError, match="No trained model"):
            model_zoo.get_checkpoint_url(config)
    else:
        assert model_zoo.get_checkpoint_url(config) == f"detectron2://{name}/{table[name]}"


def test_a_config_without_a_published_model_is_named():
    with pytest.raises(RuntimeError, match="Shapes/mask_rcnn_shapes.yaml"):
        model_zoo.get_checkpoint_url("Shapes/mask_rcnn_shapes.yaml")


def test_get_builds_the_model_and_loads_the_published_weights(file_server, weights_cache, monkeypatch):
    config = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    shapes = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    rng = np.random.default_rng(0)
    names = ["roi_heads.box_predictor.cls_score.weight", "backbone.fpn_lateral2.weight"]
    names.append("backbone.bottom_up.res2.0.conv1.weight")
    served = {k: rng.standard_normal(shapes[k]).astype(np.float32) for k in names}
    url_path = "/mirror/COCO-Detection/faster_rcnn_R_50_FPN_1x/137257794/model_final_b275ba.pkl"
    file_server.files[url_path] = pickle.dumps({"model": served, "__author__": "Detectron2 Model Zoo"})
    monkeypatch.setenv("DETLIB_DETECTRON2_URL", file_server.url("/mirror/"))

    model = model_zoo.get(config, trained=True, device="cpu")
    assert file_server.requests == {url_path: 1}
    state = model.state_dict()
    for name, value in served.items():
        assert torch.equal(state[name], torch.from_numpy(value)), name


KEYPOINT_CONFIGS = ["COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml"]


@pytest.mark.parametrize("config", KEYPOINT_CONFIGS)
def test_keypoint_configs_have_detectron2s_hyper_parameters_and_url(config):
    d2_config = pytest.importorskip("detectron2.config")
    d2_zoo = pytest.importorskip("detectron2.model_zoo")
    ours, theirs = get_cfg(), d2_config.get_cfg()
    ours.merge_from_file(model_zoo.get_config_file(config))
    theirs.merge_from_file(d2_zoo.get_config_file(config))
    for path in ["MODEL.KEYPOINT_ON", "MODEL.WEIGHTS", "MODEL.RESNETS.DEPTH", "MODEL.ROI_HEADS.NUM_CLASSES",
                 "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.ROI_KEYPOINT_HEAD",
                 "SOLVER.STEPS", "SOLVER.MAX_ITER", "SOLVER.BASE_LR", "DATASETS.TRAIN", "DATASETS.TEST",
                 "TEST.KEYPOINT_OKS_SIGMAS", "INPUT.MIN_SIZE_TRAIN"]:  # fmt: skip
        a, b = ours, theirs
        for key in path.split("."):
            a, b = a[key], b[key]
        assert a == b, path
    ours_url = model_zoo.get_checkpoint_url(config)
    assert ours_url.startswith("detectron2://")
    assert d2_zoo.get_checkpoint_url(config) == "https://dl.fbaipublicfiles.com/detectron2/" + ours_url[13:]
