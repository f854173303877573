"""Per-image predictions streamed to one file per rank and merged on the main rank.

Each line of a rank's file is `image_id<TAB>payload` (the id as JSON: an int, or a string such as
Pascal VOC's file ids), the payload one image's encoded results on one line: a JSON array for
`merge`, any text without a newline for `merge_payloads`. Holding predictions on disk keeps a rank's memory flat in the number of images; the
main rank reads the other ranks' files directly where it shares their file system (same host) and
receives their content otherwise, so no rank ever holds every rank's results as Python objects.
"""

import contextlib
import itertools
import json
import logging
import os
import socket
import tempfile
import uuid
import weakref
from typing import IO, Iterator, List, Optional, Tuple, Union

from detlib.utils import comm
from detlib.utils.atomic_write import atomic_write

logger = logging.getLogger(__name__)


class PredictionStream:
    """An append-only file of per-image JSON payloads for this rank."""

    def __init__(self, directory: Optional[str], name: str):
        """
        Args:
            directory: where this rank's file lives; None: a temporary directory.
            name: the file's stem. The rank, a name unique to this stream (evaluators sharing a
                directory must not share a file) and `.partial` are appended, so that the file is
                never taken for a finished result. The file is removed with the stream.
        """
        self._tmpdir = None
        if directory is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="detlib_eval_")
            directory = self._tmpdir.name
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{name}.rank{comm.get_rank()}.{uuid.uuid4().hex[:12]}.partial")
        self._file: Optional[IO[str]] = None
        weakref.finalize(self, _remove, self.path)

    def reset(self) -> None:
        """Start afresh: a previous run's file, complete or not, is discarded. The file is created
        by the first `append`, so a stream nothing is appended to leaves no file."""
        self.close()
        _remove(self.path)

    def append(self, image_id: Union[int, str], payload: str) -> None:
        """Add one image's results; `payload` is one line (a JSON array, for `merge`)."""
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        key = json.dumps(image_id if isinstance(image_id, str) else int(image_id))
        self._file.write(f"{key}\t{payload}\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def merge(self, distributed: bool) -> Optional[Tuple[List[Union[int, str]], str]]:
        """
        Returns `(image_ids, results_json)` on the main rank (None on the others): the image ids
        in the order processed, and one JSON array of every image's results. With `distributed`
        this is collective and covers every rank's file; otherwise this rank's only. An image
        that appears more than once is counted once, with a warning.
        """
        merged = self.merge_payloads(distributed)
        if merged is None:
            return None
        image_ids, payloads = merged
        return image_ids, "[" + ",".join(p[1:-1] for p in payloads if p != "[]") + "]"

    def merge_payloads(self, distributed: bool) -> Optional[Tuple[List[Union[int, str]], List[str]]]:
        """As `merge`, but `(image_ids, payloads)`: each image's payload as it was appended."""
        with self._merged_sources(distributed) as sources:
            return None if sources is None else _concatenate(*sources)

    def write_merged(self, path: str, distributed: bool) -> None:
        """
        Writes `merge`'s JSON array to `path` (atomically) on the main rank, one image at a time, so that
        the array is never held in memory whole; collective like `merge`. Nothing is written if no
        rank appended anything.
        """
        with self._merged_sources(distributed) as sources:
            if sources is None:
                return
            lines = _unique(*sources)
            first = next(lines, None)
            if first is None:
                return
            with atomic_write(path, "w", encoding="utf-8") as f:
                f.write("[")
                separator = ""
                for _, payload in itertools.chain([first], lines):
                    if payload != "[]":
                        f.write(separator)
                        f.write(payload[1:-1])
                        separator = ","
                f.write("]")

    @contextlib.contextmanager
    def _merged_sources(self, distributed: bool) -> Iterator[Optional[List[Iterator[str]]]]:
        """Every rank's lines on the main rank (None on the others); the other ranks' files outlive
        the block. Collective with `distributed`."""
        if self._file is not None:
            self._file.flush()
        if not (distributed and comm.get_world_size() > 1):
            yield [_read_lines(self.path)]
            return
        host = socket.gethostname()
        everyone = comm.all_gather((host, self.path))
        # Content travels only from ranks on other hosts, whose files rank 0 cannot open.
        local_to_main = everyone[0][0] == host
        if not local_to_main:
            content = "".join(_read_lines(self.path))
        received = comm.gather(None if local_to_main else content, dst=0)
        try:
            if comm.is_main_process():
                yield [
                    iter(content.splitlines()) if content is not None else _read_lines(path)
                    for (_, path), content in zip(everyone, received)
                ]
            else:
                yield None
        finally:
            comm.synchronize()


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def _read_lines(path: str) -> Iterator[str]:
    if not os.path.exists(path):  # nothing was appended
        return
    with open(path, encoding="utf-8") as f:
        yield from f


def _unique(*sources: Iterator[str]) -> Iterator[Tuple[Union[int, str], str]]:
    """(image id, payload) of each line, the first time its image appears."""
    seen = set()
    duplicates = 0
    for source in sources:
        for line in source:
            image_id, payload = line.rstrip("\n").split("\t", 1)
            image_id = json.loads(image_id)
            if image_id in seen:
                duplicates += 1
                continue
            seen.add(image_id)
            yield image_id, payload
    if duplicates:
        logger.warning("%d images were processed more than once; each is evaluated once", duplicates)


def _concatenate(*sources: Iterator[str]) -> Tuple[List[Union[int, str]], List[str]]:
    image_ids: List[Union[int, str]] = []
    payloads: List[str] = []
    for image_id, payload in _unique(*sources):
        image_ids.append(image_id)
        payloads.append(payload)
    return image_ids, payloads
