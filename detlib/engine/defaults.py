"""The standard way to run detlib: command-line arguments, run setup, the default trainer and
predictor. Research code subclasses `DefaultTrainer` and overrides its `build_*` methods."""

from __future__ import annotations

import argparse
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detlib.checkpoint import DetectionCheckpointer
from detlib.collect_env import collect_env_info
from detlib.config import CfgNode, LazyConfig
from detlib.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detlib.data.detection_utils import build_test_resize
from detlib.evaluation import DatasetEvaluator, build_evaluator, inference_on_dataset
from detlib.evaluation.validation_loss import build_validation_loader
from detlib.solver import build_lr_scheduler, build_optimizer
from detlib.utils import comm
from detlib.utils.env import seed_all_rng, set_rng_state
from detlib.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from detlib.utils.logger import setup_logger

from . import hooks
from .preemption import PreemptionCheckpointer
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

__all__ = [
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "create_ddp_model",
    "amp_precision",
    "DefaultTrainer",
    "DefaultPredictor",
    "TrainingCheckpointer",
]

logger = logging.getLogger(__name__)


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """The arguments every detlib tool takes: a config file, run mode, distributed layout, and
    trailing `KEY VALUE` config overrides."""
    parser = argparse.ArgumentParser(
        epilog=epilog
        or (
            "Examples:\n"
            "  train:    tools/train_net.py --config-file cfg.yaml\n"
            "  resume:   tools/train_net.py --config-file cfg.yaml --resume\n"
            "  evaluate: tools/train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS model.pth\n"
            "  2 GPUs (or 2 CPU processes): tools/train_net.py --config-file cfg.yaml --num-gpus 2\n"
            "  torchrun / SLURM (srun, one task per GPU): the same command; the launcher's variables\n"
            "    place the process, e.g. torchrun --nproc_per_node 8 tools/train_net.py --config-file cfg.yaml\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT_DIR")
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS, do not train")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (one per GPU)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's index, in [0, num-machines)")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="tcp://HOST:PORT of machine 0 for multi-machine runs; 'auto' picks a free local port",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="how long joining the process group and each collective may take before the run fails",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. SOLVER.BASE_LR 0.01",
    )
    return parser


def _is_lazy_config(cfg) -> bool:
    """A Python (lazy) config is an omegaconf tree with a `train` entry; a YAML config is a CfgNode."""
    return not isinstance(cfg, CfgNode)


def default_setup(cfg, args) -> None:
    """Prepare a run: output directory, logging (console on rank 0, a file per rank), the
    environment summary and arguments in the log, the full config in `OUTPUT_DIR/config.yaml`,
    seeding (`SEED + rank`, or a fresh seed when SEED < 0), and backend flags. A Python config gives
    these as `train.output_dir`, `train.seed`, `train.cudnn_benchmark` (Detectron2's keys)."""
    lazy = _is_lazy_config(cfg)
    if lazy:
        train = cfg.train
        output_dir, seed_key = train.output_dir, train.get("seed", -1)
        cudnn_benchmark, float32_precision = train.get("cudnn_benchmark", False), train.get("float32_precision", "")
    else:
        output_dir, seed_key = cfg.OUTPUT_DIR, cfg.SEED
        cudnn_benchmark, float32_precision = cfg.CUDNN_BENCHMARK, cfg.FLOAT32_PRECISION
    rank = comm.get_rank()
    if output_dir and comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
    comm.synchronize()  # other ranks write their log files into the directory
    setup_logger(output_dir or None, distributed_rank=rank)

    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", collect_env_info())
    logger.info("Command line arguments: %s", args)
    config_file = getattr(args, "config_file", "")
    if config_file:
        with open(config_file) as f:
            logger.info("Contents of config file %s:\n%s", config_file, f.read())
    if output_dir and comm.is_main_process():
        path = os.path.join(output_dir, "config.yaml")
        if lazy:
            LazyConfig.save(cfg, path)
        else:
            with open(path, "w") as f:
                f.write(cfg.dump())
        logger.info("Full config saved to %s", path)

    seed = seed_all_rng(None if seed_key < 0 else seed_key + rank)
    logger.info("Random seed of this process: %d", seed)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cudnn_benchmark
    if float32_precision:
        torch.set_float32_matmul_precision(float32_precision)


