"""
LVISEvaluator against the `lvis` package (0.5.3, the reference) on real LVIS v0.5 annotations
(../shared/realdata/lvis_val_100.json) with predictions derived from them: jittered true boxes and
masks, wrong classes, false positives in negative, not-exhaustive and unevaluated categories, and
more than 300 detections on some images. Without `lvis`, the numbers it gave (recorded in
data/lvis_val_100_reference.json by running this file as a script) stand in for it.
"""

import copy
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detlib.data import MetadataCatalog
from detlib.data.datasets import load_lvis_json, register_lvis_instances
from detlib.evaluation import LVISEvaluator
from detlib.evaluation.lvis_backend import evaluate_predictions_on_lvis, limit_detections_per_image, load_lvis_gt
from detlib.structures import Boxes, Instances

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("DETLIB_SHARED_DIR", REPO / ".." / "shared"))
LVIS_JSON = SHARED / "realdata" / "lvis_val_100.json"
REFERENCE = Path(__file__).parent / "data" / "lvis_val_100_reference.json"


def _require_lvis_json() -> Path:
    if not LVIS_JSON.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{LVIS_JSON} is missing; CI must provide ../shared", pytrace=False)
        pytest.skip(f"the real LVIS annotations are not at {LVIS_JSON}")
    return LVIS_JSON


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def make_predictions(gt: dict, seed: int = 0) -> List[dict]:
    """LVIS result dicts (bbox and RLE segmentation) derived from the ground truth `gt`."""
    rng = np.random.default_rng(seed)
    images = {image["id"]: image for image in gt["images"]}
    category_ids = sorted(c["id"] for c in gt["categories"])
    results = []
    for ann in gt["annotations"]:
        image = images[ann["image_id"]]
        h, w = image["height"], image["width"]
        mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(ann["segmentation"], h, w)))
        for k in range(3):  # a near-perfect, a rough and a poor copy of each object
            x, y, bw, bh = ann["bbox"]
            jitter = rng.normal(0, 0.02 + 0.1 * k, 4)
            box = [x + jitter[0] * bw, y + jitter[1] * bh, bw * (1 + jitter[2]), bh * (1 + jitter[3])]
            shifted = np.roll(mask, int(rng.integers(-3 * k, 3 * k + 1)), axis=1)
            category = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(category_ids))
            results.append(
                {"image_id": ann["image_id"], "category_id": category, "bbox": box, "score": float(rng.random())}
                | {"segmentation": _rle(shifted)}
            )
    for image in gt["images"]:
        h, w = image["height"], image["width"]
        federated = list(image["neg_category_ids"]) + list(image["not_exhaustive_category_ids"])
        for _ in range(350 if rng.random() < 0.3 else 30):  # > 300 on about a third of the images
            if federated and rng.random() < 0.6:
                category = int(rng.choice(federated))
            else:
                category = int(rng.choice(category_ids))  # mostly neither annotated nor negative: not evaluated
            x, y = rng.random() * w * 0.8, rng.random() * h * 0.8
            bw, bh = rng.random() * (w - x) + 1, rng.random() * (h - y) + 1
            mask = np.zeros((h, w), np.uint8)
            mask[int(y) : int(y + bh), int(x) : int(x + bw)] = 1
            results.append(
                {"image_id": image["id"], "category_id": category, "bbox": [x, y, bw, bh], "score": float(rng.random())}
                | {"segmentation": _rle(mask)}
            )
    return results


def lvis_reference(json_file: Path, results: List[dict]) -> Dict[str, Dict[str, float]]:
    """The `lvis` package's metrics (fractions) for bbox and segm."""
    np.float = float  # lvis 0.5.3 still uses the alias NumPy 2 removed
    from lvis import LVIS, LVISEval, LVISResults

    reference = {}
    gt = LVIS(str(json_file))
    for task in ("bbox", "segm"):
        task_results = copy.deepcopy(results)
        if task == "segm":
            for r in task_results:
                r.pop("bbox")
        evaluation = LVISEval(gt, LVISResults(gt, task_results, max_dets=300), task)
        evaluation.run()
        reference[task] = {k: float(v) for k, v in evaluation.get_results().items()}
    return reference


def _by_image(results: List[dict]) -> Dict[int, List[dict]]:
    grouped: Dict[int, List[dict]] = {}
    for r in results:
        grouped.setdefault(r["image_id"], []).append(r)
    return grouped


@pytest.fixture(scope="module")
def lvis_case():
    json_file = _require_lvis_json()
    gt = json.loads(json_file.read_text())
    return json_file, gt, make_predictions(gt)


@pytest.fixture(scope="module")
def reference(lvis_case):
    json_file, _, results = lvis_case
    try:
        import lvis  # noqa: F401
    except ImportError:
        return json.loads(REFERENCE.read_text())
    return lvis_reference(json_file, results)


