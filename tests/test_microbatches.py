"""Stacking micro-batches: token axes padded to the longest, vision in chunks of whole slices
with one chunk size and count for all, the tower's features unchanged. float32; 1e-5 covers the
summation order of attention over a chunk instead of the whole packed sequence."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from jaxvrl import microbatches
from jaxvrl.parallel.placement import batch_axis_size, stacked_shardings
from jaxvrl.rollout import vision_chunks as vision_chunks_module
from model.config import VisionConfig
from model.packing import pack_vision
from model.sharding import DEFAULT_RULES
from model.vision import VisionTower


def _vision(cfg, grids, seed):
    grids = np.array(grids)
    n = int(np.prod(grids, axis=1).sum())
    patches = np.random.default_rng(seed).standard_normal((n, cfg.patch_dim)).astype(np.float32)
    return pack_vision(patches, grids, cfg, num_patches=-(-n // 64) * 64)


@pytest.mark.parametrize("generation", ["qwen2_vl", "qwen2_5_vl"])
def test_chunked_micro_batches_give_the_packed_towers_features(generation):
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
    tower = VisionTower(cfg, rngs=nnx.Rngs(0))
    # An image and a 4-frame video (slices of 96 patches), and a 2-slice video of 20 x 20.
    flat = [_vision(cfg, [(1, 8, 12), (2, 8, 12)], 0), _vision(cfg, [(2, 20, 20)], 1)]
    batch = [{"vision": v, "input_ids": np.zeros((1, 5 + i), np.int32)} for i, v in enumerate(flat)]
    stacked = microbatches.stack(batch, cfg, (256, 1024), num_chunks_multiple=4)
    assert stacked["input_ids"].shape == (2, 1, 6)  # padded to the longer
    chunks = stacked["vision"]
    m, k, c = chunks["patches"].shape[:3]
    assert (m, c) == (2, 512) and k % 4 == 0  # one chunk size, fitted to the 400-patch slice
    for i, vision in enumerate(flat):
        expected = tower(vision)
        got = tower(jax.tree.map(lambda x, i=i: x[i], chunks))
        features = int(np.count_nonzero(vision["segment_ids"])) // cfg.merge_unit
        np.testing.assert_allclose(got[:features], expected[:features], atol=1e-5, rtol=0)


def test_vision_chunks_split_over_the_batch_axes():
    """On a data 2 x fsdp 4 mesh the chunks go 8 ways (K a multiple of 8), each device holding
    its own chunks; the feature index is replicated."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4, 1), ("data", "fsdp", "tensor"))
    cfg = VisionConfig(depth=1, hidden_size=32, num_heads=2, intermediate_size=64)
    assert batch_axis_size(mesh, DEFAULT_RULES) == 8
    batch = [{"vision": _vision(cfg, [(3, 16, 16)], 0), "input_ids": np.zeros((8, 4), np.int32)}]
    stacked = microbatches.stack(batch, cfg, (1024,), batch_axis_size(mesh, DEFAULT_RULES))
    assert stacked["vision"]["patches"].shape[:3] == (1, 8, 256)  # 3 slices padded to 8 chunks
    put = jax.device_put(stacked, stacked_shardings(stacked, mesh, DEFAULT_RULES))
    patches = put["vision"]["patches"]
    assert patches.sharding.shard_shape(patches.shape) == (1, 1, 256, cfg.patch_dim)
    assert put["vision"]["feature_index"].sharding.is_fully_replicated
    assert put["input_ids"].sharding.shard_shape((1, 8, 4)) == (1, 1, 4)


def test_vision_is_packed_once_per_stack_and_sizing_copies_no_patch(monkeypatch):
    cfg = VisionConfig(depth=1, hidden_size=32, num_heads=2, intermediate_size=64)
    batch = [
        {"vision": _vision(cfg, [(3, 16, 16)], 0), "input_ids": np.zeros((2, 4), np.int32)},
        {
            "vision": _vision(cfg, [(1, 8, 12), (2, 20, 20)], 1),
            "input_ids": np.zeros((2, 6), np.int32),
        },
    ]
    calls = []
    real = vision_chunks_module.pack_vision
    monkeypatch.setattr(
        vision_chunks_module, "pack_vision", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    # What several processes agree on (jaxvrl.train Trainer._stack): sizes from the slices alone.
    sizes = microbatches.stack_sizes(batch, cfg, (1024,), num_chunks_multiple=4)
    assert calls == []
    stacked = microbatches.stack(batch, cfg, (1024,), 4, sizes)
    m, k, c = stacked["vision"]["patches"].shape[:3]
    assert (m, k, c) == (2, sizes["num_chunks"], sizes["chunk_patches"]) == (2, 4, 512)
    assert len(calls) == m * k  # one packing per chunk of each micro-batch, no more
    # A chunk size agreed elsewhere (another process's larger slices) is kept.
    assert microbatches.stack_sizes(batch, cfg, (1024,), 4, chunk_patches=2048)["num_chunks"] == 4
