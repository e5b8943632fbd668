"""Record files of the three recipe families, read into one `Example` type.

Formats (DESIGN.md section 4):

- `video_r1`: Video-R1 JSON list (`problem_id, problem, data_type, problem_type, options,
  solution, path, data_source`, SFT rows add `process`).
- `charades_sta`: VideoChat-R1 `{vid: {duration, timestamps, sentences}}`, one example per
  sentence (temporal grounding; the sentence lower-cased without its full stop, as there).
- `nextgqa`: VideoChat-R1 NExT-GQA list `{id, video, question, options, duration, glue, answer}`
  (grounded QA).
- `got10k`: VideoChat-R1 GOT-10k list `{path, object, gt}` (tracking over 7 frames, padded to 8;
  the first box goes into the prompt as the initial box).
- `seed_bench_r1`: SEED-Bench-R1 JSONL; a progress clip (only when `task_progress_metadata` is
  non-empty) followed by the current-observation image; training rows with `negative_answers`
  get 3 sampled negatives shuffled with the answer.

A malformed record becomes a `RecordError` (file, index, reason) instead of an `Example`; the
pipeline skips and counts it, or raises it in strict mode.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

FORMATS = ("video_r1", "charades_sta", "nextgqa", "got10k", "seed_bench_r1")


@dataclasses.dataclass(frozen=True)
class Media:
    """One vision item of a prompt. kind: "video" (a file, or a frame folder), "image".
    path: as written in the record (relative paths start at data.media_root). num_frames: take
    exactly this many frames of a frame folder (first, evenly spaced, last); 0 = sample by fps."""

    kind: str
    path: str
    num_frames: int = 0


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt with its answer, whatever file it came from.

    problem: the question text as in the record; options: answer options, each already labelled
    ("A. ...", "(A) ..."); solution: the reference answer in `<answer>...</answer>` form;
    media: vision items in prompt order; extra: family-specific ground truth (time spans, boxes).
    """

    uid: str
    source: str
    data_type: str  # "image" or "video": "video" when any item is a video
    problem_type: str
    problem: str
    options: tuple[str, ...]
    solution: str
    media: tuple[Media, ...]
    process: str = ""
    data_source: str = ""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    origin: str = ""  # "file:index", for messages


@dataclasses.dataclass(frozen=True)
class RecordError:
    """A record that could not be read. origin: "file:index"."""

    origin: str
    reason: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class RecordOptions:
    """Per-family settings (the config's `data.record_options`)."""

    seed: int = 0
    seed_bench_negatives: int = 3
    seed_bench_video: str = "videos/{video_source}/{video_basename}"
    seed_bench_image: str = "images/{video_source}/{current_observation_basename}"
    charades_video: str = "{vid}.mp4"
    nextgqa_video: str = "{video}.mp4"
    got10k_frames: int = 7

    @classmethod
    def from_config(cls, data) -> RecordOptions:
        opts = dict(data.get("record_options", {}) or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(opts) - names
        if unknown:
            raise ValueError(
                f"unknown data.record_options {sorted(unknown)}; known: {sorted(names)}"
            )
        return cls(seed=int(data.get("seed") or 0), **opts)


def problem_type_key(problem_type: str) -> str:
    """Config key of a problem type: "multiple choice" -> "multiple_choice", "OCR" -> "ocr"."""
    return re.sub(r"[\s\-]+", "_", str(problem_type).strip().lower())


# ------------------------------------------------------------------------------------------------
# Small checks that turn bad fields into ValueError with the field's name.


def _str(record: Mapping[str, Any], key: str, *, allow_empty: bool = False) -> str:
    if key not in record:
        raise ValueError(f"missing field {key!r}")
    value = record[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ValueError(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def _list(record: Mapping[str, Any], key: str) -> list:
    value = record.get(key)
    if not isinstance(value, list):
        raise ValueError(f"field {key!r} must be a list, got {value!r}")
    return value


def _span(value: Any, what: str) -> list[float]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) for v in value)
    ):
        raise ValueError(f"{what} must be [start, end] seconds, got {value!r}")
    return [float(value[0]), float(value[1])]


