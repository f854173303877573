"""COCO evaluation: COCOEvaluator.evaluate() against pycocotools' COCOeval and (when importable) Detectron2's
COCOEvaluator on a synthetic COCO-scale set, bbox, segm and keypoints, metrics checked equal first; and the memory
process() adds."""

import argparse
import contextlib
import copy
import gc
import io
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from tabulate import tabulate

from .common import describe_machine, load_average, print_command, quadrilateral

HELP = "COCOEvaluator against pycocotools and Detectron2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=5000, help="images of the bbox case")
    parser.add_argument("--segm-images", type=int, default=500, help="images of the segm case (0: skip)")
    parser.add_argument("--keypoints-images", type=int, default=5000, help="images of the keypoints case (0: skip)")
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved evaluate() runs (median reported)")
    parser.add_argument("--seed", type=int, default=0)


COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# COCOeval's summary for keypoints has no small objects.
KEYPOINT_METRICS = ("AP", "AP50", "AP75", "APm", "APl")
NUM_KEYPOINTS = 17


def synthetic_coco(num_images: int, seed: int) -> dict:
    """COCO-like ground truth: 640 px wide images, 1-15 objects each of log-uniform size (every area
    range), 80 categories with COCO's ids, 1% crowd regions."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = int(rng.choice([427, 480, 640])), 640
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width})
        for _ in range(int(rng.integers(1, 16))):
            w, h = np.exp(rng.uniform(np.log(4), np.log(0.8 * height), size=2))
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            polygon = quadrilateral(float(x), float(y), float(w), float(h), rng)
            xs, ys = np.array(polygon[0::2]), np.array(polygon[1::2])
            area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(COCO_CATEGORY_IDS)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(area),
                    "iscrowd": int(rng.random() < 0.01),
                    "segmentation": [polygon],
                }
            )
    categories = [{"id": c, "name": f"category{c}"} for c in COCO_CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def synthetic_person_keypoints(num_images: int, seed: int) -> dict:
    """COCO-like person keypoints: 640 px wide images, 0-8 people each of log-uniform size, 17 keypoints inside
    the box, each unlabelled with probability 0.3 (people without a labelled one are ignored), 1% crowd regions."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = int(rng.choice([427, 480, 640])), 640
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width})
        for _ in range(int(rng.integers(0, 9))):
            w, h = np.exp(rng.uniform(np.log(8), np.log(0.8 * height), size=2))
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            visibility = rng.choice([0, 1, 2], size=NUM_KEYPOINTS, p=[0.3, 0.2, 0.5])
            points = rng.uniform([x, y], [x + w, y + h], size=(NUM_KEYPOINTS, 2)) * (visibility > 0)[:, None]
            keypoints = np.concatenate([points, visibility[:, None]], axis=1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(0.6 * w * h),
                    "iscrowd": int(rng.random() < 0.01),
                    "num_keypoints": int((visibility > 0).sum()),
                    "keypoints": keypoints.ravel().tolist(),
                }
            )
    categories = [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(NUM_KEYPOINTS)], "skeleton": []}]
    return {"images": images, "annotations": annotations, "categories": categories}


