"""Export: one image through the model in eager mode, its torch.export program (.pt2, loaded back) and its ONNX
export in ONNX Runtime, on the CPU; the exports are traced at another image size and checked against eager."""

import argparse
import statistics
import sys
import time

import torch
from tabulate import tabulate

from .common import describe_machine, load_average, print_command

HELP = "exported programs (.pt2, ONNX) against eager, CPU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--image", required=True, help="image file, resized as at test time")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per runtime (median reported)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config KEY VALUE pairs")


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


def run(args: argparse.Namespace) -> None:
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
    print_command()
    print(
        f"{describe_machine(torch.device('cpu'))}; onnxruntime {onnxruntime.__version__}, load average {load_average()}"
    )
    print(f"{len(expected[0])} detections; median of {args.repeats} interleaved calls after one warm-up\n")
    print(tabulate(rows, headers=["runtime", "ms", "speed vs eager", "check"], tablefmt="github", floatfmt=".2f"))
