r"""
Differential testing against Detectron2: one zoo config, built in both libraries, shrunk the same
way, given the same random weights and the same synthetic inputs, must give the same detections,
masks, keypoints and training losses.

How a comparison runs (`check_live` needs Detectron2; `check_recorded` needs only detlib):

1. `Case.d2_config()` / `Case.detlib_config()`: the zoo config of each library
   (`detectron2.model_zoo.get_config_file` / `detlib.model_zoo.get_config_file`), then `SHRINK`
   (ResNet-18, 64-channel FPN and heads, 3 classes, few proposals, CPU, no cap on detections per
   image, every anchor and proposal used in training so that no sampler draws), then the case's
   own `overrides`.
2. `random_weights(param_shapes, seed, case)`: a deterministic function of the parameter names and
   shapes, the seed and the case's `head_std` / `bias_offset` (NumPy only, no model involved):
   He-normal layers, BN / FrozenBN / GN parameters and statistics far from the identity, a small
   stem (pixels are ~100 in size) and small prediction layers so that boxes stay near their anchors
   and scores spread out. They are saved as a Detectron2 model-zoo pickle
   (`{"model": {name: ndarray}, "__author__": ...}`) and loaded by each library's own
   checkpointer; detlib must report no missing, unexpected or mis-shaped key.
3. `synthetic_batch(seed, ...)`: two BGR uint8 images (`IMAGE_HW`, not multiples of 32; "original"
   size 1.25x so that post-processing rescales), each with a few ground-truth boxes, classes and
   polygons (and keypoints when the config has KEYPOINT_ON; needs `Keypoints` in both structures).
4. `run_library`: inference on each image (`model.eval()`) and one training forward on the batch
   (`model.train()`, inside the library's `EventStorage`), as flat arrays (`instances_to_arrays`).
5. `compare_outputs(reference, ours)`: >= 98% of the reference detections matched one to one (same
   class, IoU > 0.99, |score difference| < 1e-3) and >= 98% of ours; each matched pasted mask agrees
   with its match on >= 99.9% of the image's pixels; matched keypoints within 0.1 px; the argmax of
   "sem_seg" equal on >= 99.9% of the pixels; "panoptic_seg" with the same segments (id, isthing,
   class) and ids equal on >= 99.9% of the pixels; the same losses, each within 1e-3 relative.
   Models with a semantic head (SemanticSegmentor, PanopticFPN) train on a synthetic "sem_seg"
   (`synthetic_sem_seg`: stuff classes in blocks, class 0 in the instances' boxes, a band of
   IGNORE_VALUE).

Reference data: `data/<case>_seed<k>.npz` holds Detectron2's outputs, the parameter names and
shapes of Detectron2's model, and checksums of the weights and inputs. CI has no Detectron2:
`check_recorded` regenerates weights and inputs, checks the checksums, runs detlib and compares.
Regenerate after changing a case, `SHRINK`, the weight rules or the inputs (needs Detectron2):

    PYTHONPATH=$PWD python tests/differential/harness.py --regenerate [case ...]

Adding a case (e.g. RetinaNet) is one test file, `tests/differential/test_<case>.py`:

    from harness import Case, case_tests

    CASE = Case(
        name="retinanet",  # its data: data/retinanet_seed<k>.npz
        config="COCO-Detection/retinanet_R_50_FPN_1x.yaml",  # a path both zoos know
        overrides=["MODEL.RETINANET.NUM_CLASSES", 3],  # on top of SHRINK; keys both libraries know
        head_std={r"cls_score\.weight$": 0.01, r"bbox_pred\.weight$": 0.002},  # default RCNN_HEAD_STD
        bias_offset={r"cls_score\.bias$": -2.0},  # added to every entry of matching biases
    )
    test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

then run the regeneration command for the case and commit `data/<case>_seed*.npz` (check each is
well under 1 MB). The regeneration command finds a case as the module-level `CASE` of a
`test_*.py` file in this directory. It refuses degenerate references: an image with fewer than
`MIN_DETECTIONS` detections, or as many as TEST.DETECTIONS_PER_IMAGE (ties at that cut would make
the comparison flaky); tune `head_std` / `bias_offset` (or the case's overrides) until it accepts.
Remember that `head_std` replaces the default dict: start from `{**RCNN_HEAD_STD, ...}` to extend it.
For a new output field, extend `instances_to_arrays` and `compare_detections` here.
"""

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch

