"""VideoChat-R1's rewards: temporal grounding, grounded QA and tracking, each task scored by its
own accuracy and format rewards (`task_*` dispatch by the sample's problem type), and the option
letter of multiple-choice answers."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxvrl.rewards.answer_parsing import (
    MAX_NUMBERS,
    MAX_TEXT_CHARS,
    Box,
    Interval,
    box_iou,
    extract_answer,
    first_tag,
    glue_iou,
    interval_iou,
    is_real,
    parse_box_list,
    parse_boxes,
    parse_glue,
    parse_numbers,
    parse_span,
    parse_timestamp_answer,
    tags_fullmatch,
)
from jaxvrl.rewards.registry import as_text, get, is_array, per_completion, solution_text

# Facts from OpenGVLab/VideoChat-R1 src/open_r1/grpo_tasks.py (cited by line below). Each task has
# three rewards whose sum is the sample's reward: temporal grounding ("tg") tg_iou + tg_format +
# 0, grounded QA ("gqa") gqa_iou (glue) + gqa_format + gqa_reward (answer letter), tracking
# tracking_iou + tracking_format + 0 (grpo_tasks.py:46, 513-523; summed in
# trainer/grpo_tasks_trainer.py:545, 577).


def _extra(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record's ground-truth fields (`extra`: a mapping, or its JSON text)."""
    extra = record.get("extra")
    if isinstance(extra, str):
        try:
            extra = json.loads(extra[:MAX_TEXT_CHARS])
        except ValueError:
            return {}
    return extra if isinstance(extra, Mapping) else {}


def _solution_span(solution: Any, record: Mapping[str, Any]) -> Interval | None:
    """The true span: the record's `timestamp` [s, e] (exact), else the solution's text."""
    timestamp = _extra(record).get("timestamp", record.get("timestamp"))
    if is_array(timestamp) and len(timestamp) == 2:
        return float(timestamp[0]), float(timestamp[1])
    if is_array(solution):
        span = tuple(float(x) for x in list(solution)[:3])
        return span if len(span) == 2 else None  # type: ignore[return-value]
    text = solution_text(solution)
    span = parse_span(text)
    if span is not None:
        return span
    numbers = parse_numbers(text)
    return (numbers[0], numbers[1]) if len(numbers) == 2 else None


@per_completion("temporal_iou")
def temporal_iou_reward(text: str, solution: Any, **record: Any) -> float:
    """VideoChat-R1 tg_iou: IoU of the last answer block's span with the record's [s, e]."""
    pred, truth = parse_timestamp_answer(text), _solution_span(solution, record)
    return 0.0 if pred is None or truth is None else interval_iou(pred, truth)


def _truth_glue(solution: Any, record: Mapping[str, Any]) -> list[Interval] | None:
    """The record's glue intervals (NExT-GQA `glue`); else a solution given as pairs or with a
    `<glue>` block."""
    glue = _extra(record).get("glue", record.get("glue"))
    if not is_array(glue):
        glue = solution if is_array(solution) else None
    if glue is None:
        content = first_tag(as_text(solution), "glue")
        return parse_glue(content) if content is not None else None
    pairs = [tuple(pair) for pair in list(glue)[:MAX_NUMBERS] if is_array(pair)]
    if len(pairs) != len(glue) or not all(len(p) == 2 and all(map(is_real, p)) for p in pairs):
        return None
    return [(float(s), float(e)) for s, e in pairs]


@per_completion("glue_iou")
def glue_iou_reward(text: str, solution: Any, **record: Any) -> float:
    """VideoChat-R1 gqa_iou: merged-interval IoU of the first `<glue>` block's intervals with
    the record's glue (grpo_tasks.py:175-189); no block or an invalid one scores 0.0."""
    content = first_tag(text, "glue")
    pred = parse_glue(content) if content is not None else None
    truth = _truth_glue(solution, record)
    return 0.0 if pred is None or truth is None else glue_iou(pred, truth)


def _solution_boxes(solution: Any, record: Mapping[str, Any]) -> list[Box]:
    boxes = _extra(record).get("boxes", record.get("boxes"))
    if boxes is None and is_array(solution):
        boxes = solution
    if is_array(boxes):
        return [tuple(float(x) for x in box) for box in list(boxes)[:MAX_NUMBERS]]  # type: ignore[misc]
    content = extract_answer(as_text(solution))
    return (parse_box_list(content) or parse_boxes(content) or []) if content else []


@per_completion("tracking_iou")
def tracking_iou_reward(text: str, solution: Any, num_boxes: int = 8, **record: Any) -> float:
    """VideoChat-R1 tracking_iou: mean box IoU of the first answer block, which must be a list
    of 8 boxes, with the record's 8 boxes (grpo_tasks.py:445-465)."""
    content = first_tag(text, "answer")
    pred = parse_box_list(content, num_boxes) if content is not None else None
    truth = _solution_boxes(solution, record)
    if pred is None or len(truth) != num_boxes:
        return 0.0
    if not all(len(box) == 4 and all(map(math.isfinite, box)) for box in truth):
        return 0.0
    return sum(box_iou(p, t) for p, t in zip(pred, truth, strict=True)) / num_boxes


def _stripped_format(text: str, tags: Sequence[str]) -> bool:
    return tags_fullmatch(text.strip(), tags)  # the released formats fullmatch content.strip()


