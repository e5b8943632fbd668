"""Token filtering and sampling math (jaxvrl/rollout/sampling.py): top-k / top-p keep the sets HF
keeps, draws follow the filtered softmax, streams are per row, log-probs use the unfiltered
logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxvrl.rollout import sampling

LOGITS = np.log(np.array([0.30, 0.20, 0.15, 0.12, 0.08, 0.06, 0.04, 0.03, 0.015, 0.005]))


def filtered_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Reference: HF's TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper, in NumPy."""
    scaled = logits / temperature
    order = np.argsort(-scaled)
    keep = np.zeros(scaled.shape, bool)
    keep[order[: top_k if top_k > 0 else len(scaled)]] = True
    masked = np.where(keep, scaled, -np.inf)
    probs = np.exp(masked - masked.max())
    probs /= probs.sum()
    sorted_probs = probs[order]
    above = np.cumsum(sorted_probs) - sorted_probs
    keep_p = np.zeros(scaled.shape, bool)
    keep_p[order[above < top_p]] = True
    final = np.where(keep & keep_p, scaled, -np.inf)
    out = np.exp(final - final.max())
    return out / out.sum()


@pytest.mark.parametrize(
    "top_k, top_p, kept",
    [(0, 1.0, 10), (3, 1.0, 3), (0, 0.45, 2), (0, 0.64, 3), (0, 0.66, 4), (4, 0.9, 4), (2, 0.9, 2)],
)
def test_filter_keeps_top_k_then_smallest_top_p_set(top_k, top_p, kept):
    out = np.asarray(sampling.filter_logits(jnp.asarray(LOGITS[None]), top_k, top_p))[0]
    assert np.isfinite(out).sum() == kept
    # The kept tokens are the most probable ones and keep their logits unchanged.
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(out)), np.arange(kept))
    np.testing.assert_allclose(out[:kept], LOGITS[:kept])


def test_filter_always_keeps_the_most_probable_token():
    out = np.asarray(sampling.filter_logits(jnp.asarray(LOGITS[None]), 0, 1e-6))[0]
    assert np.isfinite(out).sum() == 1 and np.isfinite(out[0])


def test_filter_accepts_a_traced_top_p():
    fn = jax.jit(lambda x, p: sampling.filter_logits(x, 0, p, use_top_p=True))
    assert np.isfinite(np.asarray(fn(jnp.asarray(LOGITS[None]), 0.66))).sum() == 4
    assert np.isfinite(np.asarray(fn(jnp.asarray(LOGITS[None]), 1.0))).sum() == 10


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 6, 0.8), (1.5, 0, 0.9)])
def test_sampled_tokens_follow_the_filtered_softmax(temperature, top_k, top_p):
    """Chi-square goodness of fit with a fixed seed on a 10-token vocabulary."""
    n = 40_000
    keys = jax.random.split(jax.random.key(0), n)
    logits = jnp.broadcast_to(jnp.asarray(LOGITS, jnp.float32), (n, LOGITS.size))
    tokens = np.asarray(
        sampling.sample_tokens(keys, logits, temperature=temperature, top_k=top_k, top_p=top_p)
    )
    expected = filtered_probs(LOGITS, temperature, top_k, top_p)
    counts = np.bincount(tokens, minlength=LOGITS.size)
    support = expected > 0
    assert counts[~support].sum() == 0, "a filtered-out token was sampled"
    chi2 = stats.chisquare(counts[support], n * expected[support])
    assert chi2.pvalue > 1e-3, (counts, n * expected)


def test_greedy_takes_the_argmax_and_ignores_keys():
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((5, 50)), jnp.float32)
    keys = jax.random.split(jax.random.key(3), 5)
    got = sampling.sample_tokens(keys, logits, greedy=True)
    np.testing.assert_array_equal(np.asarray(got), np.argmax(np.asarray(logits), axis=-1))


def test_suppressed_tokens_are_never_drawn_while_active():
    logits = jnp.zeros((2000, 4)).at[:, 2].set(5.0)
    keys = jax.random.split(jax.random.key(1), 2000)
    tokens = np.asarray(sampling.sample_tokens(keys, logits, suppress=(2,), suppress_active=True))
    assert not (tokens == 2).any()
    greedy = sampling.sample_tokens(keys, logits, greedy=True, suppress=(2,), suppress_active=False)
    assert (np.asarray(greedy) == 2).all()


