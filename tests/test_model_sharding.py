"""On 8 simulated CPU devices (data 2 x fsdp 2 x tensor 2) the port gives single-device logits;
under an activation layout the decoder's activations are split over the batch axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from model_fixtures import tiny_checkpoint, tiny_port

from model import parity, stack
from model.hf import load_pretrained
from model.packing import pack_vision
from model.rope import rope_index
from model.sharding import (
    DEFAULT_RULES,
    activation_layout,
    activation_rules,
    batch_sharding,
    constrain,
    embedding_lookup,
    logical_to_spec,
    shard_model,
)

# Sharded matmuls reduce in a different order; float32 rounding stays far below this bound.
TOLERANCE = 1e-5


def _mesh() -> Mesh:
    devices = np.array(jax.devices()[:8]).reshape(2, 2, 2)
    return Mesh(devices, ("data", "fsdp", "tensor"))


def test_logical_rules_map_names_to_mesh_axes():
    mesh = _mesh()
    assert logical_to_spec(("embed", "mlp"), DEFAULT_RULES, mesh) == PartitionSpec("fsdp", "tensor")
    assert logical_to_spec(("vocab", "embed"), DEFAULT_RULES, mesh) == PartitionSpec(
        "tensor", "fsdp"
    )
    assert logical_to_spec(("batch", None), DEFAULT_RULES, mesh) == PartitionSpec(
        ("data", "fsdp"), None
    )


def _batch_of_four(cfg):
    inp = next(i for i in parity.build_inputs(cfg) if i.name == "batch of two, padded")
    ids = np.concatenate([inp.input_ids, inp.input_ids[::-1]])
    mask = np.concatenate([inp.attention_mask, inp.attention_mask[::-1]]).astype(bool)
    img, vid = inp.items
    items = [img, vid, vid, img]
    pos, _ = rope_index(ids, mask, cfg, np.array([img[1]] * 2), np.array([vid[1]] * 2), [1.0, 1.0])
    vision = pack_vision([p for _, _, p in items], np.array([g for _, g, _ in items]), cfg.vision)
    return ids, pos, mask, vision


def _forward(model, ids, pos, mask, vision):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, pos, mask, vision):
        m = nnx.merge(graphdef, state)
        return m.logits(m(ids, pos, mask, vision))

    return run(state, ids, pos, mask, vision)


def test_sharded_logits_equal_single_device_logits():
    directory, _ = tiny_checkpoint("qwen2_5_vl")
    single = tiny_port("qwen2_5_vl")
    ids, pos, mask, vision = _batch_of_four(single.config)
    expected = np.asarray(_forward(single, ids, pos, mask, vision))

    mesh = _mesh()
    sharded = load_pretrained(directory, mesh=mesh)
    kernel = sharded.layers.mlp.gate_proj.kernel[...]  # all layers stacked (model/stack.py)
    assert kernel.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    assert len(kernel.addressable_shards) == 8
    ids_s = jax.device_put(ids, batch_sharding(mesh, 2))
    mask_s = jax.device_put(mask, batch_sharding(mesh, 2))
    pos_s = jax.device_put(pos, batch_sharding(mesh, 3, batch_axis=1))
    vision_s = jax.device_put(vision, NamedSharding(mesh, PartitionSpec()))
    got = _forward(sharded, ids_s, pos_s, mask_s, vision_s)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(
        np.asarray(got), expected, atol=TOLERANCE * np.abs(expected).max(), rtol=0
    )


def test_constrain_pins_the_batch_axes_only_inside_a_layout():
    mesh = _mesh()
    fn = jax.jit(lambda x: constrain(x * 2, ("batch", None, "mlp")))
    x = np.ones((8, 3, 4), np.float32)
    outside = fn.lower(x).as_text()
    with activation_layout(mesh):
        inside = fn.lower(x).as_text()
        # 8 rows over data x fsdp (4 ways), the last axis over tensor.
        split = PartitionSpec(("data", "fsdp"), None, "tensor")
        assert fn(x).sharding.is_equivalent_to(NamedSharding(mesh, split), 3)
        # 2 rows do not divide 4 ways: rows and the unnamed axis are left to the partitioner
        # (Shardy's open dimension "{?}"), the last axis is still pinned over tensor.
        two_rows = fn.lower(x[:2]).as_text()
        assert '[{?}, {?}, {"tensor"}]' in two_rows
        assert "{?}" not in inside
        whole_rows = NamedSharding(mesh, PartitionSpec(None, None, "tensor"))
        assert fn(x[:2]).sharding.is_equivalent_to(whole_rows, 3)
    # The same jitted function is traced anew inside the layout and again outside it.
    assert "sharding_constraint" not in outside
    assert "sharding_constraint" in inside
    assert "sharding_constraint" not in fn.lower(x).as_text()
    one = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    with activation_layout(one):
        assert (
            "sharding_constraint"
            not in jax.jit(lambda x: constrain(x, ("batch",))).lower(x).as_text()
        )


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2), (2, 4, 1), (1, 8, 1)])
def test_embedding_lookup_hands_rows_over_by_token_with_the_gathers_values_and_gradients(shape):
    # Tables split along the embedding (fsdp) and along vocab (tensor, where the mesh has it);
    # the rows then laid out by batch. Values and gradients equal jnp.take's. Float32: the only
    # difference is the order of the loss's sum, far below 1e-5.
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(shape), ("data", "fsdp", "tensor"))
    keys = jax.random.split(jax.random.key(0), 3)
    table = jax.random.normal(keys[0], (96, 32), jnp.float32)
    ids = jax.random.randint(keys[1], (4, 10), 0, 96)
    weights = jax.random.normal(keys[2], (4, 10, 32), jnp.float32)
    table_spec = logical_to_spec(("vocab", "embed"), DEFAULT_RULES, mesh)
    table = jax.device_put(table, NamedSharding(mesh, table_spec))

    def loss(t, lookup):
        rows = constrain(lookup(t), ("batch", None, None))
        return jnp.sum(rows * weights)

    ours = jax.jit(
        jax.value_and_grad(lambda t: loss(t, lambda t: embedding_lookup(t, ids, t.dtype)))
    )
    plain = jax.jit(jax.value_and_grad(lambda t: loss(t, lambda t: jnp.take(t, ids, axis=0))))
    with activation_layout(mesh):
        assert "all_to_all" in ours.lower(table).as_text()  # the hand-over, not a gather
        (v, g), (v0, g0) = ours(table), plain(table)
        rows = jax.jit(lambda t: embedding_lookup(t, ids, jnp.bfloat16))(table)
    np.testing.assert_allclose(v, v0, rtol=TOLERANCE)
    np.testing.assert_allclose(g, g0, atol=TOLERANCE)
    assert rows.dtype == jnp.bfloat16
    np.testing.assert_array_equal(rows, jnp.take(table, ids, axis=0).astype(jnp.bfloat16))
    # Under the rollout's decode rules the table's embedding is whole: the plain gather.
    decode = tuple((name, None if name == "embed" else to) for name, to in DEFAULT_RULES)
    with activation_layout(mesh), activation_rules(decode):
        whole = jax.jit(lambda t: embedding_lookup(t, ids, t.dtype))
        assert "all_to_all" not in whole.lower(table).as_text()
    # 9 tokens do not divide over the batch's devices: the plain gather.
    with activation_layout(mesh):
        odd = jax.jit(lambda t: embedding_lookup(t, ids[:3, :3], t.dtype))
        assert "all_to_all" not in odd.lower(table).as_text()
        np.testing.assert_array_equal(odd(table), jnp.take(table, ids[:3, :3], axis=0))


def test_shared_prefix_layer_splits_completions_over_the_batch_axes():
    """Prompts [4, ...] and their completions [8, ...] both come out split over data x fsdp
    (4 ways), equal to the unsharded layer's output (float32: only reduction order differs)."""
    model = tiny_port("qwen2_5_vl")
    cfg = model.config.text
    rng = np.random.default_rng(0)
    xp = rng.normal(size=(4, 6, cfg.hidden_size)).astype(np.float32)
    xc = rng.normal(size=(8, 3, cfg.hidden_size)).astype(np.float32)
    s2p = np.repeat(np.arange(4, dtype=np.int32), 2)
    pos_p = np.broadcast_to(np.arange(6), (3, 4, 6))
    pos_c = np.broadcast_to(6 + np.arange(3), (3, 8, 3))
    mask_p = np.broadcast_to(np.tril(np.ones((6, 6), bool)), (4, 6, 6))
    mask_c = np.concatenate(
        [np.ones((8, 3, 6), bool), np.broadcast_to(np.tril(np.ones((3, 3), bool)), (8, 3, 3))],
        axis=2,
    )

    def run(m, xp, xc):
        rope_p, rope_c = m.rope(pos_p), m.rope(pos_c)
        first = stack.layer(m.layers, 0)
        return first.shared_prefix(xp, xc, rope_p, rope_c, mask_p, mask_c, s2p)

    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, xp, xc: run(nnx.merge(graphdef, state), xp, xc))
    expected = fn(state, xp, xc)
    mesh = _mesh()
    sharded = tiny_port("qwen2_5_vl")  # a fresh copy: shard_model changes it in place
    shard_model(sharded, mesh, DEFAULT_RULES)
    with activation_layout(mesh):
        got = fn(nnx.state(sharded), xp, xc)
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, None))
    assert all(g.sharding.is_equivalent_to(batch, 3) for g in got)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=TOLERANCE, rtol=0)
