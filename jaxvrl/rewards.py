"""Rule-based rewards of Video-R1, VideoChat-R1 and SEED-Bench-R1, registered by name.

Every reward is called like a TRL reward function::

    reward(completions, solutions, **record_fields) -> list[float]

`completions` are decoded strings (or TRL's chat form `[{"role": ..., "content": ...}]`),
`solutions` the records' solutions, and each record field is a list with one entry per completion
(a scalar is broadcast). A reward never raises: any parsing failure scores 0.0. Work is bounded on
hostile text: texts are cut at `MAX_TEXT_CHARS`, word sequences at `MAX_WORDS`, parsed numbers at
`MAX_NUMBERS`, and every regular expression runs in linear time (no ambiguous quantifiers).

This module holds the registry, the format and accuracy rules, the length bonus, the VideoChat-R1
and SEED-Bench-R1 rewards and the task dispatch; answers are parsed (and spans, intervals and
boxes compared) in jaxvrl/answer_parsing.py, WER and ROUGE computed in jaxvrl/text_metrics.py.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxvrl.answer_parsing import (
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
    to_float,
)
from jaxvrl.text_metrics import rouge_f1s, word_error_rate

RewardFn = Callable[..., list[float]]
ScoreFn = Callable[..., float]

_REGISTRY: dict[str, RewardFn] = {}


def register(name: str, *, replace: bool = False) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a TRL-style reward under `name` (a duplicate needs `replace`)."""

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and not replace:
            raise ValueError(f"reward {name!r} is already registered; pass replace=True")
        _REGISTRY[name] = fn
        return fn

    return decorator


def get(name: str) -> RewardFn:
    """The reward registered under `name`."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward {name!r}; registered: {names()}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Names of all registered rewards, sorted."""
    return sorted(_REGISTRY)


def per_completion(name: str, *, replace: bool = False) -> Callable[[ScoreFn], RewardFn]:
    """Registers `score(text, solution, **record) -> float in [0, 1]` as a batch reward `name`.

    The batch reward gives `score` each completion's text, its solution and entry i of every record
    field; a score that raises or is not finite gives 0.0, the others are clipped to [0, 1].
    """

    def decorator(score: ScoreFn) -> RewardFn:
        def reward(
            completions: Sequence[Any], solutions: Sequence[Any], **fields: Any
        ) -> list[float]:
            def one(i: int) -> float:
                record = {key: _item(values, i) for key, values in fields.items()}
                return score(_as_text(completions[i]), solutions[i], **record)

            return _score_each(one, len(completions))

        reward.__name__, reward.__qualname__, reward.__doc__ = name, name, score.__doc__
        return register(name, replace=replace)(reward)

    return decorator


