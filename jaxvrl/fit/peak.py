"""What lives at a compiled program's memory peak: the largest buffers, read from the buffer
assignment XLA dumps while it compiles (TPU, GPU and CPU compilers all write it).

The TPU compiler's refusal says only how much it needed ("HLO temporaries (31.55G) exceeds
available HBM (31.25G)"); its dump still holds the live ranges of the assignment it tried. This
module reads three files of one module's dump:

- `*-live-range.txt`, section "Live ranges at N (peak):": each buffer alive at the peak and its
  bytes (`fusion.1384.remat2{1}: 274877906944 bytes (cumulative: ...)`);
- `*-buffer-assignment.txt`: each buffer's shape (`value: <19505 fusion.1384.remat2{1} @0>
  (size=...,offset=...): f32[1,2,262144,131072]{2,3,1,0:T(8,128)}`);
- the optimized HLO text: the JAX operation behind each instruction (`metadata={op_name=...}`).

Buffers of the same operation and shape are counted together (one per layer of a scanned stack,
say), largest total first.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Callable
from typing import Any

_PEAK_HEADER = re.compile(r"^\s*Live ranges at \d+ \(peak\):\s*$")
_PEAK_LINE = re.compile(r"^\s+(\S+): (\d+) bytes")
_VALUE = re.compile(r"value: <\d+ (\S+) @\d+> \(size=\d+,offset=\d+\): (\S+)")
_ARRAY_SHAPE = re.compile(r"^([a-z]+\d*\[[\d,]*\])")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?(\S+) = .*?metadata=\{op_name=\"((?:[^\"\\]|\\.)*)\"")


@dataclasses.dataclass(frozen=True)
class PeakBuffer:
    """Buffers of one operation and shape alive at the peak, per chip."""

    bytes: int  # all `count` of them together
    count: int
    shape: str  # e.g. "f32[4,28,2048,2048]"; "" for a tuple or when the dump lacks it
    op: str  # the JAX operation (op_name), else the HLO instruction's name

    def as_dict(self) -> dict[str, Any]:
        return {"gib": self.bytes / (1 << 30), "count": self.count, "shape": self.shape,
                "op": self.op}  # fmt: skip


def dump_options(directory: str) -> dict[str, Any]:
    """Compiler options that make XLA write the buffer assignment of a compile to `directory`
    (`jax.stages.Lowered.compile(compiler_options=...)`)."""
    return {"xla_dump_to": directory, "xla_dump_hlo_as_text": True}


def _peak_live(path: str) -> list[tuple[str, int]]:
    """(buffer, bytes) of the live-range file's peak section."""
    out: list[tuple[str, int]] = []
    with open(path, errors="replace") as f:
        in_peak = False
        for line in f:
            if not in_peak:
                in_peak = bool(_PEAK_HEADER.match(line))
                continue
            m = _PEAK_LINE.match(line)
            if not m:
                break
            out.append((m.group(1), int(m.group(2))))
    return out


def _first_matches(
    path: str, pattern: re.Pattern[str], wanted: set[str], value: Callable[[re.Match[str]], str]
) -> dict[str, str]:
    """{name: value(match)} for the first line of `path` where `pattern` matches with group 1 a
    wanted name; {} without the file."""
    out: dict[str, str] = {}
    if not os.path.isfile(path):
        return out
    with open(path, errors="replace") as f:
        for line in f:
            m = pattern.search(line)
            if m and m.group(1) in wanted and m.group(1) not in out:
                out[m.group(1)] = value(m)
    return out


def _array_shape(m: re.Match[str]) -> str:
    shape = _ARRAY_SHAPE.match(m.group(2))
    return shape.group(1) if shape else ""


def peak_buffers(directory: str, top: int = 8) -> list[PeakBuffer]:
    """The `top` largest groups of buffers alive at the peak of the compile dumped in
    `directory` (the module with the largest peak, when it holds several); [] without a dump."""
    best: list[tuple[str, int]] = []
    best_path = ""
    for path in glob.glob(os.path.join(directory, "*-live-range.txt")):
        live = _peak_live(path)
        if sum(b for _, b in live) > sum(b for _, b in best):
            best, best_path = live, path
    if not best:
        return []
    prefix = best_path.removesuffix("-live-range.txt")
    values = {name.removesuffix("{}") for name, _ in best}
    shapes = _first_matches(prefix + "-buffer-assignment.txt", _VALUE, values, _array_shape)
    instructions = {name.split("{")[0] for name, _ in best}
    ops = _first_matches(  # an instruction's name is unique in its module
        prefix + ".txt", _INSTRUCTION, instructions, lambda m: m.group(2).replace("\\'", "'")
    )
    groups: dict[tuple[str, str], list[int]] = {}
    for name, size in best:
        instruction = name.split("{")[0]
        # No op_name (an async copy, say): the instruction's kind (`copy-start.38` -> `copy-start`).
        op = ops.get(instruction) or re.sub(r"\.\d+$", "", instruction)
        key = (op, shapes.get(name.removesuffix("{}"), ""))
        groups.setdefault(key, []).append(size)
    ranked = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
    return [PeakBuffer(sum(sizes), len(sizes), shape, op) for (op, shape), sizes in ranked]


_SPACE = re.compile(r"^Memory Space: default \(color=0\)\s*\nTotal bytes: (\d+)", re.MULTILINE)


def assigned_bytes(directory: str) -> int | None:
    """The device memory the compiler's buffer assignment takes (its memory-usage report's
    default memory space, arguments included: the figure a TPU refusal quotes), for the module
    with the largest report (TPU, GPU and CPU compilers write one); None without it."""
    totals = []
    for path in glob.glob(os.path.join(directory, "*-memory-usage-report.txt")):
        with open(path, errors="replace") as f:
            m = _SPACE.search(f.read(1 << 16))
        if m:
            totals.append(int(m.group(1)))
    return max(totals, default=None)


def short_op(op: str, parts: int = 3) -> str:
    """The last `parts` components of an op_name path (`jit(train_step)/while/body/.../
    bkqd,bksd->bkqs/dot_general` -> `.../rematted_computation/bkqd,bksd->bkqs/dot_general`)."""
    pieces = op.split("/")
    return op if len(pieces) <= parts else ".../" + "/".join(pieces[-parts:])
