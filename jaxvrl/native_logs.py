"""The C++ libraries' log lines (XLA, libtpu, the CUDA plugin's stubs, gloo) kept off the terminal.

Those libraries write straight to file descriptor 2, some of them as soon as `import jax` loads
the plugins. A command-line entry point calls `hold()` before it imports JAX: descriptor 2 then
writes to a temporary file, and Python's `sys.stderr` (the progress bar, our log lines, error
lines) to a copy of the terminal. Once the run's log file is known, `route(path)` moves what was
held into it and points descriptor 2 there; `release()` gives the terminal back everything
instead (`--config.metrics.console_log_level=info`). Imports nothing but the standard library.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

_held: Any = None  # the temporary file descriptor 2 writes to while held
_terminal_fd: int | None = None

HEADER = "---- C++ library output before logging started ----\n"


def hold() -> None:
    """Descriptor 2 to a temporary file; `sys.stderr` to the terminal. Idempotent."""
    global _held, _terminal_fd
    if _held is not None:
        return
    sys.stderr.flush()
    _terminal_fd = os.dup(2)
    _held = tempfile.TemporaryFile("w+b")  # noqa: SIM115 - closed by _take_held
    os.dup2(_held.fileno(), 2)
    sys.stderr = os.fdopen(os.dup(_terminal_fd), "w", buffering=1, errors="backslashreplace")


def is_held() -> bool:
    return _held is not None


def _take_held() -> bytes:
    global _held
    assert _held is not None
    _held.flush()
    _held.seek(0)
    text = _held.read()
    _held.close()
    _held = None
    return text


def route(path: str) -> None:
    """Descriptor 2 appends to `path` from now on, after what was held so far."""
    if _held is None:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    text = _take_held()
    if text:
        os.write(fd, HEADER.encode() + text)
    os.dup2(fd, 2)
    os.close(fd)


def release() -> None:
    """Descriptor 2 back to the terminal, with what was held written there first."""
    if _held is None or _terminal_fd is None:
        return
    text = _take_held()
    os.dup2(_terminal_fd, 2)
    if text:
        os.write(2, text)
