"""
Writing a file so that its path holds either the old content or the complete new one, never a part:
checkpoints, downloads, evaluation results, exported models and dataset caches all go through here.
"""

import contextlib
import os
import tempfile
from typing import IO, ContextManager, Iterator, Union

__all__ = ["atomic_path", "atomic_write"]

PathLike = Union[str, "os.PathLike[str]"]


def _fsync_path(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, keep_extension: bool = False) -> Iterator[str]:
    """
    A temporary path beside `path` for the caller to write to: hidden and ending in ".tmp" (so that nothing
    listing `*.pth` takes it for a file, and `DetectionCheckpointer` removes one left by a killed process),
    or with `path`'s extension after ".tmp" for writers that insist on one (AOTInductor's ".pt2"). When the
    block ends normally the file is fsynced, renamed over `path`, and the directory fsynced so that the
    rename survives a crash; when it raises, the temporary file is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(path)
    suffix = ".tmp" + (os.path.splitext(name)[1] if keep_extension else "")
    fd, tmp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp_path
        _fsync_path(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    _fsync_path(directory)


def atomic_write(path: PathLike, mode: str = "wb", **open_kwargs) -> ContextManager[IO]:
    """
    `open(path, mode)` for writing through `atomic_path`: the file appears at `path` only complete. Checked
    when called, not when entered, so that a call outside a `with` (which would write nothing) fails loudly.
    """
    if not isinstance(mode, str) or not mode.startswith("w"):
        raise ValueError(f"atomic_write opens files for writing ('w' modes) in a `with` block, got mode {mode!r}")
    return _atomic_open(path, mode, **open_kwargs)


@contextlib.contextmanager
def _atomic_open(path: PathLike, mode: str, **open_kwargs) -> Iterator[IO]:
    with atomic_path(path) as tmp_path:
        with open(tmp_path, mode, **open_kwargs) as f:
            yield f