def test_logprobs_use_the_unfiltered_temperature_scaled_softmax():
    logits = jnp.asarray(np.random.default_rng(1).standard_normal((3, 20)), jnp.float32)
    tokens = jnp.asarray([0, 5, 19])
    got = np.asarray(sampling.token_logprobs(logits, tokens, 0.6))
    ref = np.asarray(jax.nn.log_softmax(logits / 0.6, axis=-1))[np.arange(3), np.asarray(tokens)]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_a_sample_stream_depends_only_on_seed_prompt_seed_and_sample_index():
    seeds = jnp.asarray([7, 11, 7])
    keys = sampling.sample_keys(
        jnp.int32(0), seeds, jnp.asarray([0, 1, 2, 0]), jnp.asarray([0, 0, 0, 1])
    )
    data = np.asarray(jax.random.key_data(keys))
    np.testing.assert_array_equal(data[0], data[2])  # same prompt seed, same sample index
    assert not np.array_equal(data[0], data[1]) and not np.array_equal(data[0], data[3])
    step1 = np.asarray(jax.random.key_data(sampling.step_keys(keys, 1)))
    assert not np.array_equal(step1[0], data[0])


def zipf_logits(rows: int, vocab: int, exponent: float, seed: int) -> np.ndarray:
    """Language-model-like rows: log-probabilities of a Zipf law over a shuffled vocabulary, plus
    noise. A small exponent gives a flat row whose nucleus is thousands of tokens wide."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    base = -exponent * np.log(ranks)
    out = np.array([rng.permutation(base) for _ in range(rows)]).reshape(rows, vocab)
    return (out + 0.3 * rng.standard_normal(out.shape)).astype(np.float32)


@pytest.mark.parametrize("exponent", [2.0, 1.2, 0.6])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_top_p_from_candidates_keeps_the_full_sorts_set(exponent, top_p):
    """Peaky rows (the nucleus among the 64 candidates) and flat ones (the full sort's fallback)
    keep exactly the tokens the full sort keeps."""
    logits = jnp.asarray(zipf_logits(16, 4096, exponent, seed=int(10 * exponent)))
    got = np.isfinite(np.asarray(sampling.filter_logits(logits, 0, top_p, candidates=64)))
    want = np.isfinite(np.asarray(sampling.filter_logits(logits, 0, top_p, candidates=0)))
    np.testing.assert_array_equal(got, want)
    assert (want.sum(axis=-1) >= 1).all()


def test_top_p_candidates_fall_back_to_the_sort_when_one_row_needs_it():
    peaky = zipf_logits(3, 4096, 2.0, seed=1)
    flat = zipf_logits(1, 4096, 0.3, seed=2)
    logits = jnp.asarray(np.concatenate([peaky, flat]))
    got = np.isfinite(np.asarray(sampling.filter_logits(logits, 0, 0.9, candidates=64)))
    want = np.isfinite(np.asarray(sampling.filter_logits(logits, 0, 0.9, candidates=0)))
    np.testing.assert_array_equal(got, want)
    assert got[:3].sum(axis=-1).max() <= 64 < got[3].sum()


@pytest.mark.parametrize("flat_rows", [0, 2])
def test_top_p_candidates_sample_todays_tokens_at_qwens_vocabulary(flat_rows):
    """Video-R1's sampling (top_p 0.95, temperature 1, no top-k) at Qwen2-VL's vocabulary size:
    the same tokens from the same keys with and without the full sort, jitted as the rollout
    runs it (top_p traced). Peaky rows alone take the candidates' branch; two flat rows (a
    nucleus wider than the vocabulary's first 1,024) send the batch to the sort."""
    vocab, rows = 151_936, 16
    logits = jnp.asarray(
        np.concatenate(
            [
                zipf_logits(rows - flat_rows, vocab, 1.5, seed=3),
                zipf_logits(flat_rows, vocab, 1.1, 4),
            ]
        )
    )

    def draw(candidates):
        fn = jax.jit(
            lambda keys, x, p: sampling.sample_tokens(
                keys, x, top_p=p, use_top_p=True, candidates=candidates
            )
        )
        return np.stack(
            [
                np.asarray(fn(jax.random.split(jax.random.key(s), rows), logits, 0.95))
                for s in range(4)
            ]
        )

    np.testing.assert_array_equal(draw(sampling.TOP_P_CANDIDATES), draw(0))