DATA_DIR = Path(__file__).resolve().with_name("data")

# Same shrinking for every case: small enough for seconds per test on a CPU, with all training
# samples used (batch sizes far above the anchor / proposal counts) so that no sampler draws.
SHRINK: List[Any] = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.FPN.OUT_CHANNELS", 64,
    "MODEL.ROI_HEADS.NUM_CLASSES", 3,  # the ground truth uses classes 0..2
    "MODEL.RETINANET.NUM_CLASSES", 3,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 1000000,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 128,
    "MODEL.ROI_BOX_HEAD.CONV_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 64,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", (64, 64, 64, 64),
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 1000000,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 400,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 400,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
    "TEST.DETECTIONS_PER_IMAGE", 1000,
]  # fmt: skip

# Input images (height, width) as fed to the model; the "original" size is 1.25x.
IMAGE_HW: Tuple[Tuple[int, int], ...] = ((150, 180), (176, 132))
ORIGINAL_SCALE = 1.25

# Std of the weights of the R-CNN prediction layers: small enough that boxes stay near their
# anchors / proposals, large enough that scores spread out.
RCNN_HEAD_STD: Dict[str, float] = {
    r"stem\.conv1\.weight$": 0.0015,  # pixels are ~100 in size: brings the features to ~1
    r"rpn_head\.objectness_logits\.weight$": 0.2,
    r"rpn_head\.anchor_deltas\.weight$": 0.002,
    r"cls_score\.weight$": 0.03,
    r"bbox_pred\.weight$": 0.004,
    r"mask_head\.predictor\.weight$": 1.5,
}

MIN_DETECTIONS = 5

# Tolerances of the comparison.
MIN_MATCHED = 0.98
MATCH_IOU = 0.99
SCORE_ATOL = 1e-3
MIN_MASK_AGREEMENT = 0.999
KEYPOINT_ATOL = 0.1
LOSS_RTOL = 1e-3


@dataclass(frozen=True)
class Case:
    """One differential case: a zoo config path (relative to the zoo's configs/), config overrides
    on top of `SHRINK`, the weight rules of its prediction layers and the seeds to run."""

    name: str
    config: str
    overrides: Sequence[Any] = ()
    head_std: Mapping[str, float] = field(default_factory=lambda: dict(RCNN_HEAD_STD))
    bias_offset: Mapping[str, float] = field(default_factory=dict)
    seeds: Tuple[int, ...] = (0, 1, 2)

    def reference_path(self, seed: int) -> Path:
        return DATA_DIR / f"{self.name}_seed{seed}.npz"

    def detlib_config(self):
        from detlib.config import get_cfg
        from detlib.model_zoo import get_config_file

        cfg = get_cfg()
        cfg.merge_from_file(get_config_file(self.config))
        cfg.merge_from_list([str(v) if not isinstance(v, str) else v for v in [*SHRINK, *self.overrides]])
        return cfg

    def d2_config(self):
        from detectron2.config import get_cfg
        from detectron2.model_zoo import get_config_file

        cfg = get_cfg()
        cfg.merge_from_file(get_config_file(self.config))
        cfg.merge_from_list([str(v) if not isinstance(v, str) else v for v in [*SHRINK, *self.overrides]])
        return cfg


# -- weights -----------------------------------------------------------------------------------
# Detectron2's integer buffers, recorded beside its outputs so that CI needs no Detectron2 to rebuild the weights.
INT_BUFFER_PREFIX = "meta__int_buffer__"


def _rng(seed: int, name: str) -> np.random.Generator:
    # One stream per parameter: adding a layer does not change the others' values.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _is_norm(name: str) -> bool:
    return bool(re.search(r"(^|\.)(norm|bn\d*|gn)(\.|$)", name))


