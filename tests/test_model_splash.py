"""The Pallas splash kernel (model/splash.py) equals the XLA blockwise version (model/flash.py) on
every mask the model gives it: causal text with padding, odd lengths and grouped-query heads,
completions after a shared prompt, packed vision segments, Qwen2.5-VL windows, and a tiny model's
logits and gradients. The kernel runs in Pallas' interpret mode on the CPU: the same kernel
program, evaluated by XLA's CPU backend. "auto" picks the kernel only in a program for a TPU (its
mesh's devices), which the TPU compiler (libtpu, from this CPU host) then accepts.

Compared on real queries only: a padding query's output differs by design (model/splash.py), and
the losses give padding outputs no weight, so every gradient must agree. Tolerance: 1e-5 of the
largest reference magnitude in float32 (model_fixtures.ATTENTION_TOLERANCE): the two sum in
different orders (key blocks with a running maximum in both, of different sizes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from model_fixtures import (
    close,
    close_trees,
    logits_and_gradients,
    qkv,
    tiny_port,
    with_attention,
)

from model import parity, sharding
from model.flash import Mask, flash_attention
from model.splash import efficient_attention, maps_onto_kernel, splash_attention
from model.text import cache_mask
from model.vision import segment_attention, window_attention


def values_and_grads(fn, q, k, v, real):
    """fn(q, k, v) and the gradient of a fixed random projection of its real queries' outputs.
    real: [batch, q_len] bool (or [q_len] for [q_len, heads, dim] outputs)."""
    out = fn(q, k, v)
    weights = np.random.default_rng(9).standard_normal(out.shape).astype(np.float32)
    weights = jnp.asarray(
        weights * np.asarray(real).reshape(real.shape + (1,) * (out.ndim - real.ndim))
    )
    grads = jax.grad(lambda *a: jnp.sum(fn(*a) * weights), argnums=(0, 1, 2))(q, k, v)
    return out, grads


def same_on_real_queries(kernel, xla, q, k, v, real) -> None:
    """kernel(q, k, v) and xla(q, k, v) agree on the real queries' outputs and on every
    gradient of those outputs."""
    (kernel_out, kernel_grads), (xla_out, xla_grads) = (
        values_and_grads(fn, q, k, v, real) for fn in (kernel, xla)
    )
    real = np.asarray(real)
    close(np.asarray(kernel_out)[real], np.asarray(xla_out)[real])
    close_trees(kernel_grads, xla_grads)


def same_as_xla(q, k, v, mask: Mask, real) -> None:
    scale = q.shape[-1] ** -0.5
    same_on_real_queries(
        lambda q, k, v: splash_attention(q, k, v, mask, scale, interpret=True),
        lambda q, k, v: flash_attention(q, k, v, mask, scale),
        q,
        k,
        v,
        real,
    )


def test_causal_text_with_padding_odd_lengths_and_grouped_heads():
    """200 tokens (padded to 256 inside: two query and two key blocks of 128), 4 query heads on 2
    KV heads, one row right-padded, one left-padded (its first queries see no valid key)."""
    q, k, v = qkv(2, 200, 200, dim=16)
    valid = (jnp.arange(200)[None] < jnp.asarray([[150], [200]])) & (
        jnp.arange(200)[None] >= jnp.asarray([[0], [37]])
    )
    same_as_xla(q, k, v, Mask.causal(valid), valid)


def test_completions_over_a_shared_prompt():
    """model.qwen2_vl's completion mask: the prompt's valid keys, then the completion's own keys
    causally; as a static diagonal, causal_offset = the prompt's length."""
    lp, lc = 150, 70
    q, k, v = qkv(3, lc, lp + lc, heads=6, kv_heads=3, dim=16, seed=4)
    prompt_valid = jnp.arange(lp)[None] < jnp.asarray([[150], [90], [120]])
    completion_valid = jnp.arange(lc)[None] < jnp.asarray([[70], [40], [1]])
    own = jnp.broadcast_to(lp + jnp.arange(lc), (3, lc))
    mask = Mask(
        jnp.concatenate([prompt_valid, completion_valid], axis=1),
        q_pos=own,
        kv_pos=jnp.concatenate([jnp.zeros((3, lp), own.dtype), own], axis=1),
        causal_offset=lp,
    )
    np.testing.assert_array_equal(  # the diagonal says what the positions say
        mask.allowed(),
        mask.replace(q_pos=None, kv_pos=None).allowed()
        & np.tril(np.ones((lc, lp + lc), bool), k=lp)[None],
    )
    same_as_xla(q, k, v, mask, completion_valid)


def test_packed_segments_with_padding():
    ids = np.concatenate(
        [np.full(n, i + 1) for i, n in enumerate([70, 130, 2, 41])] + [np.zeros(6)]
    )
    q, k, v = qkv(1, ids.size, ids.size, heads=4, kv_heads=4, dim=16, seed=5)
    ids = jnp.asarray(ids[None], jnp.int32)
    same_as_xla(q, k, v, Mask.segments(ids), ids > 0)


