"""SFT loss: token-mean cross-entropy on assistant tokens, optionally on the prompt (Video-R1).

Tolerances: float32 sums of a dozen terms, compared with exact hand values: rtol 1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvrl.objectives import sft

LOGP = np.array([[-1.0, -2.0, -3.0, -4.0, -5.0], [-0.5, -1.5, -2.5, -3.5, -4.5]], np.float32)
PROMPT = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], np.float32)
ASSISTANT = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]], np.float32)  # last column: padding


def test_loss_is_token_mean_negative_log_prob_of_assistant_tokens():
    total, count = sft.sft_loss(LOGP, ASSISTANT, PROMPT)
    assert float(count) == 5.0
    np.testing.assert_allclose(total, 3 + 4 + 1.5 + 2.5 + 3.5, rtol=1e-6)
    np.testing.assert_allclose(total / count, 14.5 / 5, rtol=1e-6)


def test_masked_tokens_contribute_nothing_to_loss_or_gradient():
    poisoned = LOGP.copy()
    poisoned[ASSISTANT == 0] = -np.inf
    grad_fn = jax.value_and_grad(lambda lp: sft.sft_loss(lp, ASSISTANT, PROMPT)[0])
    (total, grad), (poisoned_total, poisoned_grad) = grad_fn(LOGP), grad_fn(poisoned)
    assert float(total) == float(poisoned_total)
    np.testing.assert_array_equal(grad, poisoned_grad)
    np.testing.assert_array_equal(grad, -ASSISTANT)


def test_train_on_prompt_adds_exactly_the_prompt_tokens_weight():
    default = sft.sft_weights(ASSISTANT, PROMPT)
    with_prompt = sft.sft_weights(ASSISTANT, PROMPT, train_on_prompt=True)
    np.testing.assert_array_equal(with_prompt - default, PROMPT)

    def grad(train_on_prompt):
        loss = lambda lp: sft.sft_loss(lp, ASSISTANT, PROMPT, train_on_prompt=train_on_prompt)[0]
        return jax.grad(loss)(LOGP)

    np.testing.assert_array_equal(grad(True) - grad(False), -PROMPT)
    total, count = sft.sft_loss(LOGP, ASSISTANT, PROMPT, train_on_prompt=True)
    assert float(count) == 5.0 + 3.0
    np.testing.assert_allclose(total, 14.5 + 1 + 2 + 0.5, rtol=1e-6)


def test_train_on_prompt_needs_a_prompt_mask():
    with pytest.raises(ValueError):
        sft.sft_loss(LOGP, ASSISTANT, train_on_prompt=True)


def test_micro_batches_sum_to_the_full_batch_token_mean():
    total, count = sft.sft_loss(LOGP, ASSISTANT, PROMPT)
    parts = [sft.sft_loss(LOGP[i : i + 1], ASSISTANT[i : i + 1], PROMPT[i : i + 1]) for i in (0, 1)]
    summed_total = sum(p[0] for p in parts)
    summed_count = sum(p[1] for p in parts)
    np.testing.assert_allclose(summed_total / summed_count, total / count, rtol=1e-6)


def test_loss_jits():
    jitted = jax.jit(sft.sft_loss, static_argnames="train_on_prompt")
    total, count = jitted(jnp.asarray(LOGP), ASSISTANT, PROMPT, train_on_prompt=True)
    assert float(count) == 8.0 and float(total) == pytest.approx(18.0)
