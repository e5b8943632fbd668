"""From a rollout to a training batch (host side): rewards on the decoded text, group advantages
with the T-GRPO temporal bonus, and the static-shape arrays the jitted GRPO step consumes.

A group is one prompt's G ordered samples. Its T-GRPO companion samples (the same prompt with the
video frames shuffled) only decide the temporal bonus; they are never trained on.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxvrl.objectives import dapo, grpo
from jaxvrl.rewards import registry
from jaxvrl.rollout.group_decode import FINISH_STOP
from jaxvrl.rollout.prompt_batch import Prompts
from jaxvrl.rollout.sampler import Rollout

# Record fields handed to every reward function (TRL style keyword arguments, one per sample).
# `extra` is the record's ground truth as JSON (time spans, glue intervals, boxes).
REWARD_FIELDS = ("problem_type", "data_type", "data_source", "uid", "extra")


@dataclasses.dataclass(frozen=True)
class RLSettings:
    """The RL part of a recipe that shapes rewards and advantages."""

    num_generations: int = 8
    shuffled_generations: int = 4
    temporal: bool = True  # T-GRPO (needs the pipeline's shuffled-frame companions)
    rewards: tuple[tuple[str, float], ...] = (("accuracy", 1.0), ("format", 1.0))
    accuracy_reward: str = "accuracy"
    # Keyword options of single rewards, (reward name, ((option, value), ...)): rl.length_bonus.
    reward_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    advantage: str = "grpo"
    advantage_eps: float = 1e-4
    unbiased_std: bool = True
    temporal_alpha: float = 0.3
    temporal_mu: float = 0.8
    temporal_rule: str = "ratio"
    temporal_threshold: float = 0.1
    # DAPO overlong shaping: a soft penalty over the last `overlong_buffer` tokens before
    # `max_completion_tokens` (0 = off), and no loss on truncated completions.
    max_completion_tokens: int = 768
    overlong_buffer: int = 0
    overlong_factor: float = 1.0
    mask_truncated: bool = False

    @classmethod
    def from_config(cls, rl) -> RLSettings:
        return cls(
            num_generations=int(rl.num_generations),
            shuffled_generations=int(rl.shuffled_generations),
            temporal=rl.algorithm == "tgrpo",
            rewards=tuple((str(n), float(w)) for n, w in rl.rewards),
            accuracy_reward=str(rl.accuracy_reward),
            reward_options=(("length_bonus", tuple(sorted(rl.length_bonus.to_dict().items()))),),
            advantage=str(rl.advantage),
            advantage_eps=float(rl.advantage_eps),
            unbiased_std=bool(rl.unbiased_std),
            temporal_alpha=float(rl.temporal.alpha),
            temporal_mu=float(rl.temporal.mu),
            temporal_rule=str(rl.temporal.rule),
            temporal_threshold=float(rl.temporal.threshold),
            max_completion_tokens=int(rl.max_completion_tokens),
            overlong_buffer=int(rl.overlong.buffer),
            overlong_factor=float(rl.overlong.factor),
            mask_truncated=bool(rl.overlong.mask_truncated),
        )


def prompt_seeds(uids: Sequence[str]) -> np.ndarray:
    """A stable 31-bit seed per example id: a prompt's samples do not depend on its batch."""
    return np.array([zlib.crc32(u.encode()) & 0x7FFFFFFF for u in uids], np.int64)


def rollout_prompts(
    batch: dict[str, Any], settings: RLSettings, vision_config
) -> tuple[Prompts, list[int], list[int]]:
    """The prompts of one pipeline batch for the sampler: every real row with G samples, plus a
    shuffled-frame companion of every video row with G~ samples (T-GRPO).

    Returns (prompts, sample counts per prompt row, the rows that have a companion).
    """
    meta = batch["meta"]
    keep = np.asarray(batch["example_mask"], bool)
    prompts = Prompts.from_batch(batch, seeds=prompt_seeds(meta["uid"]))
    counts = [settings.num_generations if k else 0 for k in keep]
    companion_rows: list[int] = []
    if settings.temporal and batch.get("vision_shuffled") is not None:
        is_video = np.asarray(batch["is_video"], bool)
        companion_rows = [r for r in range(len(keep)) if keep[r] and is_video[r]]
        if companion_rows:
            prompts = prompts.with_companions(
                batch["vision_shuffled"], companion_rows, meta["grid_thw"], vision_config
            )
            counts += [settings.shuffled_generations] * len(companion_rows)
    return prompts, counts, companion_rows


def _fields(meta: dict[str, Any], rows: np.ndarray) -> dict[str, list]:
    return {f: [meta[f][r] for r in rows] for f in REWARD_FIELDS if f in meta}


