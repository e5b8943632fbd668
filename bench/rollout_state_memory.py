"""The rollout's cache under a recipe: a hybrid model's (Qwen3.5) attention keys/values plus its
DeltaNet layers' states, beside the keys/values of the same model with every layer full
attention (same widths and heads), for the rollout the fit check compiles.

    python bench/rollout_state_memory.py --config=configs/video_r1.py \\
        --config.model.shape=Qwen3.5-9B --topology=h100x8

The prompts (rows, padded length), the group size and the completion length are those of the
trainer's rollout program for the recipe's largest example (jaxvrl/fit/programs.py, as
`jaxvrl.fit` builds them); the cache is `group_decode.prefill`'s GroupCache, shapes from
jax.eval_shape (nothing allocated), in the recipe's compute dtype. Bytes are for the whole
rollout batch, and per chip with the prompts split over the mesh's batch shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
GIB = 1024**3


def cache_bytes(model_config, rows: int, length: int, group: int, new: int) -> dict[str, int]:
    """Bytes of each GroupCache field for `rows` prompts of `length` tokens and `group` samples
    of `new` tokens each."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxvrl.rollout import group_decode
    from model.qwen2_vl import Qwen2VL

    model = nnx.eval_shape(lambda: Qwen2VL(model_config, rngs=nnx.Rngs(0)))
    ids = jax.ShapeDtypeStruct((rows, length), jnp.int32)
    positions = jax.ShapeDtypeStruct((3, rows, length), jnp.int32)
    mask = jax.ShapeDtypeStruct((rows, length), jnp.bool_)
    graphdef, state = nnx.split(model)

    def run(state, ids, positions, mask):
        m = nnx.merge(graphdef, state)
        return group_decode.prefill(m, ids, positions, mask, None, group, new)[1]

    cache = jax.eval_shape(run, state, ids, positions, mask)
    return {
        field.name: int(getattr(cache, field.name).size * getattr(cache, field.name).dtype.itemsize)
        for field in dataclasses.fields(cache)
        if getattr(cache, field.name) is not None
    }


def main(argv: list[str]) -> int:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jaxvrl import run_plan
    from jaxvrl.fit import check, hardware, programs
    from jaxvrl.objectives import scoring
    from jaxvrl.parallel.mesh import mesh_from_config, rules_from_config
    from jaxvrl.parallel.placement import batch_axis_size
    from model.config import FULL_ATTENTION
    from model.sharding import state_shardings

    ours, rest = check._split_flags(argv)
    config, name = check._load_config(rest)
    target = hardware.compile_target(ours.get("topology", "h100x8"), None)
    model_config = check.model_shape(config)
    mesh = mesh_from_config(config.mesh, devices=target.devices)
    rules = rules_from_config(config.mesh.rules)
    largest = programs.largest_example(config.data, model_config.vision)
    stage = next(s for s in run_plan.plan_stages(config) if s.name == "rl")
    model = programs._abstract_model(config, model_config)
    from flax import nnx

    graphdef, state = nnx.split(model)
    state = programs._abstract(state, state_shardings(state, mesh, rules))
    plan = run_plan.plan_stage(config, stage, graphdef, state)
    batch = programs.pipeline_batch(plan.stage_config, model_config, largest, sft=False)
    prompts, counts, _ = scoring.rollout_prompts(batch, plan.scoring, model_config.vision)
    sampler = programs._abstract_sampler(model, mesh, config)
    static, args, active = sampler.prepare(state, prompts, counts, plan.sampling, seed=0)
    rows, length = args[1].shape
    group, new = active.shape[1], static.max_new_tokens
    shards = batch_axis_size(mesh, rules)

    t = model_config.text
    all_attention = model_config.replace(
        text=dataclasses.replace(t, layer_types=(FULL_ATTENTION,) * t.num_layers)
    )
    hybrid = cache_bytes(model_config, rows, length, group, new)
    dense = cache_bytes(all_attention, rows, length, group, new)
    report = {
        "config": name,
        "model": ours.get("shape") or config.model.get("shape"),
        "topology": target.name,
        "rollout": {"prompt_rows": rows, "prompt_tokens": length, "group": group, "new": new},
        "batch_shards": shards,
        "hybrid_bytes": hybrid,
        "all_attention_bytes": dense,
    }
    print(json.dumps(report))
    print(
        f"{name} on {target.name}: rollout of {rows} prompts x {length} tokens, groups of "
        f"{group}, {new} new tokens; cache split over {shards} batch shards"
    )
    for label, fields in (("hybrid", hybrid), ("all attention", dense)):
        total = sum(fields.values())
        parts = ", ".join(f"{k} {v / GIB:.3f}" for k, v in fields.items())
        print(
            f"  {label:<14} {total / GIB:8.3f} GiB ({total / shards / GIB:.3f} per chip): {parts}"
        )
    ratio = sum(hybrid.values()) / sum(dense.values())
    print(f"  hybrid / all attention: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
