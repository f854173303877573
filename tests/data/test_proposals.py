"""Precomputed proposals: read from a Detectron-style proposal file without running code, transformed with the
image by the mapper, and delivered by the loaders that MODEL.LOAD_PROPOSALS configures."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from detlib.checkpoint import UnsafeCheckpointError
from detlib.config import get_cfg
from detlib.data import DatasetCatalog, DatasetMapper, build_detection_test_loader
from detlib.data import transforms as T
from detlib.data.proposals import load_proposals_into_dataset

BOXES = {
    7: np.array([[10, 20, 30, 40], [0, 0, 50, 60], [40, 10, 45, 10]], dtype=np.float32),  # the last is empty
    9: np.array([[5, 5, 15, 25]], dtype=np.float32),
}
LOGITS = {7: np.array([0.1, 2.0, 1.0], dtype=np.float32), 9: np.array([-1.0], dtype=np.float32)}


def _records(tmp_path):
    records = []
    for image_id, (h, w) in ((7, (60, 80)), (9, (40, 40))):
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(path)
        records.append({"file_name": str(path), "image_id": image_id, "height": h, "width": w})
    return records


def _proposal_file(tmp_path, **extra):
    # Detectron's names ("indexes", "scores"), an extra image the dataset does not have, and int64 ids.
    content = {
        "indexes": [np.int64(3), np.int64(9), np.int64(7)],
        "boxes": [np.zeros((1, 4), np.float32), BOXES[9], BOXES[7]],
        "scores": [np.zeros(1, np.float32), LOGITS[9], LOGITS[7]],
        **extra,
    }
    path = tmp_path / "proposals.pkl"
    path.write_bytes(pickle.dumps(content, protocol=2))
    return str(path)


def test_records_get_their_proposals_sorted_by_logit(tmp_path):
    records = load_proposals_into_dataset(_records(tmp_path), _proposal_file(tmp_path))
    np.testing.assert_array_equal(records[0]["proposal_boxes"], BOXES[7][[1, 2, 0]])
    np.testing.assert_array_equal(records[0]["proposal_objectness_logits"], LOGITS[7][[1, 2, 0]])
    np.testing.assert_array_equal(records[1]["proposal_boxes"], BOXES[9])


def test_mapper_transforms_clips_filters_and_keeps_the_top_k(tmp_path):
    (record, _) = load_proposals_into_dataset(_records(tmp_path), _proposal_file(tmp_path))
    # 60 x 80 -> 30 x 40, then flipped: x -> 40 - x.
    augs = [T.ResizeShortestEdge(30, 1000, "choice"), T.RandomFlip(1.0)]
    mapper = DatasetMapper(False, augmentations=augs, image_format="BGR", precomputed_proposal_topk=2)
    out = mapper(record)
    proposals = out["proposals"]
    assert proposals.image_size == (30, 40) and "proposal_boxes" not in out
    # Best first: [0, 0, 50, 60] halved to [0, 0, 25, 30], flipped to [15, 0, 40, 30]; the empty box is dropped,
    # so the second is [10, 20, 30, 40] -> [5, 10, 15, 20] -> [25, 10, 35, 20].
    torch.testing.assert_close(proposals.proposal_boxes.tensor, torch.tensor([[15.0, 0, 40, 30], [25, 10, 35, 20]]))
    torch.testing.assert_close(proposals.objectness_logits, torch.tensor([2.0, 0.1]))


def test_a_proposal_file_that_names_code_is_refused(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.getcwd, ())

    path = _proposal_file(tmp_path, bbox_mode=RunsCode())
    with pytest.raises(UnsafeCheckpointError, match="posix.getcwd"):
        load_proposals_into_dataset(_records(tmp_path), path)


def test_missing_image_and_key_are_named(tmp_path):
    records = _records(tmp_path) + [{"file_name": "x.png", "image_id": 11, "height": 1, "width": 1}]
    with pytest.raises(ValueError, match="no proposals for image id 11"):
        load_proposals_into_dataset(records, _proposal_file(tmp_path))
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"ids": [7], "boxes": [BOXES[7]]}))
    with pytest.raises(ValueError, match="bad.pkl has no 'objectness_logits'"):
        load_proposals_into_dataset(_records(tmp_path), str(tmp_path / "bad.pkl"))


def test_test_loader_reads_the_proposal_file_of_its_dataset(tmp_path):
    records = _records(tmp_path)
    DatasetCatalog.register("proposal_test_set", lambda: [dict(r) for r in records])
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.LOAD_PROPOSALS", True, "DATASETS.TEST", ("other", "proposal_test_set")])
    cfg.merge_from_list(["DATASETS.PROPOSAL_FILES_TEST", ("unused.pkl", _proposal_file(tmp_path))])
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", 0, "DATALOADER.NUM_WORKERS", 0])
    cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1
    batches = list(build_detection_test_loader(cfg, "proposal_test_set"))
    proposals = [batch[0]["proposals"] for batch in batches]
    torch.testing.assert_close(proposals[0].proposal_boxes.tensor, torch.from_numpy(BOXES[7][[1]]))
    torch.testing.assert_close(proposals[1].proposal_boxes.tensor, torch.from_numpy(BOXES[9]))
