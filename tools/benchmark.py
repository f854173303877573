#!/usr/bin/env python
"""Speed benchmarks. Every one times detlib and its peer in the same process and prints the ratio.

    python tools/benchmark.py ops [--quick] [--device cpu|cuda] [--repeats N]
    python tools/benchmark.py eval [--images N] [--segm-images N] [--repeats N]
    python tools/benchmark.py model [--device cpu|cuda] [--quick] [--repeats N] [--threads N] [--opts KEY VALUE ...]
    python tools/benchmark.py export --config-file CFG --image IMG [--repeats N] [KEY VALUE ...]

Subcommands:
    ops     detlib.layers.{nms, batched_nms, roi_align} against torchvision.ops on proposal-like
            boxes in a 1333x800 image and (2, 256, 200, 304) stride-4 features.
    eval    COCOEvaluator.evaluate() against pycocotools' COCOeval and (when importable) Detectron2's
            COCOEvaluator on a synthetic COCO-scale set, bbox and segm; and the memory process() adds.
    export  one image through the model in eager mode, its torch.export program (.pt2, loaded back) and
            its ONNX export in ONNX Runtime, on the CPU; the exports are traced at another image size.
    model   Mask R-CNN R50-FPN inference (one 800x1216 image, 100 detections with masks) and a training
            step (2 images of 512x640) against Detectron2 on the weights Detectron2 made (outputs checked
            equal first), or against torchvision's maskrcnn_resnet50_fpn (time only); peak memory per system.
"""

import argparse
import contextlib
import copy
import gc
import io
import itertools
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from tabulate import tabulate

IMAGE_SIZE = (800, 1333)  # (height, width) of the image the boxes live in


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> Tuple[float, object]:
    """(median wall time of `fn` in ms, its result). The first call is a warm-up whose result is
    returned for checking; a case whose warm-up takes over a second is timed 3 times at most."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    if time.perf_counter() - start > 1.0:
        repeats = min(repeats, 3)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), result


def proposal_boxes(
    n: int, seed: int, image_size: Tuple[int, int] = IMAGE_SIZE, device="cpu"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    `n` XYXY boxes that look like RPN proposals: three quarters are jittered copies of 40 objects of
    24-400 pixels (so they overlap heavily and score high), the rest are scattered background boxes.
    Returns (boxes [n, 4], scores [n]) in float32.
    """
    g = torch.Generator().manual_seed(seed)
    height, width = image_size
    size = torch.tensor([width, height], dtype=torch.float32)

    def log_uniform(shape, low, high):
        return torch.exp(math.log(low) + torch.rand(shape, generator=g) * (math.log(high) - math.log(low)))

    num_objects = 40
    object_centers = torch.rand(num_objects, 2, generator=g) * size
    object_sizes = log_uniform((num_objects, 2), 24, 400)
    owner = torch.randint(0, num_objects, (n,), generator=g)
    on_object = torch.rand(n, generator=g) < 0.75

    jitter = torch.randn(n, 2, generator=g)
    centers = torch.where(
        on_object[:, None],
        object_centers[owner] + 0.2 * jitter * object_sizes[owner],
        torch.rand(n, 2, generator=g) * size,
    )
    sizes = torch.where(
        on_object[:, None],
        object_sizes[owner] * torch.exp(0.25 * torch.randn(n, 2, generator=g)),
        log_uniform((n, 2), 16, 400),
    )
    boxes = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=1)
    boxes = torch.min(boxes.clamp(min=0), size.repeat(2))
    closeness = torch.exp(-jitter.norm(dim=1))
    scores = torch.where(on_object, 0.5 + 0.5 * closeness, 0.5 * torch.rand(n, generator=g))
    scores = scores + 1e-3 * torch.rand(n, generator=g)
    return boxes.to(device), scores.to(device)


def nms_rows(
    sizes: Sequence[int], thresholds: Sequence[float], group_counts: Sequence[int], repeats: int, device: torch.device
) -> List[list]:
    from torchvision import ops

    from detlib.layers import batched_nms, nms

    rows = []
    for n in sizes:
        boxes, scores = proposal_boxes(n, seed=n, device=device)
        idxs = {
            k: torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(k)).to(device) for k in group_counts
        }
        for threshold in thresholds:
            cases = [("nms", "", lambda: nms(boxes, scores, threshold), lambda: ops.nms(boxes, scores, threshold))]
            for k in group_counts:
                cases.append(
                    (
                        "batched_nms",
                        f", {k} ids",
                        lambda k=k: batched_nms(boxes, scores, idxs[k], threshold),
                        lambda k=k: ops.batched_nms(boxes, scores, idxs[k], threshold),
                    )
                )
            for op, extra, ours, theirs in cases:
                ours_ms, ours_keep = timed(ours, repeats, device)
                theirs_ms, theirs_keep = timed(theirs, repeats, device)
                same = "yes" if torch.equal(ours_keep, theirs_keep) else "NO"
                rows.append([op, f"{n} boxes, IoU {threshold}{extra}", theirs_ms, ours_ms, theirs_ms / ours_ms, same])
                print_progress(rows[-1])
    return rows


