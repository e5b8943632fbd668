"""GRPO, T-GRPO, Dr.GRPO and DAPO math as small pure JAX functions, registered by name.

Three registries let a config pick the math by string: `ADVANTAGE_ESTIMATORS` ("grpo",
"dr_grpo"), `POLICY_LOSSES` ("grpo") and `AGGREGATIONS` ("seq_mean_token_mean", "token_mean",
"seq_mean_token_sum_norm", "token_sum_norm"). Losses return a weighted SUM and its DENOMINATOR:
summing both over micro-batches and dividing once gives exactly the full-batch loss.

Shapes: `num_groups` prompts with `G` ordered responses each; per-token arrays are
[batch, completion_len] with a mask of valid completion tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

import jax
import jax.numpy as jnp

F = TypeVar("F", bound=Callable[..., Any])
Pair = tuple[jax.Array, jax.Array]


class Registry(Generic[F]):
    """Functions of one kind (advantage estimator, policy loss, aggregation mode) by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fns: dict[str, F] = {}

    def register(self, name: str, *, replace: bool = False) -> Callable[[F], F]:
        """Decorator registering a function under `name` (a duplicate needs `replace`)."""

        def decorator(fn: F) -> F:
            if name in self._fns and not replace:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass replace=True")
            self._fns[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> F:
        """The function registered under `name`."""
        if name not in self._fns:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {self.names()}")
        return self._fns[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._fns)


ADVANTAGE_ESTIMATORS: Registry[Callable[..., jax.Array]] = Registry("advantage estimator")
POLICY_LOSSES: Registry[Callable[..., LossOutput]] = Registry("policy loss")
AGGREGATIONS: Registry[Callable[..., Pair]] = Registry("aggregation mode")


# ----------------------------------------------------------------------------- advantages


def _grouped(rewards: jax.Array, group_size: int | None) -> jax.Array:
    """Rewards as [num_groups, G]: already 2-D, or flat [num_groups * G] split by `group_size`."""
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim == 2 and group_size in (None, rewards.shape[1]):
        return rewards
    if rewards.ndim == 1 and group_size is not None and rewards.shape[0] % group_size == 0:
        return rewards.reshape(-1, group_size)
    raise ValueError(f"rewards {rewards.shape} are not [num_groups, G] or flat with G={group_size}")


@ADVANTAGE_ESTIMATORS.register("grpo")
def group_advantages(
    rewards: jax.Array,
    group_size: int | None = None,
    *,
    eps: float = 1e-4,
    unbiased_std: bool = True,
) -> jax.Array:
    """GRPO (DeepSeekMath; Video-R1): A = (r - group mean) / (group std + eps), shape of `rewards`.

    `rewards` is [num_groups, G], or flat [num_groups * G] with `group_size`. Video-R1 uses the
    unbiased std; a group of one response has std 0.
    """
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(axis=-1, keepdims=True)
    dof = grouped.shape[-1] - (1 if unbiased_std else 0)
    if dof > 0:
        std = jnp.sqrt(jnp.sum(centred**2, axis=-1, keepdims=True) / dof)
    else:
        std = jnp.zeros_like(centred[..., :1])
    return (centred / (std + eps)).reshape(jnp.shape(rewards))


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(rewards: jax.Array, group_size: int | None = None) -> jax.Array:
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A = r - group mean."""
    grouped = _grouped(rewards, group_size)
    return (grouped - grouped.mean(axis=-1, keepdims=True)).reshape(jnp.shape(rewards))


# ----------------------------------------------------------------------------- T-GRPO


TEMPORAL_RULES: dict[str, Callable[[jax.Array, jax.Array, float], jax.Array]] = {
    "ratio": lambda p, p_shuffled, mu: p >= mu * p_shuffled,  # Video-R1's released code.
    "strict": lambda p, p_shuffled, mu: p > p_shuffled,  # Video-R1 paper, eq. for r_t.
}


class TemporalBonus(NamedTuple):
    """T-GRPO bonus per ordered response and the per-group decision behind it."""

    bonus: jax.Array  # [num_groups, G] added to the ordered responses' rewards.
    p: jax.Array  # [num_groups] mean accuracy of the ordered responses.
    p_shuffled: jax.Array  # [num_groups] mean accuracy of the shuffled-frame responses.
    applied: jax.Array  # [num_groups] bool: the group is video and passed the rule.


def temporal_bonus(
    accuracies: jax.Array,
    shuffled_accuracies: jax.Array,
    is_video: jax.Array,
    *,
    alpha: float = 0.3,
    mu: float = 0.8,
    rule: str = "ratio",
    threshold: float = 0.1,
) -> TemporalBonus:
    """T-GRPO (Video-R1): +alpha to ordered responses with accuracy > threshold if p beats p~.

    Decided per group, never across groups. `accuracies` [num_groups, G] are the ordered
    responses', `shuffled_accuracies` [num_groups, G_shuffled] those on shuffled frames (any values
    for image groups), `is_video` [num_groups] bool. Shuffled responses only inform the decision:
    they get no bonus and no advantage of their own.
    """
    if rule not in TEMPORAL_RULES:
        raise KeyError(f"unknown temporal rule {rule!r}; known: {sorted(TEMPORAL_RULES)}")
    accuracies = jnp.asarray(accuracies, jnp.float32)
    shuffled_accuracies = jnp.asarray(shuffled_accuracies, jnp.float32)
    p = accuracies.mean(axis=-1)
    if shuffled_accuracies.shape[-1] > 0:
        p_shuffled = shuffled_accuracies.mean(axis=-1)
    else:
        p_shuffled = jnp.zeros_like(p)
    applied = jnp.asarray(is_video, bool) & TEMPORAL_RULES[rule](p, p_shuffled, mu)
    bonus = jnp.where(applied[:, None] & (accuracies > threshold), jnp.float32(alpha), 0.0)
    return TemporalBonus(bonus, p, p_shuffled, applied)


def t_grpo_advantages(
    rewards: jax.Array,
    accuracies: jax.Array,
    shuffled_accuracies: jax.Array,
    is_video: jax.Array,
    *,
    estimator: str = "grpo",
    estimator_options: dict[str, Any] | None = None,
    **bonus_options: Any,
) -> tuple[jax.Array, TemporalBonus]:
    """T-GRPO (Video-R1): group advantages [num_groups, G] of the ordered rewards plus the bonus."""
    tb = temporal_bonus(accuracies, shuffled_accuracies, is_video, **bonus_options)
    estimate = ADVANTAGE_ESTIMATORS.get(estimator)
    advantages = estimate(jnp.asarray(rewards, jnp.float32) + tb.bonus, **(estimator_options or {}))
    return advantages, tb


# ----------------------------------------------------------------------------- aggregation


def _sequence_counts(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Tokens per sequence [batch] and the number of sequences with at least one token."""
    tokens = mask.sum(axis=-1)
    return tokens, (tokens > 0).sum().astype(jnp.float32)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    values: jax.Array, mask: jax.Array, *, norm_constant: float | None = None
) -> Pair:
    """GRPO / Video-R1: mean over sequences of each sequence's token mean, as (sum, denominator).

    Sum = sum over sequences of token means; denominator = sequences with at least one token (so
    all-padding rows of a static-shape batch count for nothing). `norm_constant` is unused.
    """
    tokens, sequences = _sequence_counts(mask)
    per_sequence = (values * mask).sum(axis=-1) / jnp.maximum(tokens, 1.0)
    return per_sequence.sum(), sequences