def default_writers(output_dir: str, max_iter: Optional[int] = None) -> List[EventWriter]:
    """Console progress, `output_dir/metrics.json` and TensorBoard files in `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """Wrap `model` in DistributedDataParallel when there is more than one process."""
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs and torch.cuda.is_available():
        kwargs["device_ids"] = [comm.get_local_rank()]
    return DistributedDataParallel(model, **kwargs)


def _amp_precision(cfg) -> Optional[torch.dtype]:
    """The autocast dtype of training (`SOLVER.AMP`), or None for float32; see `amp_precision`."""
    return amp_precision(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION, cfg.MODEL.DEVICE)


def amp_precision(enabled: bool, precision: str, device: str) -> Optional[torch.dtype]:
    """The autocast dtype (`precision`: "float16" or "bfloat16") of training on `device`, or None for
    float32. bfloat16 asked for on a CPU that only emulates it would be slower than float32, so such a
    run trains in float32, saying so."""
    from detlib.modeling.acceleration import cpu_has_fast_bfloat16  # see DefaultTrainer.build_model

    if not enabled:
        return None
    dtype = getattr(torch, precision)
    if dtype == torch.bfloat16 and torch.device(device).type == "cpu" and not cpu_has_fast_bfloat16():
        logger.warning(
            "AMP asks for bfloat16, but this CPU has no native bfloat16 (AVX-512 BF16 or AMX): "
            "training in float32 instead."
        )
        return None
    return dtype


def _scale_to_world_size(cfg, world_size: int):
    """Adapt a config tuned for SOLVER.REFERENCE_WORLD_SIZE processes to `world_size`: the batch
    and lr scale with the number of processes, iteration counts inversely (linear scaling rule)."""
    reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if reference in (0, world_size):
        return cfg
    frozen, cfg = cfg.is_frozen(), cfg.clone()
    cfg.defrost()
    scale = world_size / reference
    solver = cfg.SOLVER
    solver.IMS_PER_BATCH = int(round(solver.IMS_PER_BATCH * scale))
    solver.BASE_LR *= scale
    solver.MAX_ITER = int(round(solver.MAX_ITER / scale))
    solver.WARMUP_ITERS = int(round(solver.WARMUP_ITERS / scale))
    solver.STEPS = tuple(int(round(s / scale)) for s in solver.STEPS)
    solver.CHECKPOINT_PERIOD = int(round(solver.CHECKPOINT_PERIOD / scale))
    cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
    cfg.TEST.VAL_LOSS_PERIOD = int(round(cfg.TEST.VAL_LOSS_PERIOD / scale))
    solver.REFERENCE_WORLD_SIZE = world_size
    logger.info(
        "Config tuned for %d processes rescaled to %d: IMS_PER_BATCH=%d, BASE_LR=%g, MAX_ITER=%d",
        reference,
        world_size,
        solver.IMS_PER_BATCH,
        solver.BASE_LR,
        solver.MAX_ITER,
    )
    if frozen:
        cfg.freeze()
    return cfg


class TrainingCheckpointer(DetectionCheckpointer):
    """A `DetectionCheckpointer` that also saves every rank's data position (`data_positions`, the
    training loader's `state_dict()` per rank), so that a resumed run continues the data stream
    without replaying it. Saving is collective, as for the random states."""

    def __init__(self, model: nn.Module, save_dir: str = "", *, data_loader, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self._data_loader = data_loader

    def save(self, name: str, **extra) -> None:
        position = self._data_loader.state_dict() if hasattr(self._data_loader, "state_dict") else None
        super().save(name, data_positions=comm.all_gather(position), **extra)


class DefaultTrainer(TrainerBase):
    """Train the model the config describes, with the standard hooks.

    Builds, through overridable classmethods, the model (wrapped in DDP when distributed), the
    optimizer, the training loader, the lr schedule, a `DetectionCheckpointer` over `OUTPUT_DIR`
    and the hooks: timing, lr schedule, periodic checkpoints, periodic evaluation with
    `build_evaluator`, the validation loss on `DATASETS.VAL` every `TEST.VAL_LOSS_PERIOD`
    iterations (`build_val_loader`), and writers (console, metrics.json, TensorBoard).

    Typical use::

        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
    """

    def __init__(self, cfg):
        super().__init__()
        cfg = _scale_to_world_size(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        precision = _amp_precision(cfg)
        if precision is not None:
            self._trainer: SimpleTrainer = AMPTrainer(model, data_loader, optimizer, precision=precision)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        checkpointables = {"optimizer": optimizer, "scheduler": self.scheduler}
        if getattr(self._trainer, "grad_scaler", None) is not None:
            checkpointables["grad_scaler"] = self._trainer.grad_scaler
        self.checkpointer = TrainingCheckpointer(model, cfg.OUTPUT_DIR, data_loader=data_loader, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.initial_weights = cfg.MODEL.WEIGHTS
        self.eval_results: Optional[Dict] = None
        self.register_hooks(self.build_hooks())

    @property
    def model(self) -> nn.Module:
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    @property
    def data_loader(self):
        return self._trainer.data_loader

    def resume_or_load(self, resume: bool = True) -> None:
        """Continue from the last checkpoint in OUTPUT_DIR when `resume` and one exists (model,
        optimizer, schedule, iteration, data position and random state); otherwise load
        `initial_weights` (`MODEL.WEIGHTS`, if set) and start at iteration 0."""
        checkpoint = self.checkpointer.resume_or_load(self.initial_weights, resume=resume)
        if not (resume and self.checkpointer.has_checkpoint()):
            return
        if "iteration" not in checkpoint:
            raise ValueError(f"{self.checkpointer.get_checkpoint_file()} has no 'iteration'; it cannot be resumed from")
        self.start_iter = checkpoint["iteration"] + 1
        self._restore_data_position(checkpoint.get("data_positions"))
        rng_states = checkpoint.get("rng_states")
        if rng_states:
            if len(rng_states) != comm.get_world_size():
                logger.warning(
                    "The checkpoint holds random states of %d processes but %d run now; the resumed "
                    "run will not repeat the original one exactly",
                    len(rng_states),
                    comm.get_world_size(),
                )
            set_rng_state(rng_states[comm.get_rank() % len(rng_states)])

    def _restore_data_position(self, positions: Optional[List[Optional[dict]]]) -> None:
        """Put the loader where the checkpointed run was, without reading the batches it consumed."""
        if not hasattr(self.data_loader, "load_state_dict"):
            logger.warning(
                "Resuming at iteration %d: the training loader (%s) cannot restore its position, so the "
                "data starts from the beginning of its stream",
                self.start_iter,
                type(self.data_loader).__name__,
            )
            return
        if not positions or positions[0] is None:
            logger.warning(
                "Resuming at iteration %d: the checkpoint holds no data position, so the data starts from "
                "the beginning of its stream",
                self.start_iter,
            )
            return
        rank, world_size = comm.get_rank(), comm.get_world_size()
        # With another number of ranks, every rank restarts where the slowest saved rank was.
        position = positions[rank] if len(positions) == world_size else min(positions, key=lambda p: p["epoch"])
        self.data_loader.load_state_dict(position)
        logger.info(
            "Resuming at iteration %d: data position epoch %d, item %d of this rank's stream",
            self.start_iter,
            position["epoch"],
            position["ordinal"],
        )

    def build_hooks(self) -> List[Optional[HookBase]]:
        cfg = self.cfg

        def test_and_keep_results():
            self.eval_results = self.test(self.cfg, self.model)
            return self.eval_results

        return [
            hooks.IterationTimer(),
            hooks.LRScheduler(self.optimizer, self.scheduler),
            # Checkpointing is collective (every rank's random state is saved), so every rank
            # runs it; only the main process writes.
            hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER),
            PreemptionCheckpointer(self.checkpointer),
            hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_keep_results),
            hooks.ValidationLoss(cfg.TEST.VAL_LOSS_PERIOD, self.model, self.build_val_loader(cfg))
            if cfg.TEST.VAL_LOSS_PERIOD > 0
            else None,
            hooks.PeriodicWriter(self.build_writers(), period=20) if comm.is_main_process() else None,
        ]

    def build_writers(self) -> List[EventWriter]:
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def train(self) -> Optional[Dict]:
        """Train from `start_iter` to `SOLVER.MAX_ITER`; returns the last evaluation's results."""
        super().train(self.start_iter, self.max_iter)
        if self.cfg.TEST.EXPECTED_RESULTS and comm.is_main_process():
            verify_results(self.cfg, self.eval_results or {})
        return self.eval_results

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    # -- builders (override these) -------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        # Imported here: detlib.modeling is the heaviest import, and engine tools that never
        # build a model (launch, hooks) should not pay for it.
        from detlib.modeling import build_model

        model = build_model(cfg)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_val_loader(cls, cfg):
        """The loader of `DATASETS.VAL` for the validation loss (annotations kept, test-time resize)."""
        if not cfg.DATASETS.VAL:
            raise ValueError("TEST.VAL_LOSS_PERIOD > 0 needs DATASETS.VAL: the datasets to compute the loss on")
        return build_validation_loader(cfg, cfg.DATASETS.VAL)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str) -> DatasetEvaluator:
        """The evaluators of the dataset's metadata `evaluator_type` (COCO, LVIS, semantic, panoptic,
        Pascal VOC; `detlib.evaluation.build_evaluator`), with results in OUTPUT_DIR/inference/NAME."""
        return build_evaluator(cfg, dataset_name, os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name))

    @classmethod
    def test(
        cls, cfg, model: nn.Module, evaluators: Union[DatasetEvaluator, Sequence[DatasetEvaluator], None] = None
    ) -> Dict:
        """Evaluate `model` on every dataset in `DATASETS.TEST`.

        Args:
            evaluators: one per test dataset; by default `build_evaluator(cfg, name)`.
        Returns:
            `{dataset_name: {task: {metric: value}}}`, or the inner dict for a single dataset.
        """
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators given for {len(cfg.DATASETS.TEST)} test datasets")
        results = OrderedDict()
        for index, dataset_name in enumerate(cfg.DATASETS.TEST):
            data_loader = cls.build_test_loader(cfg, dataset_name)
            evaluator = evaluators[index] if evaluators is not None else cls.build_evaluator(cfg, dataset_name)
            results[dataset_name] = inference_on_dataset(model, data_loader, evaluator) or {}
            if comm.is_main_process():
                logger.info("Evaluation results for %s: %s", dataset_name, dict(results[dataset_name]))
        if len(results) == 1:
            return next(iter(results.values()))
        return results


