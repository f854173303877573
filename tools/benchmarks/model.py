"""The whole model: Mask R-CNN R50-FPN inference (one 800x1216 image, 100 detections with masks) and a training
step (2 images of 512x640) against Detectron2 on the weights Detectron2 made (detections checked equal first, and
first-step losses with nothing sampled), or against torchvision's maskrcnn_resnet50_fpn (time only); peak memory
per system and phase in child processes."""

import argparse
import logging
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from tabulate import tabulate

from .common import BENCHMARK_SCRIPT, describe_machine, load_average, print_command, quadrilateral, timed_once

HELP = "Mask R-CNN R50-FPN against Detectron2 (or torchvision)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smaller images and 2 repeats")
    parser.add_argument("--repeats", type=int, default=0, help="interleaved runs per phase (0: 5, quick 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="detlib config options of an opt-in mode to time (e.g. TEST.AMP.ENABLED True), "
        "after the default model has been checked against the peer",
    )
    parser.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--weights", default="", help=argparse.SUPPRESS)


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
        polygon = quadrilateral(x, y, w, h, rng)
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


def _interleaved(
    systems: List[_ModelSystem], work: Callable[[_ModelSystem], object], repeats: int, device: torch.device
) -> List[float]:
    """Median seconds of `work(system)` per system; runs alternate systems and flip their order each round."""
    times = [[] for _ in systems]
    for r in range(repeats):
        order = range(len(systems)) if r % 2 == 0 else reversed(range(len(systems)))
        for i in order:
            times[i].append(timed_once(lambda: work(systems[i]), device))
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
    command = [
        sys.executable,
        BENCHMARK_SCRIPT,
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


def run(args: argparse.Namespace) -> None:
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
    load_before = load_average()
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
    load_after = load_average()

    memory_kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of a child process"
    print_command()
    print(describe_machine(device))
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
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
