"""Scoring a rollout (jaxvrl/objectives/scoring.py): rewards computed once per sample."""

from __future__ import annotations

import numpy as np
from test_objectives_dapo import BAD, GOOD, _batch, _rollout

from jaxvrl.objectives import scoring
from jaxvrl.rewards import registry
from jaxvrl.rollout.group_decode import FINISH_STOP


def test_each_samples_accuracy_is_parsed_once_for_the_rewards_the_bonus_and_the_metrics(
    monkeypatch,
):
    # Accuracy enters three places: the recipe's "accuracy" reward, the length bonus (its
    # "correct") and the accuracy metric / T-GRPO contrast. The answers are parsed once.
    accuracy = registry.get("accuracy")
    calls: list[int] = []

    def counted(completions, solutions, **fields):
        calls.append(len(completions))
        return accuracy(completions, solutions, **fields)

    monkeypatch.setitem(registry._REGISTRY, "accuracy", counted)
    rollout = _rollout([FINISH_STOP] * 4, [3, 4, 5, 2], [GOOD, GOOD, BAD, GOOD])
    settings = scoring.RLSettings(
        num_generations=2,
        temporal=False,
        rewards=(("accuracy", 1.0), ("format", 1.0), ("length_bonus", 1.0)),
        # Lengths 3 and 4 in range, both right, in one group: both get the bonus.
        reward_options=(("length_bonus", (("min_length", 3), ("max_length", 4))),),
    )
    r = scoring.rewards(_batch(2), rollout, [], settings)
    assert calls == [4]
    np.testing.assert_array_equal(r.accuracy, [[1.0, 1.0], [0.0, 1.0]])
    np.testing.assert_array_equal(r.per_reward["accuracy"], [1.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(r.per_reward["length_bonus"], [0.2, 0.2, 0.0, 0.0])
    # The same numbers as each reward computed on its own.
    monkeypatch.setitem(registry._REGISTRY, "accuracy", accuracy)
    total, per = registry.combine(
        list(settings.rewards),
        [GOOD, GOOD, BAD, GOOD],
        ["<answer>A</answer>"] * 4,
        options={"length_bonus": {"min_length": 3, "max_length": 4}},
        completion_lengths=[3, 4, 5, 2],
        group_ids=[0, 0, 1, 1],
        problem_type=["multiple choice"] * 4,
    )
    np.testing.assert_allclose(r.total.reshape(-1), total)
    for name, values in per.items():
        np.testing.assert_allclose(r.per_reward[name], values)
