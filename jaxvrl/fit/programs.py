"""The programs a run of a config compiles, built from shapes for jaxvrl.fit: the trainer's own
functions (jaxvrl/run_plan.py, steps.py, rollout/) fed abstract inputs (ShapeDtypeStructs with
the run's shardings) of the largest shapes the config produces. No weight is read or allocated.

    largest = largest_example(config.data, model_config.vision)
    programs = stage_programs(config, stage, model_config, mesh, rules, largest)

The host-side batch code runs for real on zero-filled arrays of the largest example (the data
pipeline's Batcher, scoring.rollout_prompts and training_batch, microbatches.stack, the sampler's
input preparation), so the shapes and layouts are the ones a run produces.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any

# Source frame sizes tried for the largest video / image (16:9, 4:3, 1:1 and portrait): the one
# giving most patches under the config's pixel budget is the largest example.
SOURCE_SIZES = ((1080, 1920), (1080, 1440), (1080, 1080), (1920, 1080))


# ------------------------------------------------------------------------------------------------
# The largest example a config's data settings produce.


@dataclasses.dataclass(frozen=True)
class Largest:
    """One example of the largest shape: its vision items' grids (t, h, w), and token counts."""

    grids: tuple[tuple[int, int, int], ...]
    prompt_tokens: int  # vision pad tokens + text tokens
    sft_tokens: int  # prompt + SFT target

    @property
    def patches(self) -> int:
        return sum(t * h * w for t, h, w in self.grids)


