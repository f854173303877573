"""Each synthetic shapes format loads and scores end to end: ground truth given back as the
prediction gets the perfect score of each metric, and a damaged one less."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from detlib.config import get_cfg
from detlib.data import DatasetCatalog, MetadataCatalog
from detlib.data.datasets import ShapesSpec
from detlib.data.datasets.coco_panoptic import rgb2id
from detlib.data.datasets.shapes_formats import register_shapes_formats, write_shapes_formats
from detlib.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
    build_evaluator,
)
from detlib.structures import Boxes, BoxMode, Instances


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shapes_formats")
    write_shapes_formats(ShapesSpec(num_images=6, seed=3, image_size=(64, 64)), str(directory))
    return directory


@pytest.fixture
def names(formats):
    return register_shapes_formats("shapes_tiny", str(formats))


def test_semantic_format_scores_100_mIoU_when_predicted_exactly(names):
    records = DatasetCatalog.get(names["sem_seg"])
    assert len(records) == 6 and all(r["file_name"].endswith(".jpg") for r in records)
    evaluator = SemSegEvaluator(names["sem_seg"], distributed=False)
    for r in records:
        label = torch.as_tensor(np.asarray(Image.open(r["sem_seg_file_name"]), dtype=np.int64))
        evaluator.process(
            [{"file_name": r["file_name"]}],
            [{"sem_seg": torch.nn.functional.one_hot(label, 5).permute(2, 0, 1).float()}],
        )
    metrics = evaluator.evaluate()["sem_seg"]
    assert metrics["mIoU"] == pytest.approx(100) and metrics["pACC"] == pytest.approx(100)


def test_panoptic_formats_load_and_score_100_PQ_when_predicted_exactly(names):
    separated = DatasetCatalog.get(names["panoptic_separated"])
    assert all("sem_seg_file_name" in r and "annotations" in r for r in separated)
    assert MetadataCatalog.get(names["panoptic_stuffonly"]).evaluator_type == "sem_seg"
    records = DatasetCatalog.get(names["panoptic"])
    evaluator = COCOPanopticEvaluator(names["panoptic"], distributed=False)
    things = MetadataCatalog.get(names["panoptic"]).thing_dataset_id_to_contiguous_id
    for r in records:
        ids = rgb2id(np.asarray(Image.open(r["pan_seg_file_name"])))
        info = [{"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]} for s in r["segments_info"]]
        evaluator.process([r], [{"panoptic_seg": (torch.as_tensor(ids), info)}])
    metrics = evaluator.evaluate()["panoptic_seg"]
    assert metrics["PQ"] == pytest.approx(100) and metrics["PQ_st"] == pytest.approx(100)
    assert len(things) == 4


def _box_predictions(record, drop_first=False):
    anns = record["annotations"][1:] if drop_first else record["annotations"]
    instances = Instances((record["height"], record["width"]))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.linspace(0.9, 0.5, len(anns))
    instances.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    return instances


@pytest.mark.parametrize("kind", ["voc", "lvis"])
def test_box_formats_score_100_AP_when_predicted_exactly(names, kind):
    records = DatasetCatalog.get(names[kind])
    assert sum(len(r["annotations"]) for r in records) > 6
    for drop_first, perfect in ((False, True), (True, False)):
        if kind == "voc":
            evaluator = PascalVOCDetectionEvaluator(names[kind], distributed=False)
        else:
            evaluator = LVISEvaluator(names[kind], tasks=("bbox",), distributed=False)
        for r in records:
            evaluator.process([r], [{"instances": _box_predictions(r, drop_first)}])
        ap50 = evaluator.evaluate()["bbox"]["AP50"]
        assert (ap50 == pytest.approx(100)) == perfect, (kind, drop_first, ap50)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("sem_seg", [SemSegEvaluator]),
        ("panoptic", [SemSegEvaluator, COCOEvaluator, COCOPanopticEvaluator]),
        ("voc", [PascalVOCDetectionEvaluator]),
        ("lvis", [LVISEvaluator]),
    ],
)
def test_the_evaluator_type_picks_the_evaluators(names, kind, expected, tmp_path):
    evaluator = build_evaluator(get_cfg(), names[kind], str(tmp_path))
    built = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
    assert [type(e) for e in built] == expected


def test_an_unknown_evaluator_type_is_named(tmp_path):
    MetadataCatalog.get("no_evaluator").set(evaluator_type="kitti")
    with pytest.raises(NotImplementedError, match="'no_evaluator' of evaluator_type 'kitti'"):
        build_evaluator(get_cfg(), "no_evaluator", str(tmp_path))


def test_mapper_reads_and_transforms_the_semantic_labels_with_the_image(names):
    from detlib.data import DatasetMapper
    from detlib.data import transforms as T

    record = DatasetCatalog.get(names["panoptic_separated"])[0]
    labels = np.asarray(Image.open(record["sem_seg_file_name"]))
    mapper = DatasetMapper(
        is_train=True, augmentations=[T.ResizeShortestEdge(32, 32), T.RandomFlip(prob=1.0)], image_format="BGR"
    )
    mapped = mapper(record)
    assert "sem_seg_file_name" not in mapped and mapped["sem_seg"].dtype == torch.int64
    assert tuple(mapped["sem_seg"].shape) == tuple(mapped["image"].shape[1:]) == (32, 32)
    # nearest-neighbour resize of the flipped labels: every label of the output is one of the input's
    assert set(mapped["sem_seg"].unique().tolist()) <= set(np.unique(labels).tolist())
    expected = torch.as_tensor(labels[::2, ::2][:, ::-1].astype(np.int64))  # 64 -> 32, then flipped
    assert (mapped["sem_seg"] != expected).float().mean() < 0.1
    assert len(mapped["instances"]) > 0


def test_builtin_lvis_and_voc_shapes_are_written_on_first_use_and_then_reused(tmp_path):
    from detlib.data.datasets.builtin_shapes import register_shapes_lvis_and_voc

    spec = ShapesSpec(num_images=3, seed=7, image_size=(48, 48))
    register_shapes_lvis_and_voc("shapes_lazy", str(tmp_path / "formats"), spec)
    assert not (tmp_path / "formats").exists()  # registering writes nothing
    json_file = MetadataCatalog.get("shapes_lazy_lvis").json_file  # what LVISEvaluator reads first
    assert json_file == str(tmp_path / "formats" / "lvis.json") and (tmp_path / "formats" / "voc").is_dir()
    stamp = (tmp_path / "formats" / "lvis.json").stat().st_mtime_ns
    assert len(DatasetCatalog.get("shapes_lazy_voc")) == 3 and len(DatasetCatalog.get("shapes_lazy_lvis")) == 3
    register_shapes_lvis_and_voc("shapes_lazy_again", str(tmp_path / "formats"), spec)
    DatasetCatalog.get("shapes_lazy_again_lvis")
    assert (tmp_path / "formats" / "lvis.json").stat().st_mtime_ns == stamp  # complete: not written again
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shapes_formats.")]


def test_builtin_panoptic_shapes_score_100_with_panoptic_fpn_style_outputs(tmp_path):
    """Panoptic FPN's outputs for the separated layout (things with their contiguous class, stuff with
    its semantic class) made from the ground truth: 100 box AP, mIoU and PQ."""
    from detlib.data.datasets.builtin_shapes import register_shapes_panoptic

    spec = ShapesSpec(num_images=4, seed=2, image_size=(48, 48))
    register_shapes_panoptic("shapes_pan", str(tmp_path / "formats"), spec)
    evaluator = build_evaluator(get_cfg(), "shapes_pan_panoptic_separated", str(tmp_path / "out"))
    assert [type(e) for e in evaluator._evaluators] == [SemSegEvaluator, COCOEvaluator, COCOPanopticEvaluator]
    evaluator.reset()
    for record in DatasetCatalog.get("shapes_pan_panoptic_separated"):
        semantic = torch.as_tensor(np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.int64))
        png = tmp_path / "formats" / "panoptic" / (os.path.splitext(os.path.basename(record["file_name"]))[0] + ".png")
        gt_ids = torch.as_tensor(rgb2id(np.asarray(Image.open(png))))
        ids = torch.zeros_like(gt_ids)
        segments = []
        for k, ann in enumerate(record["annotations"]):  # the writer numbers an image's objects 1, 2, ...
            ids[gt_ids == k + 1] = k + 1
            segments.append({"id": k + 1, "category_id": ann["category_id"], "isthing": True})
        if (semantic == 1).any():  # the background stuff: semantic class 1
            ids[semantic == 1] = len(segments) + 1
            segments.append({"id": len(segments) + 1, "category_id": 1, "isthing": False})
        outputs = {
            "instances": _box_predictions(record),
            "sem_seg": torch.nn.functional.one_hot(semantic, 2).permute(2, 0, 1).float(),
            "panoptic_seg": (ids, segments),
        }
        evaluator.process([record], [outputs])
    results = evaluator.evaluate()
    assert results["sem_seg"]["mIoU"] == pytest.approx(100)
    assert results["bbox"]["AP"] == pytest.approx(100)
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100) and results["panoptic_seg"]["PQ_st"] == pytest.approx(
        100
    )
