"""Benchmark files read for their ground truth: one `Reference` per example, keyed as the data
pipeline names its examples (jaxvrl/data/records.py `origin`), so generated answers and ground
truth meet without the pipeline carrying benchmark fields.

A record that cannot be read is skipped and counted; a file whose first record lacks a field its
format needs is the wrong file, and stops with an error that names the file and the field.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxvrl.data.records import problem_type_key

# Fields where a record names its sub-task, first present wins (the benchmarks' own exports use
# different names; VSI-Bench's is question_type).
TASK_FIELDS = ("question_type", "task", "task_type", "sub_task", "subtask", "category", "type")


@dataclasses.dataclass(frozen=True)
class Reference:
    """One example's ground truth. id: the record's own id (or its index / line number);
    key: "path:index" as the pipeline's `meta["origin"]`; group: its task or level ("" = none)."""

    id: str
    key: str
    truth: Mapping[str, Any]
    group: str = ""


class FormatError(ValueError):
    """A benchmark file in the wrong format (the message names the file and the field)."""


def _answer_text(solution: str) -> str:
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", solution, re.DOTALL)
    return match.group(1).strip() if match else solution.strip()


def _task(raw: Mapping[str, Any]) -> str:
    for field in TASK_FIELDS:
        value = raw.get(field)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"field {what!r} must be a number, got {value!r}")
    return float(value)


def _span(value: Any, what: str) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{what} must be [start, end], got {value!r}")
    return [_number(value[0], what), _number(value[1], what)]


def _video_r1(key: Any, raw: Mapping[str, Any], path: str) -> list[Reference]:
    problem_type = problem_type_key(str(raw["problem_type"]))
    solution = raw["solution"]
    if not isinstance(solution, str) or not solution.strip():
        raise ValueError(f"field 'solution' must be a non-empty string, got {solution!r}")
    return [
        Reference(
            id=str(raw.get("problem_id", key)),
            key=f"{path}:{key}",
            truth={"answer": _answer_text(solution), "problem_type": problem_type},
            group=_task(raw),
        )
    ]


def _charades(key: Any, raw: Mapping[str, Any], path: str) -> list[Reference]:
    spans, sentences = raw["timestamps"], raw["sentences"]
    if not isinstance(spans, list) or not isinstance(sentences, list):
        raise ValueError("fields 'timestamps' and 'sentences' must be lists")
    if len(spans) != len(sentences):
        raise ValueError(f"{len(spans)} timestamps for {len(sentences)} sentences")
    _number(raw["duration"], "duration")
    return [
        Reference(id=f"{key}#{i}", key=f"{path}:{key}#{i}", truth={"span": _span(s, "timestamps")})
        for i, s in enumerate(spans)
    ]


def _nextgqa(key: Any, raw: Mapping[str, Any], path: str) -> list[Reference]:
    glue = raw["glue"]
    if not isinstance(glue, list):
        raise ValueError(f"field 'glue' must be a list of spans, got {glue!r}")
    letter = re.search(r"[ABCDEFG]", str(raw["answer"]))
    if not letter:
        raise ValueError(f"field 'answer' holds no option letter: {raw['answer']!r}")
    return [
        Reference(
            id=str(raw.get("id", key)),
            key=f"{path}:{key}",
            truth={"letter": letter.group(0), "glue": [_span(s, "glue") for s in glue]},
            group=str(raw.get("type", "") or ""),
        )
    ]


def _got10k(key: Any, raw: Mapping[str, Any], path: str) -> list[Reference]:
    boxes = raw["gt"]
    if not isinstance(boxes, list) or not boxes:
        raise ValueError(f"field 'gt' must be a list of boxes, got {boxes!r}")
    parsed = []
    for box in boxes:
        if not isinstance(box, list | tuple) or len(box) != 4:
            raise ValueError(f"field 'gt' holds {box!r}, not [x0, y0, x1, y1]")
        parsed.append([_number(v, "gt") for v in box])
    return [
        Reference(
            id=str(raw.get("id", key)),
            key=f"{path}:{key}",
            truth={"boxes": parsed, "video": str(raw["path"])},
        )
    ]


