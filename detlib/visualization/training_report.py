"""Pictures of a finished training run: loss and learning-rate curves, AP over evaluations."""

import json
import math
import os
from collections import defaultdict
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402

Series = Dict[str, List[Tuple[int, float]]]


def load_metrics(metrics_file: str) -> Series:
    """Reads a `metrics.json` (one JSON object per line) into {name: [(iteration, value), ...]}."""
    series: Series = defaultdict(list)
    with open(metrics_file) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{metrics_file}:{line_no} is not a JSON object: {e}") from e
            iteration = record.get("iteration")
            if iteration is None:
                continue
            for name, value in record.items():
                if name != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    series[name].append((int(iteration), float(value)))
    return dict(series)


def _plot_grid(series: Series, panels: Dict[str, List[str]], title: str, path: str, ylabel: str) -> None:
    """One subplot per panel title, with one line per series name listed for it."""
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (panel, names) in zip(axes.flat, panels.items()):
        for name in names:
            its, vals = zip(*sorted(series[name]))
            label = name.rsplit("/", 1)[0] if len(names) > 1 else None
            ax.plot(its, vals, linewidth=1.2, marker="o" if len(its) < 20 else None, markersize=3, label=label)
        if len(names) > 1:
            ax.legend(fontsize=8)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_training_curves(metrics_file: str, output_dir: str) -> List[str]:
    """
    Writes `losses.png` (every loss term and the total), `lr.png` and, when the run evaluated,
    `ap.png` (every AP metric over evaluations) into `output_dir`; returns the paths written.
    """
    series = load_metrics(metrics_file)
    written = []
    losses = sorted(n for n in series if n.startswith("loss") or n == "total_loss")
    if losses:
        written.append(os.path.join(output_dir, "losses.png"))
        _plot_grid(series, {n: [n] for n in losses}, "training losses", written[-1], "loss")
    if "lr" in series:
        written.append(os.path.join(output_dir, "lr.png"))
        _plot_grid(series, {"lr": ["lr"]}, "learning rate", written[-1], "lr")
    # "bbox/AP50", "segm/AP50" -> one "AP50" panel with a line per task; per-class APs are left out.
    ap_panels: Dict[str, List[str]] = defaultdict(list)
    for name in sorted(series):
        metric = name.rsplit("/", 1)[-1]
        if "/" in name and metric.startswith("AP") and "-" not in metric:
            ap_panels[metric].append(name)
    if ap_panels:
        order = {m: k for k, m in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl"))}
        panels = dict(sorted(ap_panels.items(), key=lambda kv: order.get(kv[0], len(order))))
        written.append(os.path.join(output_dir, "ap.png"))
        _plot_grid(series, panels, "COCO AP (%) over evaluations", written[-1], "AP")
    return written
