"""Messages go through `logging`, on one logger ("ensemble_jax") that lets through only
process 0's records in a multi-process run, so such a run prints once.

The CLI calls `configure()` (every message to stderr, as written). A library caller
that sets nothing sees the warnings only (on stderr); the entry points
(`fit`, `fit_waves`, `run_sweep`, `analyze`, `predict_sources`, `suggest_frames`) also
take `log=callable`, which receives every message while that call runs (`sink`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import sys
from typing import Callable, Iterator

LOGGER = logging.getLogger("ensemble_jax")
LOGGER.setLevel(logging.INFO)
LOGGER.propagate = False      # its own stderr handler; a root handler would repeat it


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (as logging.lastResort)."""

    def __init__(self, level: int):
        logging.Handler.__init__(self, level)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr


STDERR = _Stderr(logging.WARNING)
LOGGER.addHandler(STDERR)


class Process0(logging.Filter):
    """Passes every record of a single-process run, only process 0's otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        import jax   # is_initialized does not start a backend (--devices comes first)
        return not jax.distributed.is_initialized() or jax.process_index() == 0


LOGGER.addFilter(Process0())


def info(msg: str) -> None:
    LOGGER.info(msg)


def warning(msg: str) -> None:
    """`msg` (which says "warning: ..." itself) at WARNING level."""
    LOGGER.warning(msg)


def configure() -> None:
    """The CLI's set-up: every message, as written, to stderr."""
    STDERR.setLevel(logging.INFO)


class _Sink(logging.Handler):
    def __init__(self, fn: Callable[[str], None]):
        super().__init__()
        self.fn = fn

    def emit(self, record: logging.LogRecord) -> None:
        self.fn(record.getMessage())


@contextlib.contextmanager
def to(fn: Callable[[str], None] | None) -> Iterator[None]:
    """While inside, every message also goes to `fn` (nothing extra when None)."""
    if fn is None or any(isinstance(h, _Sink) and h.fn == fn for h in LOGGER.handlers):
        yield
        return
    handler = _Sink(fn)
    LOGGER.addHandler(handler)
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)


def sink(f: Callable) -> Callable:
    """Decorator: `f(..., log=callable)` sends this package's messages to `log` while f
    runs (see `to`)."""
    @functools.wraps(f)
    def wrapper(*args, log: Callable[[str], None] | None = None, **kwargs):
        with to(log):
            return f(*args, **kwargs)
    return wrapper
