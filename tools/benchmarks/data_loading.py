"""The training loader: images per second of build_detection_train_loader (read and decode the JPEG, resize the
shortest edge as the Mask R-CNN configs do, random flip, polygon masks, aspect-ratio grouping, batching) with 0, 1
and 2 workers, against Detectron2's loader on the same COCO-format dataset and augmentations. The batches are
checked equal first (flips and sizes made deterministic), then both loaders are timed in interleaved runs."""

import argparse
import contextlib
import glob
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from itertools import islice
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from tabulate import tabulate

from .common import describe_machine, load_average, print_command, quadrilateral

HELP = "the training data loader against Detectron2's, with 0, 1 and 2 workers"

# Base-RCNN-FPN.yaml's INPUT: the shortest edge is one of these, the longest at most MAX_SIZE.
MIN_SIZES = (640, 672, 704, 736, 768, 800)
MAX_SIZE = 1333


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=200, help="JPEG images in the dataset")
    parser.add_argument("--batch-size", type=int, default=2, help="images per batch (Mask R-CNN: 2 per GPU)")
    parser.add_argument("--batches", type=int, default=40, help="batches timed per run")
    parser.add_argument(
        "--warmup", type=int, default=5, help="batches before the timed ones (start the workers, fill their buffers)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="num_workers values to time")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs (median reported)")
    parser.add_argument("--check-batches", type=int, default=8, help="batches compared before timing")
    parser.add_argument("--mask-format", default="polygon", choices=["polygon", "bitmask"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the loading process")
    parser.add_argument("--seed", type=int, default=0)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour fields plus grain: JPEG sizes and decode times near those of photographs."""
    coarse = rng.integers(0, 256, size=(height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image += rng.integers(-20, 21, size=(height, width, 3), dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(root: str, num_images: int, seed: int) -> str:
    """`num_images` JPEGs of 640x480 (two thirds) or 480x640 with 1-15 polygon objects each, under `root`, and
    their COCO json; returns the json's path."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = (480, 640) if rng.random() < 2 / 3 else (640, 480)
        image = _background(height, width, rng)
        for _ in range(int(rng.integers(1, 16))):
            w, h = np.exp(rng.uniform(np.log(16), np.log(0.6 * min(height, width)), size=2))
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            polygon = quadrilateral(float(x), float(y), float(w), float(h), rng)
            points = np.round(np.array(polygon).reshape(-1, 2)).astype(np.int32)
            cv2.fillPoly(image, [points], tuple(int(c) for c in rng.integers(0, 256, size=3)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                    "segmentation": [polygon],
                }
            )
        file_name = f"{image_id:06d}.jpg"
        cv2.imwrite(os.path.join(root, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    categories = [{"id": c, "name": f"category{c}"} for c in (1, 2, 3)]
    json_file = os.path.join(root, "annotations.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file


class _Library:
    """One library's loader parts, reached by the names detlib and Detectron2 share."""

    def __init__(self, name: str, data_module, transforms, sampler_of: Callable[[int, bool, int], object]):
        self.name = name
        self.data = data_module
        self.T = transforms
        self.sampler_of = sampler_of

    def register(self, dataset_name: str, json_file: str, image_root: str) -> List[dict]:
        self.data.datasets.register_coco_instances(dataset_name, {}, json_file, image_root)
        return self.data.get_detection_dataset_dicts(dataset_name)

    def loader(self, records: List[dict], args: argparse.Namespace, num_workers: int, checked: bool) -> Iterable:
        """The training loader; `checked`: over the unshuffled stream, every image flipped and resized to 704."""
        min_sizes, flip = ((704,), 1.0) if checked else (MIN_SIZES, 0.5)
        mapper = self.data.DatasetMapper(
            is_train=True,
            augmentations=[self.T.ResizeShortestEdge(min_sizes, MAX_SIZE, "choice"), self.T.RandomFlip(prob=flip)],
            image_format="BGR",
            use_instance_mask=True,
            instance_mask_format=args.mask_format,
        )
        return self.data.build_detection_train_loader(
            records,
            mapper=mapper,
            sampler=self.sampler_of(len(records), not checked, args.seed),
            total_batch_size=args.batch_size,
            aspect_ratio_grouping=True,
            num_workers=num_workers,
        )


def _detlib() -> _Library:
    import detlib.data
    import detlib.data.datasets
    import detlib.data.transforms
    from detlib.data.samplers import TrainingSampler

    def sampler(size: int, shuffle: bool, seed: int):
        return TrainingSampler(size, shuffle=shuffle, seed=seed, rank=0, world_size=1)

    return _Library("detlib", detlib.data, detlib.data.transforms, sampler)


def _detectron2():
    try:
        import detectron2.data
        import detectron2.data.datasets
        import detectron2.data.transforms
        from detectron2.data.samplers import TrainingSampler
    except ImportError:
        return None

    def sampler(size: int, shuffle: bool, seed: int):
        return TrainingSampler(size, shuffle=shuffle, seed=seed)

    return _Library("detectron2", detectron2.data, detectron2.data.transforms, sampler)


def _masks(instances, mask_format: str) -> List:
    if mask_format == "polygon":
        return [[np.asarray(p, dtype=np.float64) for p in polygons] for polygons in instances.gt_masks.polygons]
    return [instances.gt_masks.tensor]


def batch_differences(ours: List[dict], theirs: List[dict], mask_format: str) -> Tuple[str, float]:
    """('' or what differs, the largest box or polygon coordinate difference) of two batches."""
    worst = 0.0
    if [d["image_id"] for d in ours] != [d["image_id"] for d in theirs]:
        return f"images {[d['image_id'] for d in ours]} != {[d['image_id'] for d in theirs]}", worst
    for a, b in zip(ours, theirs):
        where = f"image {a['image_id']}"
        if (a["height"], a["width"]) != (b["height"], b["width"]) or not torch.equal(a["image"], b["image"]):
            return f"{where}: image differs", worst
        ia, ib = a["instances"], b["instances"]
        if not torch.equal(ia.gt_classes, ib.gt_classes):
            return f"{where}: classes differ", worst
        if ia.gt_boxes.tensor.shape != ib.gt_boxes.tensor.shape:
            return f"{where}: {len(ia)} instances != {len(ib)}", worst
        worst = max(worst, float(np.abs(ia.gt_boxes.tensor.numpy() - ib.gt_boxes.tensor.numpy()).max(initial=0)))
        masks_a, masks_b = _masks(ia, mask_format), _masks(ib, mask_format)
        if mask_format == "bitmask":
            if not torch.equal(masks_a[0], masks_b[0]):
                return f"{where}: masks differ", worst
            continue
        if [[p.shape for p in m] for m in masks_a] != [[p.shape for p in m] for m in masks_b]:
            return f"{where}: polygons differ in shape", worst
        for pa, pb in zip((p for m in masks_a for p in m), (p for m in masks_b for p in m)):
            worst = max(worst, float(np.abs(pa - pb).max(initial=0)))
    return ("" if worst <= 1e-3 else f"coordinates differ by {worst:.2e}"), worst


def check(libraries: Sequence[_Library], records: Dict[str, List[dict]], args: argparse.Namespace) -> List[list]:
    """Compare the first batches of detlib's loader at each worker count with those of Detectron2's in-process
    loader (detlib's own without it); rows for the report. Detectron2's batches with workers are left out: they
    group the items in the order the workers deliver them, another order."""
    reference_library = libraries[-1]
    reference = list(
        islice(iter(reference_library.loader(records[reference_library.name], args, 0, True)), args.check_batches)
    )
    rows = []
    for num_workers in args.workers:
        if reference_library.name == "detlib" and num_workers == 0:
            continue
        loader = libraries[0].loader(records["detlib"], args, num_workers, True)
        worst, problem = 0.0, ""
        for ours, theirs in zip(islice(iter(loader), args.check_batches), reference):
            problem, difference = batch_differences(ours, theirs, args.mask_format)
            worst = max(worst, difference)
            if problem:
                break
        rows.append(
            [f"detlib, {num_workers} workers", f"{reference_library.name}, 0 workers", problem or "equal", worst]
        )
    return rows


def _stat_cpu_seconds(pid: str) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # from the state on: the name may hold spaces
    except FileNotFoundError:  # a worker that has just exited
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_seconds() -> float:
    """CPU seconds (user and system) used so far by this process and its live children (a loader's workers);
    NaN without Linux's /proc."""
    pid = str(os.getpid())
    if not os.path.exists(f"/proc/{pid}/stat"):
        return math.nan
    children = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(path) as f:
            children += f.read().split()
    return sum(_stat_cpu_seconds(p) for p in [pid] + children)


def timed_run(loader: Iterable, warmup: int, num_batches: int, batch_size: int) -> Tuple[float, float]:
    """(images per second, CPU ms per image of this process and the workers) over `num_batches` batches after
    `warmup` batches (the first starts the workers)."""
    batches = iter(loader)
    for _ in islice(batches, max(warmup, 1)):
        pass
    cpu, start = cpu_seconds(), time.perf_counter()
    for _ in islice(batches, num_batches):
        pass
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    del batches  # stops the workers
    images = num_batches * batch_size
    return images / seconds, 1e3 * cpu / images


def measure(libraries: Sequence[_Library], records: Dict[str, List[dict]], args: argparse.Namespace) -> Dict:
    """{(library, num_workers): [(images/s, CPU ms per image) of each run]}, the runs interleaved."""
    results: Dict[Tuple[str, int], List[Tuple[float, float]]] = {}
    for repeat in range(args.repeats):
        for num_workers in args.workers:
            for library in libraries:
                loader = library.loader(records[library.name], args, num_workers, False)
                speed, cpu = timed_run(loader, args.warmup, args.batches, args.batch_size)
                results.setdefault((library.name, num_workers), []).append((speed, cpu))
                print(
                    f"  run {repeat + 1}: {library.name}, {num_workers} workers: {speed:.1f} images/s, "
                    f"CPU {cpu:.1f} ms/image",
                    file=sys.stderr,
                )
    return results


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    for logger_name in ("detlib", "detectron2", "fvcore"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    libraries = [_detlib()]
    peer = _detectron2()
    if peer is None:
        print("detectron2 is not importable: its columns are left out", file=sys.stderr)
    else:
        libraries.append(peer)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="detlib_data_benchmark_") as root:
        json_file = write_dataset(root, args.images, args.seed)
        with contextlib.redirect_stdout(sys.stderr):
            records = {lib.name: lib.register(f"benchmark_data_{args.images}", json_file, root) for lib in libraries}
        checks = check(libraries, records, args)
        if any(row[2] != "equal" for row in checks):
            print(tabulate(checks, headers=["loader", "against", "check", "max coordinate diff"], tablefmt="github"))
            raise SystemExit("the loaders' batches differ: not timed")
        results = measure(libraries, records, args)
    load_after = load_average()

    print_command()
    versions = ", ".join(f"{lib.name} {_version(lib.name)}" for lib in libraries)
    print(f"{describe_machine(torch.device('cpu'))}; {versions}")
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    print(
        f"{args.images} JPEGs (640x480 and 480x640, polygon objects), batches of {args.batch_size} grouped by aspect "
        f"ratio, shortest edge {MIN_SIZES} (max {MAX_SIZE}), flip 0.5, masks as {args.mask_format}s; images/s over "
        f"{args.batches} batches after {args.warmup}, median of {args.repeats} interleaved runs; CPU: user + system time "
        "of the loading process and its workers over those batches, per image\n"
    )
    print(tabulate(checks, headers=["loader", "against", "check", "max coordinate diff"], tablefmt="github"))
    print()
    speed = {key: statistics.median(s for s, _ in runs) for key, runs in results.items()}
    cpu = {key: statistics.median(c for _, c in runs) for key, runs in results.items()}
    rows = []
    for num_workers in args.workers:
        key = ("detlib", num_workers)
        row = [num_workers, speed[key], speed[key] / speed[("detlib", args.workers[0])], cpu[key]]
        if peer is not None:
            peer_key = ("detectron2", num_workers)
            row += [speed[peer_key], speed[key] / speed[peer_key], cpu[peer_key]]
        rows.append(row)
    headers = ["workers", "detlib images/s", f"/ detlib at {args.workers[0]} workers", "detlib CPU ms/image"]
    if peer is not None:
        headers += ["detectron2 images/s", "detlib / detectron2", "detectron2 CPU ms/image"]
    print(tabulate(rows, headers=headers, tablefmt="github", floatfmt=".2f"))


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "(source tree)"
