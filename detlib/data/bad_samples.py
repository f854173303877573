"""
Bad input policy of the data pipeline: raise, or (with `DATALOADER.SKIP_BAD_SAMPLES`) log and count.

Every check in `detlib.data` that finds an unusable file, record or annotation raises
`BadSampleError` with a message naming the file, the image/annotation id and the field. Code that
can drop the offending item instead (the COCO loader for annotations, the loaders for images) does
so only inside `skip_bad_samples()`, and reports each skip through a `SkipCounter`, whose log lines
carry the running count.
"""

import contextlib
import contextvars
import logging
from typing import Iterator

__all__ = ["BadSampleError", "skip_bad_samples", "skipping_bad_samples", "SkipCounter"]

logger = logging.getLogger(__name__)

_SKIP = contextvars.ContextVar("detlib_skip_bad_samples", default=False)


class BadSampleError(ValueError):
    """An image or annotation that cannot be used. The message names file, record id and field."""


@contextlib.contextmanager
def skip_bad_samples(enabled: bool = True) -> Iterator[None]:
    """Within this context, loaders drop bad samples with a warning instead of raising."""
    token = _SKIP.set(enabled)
    try:
        yield
    finally:
        _SKIP.reset(token)


def skipping_bad_samples() -> bool:
    """Whether the current context asked for bad samples to be skipped."""
    return _SKIP.get()


class SkipCounter:
    """Counts skipped samples of one kind and logs each skip with the running total."""

    def __init__(self, kind: str):
        self.kind = kind
        self.count = 0

    def skip(self, error: BadSampleError) -> None:
        self.count += 1
        logger.warning("Skipped bad %s (%d skipped so far): %s", self.kind, self.count, error)
