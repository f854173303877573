import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from detlib.data import DatasetCatalog, MetadataCatalog
from detlib.data.datasets import register_coco_instances
from detlib.engine import launch
from detlib.evaluation import COCOEvaluator, DatasetEvaluators, inference_on_dataset
from detlib.structures import Boxes, Instances

# Category ids are deliberately not contiguous: predictions use 0..K-1 and must be mapped back.
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "triangle"}]
H, W = 64, 80


def _square(x, y, s):
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def _triangle(x, y, s):
    return [x, y + s, x + s / 2, y, x + s, y + s]


def _write_dataset(tmp_path, name):
    polygons = {
        1: [(3, _square(5, 5, 20)), (7, _triangle(40, 10, 24))],
        2: [(7, _triangle(10, 30, 30)), (3, _square(50, 20, 12)), (3, _square(2, 2, 10))],
        3: [],  # an image without annotations
    }
    images, annotations = [], []
    for image_id, objs in polygons.items():
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": H, "width": W})
        for cat, poly in objs:
            xs, ys = poly[0::2], poly[1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            rle = mask_util.frPyObjects([poly], H, W)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": bbox,
                    "segmentation": [poly],
                    "area": float(mask_util.area(mask_util.merge(rle))),
                    "iscrowd": 0,
                }
            )
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    return str(json_file), annotations


def _predictions_from(annotations, image_id, shift=0.0, flip_class_of=(), score_step=0.1):
    """Instances built from ground truth, optionally degraded: boxes shifted, classes swapped."""
    contiguous = {3: 0, 7: 1}
    anns = [a for a in annotations if a["image_id"] == image_id]
    boxes, classes, masks = [], [], []
    for k, a in enumerate(anns):
        x, y, w, h = a["bbox"]
        boxes.append([x + shift, y, x + w + shift, y + h])
        cls = contiguous[a["category_id"]]
        classes.append(1 - cls if k in flip_class_of else cls)
        rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], H, W))
        masks.append(np.roll(mask_util.decode(rle), int(shift), axis=1))
    inst = Instances((H, W))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([0.9 - score_step * k for k in range(len(anns))], dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    inst.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, H, W), np.uint8)).bool()
    return inst


