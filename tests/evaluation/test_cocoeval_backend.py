"""faster-coco-eval against pycocotools' COCOeval, the reference, on sets built to hit every rule."""

import copy
import json

import faster_coco_eval
import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detlib.evaluation.coco_results import load_results, rle_areas
from detlib.evaluation.cocoeval_backend import evaluate_predictions_on_coco, load_coco_json
from detlib.evaluation.keypoint_oks import COCOevalFasterOks

CATEGORY_IDS = [1, 2, 5, 11, 90]  # gaps, like COCO's
SIZE = 256  # large objects (area > 96^2) fit


def _box_polygon(x, y, w, h, rng):
    """A quadrilateral inside the box, so masks and boxes differ."""
    dx, dy = rng.uniform(0, 0.3) * w, rng.uniform(0, 0.3) * h
    return [x + dx, y, x + w, y + dy, x + w - dx, y + h, x, y + h - dy]


def _random_box(rng, scale):
    w, h = rng.uniform(0.5, 1.5, size=2) * scale
    x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
    return float(x), float(y), float(w), float(h)


def _synthetic_set(seed):
    """Ground truth with crowd regions, objects of every area range, images without objects; and
    predictions that hit, miss, duplicate, mislabel or are missing on some images."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, 41):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": SIZE, "width": SIZE})
        num_objects = 0 if image_id % 7 == 0 else int(rng.integers(1, 9))
        for _ in range(num_objects):
            scale = float(rng.choice([12.0, 50.0, 140.0]))  # small, medium, large
            x, y, w, h = _random_box(rng, scale)
            polygon = _box_polygon(x, y, w, h, rng)
            rle = mask_util.merge(mask_util.frPyObjects([polygon], SIZE, SIZE))
            crowd = int(rng.random() < 0.1)
            segmentation = [polygon]
            if crowd:  # COCO stores crowd regions as uncompressed RLE
                mask = mask_util.decode(rle)
                counts, previous, run = [], 0, 0
                for value in mask.ravel(order="F"):
                    if value != previous:
                        counts.append(run)
                        previous, run = value, 0
                    run += 1
                counts.append(run)
                segmentation = {"size": [SIZE, SIZE], "counts": counts}
            category = int(rng.choice(CATEGORY_IDS))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": float(mask_util.area(rle)),
                    "iscrowd": crowd,
                    "segmentation": segmentation,
                }
            )
            if image_id % 5 == 0:
                continue  # an image whose objects are all missed
            for _ in range(int(rng.integers(0, 3))):  # hits, near misses and duplicates
                jitter = rng.normal(0, 0.12, size=4) * np.array([w, h, w, h])
                px, py, pw, ph = x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)
                label = category if rng.random() < 0.85 else int(rng.choice(CATEGORY_IDS))
                results.append(_result(image_id, label, (px, py, pw, ph), rng))
        for _ in range(int(rng.integers(0, 4))):  # false positives, also on images without objects
            box = _random_box(rng, float(rng.choice([12.0, 50.0, 140.0])))
            results.append(_result(image_id, int(rng.choice(CATEGORY_IDS)), box, rng))
    categories = [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _result(image_id, category, box, rng):
    x, y, w, h = (float(v) for v in box)
    x, y = min(max(x, 0.0), SIZE - 1.0), min(max(y, 0.0), SIZE - 1.0)
    rle = mask_util.merge(mask_util.frPyObjects([_box_polygon(x, y, w, h, rng)], SIZE, SIZE))
    rle["counts"] = rle["counts"].decode("ascii")
    score = float(np.round(rng.random(), 2))  # ties in score, as real detectors produce
    return {"image_id": image_id, "category_id": category, "bbox": [x, y, w, h], "score": score, "segmentation": rle}


def _reference(json_file, results, iou_type, image_ids, max_dets):
    gt = COCO(json_file)
    results = copy.deepcopy(results)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    ev = COCOeval(gt, gt.loadRes(results), iou_type)
    ev.params.maxDets = [1, 10, max_dets]
    if image_ids is not None:
        ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def _mean_valid(p):
    return p[p > -1].mean() if (p > -1).any() else -1.0


def _precision_metrics(coco_eval):
    """AP, AP50, AP75, APs/m/l at the largest max-detections, then AP per category, in percent."""
    precision = coco_eval.eval["precision"][..., -1]  # [IoU, recall, category, area]
    summary = [_mean_valid(precision[..., 0]), _mean_valid(precision[0, ..., 0]), _mean_valid(precision[5, ..., 0])]
    summary += [_mean_valid(precision[..., a]) for a in (1, 2, 3)]
    per_category = [_mean_valid(precision[:, :, k, 0]) for k in range(precision.shape[2])]
    return np.array(summary + per_category) * 100


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("use_fast_impl", [True, False])
@pytest.mark.parametrize("seed,image_ids,max_dets", [(0, None, 100), (1, list(range(3, 30)), 100), (3, None, 2)])
def test_backend_equals_pycocotools(tmp_path, iou_type, use_fast_impl, seed, image_ids, max_dets):
    dataset, results = _synthetic_set(seed)
    assert any(a["iscrowd"] for a in dataset["annotations"])
    json_file = str(tmp_path / "gt.json")
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    expected = _reference(json_file, results, iou_type, image_ids, max_dets)
    ours = evaluate_predictions_on_coco(
        load_coco_json(json_file, use_fast_impl),
        copy.deepcopy(results),
        iou_type,
        image_ids=image_ids,
        max_dets=max_dets,
        use_fast_impl=use_fast_impl,
    )
    reference = _precision_metrics(expected)
    assert (reference[:6] > 0).all()  # every area range has matches
    np.testing.assert_allclose(_precision_metrics(ours), reference, atol=0.01)
    if max_dets == 100:  # pycocotools' summary reads its AP at 100 detections only
        np.testing.assert_allclose(np.asarray(ours.stats[:12]) * 100, np.asarray(expected.stats) * 100, atol=0.01)


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_no_predictions_score_zero(tmp_path, use_fast_impl):
    dataset, _ = _synthetic_set(2)
    json_file = str(tmp_path / "gt.json")
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    ours = evaluate_predictions_on_coco(
        load_coco_json(json_file, use_fast_impl), [], "bbox", use_fast_impl=use_fast_impl
    )
    assert ours.stats[0] == 0.0 and ours.stats[1] == 0.0


def _write(tmp_path, dataset):
    json_file = str(tmp_path / "gt.json")
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    return json_file


def _keypoint_set(seed, num_keypoints=3):
    """People with `num_keypoints` keypoints (some unlabelled, some with none labelled, some crowd), images without people; and
    noisy copies of them plus false positives, no predictions on some images."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, 25):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": SIZE, "width": SIZE})
        for _ in range(0 if image_id % 6 == 0 else int(rng.integers(1, 5))):
            x, y, w, h = _random_box(rng, float(rng.choice([20.0, 60.0, 140.0])))
            visibility = rng.choice([0, 2], size=num_keypoints, p=[0.3, 0.7])
            if len(annotations) % 7 == 3:
                visibility[:] = 0  # scored against its box
            points = rng.uniform([x, y], [x + w, y + h], size=(num_keypoints, 2)) * (visibility > 0)[:, None]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x, y, w, h],
                    "area": 0.7 * w * h,
                    "iscrowd": int(rng.random() < 0.1),
                    "num_keypoints": int((visibility > 0).sum()),
                    "keypoints": np.concatenate([points, visibility[:, None]], 1).ravel().tolist(),
                }
            )
            if image_id % 5 == 0:
                continue  # no predictions on this image
            for _ in range(int(rng.integers(0, 3))):
                noisy = points + rng.normal(0, rng.uniform(0.01, 0.1), size=points.shape) * [w, h]
                results.append(_keypoint_result(image_id, noisy, [x, y, w, h], rng))
        if image_id % 5:
            for _ in range(int(rng.integers(0, 3))):  # false positives
                x, y, w, h = _random_box(rng, 60.0)
                points = rng.uniform([x, y], [x + w, y + h], (num_keypoints, 2))
                results.append(_keypoint_result(image_id, points, [x, y, w, h], rng))
    categories = [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(num_keypoints)], "skeleton": []}]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _keypoint_result(image_id, points, box, rng):
    keypoints = np.concatenate([points, rng.random((len(points), 1))], 1).ravel().tolist()
    score = float(np.round(rng.random(), 2))
    return {"image_id": image_id, "category_id": 1, "bbox": box, "score": score, "keypoints": keypoints}


