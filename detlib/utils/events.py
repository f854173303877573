"""The event storage that a training step writes its metrics into, and the writers that read it.

The trainer opens one `EventStorage` around the whole run. Anything that executes inside a step
(the trainer itself, a hook, or a head's `forward`) reaches it with `get_event_storage()` and records
scalars, images or histograms keyed by the current iteration. Writers (console, `metrics.json`,
TensorBoard) periodically read what was recorded; nothing in the model depends on them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from fvcore.common.history_buffer import HistoryBuffer

__all__ = [
    "EventStorage",
    "get_event_storage",
    "HistoryBuffer",
    "EventWriter",
    "CommonMetricPrinter",
    "JSONWriter",
    "TensorboardXWriter",
]

_STORAGE_STACK: List[EventStorage] = []


def get_event_storage() -> EventStorage:
    """The innermost `EventStorage` that is currently open.

    Outside any `with EventStorage(...)` block (a model run in training mode outside a trainer, e.g. to
    look at its losses) it is a storage that drops whatever is put into it, so that recording summaries
    never stops a forward pass; the first such call is logged.
    """
    if not _STORAGE_STACK:
        global _WARNED_DROPPING
        if not _WARNED_DROPPING:
            _WARNED_DROPPING = True
            logging.getLogger(__name__).info(
                "No EventStorage is open: the metrics recorded outside a trainer are dropped. Open one "
                "(`with EventStorage() as storage:`) to keep them."
            )
        return _DROPPING_STORAGE
    return _STORAGE_STACK[-1]


class EventStorage:
    """Scalars, images and histograms recorded during training, indexed by iteration.

    Scalars keep their full history in a `HistoryBuffer` (median / avg over a window, latest,
    global average). Images and histograms are buffered until a writer consumes and clears them.
    """

    def __init__(self, start_iter: int = 0):
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, Tuple[float, int]] = {}
        self._iter = start_iter
        self._start_iter = start_iter
        self._prefix = ""
        self._vis_data: List[Tuple[str, np.ndarray, int]] = []
        self._histograms: List[dict] = []

    def __enter__(self) -> EventStorage:
        _STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        assert _STORAGE_STACK and _STORAGE_STACK[-1] is self, "EventStorage contexts closed out of order"
        _STORAGE_STACK.pop()

    # -- iteration ---------------------------------------------------------------------------
    @property
    def iter(self) -> int:
        """The iteration that values put now are recorded at."""
        return self._iter

    @iter.setter
    def iter(self, value: int) -> None:
        self._iter = int(value)

    @property
    def iteration(self) -> int:
        return self._iter

    @property
    def start_iter(self) -> int:
        """The iteration this storage (the current run) started at."""
        return self._start_iter

    def step(self) -> None:
        """Advance to the next iteration (the trainer calls this once per step)."""
        self._iter += 1

    @contextlib.contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Prefix every name put inside the block with `name/` (scopes nest)."""
        outer = self._prefix
        self._prefix = outer + name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._prefix = outer

    # -- scalars -----------------------------------------------------------------------------
    def put_scalar(
        self, name: str, value: Union[float, torch.Tensor], smoothing_hint: bool = True, cur_iter: Optional[int] = None
    ) -> None:
        """Record one scalar at the current iteration (or at `cur_iter`).

        `smoothing_hint` tells writers whether a windowed median is a meaningful summary of the
        value (true for noisy per-step losses, false for e.g. an evaluation AP or the lr).
        """
        name = self._prefix + name
        iteration = self._iter if cur_iter is None else int(cur_iter)
        value = float(value.detach().item() if isinstance(value, torch.Tensor) else value)
        previous_hint = self._smoothing_hints.setdefault(name, smoothing_hint)
        if previous_hint != smoothing_hint:
            raise ValueError(
                f"Scalar '{name}' was put with smoothing_hint={previous_hint} before and "
                f"smoothing_hint={smoothing_hint} now; a scalar must keep one hint."
            )
        self._history[name].update(value, iteration)
        self._latest_scalars[name] = (value, iteration)

    def put_scalars(self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **scalars) -> None:
        """Record several scalars at once: `storage.put_scalars(loss_cls=0.3, loss_box_reg=0.1)`."""
        for name, value in scalars.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def history(self, name: str) -> HistoryBuffer:
        """The full history of scalar `name`."""
        if name not in self._history:
            raise KeyError(f"No scalar named '{name}' in the EventStorage (known: {sorted(self._history)})")
        return self._history[name]

    def histories(self) -> Dict[str, HistoryBuffer]:
        return dict(self._history)

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """`{name: (latest value, iteration it was put at)}` for every scalar."""
        return dict(self._latest_scalars)

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like `latest()`, but scalars with a smoothing hint report their median over the last
        `window_size` values."""
        result = {}
        for name, (value, iteration) in self._latest_scalars.items():
            if self._smoothing_hints[name]:
                value = float(self._history[name].median(window_size))
            result[name] = (value, iteration)
        return result

    def smoothing_hints(self) -> Dict[str, bool]:
        return dict(self._smoothing_hints)

    # -- images and histograms ---------------------------------------------------------------
    def put_image(self, img_name: str, img_tensor: Union[torch.Tensor, np.ndarray]) -> None:
        """Buffer an RGB image for the TensorBoard writer.

        Args:
            img_tensor: shape (3, H, W); float in [0, 1] or uint8 in [0, 255].
        """
        image = img_tensor.detach().cpu().numpy() if isinstance(img_tensor, torch.Tensor) else np.asarray(img_tensor)
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(
                f"put_image('{img_name}') expects a (C, H, W) image with C in (1, 3), got shape {image.shape}"
            )
        self._vis_data.append((self._prefix + img_name, image, self._iter))

    def put_histogram(self, hist_name: str, hist_tensor: torch.Tensor, bins: int = 1000) -> None:
        """Buffer a histogram of the values of `hist_tensor` (any shape) for the TensorBoard writer."""
        values = hist_tensor.detach().float().flatten().cpu()
        if values.numel() == 0:
            raise ValueError(f"put_histogram('{hist_name}') got an empty tensor")
        low, high = values.min().item(), values.max().item()
        counts = torch.histc(values, bins=bins, min=low, max=high)
        edges = torch.linspace(low, high, steps=bins + 1)
        self._histograms.append(
            {
                "tag": self._prefix + hist_name,
                "min": low,
                "max": high,
                "num": values.numel(),
                "sum": values.sum().item(),
                "sum_squares": (values * values).sum().item(),
                "bucket_limits": edges[1:].tolist(),
                "bucket_counts": counts.tolist(),
                "global_step": self._iter,
            }
        )

    @property
    def vis_data(self) -> List[Tuple[str, np.ndarray, int]]:
        """Buffered images: `(name, (C, H, W) array, iteration)`."""
        return self._vis_data

    @property
    def histograms(self) -> List[dict]:
        """Buffered histograms in the keyword form of `SummaryWriter.add_histogram_raw`."""
        return self._histograms

    def clear_images(self) -> None:
        self._vis_data = []

    def clear_histograms(self) -> None:
        self._histograms = []


class _DroppingStorage(EventStorage):
    """`get_event_storage()` outside any open storage: everything put into it is dropped."""

    def put_scalar(self, *args, **kwargs) -> None:
        pass

    def put_image(self, *args, **kwargs) -> None:
        pass

    def put_histogram(self, *args, **kwargs) -> None:
        pass


_DROPPING_STORAGE = _DroppingStorage()
_WARNED_DROPPING = False


class EventWriter:
    """Reads the current `EventStorage` and writes what is new somewhere."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """Appends one JSON object per iteration to a file: `{"iteration": i, name: value, ...}`.

    Every scalar put since the previous write is written under the iteration it was put at
    (smoothed over `window_size` where it has a smoothing hint). The file is valid line by line:
    before its first write, lines of earlier runs at or after the iteration the current run
    started at are dropped (all of them for a run from scratch), and so is a partial line left
    by a killed process, so that a resumed run's file reads like an uninterrupted one.
    """

    def __init__(self, json_file: str, window_size: int = 20):
        self._path = json_file
        self._window_size = window_size
        self._last_write = -1
        self._first_write = True

    def write(self) -> None:
        storage = get_event_storage()
        by_iter: Dict[int, Dict[str, float]] = defaultdict(dict)
        for name, (value, iteration) in storage.latest_with_smoothing_hint(self._window_size).items():
            if iteration > self._last_write:
                by_iter[iteration][name] = value
        if not by_iter:
            return
        if self._first_write:
            self._drop_records_from(storage.start_iter)
            self._first_write = False
        lines = "".join(json.dumps({"iteration": it, **by_iter[it]}, sort_keys=True) + "\n" for it in sorted(by_iter))
        with open(self._path, "a") as f:
            f.write(lines)
            f.flush()
        self._last_write = max(by_iter)

    def _drop_records_from(self, first_iteration: int) -> None:
        """Keep only the complete lines of an existing file whose iteration precedes ours."""
        if not os.path.exists(self._path):
            return
        with open(self._path) as f:
            text = f.read()
        complete_lines = text.splitlines(keepends=True)
        if complete_lines and not complete_lines[-1].endswith("\n"):
            complete_lines.pop()
        kept = [line for line in complete_lines if line.strip() and json.loads(line)["iteration"] < first_iteration]
        if len(kept) != len(complete_lines) or len(text) != sum(map(len, complete_lines)):
            with open(self._path, "w") as f:
                f.writelines(kept)


class TensorboardXWriter(EventWriter):
    """Writes scalars, images and histograms to TensorBoard event files in `log_dir`.

    Like `JSONWriter`, a resumed run supersedes what an interrupted one wrote from the resumed
    iteration on: TensorBoard is told to purge those steps.
    """

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs):
        self._log_dir = log_dir
        self._window_size = window_size
        self._kwargs = kwargs
        self._writer = None  # created at the first write, when the run's start iteration is known
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            purge_step = storage.start_iter if storage.start_iter > 0 else None
            self._writer = SummaryWriter(self._log_dir, purge_step=purge_step, **self._kwargs)
        newest = self._last_write
        for name, (value, iteration) in storage.latest_with_smoothing_hint(self._window_size).items():
            if iteration > self._last_write:
                self._writer.add_scalar(name, value, iteration)
                newest = max(newest, iteration)
        self._last_write = newest
        for name, image, iteration in storage.vis_data:
            self._writer.add_image(name, image, iteration)
        storage.clear_images()
        for histogram in storage.histograms:
            self._writer.add_histogram_raw(**histogram)
        storage.clear_histograms()
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Prints one progress line to the log: ETA, iteration, losses, step and data time, lr,
    peak GPU memory.

    Losses are the scalars whose name contains "loss" (medians over `window_size` iterations);
    `time` and `data_time` are put by the `IterationTimer` hook and the trainer.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20):
        self._logger = logging.getLogger("detlib.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        # Fallback ETA when no `time` history exists: wall clock between two writes.
        self._last_seen: Optional[Tuple[int, float]] = None

    def _eta(self, storage: EventStorage) -> Optional[str]:
        if self._max_iter is None:
            return None
        iteration = storage.iter
        remaining = self._max_iter - iteration - 1
        try:
            seconds = storage.history("time").median(1000) * remaining
            storage.put_scalar("eta_seconds", seconds, smoothing_hint=False)
        except KeyError:
            now = time.perf_counter()
            seconds = None
            if self._last_seen is not None and iteration > self._last_seen[0]:
                seconds = (now - self._last_seen[1]) / (iteration - self._last_seen[0]) * remaining
            self._last_seen = (iteration, now)
            if seconds is None:
                return None
        return str(datetime.timedelta(seconds=int(seconds)))

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._max_iter:
            return  # hooks that run after the last step (final evaluation) write at max_iter
        histories = storage.histories()
        window = self._window_size

        def fmt(name: str, template: str) -> str:
            return template.format(histories[name].median(window)) if name in histories else ""

        eta = self._eta(storage)
        losses = "  ".join(
            f"{name}: {history.median(window):.4g}" for name, history in histories.items() if "loss" in name
        )
        try:
            lr = f"lr: {histories['lr'].latest():.5g}"
        except KeyError:
            lr = ""
        memory = ""
        if torch.cuda.is_available():
            memory = f"max_mem: {torch.cuda.max_memory_allocated() / 1024**2:.0f}M"
        parts = [
            f"eta: {eta}" if eta else "",
            f"iter: {iteration}",
            losses,
            fmt("time", "time: {:.4f}"),
            fmt("data_time", "data_time: {:.4f}"),
            lr,
            memory,
        ]
        self._logger.info("  ".join(p for p in parts if p))
