"""SEED-Bench-R1's accuracy reward: the first letter of the answer."""

from __future__ import annotations

from typing import Any

from jaxvrl.rewards.answer_parsing import first_tag
from jaxvrl.rewards.registry import as_text, per_completion


@per_completion("first_letter")
def first_letter_reward(text: str, solution: Any, **record: Any) -> float:
    """SEED-Bench-R1 accuracy: 1.0 when the first character of the first answer block (stripped)
    equals the first character of the solution's answer (SEED-Bench-R1
    src/open_r1_egoplan/grpo.py:85-99). Its math_verify step before that is left out (on option
    letters it can only agree with this rule or match a letter the rule does not)."""
    content = first_tag(text, "answer")
    answer = content.strip() if content is not None else ""
    solution_text = as_text(solution)
    truth = first_tag(solution_text, "answer")
    truth = (truth if truth is not None else solution_text).strip()
    return float(bool(answer) and bool(truth) and answer[0] == truth[0])
