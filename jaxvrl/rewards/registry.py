"""The registry of rule-based rewards: each registered by name (Video-R1's in video_r1.py,
VideoChat-R1's in videochat_r1.py, SEED-Bench-R1's in seed_bench_r1.py), chosen by a recipe's
`rl.rewards` and summed with weights (`combine`).

Every reward is called like a TRL reward function::

    reward(completions, solutions, **record_fields) -> list[float]

`completions` are decoded strings (or TRL's chat form `[{"role": ..., "content": ...}]`),
`solutions` the records' solutions, and each record field is a list with one entry per completion
(a scalar is broadcast). A reward never raises: any parsing failure scores 0.0. Work is bounded on
hostile text: texts are cut at `MAX_TEXT_CHARS`, word sequences at `MAX_WORDS`, parsed numbers at
`MAX_NUMBERS`, and every regular expression runs in linear time (no ambiguous quantifiers);
answers are parsed (and spans, intervals and boxes compared) in answer_parsing.py, WER and ROUGE
computed in text_metrics.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxvrl.rewards.answer_parsing import MAX_TEXT_CHARS, extract_answer

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
                record = {key: field_entry(values, i) for key, values in fields.items()}
                return score(as_text(completions[i]), solutions[i], **record)

            return score_each(one, len(completions))

        reward.__name__, reward.__qualname__, reward.__doc__ = name, name, score.__doc__
        return register(name, replace=replace)(reward)

    return decorator


def combine(
    names_and_weights: Mapping[str, float] | Sequence[tuple[str, float]],
    completions: Sequence[Any],
    solutions: Sequence[Any],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    precomputed: Mapping[str, np.ndarray] | None = None,
    **fields: Any,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted sum of named rewards: (total [n], {name: reward [n]}), float32, as a recipe asks.
    `options`: keyword arguments for one reward only, by name (e.g. rl.length_bonus's
    {"length_bonus": {"min_length": 320, ...}}); `precomputed`: rewards already computed on these
    completions, by name (taken as they are, not computed again); `fields` go to every reward."""
    items = list(
        names_and_weights.items() if isinstance(names_and_weights, Mapping) else names_and_weights
    )
    n = len(completions)
    total = np.zeros(n, np.float32)
    per_reward: dict[str, np.ndarray] = {}
    for name, weight in items:
        if precomputed is not None and name in precomputed:
            values = np.asarray(precomputed[name], dtype=np.float32)
        else:
            own = dict((options or {}).get(name, {}))
            values = np.asarray(get(name)(completions, solutions, **fields, **own), np.float32)
        if values.shape != (n,) or not np.all(np.isfinite(values)):
            raise ValueError(f"reward {name!r} must return {n} finite floats, got {values!r}")
        per_reward[name] = values
        total += np.float32(weight) * values
    return total, per_reward


# ----------------------------------------------------------------------------- text helpers


def as_text(value: Any) -> str:
    """Text of a completion or solution (a string or TRL's message list), cut to MAX_TEXT_CHARS."""
    if isinstance(value, str):
        return value[:MAX_TEXT_CHARS]
    if not isinstance(value, list | tuple):
        return ""
    contents = (m.get("content") for m in value[:64] if isinstance(m, Mapping))
    return "".join(c[:MAX_TEXT_CHARS] for c in contents if isinstance(c, str))[:MAX_TEXT_CHARS]


def is_array(value: Any) -> bool:
    """A list, tuple or array of numbers (a solution given as data rather than text)."""
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)


def solution_text(solution: Any) -> str:
    """The solution's answer: the same extraction, falling back to the whole (trusted) text."""
    text = as_text(solution)
    answer = extract_answer(text)
    return text.strip() if answer is None else answer


def field_entry(values: Any, i: int, default: Any = None) -> Any:
    """Entry `i` of a per-completion field; a scalar or string is broadcast to every completion."""
    if values is None:
        return default
    if not is_array(values):
        return values
    return values[i] if i < len(values) else default


def score_each(
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