def roi_align_rows(
    roi_counts: Sequence[int],
    output_sizes: Sequence[int],
    sampling_ratios: Sequence[int],
    repeats: int,
    device: torch.device,
    layouts: Sequence[str] = ("NCHW", "NHWC"),
) -> List[list]:
    from torchvision import ops

    from detlib.layers import roi_align

    scale = 0.25
    values = torch.randn(2, 256, 200, 304, generator=torch.Generator().manual_seed(0)).to(device)
    image_size = (round(values.shape[2] / scale), round(values.shape[3] / scale))
    rows = []
    # NHWC: the features as a channels_last model makes them (detlib's CPU default); both ops get the same tensor.
    for layout, num_rois in itertools.product(layouts, roi_counts):
        memory_format = torch.channels_last if layout == "NHWC" else torch.contiguous_format
        features = values.contiguous(memory_format=memory_format).requires_grad_()
        boxes, _ = proposal_boxes(num_rois, seed=num_rois, image_size=image_size)
        batch = torch.randint(0, 2, (num_rois, 1), generator=torch.Generator().manual_seed(1)).float()
        rois = torch.cat([batch, boxes], dim=1).to(device)
        for size in output_sizes:
            for ratio in sampling_ratios:
                grad = torch.randn(num_rois, 256, size, size, generator=torch.Generator().manual_seed(2)).to(device)
                impls = {"ours": roi_align, "theirs": ops.roi_align}

                def forward(which):
                    with torch.no_grad():
                        return impls[which](features, rois, size, scale, ratio, True)

                def forward_backward(which):
                    out = impls[which](features, rois, size, scale, ratio, True)
                    return torch.autograd.grad(out, features, grad)[0]

                case = f"{num_rois} rois, {size}x{size}, ratio {ratio}" + (", NHWC" if layout == "NHWC" else "")
                for op, fn in (("roi_align fwd", forward), ("roi_align fwd+bwd", forward_backward)):
                    ours_ms, ours_out = timed(lambda: fn("ours"), repeats, device)
                    theirs_ms, theirs_out = timed(lambda: fn("theirs"), repeats, device)
                    diff = (ours_out - theirs_out).abs().max().item()
                    rows.append([op, case, theirs_ms, ours_ms, theirs_ms / ours_ms, f"max|diff| {diff:.1e}"])
                    print_progress(rows[-1])
    return rows


def print_progress(row: list) -> None:
    print(
        f"  {row[0]:18s} {row[1]:40s} torchvision {row[2]:9.2f} ms  detlib {row[3]:9.2f} ms  x{row[4]:.2f}",
        file=sys.stderr,
        flush=True,
    )


def run_ops(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if args.quick:
        nms_args = dict(sizes=[1000, 10000], thresholds=[0.7], group_counts=[80])
        roi_args = dict(roi_counts=[512], output_sizes=[7], sampling_ratios=[0, 2])
    else:
        nms_args = dict(sizes=[1000, 10000, 50000], thresholds=[0.5, 0.7], group_counts=[5, 80])
        roi_args = dict(roi_counts=[512, 1000], output_sizes=[7, 14], sampling_ratios=[0, 2])
    rows = nms_rows(repeats=args.repeats, device=device, **nms_args)
    rows += roi_align_rows(repeats=args.repeats, device=device, **roi_args)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"command: python tools/benchmark.py {' '.join(sys.argv[1:])}")
    load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"device: {where}; torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus{load}")
    print(f"median over {args.repeats} timed calls (3 when one call exceeds 1 s), after one warm-up call\n")
    headers = ["op", "case", "torchvision ms", "detlib ms", "speedup", "check"]
    print(tabulate(rows, headers=headers, tablefmt="github", floatfmt=".2f"))


# COCO's 80 category ids: 1..90 with ten unused.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _quadrilateral(x: float, y: float, w: float, h: float, rng: np.random.Generator) -> List[float]:
    """A polygon inside the box (so masks differ from boxes), as COCO's flat [x0, y0, x1, ...]."""
    dx, dy = rng.uniform(0, 0.25) * w, rng.uniform(0, 0.25) * h
    return [x + dx, y, x + w, y + dy, x + w - dx, y + h, x, y + h - dy]


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
            polygon = _quadrilateral(float(x), float(y), float(w), float(h), rng)
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
        polygons = [_quadrilateral(*map(float, box), rng) for box in xywh]
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
    return instances


