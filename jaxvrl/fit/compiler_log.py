"""What the compiler writes to the process's standard error while it compiles one program.

XLA's C++ warnings (the SPMD partitioner's "Involuntary full rematerialization" among them) go
straight to file descriptor 2, not through Python. `captured()` points descriptor 2 at a
temporary file for the duration of a compile, hands the text to the caller and writes it on to
wherever descriptor 2 pointed before (the terminal, or a run's train.log), so nothing is lost.

    with compiler_log.captured() as log:
        compiled = lowered.compile()
    involuntary_remats(log.text)
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# The partitioner's warning when it cannot reshard a tensor except by replicating it whole
# (xla/service/spmd/spmd_partitioner.cc): one line per rematerialised operation.
_INVOLUNTARY = re.compile(r"Involuntary full rematerialization")


class Captured:
    """The text written to descriptor 2 while captured (set when the block exits)."""

    text: str = ""


@contextlib.contextmanager
def captured() -> Iterator[Captured]:
    """Descriptor 2 into a temporary file within the block; the text is then passed on."""
    result = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield result
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            data = tmp.read()
            view = memoryview(data)
            while view:
                view = view[os.write(2, view) :]
            result.text = data.decode(errors="replace")


def involuntary_remats(text: str) -> int:
    """How many involuntary full rematerialisations the partitioner reported in `text`."""
    return len(_INVOLUNTARY.findall(text))


def remat_lines(text: str, width: int = 300) -> list[str]:
    """The partitioner's rematerialisation warnings, each cut to `width` characters."""
    return [line[:width] for line in text.splitlines() if _INVOLUNTARY.search(line)]
