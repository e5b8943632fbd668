"""Blockwise attention (model/flash.py) equals the dense formulation (model/layers.py) in values and
gradients on every mask the model builds: causal with padding, a KV cache, a shared prompt,
packed vision segments, Qwen2.5-VL windows, grouped-query heads, odd lengths that leave a partial
key block, queries that see no key; and a tiny model's logits, gradients and cached decoding.

Tolerance: model_fixtures.ATTENTION_TOLERANCE (1e-5 of the largest reference magnitude, float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_fixtures import (
    close,
    close_trees,
    logits_and_gradients,
    qkv,
    tiny_port,
    with_attention,
)

from model import flash, parity
from model.flash import Mask, flash_attention, implementation_for
from model.layers import attention
from model.rope import rope_index
from model.text import cache_mask
from model.vision import segment_attention, window_attention


def values_and_grads(fn, q, k, v):
    """fn(q, k, v) and the gradient of a fixed random projection of it (every output counts)."""
    out = fn(q, k, v)
    weights = jnp.asarray(np.random.default_rng(9).standard_normal(out.shape), out.dtype)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a) * weights), argnums=(0, 1, 2))(q, k, v)
    return out, grads


def same_as_dense(q, k, v, mask: Mask, key_block: int, query_chunk: int = 0) -> None:
    scale = q.shape[-1] ** -0.5
    flash = values_and_grads(
        lambda q, k, v: flash_attention(q, k, v, mask, scale, query_chunk, key_block), q, k, v
    )
    dense = values_and_grads(
        lambda q, k, v: attention(q, k, v, mask, scale, implementation="dense"), q, k, v
    )
    close(flash[0], dense[0])
    for got, want in zip(flash[1], dense[1], strict=True):
        close(got, want)


@pytest.mark.parametrize("query_chunk", [0, 16])
def test_causal_with_padding_odd_lengths_and_grouped_heads(query_chunk):
    """37 tokens in key blocks of 16 (a partial last block), 4 query heads on 2 KV heads, one row
    right-padded to 23 tokens: its padding queries see no valid key before them... except the
    valid ones, and its padded keys are seen by nobody."""
    q, k, v = qkv(2, 37, 37)
    valid = jnp.arange(37)[None] < jnp.asarray([[37], [23]])
    same_as_dense(q, k, v, Mask.causal(valid), key_block=16, query_chunk=query_chunk)


def test_left_padding_gives_queries_that_see_no_key():
    """Left-padded rows: the first queries see nothing (the dense formulation averages every
    value there); both formulations must agree on them too."""
    q, k, v = qkv(2, 21, 21, seed=1)
    valid = jnp.arange(21)[None] >= jnp.asarray([[0], [6]])
    mask = Mask.causal(valid)
    assert not np.asarray(mask.allowed())[1, :6].any()
    same_as_dense(q, k, v, mask, key_block=8)


def test_queries_into_a_kv_cache():
    """Five queries written at slots 11..15 of a 29-slot cache with holes (a padded prompt)."""
    q, k, v = qkv(2, 5, 29, seed=2)
    valid = jnp.asarray(np.random.default_rng(3).random((2, 29)) > 0.3).at[:, 11:16].set(True)
    same_as_dense(q, k, v, cache_mask(valid, jnp.int32(11), 5), key_block=8)


def test_completions_over_a_shared_prompt():
    """model.qwen2_vl's completion mask: a completion sees its prompt's valid keys (position 0,
    before every query) and its own tokens causally (positions Lp + j)."""
    lp, lc = 13, 9
    q, k, v = qkv(3, lc, lp + lc, heads=6, kv_heads=3, seed=4)
    prompt_valid = jnp.arange(lp)[None] < jnp.asarray([[13], [7], [10]])
    completion_valid = jnp.arange(lc)[None] < jnp.asarray([[9], [4], [1]])
    own = jnp.broadcast_to(lp + jnp.arange(lc), (3, lc))
    mask = Mask(
        jnp.concatenate([prompt_valid, completion_valid], axis=1),
        q_pos=own,
        kv_pos=jnp.concatenate([jnp.zeros((3, lp), own.dtype), own], axis=1),
    )
    same_as_dense(q, k, v, mask, key_block=8)


@pytest.mark.parametrize("query_chunk", [0, 16])
def test_packed_segments_with_padding(query_chunk):
    """Several images/videos packed in one row (segment ids 1..4, odd sizes), padding id 0."""
    ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate([7, 13, 2, 11])] + [np.zeros(6)])
    q, k, v = qkv(1, ids.size, ids.size, heads=4, kv_heads=4, seed=5)
    mask = Mask.segments(jnp.asarray(ids[None], jnp.int32))
    same_as_dense(q, k, v, mask, key_block=16, query_chunk=query_chunk)


def vision_case(n: int, seed: int):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((n, 4, 8)), jnp.float32) for _ in range(3))
    return q, k, v


def test_vision_segment_attention():
    ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate([9, 20, 5, 17])] + [np.zeros(3)])
    q, k, v = vision_case(ids.size, 6)
    segments = jnp.asarray(ids, jnp.int32)

    def run(implementation):
        return values_and_grads(
            lambda q, k, v: segment_attention(q, k, v, segments, 0.35, 16, implementation), q, k, v
        )

    flash, dense = run("xla_flash"), run("dense")
    for got, want in zip(jax.tree.leaves(flash), jax.tree.leaves(dense), strict=True):
        close(got, want)


def test_vision_window_attention():
    """Qwen2.5-VL windows after the window permutation: contiguous runs of at most `reach`
    patches (windows cut at image edges are shorter), padding id 0 at the end."""
    reach = 8
    sizes = [8, 8, 3, 8, 5, 8, 8, 2, 7]
    ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(sizes)] + [np.zeros(5)])
    q, k, v = vision_case(ids.size, 7)
    windows = jnp.asarray(ids, jnp.int32)

    def run(implementation):
        return values_and_grads(
            lambda q, k, v: window_attention(q, k, v, windows, 0.35, reach, implementation),
            q,
            k,
            v,
        )

    flash, dense = run("xla_flash"), run("dense")
    for got, want in zip(jax.tree.leaves(flash), jax.tree.leaves(dense), strict=True):
        close(got, want)


def test_bfloat16_inputs_stay_close_and_keep_their_dtype():
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv(2, 40, 40, seed=8))
    valid = jnp.arange(40)[None] < jnp.asarray([[40], [31]])
    mask = Mask.causal(valid)
    got = flash_attention(q, k, v, mask, 8**-0.5, key_block=16)
    want = attention(q, k, v, mask, 8**-0.5, implementation="dense")
    assert got.dtype == jnp.bfloat16
    # bfloat16 keeps 8 bits of mantissa: the outputs (|x| <= ~3) agree to a few of its units.
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=0, atol=0.04
    )


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="unknown attention"):
        implementation_for("splash!")


# ------------------------------------------------------------------------------- a tiny model


@pytest.fixture
def small_key_blocks(monkeypatch):
    """Key blocks of 8 in the model tests: the tiny inputs' 20-60 tokens and patches then span
    several blocks, the last one partial, as a real model's thousands do with 512."""
    monkeypatch.setattr(flash, "KEY_BLOCK", 8)


