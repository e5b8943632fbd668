"""The C++ libraries' stderr kept off the terminal: what descriptor 2 receives while held goes to
the run's log file (or back to the terminal when asked), Python's stderr stays on the terminal."""

import os
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


def run(finish: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM.format(finish=finish)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


def test_route_sends_held_and_later_native_lines_to_the_log_file(tmp_path):
    path = tmp_path / "train.log"
    result = run(f"route({str(path)!r})")
    assert result.stderr == "python line\n"
    assert path.read_text() == native_logs_header() + "native before\nnative after\n"


def test_release_gives_the_terminal_everything(tmp_path):
    result = run("release()")
    assert result.stderr.splitlines() == ["python line", "native before", "native after"]


def native_logs_header() -> str:
    from jaxvrl import native_logs

    return native_logs.HEADER
