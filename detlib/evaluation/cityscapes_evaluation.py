"""Cityscapes instance AP and pixel IoU, computed by the official cityscapesscripts (an optional dependency)."""

import copy
import glob
import importlib
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from detlib.data import MetadataCatalog
from detlib.data.datasets.dataset_classes import CITYSCAPES_CATEGORIES
from detlib.utils import comm

from .evaluator import DatasetEvaluator

__all__ = ["CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]

logger = logging.getLogger(__name__)

_LABEL_ID_OF_NAME = {name: label_id for label_id, _, name, _, _ in CITYSCAPES_CATEGORIES}
_LABEL_ID_OF_TRAIN_ID = {train_id: label_id for label_id, train_id, _, _, _ in CITYSCAPES_CATEGORIES}


def _import_script(name: str):
    if not hasattr(np, "in1d"):
        # cityscapesscripts 2.3 still calls np.in1d, which NumPy 2.4 removed; np.isin is its replacement
        # (same result for the 1-D arrays the scripts pass).
        np.in1d = lambda a, b, **kwargs: np.isin(a, b, **kwargs).ravel()
    try:
        module = importlib.import_module(f"cityscapesscripts.evaluation.{name}")
    except ImportError as e:
        raise ImportError(
            "The Cityscapes evaluators run the official cityscapesscripts: pip install cityscapesscripts "
            "(or detlib[cityscapes])."
        ) from e
    return module


def _script_args(module, prediction_dir: str):
    """The script's settings (a module global), copied so that runs do not leak into each other."""
    args = copy.deepcopy(module.args)
    args.predictionPath = os.path.abspath(prediction_dir)
    args.predictionWalk = None
    args.JSONOutput = False
    args.colorized = False
    args.quiet = True
    return args


class _CityscapesEvaluator(DatasetEvaluator):
    """Writes each image's prediction files into one directory shared by the ranks of this machine;
    the main rank runs the official script over them and the dataset's `gt_dir`."""

    def __init__(self, dataset_name: str):
        self._metadata = MetadataCatalog.get(dataset_name)
        self._working_dir: Optional[tempfile.TemporaryDirectory] = None
        self.reset()

    def reset(self) -> None:
        if comm.get_local_size() != comm.get_world_size():
            raise RuntimeError("The Cityscapes evaluators write to one local directory: they need a single machine.")
        if self._working_dir is not None:
            self._working_dir.cleanup()
        self._working_dir = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
        self._dir = comm.all_gather(self._working_dir.name)[0]  # every rank writes into the main rank's

    def _ground_truth(self, suffix: str) -> List[str]:
        files = sorted(glob.glob(os.path.join(self._metadata.gt_dir, "*", f"*_gtFine_{suffix}.png")))
        if not files:
            raise FileNotFoundError(f"No '*_gtFine_{suffix}.png' under {self._metadata.gt_dir}/<city>/.")
        return files

    @staticmethod
    def _stem(inp: dict) -> str:
        return os.path.splitext(os.path.basename(inp["file_name"]))[0]


class CityscapesInstanceEvaluator(_CityscapesEvaluator):
    """Instance segmentation AP and AP50 (`{"segm": {...}}`, percent) by cityscapesscripts'
    evalInstanceLevelSemanticLabeling, from `instances` with `pred_masks`."""

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            stem = self._stem(inp)
            lines = []
            if "instances" in out:
                instances = out["instances"].to("cpu")
                for k in range(len(instances)):
                    name = self._metadata.thing_classes[int(instances.pred_classes[k])]
                    png = f"{stem}_{k}_{name.replace(' ', '_')}.png"
                    mask = instances.pred_masks[k].numpy().astype(np.uint8) * 255
                    Image.fromarray(mask).save(os.path.join(self._dir, png))
                    lines.append(f"{png} {_LABEL_ID_OF_NAME[name]} {float(instances.scores[k])}\n")
            # The script wants a prediction file for every ground-truth image, even an empty one.
            with open(os.path.join(self._dir, stem + "_pred.txt"), "w") as f:
                f.writelines(lines)

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        comm.synchronize()
        if not comm.is_main_process():
            return None
        script = _import_script("evalInstanceLevelSemanticLabeling")
        args = _script_args(script, self._dir)
        args.gtInstancesFile = os.path.join(self._dir, "gtInstances.json")  # not written: see below
        gt_files = self._ground_truth("instanceIds")
        predictions = [script.getPrediction(gt, args) for gt in gt_files]
        # The script dumps its matches to ./matches.json (which fails on NumPy integers) and caches the
        # ground truth in a json; neither is needed, so its json writer is off while it runs.
        write_json = script.writeDict2JSON
        script.writeDict2JSON = lambda *_args, **_kwargs: None
        try:
            results = script.evaluateImgLists(predictions, gt_files, args)["averages"]
        finally:
            script.writeDict2JSON = write_json
        return OrderedDict(segm={"AP": 100 * results["allAp"], "AP50": 100 * results["allAp50%"]})


class CityscapesSemSegEvaluator(_CityscapesEvaluator):
    """Pixel IoU and instance-weighted iIoU over classes and categories (`{"sem_seg": {IoU, iIoU,
    IoU_sup, iIoU_sup}}`, percent) by cityscapesscripts' evalPixelLevelSemanticLabeling, from
    `sem_seg` scores over the 19 train ids."""

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            train_ids = out["sem_seg"].argmax(dim=0).cpu().numpy()
            label_ids = np.full(train_ids.shape, 255, dtype=np.uint8)
            for train_id, label_id in _LABEL_ID_OF_TRAIN_ID.items():
                label_ids[train_ids == train_id] = label_id
            Image.fromarray(label_ids).save(os.path.join(self._dir, self._stem(inp) + "_pred.png"))

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        comm.synchronize()
        if not comm.is_main_process():
            return None
        script = _import_script("evalPixelLevelSemanticLabeling")
        args = _script_args(script, self._dir)
        gt_files = self._ground_truth("labelIds")
        predictions = [script.getPrediction(args, gt) for gt in gt_files]
        results = script.evaluateImgLists(predictions, gt_files, args)
        return OrderedDict(
            sem_seg={
                "IoU": 100 * results["averageScoreClasses"],
                "iIoU": 100 * results["averageScoreInstClasses"],
                "IoU_sup": 100 * results["averageScoreCategories"],
                "iIoU_sup": 100 * results["averageScoreInstCategories"],
            }
        )
