"""Vision attention: block-diagonal over slices (a numpy reference, query blocks give the
unblocked result), windows attended in neighbourhood blocks, memory linear in the number of
slices, rematerialised blocks. float32; 1e-5 covers summation order over <= 4096 keys of O(1)
values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxvrl import microbatches
from model.config import VisionConfig
from model.packing import pack_vision
from model.vision import VisionTower, segment_attention, window_attention


@pytest.mark.parametrize("n", [2500, 3072])
def test_chunked_segment_attention_equals_one_block(n):
    q, k, v = (jax.random.normal(key, (n, 2, 8)) for key in jax.random.split(jax.random.key(0), 3))
    segments = jnp.asarray(np.minimum(np.arange(n) // 500 + 1, 5))
    chunked = segment_attention(q, k, v, segments, 0.3, 1024)
    whole = segment_attention(q, k, v, segments, 0.3, 4096)
    # Same float32 math per query row; only the batching of rows differs.
    np.testing.assert_allclose(chunked, whole, atol=1e-5, rtol=0)


def test_segment_attention_matches_reference():
    n = 700
    q, k, v = (jax.random.normal(key, (n, 2, 8)) for key in jax.random.split(jax.random.key(1), 3))
    segments = np.minimum(np.arange(n) // 300 + 1, 3)
    segments[650:] = 0  # padding patches: attend nowhere, attended by nothing
    got = np.asarray(segment_attention(q, k, v, jnp.asarray(segments), 0.3, 256))
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    expected = np.zeros_like(q)
    for s in (1, 2, 3):
        rows = segments == s
        scores = np.einsum("qhd,khd->hqk", q[rows], k[rows]) * 0.3
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        expected[rows] = np.einsum("hqk,khd->qhd", probs, v[rows])
    real = segments > 0
    np.testing.assert_allclose(got[real], expected[real], atol=1e-5, rtol=0)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("n", [200, 256, 333])
def test_window_attention_equals_attention_over_window_ids(n):
    """Contiguous windows of at most 16 patches (some partial), then padding: the neighbourhood
    blocks give what attention over all patches masked by window id gives (float32, 1e-5:
    masked keys add exact zeros, only the summation length differs)."""
    q, k, v = (jax.random.normal(key, (n, 2, 8)) for key in jax.random.split(jax.random.key(2), 3))
    sizes = np.random.default_rng(n).integers(1, 17, n)
    windows = np.repeat(np.arange(1, n + 1), sizes)[:n].astype(np.int32)
    windows[n - 7 :] = 0  # padding
    got = window_attention(q, k, v, jnp.asarray(windows), 0.3, 16)
    expected = segment_attention(q, k, v, jnp.asarray(windows), 0.3, 4096)
    real = windows > 0
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(expected)[real], atol=1e-5)
    assert np.isfinite(np.asarray(got)).all()


def _tiny_tower(generation: str, **kw) -> VisionTower:
    cfg = VisionConfig(
        generation=generation,
        depth=2,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        out_hidden_size=16,
        window_size=56,
        fullatt_block_indexes=(1,),
    )
    return VisionTower(cfg, rngs=nnx.Rngs(0), **kw)


def _slices(cfg: VisionConfig, count: int, side: int = 32) -> dict[str, np.ndarray]:
    """`count` temporal slices of side x side patches, packed (zeros: only shapes matter)."""
    grids = np.array([(1, side, side)] * count)
    return pack_vision(np.zeros((count * side * side, cfg.patch_dim), np.float32), grids, cfg)


def test_vision_gradient_memory_grows_linearly_with_slices():
    """XLA's temporary bytes for the tower's gradient on 4, 8, 16 slices of 1,024 patches (the
    trainer's chunked layout): each doubling at most doubles it, within 20%. The old layout, one
    packed sequence attended in query blocks, went 1.6 -> 5.7 -> 21.7 GB (bench/RESULTS.md)."""
    tower = _tiny_tower("qwen2_vl")
    graphdef, state = nnx.split(tower)

    def loss(state, vision):
        return jnp.sum(nnx.merge(graphdef, state)(vision) ** 2)

    temp = []
    for count in (4, 8, 16):
        chunks = microbatches.chunk_vision([_slices(tower.cfg, count)], tower.cfg, (1024,))
        chunks = {k: v[0] for k, v in chunks.items()}  # one micro-batch
        assert chunks["patches"].shape[:2] == (count, 1024)
        compiled = jax.jit(jax.grad(loss)).lower(state, chunks).compile()
        temp.append(compiled.memory_analysis().temp_size_in_bytes)
    assert temp[1] <= 2 * 1.2 * temp[0] and temp[2] <= 2 * 1.2 * temp[1], temp


@pytest.mark.parametrize(
    "generation, policy, scan",
    [
        ("qwen2_vl", "full", True),
        ("qwen2_5_vl", "full", True),
        ("qwen2_vl", "dots", True),
        ("qwen2_5_vl", "full", False),
    ],
)
def test_rematerialised_vision_blocks_give_the_same_gradient(generation, policy, scan):
    plain = _tiny_tower(generation, scan_blocks=scan)
    remat = _tiny_tower(generation, remat=True, remat_policy=policy, scan_blocks=scan)
    grids = np.array([(2, 8, 12), (1, 4, 4)])
    patches = np.random.default_rng(0).standard_normal((2 * 96 + 16, plain.cfg.patch_dim))
    vision = pack_vision(patches.astype(np.float32), grids, plain.cfg, num_patches=224)

    def grad(tower):
        graphdef, state = nnx.split(tower)
        fn = lambda s: jnp.sum(jnp.sin(nnx.merge(graphdef, s)(vision)))  # noqa: E731
        return jax.jit(jax.grad(fn))(state)

    graphdef, state = nnx.split(remat)
    jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(vision))(state))
    # One rematerialised call per block: in the scan's body once, or written out per block.
    # (model.flash recomputes each key block's scores under its own checkpoint, nothing saved.)
    blocks = jaxpr.count("remat2[") - jaxpr.count("nothing_saveable")
    assert blocks == (1 if scan else remat.cfg.depth)

    # Recomputation repeats the same float32 operations: equal up to XLA's fusion choices. The
    # tolerance is relative to each gradient's scale (1e-6 of its largest entry): an entry that
    # is a small sum of large terms differs by ~1e-5 relatively on some CPUs (Intel Xeon: 7.6e-6
    # on an entry of 0.66 in a gradient reaching 107), which is rounding, not a remat error.
    for a, b in zip(jax.tree.leaves(grad(plain)), jax.tree.leaves(grad(remat)), strict=True):
        scale = float(np.abs(np.asarray(b)).max())
        np.testing.assert_allclose(a, b, atol=1e-6 * scale + 1e-7, rtol=1e-5)