@pytest.mark.parametrize("generation", ["qwen2_vl", "qwen2_5_vl"])
def test_a_tiny_models_logits_and_gradients(generation, small_key_blocks):
    """A padded batch of two rows, an image in one and a video in the other, through vision
    (packed segments; Qwen2.5-VL: windows too) and the decoder: logits and the gradient of every
    parameter agree."""
    cfg = tiny_port(generation).config
    inp = next(i for i in parity.build_inputs(cfg) if i.name == "batch of two, padded")

    def run(implementation):
        return logits_and_gradients(with_attention(tiny_port(generation), implementation), inp)

    close_trees(run("xla_flash"), run("dense"))  # logits and the gradient of every parameter


def test_cached_decoding_equals_the_dense_full_forward(small_key_blocks):
    """Prefill and six decode steps with the cache, blockwise, give the dense full forward's
    logits (the model's own KV cache path: cache_mask queries over cache slots)."""
    generation = "qwen2_vl"
    flash_model = with_attention(tiny_port(generation), "xla_flash")
    dense_model = with_attention(tiny_port(generation), "dense")
    cfg = flash_model.config
    inp = next(i for i in parity.build_inputs(cfg) if i.name == "batch of two, padded")
    lengths = inp.attention_mask.sum(1)
    steps = 6
    new_tokens = np.random.default_rng(0).integers(20, cfg.text.vocab_size, size=(2, steps))
    full_len = int(lengths.max()) + steps
    full_ids = np.zeros((2, full_len), np.int64)
    full_mask = np.zeros((2, full_len), bool)
    for r in range(2):
        n = int(lengths[r])
        full_ids[r, :n] = inp.input_ids[r, :n]
        full_ids[r, n : n + steps] = new_tokens[r]
        full_mask[r, : n + steps] = True
    arrays = parity.port_arrays(cfg, inp)
    full_pos, _ = rope_index(
        full_ids, full_mask, cfg, np.array([(1, 6, 10)]), np.array([(3, 4, 6)]), [1.0]
    )
    full = np.asarray(
        dense_model.logits(dense_model(full_ids, full_pos, full_mask, arrays["vision"]))
    )
    cache = flash_model.init_cache(batch=2, slots=full_len + 4)
    hidden, cache = jax.jit(lambda *a: flash_model.prefill(*a))(
        inp.input_ids, arrays["positions"], inp.attention_mask.astype(bool), arrays["vision"], cache
    )
    got = [np.asarray(flash_model.logits(hidden))]
    decode = jax.jit(lambda *a: flash_model.decode(*a))
    for step in range(steps):
        pos = (arrays["deltas"] + lengths + step).astype(np.int32)
        hidden, cache = decode(
            new_tokens[:, step : step + 1], np.broadcast_to(pos[None, :, None], (3, 2, 1)), cache
        )
        got.append(np.asarray(flash_model.logits(hidden)))
    for r in range(2):
        n = int(lengths[r])
        close(got[0][r, :n], full[r, :n])
        for step in range(steps):
            close(got[step + 1][r, 0], full[r, n + step])