def _pycocotools_stats(json_file, results_file, iou_type):
    gt = COCO(json_file)
    results = json.load(open(results_file))
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    ev = COCOeval(gt, gt.loadRes(results), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[:6] * 100


def test_perfect_predictions_give_ap_100(tmp_path):
    json_file, anns = _write_dataset(tmp_path, "eval_perfect")
    evaluator = COCOEvaluator("eval_perfect", output_dir=str(tmp_path / "out"))
    evaluator.reset()
    for image_id in (1, 2, 3):
        evaluator.process([{"image_id": image_id}], [{"instances": _predictions_from(anns, image_id)}])
    results = evaluator.evaluate()
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(100.0)
        assert results[task]["AP50"] == pytest.approx(100.0)
        assert results[task]["AP-square"] == pytest.approx(100.0)
        assert results[task]["AP-triangle"] == pytest.approx(100.0)
    written = json.load(open(tmp_path / "out" / "coco_instances_results.json"))
    assert {r["category_id"] for r in written} == {3, 7}
    assert len(written) == len(anns)


def test_imperfect_predictions_equal_pycocotools_on_the_result_file(tmp_path):
    json_file, anns = _write_dataset(tmp_path, "eval_imperfect")
    out = tmp_path / "out"
    evaluator = COCOEvaluator("eval_imperfect", output_dir=str(out))
    evaluator.process([{"image_id": 1}], [{"instances": _predictions_from(anns, 1, shift=3.0)}])
    evaluator.process([{"image_id": 2}], [{"instances": _predictions_from(anns, 2, flip_class_of=(1,))}])
    evaluator.process([{"image_id": 3}], [{"instances": _predictions_from(anns, 3)}])
    results = evaluator.evaluate()
    for task in ("bbox", "segm"):
        expected = _pycocotools_stats(json_file, out / "coco_instances_results.json", task)
        ours = [results[task][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        np.testing.assert_allclose(np.nan_to_num(ours, nan=-100.0), np.where(expected < 0, -100.0, expected), rtol=1e-9)
        assert 0 < results[task]["AP"] < 100


def test_empty_predictions_score_zero(tmp_path):
    _write_dataset(tmp_path, "eval_empty")
    evaluator = COCOEvaluator("eval_empty", tasks=("bbox", "segm"), output_dir=str(tmp_path))
    empty = Instances(
        (H, W),
        pred_boxes=Boxes(torch.zeros(0, 4)),
        scores=torch.zeros(0),
        pred_classes=torch.zeros(0, dtype=torch.int64),
        pred_masks=torch.zeros(0, H, W, dtype=torch.bool),
    )
    for image_id in (1, 2, 3):
        evaluator.process([{"image_id": image_id}], [{"instances": empty}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == 0.0 and results["segm"]["AP"] == 0.0
    assert json.load(open(tmp_path / "coco_instances_results.json")) == []


def test_rejects_class_ids_outside_the_dataset(tmp_path):
    _, anns = _write_dataset(tmp_path, "eval_bad_class")
    inst = _predictions_from(anns, 1)
    inst.pred_classes = torch.full_like(inst.pred_classes, 5)
    evaluator = COCOEvaluator("eval_bad_class", distributed=False)
    with pytest.raises(ValueError, match="image 1 has class 5"):
        evaluator.process([{"image_id": 1}], [{"instances": inst}])


class _OracleModel(nn.Module):
    """Returns ground-truth-derived predictions; records whether it ran in eval mode."""

    def __init__(self, annotations):
        super().__init__()
        self.annotations = annotations
        self.modes = []

    def forward(self, inputs):
        self.modes.append(self.training)
        return [{"instances": _predictions_from(self.annotations, x["image_id"])} for x in inputs]


def test_inference_on_dataset_runs_the_model_in_eval_mode(tmp_path):
    _, anns = _write_dataset(tmp_path, "eval_loop")
    model = _OracleModel(anns)
    model.train()
    loader = [[{"image_id": 1}, {"image_id": 2}], [{"image_id": 3}]]
    results = inference_on_dataset(model, loader, COCOEvaluator("eval_loop", output_dir=str(tmp_path)))
    assert model.modes == [False, False] and model.training
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


def test_dataset_without_coco_json_gets_one_written(tmp_path):
    json_file, anns = _write_dataset(tmp_path, "eval_source")
    records = DatasetCatalog.get("eval_source")
    if "eval_no_json" in DatasetCatalog.list():
        DatasetCatalog.remove("eval_no_json")
        MetadataCatalog.remove("eval_no_json")
    DatasetCatalog.register("eval_no_json", lambda: records)
    MetadataCatalog.get("eval_no_json").set(
        thing_classes=["square", "triangle"], thing_dataset_id_to_contiguous_id={3: 0, 7: 1}
    )
    evaluator = COCOEvaluator("eval_no_json", output_dir=str(tmp_path / "out"))
    assert (tmp_path / "out" / "eval_no_json_coco_format.json").is_file()
    for image_id in (1, 2, 3):
        evaluator.process([{"image_id": image_id}], [{"instances": _predictions_from(anns, image_id)}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


def _degraded_outputs(anns):
    """Per image: imperfect predictions (shifted boxes, a swapped class), so AP is strictly between 0 and 100."""
    return {
        1: _predictions_from(anns, 1, shift=3.0),
        2: _predictions_from(anns, 2, flip_class_of=(1,)),
        3: _predictions_from(anns, 3),
    }


@pytest.mark.parametrize("output_dir", [True, False])
def test_fast_and_reference_backends_agree(tmp_path, output_dir):
    _, anns = _write_dataset(tmp_path, "eval_backends")
    results = {}
    for use_fast_impl in (True, False):
        out = str(tmp_path / f"out_{use_fast_impl}") if output_dir else None
        evaluator = COCOEvaluator("eval_backends", output_dir=out, use_fast_impl=use_fast_impl)
        for image_id, instances in _degraded_outputs(anns).items():
            evaluator.process([{"image_id": image_id}], [{"instances": instances}])
        results[use_fast_impl] = evaluator.evaluate()
    assert 0 < results[False]["segm"]["AP"] < 100
    for task in ("bbox", "segm"):
        assert results[True][task].keys() == results[False][task].keys()
        for name, value in results[False][task].items():
            assert results[True][task][name] == pytest.approx(value, abs=0.01, nan_ok=True), (task, name)


def test_process_streams_each_image_to_the_rank_file(tmp_path):
    _, anns = _write_dataset(tmp_path, "eval_stream")
    out = tmp_path / "out"
    evaluator = COCOEvaluator("eval_stream", output_dir=str(out))
    stream_file = out / os.path.basename(evaluator._stream.path)
    assert stream_file.name.startswith("coco_predictions.rank0.") and stream_file.name.endswith(".partial")
    for count, (image_id, instances) in enumerate(_degraded_outputs(anns).items(), start=1):
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
        evaluator._stream._file.flush()
        lines = stream_file.read_text().splitlines()
        assert len(lines) == count
        image, payload = lines[-1].split("\t")
        assert int(image) == image_id
        encoded = json.loads(payload)
        assert len(encoded) == len(instances)
        assert all(
            r["category_id"] in (3, 7) and len(r["bbox"]) == 4 and "counts" in r["segmentation"] for r in encoded
        )
    assert not (out / "coco_instances_results.json").exists()  # written by evaluate() only
    evaluator.evaluate()
    assert len(json.load(open(out / "coco_instances_results.json"))) == len(anns)


def test_an_interrupted_run_leaves_nothing_a_later_run_reads(tmp_path):
    _, anns = _write_dataset(tmp_path, "eval_crash")
    out = tmp_path / "out"
    crashed = COCOEvaluator("eval_crash", output_dir=str(out))
    for image_id in (1, 2):
        crashed.process([{"image_id": image_id}], [{"instances": _predictions_from(anns, image_id)}])
    crashed._stream._file.flush()  # as if the process died here, its stream files on disk
    crashed._columns._file.flush()
    assert not (out / "coco_instances_results.json").exists()

    later = COCOEvaluator("eval_crash", output_dir=str(out))
    later.process([{"image_id": 3}], [{"instances": _predictions_from(anns, 3)}])
    later.evaluate()
    assert json.load(open(out / "coco_instances_results.json")) == []  # image 3 has no objects
    streams = [evaluator._stream.path for evaluator in (crashed, later)]
    streams += [evaluator._columns.path for evaluator in (crashed, later)]
    assert {p.name for p in out.iterdir()} == {"coco_instances_results.json"} | {os.path.basename(p) for p in streams}
    del crashed, later  # a stream's file goes with it
    assert [p.name for p in out.iterdir()] == ["coco_instances_results.json"]


def test_evaluators_sharing_an_output_dir_keep_their_own_predictions(tmp_path):
    _, anns = _write_dataset(tmp_path, "eval_shared_dir")
    out = str(tmp_path / "out")
    together = DatasetEvaluators(
        [
            COCOEvaluator("eval_shared_dir", tasks=("bbox",), output_dir=out),
            COCOEvaluator("eval_shared_dir", tasks=("segm",), output_dir=out),
        ]
    )
    alone = COCOEvaluator("eval_shared_dir", output_dir=str(tmp_path / "alone"))
    for image_id, instances in _degraded_outputs(anns).items():
        together.process([{"image_id": image_id}], [{"instances": instances}])
        alone.process([{"image_id": image_id}], [{"instances": instances}])
    shared, expected = together.evaluate(), alone.evaluate()
    assert list(shared) == ["bbox", "segm"]
    for task in ("bbox", "segm"):
        assert shared[task] == pytest.approx(expected[task], nan_ok=True), task


def test_a_failed_write_keeps_the_previous_result_file(tmp_path, monkeypatch):
    _, anns = _write_dataset(tmp_path, "eval_fsync")
    out = tmp_path / "out"
    evaluator = COCOEvaluator("eval_fsync", output_dir=str(out))
    evaluator.process([{"image_id": 1}], [{"instances": _predictions_from(anns, 1)}])
    evaluator.evaluate()
    before = (out / "coco_instances_results.json").read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    evaluator.reset()
    for image_id in (1, 2):
        evaluator.process([{"image_id": image_id}], [{"instances": _predictions_from(anns, image_id)}])
    monkeypatch.setattr("os.fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        evaluator.evaluate()
    assert (out / "coco_instances_results.json").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def _evaluate_on_two_ranks(json_file, output_dir, result_file):
    from detlib.utils import comm

    name = "eval_two_ranks"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_file, os.path.dirname(json_file))
    anns = json.load(open(json_file))["annotations"]
    outputs = _degraded_outputs(anns)
    rank = comm.get_rank()
    results = {}
    for label, out in (("shared_dir", output_dir), ("temp_dir_other_host", None)):
        if label == "temp_dir_other_host" and rank == 1:
            # Rank 1 claims another host: its file's content must travel to rank 0.
            import detlib.evaluation.prediction_stream as prediction_stream

            prediction_stream.socket.gethostname = lambda: "another-host"
        evaluator = COCOEvaluator(name, output_dir=out)
        for image_id in sorted(outputs)[rank::2]:
            evaluator.process([{"image_id": image_id}], [{"instances": outputs[image_id]}])
        results[label] = evaluator.evaluate()
    with open(f"{result_file}.{rank}", "w") as f:
        json.dump(results, f)


def test_two_process_evaluation_equals_one_process(tmp_path):
    json_file, anns = _write_dataset(tmp_path, "eval_one_rank")
    single = COCOEvaluator("eval_one_rank", output_dir=str(tmp_path / "single"))
    for image_id, instances in _degraded_outputs(anns).items():
        single.process([{"image_id": image_id}], [{"instances": instances}])
    expected = single.evaluate()

    result_file = str(tmp_path / "metrics")
    launch(_evaluate_on_two_ranks, num_gpus_per_machine=2, args=(json_file, str(tmp_path / "two"), result_file))
    on_main = json.load(open(f"{result_file}.0"))
    assert json.load(open(f"{result_file}.1")) == {"shared_dir": None, "temp_dir_other_host": None}
    for label in ("shared_dir", "temp_dir_other_host"):
        for task in ("bbox", "segm"):
            assert on_main[label][task] == pytest.approx(expected[task], nan_ok=True), (label, task)

    def by_image(path):
        return sorted(json.load(open(path)), key=lambda r: (r["image_id"], -r["score"]))

    assert by_image(tmp_path / "two" / "coco_instances_results.json") == by_image(
        tmp_path / "single" / "coco_instances_results.json"
    )


def _write_keypoint_dataset(tmp_path, name):
    """Two 64 x 80 images with 3-keypoint objects (COCO pixel-index keypoints, some unlabeled)."""
    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in (1, 2)]
    annotations = []
    for image_id, count in ((1, 3), (2, 2)):
        for _ in range(count):
            x, y = rng.uniform(5, 40), rng.uniform(5, 25)
            keypoints = np.stack([x + rng.uniform(0, 30, 3), y + rng.uniform(0, 30, 3), [2, 1, 2]], 1)
            if len(annotations) == 1:
                keypoints[1] = 0  # unlabeled
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 3, "iscrowd": 0,
                "bbox": [x, y, 32.0, 32.0], "area": 1024.0,
                "keypoints": np.round(keypoints, 2).ravel().tolist(), "num_keypoints": int((keypoints[:, 2] > 0).sum()),
            })  # fmt: skip
    json_file = tmp_path / f"{name}.json"
    categories = [{"id": 3, "name": "square", "keypoints": ["a", "b", "c"], "skeleton": []}]
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    return str(json_file), annotations


def _keypoint_predictions(annotations, image_id, noise=0.0, seed=0):
    """Instances at the gt boxes whose keypoints are the gt ones (moved to pixel centers, as the
    loader does) plus Gaussian noise of `noise` px."""
    anns = [a for a in annotations if a["image_id"] == image_id]
    rng = np.random.default_rng(seed + image_id)
    keypoints = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(len(anns), -1, 3)
    keypoints[..., :2] += 0.5 + rng.normal(0, noise, keypoints[..., :2].shape)
    keypoints[..., 2] = 1.0  # the score of each predicted keypoint
    boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + 32, a["bbox"][1] + 32] for a in anns]
    return Instances(
        (H, W),
        pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
        scores=torch.linspace(0.9, 0.5, len(anns)),
        pred_classes=torch.zeros(len(anns), dtype=torch.int64),
        pred_keypoints=torch.tensor(keypoints, dtype=torch.float32),
    )


SIGMAS = (0.05, 0.08, 0.1)


def test_keypoints_task_scores_perfect_keypoints_100_and_equals_pycocotools_with_the_sigmas(tmp_path):
    json_file, anns = _write_keypoint_dataset(tmp_path, "eval_keypoints")
    perfect = COCOEvaluator("eval_keypoints", kpt_oks_sigmas=SIGMAS, output_dir=str(tmp_path / "perfect"))
    for image_id in (1, 2):
        perfect.process([{"image_id": image_id}], [{"instances": _keypoint_predictions(anns, image_id)}])
    results = perfect.evaluate()
    assert set(results) == {"bbox", "keypoints"} and "APs" not in results["keypoints"]
    assert results["keypoints"]["AP"] == pytest.approx(100.0)

    out = tmp_path / "noisy"
    noisy = {fast: COCOEvaluator("eval_keypoints", kpt_oks_sigmas=SIGMAS, output_dir=str(out), use_fast_impl=fast)
             for fast in (True, False)}  # fmt: skip
    for evaluator in noisy.values():
        for image_id in (1, 2):
            evaluator.process([{"image_id": image_id}], [{"instances": _keypoint_predictions(anns, image_id, 2.0)}])
    ours = {fast: evaluator.evaluate()["keypoints"] for fast, evaluator in noisy.items()}
    gt = COCO(json_file)
    reference = COCOeval(gt, gt.loadRes(str(out / "coco_instances_results.json")), "keypoints")
    reference.params.kpt_oks_sigmas = np.asarray(SIGMAS)
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
    expected = dict(zip(("AP", "AP50", "AP75", "APm", "APl"), reference.stats[:5] * 100))
    assert 0 < expected["AP"] < 100
    for fast in (True, False):
        for name, value in expected.items():
            assert ours[fast][name] == pytest.approx(value, abs=1e-6, nan_ok=True) or value < 0, (fast, name)


def test_keypoints_task_rejects_sigmas_of_another_keypoint_count(tmp_path):
    _, anns = _write_keypoint_dataset(tmp_path, "eval_keypoints_sigmas")
    evaluator = COCOEvaluator("eval_keypoints_sigmas", kpt_oks_sigmas=(0.05, 0.05), output_dir=str(tmp_path))
    evaluator.process([{"image_id": 1}], [{"instances": _keypoint_predictions(anns, 1)}])
    with pytest.raises(ValueError, match=r"2 OKS sigmas .* \{'ground truth': 3, 'predictions': 3\}"):
        evaluator.evaluate()
