"""Supervised fine-tuning loss (Video-R1's SFT stage) as a token-mean (sum, denominator) pair."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sft_weights(
    loss_mask: jax.Array, prompt_mask: jax.Array | None = None, *, train_on_prompt: bool = False
) -> jax.Array:
    """Per-token weights [batch, seq]: the assistant tokens, plus the prompt tokens if asked."""
    weight = jnp.asarray(loss_mask) > 0
    if train_on_prompt:
        if prompt_mask is None:
            raise ValueError("train_on_prompt=True needs a prompt_mask")
        weight = weight | (jnp.asarray(prompt_mask) > 0)
    return weight.astype(jnp.float32)


def sft_loss(
    target_logp: jax.Array,
    loss_mask: jax.Array,
    prompt_mask: jax.Array | None = None,
    *,
    train_on_prompt: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy on assistant tokens (SFT; Video-R1 also trained on the prompt): (sum, count).

    `target_logp` [batch, seq]: log-prob of each position's target token (already shifted by the
    caller, so position t holds log p(token t+1 | tokens <= t)); `loss_mask` [batch, seq] marks the
    assistant targets, `prompt_mask` [batch, seq] the prompt targets. With `train_on_prompt` the
    prompt tokens join with weight 1, as in Video-R1's SFT. Loss = sum / count is the token mean;
    summing both over micro-batches first gives exactly the full-batch loss.
    """
    weight = sft_weights(loss_mask, prompt_mask, train_on_prompt=train_on_prompt)
    # Masked positions may hold anything (even -inf); zeroing them keeps their gradient finite.
    logp = jnp.where(weight > 0, target_logp, 0.0)
    return -(logp * weight).sum(), weight.sum()
