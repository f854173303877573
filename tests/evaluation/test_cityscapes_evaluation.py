"""
The Cityscapes loaders on a two-image synthetic tree, and the Cityscapes evaluators wired to the
official cityscapesscripts (the reference itself): exact predictions score 100, damaged ones less.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from detlib.data import DatasetCatalog, MetadataCatalog
from detlib.data.datasets.builtin import register_all_cityscapes
from detlib.structures import Instances

pytest.importorskip("cityscapesscripts")
from detlib.evaluation.cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator  # noqa: E402

H, W = 64, 96
# label id, train id of the classes drawn: road, sky, person (thing 0), car (thing 2)
ROAD, SKY, PERSON, CAR = (7, 0), (23, 10), (24, 11), (26, 13)


def _image(k: int):
    """Instance ids (label id * 1000 + instance for things) of synthetic image k."""
    ids = np.full((H, W), ROAD[0], dtype=np.int32)
    ids[:20] = SKY[0]
    ids[25:45, 5 + k : 25 + k] = PERSON[0] * 1000
    ids[30:50, 40:60] = CAR[0] * 1000
    ids[30:50, 65 - k : 85 - k] = CAR[0] * 1000 + 1
    return ids


@pytest.fixture
def cityscapes_root(tmp_path):
    to_train = {ROAD[0]: ROAD[1], SKY[0]: SKY[1], PERSON[0]: PERSON[1], CAR[0]: CAR[1]}
    for k in range(2):
        stem = f"aachen_000000_00001{k}"
        (tmp_path / "cityscapes/leftImg8bit/val/aachen").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cityscapes/gtFine/val/aachen").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
            tmp_path / f"cityscapes/leftImg8bit/val/aachen/{stem}_leftImg8bit.png"
        )
        ids = _image(k)
        labels = np.where(ids >= 1000, ids // 1000, ids).astype(np.uint8)
        gt = tmp_path / "cityscapes/gtFine/val/aachen"
        Image.fromarray(ids.astype(np.uint16)).save(gt / f"{stem}_gtFine_instanceIds.png")  # 16-bit, as Cityscapes
        Image.fromarray(labels).save(gt / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(np.vectorize(to_train.get)(labels).astype(np.uint8)).save(
            gt / f"{stem}_gtFine_labelTrainIds.png"
        )
    for name in list(DatasetCatalog.list()):
        if name.startswith("cityscapes_"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_all_cityscapes(str(tmp_path))
    return tmp_path


def test_loaders_read_instances_and_semantic_labels(cityscapes_root):
    records = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
    assert [r["image_id"] for r in records] == ["aachen_000000_000010", "aachen_000000_000011"]
    anns = records[0]["annotations"]
    assert sorted(a["category_id"] for a in anns) == [0, 2, 2]  # person, car, car
    person = next(a for a in anns if a["category_id"] == 0)
    assert person["bbox"] == [5.0, 25.0, 25.0, 45.0] and person["iscrowd"] == 0
    semantic = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
    assert semantic[1]["sem_seg_file_name"].endswith("aachen_000000_000011_gtFine_labelTrainIds.png")


def _instances(ids: np.ndarray, drop_one: bool) -> Instances:
    values = [v for v in np.unique(ids) if v >= 1000][: -1 if drop_one else None]
    instances = Instances((H, W))
    instances.pred_masks = torch.stack([torch.as_tensor(ids == v) for v in values])
    instances.pred_classes = torch.tensor([0 if v // 1000 == PERSON[0] else 2 for v in values])
    instances.scores = torch.linspace(0.9, 0.6, len(values))
    return instances


def test_instance_evaluator_gives_100_AP_to_the_ground_truth(cityscapes_root):
    records = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
    for drop_one, perfect in ((False, True), (True, False)):
        evaluator = CityscapesInstanceEvaluator("cityscapes_fine_instance_seg_val")
        for k, record in enumerate(records):
            evaluator.process([record], [{"instances": _instances(_image(k), drop_one)}])
        ap = evaluator.evaluate()["segm"]["AP"]
        assert (ap == pytest.approx(100)) == perfect, (drop_one, ap)


def test_semantic_evaluator_gives_100_IoU_to_the_ground_truth(cityscapes_root):
    records = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
    for shift, perfect in ((0, True), (3, False)):
        evaluator = CityscapesSemSegEvaluator("cityscapes_fine_sem_seg_val")
        for record in records:
            train_ids = torch.as_tensor(np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.int64))
            scores = torch.nn.functional.one_hot(torch.roll(train_ids, shift, 0), 19).permute(2, 0, 1).float()
            evaluator.process([record], [{"sem_seg": scores}])
        iou = evaluator.evaluate()["sem_seg"]["IoU"]
        assert (iou == pytest.approx(100)) == perfect, (shift, iou)


def test_the_evaluator_type_picks_the_cityscapes_evaluators(cityscapes_root):
    from detlib.config import get_cfg
    from detlib.evaluation import build_evaluator

    cfg = get_cfg()
    assert type(build_evaluator(cfg, "cityscapes_fine_instance_seg_val")) is CityscapesInstanceEvaluator
    assert type(build_evaluator(cfg, "cityscapes_fine_sem_seg_val")) is CityscapesSemSegEvaluator