@dataclasses.dataclass(frozen=True)
class Rewards:
    """One pipeline batch's rewards, per group (a real prompt row's G ordered samples)."""

    total: np.ndarray  # [groups, G] the reward the advantages come from (overlong shaping in)
    per_reward: dict[str, np.ndarray]  # name -> [groups * G]
    accuracy: np.ndarray  # [groups, G]
    shuffled_accuracy: np.ndarray  # [groups, G~] T-GRPO companions' accuracy (0 where none)
    is_video: np.ndarray  # [groups] the group has a shuffled-frame companion
    rows: np.ndarray  # [groups] the prompt rows of the batch the groups belong to
    ordered: np.ndarray  # [groups, G] the ordered samples' indices in the rollout
    lengths: np.ndarray  # [groups * G] completion lengths
    stopped: np.ndarray  # [groups * G] the completion ended with a stop token
    texts: list[str]  # [groups * G]
    uids: list[str]  # [groups * G]


def rewards(
    batch: dict[str, Any], rollout: Rollout, companion_rows: Sequence[int], settings: RLSettings
) -> Rewards:
    """The recipe's rewards (jaxvrl/rewards registry, weighted and summed) of a batch's ordered
    samples, DAPO's overlong penalty, and the accuracy of every sample, companions included."""
    meta = batch["meta"]
    keep = np.asarray(batch["example_mask"], bool)
    p, g = len(keep), settings.num_generations
    s2p = np.asarray(rollout.sample_to_prompt)
    lengths = np.asarray(rollout.lengths)
    texts = list(rollout.texts or ())
    ordered_idx = np.flatnonzero(s2p < p)
    rows = s2p[ordered_idx]
    solutions = [meta["solution"][r] for r in rows]
    ordered_texts = [texts[i] for i in ordered_idx]
    # Each sample's accuracy once: the recipe's reward of that name and the length bonus (whose
    # "correct" is the "accuracy" reward's) take it instead of parsing the answers again.
    fields = _fields(meta, rows)
    accuracy_fn = registry.get(settings.accuracy_reward)
    accuracy = np.asarray(accuracy_fn(ordered_texts, solutions, **fields), np.float32)
    options = {name: dict(values) for name, values in settings.reward_options}
    if settings.accuracy_reward == "accuracy":
        options.setdefault("length_bonus", {})["accuracies"] = accuracy
    total, per_reward = registry.combine(
        list(settings.rewards),
        ordered_texts,
        solutions,
        options=options,
        precomputed={settings.accuracy_reward: accuracy},
        completion_lengths=lengths[ordered_idx].tolist(),
        group_ids=rows.tolist(),
        **fields,
    )
    if settings.overlong_buffer > 0:
        penalty = dapo.soft_overlong_penalty(
            lengths[ordered_idx],
            settings.max_completion_tokens,
            settings.overlong_buffer,
            settings.overlong_factor,
        )
        total = np.asarray(total, np.float32) + penalty
        per_reward["overlong"] = penalty
    valid_rows = np.flatnonzero(keep)
    groups = len(valid_rows)
    # Shuffled-frame companions: [groups, G~] accuracies, zeros where a row has none.
    shuffled = np.zeros((groups, max(settings.shuffled_generations, 1)), np.float32)
    is_video = np.zeros((groups,), bool)
    if companion_rows:
        comp_idx = np.flatnonzero(s2p >= p)
        comp_rows = np.asarray(companion_rows)[s2p[comp_idx] - p]
        comp_acc = np.asarray(
            accuracy_fn(
                [texts[i] for i in comp_idx],
                [meta["solution"][r] for r in comp_rows],
                **_fields(meta, comp_rows),
            ),
            np.float32,
        ).reshape(len(companion_rows), settings.shuffled_generations)
        position = {int(r): i for i, r in enumerate(valid_rows)}
        for j, r in enumerate(companion_rows):
            shuffled[position[r]] = comp_acc[j]
            is_video[position[r]] = True
    finish = np.asarray(rollout.finish_reason)[ordered_idx]
    return Rewards(
        total=np.asarray(total, np.float32).reshape(groups, g),
        per_reward=per_reward,
        accuracy=accuracy.reshape(groups, g),
        shuffled_accuracy=shuffled,
        is_video=is_video,
        rows=valid_rows,
        ordered=ordered_idx.reshape(groups, g),
        lengths=lengths[ordered_idx],
        stopped=finish == FINISH_STOP,
        texts=ordered_texts,
        uids=[meta["uid"][int(r)] for r in rows],
    )


@dataclasses.dataclass(frozen=True)
class Advantages:
    """Group advantages of a batch's rewards: `values` [groups, G], the T-GRPO temporal bonus
    added to the rewards before normalising (`bonus` [groups, G], zeros for GRPO) and the
    T-GRPO diagnostics (`temporal`: metric name -> value)."""

    values: np.ndarray
    bonus: np.ndarray
    temporal: dict[str, float | None]


