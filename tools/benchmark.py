#!/usr/bin/env python
"""Speed benchmarks. Every one times detlib and its peer in the same process and prints the ratio.

    python tools/benchmark.py ops [--quick] [--device cpu|cuda] [--repeats N]
    python tools/benchmark.py export --config-file CFG --image IMG [--repeats N] [KEY VALUE ...]

Subcommands:
    ops     detlib.layers.{nms, batched_nms, roi_align} against torchvision.ops on proposal-like
            boxes in a 1333x800 image and (2, 256, 200, 304) stride-4 features.
    export  one image through the model in eager mode, its torch.export program (.pt2, loaded back) and
            its ONNX export in ONNX Runtime, on the CPU; the exports are traced at another image size.
"""
import argparse
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, List, Sequence, Tuple

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
