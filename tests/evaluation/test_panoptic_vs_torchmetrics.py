"""
Independent cross-check of detlib's panoptic quality (`pq_image_stats` + `pq_summary`, the rules of
panopticapi) against `torchmetrics.detection.PanopticQuality` on seeded synthetic images: overlapping
thing segments, unmatched segments on both sides, wrong categories, stuff and thing categories,
VOID pixels in the ground truth (some fully covered by a prediction, so that false positives lying
mostly on VOID are ignored) and two categories that never appear.

Compared: per image and per category the IoU sum, TP, FP and FN; over all images PQ / SQ / RQ
averaged over all, thing and stuff categories and per category, to 1e-6.

The two implementations differ in conventions that the synthetic data avoids on purpose:

* Crowd: torchmetrics has no `iscrowd`, so no ground-truth segment is a crowd here (detlib's crowd
  rules are checked by hand-computed cases in test_panoptic_evaluation.py).
* VOID in the prediction: torchmetrics removes the target pixels that the prediction leaves VOID
  from the union of the IoU and ignores an unmatched target lying mostly on prediction VOID;
  panopticapi (and detlib) do neither. Predictions here are VOID only on ground-truth VOID pixels,
  where both agree (no segment is involved).
* Stuff instances: torchmetrics resets the instance id of stuff categories, so several segments of
  one stuff category in an image would merge into one; panopticapi keeps them apart. Each image
  here has at most one segment per stuff category on each side.
* Categories with no TP, FP or FN: torchmetrics reports 0 for them per class, detlib None; both
  leave them out of the averages. Only categories that occur are compared per class.
"""

import numpy as np
import pytest
import torch

from detlib.evaluation.panoptic_quality import VOID, PQStat, pq_image_stats, pq_summary

tm_detection = pytest.importorskip("torchmetrics.detection")

THINGS = (1, 2, 3, 4)  # 4 never appears
STUFF = (10, 11, 12, 13)  # 13 never appears
CATEGORIES = {**{c: True for c in THINGS}, **{c: False for c in STUFF}}
H, W = 24, 32
NUM_IMAGES = 12