@AGGREGATIONS.register("token_mean")
def token_mean(values: jax.Array, mask: jax.Array, *, norm_constant: float | None = None) -> Pair:
    """DAPO (Yu et al. 2025): mean over all valid tokens of the batch, as (sum, token count)."""
    return (values * mask).sum(), mask.sum()


@AGGREGATIONS.register("seq_mean_token_sum_norm")
@AGGREGATIONS.register("token_sum_norm")
def seq_mean_token_sum_norm(
    values: jax.Array, mask: jax.Array, *, norm_constant: float | None = None
) -> Pair:
    """Dr.GRPO: each sequence's token sum / a constant, averaged over sequences.

    Equal to the batch's token sum / (constant * sequences), hence the alias "token_sum_norm".
    The constant is the maximum completion length; it defaults to `completion_len` (pass the
    configured maximum when micro-batches are padded to different widths).
    """
    constant = values.shape[-1] if norm_constant is None else norm_constant
    _, sequences = _sequence_counts(mask)
    return (values * mask).sum() / constant, sequences


# ----------------------------------------------------------------------------- policy loss


class LossOutput(NamedTuple):
    """A loss as a weighted sum and its denominator, and diagnostics as (sum, denominator) pairs."""

    total: jax.Array  # scalar weighted sum
    denominator: jax.Array  # scalar
    metrics: dict[str, Pair]


