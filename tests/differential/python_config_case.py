"""
A differential case built from a Python zoo config (`model_zoo.get_config(path).model`) in both libraries, for
the one-stage detectors that Detectron2 builds from Python configs (FCOS; RetinaNet through its keywords): the
config of each library (ours has its imports changed to detlib), shrunk by the same code (with
`num_classes` and `max_detections_per_image` set on the detector), instantiated, given the harness's seeded random weights and its synthetic inputs, and compared
with its tolerances: pyramid features (sampled) within 1e-3 relative, then `compare_outputs`; then, tighter,
`compare_values` (matched scores, boxes and losses to the float32 arithmetic, see SCORE_TOL).

Against the recorded reference, the weights reach detlib as a Detectron2 pickle through its checkpointer (no
missing, unexpected or mis-shaped key); against live Detectron2, as Detectron2's model's own state_dict,
loaded with strict=True.
"""

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np
import pytest
import torch
from harness import (
    MIN_DETECTIONS,
    Case,
    compare_outputs,
    inputs_digest,
    load_reference,
    match_detections,
    random_weights,
    run_model,
    save_d2_pickle,
    synthetic_batch,
    weights_digest,
)

# No cap on the detections in practice (a reference reaching it is refused: ties at the cut are flaky).
MAX_DETECTIONS = 1000
# Beyond the harness's matching (IoU > 0.99, scores within 1e-3), matched detections agree to what the float32
# arithmetic allows: the two libraries run the same layers in the same order, so their values differ by the
# rounding of a few convolutions (relative ~1e-6; measured: scores within 6e-7, boxes within 6e-5 px, losses
# within 1 ulp). Boxes are at most ~230 px, where a float32 step is 1.5e-5 px; each bound leaves a margin of
# more than 10x for other CPUs' kernels.
SCORE_TOL = 1e-5
BOX_TOL_PX = 1e-3
LOSS_RTOL = 1e-5
# Every FEATURE_STEP-th value of each pyramid level of the first image is compared (a few hundred values).
FEATURE_STEP = 97


def shrink_to_r18_fpn(model: Any, package: str, top_block_in_channels: int) -> None:
    """A one-stage detector config shrunk in place: ResNet-18, a 64-channel FPN, a head of two 64-channel convs
    on its five levels; `top_block_in_channels`: what P6 is computed from (512 from C5, 64 from P5)."""
    ShapeSpec = importlib.import_module(f"{package}.layers").ShapeSpec
    stages = model.backbone.bottom_up.stages
    stages.depth = 18
    del stages.stride_in_1x1  # basic blocks have no 1x1 conv
    model.backbone.out_channels = 64
    model.backbone.top_block.in_channels = top_block_in_channels
    model.head.input_shape = [ShapeSpec(channels=64)] * 5
    model.head.conv_dims = [64, 64]