def _rss_mb() -> float:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _feed(
    evaluator, structures, dataset: dict, num_dets: int, masks: bool, seed: int, rss_at: Sequence[int]
) -> Tuple[float, Dict[int, float]]:
    """process() every image, one per call; returns (seconds inside process(), RSS growth in MB after
    each count of images in `rss_at`)."""
    objects: Dict[int, List[dict]] = {image["id"]: [] for image in dataset["images"]}
    for ann in dataset["annotations"]:
        objects[ann["image_id"]].append(ann)
    evaluator.reset()
    base = _rss_mb()
    growth, seconds = {}, 0.0
    for count, image in enumerate(dataset["images"], start=1):
        prediction = synthetic_predictions(image, objects[image["id"]], num_dets, masks, seed)
        outputs = [{"instances": _instances(structures, image, prediction)}]
        start = time.perf_counter()
        evaluator.process([{"image_id": image["id"]}], outputs)
        seconds += time.perf_counter() - start
        del prediction, outputs
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
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(gt, gt.loadRes(results), task)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    seconds = time.perf_counter() - start
    metrics = {name: float(v * 100) for name, v in zip(METRICS, coco_eval.stats[:6])}
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    for k, cat_id in enumerate(coco_eval.params.catIds):
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

    dataset = synthetic_coco(num_images, seed=args.seed)
    name = f"benchmark_{task}_{num_images}"
    json_file = os.path.join(workdir, f"{name}.json")
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    register_coco_instances(name, {}, json_file, workdir)
    masks = task == "segm"
    rss_at = sorted({n for n in (1000, num_images) if n <= num_images}) if not masks else []
    print(
        f"{task}: {num_images} images, {len(dataset['annotations'])} objects, {args.dets} detections per image",
        file=sys.stderr,
        flush=True,
    )

    out_dir = os.path.join(workdir, f"detlib_{name}")
    ours = COCOEvaluator(name, tasks=(task,), distributed=False, output_dir=out_dir)
    ours_process, ours_rss = _feed(ours, detlib_structures, dataset, args.dets, masks, args.seed, rss_at)
    peer = None
    if d2 is not None:
        contiguous = {c: k for k, c in enumerate(COCO_CATEGORY_IDS)}
        d2.MetadataCatalog.get(name).set(
            json_file=json_file,
            thing_dataset_id_to_contiguous_id=contiguous,
            thing_classes=[f"category{c}" for c in COCO_CATEGORY_IDS],
        )
        # No output_dir: Detectron2 then writes no files in evaluate(), the most favourable setting for it.
        peer = d2.COCOEvaluator(name, tasks=(task,), distributed=False, output_dir=None, use_fast_impl=True)
        peer_process, peer_rss = _feed(peer, d2.structures, dataset, args.dets, masks, args.seed, rss_at)

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


def run_eval(args: argparse.Namespace) -> None:
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
    load_before = os.getloadavg()
    rows, memory = [], []
    with tempfile.TemporaryDirectory(prefix="detlib_eval_benchmark_") as workdir:
        for task, num_images in (("bbox", args.images), ("segm", args.segm_images)):
            if num_images > 0:
                task_rows, task_memory = _eval_task(task, num_images, args, workdir, d2)
                rows += task_rows
                memory += task_memory
    load_after = os.getloadavg()

    from importlib.metadata import version

    print(f"command: python tools/benchmark.py {' '.join(sys.argv[1:])}")
    print(
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"pycocotools {version('pycocotools')}, faster-coco-eval {version('faster-coco-eval')}"
        + (f", detectron2 {version('detectron2')}" if d2 else "")
    )
    print(
        "load average (1, 5, 15 min): before {:.1f} {:.1f} {:.1f}, after {:.1f} {:.1f} {:.1f}".format(
            *load_before, *load_after
        )
    )
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


# ---------------------------------------------------------------------------------------------------------------
# model: the whole Mask R-CNN, detlib against Detectron2 (or torchvision) on the same weights.

MODEL_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
# Every anchor and every proposal is a training sample (the batch sizes exceed their counts), so the samplers draw
# nothing and the first-step losses are a function of the weights and inputs alone. With the default sampling, a
# one-box difference in the proposals (float32 summation order, e.g. channels_last against contiguous) changes
# which RoIs are drawn, and with them loss_cls by up to 1e-3 relative: a different sample, not a different model.
NO_SAMPLING = ["MODEL.RPN.BATCH_SIZE_PER_IMAGE", "10000000", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "10000000"]


