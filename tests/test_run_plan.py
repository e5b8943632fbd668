"""What a config asks a run to do (jaxvrl/run_plan.py): which parameters each stage's optimizer
trains, each stage's batch size, the steps evaluated, and the sampler's settings."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from model_fixtures import tiny_port

from configs import demo, seed_bench_r1, video_r1, videochat_r1
from jaxvrl import cli, run_plan
from jaxvrl.data import pipeline


@pytest.fixture(scope="module")
def root(small_demo_set):
    return small_demo_set


@pytest.mark.parametrize("model_wide", [False, True])
def test_rl_freeze_vision_keeps_the_tower_in_rl_only(model_wide):
    """`rl.freeze_vision` freezes the vision tower in the RL stage and leaves the SFT stage
    training it; `model.freeze_vision` freezes it in both."""
    params = nnx.state(tiny_port("qwen2_vl"), nnx.Param)
    config = demo.get_config("/nonexistent")
    config.model.freeze_vision = model_wide
    config.rl.freeze_vision = True
    config.optim.warmup_steps = 0  # the first update moves what is trained
    grads = jax.tree.map(jax.numpy.ones_like, params)
    for name, vision_moves in (("sft", not model_wide), ("rl", False)):
        tx, _ = run_plan.optimizer_for(config, run_plan.Stage(name, 0, 10), params)
        # Jitted: op by op, the first parameter set compiled every update op eagerly (24 s).
        updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
        new = jax.jit(optax.apply_updates)(params, updates)
        vision = new["visual"]["patch_embed"]["kernel"][...]
        moved = np.abs(vision - params["visual"]["patch_embed"]["kernel"][...]).max() > 0
        assert moved == vision_moves, name
        text = new["layers"]["mlp"]["up_proj"]["kernel"][...]
        assert np.abs(text - params["layers"]["mlp"]["up_proj"]["kernel"][...]).max() > 0


def test_sft_batch_size_sets_the_sft_stage_batches_only(root):
    """`sft.batch_size` is the SFT stage's prompts per step; RL keeps `data.batch_size`."""
    config = demo.get_config(root)
    config.data.batch_size = 4
    config.sft.batch_size = 2
    for stage, size in (("sft", 2), ("rl", 4)):
        batch = next(iter(pipeline.build_dataset(run_plan.stage_config(config, stage))))
        assert np.asarray(batch["example_mask"]).shape == (size,), stage
        assert np.asarray(batch["example_mask"]).all(), stage


@pytest.mark.parametrize("every,steps", [(0, {3, 7}), (4, {0, 3, 4, 7}), (2, {0, 2, 3, 4, 6, 7})])
def test_evaluation_steps_are_the_start_of_rl_the_end_and_every_n(every, steps):
    config = demo.get_config("/nonexistent")
    config.eval.every = every
    stages = [run_plan.Stage("sft", 0, 3), run_plan.Stage("rl", 3, 7)]
    assert run_plan.evaluation_steps(config, stages) == steps


def test_rollout_config_carries_the_config_fields(tmp_path):
    config = demo.get_config(str(tmp_path))
    config.rollout.update(prompt_buckets=(64, 96), vision_chunk_patches=512)
    r = run_plan.rollout_config(config)
    assert r.prompt_buckets == (64, 96)
    assert r.vision_chunk_patches == 512
    assert r.patch_buckets == tuple(config.rollout.patch_buckets)


@pytest.mark.parametrize(
    "generation,override,expected",
    [
        ("qwen2_vl", None, 1.0),
        ("qwen3_vl", None, 1.0),
        ("qwen3_5", None, 1.5),
        ("qwen3_5", 1.2, 1.2),  # an explicit rl.temperature holds for every generation
        ("qwen2_vl", 0.7, 0.7),
    ],
)
def test_the_demo_rollout_temperature_is_per_generation_unless_set(generation, override, expected):
    """The demo leaves `rl.temperature` unset: the rollout samples at the temperature
    `rl.temperature_by_generation` gives its generation (1.0 where it names none), and the RL
    update's log-probs take the same one; evaluation keeps its own (greedy)."""
    config = demo.get_config("/nonexistent")
    config.data.synthetic.generation = generation
    if override is not None:
        config.rl.temperature = override
    assert run_plan.rollout_temperature(config) == expected
    assert run_plan.sampling_params(config).temperature == expected
    rl_stage = run_plan.Stage("rl", 400, 600)
    assert run_plan.loss_settings(config, rl_stage).temperature == expected
    assert run_plan.sampling_params(config, "eval", greedy=True).greedy


@pytest.mark.parametrize("recipe", [video_r1, videochat_r1, seed_bench_r1])
def test_the_papers_recipes_set_their_temperature(recipe):
    """The papers' recipes set `rl.temperature`, and their rollouts sample at it."""
    config = recipe.get_config()
    assert config.rl.temperature is not None
    assert run_plan.rollout_temperature(config) == float(config.rl.temperature)


def test_a_per_generation_temperature_for_no_generation_is_a_config_error():
    config = demo.get_config("/nonexistent")
    config.rl.temperature_by_generation = {"qwen3_5": 1.5, "qwen35": 1.2}
    with pytest.raises(cli.ConfigError, match="names qwen35: the generations are qwen2_vl"):
        run_plan.rollout_temperature(config)
