"""Logging setup: the main process logs to the console, every process to its own file."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections import Counter
from typing import Dict, Optional, Tuple

__all__ = ["setup_logger", "log_first_n", "log_every_n", "log_every_n_seconds"]

_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
_DATE_FORMAT = "%m/%d %H:%M:%S"


class _ShortNameFormatter(logging.Formatter):
    """Console format: abbreviates the logger name and highlights warnings and errors."""

    def __init__(self, *args, root_name: str, abbrev_name: str, color: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self._root_name = root_name + "."
        self._abbrev_name = abbrev_name + "." if abbrev_name else ""
        self._color = color

    def formatMessage(self, record: logging.LogRecord) -> str:
        full_name = record.name
        record.name = full_name.replace(self._root_name, self._abbrev_name)
        try:
            message = super().formatMessage(record)
        finally:
            record.name = full_name  # the record is shared with the file handler
        if record.levelno >= logging.WARNING:
            tag = record.levelname
            if self._color:
                tag = f"\033[31m{tag}\033[0m" if record.levelno >= logging.ERROR else f"\033[33m{tag}\033[0m"
            return message.replace(f" {record.levelname}: ", f" {tag}: ", 1)
        return message


@functools.lru_cache  # the same logger set up twice would print every line twice
def setup_logger(
    output: Optional[str] = None,
    distributed_rank: int = 0,
    *,
    color: bool = True,
    name: str = "detlib",
    abbrev_name: Optional[str] = None,
) -> logging.Logger:
    """Configure logger `name`: DEBUG to stdout on rank 0, DEBUG to a file on every rank.

    Args:
        output: a file name (ends in .txt or .log) or a directory, where `log.txt` is written.
            Ranks other than 0 append `.rank{N}` to the file name.
        distributed_rank: this process's global rank.
        color: colour WARNING/ERROR tags on the console (only when stdout is a terminal).
        abbrev_name: what `name` is shortened to on the console (default: "dl" for detlib).
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if abbrev_name is None:
        abbrev_name = "dl" if name == "detlib" else name

    if distributed_rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.DEBUG)
        console.setFormatter(
            _ShortNameFormatter(
                _FORMAT,
                datefmt=_DATE_FORMAT,
                root_name=name,
                abbrev_name=abbrev_name,
                color=color and sys.stdout.isatty(),
            )
        )
        logger.addHandler(console)

    if output is not None:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        file_handler = logging.FileHandler(filename, mode="a")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATE_FORMAT))
        logger.addHandler(file_handler)
    return logger


def _caller_logger_and_key(depth: int = 2) -> Tuple[str, Tuple[str, int]]:
    """The module name and (file, line) of the code `depth` frames up, for per-call-site state."""
    frame = sys._getframe(depth)
    module = frame.f_globals.get("__name__", "detlib")
    return ("detlib" if module == "__main__" else module), (frame.f_code.co_filename, frame.f_lineno)


_CALL_COUNTS: Counter = Counter()
_LAST_LOGGED: Dict[Tuple, float] = {}


def log_first_n(lvl: int, msg: str, n: int = 1, *, name: Optional[str] = None) -> None:
    """Log `msg` only the first `n` times this call site is reached."""
    caller, site = _caller_logger_and_key()
    _CALL_COUNTS[site] += 1
    if _CALL_COUNTS[site] <= n:
        logging.getLogger(name or caller).log(lvl, msg)


def log_every_n(lvl: int, msg: str, n: int = 1, *, name: Optional[str] = None) -> None:
    """Log `msg` the 1st, (n+1)-th, (2n+1)-th ... time this call site is reached."""
    caller, site = _caller_logger_and_key()
    _CALL_COUNTS[site] += 1
    if n == 1 or _CALL_COUNTS[site] % n == 1:
        logging.getLogger(name or caller).log(lvl, msg)


def log_every_n_seconds(lvl: int, msg: str, n: float = 1, *, name: Optional[str] = None) -> None:
    """Log `msg` at most once every `n` seconds from this call site."""
    caller, site = _caller_logger_and_key()
    now = time.perf_counter()
    last = _LAST_LOGGED.get(site)
    if last is None or now - last >= n:
        logging.getLogger(name or caller).log(lvl, msg)
        _LAST_LOGGED[site] = now
