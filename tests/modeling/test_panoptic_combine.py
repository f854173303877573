"""The panoptic combine step on small cases worked out by hand."""

import torch

from detlib.modeling import combine_semantic_and_instance_outputs


def _grid(rows):
    return torch.tensor([[int(c) for c in row] for row in rows])


def _combine(masks, scores, classes, semantic, overlap=0.5, stuff_area=3, score_thresh=0.5):
    return combine_semantic_and_instance_outputs(
        torch.stack([_grid(m).bool() for m in masks]),
        torch.tensor(scores),
        torch.tensor(classes),
        _grid(semantic),
        overlap,
        stuff_area,
        score_thresh,
    )


SEMANTIC = ["000111", "000111", "222111", "222111"]


def test_instances_best_first_then_stuff_in_free_pixels():
    # Instance 1 (the better score) is placed first although listed second; instance 0 overlaps it on 1 of its 6
    # pixels (1/6 <= 0.5): it keeps the 5 free ones. Stuff class 1 keeps its 12 pixels minus the 3 instance 0
    # took; class 2 its 6 pixels minus the 1 instance 0 took; class 0 (things) makes no segment.
    masks = [["001100", "001100", "001100", "000000"], ["110000", "111000", "000000", "000000"]]
    ids, segments = _combine(masks, [0.75, 0.875], [3, 1], SEMANTIC)  # exact in float32
    assert ids.dtype == torch.int32
    assert ids.tolist() == _grid(["112233", "111233", "442233", "444333"]).tolist()
    assert segments == [
        {"id": 1, "isthing": True, "score": 0.875, "category_id": 1, "instance_id": 1},
        {"id": 2, "isthing": True, "score": 0.75, "category_id": 3, "instance_id": 0},
        {"id": 3, "isthing": False, "category_id": 1, "area": 9},
        {"id": 4, "isthing": False, "category_id": 2, "area": 5},
    ]


def test_overlapping_low_score_and_empty_instances_are_dropped():
    # Instance 1 lies on instance 0 for 3 of its 4 pixels (> 0.5): dropped. Instance 2 is empty. Instance 3
    # scores below the threshold, and so does everything after it (it stops there).
    masks = [
        ["111000", "111000", "000000", "000000"],
        ["011000", "010000", "010000", "000000"],
        ["000000", "000000", "000000", "000000"],
        ["000000", "000000", "000011", "000011"],
    ]
    ids, segments = _combine(masks, [0.9, 0.8, 0.7, 0.4], [0, 1, 2, 2], SEMANTIC, stuff_area=7)
    # Stuff: class 1 has 12 free pixels (kept, >= 7), class 2 has 6 (dropped).
    assert ids.tolist() == _grid(["111222", "111222", "000222", "000222"]).tolist()
    assert [(s["id"], s["isthing"], s["category_id"]) for s in segments] == [(1, True, 0), (2, False, 1)]
    assert segments[1]["area"] == 12


def test_no_instance_gives_stuff_only():
    ids, segments = combine_semantic_and_instance_outputs(
        torch.zeros(0, 4, 6, dtype=torch.bool), torch.zeros(0), torch.zeros(0, dtype=torch.int64), _grid(SEMANTIC),
        0.5, 0, 0.5,
    )  # fmt: skip
    assert ids.tolist() == _grid(["000111", "000111", "222111", "222111"]).tolist()
    assert [s["category_id"] for s in segments] == [1, 2]