KEYPOINT_SIGMAS = (0.05, 0.08, 0.1)


@pytest.mark.parametrize("with_box", [True, False])
@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_keypoints_equal_pycocotools(tmp_path, use_fast_impl, with_box):
    """With a box, a keypoint result's area is its box's (loadRes's box branch); without, its keypoints' extent."""
    dataset, results = _keypoint_set(0)
    if not with_box:
        for result in results:
            del result["bbox"]
    json_file = _write(tmp_path, dataset)
    gt = COCO(json_file)
    expected = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "keypoints")
    expected.params.kpt_oks_sigmas = np.asarray(KEYPOINT_SIGMAS)
    expected.evaluate()
    expected.accumulate()
    ours = evaluate_predictions_on_coco(
        load_coco_json(json_file, use_fast_impl),
        results,
        "keypoints",
        use_fast_impl=use_fast_impl,
        kpt_oks_sigmas=KEYPOINT_SIGMAS,
    )
    precision = expected.eval["precision"]
    assert (precision[0, :, 0, 0, -1] > 0).any() and (precision[..., -1] > -1).all()
    np.testing.assert_allclose(ours.eval["precision"], precision, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.eval["recall"], expected.eval["recall"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_load_results_sets_what_loadres_sets(iou_type):
    """Ids, iscrowd and areas (mask areas given with the results or computed) as pycocotools' loadRes sets them."""
    if iou_type == "keypoints":
        dataset, results = _keypoint_set(1)
    else:
        dataset, results = _synthetic_set(5)
    gt = COCO()
    gt.dataset = dataset
    gt.createIndex()
    reference = copy.deepcopy(results)
    if iou_type == "segm":
        for result in reference:
            result.pop("bbox")
        given = results[: len(results) // 2]  # as COCOEvaluator.process() gives them; the others computed
        for result, area in zip(given, rle_areas([r["segmentation"] for r in given])):
            result["area"] = area
    expected = gt.loadRes(reference)
    ours = load_results(gt, results, iou_type)
    assert type(ours) is COCO and ours.getImgIds() == expected.getImgIds() and ours.cats == expected.cats
    assert sorted(ours.anns) == sorted(expected.anns)
    for ann_id, ann in expected.anns.items():
        assert (ours.anns[ann_id]["area"], ours.anns[ann_id]["iscrowd"]) == (ann["area"], ann["iscrowd"]), ann_id
        assert ours.anns[ann_id]["score"] == ann["score"]


def test_load_results_rejects_images_outside_the_ground_truth():
    dataset, results = _synthetic_set(0)
    gt = COCO()
    gt.dataset = dataset
    gt.createIndex()
    results[0]["image_id"] = 1000
    with pytest.raises(ValueError, match=r"1 image ids .* not in the ground truth, e.g. \[1000\]"):
        load_results(gt, results, "bbox")


def test_rle_areas_of_many_masks_equal_pycocotools_one_at_a_time():
    rng = np.random.default_rng(0)
    masks = np.asfortranarray(rng.random((30, 20, 600)) < rng.random(600))  # more than pycocotools takes per call
    rles = mask_util.encode(masks.astype(np.uint8))
    assert rle_areas(rles) == [int(mask_util.area(rle)) for rle in rles] == masks.sum((0, 1)).tolist()


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_segm_with_mask_areas_given_equals_pycocotools(tmp_path, use_fast_impl):
    """Segm results that carry their mask areas, as COCOEvaluator.process() writes them, score as pycocotools
    scores the plain results (loadRes computing each area)."""
    dataset, results = _synthetic_set(4)
    image_ids = {image["id"] for image in dataset["images"]}
    assert image_ids - {r["image_id"] for r in results} and image_ids - {a["image_id"] for a in dataset["annotations"]}
    assert any(a["iscrowd"] for a in dataset["annotations"])
    json_file = _write(tmp_path, dataset)
    expected = _reference(json_file, results, "segm", None, 100)
    for result, area in zip(results, rle_areas([r["segmentation"] for r in results])):
        result["area"] = area
    ours = evaluate_predictions_on_coco(
        load_coco_json(json_file, use_fast_impl), results, "segm", use_fast_impl=use_fast_impl
    )
    assert (expected.eval["precision"][0, :, :, 0, -1] > 0).any()
    np.testing.assert_allclose(ours.eval["precision"], expected.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.eval["recall"], expected.eval["recall"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_keypoints", [3, 17])
def test_oks_is_bit_identical_to_pycocotools(num_keypoints):
    """17 keypoints take numpy's unrolled pairwise summation, 3 its plain loop."""
    dataset, results = _keypoint_set(2, num_keypoints)
    sigmas = np.linspace(0.025, 0.1, num_keypoints)
    gt = COCO()
    gt.dataset = copy.deepcopy(dataset)
    gt.createIndex()
    reference = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "keypoints")
    fast_gt = faster_coco_eval.COCO(dataset)
    ours = COCOevalFasterOks(fast_gt, load_results(fast_gt, results, "keypoints"), "keypoints")
    for coco_eval in (reference, ours):
        coco_eval.params.kpt_oks_sigmas = sigmas
        coco_eval._prepare()
    compared = 0
    for image_id in gt.getImgIds():
        expected = reference.computeOks(image_id, 1)
        np.testing.assert_array_equal(np.asarray(ours.computeOks(image_id, 1)), np.asarray(expected))
        compared += len(expected) > 0
    assert compared >= 10 and any(a["num_keypoints"] == 0 for a in dataset["annotations"])
