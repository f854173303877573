"""PanopticFPN and SemanticSegmentor: the zoo configs build with Detectron2's state-dict layout, and the
models' own behaviour (loss weighting, outputs, errors). Their outputs against Detectron2's are in
tests/differential (panoptic_fpn, semantic_fpn)."""

import pickle
import sys
from pathlib import Path

import pytest
import torch

from detlib.checkpoint import DetectionCheckpointer
from detlib.config import get_cfg
from detlib.model_zoo import get_config_file
from detlib.modeling import PanopticFPN, SemanticSegmentor, build_model
from detlib.utils.events import EventStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "differential"))
from harness import synthetic_batch, synthetic_sem_seg  # noqa: E402
from test_panoptic_fpn import CASE as PANOPTIC_CASE  # noqa: E402
from test_semantic_fpn import CASE as SEMANTIC_CASE  # noqa: E402

ZOO_CONFIGS = ["COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "Misc/semantic_R_50_FPN_1x.yaml"]


def _zoo_model(path: str) -> torch.nn.Module:
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(path))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    return build_model(cfg)


@pytest.mark.parametrize("path", ZOO_CONFIGS)
def test_zoo_config_builds_at_full_size(path):
    model = _zoo_model(path)
    head = model.sem_seg_head
    assert head.in_features == ["p2", "p3", "p4", "p5"] and head.ignore_value == 255
    assert head.predictor.weight.shape == (54, 128, 1, 1)  # COCO's 53 stuff classes + "things"
    assert isinstance(head.p5[0].norm, torch.nn.GroupNorm)
    if isinstance(model, PanopticFPN):
        assert head.loss_weight == 0.5 and model.roi_heads.mask_on
        assert model.OUTPUT_KEYS == ("instances", "sem_seg", "panoptic_seg")
        assert (model.combine_overlap_thresh, model.combine_stuff_area_thresh) == (0.5, 4096)
        assert model.combine_instances_score_thresh == 0.5


@pytest.mark.parametrize("path", ZOO_CONFIGS)
def test_zoo_config_takes_detectron2s_state_dict(path, tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.config import get_cfg as d2_get_cfg
    from detectron2.model_zoo import get_config_file as d2_get_config_file
    from detectron2.modeling import build_model as d2_build_model

    cfg = d2_get_cfg()
    cfg.merge_from_file(d2_get_config_file(path))
    cfg.MODEL.DEVICE = "cpu"
    theirs = d2_build_model(cfg).state_dict()
    model = _zoo_model(path)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    generator = torch.Generator().manual_seed(0)
    weights = {k: torch.rand(v.shape, generator=generator).numpy() for k, v in theirs.items() if v.is_floating_point()}
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "test"}, f)
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(str(tmp_path / "model.pkl"))
    keys = checkpointer.incompatible_keys
    assert not keys.missing and not keys.unexpected and not keys.shape_mismatch, keys
    torch.testing.assert_close(model.sem_seg_head.p4[2].weight, torch.from_numpy(weights["sem_seg_head.p4.2.weight"]))


def _inputs(cfg, with_targets: bool):
    from detlib.structures import Boxes, Instances, PolygonMasks

    inputs = []
    for item in synthetic_batch(0, num_classes=3):
        record = {"image": torch.from_numpy(item.image), "height": item.original_hw[0], "width": item.original_hw[1]}
        if with_targets:
            head = cfg.MODEL.SEM_SEG_HEAD
            record["sem_seg"] = torch.from_numpy(synthetic_sem_seg(item, head.NUM_CLASSES, head.IGNORE_VALUE))
            record["instances"] = Instances(
                tuple(item.image.shape[1:]),
                gt_boxes=Boxes(torch.from_numpy(item.boxes)),
                gt_classes=torch.from_numpy(item.classes),
                gt_masks=PolygonMasks([[p] for p in item.polygons]),
            )
        inputs.append(record)
    return inputs


def _losses(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).train()
    with EventStorage(0):
        torch.manual_seed(0)
        return model(_inputs(cfg, with_targets=True))


def test_instance_loss_weight_scales_the_roi_heads_losses_only():
    cfg = PANOPTIC_CASE.detlib_config()
    plain = _losses(cfg)
    cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 3.0
    weighted = _losses(cfg)
    assert set(plain) == set(weighted) == {
        "loss_sem_seg", "loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"
    }  # fmt: skip
    for name, value in plain.items():
        factor = 3.0 if name in ("loss_cls", "loss_box_reg", "loss_mask") else 1.0
        torch.testing.assert_close(weighted[name], factor * value)


def test_panoptic_outputs_and_combine_disabled():
    cfg = PANOPTIC_CASE.detlib_config()
    model = build_model(cfg).eval()
    inputs = _inputs(cfg, with_targets=False)
    with torch.no_grad():
        outputs = model(inputs)
        instances, sem_seg = model.inference(inputs, do_postprocess=False)
    for output, record in zip(outputs, inputs):
        size = (record["height"], record["width"])
        assert output["sem_seg"].shape == (4, *size) and output["instances"].image_size == size
        ids, segments = output["panoptic_seg"]
        assert ids.shape == size and ids.dtype == torch.int32
        assert set(ids.unique().tolist()) - {0} == {s["id"] for s in segments}
        assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    assert len(instances) == 2 and sem_seg.shape[:2] == (2, 4) and sem_seg.shape[2] % 32 == 0

    cfg.MODEL.PANOPTIC_FPN.COMBINE.ENABLED = False
    model = build_model(cfg).eval()
    assert model.OUTPUT_KEYS == ("instances", "sem_seg")
    with torch.no_grad():
        assert set(model(inputs[:1])[0]) == {"instances", "sem_seg"}


def test_semantic_segmentor_outputs_and_losses():
    cfg = SEMANTIC_CASE.detlib_config()
    model = build_model(cfg)
    assert isinstance(model, SemanticSegmentor) and model.OUTPUT_KEYS == ("sem_seg",)
    with EventStorage(0):
        losses = model.train()(_inputs(cfg, with_targets=True))
        assert set(losses) == {"loss_sem_seg"} and losses["loss_sem_seg"] > 0
        with pytest.raises(KeyError, match="needs 'sem_seg' in every input"):
            model(_inputs(cfg, with_targets=False))
    inputs = _inputs(cfg, with_targets=False)
    with torch.no_grad():
        outputs = model.eval()(inputs)
    assert [tuple(o["sem_seg"].shape) for o in outputs] == [(4, r["height"], r["width"]) for r in inputs]


def test_panoptic_fpn_needs_masks():
    cfg = PANOPTIC_CASE.detlib_config()
    cfg.MODEL.MASK_ON = False
    with pytest.raises(ValueError, match="MASK_ON"):
        build_model(cfg)


def test_shapes_config_builds_a_small_panoptic_fpn():
    model = build_model(_load_shapes_config())
    assert isinstance(model, PanopticFPN) and model.sem_seg_head.predictor.out_channels == 2
    assert model.sem_seg_head.loss_weight == 0.1 and model.combine_instances_score_thresh == 0.3
    assert isinstance(model.sem_seg_head.p2[0].norm, torch.nn.BatchNorm2d)


def _load_shapes_config():
    cfg = get_cfg()
    cfg.merge_from_file(str(Path(__file__).resolve().parents[2] / "configs" / "Shapes" / "panoptic_fpn_shapes.yaml"))
    return cfg
