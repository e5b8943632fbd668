"""On 8 simulated CPU devices (data 2 x fsdp 2 x tensor 2) the port gives single-device logits."""

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from model_fixtures import tiny_checkpoint, tiny_port

from model import parity
from model.hf import load_pretrained
from model.packing import pack_vision
from model.rope import rope_index
from model.sharding import DEFAULT_RULES, batch_sharding, logical_to_spec

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
    kernel = sharded.layers[0].mlp.gate_proj.kernel[...]
    assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
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
