"""The C++ libraries' log lines (XLA, libtpu, the CUDA plugin's stubs, gloo) kept off the terminal.

Those libraries write straight to file descriptor 2, some of them as soon as `import jax` loads
the plugins. A command-line entry point calls `hold()` before it imports JAX: descriptor 2 then
writes to a temporary file, and Python's `sys.stderr` (the progress bar, our log lines, error
lines) to a copy of the terminal. Once the run's log file is known, `route(path)` moves what was
held into it and points descriptor 2 there; `release()` gives the terminal back everything
instead (`--config.metrics.console_log_level=info`). Imports nothing but the standard library.

A library's fatal line still reaches the terminal: after `route` descriptor 2 writes into a pipe
read by a small forwarding process (this file run as a script), which appends everything to the
log file and copies to the terminal the first fatal line (`F1205 14:03:09.030023 ...`, as absl
and XLA write one before they abort) and all that follows. Being a process of its own, it outlives
the abort: the coordination service's "Terminating process because the JAX distributed service
detected fatal errors ... stopped sending heartbeats: 1", the only word a multi-host process gets
that another one died when no collective saw it, is on the terminal and not only in the file.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

_held: Any = None  # the temporary file descriptor 2 writes to while held
_terminal_fd: int | None = None
_forwarder: subprocess.Popen | None = None  # the process reading descriptor 2 after `route`

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
    """Descriptor 2 appends to `path` from now on, after what was held so far, through the
    forwarding process (fatal lines to the terminal as well)."""
    global _forwarder
    if _held is None:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    text = _take_held()
    if text:
        os.write(fd, HEADER.encode() + text)
    read, write = os.pipe()
    # Its own session: a Ctrl-C on the terminal stops the run, not the forwarder, which ends when
    # every writer of the pipe has (end of file).
    _forwarder = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), str(fd)],
        stdin=read,
        stdout=subprocess.DEVNULL,
        stderr=_terminal_fd,
        pass_fds=(fd,),
        start_new_session=True,
    )
    os.close(read)
    os.dup2(write, 2)
    os.close(write)
    os.close(fd)
    atexit.register(_finish_forwarding, path)


def _finish_forwarding(path: str) -> None:
    """At exit: descriptor 2 straight to the file, and the forwarder's last lines written."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 2)  # closes this process's end of the pipe
    os.close(fd)
    if _forwarder is not None:
        # A child process of the run may still hold the pipe open: then do not wait for it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            _forwarder.wait(timeout=10)


def release() -> None:
    """Descriptor 2 back to the terminal, with what was held written there first."""
    if _held is None or _terminal_fd is None:
        return
    text = _take_held()
    os.dup2(_terminal_fd, 2)
    if text:
        os.write(2, text)


# The start of a fatal log line from absl or XLA's logging: "F", month and day, the time.
_FATAL = re.compile(rb"^F\d{4} \d\d:\d\d:\d\d")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _forward(log_fd: int) -> None:
    """The forwarding process: standard input to `log_fd` until end of file; from the first fatal
    line on, to standard error (the terminal) too."""
    fatal, terminal = False, True
    pending = b""  # the unfinished last line, while no fatal line has been seen
    while chunk := os.read(0, 1 << 16):
        _write_all(log_fd, chunk)
        if not fatal:
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()[-4096:]
            starts = [i for i, line in enumerate(lines) if _FATAL.match(line)]
            if not starts:
                continue
            fatal = True
            chunk = b"\n".join(lines[starts[0] :]) + b"\n" + pending
        if terminal:
            try:
                _write_all(2, chunk)
            except OSError:  # the terminal is gone; the file still gets everything
                terminal = False


if __name__ == "__main__":
    _forward(int(sys.argv[1]))