def _first_match(patterns: Mapping[str, float], name: str) -> Optional[float]:
    for pattern, value in patterns.items():
        if re.search(pattern, name):
            return value
    return None


def random_weights(
    param_shapes: Mapping[str, Sequence[int]],
    seed: int,
    case: Case,
    int_buffers: Optional[Mapping[str, np.ndarray]] = None,
) -> Dict[str, np.ndarray]:
    """Seeded weights for a state dict with these names and shapes (float32 NumPy arrays), and the integer buffers
    given as they are (they are tables, like Swin's relative position index, not weights).

    Norm layers get scales in [0.5, 1.5], shifts and running means ~ N(0, 0.1), running variances
    in [0.5, 2]: far from the identity, so a library that ignores one of them disagrees. Other
    multi-dimensional weights are He-normal over their fan-in, except the prediction layers named
    by `case.head_std` (centered over their inputs). A bias named by `case.bias_offset` gets the
    value added to every entry (e.g. a focal-loss prior)."""
    weights = {}
    int_buffers = int_buffers or {}
    for name, shape in sorted(param_shapes.items()):
        if name in int_buffers:
            weights[name] = int_buffers[name]
            continue
        shape = tuple(int(s) for s in shape)
        rng = _rng(seed, name)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 2.0, shape)
        elif leaf == "num_batches_tracked":
            value = np.zeros(shape)
        elif leaf == "fed_loss_cls_weights":  # class frequencies to a power: sampling odds, positive
            value = rng.uniform(0.5, 2.0, shape)
        elif _is_norm(name) and leaf == "weight":
            value = rng.uniform(0.5, 1.5, shape)
        elif _is_norm(name) and leaf == "bias":
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.02, shape)
            value += _first_match(case.bias_offset, name) or 0.0
        else:
            head_std = std = _first_match(case.head_std, name)
            if std is None:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                std = float(np.sqrt(1.0 / fan_in))
            value = rng.normal(0.0, std, shape)
            if head_std is not None and len(shape) > 1:
                # Centered over the inputs: the positive mean of post-ReLU features would otherwise
                # shift every logit of a class by one seed-dependent constant.
                value -= value.reshape(shape[0], -1).mean(axis=1).reshape((-1,) + (1,) * (len(shape) - 1))
        dtype = np.int64 if leaf == "num_batches_tracked" else np.float32
        weights[name] = value.astype(dtype)
    return weights


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(weights[name]).tobytes())
    return digest.hexdigest()


def save_d2_pickle(weights: Mapping[str, np.ndarray], path: Path) -> None:
    """A Detectron2 model-zoo style pickle of `weights`."""
    with open(path, "wb") as f:
        pickle.dump({"model": dict(weights), "__author__": "detlib differential tests"}, f)


# -- inputs ------------------------------------------------------------------------------------
@dataclass
class SyntheticImage:
    image: np.ndarray  # 3 x H x W uint8, BGR
    original_hw: Tuple[int, int]
    boxes: np.ndarray  # N x 4 XYXY float32, input pixels
    classes: np.ndarray  # N int64
    polygons: List[np.ndarray]  # one flat (x0, y0, x1, y1, ...) float64 polygon per instance
    keypoints: np.ndarray  # N x K x 3 float32 (x, y, visibility); K = 0 without keypoints