def k3_kl(logp: jax.Array, logp_ref: jax.Array, clamp: float | None = 10.0) -> jax.Array:
    """Schulman's k3 KL estimator (DeepSeekMath GRPO): exp(d) - d - 1, d = ref - logp clipped to
    [-clamp, clamp]; `clamp` None or 0 leaves d as it is. The released code clamps at 10
    (Video-R1 trainer/grpo_trainer.py:564), 11 (SEED-Bench-R1 trainer/grpo_trainer.py:477) and
    not at all (VideoChat-R1 trainer/grpo_tasks_trainer.py:535)."""
    d = logp_ref - logp
    if clamp:
        d = jnp.clip(d, -clamp, clamp)
    return jnp.exp(d) - d - 1.0


def clipped_surrogate(
    logp: jax.Array, logp_old: jax.Array, advantages: jax.Array, eps_low: float, eps_high: float
) -> tuple[jax.Array, jax.Array]:
    """PPO/DAPO clipped surrogate min(ratio*A, clip(ratio, 1-eps_lo, 1+eps_hi)*A) and the ratio."""
    ratio = jnp.exp(logp - logp_old)
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    return jnp.minimum(ratio * advantages, clipped * advantages), ratio


def masked_mean_pair(values: jax.Array, mask: jax.Array) -> Pair:
    """(sum over valid tokens, valid-token count) of a diagnostic, without gradient."""
    return jax.lax.stop_gradient((values * mask).sum()), jax.lax.stop_gradient(mask.sum())


def _static_zero(weight) -> bool:
    """True for a Python 0: its term is left out of the loss. A traced weight always counts."""
    return isinstance(weight, int | float) and weight == 0


@POLICY_LOSSES.register("grpo")
def grpo_policy_loss(
    logp: jax.Array,
    logp_old: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    logp_ref: jax.Array | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "seq_mean_token_mean",
    norm_constant: float | None = None,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
    kl_clamp: float | None = 10.0,
) -> LossOutput:
    """GRPO (DeepSeekMath; Video-R1) per-token loss -surrogate + beta * k3 KL - entropy_coef *
    entropy, aggregated by name.

    `logp`, `logp_old`, `logp_ref`, `mask`, `entropy`: [batch, completion_len] (log-probs of the
    sampled tokens under the policy, the rollout policy and the reference). `advantages`: [batch]
    (one per sequence) or [batch, completion_len]. The KL term is skipped when `beta` is 0 or there
    is no reference; the entropy bonus (PPO's, verl's `entropy_coeff`; 0 in the papers' recipes)
    needs `entropy` and keeps a policy from turning deterministic while groups still disagree.
    `kl_clamp` bounds the log-ratio inside the KL estimator (`k3_kl`; None or 0: no clamp).
    Metrics: clip fractions (ratio below 1-eps_lo with A<0, above 1+eps_hi with
    A>0), mean ratio, mean KL (whenever a reference is given) and mean entropy, over valid tokens.
    """
    valid = jnp.asarray(mask) > 0
    weight = valid.astype(jnp.float32)
    # Padding positions may hold anything (even -inf); zeroing them keeps their gradient finite.
    logp = jnp.where(valid, logp, 0.0)
    logp_old = jnp.where(valid, logp_old, 0.0)
    advantages = jnp.asarray(advantages, jnp.float32)
    if advantages.ndim == 1:
        advantages = advantages[:, None]

    surrogate, ratio = clipped_surrogate(logp, logp_old, advantages, eps_low, eps_high)
    per_token = -surrogate
    metrics: dict[str, Pair] = {
        "clip_fraction_low": masked_mean_pair((ratio < 1.0 - eps_low) & (advantages < 0), weight),
        "clip_fraction_high": masked_mean_pair((ratio > 1.0 + eps_high) & (advantages > 0), weight),
        "ratio": masked_mean_pair(ratio, weight),
    }
    if logp_ref is not None:
        kl = k3_kl(logp, jnp.where(valid, logp_ref, 0.0), kl_clamp)
        metrics["kl"] = masked_mean_pair(kl, weight)
        if not _static_zero(beta):
            per_token = per_token + beta * kl
    if entropy is not None:
        entropy = jnp.where(valid, entropy, 0.0)
        metrics["entropy"] = masked_mean_pair(entropy, weight)
        if not _static_zero(entropy_coef):
            per_token = per_token - entropy_coef * entropy
    elif not _static_zero(entropy_coef):
        raise ValueError("entropy_coef needs the per-token entropy")

    total, denominator = AGGREGATIONS.get(aggregation)(
        per_token, weight, norm_constant=norm_constant
    )
    return LossOutput(total, denominator, metrics)


# ----------------------------------------------------------------------------- accumulation


def safe_divide(total: jax.Array, denominator: jax.Array) -> jax.Array:
    """total / denominator, and 0.0 where the denominator is 0 (nothing to average)."""
    return jnp.where(denominator > 0, total / jnp.where(denominator > 0, denominator, 1.0), 0.0)
