"""The semantic, panoptic, LVIS and VOC evaluators give on two ranks, each with half the images,
what they give in one process (synthetic shapes formats, imperfect predictions)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from detlib.data import DatasetCatalog
from detlib.data.datasets import ShapesSpec
from detlib.data.datasets.coco_panoptic import rgb2id
from detlib.data.datasets.shapes_formats import register_shapes_formats, write_shapes_formats
from detlib.engine import launch
from detlib.evaluation import COCOPanopticEvaluator, LVISEvaluator, PascalVOCDetectionEvaluator, SemSegEvaluator
from detlib.structures import Boxes, BoxMode, Instances

_PREFIX = "shapes_two_ranks"


def _semantic(record: dict, k: int) -> dict:
    labels = torch.as_tensor(np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.int64))
    return {"sem_seg": torch.nn.functional.one_hot(torch.roll(labels, k % 3, 1), 5).permute(2, 0, 1).float()}


def _panoptic(record: dict, k: int) -> dict:
    ids = torch.as_tensor(rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]))))
    info = [{"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]} for s in record["segments_info"]]
    if k % 2 and len(info) > 1:  # a missed object: a FN, its pixels VOID
        ids[ids == info[0]["id"]] = 0
        info = info[1:]
    return {"panoptic_seg": (ids, info)}


def _boxes(record: dict, k: int) -> dict:
    anns = record["annotations"][k % 2 :]
    instances = Instances((record["height"], record["width"]))
    boxes = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]).reshape(-1, 4)
    instances.pred_boxes = Boxes(boxes.float() + (k % 3))
    instances.scores = torch.linspace(0.9, 0.4, len(anns)) - 0.01 * k
    instances.pred_classes = torch.tensor(
        [(a["category_id"] + k) % 4 if k % 4 == 3 else a["category_id"] for a in anns]
    )
    return {"instances": instances}


def _run_all(directory: str, rank: int, world: int) -> dict:
    names = register_shapes_formats(_PREFIX, directory)
    jobs = [
        ("sem_seg", lambda: SemSegEvaluator(names["sem_seg"]), _semantic),
        ("panoptic", lambda: COCOPanopticEvaluator(names["panoptic"]), _panoptic),
        ("lvis", lambda: LVISEvaluator(names["lvis"], tasks=("bbox",)), _boxes),
        ("voc", lambda: PascalVOCDetectionEvaluator(names["voc"]), _boxes),
    ]
    results = {}
    for kind, build, predict in jobs:
        evaluator = build()
        records = DatasetCatalog.get(names[kind])
        for k in range(rank, len(records), world):
            evaluator.process([records[k]], [predict(records[k], k)])
        results[kind] = evaluator.evaluate()
    return results


def _two_ranks(directory: str, result_file: str) -> None:
    from detlib.utils import comm

    results = _run_all(directory, comm.get_rank(), comm.get_world_size())
    with open(f"{result_file}.{comm.get_rank()}", "w") as f:
        json.dump(results, f)


def test_two_ranks_equal_one_process(tmp_path):
    write_shapes_formats(ShapesSpec(num_images=8, seed=5, image_size=(64, 64)), str(tmp_path / "data"))
    expected = _run_all(str(tmp_path / "data"), 0, 1)
    assert 0 < expected["panoptic"]["panoptic_seg"]["PQ"] < 100 and 0 < expected["voc"]["bbox"]["AP"] < 100
    result_file = str(tmp_path / "metrics")
    launch(_two_ranks, num_gpus_per_machine=2, args=(str(tmp_path / "data"), result_file))
    assert json.load(open(f"{result_file}.1")) == {"sem_seg": None, "panoptic": None, "lvis": None, "voc": None}
    on_main = json.load(open(f"{result_file}.0"))
    for kind, tasks in expected.items():
        for task, metrics in tasks.items():
            for name, value in metrics.items():
                got = on_main[kind][task][name]
                assert (math.isnan(value) and math.isnan(got)) or got == pytest.approx(value, abs=1e-9), (kind, name)
