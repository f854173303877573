"""
COCOEvaluator's "box_proposals" task (ProposalNetwork outputs) against pycocotools' COCOeval with
useCats=0 on the real COCO val2014 100-image annotations: the COCO API's fake detections plus
jittered copies of the ground truth, over 100 proposals on some images.
"""

import contextlib
import copy
import io
import json
import os
from pathlib import Path

import numpy as np
import pycocotools.coco
import pycocotools.cocoeval
import pytest
import torch

from detlib.data.datasets import register_coco_instances
from detlib.evaluation import COCOEvaluator
from detlib.structures import Boxes, Instances

REPO = Path(__file__).resolve().parents[2]
REALDATA = Path(os.environ.get("DETLIB_SHARED_DIR", REPO / ".." / "shared")) / "realdata"
GT_JSON = REALDATA / "instances_val2014_100.json"
FAKE_RESULTS = REALDATA / "instances_val2014_fakebbox100_results.json"


def _proposals(gt: dict) -> list:
    rng = np.random.default_rng(0)
    proposals = [{k: r[k] for k in ("image_id", "bbox", "score")} for r in json.loads(FAKE_RESULTS.read_text())]
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(int(rng.integers(0, 40))):
            j = rng.normal(0, 0.15, 4)
            proposals.append(
                {"image_id": ann["image_id"], "bbox": [x + j[0] * w, y + j[1] * h, w * np.exp(j[2]), h * np.exp(j[3])]}
                | {"score": float(rng.normal())}
            )
    return proposals


def _pycocotools_recall(gt_file: Path, proposals: list) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = pycocotools.coco.COCO(str(gt_file))
        dt = gt.loadRes([p | {"category_id": 1} for p in copy.deepcopy(proposals)])
        evaluation = pycocotools.cocoeval.COCOeval(gt, dt, "bbox")
        evaluation.params.useCats = 0
        evaluation.params.maxDets = [100, 1000]
        evaluation.evaluate()
        evaluation.accumulate()
    recall = evaluation.eval["recall"][:, 0]
    return {
        f"AR{area}@{limit}": 100 * float(np.mean(recall[:, a, m][recall[:, a, m] > -1]))
        for m, limit in enumerate((100, 1000))
        for a, area in enumerate(("", "s", "m", "l"))
    }


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_proposal_recall_equals_pycocotools_without_categories(use_fast_impl, tmp_path):
    if not (GT_JSON.is_file() and FAKE_RESULTS.is_file()):
        pytest.skip(f"the real COCO annotations are not in {REALDATA}")
    gt = json.loads(GT_JSON.read_text())
    proposals = _proposals(gt)
    per_image = {}
    for p in proposals:
        per_image.setdefault(p["image_id"], []).append(p)
    assert max(len(v) for v in per_image.values()) > 100  # AR@100 and AR@1000 differ

    register_coco_instances("coco_val2014_100_proposals", {}, str(GT_JSON), str(tmp_path))
    evaluator = COCOEvaluator("coco_val2014_100_proposals", distributed=False, use_fast_impl=use_fast_impl)
    evaluator.reset()
    for image in gt["images"]:
        ps = per_image.get(image["id"], [])
        xywh = torch.tensor([p["bbox"] for p in ps], dtype=torch.float64).reshape(-1, 4)
        instances = Instances((image["height"], image["width"]))
        instances.proposal_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
        instances.objectness_logits = torch.tensor([p["score"] for p in ps], dtype=torch.float64)
        evaluator.process([{"image_id": image["id"]}], [{"proposals": instances}])
    results = evaluator.evaluate()
    assert list(results) == ["box_proposals"]  # no instances: no AP tasks
    expected = _pycocotools_recall(GT_JSON, proposals)
    assert results["box_proposals"] == pytest.approx(expected, abs=1e-6)
    assert expected["AR@100"] < expected["AR@1000"]