def verify_results(cfg, results: Dict) -> None:
    """Check evaluation results against `TEST.EXPECTED_RESULTS` ([[task, metric, value, tolerance]]);
    raises `AssertionError` listing every metric out of tolerance."""
    failures = []
    for task, metric, expected, tolerance in cfg.TEST.EXPECTED_RESULTS:
        actual = results.get(task, {}).get(metric)
        if actual is None or not np.isfinite(actual) or abs(actual - expected) > tolerance:
            failures.append(f"{task}/{metric}: expected {expected} +- {tolerance}, got {actual}")
    if failures:
        raise AssertionError("Results differ from TEST.EXPECTED_RESULTS:\n" + "\n".join(failures))
    logger.info("Results match TEST.EXPECTED_RESULTS")


class DefaultPredictor:
    """Run the config's model on single images.

    Loads `MODEL.WEIGHTS`, resizes like the test loader (`INPUT.MIN_SIZE_TEST`,
    `INPUT.MAX_SIZE_TEST`) and returns predictions at the original size::

        predictor = DefaultPredictor(cfg)
        outputs = predictor(image)  # image: (H, W, 3) uint8, BGR as from cv2.imread
        outputs["instances"]        # pred_boxes (XYXY pixels), scores, pred_classes[, pred_masks]
    """

    def __init__(self, cfg):
        from detlib.modeling import build_model  # see DefaultTrainer.build_model

        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if cfg.DATASETS.TEST:
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.resize = build_test_resize(cfg)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"DefaultPredictor supports INPUT.FORMAT RGB or BGR, got '{self.input_format}'")

    def __call__(self, original_image: np.ndarray, image_format: str = "BGR") -> dict:
        """Predict on one (H, W, 3) uint8 image whose channels are in `image_format` (RGB/BGR)."""
        if original_image.ndim != 3 or original_image.shape[2] != 3:
            raise ValueError(f"DefaultPredictor expects an (H, W, 3) image, got shape {original_image.shape}")
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be RGB or BGR, got '{image_format}'")
        if image_format != self.input_format:
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.resize.get_transform(original_image).apply_image(original_image)
        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.no_grad():
            return self.model([{"image": image, "height": height, "width": width}])[0]