@dataclass(frozen=True)
class PythonConfigCase:
    """
    `weights`: the name (of the recorded data, `data/<name>_seed<k>.npz`), the Python config's path, the weight
    rules and the seeds, as a harness `Case` (not named `CASE` in a test module: the harness's regeneration
    builds YAML configs). `shrink(model, package)` shrinks the config's model node in place; `package` is
    "detlib" or "detectron2", whose classes it may use. `num_levels`: the pyramid levels of the backbone.
    """

    weights: Case
    shrink: Callable[[Any, str], None]
    num_classes: int = 3
    num_levels: int = 5

    def build(self, package: str) -> torch.nn.Module:
        """The shrunk model of `package`'s Python config."""
        model_zoo = importlib.import_module(f"{package}.model_zoo")
        instantiate = importlib.import_module(f"{package}.config").instantiate
        model = model_zoo.get_config(self.weights.config).model
        self.shrink(model, package)
        model.num_classes = self.num_classes
        model.max_detections_per_image = MAX_DETECTIONS
        return instantiate(model)

    def batch(self, seed: int):
        return synthetic_batch(seed, self.num_classes)

    def outputs(self, package: str, model: torch.nn.Module, seed: int) -> Dict[str, np.ndarray]:
        """The sampled pyramid features (`feat__<level>`) and `run_model`'s outputs."""
        image = torch.from_numpy(self.batch(seed)[0].image)
        model.eval()
        with torch.no_grad():
            features = model.backbone(model.preprocess_image([{"image": image}]).tensor)
        outputs = {f"feat__{name}": value.flatten()[::FEATURE_STEP].numpy() for name, value in features.items()}
        outputs.update(run_model(package, model, self.batch(seed), seed))
        return outputs

    def detectron2_model(self, seed: int) -> Tuple[torch.nn.Module, Dict[str, np.ndarray]]:
        """Detectron2's model with the seeded weights, and the weights."""
        model = self.build("detectron2")
        shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
        weights = random_weights(shapes, seed, self.weights)
        model.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()}, strict=True)
        return model, weights

    def detectron2_reference(self, seed: int) -> Tuple[Dict[str, np.ndarray], torch.nn.Module]:
        """Detectron2's outputs with what the recorded reference holds besides them, and its model."""
        model, weights = self.detectron2_model(seed)
        outputs = self.outputs("detectron2", model, seed)
        shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
        outputs["meta__param_shapes"] = np.asarray(json.dumps(shapes))
        outputs["meta__weights_sha256"] = np.asarray(weights_digest(weights))
        outputs["meta__inputs_sha256"] = np.asarray(inputs_digest(self.batch(seed)))
        return outputs, model

    def detlib_from_pickle(self, weights: Dict[str, np.ndarray], path: Path) -> torch.nn.Module:
        """detlib's model with `weights` loaded by its checkpointer from a Detectron2 pickle, which must fit."""
        from detlib.checkpoint import DetectionCheckpointer

        model = self.build("detlib")
        save_d2_pickle(weights, path)
        checkpointer = DetectionCheckpointer(model)
        checkpointer.load(str(path))
        keys = checkpointer.incompatible_keys
        assert not keys.missing and not keys.unexpected and not keys.shape_mismatch, keys
        return model

    def check_recorded(self, seed: int, work_dir: Path) -> None:
        reference = load_reference(self.weights, seed)
        weights = random_weights(json.loads(str(reference["meta__param_shapes"])), seed, self.weights)
        assert weights_digest(weights) == str(reference["meta__weights_sha256"]), "weights differ: regenerate"
        assert inputs_digest(self.batch(seed)) == str(reference["meta__inputs_sha256"]), "inputs differ: regenerate"
        model = self.detlib_from_pickle(weights, work_dir / f"{self.weights.name}_seed{seed}.pkl")
        ours = self.outputs("detlib", model, seed)
        compare_features(reference, ours, self.num_levels)
        compare_outputs(reference, ours)
        compare_values(reference, ours)

    def check_live(self, seed: int) -> None:
        reference, d2_model = self.detectron2_reference(seed)
        model = self.build("detlib")
        model.load_state_dict(d2_model.state_dict(), strict=True)
        ours = self.outputs("detlib", model, seed)
        compare_features(reference, ours, self.num_levels)
        compare_outputs(reference, ours)
        compare_values(reference, ours)

    def tests(self) -> Tuple[Callable, Callable]:
        """The recorded and the live test, one per seed each, for a test module to bind to `test_` names."""

        @pytest.mark.parametrize("seed", self.weights.seeds)
        def test_matches_recorded_detectron2(seed: int, tmp_path: Path) -> None:
            self.check_recorded(seed, tmp_path)

        @pytest.mark.parametrize("seed", self.weights.seeds)
        def test_matches_live_detectron2(seed: int) -> None:
            pytest.importorskip("detectron2")
            self.check_live(seed)

        return test_matches_recorded_detectron2, test_matches_live_detectron2

    def regenerate(self) -> None:
        """Record Detectron2's outputs for every seed (needs Detectron2); refuses degenerate references."""
        for seed in self.weights.seeds:
            outputs, _ = self.detectron2_reference(seed)
            counts = [len(v) for k, v in outputs.items() if k.endswith("__scores")]
            if min(counts) < MIN_DETECTIONS or max(counts) >= MAX_DETECTIONS:
                raise ValueError(f"seed {seed}: {counts} detections per image; tune the weight rules")
            path = self.weights.reference_path(seed)
            np.savez_compressed(path, **outputs)
            losses = {k: float(v) for k, v in outputs.items() if k.startswith("loss__")}
            print(f"{path}: detections {counts}, {path.stat().st_size} bytes, losses {losses}")


def compare_features(reference: Dict[str, np.ndarray], ours: Dict[str, np.ndarray], num_levels: int) -> None:
    """The same pyramid levels, each value within 1e-3 relative (of the level's largest value)."""
    names = sorted(k for k in reference if k.startswith("feat__"))
    assert names == sorted(k for k in ours if k.startswith("feat__")) and len(names) == num_levels
    for name in names:
        scale = np.abs(reference[name]).max()
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-3, atol=1e-3 * scale, err_msg=name)


def compare_values(reference: Dict[str, np.ndarray], ours: Dict[str, np.ndarray]) -> None:
    """The matched detections' scores within SCORE_TOL and boxes within BOX_TOL_PX, the losses within LOSS_RTOL."""
    prefixes = sorted({k.split("__")[0] + "__" for k in reference if k.startswith("img")})
    for prefix in prefixes:
        pairs = np.asarray(match_detections(reference, ours, prefix), dtype=np.int64).reshape(-1, 2)
        ref, our = pairs[:, 0], pairs[:, 1]
        score_diff = np.abs(reference[prefix + "scores"][ref] - ours[prefix + "scores"][our]).max(initial=0.0)
        box_diff = np.abs(reference[prefix + "boxes"][ref] - ours[prefix + "boxes"][our]).max(initial=0.0)
        assert score_diff <= SCORE_TOL, f"{prefix}: scores differ by {score_diff:.3g}"
        assert box_diff <= BOX_TOL_PX, f"{prefix}: boxes differ by {box_diff:.3g} px"
    for name, value in reference.items():
        if name.startswith("loss__"):
            assert abs(float(ours[name]) - float(value)) <= LOSS_RTOL * abs(float(value)), (
                f"{name[6:]}: detlib {float(ours[name])!r}, Detectron2 {float(value)!r}"
            )
