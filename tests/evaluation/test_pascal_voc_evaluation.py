"""PascalVOCDetectionEvaluator and the VOC XML loader on a hand-made split, scored by hand with the devkit's rules."""

import numpy as np
import pytest
import torch

from detlib.data import DatasetCatalog
from detlib.data.bad_samples import BadSampleError
from detlib.data.datasets import load_voc_instances, register_pascal_voc
from detlib.evaluation import PascalVOCDetectionEvaluator
from detlib.evaluation.pascal_voc_evaluation import voc_ap
from detlib.structures import Boxes, BoxMode, Instances

# (name, xmin, ymin, xmax, ymax, difficult) in the files' 1-based inclusive pixels; each box is 10 x 10 pixels.
OBJECTS = {
    "img1": [("a", 1, 1, 10, 10, 0), ("a", 41, 1, 50, 10, 1)],
    "img2": [("a", 1, 1, 10, 10, 0), ("b", 21, 1, 30, 10, 0)],
}
# (image, class, score, model box XYXY continuous = devkit box with xmin, ymin - 1)
DETECTIONS = [
    ("img1", 0, 0.9, (0, 0, 10, 10)),  # a: TP at every threshold (IoU 1)
    ("img1", 0, 0.8, (0, 0, 10, 10)),  # a: duplicate -> FP
    ("img1", 0, 0.7, (40, 0, 50, 10)),  # a: on the difficult box -> neither TP nor FP
    ("img2", 0, 0.6, (0, 0, 10, 4)),  # a: IoU 0.4 -> FP
    ("img2", 0, 0.5, (0, 0, 10, 7)),  # a: IoU 0.7 -> TP up to threshold 0.65, FP from 0.70
    ("img2", 1, 0.4, (20, 0, 30, 6)),  # b: IoU 0.6 -> TP at 0.50 and 0.55 only (0.6 is not > 0.6)
]


def _write_split(root, objects=OBJECTS):
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Main/test.txt").write_text("\n".join(objects) + "\n")
    for file_id, objs in objects.items():
        body = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for n, x0, y0, x1, y1, d in objs
        )
        (root / "Annotations" / f"{file_id}.xml").write_text(
            f"<annotation><size><width>60</width><height>20</height></size>{body}</annotation>"
        )


def _evaluate(root, name, year):
    register_pascal_voc(name, str(root), "test", year, class_names=("a", "b"))
    evaluator = PascalVOCDetectionEvaluator(name, distributed=False)
    evaluator.reset()
    for image_id in OBJECTS:
        dets = [d for d in DETECTIONS if d[0] == image_id]
        instances = Instances((20, 60))
        instances.pred_boxes = Boxes(torch.tensor([d[3] for d in dets], dtype=torch.float32))
        instances.scores = torch.tensor([d[2] for d in dets])
        instances.pred_classes = torch.tensor([d[1] for d in dets])
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


def test_voc2007_eleven_point_metric(tmp_path):
    _write_split(tmp_path)
    r = _evaluate(tmp_path, "voc_hand_2007", 2007)
    # Class a, thresholds 0.50-0.65: TP FP - FP TP over 2 positives -> recall .5 .5 .5 1, precision
    # 1 .5 1/3 .5 -> 11-point AP (6 x 1 + 5 x .5) / 11; thresholds 0.70-0.95: only the first TP -> 6 / 11.
    # Class b: AP 1 at 0.50 and 0.55, 0 above.
    a = [8.5 / 11] * 4 + [6 / 11] * 6
    b = [1.0] * 2 + [0.0] * 8
    assert r["AP50-a"] == pytest.approx(100 * 8.5 / 11) and r["AP50-b"] == pytest.approx(100)
    assert r["AP50"] == pytest.approx(100 * (a[0] + b[0]) / 2)
    assert r["AP75"] == pytest.approx(100 * (a[5] + b[5]) / 2)
    assert r["AP"] == pytest.approx(100 * (sum(a) + sum(b)) / 20)


def test_area_metric_for_other_years(tmp_path):
    _write_split(tmp_path)
    r = _evaluate(tmp_path, "voc_hand_2012", 2012)
    # Class a at 0.50-0.65: recall steps to .5 at precision 1 and to 1 at envelope .5 -> .75; above: .5.
    a = [0.75] * 4 + [0.5] * 6
    b = [1.0] * 2 + [0.0] * 8
    assert r["AP50"] == pytest.approx(100 * (0.75 + 1) / 2)
    assert r["AP"] == pytest.approx(100 * (sum(a) + sum(b)) / 20)


def test_voc_ap_of_known_curves():
    recall, precision = [0.5, 1.0], [1.0, 0.5]
    assert voc_ap(np.array(recall), np.array(precision), use_07_metric=False) == pytest.approx(0.75)
    assert voc_ap(np.array(recall), np.array(precision), use_07_metric=True) == pytest.approx((6 + 5 * 0.5) / 11)


def test_loader_reads_boxes_in_continuous_coordinates_and_names_bad_files(tmp_path):
    _write_split(tmp_path)
    register_pascal_voc("voc_loader_test", str(tmp_path), "test", 2012, class_names=("a", "b"))
    records = DatasetCatalog.get("voc_loader_test")
    assert [r["image_id"] for r in records] == ["img1", "img2"]
    assert records[0]["file_name"] == str(tmp_path / "JPEGImages" / "img1.jpg")
    assert (records[0]["height"], records[0]["width"]) == (20, 60)
    first = records[0]["annotations"][0]
    assert first["bbox"] == [0.0, 0.0, 10.0, 10.0] and first["bbox_mode"] == BoxMode.XYXY_ABS
    assert [a["difficult"] for a in records[0]["annotations"]] == [0, 1]
    _write_split(tmp_path, {"img3": [("zebra", 1, 1, 5, 5, 0)]})
    with pytest.raises(BadSampleError, match=r"img3.xml, object 0: class 'zebra' is not one of"):
        load_voc_instances(str(tmp_path), "test", ("a", "b"))
    (tmp_path / "Annotations" / "img3.xml").write_text("<annotation><size><width>4</width></size></annotation>")
    with pytest.raises(BadSampleError, match=r"img3.xml: element 'size/height' is missing"):
        load_voc_instances(str(tmp_path), "test", ("a", "b"))