def synthetic_keypoint_predictions(image: dict, objects: List[dict], num_dets: int, seed: int) -> dict:
    """`num_dets` people for one image: noisy copies of its people (keypoints moved by 0.5-5% of the box) and
    random people; arrays of XYXY boxes, scores, classes (0) and (N, 17, 3) keypoints (x, y, score)."""
    rng = np.random.default_rng(seed + image["id"])
    height, width = image["height"], image["width"]
    boxes, keypoints = [], []
    for obj in objects:
        x, y, w, h = obj["bbox"]
        truth = np.asarray(obj["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]
        for _ in range(int(rng.integers(1, 3))):
            boxes.append([x, y, w, h] + rng.normal(0, 0.05, size=4) * np.array([w, h, w, h]))
            # A spread of errors, so that the matches span OKS thresholds 0.5-0.95.
            noise = rng.uniform(0.005, 0.05)
            keypoints.append(truth + rng.normal(0, noise, size=truth.shape) * np.array([w, h]))
    while len(boxes) < num_dets:
        w, h = np.exp(rng.uniform(np.log(8), np.log(0.8 * height), size=2))
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        boxes.append(np.array([x, y, w, h]))
        keypoints.append(rng.uniform([x, y], [x + w, y + h], size=(NUM_KEYPOINTS, 2)))
    xywh = np.array(boxes[:num_dets], dtype=np.float64)
    xywh[:, 2:] = xywh[:, 2:].clip(min=1.0)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    points = np.stack(keypoints[:num_dets])
    scores = rng.random((num_dets, NUM_KEYPOINTS, 1))
    return {
        "boxes": xyxy.astype(np.float32),
        "scores": rng.random(num_dets).astype(np.float32),
        "classes": np.zeros(num_dets, dtype=np.int64),
        "keypoints": np.concatenate([points, scores], axis=2).astype(np.float32),
    }


def synthetic_predictions(image: dict, objects: List[dict], num_dets: int, masks: bool, seed: int) -> dict:
    """`num_dets` detections for one image: jittered copies of its objects (mostly the right class)
    and random boxes; arrays of XYXY boxes, scores, contiguous classes and optionally (N, H, W) masks."""
    rng = np.random.default_rng(seed + image["id"])
    height, width = image["height"], image["width"]
    contiguous = {c: k for k, c in enumerate(COCO_CATEGORY_IDS)}
    boxes, classes = [], []
    for obj in objects:
        x, y, w, h = obj["bbox"]
        for _ in range(int(rng.integers(1, 4))):
            jitter = rng.normal(0, 0.1, size=4) * np.array([w, h, w, h])
            boxes.append([x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)])
            right = rng.random() < 0.8
            classes.append(contiguous[obj["category_id"]] if right else int(rng.integers(0, 80)))
    while len(boxes) < num_dets:
        w, h = np.exp(rng.uniform(np.log(4), np.log(0.8 * height), size=2))
        boxes.append([rng.uniform(0, width - w), rng.uniform(0, height - h), w, h])
        classes.append(int(rng.integers(0, 80)))
    xywh = np.array(boxes[:num_dets], dtype=np.float64)
    xywh[:, 0] = xywh[:, 0].clip(0, width - 1)
    xywh[:, 1] = xywh[:, 1].clip(0, height - 1)
    xyxy = np.concatenate([xywh[:, :2], np.minimum(xywh[:, :2] + xywh[:, 2:], [width, height])], axis=1)
    prediction = {
        "boxes": xyxy.astype(np.float32),
        "scores": rng.random(num_dets).astype(np.float32),
        "classes": np.array(classes[:num_dets], dtype=np.int64),
    }
    if masks:
        polygons = [quadrilateral(*map(float, box), rng) for box in xywh]
        prediction["masks"] = mask_util.decode(mask_util.frPyObjects(polygons, height, width)).transpose(2, 0, 1)
    return prediction


def _instances(structures, image: dict, prediction: dict):
    """`prediction` as detlib's or Detectron2's `Instances` (the modules expose the same names)."""
    instances = structures.Instances((image["height"], image["width"]))
    instances.pred_boxes = structures.Boxes(torch.from_numpy(prediction["boxes"]))
    instances.scores = torch.from_numpy(prediction["scores"])
    instances.pred_classes = torch.from_numpy(prediction["classes"])
    if "masks" in prediction:
        instances.pred_masks = torch.from_numpy(prediction["masks"]).bool()
    if "keypoints" in prediction:
        # A copy: Detectron2's process() shifts the keypoints in place.
        instances.pred_keypoints = torch.tensor(prediction["keypoints"])
    return instances


def _rss_mb() -> float:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _feed(
    evaluators: Sequence[Tuple[object, object]],
    dataset: dict,
    task: str,
    num_dets: int,
    seed: int,
    rss_at: Sequence[int],
) -> Tuple[List[float], Dict[int, float]]:
    """process() every image, one per call, in each (evaluator, its structures module) of `evaluators`, each image's
    predictions made once for all; returns (seconds inside each evaluator's process(), RSS growth in MB after each
    count of images in `rss_at`, meaningful with one evaluator)."""
    objects: Dict[int, List[dict]] = {image["id"]: [] for image in dataset["images"]}
    for ann in dataset["annotations"]:
        objects[ann["image_id"]].append(ann)
    for evaluator, _ in evaluators:
        evaluator.reset()
    base = _rss_mb()
    growth, seconds = {}, [0.0] * len(evaluators)
    for count, image in enumerate(dataset["images"], start=1):
        if task == "keypoints":
            prediction = synthetic_keypoint_predictions(image, objects[image["id"]], num_dets, seed)
        else:
            prediction = synthetic_predictions(image, objects[image["id"]], num_dets, task == "segm", seed)
        for k, (evaluator, structures) in enumerate(evaluators):
            outputs = [{"instances": _instances(structures, image, prediction)}]
            start = time.perf_counter()
            evaluator.process([{"image_id": image["id"]}], outputs)
            seconds[k] += time.perf_counter() - start
            del outputs
        del prediction
        if count in rss_at:
            growth[count] = _rss_mb() - base
    return seconds, growth


def _pycocotools_metrics(json_file: str, results_file: str, task: str) -> Tuple[float, Dict[str, float]]:
    """(seconds, metrics) of pycocotools' COCOeval alone (loadRes, evaluate, accumulate, summarize)
    on the results file; reading the files is not timed."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
    with open(results_file) as f:
        results = json.load(f)
    if task == "segm":
        for result in results:
            result.pop("bbox")
    names = KEYPOINT_METRICS if task == "keypoints" else METRICS
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(gt, gt.loadRes(results), task)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    seconds = time.perf_counter() - start
    metrics = {name: float(v * 100) for name, v in zip(names, coco_eval.stats)}
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    # Detectron2 reports AP per category only where there are several.
    for k, cat_id in enumerate(coco_eval.params.catIds if len(coco_eval.params.catIds) > 1 else ()):
        p = precision[:, :, k]
        metrics[f"AP-{gt.cats[cat_id]['name']}"] = float(p[p > -1].mean() * 100) if (p > -1).any() else float("nan")
    return seconds, metrics


def _largest_difference(a: Dict[str, float], b: Dict[str, float]) -> float:
    """Largest |a - b| over a's AP metrics (NaN matching NaN counts as equal); inf if b lacks one."""
    worst = 0.0
    for name, value in a.items():
        if not (name in METRICS or name.startswith("AP-")):
            continue
        other = b.get(name)
        if other is None:
            return math.inf
        if math.isnan(value) and math.isnan(other):
            continue
        worst = max(worst, abs(value - other))
    return worst


def _timed_evaluate(evaluator) -> Tuple[float, dict]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Detectron2 prints COCOeval's summary
        results = evaluator.evaluate()
    return time.perf_counter() - start, results


def _eval_task(task: str, num_images: int, args: argparse.Namespace, workdir: str, d2) -> Tuple[list, list]:
    """Timing and memory rows for one task; Detectron2's column when `d2` (its modules) is given."""
    from detlib import structures as detlib_structures
    from detlib.data.datasets import register_coco_instances
    from detlib.evaluation import COCOEvaluator

    if task == "keypoints":
        dataset = synthetic_person_keypoints(num_images, seed=args.seed)
    else:
        dataset = synthetic_coco(num_images, seed=args.seed)
    name = f"benchmark_{task}_{num_images}"
    json_file = os.path.join(workdir, f"{name}.json")
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    register_coco_instances(name, {}, json_file, workdir)
    # Memory is measured on the bbox case, one evaluator at a time; the others feed both at once.
    rss_at = sorted({n for n in (1000, num_images) if n <= num_images}) if task == "bbox" else []
    print(
        f"{task}: {num_images} images, {len(dataset['annotations'])} objects, {args.dets} detections per image",
        file=sys.stderr,
        flush=True,
    )

    out_dir = os.path.join(workdir, f"detlib_{name}")
    ours = COCOEvaluator(name, tasks=(task,), distributed=False, output_dir=out_dir)
    peer = None
    if d2 is not None:
        category_ids = [c["id"] for c in dataset["categories"]]
        d2.MetadataCatalog.get(name).set(
            json_file=json_file,
            thing_dataset_id_to_contiguous_id={c: k for k, c in enumerate(category_ids)},
            thing_classes=[c["name"] for c in dataset["categories"]],
        )
        # No output_dir: Detectron2 then writes no files in evaluate(), the most favourable setting for it.
        peer = d2.COCOEvaluator(name, tasks=(task,), distributed=False, output_dir=None, use_fast_impl=True)
    if rss_at or peer is None:
        (ours_process,), ours_rss = _feed([(ours, detlib_structures)], dataset, task, args.dets, args.seed, rss_at)
        if peer is not None:
            (peer_process,), peer_rss = _feed([(peer, d2.structures)], dataset, task, args.dets, args.seed, rss_at)
    else:
        evaluators = [(ours, detlib_structures), (peer, d2.structures)]
        (ours_process, peer_process), _ = _feed(evaluators, dataset, task, args.dets, args.seed, rss_at)
        ours_rss = peer_rss = {}

    times: Dict[str, List[float]] = {"detlib": [], "pycocotools": [], "detectron2": []}
    results: Dict[str, dict] = {}
    for _ in range(args.repeats):  # interleaved
        seconds, result = _timed_evaluate(ours)
        times["detlib"].append(seconds)
        results["detlib"] = result[task]
        results_file = os.path.join(out_dir, "coco_instances_results.json")
        seconds, results["pycocotools"] = _pycocotools_metrics(json_file, results_file, task)
        times["pycocotools"].append(seconds)
        if peer is not None:
            # Detectron2's evaluate() maps class ids in its stored predictions in place, so a
            # repeat starts from a copy taken before (untimed).
            processed = copy.deepcopy(peer._predictions) if args.repeats > 1 else None
            seconds, result = _timed_evaluate(peer)
            peer._predictions = processed
            times["detectron2"].append(seconds)
            results["detectron2"] = result[task]
        print(
            "  evaluate(): " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items() if v),
            file=sys.stderr,
            flush=True,
        )

    median = {k: statistics.median(v) for k, v in times.items() if v}
    checks = {
        peer_name: _largest_difference(results["pycocotools"], results[peer_name])
        for peer_name in ("detlib", "detectron2")
        if peer_name in results
    }
    equal = all(diff <= 0.01 for diff in checks.values())
    row = [
        task,
        num_images,
        f"{results['pycocotools']['AP']:.2f}",
        median["pycocotools"],
        median.get("detectron2", float("nan")),
        median["detlib"],
    ]
    row += [median["detlib"] / median["pycocotools"] if equal else "not equal"]
    row += [median["detlib"] / median["detectron2"] if equal and "detectron2" in median else "-"]
    row += [", ".join(f"{k} {v:.1e}" for k, v in checks.items())]
    memory_rows = []
    for label, seconds, rss in [("detlib", ours_process, ours_rss)] + (
        [("detectron2", peer_process, peer_rss)] if peer is not None else []
    ):
        memory_rows.append([task, num_images, label, seconds] + [f"{growth:.1f} at {n}" for n, growth in rss.items()])
    return [row], memory_rows