def _letter(answer: str) -> str:
    match = re.search(r"[A-Z]", answer)
    if not match:
        raise ValueError(f"answer {answer!r} holds no option letter")
    return match.group(0)


def _rng(options: RecordOptions, key: str) -> np.random.Generator:
    return np.random.default_rng([options.seed, zlib.crc32(key.encode())])


# ------------------------------------------------------------------------------------------------
# One converter per family: raw record -> Example (or ValueError).


def _video_r1(raw: Mapping[str, Any], origin: str, _: RecordOptions) -> list[Example]:
    data_type = _str(raw, "data_type")
    if data_type not in ("image", "video"):
        raise ValueError(f"data_type must be 'image' or 'video', got {data_type!r}")
    problem_type = _str(raw, "problem_type")
    options = raw.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise ValueError(f"field 'options' must be a list of strings, got {options!r}")
    if problem_type_key(problem_type) == "multiple_choice" and not options:
        raise ValueError("a multiple choice record needs options")
    process = raw.get("process") or ""
    if not isinstance(process, str):
        raise ValueError(f"field 'process' must be a string, got {process!r}")
    return [
        Example(
            uid=str(raw.get("problem_id", origin)),
            source="video_r1",
            data_type=data_type,
            problem_type=problem_type,
            problem=_str(raw, "problem"),
            options=tuple(options),
            solution=_str(raw, "solution"),
            media=(Media(data_type, _str(raw, "path")),),
            process=process,
            data_source=str(raw.get("data_source", "")),
            origin=origin,
        )
    ]


def _charades_sta(vid: str, raw: Mapping[str, Any], origin: str, o: RecordOptions) -> list[Example]:
    duration = raw.get("duration")
    if not isinstance(duration, int | float) or duration <= 0:
        raise ValueError(f"field 'duration' must be a positive number, got {duration!r}")
    spans = _list(raw, "timestamps")
    sentences = _list(raw, "sentences")
    if len(spans) != len(sentences) or not sentences:
        raise ValueError(f"{len(spans)} timestamps for {len(sentences)} sentences")
    out = []
    for i, (span, sentence) in enumerate(zip(spans, sentences, strict=True)):
        start, end = _span(span, f"timestamps[{i}]")
        if not isinstance(sentence, str) or not sentence.strip():
            raise ValueError(f"sentences[{i}] must be a non-empty string")
        out.append(
            Example(
                uid=f"{vid}#{i}",
                source="charades_sta",
                data_type="video",
                problem_type="temporal grounding",
                problem=charades_event(sentence),
                options=(),
                solution=f"<answer>{start:.2f} to {end:.2f}</answer>",
                media=(Media("video", o.charades_video.format(vid=vid)),),
                data_source="charades_sta",
                extra={"duration": float(duration), "timestamp": [start, end]},
                origin=f"{origin}#{i}",
            )
        )
    return out


def charades_event(sentence: str) -> str:
    """A Charades-STA sentence as VideoChat-R1 puts it in the prompt: stripped, lower-cased, one
    trailing full stop dropped (VideoChat-R1 src/open_r1/grpo_tasks.py:564-566)."""
    sentence = sentence.strip().lower()
    return sentence[:-1] if sentence.endswith(".") else sentence


