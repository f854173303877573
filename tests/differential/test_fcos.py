r"""
FCOS against Detectron2. FCOS has no YAML zoo config, so `harness.Case` (which builds YAML configs) does
not apply: both models come from the Python config `COCO-Detection/fcos_R_50_FPN_1x.py` (Detectron2's,
and ours with its imports changed to detlib), shrunk the same way (ResNet-18, 64-channel FPN and head,
3 classes), given the harness's seeded random weights as a Detectron2 checkpoint and its synthetic inputs,
and compared with its tolerances: pyramid features (sampled) within 1e-3 relative, then `compare_outputs`
(>= 98% of detections matched at IoU > 0.99, same class, score within 1e-3; losses within 1e-3 relative).

Recorded references: `data/fcos_seed<k>.npz`. Regenerate (needs Detectron2):

    PYTHONPATH=$PWD python tests/differential/test_fcos.py
"""

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from harness import (
    Case,
    compare_outputs,
    inputs_digest,
    load_reference,
    random_weights,
    run_model,
    save_d2_pickle,
    synthetic_batch,
    weights_digest,
)

CONFIG = "COCO-Detection/fcos_R_50_FPN_1x.py"
# Weight rules only (not a YAML case: named so that the harness's regeneration does not collect it).
WEIGHTS = Case(
    name="fcos",
    config=CONFIG,
    head_std={r"stem\.conv1\.weight$": 0.0015, r"cls_score\.weight$": 0.01, r"bbox_pred\.weight$": 0.002},
    # Logits near the 0.2 threshold of sqrt(class * centerness); distances of ~2 strides per side.
    bias_offset={r"cls_score\.bias$": -3.0, r"bbox_pred\.bias$": 2.0},
    seeds=(0, 1),
)
NUM_CLASSES = 3
# Every FEATURE_STEP-th value of each pyramid level of the first image is recorded (a few hundred values).
FEATURE_STEP = 97


def pyramid_samples(model: torch.nn.Module, seed: int) -> Dict[str, np.ndarray]:
    """`feat__<level>`: every FEATURE_STEP-th value of the backbone's output on the first synthetic image."""
    image = torch.from_numpy(synthetic_batch(seed, NUM_CLASSES)[0].image)
    model.eval()
    with torch.no_grad():
        features = model.backbone(model.preprocess_image([{"image": image}]).tensor)
    return {f"feat__{name}": value.flatten()[::FEATURE_STEP].numpy() for name, value in features.items()}


def compare_features(reference: Dict[str, np.ndarray], ours: Dict[str, np.ndarray]) -> None:
    """The same pyramid levels, each value within 1e-3 relative (of the level's largest value)."""
    names = sorted(k for k in reference if k.startswith("feat__"))
    assert names == sorted(k for k in ours if k.startswith("feat__")) and len(names) == 5
    for name in names:
        scale = np.abs(reference[name]).max()
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-3, atol=1e-3 * scale, err_msg=name)


def build(package: str) -> torch.nn.Module:
    """The shrunk FCOS of `package`'s Python config ("detlib" or "detectron2")."""
    if package == "detlib":
        from detlib import model_zoo
        from detlib.config import instantiate
        from detlib.layers import ShapeSpec
    else:
        from detectron2 import model_zoo
        from detectron2.config import instantiate
        from detectron2.layers import ShapeSpec
    model = model_zoo.get_config(CONFIG).model
    stages = model.backbone.bottom_up.stages
    stages.depth = 18
    del stages.stride_in_1x1  # basic blocks have no 1x1 conv
    model.backbone.out_channels = 64
    model.backbone.top_block.in_channels = 64
    model.head.input_shape = [ShapeSpec(channels=64)] * 5
    model.head.conv_dims = [64, 64]
    model.num_classes = NUM_CLASSES
    model.max_detections_per_image = 1000
    return instantiate(model)


def run_detlib(seed: int, weights: Dict[str, np.ndarray], work_dir: Path) -> Dict[str, np.ndarray]:
    """detlib's outputs with `weights` loaded by its checkpointer from a Detectron2 pickle, which must fit."""
    from detlib.checkpoint import DetectionCheckpointer

    model = build("detlib")
    path = work_dir / f"fcos_seed{seed}.pkl"
    save_d2_pickle(weights, path)
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(str(path))
    keys = checkpointer.incompatible_keys
    assert not keys.missing and not keys.unexpected and not keys.shape_mismatch, keys
    outputs = pyramid_samples(model, seed)
    outputs.update(run_model("detlib", model, synthetic_batch(seed, NUM_CLASSES), seed))
    return outputs


def detectron2_outputs(seed: int) -> Dict[str, np.ndarray]:
    """Detectron2's outputs on its own model with the seeded weights, and what the reference records."""
    model = build("detectron2")
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    weights = random_weights(shapes, seed, WEIGHTS)
    model.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()}, strict=True)
    outputs = pyramid_samples(model, seed)
    outputs.update(run_model("detectron2", model, synthetic_batch(seed, NUM_CLASSES), seed))
    outputs["meta__param_shapes"] = np.asarray(json.dumps(shapes))
    outputs["meta__weights_sha256"] = np.asarray(weights_digest(weights))
    outputs["meta__inputs_sha256"] = np.asarray(inputs_digest(synthetic_batch(seed, NUM_CLASSES)))
    return outputs


@pytest.mark.parametrize("seed", WEIGHTS.seeds)
def test_fcos_matches_recorded_detectron2(seed, tmp_path):
    reference = load_reference(WEIGHTS, seed)
    weights = random_weights(json.loads(str(reference["meta__param_shapes"])), seed, WEIGHTS)
    assert weights_digest(weights) == str(reference["meta__weights_sha256"]), "weights differ: regenerate"
    assert inputs_digest(synthetic_batch(seed, NUM_CLASSES)) == str(reference["meta__inputs_sha256"])
    ours = run_detlib(seed, weights, tmp_path)
    compare_features(reference, ours)
    compare_outputs(reference, ours)


@pytest.mark.parametrize("seed", WEIGHTS.seeds)
def test_fcos_matches_live_detectron2(seed, tmp_path):
    pytest.importorskip("detectron2")
    reference = detectron2_outputs(seed)
    weights = random_weights(json.loads(str(reference["meta__param_shapes"])), seed, WEIGHTS)
    ours = run_detlib(seed, weights, tmp_path)
    compare_features(reference, ours)
    compare_outputs(reference, ours)


def regenerate() -> None:
    for seed in WEIGHTS.seeds:
        outputs = detectron2_outputs(seed)
        counts = [len(v) for k, v in outputs.items() if k.endswith("__scores")]
        if min(counts) < 5 or max(counts) >= 1000:
            raise ValueError(f"seed {seed}: {counts} detections per image; tune WEIGHTS")
        np.savez_compressed(WEIGHTS.reference_path(seed), **outputs)
        print(
            f"{WEIGHTS.reference_path(seed)}: detections {counts}, losses",
            {k: float(v) for k, v in outputs.items() if k.startswith("loss__")},
        )


if __name__ == "__main__":
    regenerate()
