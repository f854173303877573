"""
PQ / SQ / RQ on two hand-made images with overlaps, a crowd region, VOID pixels, an IoU of exactly
0.5, a false positive mostly on VOID and a category that never appears. panopticapi is not on PyPI,
so the expected values are computed by hand from its published rules (module docstring of
detlib/evaluation/panoptic_quality.py).
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detlib.data.bad_samples import BadSampleError
from detlib.data.datasets import load_coco_panoptic_json, register_coco_panoptic
from detlib.evaluation import COCOPanopticEvaluator
from detlib.evaluation.panoptic_quality import id2rgb, pq_compute, rgb2id

CATEGORIES = [
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 2, "name": "b", "isthing": 1},
    {"id": 3, "name": "s", "isthing": 0},
    {"id": 4, "name": "c", "isthing": 1},  # never in ground truth or prediction: not averaged
]
THINGS = {1: 0, 2: 1, 4: 2}
STUFF = {3: 0}

# Image 1 (4 x 8). Ground truth: 1 = "a" (rows 0-1, cols 0-3), 2 = crowd "a" (rows 0-1, cols 4-7),
# 3 = "s" (rows 2-3, cols 0-5), VOID (rows 2-3, cols 6-7).
GT1 = np.array([[1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 2, 2, 2, 2], [3, 3, 3, 3, 3, 3, 0, 0], [3, 3, 3, 3, 3, 3, 0, 0]])
# Prediction: 10 "a" (7 px: 6 on gt 1, 1 on gt 3) matches gt 1 with IoU 6 / (7 + 8 - 6) = 2/3;
# 11 "a" (8 px, 6 on the crowd "a") is ignored; 12 "b" (6 px, 4 on VOID) is ignored;
# 13 "s" matches gt 3 with IoU 10 / 12; 14 "b" (1 px on gt 3) is a false positive.
PRED1 = np.array(
    [
        [10, 10, 10, 11, 11, 11, 11, 12],
        [10, 10, 10, 11, 11, 11, 11, 12],
        [10, 13, 13, 13, 13, 13, 12, 12],
        [14, 13, 13, 13, 13, 13, 12, 12],
    ]
)
SEGMENTS1 = {10: (1, True), 11: (1, True), 12: (2, True), 13: (3, False), 14: (2, True)}
# Image 2 (2 x 4). Ground truth: 5 = "a" (cols 0-1), 6 = "s" (cols 2-3). Prediction: 20 "a" covers
# half of gt 5 (IoU exactly 0.5: no match, so a FN and a FP); 21 "s" is a FP; 22 "s" matches gt 6 (IoU 1).
GT2 = np.array([[5, 5, 6, 6], [5, 5, 6, 6]])
PRED2 = np.array([[20, 20, 22, 22], [21, 21, 22, 22]])
SEGMENTS2 = {20: (1, True), 21: (3, False), 22: (3, False)}

# Per category over both images: a: IoU 2/3, TP 1, FP 1, FN 1; b: FP 1; s: IoU 10/12 + 1, TP 2, FP 1.
EXPECTED = {
    "PQ": (1 / 3 + 0 + 11 / 15) / 3,
    "SQ": (2 / 3 + 0 + 11 / 12) / 3,
    "RQ": (1 / 2 + 0 + 4 / 5) / 3,
    "PQ_th": (1 / 3 + 0) / 2,
    "SQ_th": (2 / 3 + 0) / 2,
    "RQ_th": (1 / 2 + 0) / 2,
    "PQ_st": 11 / 15,
    "SQ_st": 11 / 12,
    "RQ_st": 4 / 5,
    "PQ-a": 1 / 3,
    "SQ-a": 2 / 3,
    "RQ-a": 1 / 2,
    "PQ-b": 0.0,
    "PQ-s": 11 / 15,
}


def _gt_segments(ids: np.ndarray, crowd=()):
    cats = {1: 1, 2: 1, 3: 3, 5: 1, 6: 3}
    return [
        {"id": int(i), "category_id": cats[int(i)], "iscrowd": int(i in crowd), "area": int((ids == i).sum())}
        for i in np.unique(ids)
        if i != 0
    ]


@pytest.fixture
def panoptic_case(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt_anns, pred_anns = [], []
    for image_id, gt, pred, segments, crowd in ((1, GT1, PRED1, SEGMENTS1, (2,)), (2, GT2, PRED2, SEGMENTS2, ())):
        Image.fromarray(id2rgb(gt)).save(gt_dir / f"{image_id}.png")
        Image.fromarray(id2rgb(pred)).save(pred_dir / f"{image_id}.png")
        gt_anns.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": _gt_segments(gt, crowd)})
        pred_segments = [{"id": k, "category_id": c} for k, (c, _) in segments.items()]
        pred_anns.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": pred_segments})
    (tmp_path / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": CATEGORIES}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred_anns, "categories": CATEGORIES}))
    return tmp_path


def test_rgb_encoding_round_trips():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 256**3 - 1, 1000]])
    assert (rgb2id(id2rgb(ids)) == ids).all()
    assert id2rgb(np.array([[256 + 2]]))[0, 0].tolist() == [2, 1, 0]


def test_pq_compute_equals_the_hand_computed_values(panoptic_case):
    t = panoptic_case
    results = pq_compute(str(t / "gt.json"), str(t / "pred.json"), str(t / "gt"), str(t / "pred"))
    for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for metric in ("pq", "sq", "rq"):
            assert results[name][metric] == pytest.approx(EXPECTED[metric.upper() + suffix], abs=1e-12)
    assert (results["All"]["n"], results["Things"]["n"], results["Stuff"]["n"]) == (3, 2, 1)
    assert results["per_class"][4] == {"pq": None, "sq": None, "rq": None}


def test_evaluator_from_model_outputs_writes_coco_panoptic_predictions(panoptic_case, tmp_path):
    t = panoptic_case
    register_coco_panoptic(
        "panoptic_hand",
        {"thing_dataset_id_to_contiguous_id": THINGS, "stuff_dataset_id_to_contiguous_id": STUFF},
        str(t / "images"),
        str(t / "gt"),
        str(t / "gt.json"),
    )
    out = tmp_path / "out"
    evaluator = COCOPanopticEvaluator("panoptic_hand", output_dir=str(out), distributed=False)
    evaluator.reset()
    for image_id, pred, segments in ((1, PRED1, SEGMENTS1), (2, PRED2, SEGMENTS2)):
        info = [
            {"id": k, "category_id": (THINGS if isthing else STUFF)[c], "isthing": isthing, "score": 0.9}
            for k, (c, isthing) in segments.items()
        ]
        evaluator.process(
            [{"image_id": image_id, "file_name": f"/images/{image_id}.jpg"}],
            [{"panoptic_seg": (torch.as_tensor(pred, dtype=torch.int32), info)}],
        )
    results = evaluator.evaluate()["panoptic_seg"]
    for name, value in EXPECTED.items():
        assert results[name] == pytest.approx(100 * value, abs=1e-10), name
    assert "PQ-c" not in results
    # what it wrote is COCO panoptic: scored again from the files, the same numbers
    again = pq_compute(
        str(t / "gt.json"), str(out / "panoptic_predictions.json"), str(t / "gt"), str(out / "panoptic_predictions")
    )
    assert 100 * again["All"]["pq"] == pytest.approx(results["PQ"])


def test_label_divisor_outputs_are_converted(panoptic_case, tmp_path):
    """Outputs without segments_info: id = class * label_divisor + instance, -1 for VOID."""
    t = panoptic_case
    register_coco_panoptic(
        "panoptic_divisor",
        {"thing_dataset_id_to_contiguous_id": THINGS, "stuff_dataset_id_to_contiguous_id": {3: 3}},
        "",
        str(t / "gt"),
        str(t / "gt.json"),
    )
    evaluator = COCOPanopticEvaluator("panoptic_divisor", distributed=False)
    # image 2 with a perfect prediction: "a" instance 7 of class 0, stuff class 3
    ids = torch.tensor([[7, 7, 3000, 3000], [7, 7, 3000, 3000]])
    evaluator.process([{"image_id": 2, "file_name": "2.jpg"}], [{"panoptic_seg": (ids, None)}])
    evaluator.process([{"image_id": 1, "file_name": "1.jpg"}], [{"panoptic_seg": (torch.full((4, 8), -1), None)}])
    results = evaluator.evaluate()["panoptic_seg"]
    # a: TP 1 (IoU 1), FN 1 (image 1); s: TP 1, FN 1; the crowd and VOID of image 1 count nothing.
    assert results["PQ-a"] == pytest.approx(100 / 1.5) and results["PQ-s"] == pytest.approx(100 / 1.5)


def test_segments_missing_from_json_or_png_name_the_image(panoptic_case):
    t = panoptic_case
    pred = json.loads((t / "pred.json").read_text())
    pred["annotations"][1]["segments_info"].pop()  # segment 22 is still in the PNG
    (t / "pred.json").write_text(json.dumps(pred))
    with pytest.raises(BadSampleError, match=r"image 2 \(2.png\) \(prediction\): segment ids \[22\] are in the PNG"):
        pq_compute(str(t / "gt.json"), str(t / "pred.json"), str(t / "gt"), str(t / "pred"))
    gt = json.loads((t / "gt.json").read_text())
    gt["annotations"][0]["segments_info"].append({"id": 99, "category_id": 1, "iscrowd": 0, "area": 1})
    (t / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(BadSampleError, match=r"image 1 .*\(ground truth\): segment ids \[99\] are in 'segments_info'"):
        pq_compute(str(t / "gt.json"), str(t / "pred.json"), str(t / "gt"), str(t / "pred"))


def test_panoptic_loader_makes_category_ids_contiguous_and_names_unknown_ones(panoptic_case):
    t = panoptic_case
    meta = {"thing_dataset_id_to_contiguous_id": THINGS, "stuff_dataset_id_to_contiguous_id": STUFF}
    records = load_coco_panoptic_json(str(t / "gt.json"), "/img", str(t / "gt"), meta)
    assert [r["file_name"] for r in records] == ["/img/1.jpg", "/img/2.jpg"]
    assert records[0]["pan_seg_file_name"] == str(t / "gt" / "1.png")
    assert [(s["category_id"], s["isthing"]) for s in records[0]["segments_info"]] == [(0, True), (0, True), (0, False)]
    gt = json.loads((t / "gt.json").read_text())
    gt["annotations"][1]["segments_info"][0]["category_id"] = 77
    (t / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(
        BadSampleError, match=r"gt.json, annotations\[1\] \(image id 2\), segment id 5: field 'category_id' is 77"
    ):
        load_coco_panoptic_json(str(t / "gt.json"), "/img", str(t / "gt"), meta)
