"""The C++ libraries' stderr kept off the terminal: what descriptor 2 receives while held goes to
the run's log file (or back to the terminal when asked), Python's stderr stays on the terminal."""

import os
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = """
import os, sys
from jaxvrl import native_logs

native_logs.hold()
os.write(2, b"native before\\n")          # as XLA's C++ logging writes
print("python line", file=sys.stderr)    # the progress bar, our log lines
native_logs.{finish}
os.write(2, b"native after\\n")
"""


# As the coordination service's client ends a process whose peer stopped sending heartbeats.
FATAL = """
os.write(2, b"E1205 14:03:09.029288   20111 coordination_service.cc:1549] error polled\\n")
os.write(2, b"F1205 14:03:09.030023   20125 client.h:80] Terminating process because the JAX "
            b"distributed service detected fatal errors. absl::Status: UNAVAILABLE: The "
            b"following tasks are unhealthy (stopped sending heartbeats):\\n1\\n")
os.abort()
"""


def run(finish: str, then: str = "", check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM.format(finish=finish) + then],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=check,
    )  # fmt: skip


def test_route_sends_held_and_later_native_lines_to_the_log_file(tmp_path):
    path = tmp_path / "train.log"
    result = run(f"route({str(path)!r})")
    assert result.stderr == "python line\n"
    assert path.read_text() == native_logs_header() + "native before\nnative after\n"


def test_a_fatal_line_reaches_the_terminal_though_the_process_aborts(tmp_path):
    path = tmp_path / "train.log"
    result = run(f"route({str(path)!r})", FATAL, check=False)
    assert result.returncode == -signal.SIGABRT
    # The terminal: the Python line, then the fatal line and what follows it (the lost process's
    # number); not the library lines before it.
    assert result.stderr.startswith("python line\nF1205 14:03:09.030023")
    assert result.stderr.endswith("stopped sending heartbeats):\n1\n")
    assert "native" not in result.stderr and "error polled" not in result.stderr
    # The file: everything, in order.
    lines = path.read_text().splitlines()
    assert lines[:3] == [native_logs_header().strip(), "native before", "native after"]
    assert "error polled" in lines[3] and lines[4].startswith("F1205") and lines[5:] == ["1"]


def test_release_gives_the_terminal_everything(tmp_path):
    result = run("release()")
    assert result.stderr.splitlines() == ["python line", "native before", "native after"]


def native_logs_header() -> str:
    from jaxvrl import native_logs

    return native_logs.HEADER