def advantages(r: Rewards, settings: RLSettings) -> Advantages:
    """GRPO's group-normalised advantages (`rl.advantage` estimator), with T-GRPO's temporal
    bonus when the recipe is T-GRPO."""
    options = {"eps": settings.advantage_eps, "unbiased_std": settings.unbiased_std}
    if settings.advantage != "grpo":
        options = {}
    if not settings.temporal:
        values = grpo.ADVANTAGE_ESTIMATORS.get(settings.advantage)(jnp.asarray(r.total), **options)
        return Advantages(np.asarray(values), np.zeros_like(r.total), {})
    values, tb = grpo.t_grpo_advantages(
        jnp.asarray(r.total),
        jnp.asarray(r.accuracy),
        jnp.asarray(r.shuffled_accuracy),
        jnp.asarray(r.is_video),
        estimator=settings.advantage,
        estimator_options=options,
        alpha=settings.temporal_alpha,
        mu=settings.temporal_mu,
        rule=settings.temporal_rule,
        threshold=settings.temporal_threshold,
    )
    bonus, video = np.asarray(tb.bonus), r.is_video

    def over_videos(x) -> float | None:
        return float(np.asarray(x)[video].mean()) if video.any() else None

    temporal = {
        "temporal/p": over_videos(tb.p),
        "temporal/p_shuffled": over_videos(tb.p_shuffled),
        "temporal/bonus_rate": over_videos(tb.applied),
        "temporal/bonus_mean": float(bonus.mean()),
    }
    return Advantages(np.asarray(values), bonus, temporal)


def scored(batch: dict[str, Any], r: Rewards, a: Advantages) -> dict[str, Any]:
    """A batch's rewards and advantages laid out over its P prompt rows, for training_batch and
    DAPO: `advantages` [P * G] (0 for filler rows), `ordered` [P * G] the ordered samples'
    indices in the rollout (filler rows: -1), `group_std` [P] the std of the rewards each
    group's advantages come from (temporal bonus included; -1 for filler rows), the step's
    `metrics` and its `completions` (one record per ordered sample)."""
    p, g = len(batch["example_mask"]), r.total.shape[1]
    advantages_ = np.zeros((p, g), np.float32)
    advantages_[r.rows] = a.values
    ordered = np.full((p, g), -1, np.int64)
    ordered[r.rows] = r.ordered
    group_std = np.full((p,), -1.0, np.float64)
    group_std[r.rows] = (r.total.astype(np.float64) + a.bonus).std(axis=1)
    metrics = {
        "reward/total": float(r.total.mean()),
        **{f"reward/{name}": float(np.mean(v)) for name, v in r.per_reward.items()},
        "accuracy": float(r.accuracy.mean()),
        "reward/std_within_group": float(r.total.std(axis=1).mean()),
        "completion_length": float(r.lengths.mean()),
        "completion_stopped": float(r.stopped.mean()),
        **a.temporal,
    }
    total, accuracy = r.total.reshape(-1), r.accuracy.reshape(-1)
    completions = [
        {
            "uid": r.uids[k],
            "sample": k % g,
            "text": r.texts[k],
            "reward": float(total[k]),
            "accuracy": float(accuracy[k]),
        }
        for k in range(len(r.texts))
    ]
    return {
        "advantages": advantages_.reshape(-1),
        "ordered": ordered.reshape(-1),
        "group_std": group_std,
        "metrics": metrics,
        "completions": completions,
    }


def training_batch(
    batch: dict[str, Any], rollout: Rollout, scored: dict[str, Any], mask_truncated: bool = False
) -> dict[str, np.ndarray]:
    """The GRPO step's arrays (jaxvrl/steps.py layout) for one pipeline batch: the P prompts with
    their original frames, and P * G ordered completions (filler rows: fully masked). With
    `mask_truncated` (DAPO), completions cut off by the length limit get no loss either."""
    ordered = scored["ordered"]
    real = ordered >= 0
    take = np.where(real, ordered, 0)
    if mask_truncated:
        stopped = np.asarray(rollout.finish_reason)[take] == FINISH_STOP
        real = real & stopped
    tokens = np.asarray(rollout.tokens)[take]
    mask = np.asarray(rollout.mask)[take] & real[:, None]
    logp = np.asarray(rollout.logprobs)[take] * mask
    g = len(ordered) // len(batch["example_mask"])
    return {
        "prompt_ids": np.asarray(batch["input_ids"], np.int32),
        "prompt_mask": np.asarray(batch["attention_mask"]).astype(bool),
        "prompt_positions": np.asarray(batch["positions"], np.int32),
        "rope_deltas": np.asarray(batch["rope_deltas"], np.int32),
        "vision": batch.get("vision"),
        "sample_to_prompt": np.repeat(np.arange(len(batch["example_mask"])), g).astype(np.int32),
        "completion_ids": tokens.astype(np.int32),
        "completion_mask": mask,
        "advantages": scored["advantages"].astype(np.float32),
        "sampler_logp": logp.astype(np.float32),
    }
