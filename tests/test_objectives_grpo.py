"""GRPO / T-GRPO / Dr.GRPO / DAPO math against hand numbers and a loop-based numpy reference.

Tolerances: the JAX code runs in float32 and the references in float64. One float32 rounding is
~6e-8 relative and the sums here have at most ~100 terms, so rtol 1e-5 leaves a wide margin while
still catching any wrong weight (those are off by factors, not ulps). Micro-batch accumulation is
the same float32 arithmetic in a different summation order: allclose 1e-6.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvrl.objectives import grpo

MODES = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "token_sum_norm"]


# ----------------------------------------------------------------------------- advantages


def test_group_advantages_unbiased_std_known_values():
    adv = grpo.group_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0]]))
    std = np.sqrt(4 * 0.25 / 3)  # unbiased (Video-R1's torch .std())
    np.testing.assert_allclose(adv, np.array([[0.5, -0.5, -0.5, 0.5]]) / (std + 1e-4), rtol=1e-6)


def test_group_advantages_biased_std_known_values():
    adv = grpo.group_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0]]), unbiased_std=False)
    np.testing.assert_allclose(adv, np.array([[0.5, -0.5, -0.5, 0.5]]) / (0.5 + 1e-4), rtol=1e-6)


def test_group_advantages_are_per_group_and_flat_input_matches_2d():
    rewards = jnp.array([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0]])
    adv = grpo.group_advantages(rewards)
    np.testing.assert_allclose(adv[0], np.array([-1, 0, 1]) / (1.0 + 1e-4), rtol=1e-6)
    np.testing.assert_array_equal(adv[1], [0, 0, 0])  # equal rewards: no signal
    flat = grpo.group_advantages(rewards.reshape(-1), group_size=3)
    np.testing.assert_array_equal(flat, adv.reshape(-1))
    with pytest.raises(ValueError):
        grpo.group_advantages(rewards.reshape(-1), group_size=4)


def test_group_of_one_response_has_zero_advantage():
    np.testing.assert_array_equal(grpo.group_advantages(jnp.array([[3.0], [5.0]])), [[0], [0]])


def test_dr_grpo_advantage_is_reward_minus_group_mean():
    adv = grpo.dr_grpo_advantages(jnp.array([1.0, 0.0, 0.0, 0.0, 2.0, 4.0]), group_size=3)
    np.testing.assert_allclose(adv, [2 / 3, -1 / 3, -1 / 3, -2, 0, 2], rtol=1e-6)


def test_estimators_are_chosen_by_name():
    assert {"grpo", "dr_grpo"} <= set(grpo.ADVANTAGE_ESTIMATORS.names())
    assert grpo.ADVANTAGE_ESTIMATORS.get("dr_grpo") is grpo.dr_grpo_advantages
    with pytest.raises(KeyError):
        grpo.ADVANTAGE_ESTIMATORS.get("ppo")


# ----------------------------------------------------------------------------- T-GRPO


def test_temporal_bonus_is_decided_per_group_not_over_the_batch():
    accuracies = np.array([[1.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    shuffled = np.array([[0.0, 0.0], [1.0, 1.0]])
    tb = grpo.temporal_bonus(accuracies, shuffled, np.array([True, True]))
    # Per group: 0.5 >= 0.8 * 0 holds for group 0; 0.125 >= 0.8 * 1 fails for group 1.
    np.testing.assert_array_equal(tb.applied, [True, False])
    np.testing.assert_allclose(tb.p, [0.5, 0.125])
    np.testing.assert_allclose(tb.p_shuffled, [0.0, 1.0])
    np.testing.assert_allclose(tb.bonus, [[0.3, 0.3, 0, 0], [0, 0, 0, 0]], rtol=1e-6)
    # Decided over the whole batch (Video-R1's per-device bug) group 0 would get nothing.
    assert not accuracies.mean() >= 0.8 * shuffled.mean()


def test_temporal_bonus_only_for_video_groups():
    accuracies = np.ones((2, 4))
    tb = grpo.temporal_bonus(accuracies, np.zeros((2, 2)), np.array([False, True]))
    np.testing.assert_array_equal(tb.applied, [False, True])
    np.testing.assert_allclose(tb.bonus, [[0, 0, 0, 0], [0.3, 0.3, 0.3, 0.3]], rtol=1e-6)


def test_temporal_bonus_only_for_responses_with_accuracy_above_threshold():
    tb = grpo.temporal_bonus(np.array([[0.1, 0.11, 1.0, 0.0]]), np.zeros((1, 2)), np.array([True]))
    np.testing.assert_allclose(tb.bonus, [[0, 0.3, 0.3, 0]], rtol=1e-6)


@pytest.mark.parametrize(
    ("shuffled", "ratio_rule", "strict_rule"),
    [
        ([1.0, 0.0], True, False),  # p = p~ = 0.5: 0.5 >= 0.4 but not 0.5 > 0.5
        ([1.0, 0.5], False, False),  # p~ = 0.75: 0.5 < 0.6
        ([0.5, 0.0], True, True),  # p~ = 0.25
    ],
)
def test_temporal_rules_ratio_and_strict(shuffled, ratio_rule, strict_rule):
    accuracies = np.array([[1.0, 0.0, 1.0, 0.0]])  # p = 0.5
    for rule, expected in [("ratio", ratio_rule), ("strict", strict_rule)]:
        tb = grpo.temporal_bonus(accuracies, np.array([shuffled]), np.array([True]), rule=rule)
        assert bool(tb.applied[0]) == expected, rule


def test_temporal_alpha_and_mu_are_configurable():
    accuracies, shuffled = np.array([[1.0, 0.0, 1.0, 0.0]]), np.array([[0.6, 0.6]])
    tb = grpo.temporal_bonus(accuracies, shuffled, np.array([True]), alpha=0.5, mu=1.0)
    assert not tb.applied[0]  # 0.5 < 1.0 * 0.6
    tb = grpo.temporal_bonus(accuracies, shuffled, np.array([True]), alpha=0.5, mu=0.5)
    np.testing.assert_allclose(tb.bonus, [[0.5, 0, 0.5, 0]])


def test_shuffled_responses_get_no_advantage_of_their_own():
    rewards = np.array([[2.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    accuracies = np.array([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    is_video = np.array([True, False])
    adv, tb = grpo.t_grpo_advantages(rewards, accuracies, np.zeros((2, 2)), is_video)
    assert adv.shape == (2, 4)  # ordered responses only
    np.testing.assert_allclose(adv, grpo.group_advantages(rewards + tb.bonus), rtol=1e-6)
    # Other shuffled accuracies leading to the same decisions leave every advantage unchanged.
    same, _ = grpo.t_grpo_advantages(rewards, accuracies, np.full((2, 2), 0.5), is_video)
    np.testing.assert_array_equal(adv, same)
    dr, _ = grpo.t_grpo_advantages(
        rewards, accuracies, np.zeros((2, 2)), is_video, estimator="dr_grpo"
    )
    np.testing.assert_allclose(dr, grpo.dr_grpo_advantages(rewards + tb.bonus), rtol=1e-6)


# ----------------------------------------------------------------------------- policy loss


def random_batch(seed: int, batch: int = 8, length: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 3.0, (batch, length))
    lengths = rng.integers(1, length + 1, batch)
    lengths[batch // 2] = 0  # an all-padding row, as a static-shape batch has
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)
    logp_ref = logp + rng.normal(0, 0.5, logp.shape)
    logp_ref[0, :2] = logp[0, :2] + np.array([-15.0, 15.0])  # exercise the +-10 clamp
    return {
        "logp": logp.astype(np.float32),
        "logp_old": (logp + rng.normal(0, 0.5, logp.shape)).astype(np.float32),  # clips both ways
        "logp_ref": logp_ref.astype(np.float32),
        "advantages": (rng.uniform(0.1, 2, batch) * (-1) ** np.arange(batch)).astype(np.float32),
        "mask": mask,
        "entropy": rng.uniform(0, 2, logp.shape).astype(np.float32),
    }


def reference_loss_and_grad(b, beta, eps_low, eps_high, mode, norm_constant):
    """Direct float64 loops over tokens: loss value and d loss / d logp."""
    logp, old, ref = (b[k].astype(np.float64) for k in ("logp", "logp_old", "logp_ref"))
    batch, length = logp.shape
    token_loss, token_grad = np.zeros((batch, length)), np.zeros((batch, length))
    for i in range(batch):
        a = float(b["advantages"][i])
        for t in range(length):
            if not b["mask"][i, t]:
                continue
            ratio = np.exp(logp[i, t] - old[i, t])
            unclipped, clipped = ratio * a, np.clip(ratio, 1 - eps_low, 1 + eps_high) * a
            surrogate, d_surrogate = (
                (unclipped, ratio * a) if unclipped <= clipped else (clipped, 0)
            )
            d = ref[i, t] - logp[i, t]
            inside = -10 < d < 10
            d = min(10.0, max(-10.0, d))
            kl, d_kl = np.exp(d) - d - 1, (1 - np.exp(d)) if inside else 0.0
            token_loss[i, t] = -surrogate + beta * kl
            token_grad[i, t] = -d_surrogate + beta * d_kl
    tokens = b["mask"].sum(1)
    sequences = float((tokens > 0).sum())
    weight = np.zeros((batch, length))
    for i in range(batch):
        for t in range(length):
            if not b["mask"][i, t]:
                continue
            if mode == "seq_mean_token_mean":
                weight[i, t] = 1 / (tokens[i] * sequences)
            elif mode == "token_mean":
                weight[i, t] = 1 / tokens.sum()
            else:
                weight[i, t] = 1 / (norm_constant * sequences)
    return (token_loss * weight).sum(), token_grad * weight


def metric_means(out: grpo.LossOutput) -> dict[str, jax.Array]:
    """Each diagnostic's mean (its sum / its denominator), as the train step reports it."""
    return {name: grpo.safe_divide(*pair) for name, pair in out.metrics.items()}


