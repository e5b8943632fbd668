"""Shared builders for the model tests: tiny transformers checkpoints and the port loaded."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.hf import load_pretrained
from model.tiny import make_tiny_checkpoint

# Tolerance of the attention comparisons (test_model_flash, test_model_splash): 1e-5 of the largest
# reference magnitude, in float32. Blockwise and one-pass attention differ only in the order of
# float32 sums, which moves results by a few units in the 7th digit at these sizes.
ATTENTION_TOLERANCE = 1e-5


def close(got, want) -> None:
    """got equals want within ATTENTION_TOLERANCE of want's largest magnitude."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATTENTION_TOLERANCE * scale)


def close_trees(got, want) -> None:
    """Every leaf of `got` close to the same leaf of `want` (nnx modules are pytrees too)."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        close(g, w)


def qkv(batch, q_len, kv_len, heads=4, kv_heads=2, dim=8, seed=0):
    """Random float32 queries [batch, q_len, heads, dim], keys and values [batch, kv_len,
    kv_heads, dim]."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, q_len, heads, dim)).astype(np.float32)
    k = rng.standard_normal((batch, kv_len, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((batch, kv_len, kv_heads, dim)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def with_attention(model, implementation: str):
    """The model with every attention layer and vision block set to `implementation`."""
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "implementation"):
            module.implementation = implementation
    return model


@functools.cache
def tiny_checkpoint(generation: str, tie: bool = False) -> tuple[str, object]:
    """(directory, torch model) of a tiny random checkpoint, built once per test process."""
    directory = tempfile.mkdtemp(prefix=f"jaxvrl_{generation}_{'tied' if tie else 'untied'}_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    # Qwen3.5: 4 layers (linear, full, linear, full) so the decoder scans over two groups.
    extra = {"num_layers": 4} if generation == "qwen3_5" else {}
    torch_model = make_tiny_checkpoint(
        directory, generation, tie_word_embeddings=tie, seed=1, **extra
    )
    return directory, torch_model


@functools.cache
def _loaded_port(generation: str, tie: bool) -> tuple[nnx.GraphDef, nnx.State]:
    directory, _ = tiny_checkpoint(generation, tie)
    return nnx.split(load_pretrained(directory))


def tiny_port(generation: str, tie: bool = False):
    """The port of `tiny_checkpoint`, a fresh copy on every call: tests shard, update and donate
    their models, and nnx.merge of a split model shares its Variables, so a shared instance would
    carry one test's changes into the next."""
    graphdef, state = _loaded_port(generation, tie)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


def logits_and_gradients(model, inp):
    """A model.parity input through `model`: the logits of its valid tokens [n, vocab] and the
    gradient of a loss on them, as a model of the same layout holding the gradients."""
    from model import parity

    arrays = parity.port_arrays(model.config, inp)
    graphdef, state = nnx.split(model)
    mask = jnp.asarray(inp.attention_mask, bool)

    def loss(state):
        m = nnx.merge(graphdef, state)
        logits = m.logits(m(inp.input_ids, arrays["positions"], mask, arrays["vision"]))
        return jnp.sum(jnp.where(mask[..., None], logits, 0.0) ** 2) / 1e3, logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    return np.asarray(logits)[np.asarray(mask)], nnx.merge(graphdef, grads)
