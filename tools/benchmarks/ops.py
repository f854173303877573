"""NMS and ROIAlign: detlib.layers.{nms, batched_nms, roi_align} against torchvision.ops on proposal-like boxes in a
1333x800 image and (2, 256, 200, 304) stride-4 features (NCHW and channels_last), outputs compared."""

import argparse
import itertools
import math
import sys
from typing import List, Sequence, Tuple

import torch
from tabulate import tabulate

from .common import describe_machine, load_average, print_command, timed

HELP = "NMS and ROIAlign against torchvision.ops"

IMAGE_SIZE = (800, 1333)  # (height, width) of the image the boxes live in


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a few representative cases only")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")


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


def run(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if args.quick:
        nms_args = dict(sizes=[1000, 10000], thresholds=[0.7], group_counts=[80])
        roi_args = dict(roi_counts=[512], output_sizes=[7], sampling_ratios=[0, 2])
    else:
        nms_args = dict(sizes=[1000, 10000, 50000], thresholds=[0.5, 0.7], group_counts=[5, 80])
        roi_args = dict(roi_counts=[512, 1000], output_sizes=[7, 14], sampling_ratios=[0, 2])
    rows = nms_rows(repeats=args.repeats, device=device, **nms_args)
    rows += roi_align_rows(repeats=args.repeats, device=device, **roi_args)

    print_command()
    print(f"{describe_machine(device)}, load average {load_average()}")
    print(f"median over {args.repeats} timed calls (3 when one call exceeds 1 s), after one warm-up call\n")
    headers = ["op", "case", "torchvision ms", "detlib ms", "speedup", "check"]
    print(tabulate(rows, headers=headers, tablefmt="github", floatfmt=".2f"))