def _seed_bench_r1(key: Any, raw: Mapping[str, Any], path: str) -> list[Reference]:
    golden = str(raw["golden_choice_idx"]).strip()
    if not golden or golden[0] not in "ABCD":
        raise ValueError(f"field 'golden_choice_idx' must be A-D, got {golden!r}")
    level = str(raw.get("task_level", "") or "")
    if not level:
        match = re.search(r"L([123])", os.path.basename(path))
        level = f"L{match.group(1)}" if match else ""
    return [
        Reference(
            id=str(raw["sample_id"]), key=f"{path}:{key}", truth={"letter": golden[0]}, group=level
        )
    ]


@dataclasses.dataclass(frozen=True)
class RecordFormat:
    name: str
    fields: tuple[str, ...]  # every record needs these
    describe: str
    convert: Callable[[Any, Mapping[str, Any], str], list[Reference]]


FORMATS = {
    f.name: f
    for f in (
        RecordFormat(
            "video_r1",
            ("problem", "problem_type", "solution", "path", "data_type"),
            "Video-R1 evaluation JSON list",
            _video_r1,
        ),
        RecordFormat(
            "charades_sta",
            ("duration", "timestamps", "sentences"),
            "VideoChat-R1 grounding JSON object {video id: {duration, timestamps, sentences}}",
            _charades,
        ),
        RecordFormat(
            "nextgqa",
            ("video", "question", "options", "glue", "answer", "duration"),
            "VideoChat-R1 NExT-GQA JSON list",
            _nextgqa,
        ),
        RecordFormat("got10k", ("path", "object", "gt"), "VideoChat-R1 GOT-10k JSON list", _got10k),
        RecordFormat(
            "seed_bench_r1",
            ("sample_id", "question", "golden_choice_idx", "current_observation_basename"),
            "SEED-Bench-R1 JSONL",
            _seed_bench_r1,
        ),
    )
}


def load_rows(path: str) -> tuple[list[tuple[Any, Any]], int]:
    """(key, record) pairs of a JSON list (key: index), JSON object (key: its key) or JSONL file
    (key: line index, as jaxvrl/data/records.py counts), and the number of malformed JSONL lines."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        rows, bad = [], 0
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError:
                bad += 1
        return rows, bad
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not a JSON file ({e})") from e
    if isinstance(data, list):
        return list(enumerate(data)), 0
    if isinstance(data, dict):
        return list(data.items()), 0
    raise FormatError(f"{path}: expected a JSON list or object, got {type(data).__name__}")


def read_references(
    paths: Sequence[str], record_format: str, benchmark: str
) -> tuple[list[Reference], collections.Counter]:
    """Every readable example of the files, in file order, and the skips by category
    (malformed_record, duplicate_id). Raises FormatError when a file's first record lacks one of
    the format's fields (the wrong file for this benchmark)."""
    fmt = FORMATS[record_format]
    out: list[Reference] = []
    skipped: collections.Counter = collections.Counter()
    seen: set[str] = set()
    for path in paths:
        rows, bad = load_rows(path)
        skipped["malformed_record"] += bad
        first = next((raw for _, raw in rows if isinstance(raw, dict)), None)
        if first is None:
            raise FormatError(f"{path}: no JSON object records ({fmt.describe} expected)")
        for field in fmt.fields:
            if field not in first:
                raise FormatError(
                    f"{path}: the first record has no field {field!r}; benchmark {benchmark} "
                    f"reads the {record_format} format ({fmt.describe})"
                )
        for key, raw in rows:
            try:
                if not isinstance(raw, dict):
                    raise ValueError(f"record is a {type(raw).__name__}")
                missing = [f for f in fmt.fields if f not in raw]
                if missing:
                    raise ValueError(f"missing field {missing[0]!r}")
                refs = fmt.convert(key, raw, path)
            except (ValueError, TypeError, KeyError):
                skipped["malformed_record"] += 1
                continue
            for ref in refs:
                if ref.id in seen:
                    skipped["duplicate_id"] += 1
                    continue
                seen.add(ref.id)
                out.append(ref)
    return out, skipped
