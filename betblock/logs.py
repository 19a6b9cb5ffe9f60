"""Application logging: structlog, JSON lines by default, human-readable on request.

Owns the one-time logging configuration. Hits never go through here (see hits/).
"""

from __future__ import annotations

import io
import logging
import sys
from typing import IO

import structlog


def _whole_lines() -> IO[str]:
    """stderr written one whole line per system call. Python's own stderr writes a line and its
    newline separately, so the lines of several processes sharing it (the DNS workers and the
    control plane) could be spliced together."""
    raw = io.BufferedWriter(io.FileIO(sys.stderr.fileno(), "w", closefd=False), 1 << 16)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", line_buffering=True)


def configure(level: str = "info", fmt: str = "json", *, shared: bool = False) -> None:
    """Configure structlog and the stdlib root logger to write to stderr (``shared``: with
    other processes, so whole lines only)."""
    lvl = getattr(logging, level.upper())
    stream = _whole_lines() if shared else sys.stderr
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=lvl, stream=stream, format="%(levelname)s %(name)s %(message)s")