def _nextgqa(raw: Mapping[str, Any], origin: str, o: RecordOptions) -> list[Example]:
    video = _str(raw, "video")
    if not os.path.splitext(video)[1]:
        video = o.nextgqa_video.format(video=video)
    options = _list(raw, "options")
    if not options or not all(isinstance(x, str) for x in options):
        raise ValueError("field 'options' must be a non-empty list of strings")
    glue = [_span(s, "glue span") for s in _list(raw, "glue")]
    answer = _letter(_str(raw, "answer"))
    duration = raw.get("duration")
    if not isinstance(duration, int | float) or duration <= 0:
        raise ValueError(f"field 'duration' must be a positive number, got {duration!r}")
    return [
        Example(
            uid=str(raw.get("id", origin)),
            source="nextgqa",
            data_type="video",
            problem_type="grounded qa",
            problem=_str(raw, "question"),
            options=tuple(options),
            solution=f"<answer>{answer}</answer>",
            media=(Media("video", video),),
            data_source="nextgqa",
            extra={"duration": float(duration), "glue": glue, "answer": answer},
            origin=origin,
        )
    ]


def _got10k(raw: Mapping[str, Any], origin: str, o: RecordOptions) -> list[Example]:
    boxes = _list(raw, "gt")
    if len(boxes) != 8 or not all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) for v in b)
        for b in boxes
    ):
        raise ValueError("field 'gt' must hold 8 boxes [x0, y0, x1, y1]")
    path = _str(raw, "path")
    return [
        Example(
            uid=str(raw.get("id", path)),
            source="got10k",
            data_type="video",
            problem_type="tracking",
            problem=_str(raw, "object"),
            options=(),
            solution="<answer>" + json.dumps([[float(v) for v in b] for b in boxes]) + "</answer>",
            media=(Media("video", path, num_frames=o.got10k_frames),),
            data_source="got10k",
            # start: the first box as written (VideoChat-R1 prompts with str(gt[0]),
            # grpo_tasks.py:626 and grpo_tasks_trainer.py:427).
            extra={"boxes": [[float(v) for v in b] for b in boxes], "start": list(boxes[0])},
            origin=origin,
        )
    ]


def _seed_bench_r1(raw: Mapping[str, Any], origin: str, o: RecordOptions) -> list[Example]:
    uid = _str(raw, "sample_id")
    question = _str(raw, "question")
    if "negative_answers" in raw:
        answer = _str(raw, "answer")
        negatives = [n for n in _list(raw, "negative_answers") if isinstance(n, str) and n.strip()]
        if len(negatives) < o.seed_bench_negatives:
            raise ValueError(f"{len(negatives)} negative answers, {o.seed_bench_negatives} needed")
        rng = _rng(o, uid)
        picked = [negatives[i] for i in rng.choice(len(negatives), o.seed_bench_negatives, False)]
        choices = [answer, *picked]
        choices = [choices[i] for i in rng.permutation(len(choices))]
        golden = chr(ord("A") + choices.index(answer))
    else:
        choices = [_str(raw, f"choice_{c}") for c in "abcd"]
        golden = _letter(_str(raw, "golden_choice_idx"))
        if golden not in "ABCD":
            raise ValueError(f"golden_choice_idx {golden!r} is not one of A-D")
    progress = raw.get("task_progress_metadata") or []
    if not isinstance(progress, list):
        raise ValueError("field 'task_progress_metadata' must be a list")
    fields = {k: v for k, v in raw.items() if isinstance(v, str)}
    media = []
    if progress:
        media.append(Media("video", o.seed_bench_video.format(**fields)))
    _str(raw, "current_observation_basename")
    media.append(Media("image", o.seed_bench_image.format(**fields)))
    return [
        Example(
            uid=uid,
            source="seed_bench_r1",
            data_type="video" if progress else "image",
            problem_type="multiple choice",
            problem=question,
            options=tuple(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices)),
            solution=f"<answer>{golden}</answer>",
            media=tuple(media),
            data_source="seed_bench_r1",
            extra={
                "task_goal": str(raw.get("task_goal", "")),
                "task_level": str(raw.get("task_level", "")),
            },
            origin=origin,
        )
    ]


# ------------------------------------------------------------------------------------------------
# Files.


def split_format(spec: str) -> tuple[str | None, str]:
    """'charades_sta:/data/x.json' -> ("charades_sta", "/data/x.json"); a path -> (None, path)."""
    head, sep, tail = spec.partition(":")
    if sep and head in FORMATS:
        return head, tail
    return None, spec


