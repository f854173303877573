"""COCO result columns: what COCOEvaluator streams and evaluate() reads back gives exactly the result dicts that
instances_to_coco_json gives."""

import json

import pycocotools.mask as mask_util
import pytest
import torch

from detlib.evaluation.coco_columns import columns_to_results, decode_columns, encode_columns, instances_to_columns
from detlib.structures import Boxes, Instances


def _instances(num, masks, keypoints, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=generator, dtype=dtype) * 40
    boxes = torch.cat([xy, xy + 1 + torch.rand(num, 2, generator=generator, dtype=dtype) * 20], 1)
    instances = Instances((48, 64), pred_boxes=Boxes(boxes), scores=torch.rand(num, generator=generator, dtype=dtype))
    instances.pred_classes = torch.randint(0, 5, (num,), generator=generator)
    if masks:
        instances.pred_masks = torch.rand(num, 48, 64, generator=generator) < torch.rand(num, 1, 1, generator=generator)
    if keypoints:
        instances.pred_keypoints = torch.rand(num, 4, 3, generator=generator, dtype=dtype) * 40
    return instances


@pytest.mark.parametrize("masks,keypoints", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("num", [0, 1, 7])
def test_columns_read_back_give_the_same_results(masks, keypoints, num):
    columns = instances_to_columns(_instances(num, masks, keypoints))
    line = encode_columns(columns)
    assert "\n" not in line  # one line of a PredictionStream
    results = columns_to_results(5, decode_columns(line))
    assert results == columns_to_results(5, columns)
    # What the JSON result file holds parses back to the same values.
    assert json.loads(json.dumps(results)) == results
    assert len(results) == num


def test_columns_hold_coco_results():
    instances = _instances(6, masks=True, keypoints=True, dtype=torch.float64)
    results = columns_to_results(3, decode_columns(encode_columns(instances_to_columns(instances))))
    boxes = instances.pred_boxes.tensor
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    for k, result in enumerate(results):
        assert result["image_id"] == 3 and result["category_id"] == int(instances.pred_classes[k])
        # float64 scores and keypoints keep their precision
        assert result["bbox"] == xywh[k].tolist() and result["score"] == instances.scores[k].item()
        mask = instances.pred_masks[k].numpy()
        assert (mask_util.decode(result["segmentation"]) == mask).all()
        assert result["area"] == int(mask.sum()) and result["segmentation"]["size"] == [48, 64]
        keypoints = instances.pred_keypoints[k].clone()
        keypoints[:, :2] -= 0.5
        assert result["keypoints"] == keypoints.flatten().tolist()
