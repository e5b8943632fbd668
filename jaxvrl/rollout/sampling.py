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


# Top-p over the whole vocabulary first looks among this many most probable tokens: when their
# mass reaches top_p the nucleus lies among them and no sort of the vocabulary is needed.
TOP_P_CANDIDATES = 1024


def filter_logits(
    logits: jnp.ndarray,
    top_k: int = 0,
    top_p: float | jnp.ndarray = 1.0,
    use_top_p: bool | None = None,
    candidates: int = TOP_P_CANDIDATES,
) -> jnp.ndarray:
    """Top-k then top-p filtering: dropped tokens get -inf.

    logits: [..., vocab] float32, already divided by the temperature. top_k: static, 0 = off.
    top_p: a float or a traced scalar in (0, 1]; `use_top_p` (static) says whether to apply it at
    all (default: top_p < 1 when top_p is a Python float, else True). Returns [..., vocab].

    Top-p without top-k ranks only the `candidates` (static) most probable tokens (`lax.top_k`)
    and sorts the whole vocabulary only when their mass is below top_p for some row: the kept set
    is the one the full sort gives, since every token ranked below the candidates then has at
    least top_p of mass above it. `candidates=0` always sorts.
    """
    vocab = logits.shape[-1]
    if use_top_p is None:
        use_top_p = not isinstance(top_p, int | float) or top_p < 1.0
    k = vocab if top_k <= 0 else min(top_k, vocab)
    if k == vocab and not use_top_p:
        return logits
    if k < vocab:
        ranked, _ = jax.lax.top_k(logits, k)  # [..., k], descending
        threshold = _nucleus_threshold(ranked, top_p, use_top_p)
    elif 0 < candidates < vocab:
        head, _ = jax.lax.top_k(logits, candidates)  # [..., candidates], descending
        # The candidates' probabilities under the softmax of the whole vocabulary. The maximum
        # is taken apart: a second read of top_k's output would make XLA's CPU compiler run it
        # as a sort of the whole vocabulary.
        top = jnp.max(logits, axis=-1, keepdims=True)
        unnormalised = jnp.exp(logits - top)
        head_probs = jnp.exp(head - top) / jnp.sum(unnormalised, axis=-1, keepdims=True)
        head_mass = jnp.sum(head_probs, axis=-1)
        enough = jnp.all(head_mass >= top_p) & (top_p < 1.0)
        threshold = jax.lax.cond(
            enough,
            lambda: _threshold_from_probs(head, head_probs, top_p),
            lambda: _nucleus_threshold(-jnp.sort(-logits, axis=-1), top_p, True),
        )
    else:
        threshold = _nucleus_threshold(-jnp.sort(-logits, axis=-1), top_p, True)
    return jnp.where(logits >= threshold, logits, NEG_INF)


def _nucleus_threshold(ranked: jnp.ndarray, top_p, use_top_p: bool) -> jnp.ndarray:
    """The smallest kept logit: ranked [..., n] descending holds every token still in the running
    (the vocabulary, or top-k's survivors, whose softmax top-p is taken over). Returns [..., 1]."""
    if not use_top_p:
        return ranked[..., -1:]
    return _threshold_from_probs(ranked, jax.nn.softmax(ranked, axis=-1), top_p)


def _threshold_from_probs(ranked: jnp.ndarray, probs: jnp.ndarray, top_p) -> jnp.ndarray:
    """A token stays when the mass ranked strictly above it is below top_p (all stay at
    top_p >= 1); the most probable always stays. ranked, probs: [..., n]. Returns [..., 1]."""
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    keep = (mass_above < top_p) | (top_p >= 1.0)
    count = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1)
    return jnp.take_along_axis(ranked, count - 1, axis=-1)


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
    candidates: int = TOP_P_CANDIDATES,
) -> jnp.ndarray:
    """One token per row. keys: [rows] typed PRNG keys (one stream per row, so a row's draw does
    not depend on the other rows); logits: [rows, vocab] float32 (raw, not temperature-scaled).
    Greedy takes the argmax of the raw logits; `candidates` as in `filter_logits`. Returns [rows]
    int32."""
    logits = suppress_tokens(logits, suppress, suppress_active)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = filter_logits(logits / temperature, top_k, top_p, use_top_p, candidates)
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
