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


def _plot_grid(series: Series, names: List[str], title: str, path: str, ylabel: str) -> None:
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        its, vals = zip(*sorted(series[name]))
        ax.plot(its, vals, linewidth=1.2, marker="o" if len(its) < 20 else None, markersize=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
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
        _plot_grid(series, losses, "training losses", written[-1], "loss")
    if "lr" in series:
        written.append(os.path.join(output_dir, "lr.png"))
        _plot_grid(series, ["lr"], "learning rate", written[-1], "lr")
    aps = sorted(n for n in series if "/AP" in n and "-" not in n.split("/")[-1])
    if aps:
        written.append(os.path.join(output_dir, "ap.png"))
        _plot_grid(series, aps, "COCO AP (%) over evaluations", written[-1], "AP")
    return written
