"""Video-R1's rewards: the `<think>..</think><answer>..</answer>` format, accuracy by problem
type (multiple choice, numerical, OCR, free-form, regression) and the length bonus."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxvrl.rewards.answer_parsing import extract_answer, tags_fullmatch, to_float
from jaxvrl.rewards.registry import (
    field_entry,
    get,
    per_completion,
    register,
    score_each,
    solution_text,
)
from jaxvrl.rewards.text_metrics import rouge_f1s, word_error_rate


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
    rule, answer, truth = _rule_for(problem_type), extract_answer(text), solution_text(solution)
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
        correct = [float(field_entry(accuracies, i, 0.0)) > threshold for i in range(n)]
        groups = [field_entry(group_ids, i) for i in range(n)]
        correct_per_group = Counter(g for g, ok in zip(groups, correct, strict=True) if ok)
    except Exception:  # noqa: BLE001 - a reward never raises.
        return [0.0] * n

    def score(i: int) -> float:
        length = float(field_entry(completion_lengths, i, -1))
        in_range = min_length <= length <= max_length
        return bonus if correct[i] and in_range and correct_per_group[groups[i]] > 1 else 0.0

    return score_each(score, n, low=min(0.0, bonus), high=max(0.0, bonus))
