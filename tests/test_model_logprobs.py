"""Chunked log-probs equal the log-softmax of full logits, in value and gradient, and compile to
a small fraction of the full logits' memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_fixtures import tiny_port

from model.logprobs import chunked_token_logprobs, full_token_logprobs

# Both paths compute the same float32 logits; only the logsumexp grouping differs.
ATOL = 1e-5


def _random(batch=3, seq=37, hidden=16, vocab=101, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(k1, (batch, seq, hidden))
    w = jax.random.normal(k2, (hidden, vocab))
    t = jax.random.randint(k3, (batch, seq), 0, vocab)
    return h, w, t


@pytest.mark.parametrize("chunk", [1, 16, 37, 64, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_equal_full_log_softmax(chunk, temperature):
    h, w, t = _random()
    got = chunked_token_logprobs(h, w, t, chunk_size=chunk, temperature=temperature)
    expected = full_token_logprobs(h, w, t, temperature=temperature)
    assert got.shape == t.shape
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_chunked_entropy_equals_full_softmax_entropy():
    h, w, t = _random()
    _, entropy = chunked_token_logprobs(h, w, t, chunk_size=16, with_entropy=True)
    logp = jax.nn.log_softmax(jnp.einsum("bsh,hv->bsv", h, w), axis=-1)
    expected = -(jnp.exp(logp) * logp).sum(-1)
    np.testing.assert_allclose(entropy, expected, atol=ATOL, rtol=0)


def test_chunked_gradient_equals_full_gradient():
    h, w, t = _random()
    weights = jax.random.normal(jax.random.key(5), t.shape)

    def loss(fn):
        return lambda h, w: (fn(h, w, t) * weights).sum()

    chunked = jax.grad(loss(lambda h, w, t: chunked_token_logprobs(h, w, t, chunk_size=16)), (0, 1))
    full = jax.grad(loss(full_token_logprobs), (0, 1))
    for g, e in zip(chunked(h, w), full(h, w), strict=True):
        np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-5)


def test_model_token_logprobs_equal_log_softmax_of_model_logits():
    model = tiny_port("qwen2_vl", tie=True)
    ids = np.arange(10, 40).reshape(2, 15)
    pos = np.broadcast_to(np.arange(15), (3, 2, 15))
    hidden = model(ids, pos, np.ones_like(ids, bool))
    targets = np.roll(ids, -1, axis=1)
    got = model.token_logprobs(hidden, targets, chunk_size=7)
    logp = jax.nn.log_softmax(model.logits(hidden), axis=-1)
    expected = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_chunked_forward_needs_under_a_quarter_of_full_logit_memory():
    """XLA's compiled memory analysis at real-checkpoint size (vocab 151,936, 8 x 1,024 tokens):
    compile only, nothing is allocated."""
    vocab, batch, seq, hidden = 151936, 8, 1024, 3584
    shapes = (
        jax.ShapeDtypeStruct((batch, seq, hidden), jnp.float32),
        jax.ShapeDtypeStruct((hidden, vocab), jnp.float32),
        jax.ShapeDtypeStruct((batch, seq), jnp.int32),
    )
    chunked = jax.jit(lambda h, w, t: chunked_token_logprobs(h, w, t, chunk_size=1024))
    temp = chunked.lower(*shapes).compile().memory_analysis().temp_size_in_bytes
    full_logits = batch * seq * vocab * 4
    assert temp < 0.25 * full_logits


def test_on_a_mesh_each_device_computes_only_its_share_of_a_chunks_logits():
    """64 tokens split 8 ways, chunks of 32: every device's logits are [4, vocab] per chunk (a
    chunk of consecutive tokens would leave whole [32, vocab] logits on every device), and the
    values equal the single-device ones."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from model.sharding import activation_layout

    h, w, t = _random(batch=8, seq=8, hidden=16, vocab=1000)
    expected = chunked_token_logprobs(h, w, t, chunk_size=32)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 8, 1), ("data", "fsdp", "tensor"))
    rows = NamedSharding(mesh, PartitionSpec("fsdp"))
    fn = jax.jit(lambda h, w, t: chunked_token_logprobs(h, w, t, chunk_size=32))
    with activation_layout(mesh):
        h_s, t_s = jax.device_put(h, rows), jax.device_put(t, rows)
        w_s = jax.device_put(w, NamedSharding(mesh, PartitionSpec()))
        text = fn.lower(h_s, w_s, t_s).compile().as_text()
        got = fn(h_s, w_s, t_s)
    assert "f32[4,1000]" in text
    assert "f32[32,1000]" not in text
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=ATOL, rtol=0)