def run(args: argparse.Namespace) -> None:
    for logger_name in ("detlib", "detectron2", "faster_coco_eval", "fvcore"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    try:
        import detectron2.evaluation
        import detectron2.structures
        from detectron2.data import MetadataCatalog

        d2 = argparse.Namespace(
            COCOEvaluator=detectron2.evaluation.COCOEvaluator,
            structures=detectron2.structures,
            MetadataCatalog=MetadataCatalog,
        )
    except ImportError:
        d2 = None
        print("detectron2 is not importable: its column is left out", file=sys.stderr)
    load_before = load_average()
    rows, memory = [], []
    with tempfile.TemporaryDirectory(prefix="detlib_eval_benchmark_") as workdir:
        for task, num_images in (
            ("bbox", args.images),
            ("segm", args.segm_images),
            ("keypoints", args.keypoints_images),
        ):
            if num_images > 0:
                task_rows, task_memory = _eval_task(task, num_images, args, workdir, d2)
                rows += task_rows
                memory += task_memory
    load_after = load_average()

    from importlib.metadata import version

    print_command()
    print(
        f"{describe_machine(torch.device('cpu'))}; pycocotools {version('pycocotools')}, faster-coco-eval "
        f"{version('faster-coco-eval')}" + (f", detectron2 {version('detectron2')}" if d2 else "")
    )
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    print(
        f"{args.dets} detections per image; evaluate() wall time, median of {args.repeats} interleaved runs; "
        "ratio = detlib / peer (below 1: detlib faster), printed only when every AP metric and per-category AP "
        "equals pycocotools' to 0.01 (check: largest difference)\n"
    )
    headers = [
        "task",
        "images",
        "AP",
        "pycocotools s",
        "detectron2 s",
        "detlib s",
        "detlib/pycocotools",
        "detlib/detectron2",
        "check (max |AP diff|)",
    ]
    print(tabulate(rows, headers=headers, tablefmt="github", floatfmt=".2f"))
    print("\nprocess(): seconds inside process() over all images, and RSS growth (MB) from the first image")
    print(
        tabulate(
            memory,
            headers=["task", "images", "evaluator", "process() s", "RSS +MB", "RSS +MB"],
            tablefmt="github",
            floatfmt=".1f",
        )
    )
