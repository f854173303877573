#!/usr/bin/env python
"""Speed benchmarks. Every one times detlib and its peer in the same process and prints the ratio.

    python tools/benchmark.py ops [--quick] [--device cpu|cuda] [--repeats N]
    python tools/benchmark.py eval [--images N] [--segm-images N] [--repeats N]
    python tools/benchmark.py export --config-file CFG --image IMG [--repeats N] [KEY VALUE ...]

Subcommands:
    ops     detlib.layers.{nms, batched_nms, roi_align} against torchvision.ops on proposal-like
            boxes in a 1333x800 image and (2, 256, 200, 304) stride-4 features.
    eval    COCOEvaluator.evaluate() against pycocotools' COCOeval and (when importable) Detectron2's
            COCOEvaluator on a synthetic COCO-scale set, bbox and segm; and the memory process() adds.
    export  one image through the model in eager mode, its torch.export program (.pt2, loaded back) and
            its ONNX export in ONNX Runtime, on the CPU; the exports are traced at another image size.
"""
import argparse
import contextlib
import copy
import gc
import io
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


def nms_rows(sizes: Sequence[int], thresholds: Sequence[float], group_counts: Sequence[int], repeats: int,
             device: torch.device) -> List[list]:
    from torchvision import ops

    from detlib.layers import batched_nms, nms

    rows = []
    for n in sizes:
        boxes, scores = proposal_boxes(n, seed=n, device=device)
        idxs = {k: torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(k)).to(device)
                for k in group_counts}
        for threshold in thresholds:
            cases = [("nms", "", lambda: nms(boxes, scores, threshold), lambda: ops.nms(boxes, scores, threshold))]
            for k in group_counts:
                cases.append((
                    "batched_nms", f", {k} ids",
                    lambda k=k: batched_nms(boxes, scores, idxs[k], threshold),
                    lambda k=k: ops.batched_nms(boxes, scores, idxs[k], threshold),
                ))
            for op, extra, ours, theirs in cases:
                ours_ms, ours_keep = timed(ours, repeats, device)
                theirs_ms, theirs_keep = timed(theirs, repeats, device)
                same = "yes" if torch.equal(ours_keep, theirs_keep) else "NO"
                rows.append([op, f"{n} boxes, IoU {threshold}{extra}", theirs_ms, ours_ms, theirs_ms / ours_ms, same])
                print_progress(rows[-1])
    return rows


def roi_align_rows(roi_counts: Sequence[int], output_sizes: Sequence[int], sampling_ratios: Sequence[int],
                   repeats: int, device: torch.device) -> List[list]:
    from torchvision import ops

    from detlib.layers import roi_align

    scale = 0.25
    features = torch.randn(2, 256, 200, 304, generator=torch.Generator().manual_seed(0)).to(device)
    features.requires_grad_()
    image_size = (round(features.shape[2] / scale), round(features.shape[3] / scale))
    rows = []
    for num_rois in roi_counts:
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

                case = f"{num_rois} rois, {size}x{size}, ratio {ratio}"
                for op, fn in (("roi_align fwd", forward), ("roi_align fwd+bwd", forward_backward)):
                    ours_ms, ours_out = timed(lambda: fn("ours"), repeats, device)
                    theirs_ms, theirs_out = timed(lambda: fn("theirs"), repeats, device)
                    diff = (ours_out - theirs_out).abs().max().item()
                    rows.append([op, case, theirs_ms, ours_ms, theirs_ms / ours_ms, f"max|diff| {diff:.1e}"])
                    print_progress(rows[-1])
    return rows


def print_progress(row: list) -> None:
    print(f"  {row[0]:18s} {row[1]:34s} torchvision {row[2]:9.2f} ms  detlib {row[3]:9.2f} ms  x{row[4]:.2f}",
          file=sys.stderr, flush=True)


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
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.choice(COCO_CATEGORY_IDS)),
                "bbox": [float(x), float(y), float(w), float(h)], "area": float(area),
                "iscrowd": int(rng.random() < 0.01), "segmentation": [polygon],
            })
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


def _feed(evaluator, structures, dataset: dict, num_dets: int, masks: bool, seed: int,
          rss_at: Sequence[int]) -> Tuple[float, Dict[int, float]]:
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
    print(f"{task}: {num_images} images, {len(dataset['annotations'])} objects, {args.dets} detections "
          f"per image", file=sys.stderr, flush=True)

    out_dir = os.path.join(workdir, f"detlib_{name}")
    ours = COCOEvaluator(name, tasks=(task,), distributed=False, output_dir=out_dir)
    ours_process, ours_rss = _feed(ours, detlib_structures, dataset, args.dets, masks, args.seed, rss_at)
    peer = None
    if d2 is not None:
        contiguous = {c: k for k, c in enumerate(COCO_CATEGORY_IDS)}
        d2.MetadataCatalog.get(name).set(json_file=json_file, thing_dataset_id_to_contiguous_id=contiguous,
                                         thing_classes=[f"category{c}" for c in COCO_CATEGORY_IDS])
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
        print("  evaluate(): " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items() if v),
              file=sys.stderr, flush=True)

    median = {k: statistics.median(v) for k, v in times.items() if v}
    checks = {peer_name: _largest_difference(results["pycocotools"], results[peer_name])
              for peer_name in ("detlib", "detectron2") if peer_name in results}
    equal = all(diff <= 0.01 for diff in checks.values())
    row = [task, num_images, f"{results['pycocotools']['AP']:.2f}", median["pycocotools"],
           median.get("detectron2", float("nan")), median["detlib"]]
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

        d2 = argparse.Namespace(COCOEvaluator=detectron2.evaluation.COCOEvaluator, structures=detectron2.structures,
                                MetadataCatalog=MetadataCatalog)
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
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"pycocotools {version('pycocotools')}, faster-coco-eval {version('faster-coco-eval')}"
          + (f", detectron2 {version('detectron2')}" if d2 else ""))
    print("load average (1, 5, 15 min): before {:.1f} {:.1f} {:.1f}, after {:.1f} {:.1f} {:.1f}".format(
        *load_before, *load_after))
    print(f"{args.dets} detections per image; evaluate() wall time, median of {args.repeats} interleaved runs; "
          "ratio = detlib / peer (below 1: detlib faster), printed only when every AP metric and per-category AP "
          "equals pycocotools' to 0.01 (check: largest difference)\n")
    headers = ["task", "images", "AP", "pycocotools s", "detectron2 s", "detlib s", "detlib/pycocotools",
               "detlib/detectron2", "check (max |AP diff|)"]
    print(tabulate(rows, headers=headers, tablefmt="github", floatfmt=".2f"))
    print("\nprocess(): seconds inside process() over all images, and RSS growth (MB) from the first image")
    print(tabulate(memory, headers=["task", "images", "evaluator", "process() s", "RSS +MB", "RSS +MB"],
                   tablefmt="github", floatfmt=".1f"))


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
    print(f"cpu: {platform.processor() or platform.machine()}; torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus{load}")
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