def synthetic_batch(seed: int, num_classes: int, num_keypoints: int = 0) -> List[SyntheticImage]:
    """Seeded images: blocky noise with a few tinted rectangles, each holding one ground-truth
    instance (an 8-vertex polygon touching its box's edges, a class, keypoints inside the box)."""
    rng = np.random.default_rng([seed, 7])
    batch = []
    for height, width in IMAGE_HW:
        coarse = rng.uniform(0, 255, (3, height // 8 + 1, width // 8 + 1))
        image = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :height, :width]
        image = image + rng.normal(0, 20, image.shape)
        count = int(rng.integers(2, 5))
        boxes, polygons, keypoints = [], [], []
        for _ in range(count):
            w, h = rng.uniform(24, 0.6 * width), rng.uniform(24, 0.6 * height)
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
            px = x0 + w / 2 * (1 + np.cos(angles))
            py = y0 + h / 2 * (1 + np.sin(angles))
            polygon = np.stack([px, py], axis=1)
            color = rng.uniform(0, 255, 3)
            inside = _inside_box(height, width, polygon.min(0), polygon.max(0))
            image[:, inside] = 0.5 * image[:, inside] + 0.5 * color[:, None]
            boxes.append([px.min(), py.min(), px.max(), py.max()])
            polygons.append(polygon.reshape(-1))
            kx = rng.uniform(px.min(), px.max(), num_keypoints)
            ky = rng.uniform(py.min(), py.max(), num_keypoints)
            keypoints.append(np.stack([kx, ky, rng.integers(0, 3, num_keypoints)], axis=1))
        batch.append(
            SyntheticImage(
                image=np.clip(image, 0, 255).astype(np.uint8),
                original_hw=(round(height * ORIGINAL_SCALE), round(width * ORIGINAL_SCALE)),
                boxes=np.asarray(boxes, dtype=np.float32),
                classes=rng.integers(0, num_classes, count).astype(np.int64),
                polygons=polygons,
                keypoints=np.asarray(keypoints, dtype=np.float32).reshape(count, num_keypoints, 3),
            )
        )
    return batch


def _inside_box(height: int, width: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    return (xs >= low[0]) & (xs <= high[0]) & (ys >= low[1]) & (ys <= high[1])


def synthetic_sem_seg(item: SyntheticImage, num_classes: int, ignore_value: int) -> np.ndarray:
    """H x W int64 semantic labels of `item` (a function of what `inputs_digest` covers): classes 1.. in
    40 px blocks, 0 (Panoptic FPN's "things") inside each ground-truth box, `ignore_value` on the top 6 rows."""
    height, width = item.image.shape[1:]
    ys, xs = np.mgrid[:height, :width]
    labels = (xs // 40 + ys // 40) % max(num_classes - 1, 1) + 1
    for x0, y0, x1, y1 in item.boxes:
        labels[_inside_box(height, width, np.array([x0, y0]), np.array([x1, y1]))] = 0
    labels[:6] = ignore_value
    return labels.astype(np.int64)


def inputs_digest(batch: Sequence[SyntheticImage]) -> str:
    digest = hashlib.sha256()
    for item in batch:
        for array in (item.image, item.boxes, item.classes, item.keypoints, *item.polygons):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(repr(item.original_hw).encode())
    return digest.hexdigest()


# -- running a library -------------------------------------------------------------------------
class _Library:
    """The few names that differ between detlib and Detectron2."""

    def __init__(self, package: str):
        modeling = importlib.import_module(f"{package}.modeling")
        checkpoint = importlib.import_module(f"{package}.checkpoint")
        structures = importlib.import_module(f"{package}.structures")
        events = importlib.import_module(f"{package}.utils.events")
        self.build_model = modeling.build_model
        self.DetectionCheckpointer = checkpoint.DetectionCheckpointer
        self.structures = structures
        self.EventStorage = events.EventStorage

    def targets(self, item: SyntheticImage, cfg=None) -> Any:
        """The item's gt boxes and classes, with masks and keypoints where `cfg` has them on."""
        s = self.structures
        fields = {"gt_boxes": s.Boxes(torch.from_numpy(item.boxes)), "gt_classes": torch.from_numpy(item.classes)}
        if cfg is not None and cfg.MODEL.MASK_ON:
            fields["gt_masks"] = s.PolygonMasks([[p] for p in item.polygons])
        if cfg is not None and cfg.MODEL.KEYPOINT_ON:
            fields["gt_keypoints"] = s.Keypoints(torch.from_numpy(item.keypoints))
        return s.Instances(tuple(item.image.shape[1:]), **fields)


def run_library(package: str, cfg, weights_file: Path, batch: Sequence[SyntheticImage], seed: int):
    """Build `cfg` in `package` ("detlib" or "detectron2"), load `weights_file` with its own
    checkpointer, run inference per image and one training forward.

    Returns:
        the outputs as flat arrays (`instances_to_arrays` per image, `loss__<name>` scalars), the
        model and its checkpointer (for the keys the load reported)."""
    lib = _Library(package)
    torch.manual_seed(seed)
    model = lib.build_model(cfg)
    checkpointer = lib.DetectionCheckpointer(model)
    checkpointer.load(str(weights_file))
    return run_model(package, model, batch, seed, cfg), model, checkpointer


def run_model(package: str, model: torch.nn.Module, batch: Sequence[SyntheticImage], seed: int, cfg=None):
    """Inference on each image of `batch` (`model.eval()`) and one training forward on the batch
    (`model.train()`, inside `package`'s `EventStorage`; masks and keypoints in the targets where `cfg`
    has them on), as flat arrays: `instances_to_arrays` per image, `loss__<name>` scalars."""
    lib = _Library(package)
    outputs: Dict[str, np.ndarray] = {}
    model.eval()
    with torch.no_grad():
        for index, item in enumerate(batch):
            height, width = item.original_hw
            result = model([{"image": torch.from_numpy(item.image), "height": height, "width": width}])
            outputs.update(result_to_arrays(result[0], f"img{index}__"))
    model.train()
    with lib.EventStorage(0):
        torch.manual_seed(seed)
        losses = model([_training_input(lib, item, cfg) for item in batch])
    model.eval()
    for name, value in losses.items():
        outputs[f"loss__{name}"] = np.asarray(value.detach().item(), dtype=np.float64)
    return outputs


def _training_input(lib: _Library, item: SyntheticImage, cfg=None) -> Dict[str, Any]:
    """The item as a training input: gt instances (as `cfg` asks; boxes and classes without a cfg, for
    models built from Python configs) and, for semantic models, a synthetic `sem_seg`."""
    inputs = {"image": torch.from_numpy(item.image)}
    meta_architecture = cfg.MODEL.META_ARCHITECTURE if cfg is not None else None
    if meta_architecture != "SemanticSegmentor":
        inputs["instances"] = lib.targets(item, cfg)
    if meta_architecture in ("SemanticSegmentor", "PanopticFPN"):
        head = cfg.MODEL.SEM_SEG_HEAD
        inputs["sem_seg"] = torch.from_numpy(synthetic_sem_seg(item, head.NUM_CLASSES, head.IGNORE_VALUE))
    return inputs


def result_to_arrays(result: Mapping[str, Any], prefix: str) -> Dict[str, np.ndarray]:
    """Flat arrays of one image's outputs: instances, the argmax of "sem_seg", and "panoptic_seg" (the id
    map, and per segment id, isthing, category_id)."""
    out: Dict[str, np.ndarray] = {}
    if "instances" in result:
        out.update(instances_to_arrays(result["instances"], prefix))
    if "sem_seg" in result:
        out[prefix + "sem_seg_argmax"] = result["sem_seg"].argmax(dim=0).numpy().astype(np.uint8)
    if "panoptic_seg" in result:
        ids, segments = result["panoptic_seg"]
        out[prefix + "panoptic_ids"] = ids.numpy().astype(np.int32)
        fields = [[s["id"], int(s["isthing"]), s["category_id"]] for s in segments]
        out[prefix + "panoptic_segments"] = np.asarray(fields, dtype=np.int64).reshape(-1, 3)
    return out


def instances_to_arrays(instances, prefix: str) -> Dict[str, np.ndarray]:
    """Flat arrays of predicted instances; masks are bit-packed per instance."""
    out = {
        prefix + "boxes": instances.pred_boxes.tensor.numpy().astype(np.float32),
        prefix + "scores": instances.scores.numpy().astype(np.float32),
        prefix + "classes": instances.pred_classes.numpy().astype(np.int64),
        prefix + "image_hw": np.asarray(instances.image_size, dtype=np.int64),
    }
    if instances.has("pred_masks"):
        masks = instances.pred_masks.numpy().astype(bool)
        out[prefix + "masks_packed"] = np.packbits(masks.reshape(len(masks), int(np.prod(masks.shape[1:]))), axis=1)
    if instances.has("pred_keypoints"):
        out[prefix + "keypoints"] = instances.pred_keypoints.numpy().astype(np.float32)
    return out


def _unpack_masks(outputs: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
    height, width = (int(v) for v in outputs[prefix + "image_hw"])
    packed = outputs[prefix + "masks_packed"]
    return np.unpackbits(packed, axis=1, count=height * width).reshape(len(packed), height, width).astype(bool)


# -- comparison --------------------------------------------------------------------------------
def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_detections(
    reference: Mapping[str, np.ndarray], ours: Mapping[str, np.ndarray], prefix: str
) -> List[Tuple[int, int]]:
    """One-to-one (reference index, our index) pairs: same class, IoU > MATCH_IOU, score within
    SCORE_ATOL; each reference detection, by descending score, takes its best free candidate."""
    ref_boxes, our_boxes = reference[prefix + "boxes"], ours[prefix + "boxes"]
    if len(ref_boxes) == 0 or len(our_boxes) == 0:
        return []
    iou = _pairwise_iou(ref_boxes.astype(np.float64), our_boxes.astype(np.float64))
    ok = (
        (iou > MATCH_IOU)
        & (reference[prefix + "classes"][:, None] == ours[prefix + "classes"][None, :])
        & (np.abs(reference[prefix + "scores"][:, None] - ours[prefix + "scores"][None, :]) < SCORE_ATOL)
    )
    iou = np.where(ok, iou, -1.0)
    taken = np.zeros(len(our_boxes), dtype=bool)
    pairs = []
    for i in np.argsort(-reference[prefix + "scores"], kind="stable"):
        candidates = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(candidates))
        if candidates[j] > 0:
            taken[j] = True
            pairs.append((int(i), j))
    return pairs


def compare_detections(reference: Mapping[str, np.ndarray], ours: Mapping[str, np.ndarray], prefix: str) -> None:
    """Detections, and their masks and keypoints where the reference has them."""
    pairs = match_detections(reference, ours, prefix)
    n_ref, n_ours = len(reference[prefix + "scores"]), len(ours[prefix + "scores"])
    assert len(pairs) >= MIN_MATCHED * n_ref and len(pairs) >= MIN_MATCHED * n_ours, (
        f"{prefix}: {len(pairs)} matched of {n_ref} reference and {n_ours} detlib detections"
    )
    assert tuple(reference[prefix + "image_hw"]) == tuple(ours[prefix + "image_hw"]), prefix
    ref_index = np.asarray([i for i, _ in pairs], dtype=np.int64)
    our_index = np.asarray([j for _, j in pairs], dtype=np.int64)
    if prefix + "masks_packed" in reference:
        ref_masks = _unpack_masks(reference, prefix)[ref_index]
        our_masks = _unpack_masks(ours, prefix)[our_index]
        agreement = (ref_masks == our_masks).reshape(len(pairs), -1).mean(axis=1)
        assert agreement.min(initial=1.0) >= MIN_MASK_AGREEMENT, (
            f"{prefix}: a mask agrees on only {agreement.min():.6f} of its pixels"
        )
    if prefix + "keypoints" in reference:
        diff = np.abs(reference[prefix + "keypoints"][ref_index, :, :2] - ours[prefix + "keypoints"][our_index, :, :2])
        assert diff.max(initial=0.0) <= KEYPOINT_ATOL, f"{prefix}: keypoints differ by {diff.max():.4f} px"


def compare_segmentation(reference: Mapping[str, np.ndarray], ours: Mapping[str, np.ndarray], prefix: str) -> None:
    """The argmax of "sem_seg" and the "panoptic_seg" id map on >= MIN_MASK_AGREEMENT of the pixels; the
    same panoptic segments."""
    for key in ("sem_seg_argmax", "panoptic_ids"):
        if prefix + key not in reference:
            continue
        assert ours[prefix + key].shape == reference[prefix + key].shape, prefix + key
        agreement = (ours[prefix + key] == reference[prefix + key]).mean()
        assert agreement >= MIN_MASK_AGREEMENT, f"{prefix}{key}: equal on only {agreement:.6f} of the pixels"
    if prefix + "panoptic_segments" in reference:
        np.testing.assert_array_equal(ours[prefix + "panoptic_segments"], reference[prefix + "panoptic_segments"])


def compare_losses(reference: Mapping[str, np.ndarray], ours: Mapping[str, np.ndarray]) -> None:
    ref_losses = {k: float(v) for k, v in reference.items() if k.startswith("loss__")}
    our_losses = {k: float(v) for k, v in ours.items() if k.startswith("loss__")}
    assert sorted(our_losses) == sorted(ref_losses)
    for name, value in ref_losses.items():
        assert abs(our_losses[name] - value) <= LOSS_RTOL * abs(value), (
            f"{name[6:]}: detlib {our_losses[name]!r}, Detectron2 {value!r}"
        )


def compare_outputs(reference: Mapping[str, np.ndarray], ours: Mapping[str, np.ndarray]) -> None:
    """Everything `run_library` returns: detections of each image, then the training losses."""
    prefixes = sorted({k.split("__")[0] + "__" for k in reference if k.startswith("img")})
    assert prefixes, "the reference holds no image"
    for prefix in prefixes:
        if prefix + "boxes" in reference:
            compare_detections(reference, ours, prefix)
        compare_segmentation(reference, ours, prefix)
    compare_losses(reference, ours)


# -- the two checks ----------------------------------------------------------------------------
def _batch_for(cfg, seed: int) -> List[SyntheticImage]:
    keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS if cfg.MODEL.KEYPOINT_ON else 0
    return synthetic_batch(seed, cfg.MODEL.ROI_HEADS.NUM_CLASSES, keypoints)


def _run_detlib(case: Case, seed: int, weights_file: Path, batch) -> Dict[str, np.ndarray]:
    outputs, model, checkpointer = run_library("detlib", case.detlib_config(), weights_file, batch, seed)
    keys = checkpointer.incompatible_keys
    assert not keys.missing and not keys.unexpected and not keys.shape_mismatch, keys
    return outputs


def d2_reference(case: Case, seed: int, work_dir: Path) -> Tuple[Dict[str, np.ndarray], Path]:
    """Detectron2's outputs for the case (and the weights file it loaded, in `work_dir`)."""
    cfg = case.d2_config()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    model = build_model(cfg)
    state = model.state_dict()
    shapes = {name: tuple(v.shape) for name, v in state.items()}
    int_buffers = {
        name: v.numpy()
        for name, v in state.items()
        if not v.is_floating_point() and not name.endswith("num_batches_tracked")
    }
    weights = random_weights(shapes, seed, case, int_buffers)
    weights_file = work_dir / f"{case.name}_seed{seed}.pkl"
    save_d2_pickle(weights, weights_file)
    # Checked before running: a training forward moves batch-norm statistics.
    DetectionCheckpointer(model).load(str(weights_file))
    loaded = model.state_dict()
    assert set(loaded) == set(weights)
    for name, value in weights.items():
        assert np.array_equal(loaded[name].numpy(), value), f"Detectron2 did not load {name}"
    batch = _batch_for(cfg, seed)
    outputs, _, _ = run_library("detectron2", cfg, weights_file, batch, seed)
    outputs["meta__param_shapes"] = np.asarray(json.dumps(shapes))
    outputs.update({f"{INT_BUFFER_PREFIX}{name}": value for name, value in int_buffers.items()})
    outputs["meta__weights_sha256"] = np.asarray(weights_digest(weights))
    outputs["meta__inputs_sha256"] = np.asarray(inputs_digest(batch))
    return outputs, weights_file


def check_live(case: Case, seed: int, tmp_path: Path) -> None:
    """Detectron2 and detlib on the same weights and inputs give the same outputs."""
    reference, weights_file = d2_reference(case, seed, tmp_path)
    ours = _run_detlib(case, seed, weights_file, _batch_for(case.detlib_config(), seed))
    compare_outputs(reference, ours)


def case_tests(case: Case) -> Tuple[Callable, Callable]:
    """The two tests of a case, one per seed each: against the recorded reference (always) and against
    Detectron2 itself (when it is installed). A test module binds them to names starting with `test_`."""

    @pytest.mark.parametrize("seed", case.seeds)
    def test_matches_recorded_detectron2(seed: int, tmp_path: Path) -> None:
        check_recorded(case, seed, tmp_path)

    @pytest.mark.parametrize("seed", case.seeds)
    def test_matches_live_detectron2(seed: int, tmp_path: Path) -> None:
        pytest.importorskip("detectron2")
        check_live(case, seed, tmp_path)

    return test_matches_recorded_detectron2, test_matches_live_detectron2


def load_reference(case: Case, seed: int) -> Dict[str, np.ndarray]:
    path = case.reference_path(seed)
    if not path.is_file():
        raise FileNotFoundError(f"no recorded reference {path}: run `python {__file__} --regenerate {case.name}`")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def check_recorded(case: Case, seed: int, work_dir: Path) -> None:
    """detlib gives the outputs Detectron2 gave when the reference was recorded."""
    reference = load_reference(case, seed)
    shapes = json.loads(str(reference["meta__param_shapes"]))
    int_buffers = {
        key[len(INT_BUFFER_PREFIX) :]: value for key, value in reference.items() if key.startswith(INT_BUFFER_PREFIX)
    }
    weights = random_weights(shapes, seed, case, int_buffers)
    stale = f"; rerun `python {__file__} --regenerate {case.name}` if the case or the generator changed"
    assert weights_digest(weights) == str(reference["meta__weights_sha256"]), "weights differ" + stale
    cfg = case.detlib_config()
    batch = _batch_for(cfg, seed)
    assert inputs_digest(batch) == str(reference["meta__inputs_sha256"]), "inputs differ" + stale
    weights_file = work_dir / f"{case.name}_seed{seed}.pkl"
    save_d2_pickle(weights, weights_file)
    compare_outputs(reference, _run_detlib(case, seed, weights_file, batch))


# -- regeneration ------------------------------------------------------------------------------
def _atomic_savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def regenerate(case: Case, work_dir: Path) -> None:
    """Record Detectron2's outputs for every seed of `case` in `data/`."""
    DATA_DIR.mkdir(exist_ok=True)
    cfg = case.d2_config()
    cap = cfg.TEST.DETECTIONS_PER_IMAGE
    for seed in case.seeds:
        outputs, _ = d2_reference(case, seed, work_dir)
        counts = [len(v) for k, v in outputs.items() if k.endswith("__scores")]
        if counts and (min(counts) < MIN_DETECTIONS or max(counts) >= cap):
            raise ValueError(
                f"{case.name} seed {seed}: {counts} detections per image; tune the case's head_std / "
                f"bias_offset to get between {MIN_DETECTIONS} and {cap - 1}"
            )
        for key, segments in outputs.items():
            if key.endswith("__panoptic_segments") and len(set(segments[:, 1].tolist())) < 2:
                raise ValueError(
                    f"{case.name} seed {seed}: {key} needs thing and stuff segments, got {segments.tolist()}; "
                    "tune the case's PANOPTIC_FPN.COMBINE thresholds"
                )
        _atomic_savez(case.reference_path(seed), outputs)
        size = case.reference_path(seed).stat().st_size
        print(f"{case.reference_path(seed)}: detections {counts}, {size} bytes")


def discover_cases() -> Dict[str, Case]:
    """The module-level `CASE` of every test file next to this one."""
    cases = {}
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"_differential_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        case = getattr(module, "CASE", None)
        if isinstance(case, Case):
            cases[case.name] = case
    return cases


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regenerate", action="store_true", help="rewrite data/<case>_seed<k>.npz (needs Detectron2)")
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args(argv)
    if not args.regenerate:
        parser.error("nothing to do: pass --regenerate")
    import tempfile

    cases = discover_cases()
    unknown = set(args.cases) - set(cases)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; known: {sorted(cases)}")
    with tempfile.TemporaryDirectory() as work_dir:
        for name in args.cases or sorted(cases):
            regenerate(cases[name], Path(work_dir))


if __name__ == "__main__":
    # The test files import `harness`: run that module, not `__main__`, so that their `CASE`s are
    # instances of its `Case`.
    sys.path.insert(0, str(Path(__file__).parent))
    importlib.import_module("harness").main()
