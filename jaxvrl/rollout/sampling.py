"""Token-level sampling math for the rollout: temperature, top-k / top-p filtering, stop-token
suppression, per-sample PRNG streams, and the log-probabilities the sampler reports.

Conventions (those of Hugging Face `generate` and TRL/Video-R1):

- Filtering order: logits / temperature, then top-k, then top-p on the softmax of what top-k kept
  (`TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`).
- Top-p keeps the smallest set of most probable tokens whose mass reaches `top_p`: a token stays
  when the mass of the tokens ranked strictly above it is below `top_p`. Tokens tied with the last
  kept one are kept too (a measure-zero difference from a sort-order tie-break).
- The log-probability reported for a sampled token is the log-softmax of the temperature-scaled,
  UNFILTERED logits: the quantity TRL's GRPO trainer (and Video-R1's fork of it) recomputes as
  `logp_old` with `logits / temperature`, so the sampler's numbers are directly comparable with the
  trainer's and the ratio of a first optimisation pass is 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def filter_logits(
    logits: jnp.ndarray,
    top_k: int = 0,
    top_p: float | jnp.ndarray = 1.0,
    use_top_p: bool | None = None,
) -> jnp.ndarray:
    """Top-k then top-p filtering: dropped tokens get -inf.

    logits: [..., vocab] float32, already divided by the temperature. top_k: static, 0 = off.
    top_p: a float or a traced scalar in (0, 1]; `use_top_p` (static) says whether to apply it at
    all (default: top_p < 1 when top_p is a Python float, else True). Returns [..., vocab].
    """
    vocab = logits.shape[-1]
    if use_top_p is None:
        use_top_p = not isinstance(top_p, int | float) or top_p < 1.0
    k = vocab if top_k <= 0 else min(top_k, vocab)
    if k == vocab and not use_top_p:
        return logits
    if k < vocab:
        ranked, _ = jax.lax.top_k(logits, k)  # [..., k], descending
    else:
        ranked = -jnp.sort(-logits, axis=-1)
    keep_ranked = jnp.ones(ranked.shape, bool)
    if use_top_p:
        probs = jax.nn.softmax(ranked, axis=-1)
        mass_above = jnp.cumsum(probs, axis=-1) - probs
        keep_ranked = (mass_above < top_p) | (top_p >= 1.0)
    # The most probable token always stays; count >= 1.
    count = jnp.maximum(jnp.sum(keep_ranked, axis=-1, keepdims=True), 1)
    threshold = jnp.take_along_axis(ranked, count - 1, axis=-1)
    return jnp.where(logits >= threshold, logits, NEG_INF)


def suppress_tokens(
    logits: jnp.ndarray, token_ids: tuple[int, ...], active: jnp.ndarray | bool = True
) -> jnp.ndarray:
    """Sets the logits of `token_ids` to -inf where `active` (e.g. before `min_new_tokens`).
    logits: [..., vocab]; active: broadcastable to [...]."""
    if not token_ids:
        return logits
    banned = jnp.zeros((logits.shape[-1],), bool).at[jnp.asarray(token_ids)].set(True)
    return jnp.where(banned & jnp.asarray(active)[..., None], NEG_INF, logits)


def sample_tokens(
    keys: jax.Array,
    logits: jnp.ndarray,
    *,
    temperature: float | jnp.ndarray = 1.0,
    top_k: int = 0,
    top_p: float | jnp.ndarray = 1.0,
    use_top_p: bool | None = None,
    greedy: bool = False,
    suppress: tuple[int, ...] = (),
    suppress_active: jnp.ndarray | bool = False,
) -> jnp.ndarray:
    """One token per row. keys: [rows] typed PRNG keys (one stream per row, so a row's draw does
    not depend on the other rows); logits: [rows, vocab] float32 (raw, not temperature-scaled).
    Greedy takes the argmax of the raw logits. Returns [rows] int32."""
    logits = suppress_tokens(logits, suppress, suppress_active)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = filter_logits(logits / temperature, top_k, top_p, use_top_p)
    draw = jax.vmap(lambda key, row: jax.random.categorical(key, row))
    return draw(keys, scaled).astype(jnp.int32)


def token_logprobs(
    logits: jnp.ndarray, tokens: jnp.ndarray, temperature: float | jnp.ndarray = 1.0
) -> jnp.ndarray:
    """log softmax(logits / temperature)[tokens] over the UNFILTERED logits (TRL convention).
    logits: [rows, vocab]; tokens: [rows]. Returns [rows] float32."""
    scaled = logits.astype(jnp.float32) / temperature
    lse = jax.nn.logsumexp(scaled, axis=-1)
    chosen = jnp.take_along_axis(scaled, tokens[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return chosen - lse


def sample_keys(
    seed: jnp.ndarray,
    prompt_seeds: jnp.ndarray,
    sample_to_prompt: jnp.ndarray,
    sample_index: jnp.ndarray,
) -> jax.Array:
    """Per-sample PRNG streams: key(seed) -> fold_in(prompt seed) -> fold_in(sample index).

    seed: scalar int; prompt_seeds: [prompts] int (an id of the prompt itself, not its row, so a
    prompt's samples do not depend on what else is in the batch); sample_to_prompt, sample_index:
    [samples] int (the prompt row and the index of the sample among that prompt's samples).
    Returns [samples] typed keys; a step's key is `step_keys(keys, step)`."""
    base = jax.random.key(seed)
    per_prompt = jax.vmap(jax.random.fold_in, (None, 0))(base, prompt_seeds)
    return jax.vmap(jax.random.fold_in)(per_prompt[sample_to_prompt], sample_index)


def step_keys(keys: jax.Array, step: jnp.ndarray | int) -> jax.Array:
    """The keys of decoding step `step` (0 = the token sampled from the prefill): [samples]."""
    return jax.vmap(jax.random.fold_in, (0, None))(keys, step)
