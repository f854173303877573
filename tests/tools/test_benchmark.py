"""tools/benchmark.py: every module of tools/benchmarks/ is registered and parses its options; the ops, eval and
data benchmarks run end to end on tiny cases; the model benchmark's loss check samples nothing, the data benchmark's
check sees a changed batch."""

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("benchmark_cli", TOOLS / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts tools/ on sys.path, as running the script does
    return module


def test_every_benchmark_module_is_registered_with_the_interface(cli):
    modules = {m.name for m in pkgutil.iter_modules([str(TOOLS / "benchmarks")]) if m.name != "common"}
    assert {name.split(".")[1] for name in cli.BENCHMARKS.values()} == modules
    for name, module_name in cli.BENCHMARKS.items():
        module = importlib.import_module(module_name)
        assert isinstance(module.HELP, str) and module.__doc__, name
        assert callable(module.add_arguments) and callable(module.run), name
    args = cli.build_parser().parse_args(["model", "--quick", "--opts", "TEST.AMP.ENABLED", "True"])
    assert args.run is importlib.import_module("benchmarks.model").run
    assert args.quick and args.opts == ["TEST.AMP.ENABLED", "True"]


def test_nms_rows_time_both_and_check_equal_keeps(cli):
    from benchmarks.ops import nms_rows

    rows = nms_rows(sizes=[300], thresholds=[0.5], group_counts=[3], repeats=1, device=torch.device("cpu"))
    assert [row[:2] for row in rows] == [["nms", "300 boxes, IoU 0.5"], ["batched_nms", "300 boxes, IoU 0.5, 3 ids"]]
    assert all(row[-1] == "yes" and row[2] > 0 and row[3] > 0 for row in rows)


def test_eval_benchmark_runs_and_checks_the_metrics(cli, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "eval"])
    cli.main(["eval", "--images", "6", "--segm-images", "4", "--keypoints-images", "6", "--dets", "5"])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith(("| bbox", "| segm", "| keypoints"))]
    assert {line.split("|")[1].strip() for line in table} == {"bbox", "segm", "keypoints"}, out
    assert "not equal" not in out and "ATen" in out  # the kernels' ISA is named next to the figures


def test_model_loss_check_samples_every_anchor_and_roi(cli):
    from benchmarks.model import NO_SAMPLING, _losses_match

    from detlib.config import get_cfg
    from detlib.modeling.sampling import subsample_labels

    cfg = get_cfg()
    cfg.merge_from_list(NO_SAMPLING)
    labels = torch.randint(-1, 2, (200_000,), generator=torch.Generator().manual_seed(0))  # more than any image's
    for batch_size, fraction in (
        (cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE, cfg.MODEL.RPN.POSITIVE_FRACTION),
        (cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE, cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION),
    ):
        positive, negative = subsample_labels(labels, batch_size, fraction, 0)
        assert len(positive) + len(negative) == int((labels != -1).sum())
    assert _losses_match({"a": 1.0, "b": 2.0}, {"a": 1.0 + 5e-6, "b": 2.0}) == ""
    assert "relative 2.0e-05" in _losses_match({"a": 1.0}, {"a": 1.0 + 2e-5})
    assert "names differ" in _losses_match({"a": 1.0}, {"b": 1.0})


def test_data_benchmark_runs_and_checks_the_batches(cli, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "data"])
    cli.main(["data", "--images", "4", "--batches", "1", "--repeats", "1", "--check-batches", "1", "--workers", "2"])
    out = capsys.readouterr().out
    checks = [line for line in out.splitlines() if line.startswith("| detlib, ")]
    assert len(checks) >= 1 and all("| equal " in line for line in checks), out
    assert [line for line in out.splitlines() if line.startswith("|         2 ")], out  # the speeds' row


def test_data_benchmark_check_sees_a_changed_image_box_or_polygon(cli, tmp_path):
    import argparse
    import copy

    from benchmarks.data_loading import _detlib, batch_differences, write_dataset

    library = _detlib()
    records = library.register("benchmark_data_check_test", write_dataset(str(tmp_path), 2, seed=0), str(tmp_path))
    args = argparse.Namespace(batch_size=1, seed=0, mask_format="polygon")
    batch = next(iter(library.loader(records, args, 0, checked=True)))
    assert batch_differences(batch, batch, "polygon") == ("", 0.0)

    changed = copy.deepcopy(batch)
    changed[0]["image"][0, 0, 0] += 1
    assert "image differs" in batch_differences(batch, changed, "polygon")[0]
    changed = copy.deepcopy(batch)
    changed[0]["instances"].gt_boxes.tensor[0, 0] += 0.01
    assert "coordinates differ" in batch_differences(batch, changed, "polygon")[0]
    changed = copy.deepcopy(batch)
    changed[0]["instances"].gt_masks.polygons[0][0][1] += 0.01
    assert "coordinates differ" in batch_differences(batch, changed, "polygon")[0]