def _model_overrides(device: torch.device) -> List[str]:
    # Score threshold 0 keeps all 100 detections, so the mask head and pasting always see a full batch.
    return ["MODEL.DEVICE", device.type, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.WEIGHTS", ""]


def _calibrate_frozen_norms(model: torch.nn.Module, image: torch.Tensor) -> None:
    """Give every frozen batch norm the statistics of its input in one inference pass (random weights otherwise
    blow activations up layer by layer); affine weights stay random around identity."""
    generator = torch.Generator().manual_seed(1)
    handles = []

    def set_statistics(norm, inputs):
        x = inputs[0].detach()
        norm.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        norm.running_var.copy_(x.var(dim=(0, 2, 3)))
        n = norm.weight.numel()
        norm.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=generator).to(x.device))
        norm.bias.copy_(0.1 * torch.randn(n, generator=generator).to(x.device))

    for module in model.modules():
        if type(module).__name__ == "FrozenBatchNorm2d":
            handles.append(module.register_forward_pre_hook(set_statistics))
    model.eval()
    with torch.no_grad():
        model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])
    for handle in handles:
        handle.remove()


def _scene(height: int, width: int, num_objects: int, seed: int) -> Tuple[torch.Tensor, List[dict]]:
    """A uint8 BGR image with `num_objects` filled quadrilaterals on a noisy background, and their COCO-style
    annotations (XYXY box, polygon, category)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (3, height, width), dtype=np.uint8) // 4 + 64
    objects = []
    for _ in range(num_objects):
        w, h = rng.uniform(0.15, 0.4) * width, rng.uniform(0.15, 0.4) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        polygon = _quadrilateral(x, y, w, h, rng)
        rle = mask_util.frPyObjects([polygon], height, width)
        inside = mask_util.decode(mask_util.merge(rle)).astype(bool)
        image[:, inside] = rng.integers(0, 256, 3, dtype=np.uint8)[:, None]
        objects.append({"box": [x, y, x + w, y + h], "polygon": polygon, "category": int(rng.integers(0, 80))})
    return torch.from_numpy(image), objects


def _training_batch(structures, size: Tuple[int, int], seed: int, device: torch.device) -> List[dict]:
    """Two images with 5 polygon objects each, as the model's input dicts, using `structures` (detlib's or
    Detectron2's, which have the same interface)."""
    batch = []
    for i in range(2):
        image, objects = _scene(*size, num_objects=5, seed=seed + i)
        instances = structures.Instances(size)
        instances.gt_boxes = structures.Boxes(torch.tensor([o["box"] for o in objects], dtype=torch.float32))
        instances.gt_classes = torch.tensor([o["category"] for o in objects])
        instances.gt_masks = structures.PolygonMasks([[np.asarray(o["polygon"])] for o in objects])
        batch.append({"image": image, "height": size[0], "width": size[1], "instances": instances.to(device)})
    return batch