def largest_example(
    data, vision, media: str = "video", text_tokens: int = 512, target_tokens: int = 512
) -> Largest:
    """The largest example of a config's `data` section for a model's vision config: a video of
    max_frames (and/or an image) at the largest size the pixel budgets allow."""
    from jaxvrl.data import media as media_lib
    from jaxvrl.data import vision_inputs as vi

    s = media_lib.FrameSampling.from_config(data)
    spec = vi.VisionSpec.of(vision)
    grids = []
    if "video" in media.split("+"):
        frames = media_lib.num_frames_to_sample(1 << 20, 30.0, s, spec)
        sizes = [media_lib.video_size(h, w, frames, s, spec) for h, w in SOURCE_SIZES]
        h, w = max(sizes, key=lambda hw: hw[0] * hw[1])
        t = -(-frames // spec.temporal_patch_size)
        grids.append((t, h // spec.patch_size, w // spec.patch_size))
    if "image" in media.split("+"):
        sizes = [
            vi.smart_resize(
                h, w, spec.factor, s.image_min_pixels, s.image_max_pixels, s.max_aspect_ratio
            )
            for h, w in SOURCE_SIZES
        ]
        h, w = max(sizes, key=lambda hw: hw[0] * hw[1])
        grids.append((1, h // spec.patch_size, w // spec.patch_size))
    if not grids:
        raise ValueError(f"--media must be video, image or video+image, got {media!r}")
    vision_tokens = sum(t * h * w for t, h, w in grids) // vision.merge_unit
    prompt = vision_tokens + text_tokens
    return Largest(tuple(grids), prompt, prompt + target_tokens)


def _example_row(largest: Largest, model_config, index: int, sft: bool, shuffled: bool) -> dict:
    """One decoded example in the pipeline's example-dict form (what jaxvrl.data.pipeline's
    workers hand the Batcher), zero-filled at the largest shape."""
    import numpy as np

    vision = model_config.vision
    length = largest.sft_tokens if sft else largest.prompt_tokens
    ids = np.zeros((length,), np.int32)
    vision_tokens = largest.patches // vision.merge_unit
    ids[1 : 1 + vision_tokens] = model_config.video_token_id
    loss_mask = np.zeros((length,), np.int32)
    if sft:
        loss_mask[largest.prompt_tokens :] = 1
    patches = np.zeros((largest.patches, vision.patch_dim), np.float32)
    row = {
        "num_tokens": length,
        "num_patches": largest.patches,
        "is_video": True,
        "input_ids": ids,
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (3, length)).copy(),
        "loss_mask": loss_mask,
        "rope_delta": 0,
        "prompt_length": largest.prompt_tokens,
        "patches": patches,
        "grid_thw": np.asarray(largest.grids, np.int32).reshape(-1, 3),
        "meta": {
            "uid": f"fit-{index}",
            "source": "fit",
            "data_type": "video",
            "problem_type": "multiple choice",
            "solution": "<answer>A</answer>",
            "process": "",
            "data_source": "fit",
            "origin": "fit",
            "extra": "{}",
            "media_kinds": ["video"] * len(largest.grids),
            "grid_thw": [list(g) for g in largest.grids],
            "num_frames": [g[0] * vision.temporal_patch_size for g in largest.grids],
        },
    }
    if shuffled:
        row["shuffled_patches"] = patches
    return row


def pipeline_batch(stage_config, model_config, largest: Largest, sft: bool) -> dict[str, Any]:
    """A batch of the data pipeline's Batcher (jaxvrl/data/batching.py) of largest examples."""
    from jaxvrl.data.batching import Batcher

    data = stage_config.data
    batcher = Batcher(
        batch_size=int(data.batch_size),
        token_buckets=tuple(sorted(int(b) for b in data.token_buckets)),
        patch_buckets=tuple(sorted(int(b) for b in data.patch_buckets)),
        pad_id=int(model_config.pad_token_id or 0),
        padding_side=str(data.padding_side),
        vision=model_config.vision,
        with_shuffled=data.shuffle_unit != "none",
    )
    shuffled = data.shuffle_unit != "none"
    rows = [
        _example_row(largest, model_config, i, sft, shuffled) for i in range(int(data.batch_size))
    ]
    return batcher(rows)


# ------------------------------------------------------------------------------------------------
# Programs.


@dataclasses.dataclass
class Program:
    """One compiled program of a run: its jitted function and abstract arguments, which resident
    state it takes as arguments, and how often a step runs it."""

    name: str
    jitted: Any
    args: tuple
    takes: tuple[str, ...]  # resident state among its arguments ("params", "opt_state", ...)
    makes: tuple[str, ...] = ()  # resident state it creates (its output)
    runs_per_step: int = 1
    while_trips: int = 1


def _abstract(tree: Any, shardings: Any) -> Any:
    import jax

    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _shape_only(tree: Any) -> Any:
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def _abstract_model(config, model_config):
    """The policy model built from shapes only (nnx.eval_shape: nothing allocated)."""
    from flax import nnx

    from jaxvrl import run_plan
    from model.qwen2_vl import Qwen2VL

    cfg = model_config.replace(
        param_dtype=str(config.model.param_dtype), dtype=str(config.model.dtype)
    )
    return nnx.eval_shape(
        lambda: Qwen2VL(cfg, rngs=nnx.Rngs(int(config.seed)), **run_plan.model_options(config))
    )


def _abstract_sampler(model, mesh, config):
    """The trainer's Sampler, placing its inputs as ShapeDtypeStructs instead of on devices."""
    import jax

    from jaxvrl import run_plan
    from jaxvrl.rollout.sampler import Sampler

    class AbstractSampler(Sampler):
        def _place(self, x, sharding, axis=None):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return AbstractSampler(model, mesh=mesh, config=run_plan.rollout_config(config))


def _fake_rollout(pipeline: dict[str, Any], samples: int, length: int):
    """A rollout of every prompt's G samples at full length (host arrays), for training_batch."""
    import numpy as np

    from jaxvrl.rollout.sampler import Rollout

    p = len(pipeline["example_mask"])
    g = samples // p
    zeros = np.zeros((samples,), np.int32)
    return Rollout(
        tokens=np.zeros((samples, length), np.int32),
        logprobs=np.zeros((samples, length), np.float32),
        mask=np.ones((samples, length), bool),
        lengths=zeros + length,
        finish_reason=zeros + 2,
        sample_to_prompt=np.repeat(np.arange(p), g).astype(np.int32),
        sample_index=np.tile(np.arange(g), p).astype(np.int32),
        prompt_lengths=zeros,
        num_steps=np.int32(length),
    )


def stage_programs(config, stage, model_config, mesh, rules, largest: Largest) -> Iterator:
    """The programs one stage of a run compiles, with the trainer's functions and layouts.

    Yields ("state", dict of resident abstract trees) first, then Program objects; a generator
    receives the compiled reference program's output sharding back (its output feeds the step).
    """
    import jax
    import numpy as np
    from flax import nnx

    from jaxvrl import microbatches, run_plan, steps
    from jaxvrl.objectives import scoring
    from jaxvrl.parallel import placement
    from model.sharding import state_shardings

    model = _abstract_model(config, model_config)
    graphdef, state = nnx.split(model)
    params = _abstract(state, state_shardings(state, mesh, rules))
    plan = run_plan.plan_stage(config, stage, graphdef, params)  # the trainer's own plan
    tx = plan.tx
    opt_shardings = steps.optimizer_state_shardings(tx, params)
    opt_state = _abstract(jax.eval_shape(tx.init, _shape_only(params)), opt_shardings)
    with_ref = plan.with_reference
    resident = {"params": params, "opt_state": opt_state}
    if with_ref:  # the trainer's reference copy (steps.reference_parameters), same layout
        ref_params = _abstract(
            jax.eval_shape(
                functools.partial(steps.reference_parameters, dtype=model.dtype),
                _shape_only(params),
            ),
            jax.tree.map(lambda x: x.sharding, params),
        )
        resident["ref_params"] = ref_params
    yield "state", resident

    yield Program(
        f"{stage.name}/optimizer_init",
        jax.jit(tx.init, out_shardings=opt_shardings),
        (params,),
        ("params",),
        makes=("opt_state",),
        runs_per_step=0,
    )
    # The train step's optimizer part alone (steps.apply_gradients, as the step calls it), for
    # the prediction's split; runs_per_step 0: the train step already holds it.
    grads = params  # the gradients: the parameters' shapes, dtypes and layout
    yield Program(
        f"{stage.name}/optimizer_update",
        jax.jit(
            functools.partial(steps.apply_gradients, tx=tx),
            donate_argnums=(0, 1),
            out_shardings=(jax.tree.map(lambda x: x.sharding, params), opt_shardings, None, None),
        ),
        (params, opt_state, grads, jax.ShapeDtypeStruct((), np.float32)),
        ("params", "opt_state"),
        runs_per_step=0,
    )
    stage_cfg = plan.stage_config
    micro = plan.micro_batches
    if stage.name == "sft":
        batch = pipeline_batch(stage_cfg, model_config, largest, sft=True)
        batches = [batch] * micro
    else:
        batch = pipeline_batch(stage_cfg, model_config, largest, sft=False)
        rl_settings = plan.scoring
        prompts, counts, _ = scoring.rollout_prompts(batch, rl_settings, model_config.vision)
        sampler = _abstract_sampler(model, mesh, config)
        static, args, _ = sampler.prepare(params, prompts, counts, plan.sampling, seed=0)
        yield Program(
            "rl/rollout",
            sampler.jitted(static),
            args,
            ("params",),
            runs_per_step=micro,
            while_trips=max(static.max_new_tokens - 1, 1),
        )
        g = rl_settings.num_generations
        p = len(batch["example_mask"])
        rollout = _fake_rollout(batch, p * g, int(config.rl.max_completion_tokens))
        scored = {"ordered": np.arange(p * g), "advantages": np.zeros((p * g,), np.float32)}
        batches = [scoring.training_batch(batch, rollout, scored)] * micro
    stacked = microbatches.stack(  # the trainer's call (Trainer._run_stage)
        batches,
        model_config.vision,
        config.data.patch_buckets,
        placement.batch_axis_size(mesh, rules),
    )
    inputs = _abstract(_shape_only(stacked), placement.stacked_shardings(stacked, mesh, rules))
    if stage.name == "rl":
        passes = plan.passes
        ref_jit = plan.logprobs
        logp_sharding = None
        if with_ref:
            logp_sharding = yield Program(
                "rl/reference_logprobs", ref_jit, (ref_params, inputs), ("ref_params",)
            )
        if passes > 1:
            got = yield Program(
                "rl/old_logprobs",
                ref_jit,
                (params, inputs),
                ("params",),
            )
            logp_sharding = logp_sharding or got
        logp = jax.eval_shape(ref_jit, _shape_only(params), _shape_only(inputs))
        if logp_sharding is None:  # refused by the compiler: the batch layout
            logp_sharding = placement.stacked_shardings({"logp": logp}, mesh, rules)["logp"]
        if with_ref:
            inputs["ref_logp"] = jax.ShapeDtypeStruct(
                logp.shape, logp.dtype, sharding=logp_sharding
            )
        if passes > 1:
            inputs["old_logp"] = jax.ShapeDtypeStruct(
                logp.shape, logp.dtype, sharding=logp_sharding
            )
    yield Program(
        f"{stage.name}/train_step",
        plan.train_step,
        (params, opt_state, inputs),
        ("params", "opt_state"),
        runs_per_step=plan.passes,
    )