def vision_case(ids, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((ids.size, 4, 16)), jnp.float32) for _ in range(3))
    return q, k, v, jnp.asarray(ids, jnp.int32)


@pytest.mark.parametrize("kind", ["segments", "windows"])
def test_vision_attention(kind):
    """The vision tower's two calls with implementation="splash": packed segments, and
    Qwen2.5-VL's windows (blocks of `reach` queries over their 3 x reach neighbourhood)."""
    if kind == "segments":
        sizes, pad = [90, 200, 5, 17], 3
        call = lambda q, k, v, ids, impl: segment_attention(q, k, v, ids, 0.25, 0, impl)  # noqa: E731
    else:
        sizes, pad = [64, 64, 30, 64, 50, 64, 64, 20], 5
        call = lambda q, k, v, ids, impl: window_attention(q, k, v, ids, 0.25, 64, impl)  # noqa: E731
    ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(sizes)] + [np.zeros(pad)])
    q, k, v, ids = vision_case(ids, 6)
    same_on_real_queries(
        lambda *a: call(*a, ids, "splash"), lambda *a: call(*a, ids, "xla_flash"), q, k, v, ids > 0
    )


def test_a_kv_cache_stays_on_the_xla_version():
    """A cache's mask has traced query positions: no static diagonal. "auto" runs model.flash on
    it (also for a TPU), "splash" by name refuses it."""
    q, k, v = qkv(2, 5, 29, seed=2)
    mask = cache_mask(jnp.ones((2, 29), bool), jnp.int32(11), 5)
    assert not maps_onto_kernel(mask) and maps_onto_kernel(Mask.causal(jnp.ones((2, 5), bool)))
    np.testing.assert_array_equal(
        efficient_attention(q, k, v, mask, 0.3), flash_attention(q, k, v, mask, 0.3)
    )
    with pytest.raises(ValueError, match="traced positions"):
        efficient_attention(q, k, v, mask, 0.3, implementation="splash")


def test_auto_runs_the_xla_version_on_the_cpu_and_the_kernel_when_compiled_for_a_tpu():
    q, k, v = qkv(8, 300, 300, heads=8, kv_heads=4, dim=128, seed=3)
    valid = jnp.arange(300)[None] < jnp.asarray([[300], [200]] * 4)
    mask = Mask.causal(valid)
    np.testing.assert_array_equal(  # the CPU: exactly model.flash's program
        jax.jit(lambda q, k, v: efficient_attention(q, k, v, mask, 0.1))(q, k, v),
        jax.jit(lambda q, k, v: flash_attention(q, k, v, mask, 0.1))(q, k, v),
    )
    # A v5p:2x2x1 slice from this host: the forward kernel and the two of its backward pass, one
    # call per device (shard_map) on its batch rows and heads.
    devices = np.array(topologies.get_topology_desc("v5p:2x2x1", "tpu").devices)
    mesh = jax.sharding.Mesh(devices.reshape(2, 1, 2), ("data", "fsdp", "tensor"))

    def loss(q, k, v, valid):
        out = efficient_attention(q, k, v, Mask.causal(valid), 0.1)
        return jnp.sum(out.astype(jnp.float32))

    def spec(x, *axes):
        return jax.ShapeDtypeStruct(x.shape, jnp.bfloat16 if x.ndim == 4 else x.dtype,
                                    sharding=NamedSharding(mesh, P(*axes)))  # fmt: skip

    args = (spec(q, "data"), spec(k, "data"), spec(v, "data"), spec(valid, "data"))
    # conftest asks every matmul for "highest" precision (float32 checks); Mosaic refuses that on
    # bfloat16 operands, and a run asks for none.
    with sharding.activation_layout(mesh), jax.default_matmul_precision("default"):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*args).lower()
    assert lowered.as_text().count("tpu_custom_call") == 3
    compiled = lowered.compile()  # the TPU compiler takes the Mosaic kernels
    assert compiled.memory_analysis().temp_size_in_bytes > 0


def test_a_tiny_models_logits_and_gradients():
    """A padded batch of two rows, an image in one and a video in the other, through Qwen2.5-VL's
    vision tower (packed segments in its full-attention blocks, windows in the others) and the
    decoder, with model.attention="splash"."""
    generation = "qwen2_5_vl"
    cfg = tiny_port(generation).config
    inp = next(i for i in parity.build_inputs(cfg) if i.name == "batch of two, padded")

    def run(implementation):
        return logits_and_gradients(with_attention(tiny_port(generation), implementation), inp)

    close_trees(run("splash"), run("xla_flash"))  # logits and the gradient of every parameter