class _ModelSystem:
    """One detector behind a common interface: `infer(image)` -> (boxes, scores, classes, masks) on the CPU,
    and `train_step(batch)` -> loss dict (floats) after forward, backward and an SGD step."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device, train_batch: List[dict]):
        self.name, self.model, self.device, self.train_batch = name, model, device, train_batch
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def infer(self, image: torch.Tensor):
        self.model.eval()
        with torch.no_grad():
            out = self.model([{"image": image.to(self.device), "height": image.shape[1], "width": image.shape[2]}])
        instances = out[0]["instances"].to("cpu")
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes, instances.pred_masks

    def losses(self) -> Dict[str, float]:
        """The loss values of one training forward (no backward, no step)."""
        self.model.train()
        with self.events(), torch.no_grad():
            losses = self.model(self.train_batch)
        return {k: v.item() for k, v in losses.items()}

    def train_step(self) -> Dict[str, float]:
        self.model.train()
        storage = self.events()
        with storage:
            losses = self.model(self.train_batch)
        total = sum(losses.values())
        self.optimizer.zero_grad()
        total.backward()
        self.optimizer.step()
        return {k: v.item() for k, v in losses.items()}


def _detlib_system(
    weights: str, device: torch.device, train_size: Tuple[int, int], opts: Sequence[str] = ()
) -> _ModelSystem:
    from detlib import model_zoo, structures
    from detlib.checkpoint import DetectionCheckpointer
    from detlib.config import get_cfg
    from detlib.modeling import build_model
    from detlib.utils.events import EventStorage

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(MODEL_CONFIG))
    cfg.merge_from_list(_model_overrides(device) + list(opts))
    model = build_model(cfg)
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(weights)
    keys = checkpointer.incompatible_keys
    if keys.missing or keys.unexpected or keys.shape_mismatch:
        raise RuntimeError(f"{weights} does not fit detlib's model exactly: {keys}")
    system = _ModelSystem("detlib", model, device, _training_batch(structures, train_size, 10, device))
    system.events = EventStorage
    return system


def _detectron2_config(device: torch.device, opts: Sequence[str] = ()):
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(MODEL_CONFIG))
    cfg.merge_from_list(_model_overrides(device) + list(opts))
    return cfg


def _detectron2_system(
    weights: str, device: torch.device, train_size: Tuple[int, int], opts: Sequence[str] = ()
) -> _ModelSystem:
    from detectron2 import structures
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    model = build_model(_detectron2_config(device, opts))
    DetectionCheckpointer(model).load(weights)
    system = _ModelSystem("detectron2", model, device, _training_batch(structures, train_size, 10, device))
    system.events = EventStorage
    return system


def _make_detectron2_weights(path: str, calibration_image: torch.Tensor) -> None:
    """Detectron2 builds the model (its own random initialization), one pass sets the frozen norms' statistics,
    and the weights are saved in its .pkl format (numpy arrays under "model")."""
    import pickle

    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(_detectron2_config(torch.device("cpu")))
    _calibrate_frozen_norms(model, calibration_image)
    with torch.no_grad():
        # The mask predictor starts at std 0.001: every mask probability sits at 0.5 and thresholding them
        # would compare rounding noise. Logits of order one give masks with shape.
        model.roi_heads.mask_head.predictor.weight.mul_(300.0)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "tools/benchmark.py model"}, f)


def _detections_match(ours, theirs) -> str:
    """'' when every detection of `theirs` is matched by one of `ours` (same class, box IoU > 0.99, score within
    1e-4, mask IoU > 0.99), else what differs."""
    from detlib.structures import Boxes, pairwise_iou

    boxes, scores, classes, masks = ours
    peer_boxes, peer_scores, peer_classes, peer_masks = theirs
    if len(boxes) != len(peer_boxes):
        return f"{len(boxes)} detections against {len(peer_boxes)}"
    iou = pairwise_iou(Boxes(peer_boxes), Boxes(boxes))
    iou[peer_classes[:, None] != classes[None, :]] = 0
    best, match = iou.max(dim=1)
    if not (best > 0.99).all() or len(set(match.tolist())) != len(match):
        return f"{int((best <= 0.99).sum())} detections unmatched at IoU 0.99"
    score_diff = (scores[match] - peer_scores).abs().max().item()
    if score_diff > 1e-4:
        return f"scores differ by {score_diff:.1e}"
    # Pasted masks threshold probabilities at 0.5, so a few pixels sitting on it may flip with rounding.
    ours_masks = masks[match]
    inter = (ours_masks & peer_masks).flatten(1).sum(1).float()
    union = (ours_masks | peer_masks).flatten(1).sum(1).float()
    mask_iou = inter[union > 0] / union[union > 0]  # both empty counts as equal
    if len(mask_iou) and mask_iou.min() < 0.9:
        return f"mask IoU down to {mask_iou.min().item():.3f}"
    disagree = (ours_masks != peer_masks).float().mean().item()
    return "" if disagree < 1e-3 else f"{disagree:.1e} of mask pixels differ"


def _agreement(ours, theirs) -> str:
    """How many of `theirs` detections one of `ours` matches (same class, IoU > 0.9), and the score change."""
    from detlib.structures import Boxes, pairwise_iou

    iou = pairwise_iou(Boxes(theirs[0]), Boxes(ours[0]))
    iou[theirs[2][:, None] != ours[2][None, :]] = 0
    best, match = iou.max(dim=1)
    found = best > 0.9
    score_change = (ours[1][match] - theirs[1])[found].abs().max().item() if found.any() else float("nan")
    return f"{int(found.sum())}/{len(found)} detections found again at IoU 0.9 (max score change {score_change:.1e})"


LOSS_TOLERANCE = 1e-5  # relative; float32 sums over ~10^5 anchors in another order stay well within it


def _losses_match(ours: Dict[str, float], theirs: Dict[str, float]) -> str:
    if set(ours) != set(theirs):
        return f"loss names differ: {sorted(ours)} against {sorted(theirs)}"
    worst = max(abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12) for k in ours)
    if worst < LOSS_TOLERANCE:
        return ""
    return f"first-step losses without sampling differ (relative {worst:.1e}): {ours} against {theirs}"


def _torchvision_system(device: torch.device, train_size: Tuple[int, int]) -> _ModelSystem:
    import torchvision

    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=800, max_size=1333
    ).to(device)
    targets = []
    images = []
    for i in range(2):
        image, objects = _scene(*train_size, num_objects=5, seed=10 + i)
        masks = []
        for o in objects:
            rle = mask_util.merge(mask_util.frPyObjects([o["polygon"]], *train_size))
            masks.append(torch.from_numpy(mask_util.decode(rle)))
        images.append(image.flip(0).float().div(255).to(device))
        targets.append(
            {
                "boxes": torch.tensor([o["box"] for o in objects]).to(device),
                "labels": torch.tensor([o["category"] + 1 for o in objects]).to(device),
                "masks": torch.stack(masks).to(device),
            }
        )

    class TorchvisionSystem(_ModelSystem):
        def infer(self, image):
            self.model.eval()
            with torch.no_grad():
                out = self.model([image.flip(0).float().div(255).to(self.device)])[0]
            return out["boxes"], out["scores"], out["labels"], out["masks"]

        def train_step(self):
            self.model.train()
            losses = self.model(images, targets)
            total = sum(losses.values())
            self.optimizer.zero_grad()
            total.backward()
            self.optimizer.step()
            return {k: v.item() for k, v in losses.items()}

    return TorchvisionSystem("torchvision", model, device, [])


def _timed_once(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def _interleaved(
    systems: List[_ModelSystem], work: Callable[[_ModelSystem], object], repeats: int, device: torch.device
) -> List[float]:
    """Median seconds of `work(system)` per system; runs alternate systems and flip their order each round."""
    times = [[] for _ in systems]
    for r in range(repeats):
        order = range(len(systems)) if r % 2 == 0 else reversed(range(len(systems)))
        for i in order:
            times[i].append(_timed_once(lambda: work(systems[i]), device))
    return [statistics.median(t) for t in times]


def _memory_child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: build one system, run one phase, print its peak memory in MB."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = _model_sizes(args.quick)
    if args.memory_child.startswith("torchvision"):
        system = _torchvision_system(device, sizes["train"])
    else:
        build = _detlib_system if args.memory_child.startswith("detlib") else _detectron2_system
        system = build(args.weights, device, sizes["train"], *([args.opts] if build is _detlib_system else []))
    image, _ = _scene(*sizes["infer"], num_objects=5, seed=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if args.memory_child.endswith(":infer"):
        system.infer(image)
    else:
        system.train_step()
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
        with open("/proc/self/status") as f:
            print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024)


def _peak_memory_mb(system: str, phase: str, args: argparse.Namespace, weights: str) -> float:
    import subprocess

    command = [
        sys.executable,
        os.path.abspath(__file__),
        "model",
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--memory-child",
        f"{system}:{phase}",
        "--weights",
        weights,
    ]
    if args.quick:
        command.append("--quick")
    if args.opts and system == "detlib":
        command += ["--opts", *args.opts]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def _unsampled_losses(
    weights: str, device: torch.device, train_size: Tuple[int, int], opts: Sequence[str]
) -> Tuple[Dict[str, float], Dict[str, float]]:
    """(Detectron2's, detlib's with `opts`) losses of one training forward on the benchmark's batch, each model
    built with NO_SAMPLING."""
    peer = _detectron2_system(weights, device, train_size, NO_SAMPLING)
    ours = _detlib_system(weights, device, train_size, list(opts) + NO_SAMPLING)
    torch.manual_seed(0)
    theirs = peer.losses()
    torch.manual_seed(0)
    return theirs, ours.losses()


def _model_sizes(quick: bool) -> Dict[str, Tuple[int, int]]:
    if quick:
        return {"infer": (400, 608), "train": (256, 320)}
    return {"infer": (800, 1216), "train": (512, 640)}


def run_model(args: argparse.Namespace) -> None:
    if args.memory_child:
        _memory_child(args)
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = _model_sizes(args.quick)
    repeats = args.repeats or (2 if args.quick else 5)
    for logger_name in ("detlib", "detectron2", "fvcore"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    try:
        import detectron2  # noqa: F401

        peer_name = "detectron2"
    except ImportError:
        peer_name = "torchvision"
        print(
            "detectron2 is not importable: the peer is torchvision's maskrcnn_resnet50_fpn (time only)", file=sys.stderr
        )
    load_before = os.getloadavg()
    image, _ = _scene(*sizes["infer"], num_objects=5, seed=0)
    with tempfile.TemporaryDirectory(prefix="detlib_model_benchmark_") as workdir:
        weights = os.path.join(workdir, "model.pkl")
        if peer_name == "detectron2":
            _make_detectron2_weights(weights, image)
            peer = _detectron2_system(weights, device, sizes["train"])
        else:
            from detlib import model_zoo
            from detlib.config import get_cfg
            from detlib.modeling import build_model

            # No peer to make the weights: detlib's own random model, calibrated the same way, saved as .pkl.
            cfg = get_cfg()
            cfg.merge_from_file(model_zoo.get_config_file(MODEL_CONFIG))
            cfg.merge_from_list(_model_overrides(torch.device("cpu")))
            torch.manual_seed(0)
            made = build_model(cfg)
            _calibrate_frozen_norms(made, image)
            import pickle

            with open(weights, "wb") as f:
                pickle.dump({"model": {k: v.numpy() for k, v in made.state_dict().items()}}, f)
            peer = _torchvision_system(device, sizes["train"])
        ours = _detlib_system(weights, device, sizes["train"])
        systems = [peer, ours]

        # Equal outputs first (the first calls are also the warm-up). Losses are compared on a copy of each model
        # that samples nothing (NO_SAMPLING); the timed models keep the default sampling.
        outputs = [s.infer(image) for s in systems]
        if peer_name == "detectron2":
            exact_losses = _unsampled_losses(weights, device, sizes["train"], ())
            problems = [_detections_match(outputs[1], outputs[0]), _losses_match(exact_losses[1], exact_losses[0])]
            problems = [p for p in problems if p]
            if problems:
                raise SystemExit("detlib and Detectron2 disagree, no ratio printed: " + "; ".join(problems))
            check = (
                f"{len(outputs[0][0])} detections matched; first-step losses with every anchor and RoI sampled "
                f"equal to {LOSS_TOLERANCE:.0e} relative"
            )
        else:
            check = "not checked (different models)"
        for s in systems:
            torch.manual_seed(0)
            s.train_step()
        if args.opts:
            # The opt-in mode is timed in place of the default one, which has just been checked equal. Its own
            # outputs differ by design; how much is reported.
            ours = systems[1] = _detlib_system(weights, device, sizes["train"], args.opts)
            opt_outputs = ours.infer(image)
            torch.manual_seed(0)
            ours.train_step()
            check += f"; timed: detlib with {' '.join(args.opts)}"
            if peer_name == "detectron2":
                opt_losses = _unsampled_losses(weights, device, sizes["train"], args.opts)[1]
                check += f": {_agreement(opt_outputs, outputs[0])}, first-step losses (detlib/detectron2) "
                check += ", ".join(
                    f"{k} {v:.4f}/{exact_losses[0][k]:.4f}" for k, v in opt_losses.items() if k in exact_losses[0]
                )
        infer_s = _interleaved(systems, lambda s: s.infer(image), repeats, device)
        train_s = _interleaved(systems, lambda s: s.train_step(), repeats, device)
        memory = {
            (s.name, phase): _peak_memory_mb(s.name, phase, args, weights)
            for s in systems
            for phase in ("infer", "train")
        }
    load_after = os.getloadavg()

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    memory_kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of a child process"
    print(f"command: python tools/benchmark.py {' '.join(sys.argv[1:])}")
    print(f"device: {where}; torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus")
    print(
        "load average (1, 5, 15 min): before {:.1f} {:.1f} {:.1f}, after {:.1f} {:.1f} {:.1f}".format(
            *load_before, *load_after
        )
    )
    print(
        f"{MODEL_CONFIG}; inference on one {sizes['infer'][0]}x{sizes['infer'][1]} image (100 detections, masks "
        f"pasted), training step on 2 images {sizes['train'][0]}x{sizes['train'][1]} with 5 polygons each; "
        f"median of {repeats} interleaved runs; memory: {memory_kind} (MB)"
    )
    print(f"check: {check}\n")
    rows = []
    for phase, seconds in (("inference s/image", infer_s), ("training s/iter", train_s)):
        rows.append([phase, seconds[0], seconds[1], seconds[1] / seconds[0]])
    for phase in ("infer", "train"):
        peer_mb, ours_mb = memory[(peer.name, phase)], memory[("detlib", phase)]
        rows.append([f"peak memory MB, {phase}", peer_mb, ours_mb, ours_mb / peer_mb])
    print(tabulate(rows, headers=["", peer.name, "detlib", f"detlib/{peer.name}"], tablefmt="github", floatfmt=".3f"))


def same_detections(expected, actual) -> float:
    """The fraction of the eager detections that `actual` has too: same class, IoU > 0.99, score within 1e-3."""
    from detlib.structures import Boxes, pairwise_iou

    boxes, scores, classes = expected[:3]
    got_boxes, got_scores, got_classes = (torch.as_tensor(a) for a in actual[:3])
    if len(boxes) == 0:
        return float(len(got_boxes) == 0)
    close = pairwise_iou(Boxes(boxes), Boxes(got_boxes)) > 0.99
    close &= (classes[:, None] == got_classes[None, :]) & ((scores[:, None] - got_scores[None, :]).abs() < 1e-3)
    return close.any(dim=1).float().mean().item() * min(1.0, len(got_boxes) / len(boxes))


def run_export(args: argparse.Namespace) -> None:
    import tempfile

    import onnxruntime

    from detlib.checkpoint import DetectionCheckpointer
    from detlib.config import get_cfg
    from detlib.export import ExportableDetector, export_program
    from detlib.export.inputs import load_test_image
    from detlib.export.onnx_export import export_onnx
    from detlib.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    image = load_test_image(cfg, args.image)
    eager = ExportableDetector(model)
    sample = torch.nn.functional.interpolate(image[None].float(), scale_factor=0.75)[0].to(torch.uint8)
    print(f"exporting with a {tuple(sample.shape[1:])} sample, timing on {tuple(image.shape[1:])}", file=sys.stderr)
    program = export_program(model, sample)
    with tempfile.TemporaryDirectory() as tmp:
        torch.export.save(program, f"{tmp}/model.pt2")
        pt2 = torch.export.load(f"{tmp}/model.pt2").module()
        export_onnx(program, (sample,), f"{tmp}/model.onnx", eager.output_names)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(f"{tmp}/model.onnx", options, providers=["CPUExecutionProvider"])
    runtimes = {
        "eager": lambda: eager(image),
        "torch.export (.pt2)": lambda: pt2(image),
        "ONNX Runtime": lambda: session.run(None, {"image": image.numpy()}),
    }
    with torch.no_grad():
        expected = eager(image)
        checks = {name: same_detections(expected, run()) for name, run in runtimes.items()}
        bad = {name: check for name, check in checks.items() if check < 0.98}
        if bad:
            raise SystemExit(f"Outputs differ from eager (fraction of detections matched): {bad}; not timing")
        times = {name: [] for name in runtimes}
        for _ in range(args.repeats):  # interleaved: a change in the machine's load hits every runtime alike
            for name, run in runtimes.items():
                start = time.perf_counter()
                run()
                times[name].append(1e3 * (time.perf_counter() - start))
    base = statistics.median(times["eager"])
    rows = [
        [name, statistics.median(t), base / statistics.median(t), f"{100 * checks[name]:.0f}% matched"]
        for name, t in times.items()
    ]
    print(f"command: python tools/benchmark.py {' '.join(sys.argv[1:])}")
    load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(
        f"cpu: {platform.processor() or platform.machine()}; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus{load}"
    )
    print(f"{len(expected[0])} detections; median of {args.repeats} interleaved calls after one warm-up\n")
    print(tabulate(rows, headers=["runtime", "ms", "speed vs eager", "check"], tablefmt="github", floatfmt=".2f"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subcommands = parser.add_subparsers(dest="subcommand", required=True)

    ops_parser = subcommands.add_parser("ops", help="NMS and ROIAlign against torchvision.ops")
    ops_parser.add_argument("--quick", action="store_true", help="a few representative cases only")
    ops_parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ops_parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")
    ops_parser.set_defaults(run=run_ops)

    eval_parser = subcommands.add_parser("eval", help="COCOEvaluator against pycocotools and Detectron2")
    eval_parser.add_argument("--images", type=int, default=5000, help="images of the bbox case")
    eval_parser.add_argument("--segm-images", type=int, default=500, help="images of the segm case (0: skip)")
    eval_parser.add_argument("--dets", type=int, default=100, help="detections per image")
    eval_parser.add_argument("--repeats", type=int, default=1, help="interleaved evaluate() runs (median reported)")
    eval_parser.add_argument("--seed", type=int, default=0)
    eval_parser.set_defaults(run=run_eval)

    model_parser = subcommands.add_parser("model", help="Mask R-CNN R50-FPN against Detectron2 (or torchvision)")
    model_parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    model_parser.add_argument("--quick", action="store_true", help="smaller images and 2 repeats")
    model_parser.add_argument("--repeats", type=int, default=0, help="interleaved runs per phase (0: 5, quick 2)")
    model_parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    model_parser.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="detlib config options of an opt-in mode to time (e.g. TEST.AMP.ENABLED True), "
        "after the default model has been checked against the peer",
    )
    model_parser.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    model_parser.add_argument("--weights", default="", help=argparse.SUPPRESS)
    model_parser.set_defaults(run=run_model)

    export_parser = subcommands.add_parser("export", help="exported programs (.pt2, ONNX) against eager, CPU")
    export_parser.add_argument("--config-file", required=True)
    export_parser.add_argument("--image", required=True, help="image file, resized as at test time")
    export_parser.add_argument("--repeats", type=int, default=10, help="timed calls per runtime (median reported)")
    export_parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config KEY VALUE pairs")
    export_parser.set_defaults(run=run_export)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
