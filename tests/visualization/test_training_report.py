import json

import pytest

from detlib.visualization.training_report import load_metrics, write_training_curves


def _write_metrics(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_load_metrics_groups_values_by_name(tmp_path):
    metrics = tmp_path / "metrics.json"
    _write_metrics(
        metrics,
        [
            {"iteration": 0, "loss_cls": 1.5, "lr": 0.01, "note": "text is ignored"},
            {"iteration": 1, "loss_cls": 1.25, "lr": 0.02, "bbox/AP": 12.5},
            {"iteration": 2, "loss_cls": float("nan")},
            {"no_iteration": 3},
        ],
    )
    series = load_metrics(str(metrics))
    assert series == {"loss_cls": [(0, 1.5), (1, 1.25)], "lr": [(0, 0.01), (1, 0.02)], "bbox/AP": [(1, 12.5)]}


def test_a_corrupt_line_names_the_file_and_line(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"iteration": 0, "loss": 1.0}\n{"iteration": 1, "loss"\n')
    with pytest.raises(ValueError, match=r"metrics\.json:2 is not a JSON object"):
        load_metrics(str(metrics))


def test_writes_curves_only_for_what_the_run_logged(tmp_path):
    metrics = tmp_path / "metrics.json"
    _write_metrics(metrics, [{"iteration": i, "total_loss": 2.0 - i, "loss_mask": 1.0, "lr": 0.1} for i in range(3)])
    assert write_training_curves(str(metrics), str(tmp_path)) == [
        str(tmp_path / "losses.png"),
        str(tmp_path / "lr.png"),
    ]
    _write_metrics(
        metrics,
        [
            {"iteration": 0, "total_loss": 1.0, "lr": 0.1},
            {"iteration": 5, "bbox/AP": 10.0, "segm/AP": 8.0, "bbox/AP-circle": 3.0},
        ],
    )
    written = write_training_curves(str(metrics), str(tmp_path))
    assert written[-1] == str(tmp_path / "ap.png")
    assert all((tmp_path / name).stat().st_size > 0 for name in ("losses.png", "lr.png", "ap.png"))