def _assert_equal_to_lvis(ours: Dict[str, float], expected: Dict[str, float]) -> None:
    assert set(expected) <= set(ours)
    for name, value in expected.items():
        if value == -1:  # lvis' "no ground truth"
            assert math.isnan(ours[name]), name
        else:
            assert ours[name] / 100 == pytest.approx(value, abs=1e-6), name


def test_recorded_reference_is_what_lvis_computes(reference):
    pytest.importorskip("lvis")  # with lvis, `reference` holds its numbers computed now
    recorded = json.loads(REFERENCE.read_text())
    assert recorded.keys() == reference.keys()
    for task, metrics in recorded.items():
        assert metrics == pytest.approx(reference[task], abs=1e-12), task


def test_federated_lvis_metrics_equal_the_lvis_package(lvis_case, reference):
    json_file, _, results = lvis_case
    gt = load_lvis_gt(str(json_file))
    limited = [r for rs in _by_image(results).values() for r in limit_detections_per_image(rs, 300)]
    assert len(limited) < len(results)  # the 300 limit is exercised
    for task in ("bbox", "segm"):
        ours = evaluate_predictions_on_lvis(gt, limited, task, max_dets=300)
        _assert_equal_to_lvis(ours, reference[task])
    # the case exercises every frequency group and is not trivially perfect or empty
    assert 0 < reference["bbox"]["AP"] < 0.9 and all(reference["segm"][f"AP{g}"] > -1 for g in "rcf")


def test_evaluator_from_model_outputs_equals_the_lvis_package(lvis_case, reference, tmp_path):
    """The whole path: Instances with contiguous classes -> process (top 300) -> evaluate."""
    json_file, gt, results = lvis_case
    register_lvis_instances("lvis_val_100_test", {}, str(json_file), str(tmp_path))
    assert MetadataCatalog.get("lvis_val_100_test").evaluator_type == "lvis"
    evaluator = LVISEvaluator("lvis_val_100_test", tasks=("bbox",), output_dir=str(tmp_path), distributed=False)
    evaluator.reset()
    grouped = _by_image(results)
    for image in gt["images"]:  # images without predictions are still evaluated
        rs = grouped.get(image["id"], [])
        instances = Instances((image["height"], image["width"]))
        xywh = torch.tensor([r["bbox"] for r in rs], dtype=torch.float64).reshape(-1, 4)
        instances.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
        instances.scores = torch.tensor([r["score"] for r in rs], dtype=torch.float64)
        instances.pred_classes = torch.tensor([r["category_id"] - 1 for r in rs], dtype=torch.int64)
        evaluator.process([{"image_id": image["id"]}], [{"instances": instances}])
    ours = evaluator.evaluate()
    _assert_equal_to_lvis(ours["bbox"], reference["bbox"])
    written = json.loads((tmp_path / "lvis_instances_results.json").read_text())
    assert max(len(rs) for rs in _by_image(written).values()) == 300


def test_loader_keeps_the_federated_fields_and_names_bad_records(lvis_case, tmp_path):
    json_file, gt, _ = lvis_case
    records = load_lvis_json(str(json_file), "/images/", "lvis_loader_test")
    assert len(records) == 100 and sum(len(r["annotations"]) for r in records) == len(gt["annotations"])
    by_id = {r["image_id"]: r for r in records}
    for image in gt["images"]:
        record = by_id[image["id"]]
        assert record["neg_category_ids"] == image["neg_category_ids"]
        assert record["not_exhaustive_category_ids"] == image["not_exhaustive_category_ids"]
        split, name = image["coco_url"].split("/")[-2:]
        assert record["file_name"] == os.path.join("/images/", split, name)
    first = gt["annotations"][0]
    ann = next(a for a in by_id[first["image_id"]]["annotations"] if a["bbox"] == first["bbox"])
    assert ann["category_id"] == first["category_id"] - 1
    assert len(MetadataCatalog.get("lvis_loader_test").thing_classes) == 1230

    bad = copy.deepcopy(gt)
    bad["annotations"][5]["category_id"] = 5000
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=rf"bad.json, annotation id {bad['annotations'][5]['id']}: .*'category_id'"):
        load_lvis_json(str(path), "")
    del bad["annotations"][5]["category_id"], bad["images"][3]["height"]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad.json, images\[3\]: field 'height' is missing"):
        load_lvis_json(str(path), "")


if __name__ == "__main__":
    # Records the lvis package's numbers for CI machines without it: python tests/evaluation/test_lvis_evaluation.py
    gt_json = json.loads(LVIS_JSON.read_text())
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(lvis_reference(LVIS_JSON, make_predictions(gt_json)), indent=1) + "\n")
    sys.exit(0)
