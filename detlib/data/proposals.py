"""
Precomputed proposals (`MODEL.LOAD_PROPOSALS`, `DATASETS.PROPOSAL_FILES_*`): read from Detectron2's proposal files
into the dataset records, then transformed with their image into the model input's `proposals`.

A proposal file is a pickle of a dict with, per image, parallel entries: `ids` (or Detectron's `indexes`), the
image ids; `boxes`, an N_i x 4 array each; `objectness_logits` (or Detectron's `scores`), N_i each; and optionally
`bbox_mode`, a `BoxMode` value (default XYXY_ABS). It is read with the restricted unpickler: NumPy arrays and plain
containers only, no code.
"""

import logging
from typing import Dict, List

import numpy as np
import torch

from detlib.checkpoint.download import cached_path
from detlib.checkpoint.safe_readers import read_pickle
from detlib.structures import Boxes, BoxMode, Instances

from . import transforms as T

__all__ = ["load_proposals_into_dataset", "transform_proposals"]

logger = logging.getLogger(__name__)

# Detectron's names for two of the keys.
_RENAMED_KEYS = {"indexes": "ids", "scores": "objectness_logits"}


def _read_proposal_file(proposal_file: str) -> Dict:
    proposals = read_pickle(cached_path(proposal_file))
    if not isinstance(proposals, dict):
        raise ValueError(f"Proposal file {proposal_file}: expected a dict, got {type(proposals).__name__}")
    proposals = {_RENAMED_KEYS.get(key, key): value for key, value in proposals.items()}
    for key in ("ids", "boxes", "objectness_logits"):
        if key not in proposals:
            raise ValueError(f"Proposal file {proposal_file} has no '{key}'; its keys are {sorted(proposals)}")
    lengths = {key: len(proposals[key]) for key in ("ids", "boxes", "objectness_logits")}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"Proposal file {proposal_file}: 'ids', 'boxes' and 'objectness_logits' differ in length {lengths}"
        )
    return proposals


def load_proposals_into_dataset(dataset_dicts: List[dict], proposal_file: str) -> List[dict]:
    """
    Add each record's proposals from `proposal_file` (a path or URL): `proposal_boxes` (N x 4),
    `proposal_objectness_logits` (N), both sorted by decreasing logit, and `proposal_bbox_mode`. Records are
    matched by `image_id`; a record whose image has no proposals in the file is an error naming both.
    """
    logger.info("Loading proposals from %s", proposal_file)
    proposals = _read_proposal_file(proposal_file)
    wanted = {str(record["image_id"]) for record in dataset_dicts}
    index_of = {str(image_id): i for i, image_id in enumerate(proposals["ids"]) if str(image_id) in wanted}
    bbox_mode = BoxMode(proposals.get("bbox_mode", BoxMode.XYXY_ABS))
    for record in dataset_dicts:
        image_id = str(record["image_id"])
        if image_id not in index_of:
            raise ValueError(
                f"Proposal file {proposal_file} has no proposals for image id {image_id} ({record.get('file_name')})"
            )
        i = index_of[image_id]
        boxes = np.asarray(proposals["boxes"][i], dtype=np.float32).reshape(-1, 4)
        logits = np.asarray(proposals["objectness_logits"][i], dtype=np.float32).reshape(-1)
        if len(boxes) != len(logits):
            raise ValueError(
                f"Proposal file {proposal_file}, image id {image_id}: {len(boxes)} boxes but {len(logits)} objectness_logits"
            )
        order = np.argsort(-logits, kind="stable")
        record["proposal_boxes"] = boxes[order]
        record["proposal_objectness_logits"] = logits[order]
        record["proposal_bbox_mode"] = bbox_mode
    return dataset_dicts


def transform_proposals(
    dataset_dict: dict, image_shape, transforms: T.TransformList, *, proposal_topk: int, min_box_size: float = 0
) -> None:
    """
    Move a record's proposals into `dataset_dict["proposals"]`: `Instances(proposal_boxes, objectness_logits)` in
    the transformed image's pixels, clipped to it, without boxes whose side is at most `min_box_size`, at most
    `proposal_topk` of them (the best, as the record keeps them sorted). Does nothing for a record without them.
    """
    if "proposal_boxes" not in dataset_dict:
        return
    boxes = BoxMode.convert(
        dataset_dict.pop("proposal_boxes"), dataset_dict.pop("proposal_bbox_mode"), BoxMode.XYXY_ABS
    )
    boxes = Boxes(torch.as_tensor(transforms.apply_box(np.asarray(boxes)), dtype=torch.float32))
    logits = torch.as_tensor(np.asarray(dataset_dict.pop("proposal_objectness_logits"), dtype=np.float32))
    boxes.clip(tuple(image_shape))
    keep = boxes.nonempty(threshold=min_box_size)
    proposals = Instances(tuple(image_shape))
    proposals.proposal_boxes = boxes[keep][:proposal_topk]
    proposals.objectness_logits = logits[keep][:proposal_topk]
    dataset_dict["proposals"] = proposals