def _load_file(path: str) -> tuple[Any, list[RecordError]]:
    """JSON (a list or a dict) or JSONL (one object per line; bad lines become RecordErrors)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        rows, errors = [], []
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                errors.append(RecordError(f"{path}:{i}", f"malformed JSON line ({e.msg})"))
        return rows, errors
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from e
    if isinstance(data, list):
        return list(enumerate(data)), []
    if isinstance(data, dict):
        return list(data.items()), []
    raise ValueError(f"{path}: expected a JSON list or object, got {type(data).__name__}")


def detect_format(rows: Sequence[tuple[Any, Any]], path: str) -> str:
    """The family of a file from the keys of its first well-formed record."""
    for key, raw in rows:
        if not isinstance(raw, dict):
            continue
        keys = set(raw)
        if isinstance(key, str) and {"timestamps", "sentences"} <= keys:
            return "charades_sta"
        if "sample_id" in keys and "current_observation_basename" in keys:
            return "seed_bench_r1"
        if {"problem", "data_type"} <= keys:
            return "video_r1"
        if {"video", "question", "glue"} <= keys:
            return "nextgqa"
        if {"path", "object", "gt"} <= keys:
            return "got10k"
    raise ValueError(
        f"{path}: cannot tell the record format; prefix the path with one of {FORMATS}"
    )


def read_records(
    spec: str, options: RecordOptions | None = None
) -> Iterator[Example | RecordError]:
    """Every record of one file ("path" or "format:path") as Examples, in file order; a record
    that cannot be read yields a RecordError instead. A missing or unparseable file raises."""
    options = options or RecordOptions()
    fmt, path = split_format(spec)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"record file {path} does not exist")
    rows, errors = _load_file(path)
    yield from errors
    fmt = fmt or detect_format(rows, path)
    for key, raw in rows:
        origin = f"{path}:{key}"
        try:
            if not isinstance(raw, dict):
                raise ValueError(f"record is a {type(raw).__name__}, not an object")
            if fmt == "charades_sta":
                yield from _charades_sta(str(key), raw, origin, options)
            else:
                convert = {
                    "video_r1": _video_r1,
                    "nextgqa": _nextgqa,
                    "got10k": _got10k,
                    "seed_bench_r1": _seed_bench_r1,
                }[fmt]
                yield from convert(raw, origin, options)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            yield RecordError(origin, f"malformed {fmt} record: {e}")


def split_files(train_files: str | Sequence[str]) -> list[str]:
    """`data.train_files` as a list: a comma-separated string or a sequence of strings."""
    if isinstance(train_files, str):
        return [f.strip() for f in train_files.split(",") if f.strip()]
    return [str(f) for f in train_files]


def load_examples(
    train_files: str | Sequence[str],
    options: RecordOptions | None = None,
    known_problem_types: Sequence[str] | None = None,
) -> tuple[list[Example], list[RecordError]]:
    """All examples of all files in order, and the records skipped (malformed, or a problem type
    outside `known_problem_types`, given as config keys)."""
    examples: list[Example] = []
    errors: list[RecordError] = []
    known = None if known_problem_types is None else set(known_problem_types)
    files = split_files(train_files)
    if not files:
        raise ValueError("no record files: set data.train_files")
    for spec in files:
        for item in read_records(spec, options):
            if isinstance(item, RecordError):
                errors.append(item)
            elif known is not None and problem_type_key(item.problem_type) not in known:
                errors.append(
                    RecordError(item.origin, f"unknown problem type {item.problem_type!r}")
                )
            else:
                examples.append(item)
    return examples, errors


def resolve_path(path: str, media_root: str) -> str:
    """A record's media path made absolute against the media root ("./a/b.mp4" works)."""
    if os.path.isabs(path) or not media_root:
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(media_root, path))