def loss_fn(logp, b, **options):
    out = grpo.grpo_policy_loss(
        logp,
        b["logp_old"],
        b["advantages"],
        b["mask"],
        logp_ref=b["logp_ref"],
        entropy=b["entropy"],
        **options,
    )
    return out.total / out.denominator, out


@pytest.mark.parametrize("mode", MODES)
def test_policy_loss_and_gradient_equal_loop_reference(mode):
    b = random_batch(seed=MODES.index(mode))
    options = dict(beta=0.04, eps_low=0.2, eps_high=0.28, aggregation=mode, norm_constant=16.0)
    (loss, out), grad = jax.value_and_grad(loss_fn, has_aux=True)(b["logp"], b, **options)
    ref_loss, ref_grad = reference_loss_and_grad(b, 0.04, 0.2, 0.28, mode, 16.0)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-8)
    # Some tokens really are clipped on each side, so both branches of the min are checked.
    assert out.metrics["clip_fraction_low"][0] > 0 and out.metrics["clip_fraction_high"][0] > 0


def test_policy_loss_metrics_equal_numpy_means_over_valid_tokens():
    b = random_batch(seed=7)
    _, out = loss_fn(jnp.asarray(b["logp"]), b, beta=0.04, eps_low=0.2, eps_high=0.28)
    means = metric_means(out)
    valid = b["mask"] > 0
    ratio = np.exp(b["logp"] - b["logp_old"])[valid]
    adv = np.broadcast_to(b["advantages"][:, None], b["mask"].shape)[valid]
    d = np.clip(b["logp_ref"] - b["logp"], -10, 10)[valid]
    np.testing.assert_allclose(means["ratio"], ratio.mean(), rtol=1e-5)
    np.testing.assert_allclose(means["clip_fraction_low"], ((ratio < 0.8) & (adv < 0)).mean())
    np.testing.assert_allclose(means["clip_fraction_high"], ((ratio > 1.28) & (adv > 0)).mean())
    np.testing.assert_allclose(means["kl"], (np.exp(d) - d - 1).mean(), rtol=1e-5)
    np.testing.assert_allclose(means["entropy"], b["entropy"][valid].mean(), rtol=1e-5)
    assert means["clip_fraction_low"] > 0 and means["clip_fraction_high"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_four_micro_batches_give_exactly_the_one_batch_loss_and_gradient(mode):
    b = random_batch(seed=11)
    options = dict(beta=0.04, eps_low=0.2, eps_high=0.28, aggregation=mode)
    total_fn = lambda lp, part: loss_fn(lp, part, **options)[1].total
    full_loss, full = loss_fn(jnp.asarray(b["logp"]), b, **options)
    full_grad = jax.grad(lambda lp: loss_fn(lp, b, **options)[0])(b["logp"])

    parts = [{k: v[i : i + 2] for k, v in b.items()} for i in range(0, 8, 2)]
    outs = [loss_fn(jnp.asarray(p["logp"]), p, **options)[1] for p in parts]
    # Sums and denominators summed over the micro-batches, divided once.
    summed = grpo.LossOutput(
        sum(o.total for o in outs),
        sum(o.denominator for o in outs),
        {
            name: tuple(sum(o.metrics[name][i] for o in outs) for i in (0, 1))
            for name in outs[0].metrics
        },
    )
    grads = jnp.concatenate([jax.grad(total_fn)(p["logp"], p) for p in parts])
    loss = grpo.safe_divide(summed.total, summed.denominator)
    metrics = metric_means(summed)
    np.testing.assert_allclose(summed.denominator, full.denominator, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loss, full_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grads / summed.denominator, full_grad, rtol=1e-6, atol=1e-6)
    for name, value in metric_means(full).items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_one_pass_ratio_is_one_and_gradient_is_policy_gradient(mode):
    b = random_batch(seed=3)
    aggregate = grpo.AGGREGATIONS.get(mode)

    def one_pass_loss(logp):
        out = grpo.grpo_policy_loss(
            logp, jax.lax.stop_gradient(logp), b["advantages"], b["mask"], aggregation=mode
        )
        return out.total / out.denominator, out

    def policy_gradient_form(logp):
        total, denominator = aggregate(-b["advantages"][:, None] * logp, b["mask"])
        return total / denominator

    (_, out), grad = jax.value_and_grad(one_pass_loss, has_aux=True)(b["logp"])
    means = metric_means(out)
    assert means["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert means["clip_fraction_low"] == 0 and means["clip_fraction_high"] == 0
    np.testing.assert_allclose(grad, jax.grad(policy_gradient_form)(b["logp"]), rtol=1e-6)
    if mode == "token_mean":  # -A / (valid tokens) on every valid token
        expected = -b["advantages"][:, None] * b["mask"] / b["mask"].sum()
        np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_kl_is_skipped_when_beta_is_zero_or_there_is_no_reference():
    b = random_batch(seed=5)
    args = (b["logp"], b["logp_old"], b["advantages"], b["mask"])
    plain = grpo.grpo_policy_loss(*args)
    no_beta = grpo.grpo_policy_loss(*args, logp_ref=b["logp_ref"], beta=0.0)
    no_ref = grpo.grpo_policy_loss(*args, logp_ref=None, beta=0.04)
    with_kl = grpo.grpo_policy_loss(*args, logp_ref=b["logp_ref"], beta=0.04)
    assert float(no_beta.total) == float(plain.total) == float(no_ref.total)
    assert "kl" in no_beta.metrics and "kl" not in no_ref.metrics
    kl_sum, _ = grpo.AGGREGATIONS.get("seq_mean_token_mean")(
        grpo.k3_kl(b["logp"], b["logp_ref"]), b["mask"]
    )
    np.testing.assert_allclose(with_kl.total - plain.total, 0.04 * kl_sum, rtol=1e-5)


def test_entropy_bonus_subtracts_the_aggregated_entropy_and_pushes_towards_uniform():
    b = random_batch(seed=6)
    args = (b["logp"], b["logp_old"], b["advantages"], b["mask"])
    plain = grpo.grpo_policy_loss(*args, entropy=b["entropy"])
    bonus = grpo.grpo_policy_loss(*args, entropy=b["entropy"], entropy_coef=0.01)
    entropy_sum, _ = grpo.AGGREGATIONS.get("seq_mean_token_mean")(b["entropy"], b["mask"])
    np.testing.assert_allclose(plain.total - bonus.total, 0.01 * entropy_sum, rtol=1e-5)
    with pytest.raises(ValueError, match="entropy"):
        grpo.grpo_policy_loss(*args, entropy_coef=0.01)

    # Through the logits: with zero advantages only the bonus moves them, and a gradient step
    # on the loss raises the entropy of a peaked distribution.
    logits = jnp.array([[[3.0, 0.0, -1.0, 0.5]]])

    def entropy(z):
        return -(jax.nn.softmax(z) * jax.nn.log_softmax(z)).sum(axis=-1)

    def loss(z):
        out = grpo.grpo_policy_loss(
            jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros(1), jnp.ones((1, 1)),
            entropy=entropy(z), entropy_coef=0.1,
        )  # fmt: skip
        return out.total / out.denominator

    stepped = logits - 1.0 * jax.grad(loss)(logits)
    assert float(entropy(stepped)[0, 0]) > float(entropy(logits)[0, 0])


def test_k3_kl_known_values_and_clamp():
    kl = grpo.k3_kl(jnp.array([0.0, 0.0, 0.0, 0.0]), jnp.array([0.0, 1.0, -1.0, 50.0]))
    np.testing.assert_allclose(kl, [0, np.e - 2, np.exp(-1), np.exp(10) - 11], rtol=1e-6)


def test_k3_kl_clamp_is_each_recipes():
    # d = ref - logp = 12: Video-R1 clamps at 10 (trainer/grpo_trainer.py:564), SEED-Bench-R1 at
    # 11 (trainer/grpo_trainer.py:477), VideoChat-R1 not at all (grpo_tasks_trainer.py:535).
    logp, ref = jnp.zeros((1,)), jnp.full((1,), 12.0)
    for clamp, d in ((10.0, 10.0), (11.0, 11.0), (0.0, 12.0), (None, 12.0)):
        np.testing.assert_allclose(grpo.k3_kl(logp, ref, clamp), [np.exp(d) - d - 1], rtol=1e-6)
    # The loss passes it through: beta * mean KL with one valid token.
    out = grpo.grpo_policy_loss(
        jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros((1,)), jnp.ones((1, 1)),
        logp_ref=jnp.full((1, 1), 12.0), beta=1.0, kl_clamp=11.0,
    )  # fmt: skip
    np.testing.assert_allclose(float(out.total / out.denominator), np.exp(11) - 12, rtol=1e-6)


def test_padding_positions_never_reach_loss_or_gradient():
    b = random_batch(seed=9)
    poisoned = {k: v.copy() for k, v in b.items()}
    for key in ("logp", "logp_old", "logp_ref", "entropy"):
        poisoned[key][b["mask"] == 0] = -np.inf
    options = dict(beta=0.04, aggregation="token_mean")
    grad_fn = jax.value_and_grad(lambda lp, bb: loss_fn(lp, bb, **options)[0])
    loss, grad = grad_fn(b["logp"], b)
    poisoned_loss, poisoned_grad = grad_fn(poisoned["logp"], poisoned)
    assert float(poisoned_loss) == float(loss)
    np.testing.assert_array_equal(poisoned_grad, grad)
    assert np.all(grad[b["mask"] == 0] == 0)


def test_token_level_advantages_broadcast_like_per_sequence_ones():
    b = random_batch(seed=2)
    args = (b["logp"], b["logp_old"])
    per_sequence = grpo.grpo_policy_loss(*args, b["advantages"], b["mask"])
    per_token = np.broadcast_to(b["advantages"][:, None], b["mask"].shape)
    per_token_out = grpo.grpo_policy_loss(*args, per_token, b["mask"])
    np.testing.assert_allclose(per_token_out.total, per_sequence.total, rtol=1e-6)


def test_losses_are_chosen_by_name_and_jit():
    assert set(MODES) <= set(grpo.AGGREGATIONS.names())
    assert "grpo" in grpo.POLICY_LOSSES.names()
    b = random_batch(seed=4)
    loss = functools.partial(grpo.POLICY_LOSSES.get("grpo"), aggregation="token_mean", beta=0.1)
    eager = loss(b["logp"], b["logp_old"], b["advantages"], b["mask"], logp_ref=b["logp_ref"])
    jitted = jax.jit(lambda *args, ref: loss(*args, logp_ref=ref))(
        b["logp"], b["logp_old"], b["advantages"], b["mask"], ref=b["logp_ref"]
    )
    np.testing.assert_allclose(jitted.total, eager.total, rtol=1e-6)


def test_aggregations_known_values():
    values = jnp.array([[1.0, 3.0, 100.0], [2.0, 0.0, 0.0], [7.0, 7.0, 7.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    pairs = {m: grpo.AGGREGATIONS.get(m)(values, mask, norm_constant=4.0) for m in MODES}
    np.testing.assert_allclose(pairs["seq_mean_token_mean"], (2.0 + 2.0, 2.0))
    np.testing.assert_allclose(pairs["token_mean"], (6.0, 3.0))
    np.testing.assert_allclose(pairs["seq_mean_token_sum_norm"], (6.0 / 4, 2.0))
    np.testing.assert_allclose(pairs["token_sum_norm"], (6.0 / 4, 2.0))
    assert float(grpo.safe_divide(jnp.float32(0.0), jnp.float32(0.0))) == 0.0