@per_completion("temporal_format")
def temporal_format_reward(text: str, solution: Any, **record: Any) -> float:
    """VideoChat-R1 tg_format: `<think>..</think>\\s*<answer>..</answer>` (grpo_tasks.py:346)."""
    return float(_stripped_format(text, ("think", "answer")))


@per_completion("glue_format")
def glue_format_reward(text: str, solution: Any, **record: Any) -> float:
    """VideoChat-R1 gqa_format: think, answer, glue tags and a valid glue list
    (grpo_tasks.py:251-278)."""
    if not _stripped_format(text, ("think", "answer", "glue")):
        return 0.0
    content = first_tag(text, "glue")
    return float(content is not None and parse_glue(content) is not None)


@per_completion("tracking_format")
def tracking_format_reward(text: str, solution: Any, **record: Any) -> float:
    """VideoChat-R1 tracking_format: think and answer tags, the answer a list of 8 boxes
    (grpo_tasks.py:480-508)."""
    if not _stripped_format(text, ("think", "answer")):
        return 0.0
    content = first_tag(text, "answer")
    return float(content is not None and parse_box_list(content) is not None)


# ----------------------------------------------------------------------------- option letter


_ANSWER_PREFIXES = (
    "the best answer is", "the correct answer is", "the answer is", "the answer",
    "the best option is", "the correct option is", "best answer:", "best option:",
    "correct answer:", "answer:", "option", "choice",
)  # fmt: skip
_OPTION_LETTER = re.compile(r"(?<![A-Za-z])[A-G](?![A-Za-z])")


def option_letter(text: str) -> str | None:
    """The option letter of an answer: the first standalone letter A-G after common answer
    prefixes. VideoChat-R1's `extract_characters_regex` (grpo_tasks.py:208-228) takes the first
    capital A-G anywhere, so it reads "Answer: D" as "A" (a plain bug, fixed here)."""
    text = text.strip()
    for _ in range(4):  # "Answer: Option (B)" carries two prefixes.
        lowered = text.lower()
        prefix = next((p for p in _ANSWER_PREFIXES if lowered.startswith(p)), None)
        if prefix is None:
            break
        text = text[len(prefix) :].lstrip()
    match = _OPTION_LETTER.search(text)
    return match.group() if match else None


def _truth_letter(solution: Any, record: Mapping[str, Any]) -> str | None:
    if isinstance(solution, int | np.integer) and 0 <= solution < 7:
        return "ABCDEFG"[int(solution)]
    answer = _extra(record).get("answer")
    if isinstance(answer, str) and answer.strip():
        return option_letter(answer)
    return option_letter(solution_text(solution))


@per_completion("option_letter")
def option_letter_reward(text: str, solution: Any, **record: Any) -> float:
    """VideoChat-R1 gqa_reward: 1.0 when the first answer block's option letter equals the
    record's (grpo_tasks.py:232-246; index 0 = "A")."""
    content = first_tag(text, "answer")
    pred = option_letter(content) if content else None
    return float(pred is not None and pred == _truth_letter(solution, record))


# ----------------------------------------------------------------------------- task dispatch

# VideoChat-R1 trains one model on several perception tasks, each sample scored by its task's
# rewards (grpo_tasks_trainer.py:545: `self.reward_funcs[inputs[0]['data_type']]`).
TASK_REWARDS: dict[str, dict[str, str]] = {
    "accuracy": {
        "temporal grounding": "temporal_iou",
        "grounded qa": "option_letter",
        "tracking": "tracking_iou",
        "multiple choice": "option_letter",
    },
    "format": {
        "temporal grounding": "temporal_format",
        "grounded qa": "glue_format",
        "tracking": "tracking_format",
        "multiple choice": "temporal_format",
    },
    "glue": {"grounded qa": "glue_iou"},
}


def _task_key(problem_type: Any) -> str:
    return problem_type.strip().lower().replace("_", " ") if isinstance(problem_type, str) else ""


def _task_reward(kind: str, text: str, solution: Any, problem_type: Any, record: dict) -> float:
    name = TASK_REWARDS[kind].get(_task_key(problem_type))
    # One completion: each record field becomes a one-entry list (a list value is not broadcast).
    return get(name)([text], [solution], **{k: [v] for k, v in record.items()})[0] if name else 0.0


@per_completion("task_accuracy")
def task_accuracy_reward(
    text: str, solution: Any, problem_type: Any = None, **record: Any
) -> float:
    """VideoChat-R1: the accuracy reward of the sample's task (`problem_type`), 0.0 if unknown:
    temporal IoU, the answer's option letter, or tracking IoU."""
    return _task_reward("accuracy", text, solution, problem_type, record)


@per_completion("task_format")
def task_format_reward(text: str, solution: Any, problem_type: Any = None, **record: Any) -> float:
    """VideoChat-R1: the format reward of the sample's task (tg_format, gqa_format with a valid
    glue list, tracking_format with a valid list of 8 boxes), 0.0 if unknown."""
    return _task_reward("format", text, solution, problem_type, record)


@per_completion("task_glue")
def task_glue_reward(text: str, solution: Any, problem_type: Any = None, **record: Any) -> float:
    """VideoChat-R1: grounded QA's glue IoU against the record's glue intervals; 0.0 for the
    other tasks (their third reward is the released code's `pad`, always 0)."""
    return _task_reward("glue", text, solution, problem_type, record)