def combine(
    names_and_weights: Mapping[str, float] | Sequence[tuple[str, float]],
    completions: Sequence[Any],
    solutions: Sequence[Any],
    **fields: Any,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted sum of named rewards: (total [n], {name: reward [n]}), float32, as a recipe asks."""
    items = list(
        names_and_weights.items() if isinstance(names_and_weights, Mapping) else names_and_weights
    )
    n = len(completions)
    total = np.zeros(n, np.float32)
    per_reward: dict[str, np.ndarray] = {}
    for name, weight in items:
        values = np.asarray(get(name)(completions, solutions, **fields), dtype=np.float32)
        if values.shape != (n,) or not np.all(np.isfinite(values)):
            raise ValueError(f"reward {name!r} must return {n} finite floats, got {values!r}")
        per_reward[name] = values
        total += np.float32(weight) * values
    return total, per_reward


# ----------------------------------------------------------------------------- text helpers


def _as_text(value: Any) -> str:
    """Text of a completion or solution (a string or TRL's message list), cut to MAX_TEXT_CHARS."""
    if isinstance(value, str):
        return value[:MAX_TEXT_CHARS]
    if not isinstance(value, list | tuple):
        return ""
    contents = (m.get("content") for m in value[:64] if isinstance(m, Mapping))
    return "".join(c[:MAX_TEXT_CHARS] for c in contents if isinstance(c, str))[:MAX_TEXT_CHARS]


def _is_array(value: Any) -> bool:
    """A list, tuple or array of numbers (a solution given as data rather than text)."""
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)


def _solution_text(solution: Any) -> str:
    """The solution's answer: the same extraction, falling back to the whole (trusted) text."""
    text = _as_text(solution)
    answer = extract_answer(text)
    return text.strip() if answer is None else answer


def _item(values: Any, i: int, default: Any = None) -> Any:
    """Entry `i` of a per-completion field; a scalar or string is broadcast to every completion."""
    if values is None:
        return default
    if not _is_array(values):
        return values
    return values[i] if i < len(values) else default


def _score_each(
    score: Callable[[int], float], n: int, low: float = 0.0, high: float = 1.0
) -> list[float]:
    """Scores of items 0..n-1; a failing or non-finite score is 0.0, the rest clip to range."""
    out: list[float] = []
    for i in range(n):
        try:
            value = float(score(i))
        except Exception:  # noqa: BLE001 - a reward never raises: a parsing failure scores 0.
            value = 0.0
        out.append(min(high, max(low, value)) if math.isfinite(value) else 0.0)
    return out


# ----------------------------------------------------------------------------- format


@functools.lru_cache(maxsize=16)
def _junction(close: str, open_: str) -> re.Pattern[str]:
    return re.compile(re.escape(close) + r"\s*+" + re.escape(open_))


def tags_fullmatch(text: str, tags: Sequence[str]) -> bool:
    """Whether `text` fullmatches `<t1>.*?</t1>\\s*<t2>.*?</t2>...` (DOTALL) for tags t1..tn.

    Linear time: the earliest `</tk>\\s*<tk+1>` junction after the previous one is always the
    best choice (an earlier junction also ends earlier, as `</tk>` cannot start inside one), so
    one left-to-right search per junction decides the match without backtracking.
    """
    first, last = f"<{tags[0]}>", f"</{tags[-1]}>"
    if not (text.startswith(first) and text.endswith(last)):
        return False
    pos = len(first)
    for close, open_ in itertools.pairwise(tags):
        junction = _junction(f"</{close}>", f"<{open_}>").search(text, pos)
        if junction is None:
            return False
        pos = junction.end()
    return len(text) - len(last) >= pos


def format_ok(text: str) -> bool:
    """Video-R1's format: fullmatch of `<think>.*?</think>\\s*<answer>.*?</answer>` (DOTALL)."""
    return tags_fullmatch(text, ("think", "answer"))


@per_completion("format")
def format_reward(text: str, solution: Any, **record: Any) -> float:
    """Video-R1 format reward: 1.0 for `<think>...</think><answer>...</answer>`, else 0.0."""
    return float(format_ok(text))


# ----------------------------------------------------------------------------- accuracy


def multiple_choice_accuracy(answer: str, truth: str) -> float:
    """Video-R1 multiple choice: 1.0 when the answer equals the solution's answer."""
    return float(answer.strip() == truth.strip())


def numerical_accuracy(answer: str, truth: str) -> float:
    """Video-R1 numerical: 0 if only one side has '.' or ','; else equal after round(x, 2)."""
    if (("." in answer) or ("," in answer)) != (("." in truth) or ("," in truth)):
        return 0.0
    pred, gt = to_float(answer), to_float(truth)
    if pred is None or gt is None:
        return 0.0
    return float(round(pred, 2) == round(gt, 2))


def ocr_accuracy(answer: str, truth: str) -> float:
    """Video-R1 OCR: 1 - word error rate, clipped to [0, 1]."""
    return min(1.0, max(0.0, 1.0 - word_error_rate(truth, answer)))


def free_form_accuracy(answer: str, truth: str) -> float:
    """Video-R1 free-form: mean of ROUGE-1, ROUGE-2 and ROUGE-L F1, clipped to [0, 1]."""
    return min(1.0, max(0.0, sum(rouge_f1s(truth, answer)) / 3.0))


def regression_accuracy(answer: str, truth: str) -> float:
    """Video-R1 regression: 1 - min(1, (|pred - gt| + 1e-9) / (|gt| + 1e-9))."""
    pred, gt = to_float(answer), to_float(truth)
    if pred is None or gt is None:
        return 0.0
    return 1.0 - min(1.0, (abs(pred - gt) + 1e-9) / (abs(gt) + 1e-9))


ACCURACY_RULES: dict[str, Callable[[str, str], float]] = {
    "multiple choice": multiple_choice_accuracy,
    "numerical": numerical_accuracy,
    "ocr": ocr_accuracy,
    "free-form": free_form_accuracy,
    "regression": regression_accuracy,
}


def _rule_for(problem_type: Any) -> Callable[[str, str], float] | None:
    if not isinstance(problem_type, str):
        return None
    key = problem_type.strip().lower().replace("_", " ")
    return ACCURACY_RULES.get("free-form" if key in ("free form", "freeform") else key)


@per_completion("accuracy")
def accuracy_reward(text: str, solution: Any, problem_type: Any = None, **record: Any) -> float:
    """Video-R1 accuracy, by the `problem_type` field (unknown or missing type scores 0.0)."""
    rule, answer, truth = _rule_for(problem_type), extract_answer(text), _solution_text(solution)
    return rule(answer, truth) if rule is not None and answer and truth else 0.0


# ----------------------------------------------------------------------------- length bonus


@register("length_bonus")
def length_bonus_reward(
    completions: Sequence[Any],
    solutions: Sequence[Any],
    *,
    completion_lengths: Sequence[int] | np.ndarray | None = None,
    group_ids: Sequence[Any] | np.ndarray | None = None,
    accuracies: Sequence[float] | np.ndarray | None = None,
    min_length: int = 320,
    max_length: int = 512,
    bonus: float = 0.2,
    threshold: float = 0.1,
    **fields: Any,
) -> list[float]:
    """Video-R1 length bonus: +bonus for a correct response of min..max tokens, >1 correct in group.

    `completion_lengths` are completion token counts and `group_ids` say which prompt group each
    completion belongs to (both one per completion; missing ones give 0.0 everywhere). "Correct"
    means accuracy > threshold, with `accuracies` given or computed by the "accuracy" reward.
    """
    n = len(completions)
    try:
        if completion_lengths is None or group_ids is None:
            return [0.0] * n
        if accuracies is None:
            accuracies = get("accuracy")(completions, solutions, **fields)
        correct = [float(_item(accuracies, i, 0.0)) > threshold for i in range(n)]
        groups = [_item(group_ids, i) for i in range(n)]
        correct_per_group = Counter(g for g, ok in zip(groups, correct, strict=True) if ok)
    except Exception:  # noqa: BLE001 - a reward never raises.
        return [0.0] * n

    def score(i: int) -> float:
        length = float(_item(completion_lengths, i, -1))
        in_range = min_length <= length <= max_length
        return bonus if correct[i] and in_range and correct_per_group[groups[i]] > 1 else 0.0

    return _score_each(score, n, low=min(0.0, bonus), high=max(0.0, bonus))


# ----------------------------------------------------------------------------- VideoChat-R1
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
    if _is_array(timestamp) and len(timestamp) == 2:
        return float(timestamp[0]), float(timestamp[1])
    if _is_array(solution):
        span = tuple(float(x) for x in list(solution)[:3])
        return span if len(span) == 2 else None  # type: ignore[return-value]
    text = _solution_text(solution)
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
    if not _is_array(glue):
        glue = solution if _is_array(solution) else None
    if glue is None:
        content = first_tag(_as_text(solution), "glue")
        return parse_glue(content) if content is not None else None
    pairs = [tuple(pair) for pair in list(glue)[:MAX_NUMBERS] if _is_array(pair)]
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
    if boxes is None and _is_array(solution):
        boxes = solution
    if _is_array(boxes):
        return [tuple(float(x) for x in box) for box in list(boxes)[:MAX_NUMBERS]]  # type: ignore[misc]
    content = extract_answer(_as_text(solution))
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
    return option_letter(_solution_text(solution))


@per_completion("option_letter")
def option_letter_reward(text: str, solution: Any, **record: Any) -> float:
    """VideoChat-R1 gqa_reward: 1.0 when the first answer block's option letter equals the
    record's (grpo_tasks.py:232-246; index 0 = "A")."""
    content = first_tag(text, "answer")
    pred = option_letter(content) if content else None
    return float(pred is not None and pred == _truth_letter(solution, record))


@per_completion("first_letter")
def first_letter_reward(text: str, solution: Any, **record: Any) -> float:
    """SEED-Bench-R1 accuracy: 1.0 when the first character of the first answer block (stripped)
    equals the first character of the solution's answer (SEED-Bench-R1
    src/open_r1_egoplan/grpo.py:85-99). Its math_verify step before that is left out (on option
    letters it can only agree with this rule or match a letter the rule does not)."""
    content = first_tag(text, "answer")
    answer = content.strip() if content is not None else ""
    solution_text = _as_text(solution)
    truth = first_tag(solution_text, "answer")
    truth = (truth if truth is not None else solution_text).strip()
    return float(bool(answer) and bool(truth) and answer[0] == truth[0])


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