def _paint(ids, segments, rect, category, next_id):
    """Paints rectangle `rect` (y0, y1, x0, x1) with a new segment id; returns the next free id."""
    y0, y1, x0, x1 = rect
    ids[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = next_id
    segments[next_id] = category
    return next_id + 1


def _random_rect(rng, min_size=3, max_size=12):
    h, w = rng.integers(min_size, max_size + 1, size=2)
    y0, x0 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
    return [int(y0), int(y0 + h), int(x0), int(x0 + w)]


def _jitter(rng, rect, amount):
    y0, y1, x0, x1 = (int(v + rng.integers(-amount, amount + 1)) for v in rect)
    return [y0, max(y1, y0 + 1), x0, max(x1, x0 + 1)]


def _stuff_split(ids, segments, categories, column, next_id):
    next_id = _paint(ids, segments, (0, H, 0, column), categories[0], next_id)
    return _paint(ids, segments, (0, H, column, W), categories[1], next_id)


def _synthetic_pair(seed):
    """(gt ids, gt {id: category}, pred ids, pred {id: category}) of one image; id 0 is VOID."""
    rng = np.random.default_rng(seed)
    gt, gt_cat = np.zeros((H, W), np.int64), {}
    pred, pred_cat = np.zeros((H, W), np.int64), {}

    # Stuff: two categories split at a column; the prediction moves the split and sometimes swaps a
    # category for an unused stuff one (unmatched stuff on both sides).
    stuff = [int(c) for c in rng.choice(STUFF[:3], size=2, replace=False)]
    column = int(rng.integers(8, W - 8))
    next_gt = _stuff_split(gt, gt_cat, stuff, column, 1)
    pred_stuff = list(stuff)
    if rng.random() < 0.3:
        pred_stuff[int(rng.integers(2))] = next(c for c in STUFF[:3] if c not in stuff)
    next_pred = _stuff_split(pred, pred_cat, pred_stuff, column + int(rng.integers(-6, 7)), 1)

    # Things: each gt rectangle is predicted jittered (mostly IoU > 0.5, sometimes not), with the
    # wrong category or not at all; a few predictions have no gt; later rectangles overlap earlier ones.
    for _ in range(int(rng.integers(2, 6))):
        rect, category = _random_rect(rng), int(rng.choice(THINGS[:3]))
        next_gt = _paint(gt, gt_cat, rect, category, next_gt)
        draw = rng.random()
        if draw < 0.75:
            next_pred = _paint(pred, pred_cat, _jitter(rng, rect, 2 if draw < 0.6 else 4), category, next_pred)
        elif draw < 0.9:
            wrong = int(rng.choice([c for c in THINGS[:3] if c != category]))
            next_pred = _paint(pred, pred_cat, _jitter(rng, rect, 1), wrong, next_pred)
    for _ in range(int(rng.integers(0, 3))):
        next_pred = _paint(pred, pred_cat, _random_rect(rng, 2, 6), int(rng.choice(THINGS[:3])), next_pred)

    # VOID in the ground truth; sometimes a prediction lies (mostly) on it, to be ignored if unmatched.
    # The prediction is VOID only on part of the ground-truth VOID (see the module docstring).
    for _ in range(int(rng.integers(1, 3))):
        rect = _random_rect(rng, 3, 7)
        gt[rect[0] : rect[1], rect[2] : rect[3]] = VOID
        if rng.random() < 0.5:
            inner = [rect[0] + 1, rect[1] - 1, rect[2] + 1, rect[3] - 1]
            next_pred = _paint(pred, pred_cat, inner, int(rng.choice(THINGS[:3])), next_pred)
    pred[(gt == VOID) & (rng.random((H, W)) < 0.3)] = VOID

    # Segments painted over entirely are dropped.
    gt_cat = {k: v for k, v in gt_cat.items() if (gt == k).any()}
    pred_cat = {k: v for k, v in pred_cat.items() if (pred == k).any()}
    return gt, gt_cat, pred, pred_cat


def _to_torchmetrics(ids, categories, void_category):
    """(1, H, W, 2) tensor of (category_id, instance_id); VOID becomes a category unknown to the metric."""
    out = np.zeros((1, H, W, 2), np.int64)
    out[0, ..., 0] = void_category
    for segment_id, category in categories.items():
        mask = ids == segment_id
        out[0, mask, 0] = category
        out[0, mask, 1] = segment_id
    return torch.from_numpy(out)


def _detlib_stat(gt, gt_cat, pred, pred_cat):
    return pq_image_stats(
        gt,
        [{"id": k, "category_id": c, "iscrowd": 0} for k, c in gt_cat.items()],
        pred,
        [{"id": k, "category_id": c} for k, c in pred_cat.items()],
        CATEGORIES,
    )


def _new_metric(**kwargs):
    return tm_detection.PanopticQuality(
        things=set(THINGS), stuffs=set(STUFF), allow_unknown_preds_category=True, **kwargs
    )


# torchmetrics' class order: things sorted, then stuff sorted.
ORDER = sorted(THINGS) + sorted(STUFF)
VOID_CATEGORY = 99  # in neither THINGS nor STUFF: VOID for torchmetrics


def _torchmetrics_stats(metric):
    """{category: [iou sum, TP, FP, FN]} from the metric's state."""
    states = (metric.iou_sum, metric.true_positives, metric.false_positives, metric.false_negatives)
    return {c: [float(s[i]) for s in states] for i, c in enumerate(ORDER)}


def _detlib_stats(stat):
    return {c: [float(v) for v in stat.stats.get(c, (0.0, 0, 0, 0))] for c in ORDER}


def test_pq_matches_torchmetrics():
    pairs = [_synthetic_pair(seed) for seed in range(NUM_IMAGES)]
    total = PQStat()
    reference = _new_metric(return_sq_and_rq=True)
    reference_per_class = _new_metric(return_sq_and_rq=True, return_per_class=True)
    ignored_on_void = 0
    for index, (gt, gt_cat, pred, pred_cat) in enumerate(pairs):
        stat = _detlib_stat(gt, gt_cat, pred, pred_cat)
        total += stat
        preds = _to_torchmetrics(pred, pred_cat, VOID_CATEGORY)
        target = _to_torchmetrics(gt, gt_cat, VOID_CATEGORY)
        single = _new_metric()
        single.update(preds, target)
        reference.update(preds, target)
        reference_per_class.update(preds, target)
        expected, got = _torchmetrics_stats(single), _detlib_stats(stat)
        for category in ORDER:
            assert got[category] == pytest.approx(expected[category], abs=1e-6), (
                index,
                category,
            )  # torchmetrics: float32 IoU
        ignored_on_void += sum((gt[pred == k] == VOID).mean() > 0.5 for k in pred_cat)

    # The synthetic data exercises what it is meant to.
    sums = np.array([total.stats.get(c, [0, 0, 0, 0]) for c in ORDER])
    things, stuff = sums[: len(THINGS)], sums[len(THINGS) :]
    for part in (things, stuff):
        assert (part[:, 1:] > 0).any(axis=0).all(), "TP, FP and FN all occur for things and for stuff"
    assert ignored_on_void > 0, "some predictions lie mostly on VOID"
    assert 4 not in total.stats and 13 not in total.stats

    summary = pq_summary(total, CATEGORIES)
    pq, sq, rq = (float(v) for v in reference.compute())
    assert [summary["All"][k] for k in ("pq", "sq", "rq")] == pytest.approx([pq, sq, rq], abs=1e-6)

    per_class = reference_per_class.compute()
    if per_class.shape == (3, len(ORDER)):  # documented layout; 1.9 returns (C, 3)
        per_class = per_class.T
    present = {c: v[1] + v[2] + v[3] > 0 for c, v in _torchmetrics_stats(reference).items()}
    assert present == {c: summary["per_class"][c]["pq"] is not None for c in ORDER}
    for i, category in enumerate(ORDER):
        if present[category]:
            got = [summary["per_class"][category][k] for k in ("pq", "sq", "rq")]
            assert got == pytest.approx([float(v) for v in per_class[i]], abs=1e-6), category

    # Thing / stuff averages from torchmetrics' per-class values over the categories that occur.
    for name, group in (("Things", THINGS), ("Stuff", STUFF)):
        rows = [per_class[ORDER.index(c)] for c in group if present[c]]
        expected = torch.stack(rows).double().mean(dim=0).tolist()
        assert [summary[name][k] for k in ("pq", "sq", "rq")] == pytest.approx(expected, abs=1e-6), name
        assert summary[name]["n"] == len(rows)
