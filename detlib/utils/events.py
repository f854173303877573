"""The event storage that a training step writes its metrics into, and the writers that read it.

The trainer opens one `EventStorage` around the whole run. Anything that executes inside a step
(the trainer itself, a hook, or a head's `forward`) reaches it with `get_event_storage()` and records
scalars, images or histograms keyed by the current iteration. Writers (console, `metrics.json`,
TensorBoard) periodically read what was recorded; nothing in the model depends on them.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from fvcore.common.history_buffer import HistoryBuffer

__all__ = ["EventStorage", "get_event_storage", "HistoryBuffer"]

_STORAGE_STACK: List["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    """The innermost `EventStorage` that is currently open.

    Raises:
        RuntimeError: when called outside any `with EventStorage(...)` block.
    """
    if not _STORAGE_STACK:
        raise RuntimeError(
            "get_event_storage() was called outside an EventStorage context. Training loops open "
            "one around the run (`with EventStorage(start_iter) as storage:`); code that records "
            "metrics outside a trainer must open one itself."
        )
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
        self._prefix = ""
        self._vis_data: List[Tuple[str, np.ndarray, int]] = []
        self._histograms: List[dict] = []

    def __enter__(self) -> "EventStorage":
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
        self,
        name: str,
        value: Union[float, torch.Tensor],
        smoothing_hint: bool = True,
        cur_iter: Optional[int] = None,
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
            raise ValueError(f"put_image('{img_name}') expects a (C, H, W) image with C in (1, 3), got shape {image.shape}")
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
