"""A second opinion: Detectron2's SemSegEvaluator and PascalVOCDetectionEvaluator (when installed)
on the synthetic shapes formats with imperfect predictions give detlib's numbers."""

import numpy as np
import pytest
import torch
from PIL import Image

from detlib.data import DatasetCatalog, MetadataCatalog
from detlib.data.datasets import ShapesSpec
from detlib.data.datasets.shapes_formats import register_shapes_formats, write_shapes_formats
from detlib.evaluation import PascalVOCDetectionEvaluator, SemSegEvaluator
from detlib.structures import Boxes, BoxMode, Instances

d2_data = pytest.importorskip("detectron2.data")
d2_evaluation = pytest.importorskip("detectron2.evaluation")
d2_structures = pytest.importorskip("detectron2.structures")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shapes_d2")
    write_shapes_formats(ShapesSpec(num_images=10, seed=11, image_size=(64, 64)), str(directory))
    return directory


def _register_in_detectron2(name: str, records, **metadata) -> None:
    if name in d2_data.DatasetCatalog.list():
        d2_data.DatasetCatalog.remove(name)
        d2_data.MetadataCatalog.remove(name)
    d2_data.DatasetCatalog.register(name, lambda: records)
    d2_data.MetadataCatalog.get(name).set(**metadata)


def test_semantic_metrics_equal_detectron2s(shapes_dir):
    names = register_shapes_formats("shapes_d2", str(shapes_dir))
    records = DatasetCatalog.get(names["sem_seg"])
    metadata = MetadataCatalog.get(names["sem_seg"])
    _register_in_detectron2("shapes_d2_sem_seg", records, stuff_classes=metadata.stuff_classes, ignore_label=255)
    ours = SemSegEvaluator(names["sem_seg"], distributed=False)
    theirs = d2_evaluation.SemSegEvaluator("shapes_d2_sem_seg", distributed=False)
    theirs.reset()
    for k, record in enumerate(records):
        labels = torch.as_tensor(np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.int64))
        labels[:, : k % 4] = 255 if k % 2 else 0  # ignored strips, or a wrong class
        pred = torch.roll(labels.clamp(max=4), k % 3, 0)
        output = {"sem_seg": torch.nn.functional.one_hot(pred, 5).permute(2, 0, 1).float()}
        inputs = [{"file_name": record["file_name"]}]
        ours.process(inputs, [output])
        theirs.process(inputs, [output])
    mine, reference = ours.evaluate()["sem_seg"], theirs.evaluate()["sem_seg"]
    for name in ("mIoU", "fwIoU", "mACC", "pACC", "IoU-circle", "ACC-ring"):
        assert mine[name] == pytest.approx(reference[name], abs=1e-9), name


def test_voc_ap_equals_detectron2s(shapes_dir):
    names = register_shapes_formats("shapes_d2", str(shapes_dir))
    metadata = MetadataCatalog.get(names["voc"])
    records = DatasetCatalog.get(names["voc"])
    for year in (2007, 2012):
        d2_name = f"shapes_d2_voc_{year}"
        _register_in_detectron2(
            d2_name, records, dirname=metadata.dirname, split="val", year=year, thing_classes=metadata.thing_classes
        )
        MetadataCatalog.get(f"shapes_voc_{year}").set(
            dirname=metadata.dirname, split="val", year=year, thing_classes=list(metadata.thing_classes)
        )
        ours = PascalVOCDetectionEvaluator(f"shapes_voc_{year}", distributed=False)
        theirs = d2_evaluation.PascalVOCDetectionEvaluator(d2_name)
        theirs.reset()
        score = 0.999
        for k, record in enumerate(records):
            anns = record["annotations"][k % 2 :]
            boxes = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns])
            boxes = boxes.reshape(-1, 4) + torch.tensor(
                [k % 3, 0, k % 3, 1]
            )  # integer shifts: exact in D2's text files
            scores = torch.tensor([score - 0.007 * i for i in range(len(anns))])  # distinct at 3 decimals
            score -= 0.007 * len(anns)
            classes = [(a["category_id"] + 1) % 4 if k % 5 == 4 else a["category_id"] for a in anns]
            for module, library in ((Instances, Boxes), (d2_structures.Instances, d2_structures.Boxes)):
                instances = module((record["height"], record["width"]))
                instances.pred_boxes = library(boxes.float())
                instances.scores = scores
                instances.pred_classes = torch.tensor(classes)
                (ours if module is Instances else theirs).process([record], [{"instances": instances}])
        mine, reference = ours.evaluate()["bbox"], theirs.evaluate()["bbox"]
        assert 0 < reference["AP50"] < 100
        for name in ("AP", "AP50", "AP75"):
            assert mine[name] == pytest.approx(reference[name], abs=1e-9), (year, name)
