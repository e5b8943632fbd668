"""Every recipe config loads and builds its whole pipeline (mesh, model, sampler, each stage's
data) on a tiny stand-in model, so a typo in a recipe fails here, not on a pod; an unknown
command-line override stops the trainer before any work."""

import ast
import dataclasses
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import base, demo, seed_bench_r1, video_r1, videochat_r1
from jaxvrl import run_plan, train
from jaxvrl.data import pipeline, synthetic
from jaxvrl.objectives import scoring
from jaxvrl.rewards import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ["demo", "video_r1", "videochat_r1", "seed_bench_r1"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A small synthetic set (tokenizer, tiny model config, videos, images) plus records of
    every family pointing at its media."""
    root = str(tmp_path_factory.mktemp("recipes"))
    config = demo.get_config(root)
    config.data.synthetic.update(num_videos=4, num_images=2, num_eval_videos=2)
    synthetic.ensure_from_config(config)
    video = "videos/move_0000.mp4"
    files = {"video_r1": os.path.join(root, "train.json")}
    with open(os.path.join(root, "charades.json"), "w") as f:
        json.dump({"move_0000": {"duration": 2.0, "timestamps": [[0.2, 1.1]],
                                 "sentences": ["the square moves"]}}, f)  # fmt: skip
    with open(os.path.join(root, "nextgqa.json"), "w") as f:
        json.dump([{"id": "q1", "video": video, "question": "Where does it go?",
                    "options": ["(A) up", "(B) down"], "duration": 2.0,
                    "glue": [[0.0, 1.0]], "answer": "(B)"}], f)  # fmt: skip
    frames = os.path.join(root, "frames", "seq1")
    os.makedirs(frames)
    for i in range(10):
        Image.fromarray(np.full((56, 56, 3), 20 * i, np.uint8)).save(f"{frames}/{i:08d}.jpg")
    with open(os.path.join(root, "got10k.json"), "w") as f:
        json.dump([{"path": "frames/seq1", "object": "grey square",
                    "gt": [[0.1, 0.1, 0.5, 0.5]] * 8}], f)  # fmt: skip
    files["videochat_r1"] = ",".join(
        f"{kind}:{os.path.join(root, name)}"
        for kind, name in (("charades_sta", "charades.json"), ("nextgqa", "nextgqa.json"),
                           ("got10k", "got10k.json"))
    )  # fmt: skip
    os.makedirs(os.path.join(root, "videos", "ego"), exist_ok=True)
    os.makedirs(os.path.join(root, "images", "ego"), exist_ok=True)
    shutil.copy(os.path.join(root, video), os.path.join(root, "videos", "ego", "clip.mp4"))
    shutil.copy(
        os.path.join(root, "images", "squares_0000.png"),
        os.path.join(root, "images", "ego", "now.png"),
    )
    row = {"sample_id": "s1", "task_goal": "tidy", "question": "What next?", "answer": "open",
           "negative_answers": ["close", "wait", "stop", "go"], "video_source": "ego",
           "video_basename": "clip.mp4", "current_observation_basename": "now.png",
           "task_progress_metadata": [{"step": 1}], "task_level": "L1"}  # fmt: skip
    with open(os.path.join(root, "seed.jsonl"), "w") as f:
        f.write(json.dumps(row) + "\n" + json.dumps(row | {"sample_id": "s2"}) + "\n")
    files["seed_bench_r1"] = "seed_bench_r1:" + os.path.join(root, "seed.jsonl")
    files["demo"] = os.path.join(root, "train_videos.json")
    return root, files


def recipe(name: str, root: str, files: dict[str, str]):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config(root) if name == "demo" else module.get_config()
    # The stand-in: the synthetic set's tiny random model instead of a 7B checkpoint.
    config.model.path = os.path.join(root, "model")
    config.model.init = "random"
    config.data.train_files = files[name]
    config.sft.train_files = files["video_r1"] if name == "video_r1" else config.sft.train_files
    config.data.media_root = root
    config.data.num_workers = 0
    config.data.batch_size = 8 if config.data.batch_size > 4 else 4
    config.data.video_min_pixels = 4 * 28 * 28
    config.data.video_max_pixels = min(config.data.video_max_pixels, 16 * 28 * 28)
    config.data.video_total_pixels = 128 * 28 * 28
    config.data.max_frames = min(config.data.max_frames, 8)
    config.data.record_options.seed_bench_negatives = 3
    return config


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_mesh_model_sampler_and_every_stage_pipeline(name, media, tmp_path):
    root, files = media
    config = recipe(name, root, files)
    trainer = train.Trainer(config, str(tmp_path / "run"))
    # The 7B recipes span the 8 test devices; the demo takes one (mesh.devices_per_process).
    assert trainer.mesh.devices.size == (1 if config.mesh.devices_per_process == 1 else 8)
    stages = [s.name for s in trainer.stages]
    assert "rl" in stages
    for stage in trainer.stages:
        stage_config = run_plan.stage_config(config, stage.name)
        batch = next(iter(pipeline.build_dataset(stage_config)))
        assert batch["input_ids"].shape[0] == stage_config.data.batch_size
        if stage.name == "sft":
            assert batch["loss_mask"].sum() > 0
        else:
            settings = scoring.RLSettings.from_config(config.rl)
            prompts, counts, _ = scoring.rollout_prompts(
                batch, settings, trainer.model_config.vision
            )
            assert sum(counts) >= config.rl.num_generations
    trainer.checkpointer.close()


def test_unknown_override_stops_the_trainer_before_any_work(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "jaxvrl.train", "--config=configs/demo.py",
         f"--workdir={workdir}", "--config.rl.num_generatons=4"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "num_generatons" in result.stderr
    assert not workdir.exists()


# ----------------------------------------------------------------------------- released settings

# Prompts (SFT: sequences) per optimizer step of the released scripts: processes x
# per_device_train_batch_size x gradient_accumulation_steps.
RELEASED_PROMPTS_PER_STEP = {
    # Video-R1 src/scripts/run_grpo_video.sh (4 x 1 x 1), run_sft_video.sh (4 x 1 x 2).
    "video_r1": {"rl": 4, "sft": 8},
    # VideoChat-R1 training_scripts/run_grpo_video_task.sh (8 x 1 x 1).
    "videochat_r1": {"rl": 8},
    # SEED-Bench-R1 scripts/grpo.sh (8 x 1 x 1); qwen2vl_sft_config.yaml + zero3.yaml (8 x 1 x 16).
    "seed_bench_r1": {"rl": 8, "sft": 128},
}


@pytest.mark.parametrize("name", sorted(RELEASED_PROMPTS_PER_STEP))
def test_prompts_per_optimizer_step_equal_the_released_scripts(name, media):
    root, files = media
    config = recipe(name, root, files)
    if name == "seed_bench_r1":
        config.sft.steps = 47  # the SFT baseline (off by default)
    for stage in [s.name for s in run_plan.plan_stages(config)]:
        expected = RELEASED_PROMPTS_PER_STEP[name][stage]
        # The trainer's path: the stage's pipeline, read micro_batches_for(...) times per update.
        it = iter(pipeline.build_dataset(run_plan.stage_config(config, stage)))
        rows = sum(
            int(np.sum(next(it)["example_mask"]))
            for _ in range(run_plan.micro_batches_for(config, stage))
        )
        it.close()
        assert rows == expected == run_plan.prompts_per_step(config, stage), (name, stage)


def schedule(config, stage: str, steps: int):
    return run_plan.optimizer_for(config, run_plan.Stage(stage, 0, steps), None)[1]


def test_learning_rates_at_steps_0_600_1200_are_the_released_schedules():
    # Hand-computed from the released settings (see each recipe's docstring):
    # Video-R1 RL: cosine, no warm-up, horizon one epoch of 260k at 4 = 65,000 updates:
    #   1e-6 * (1 + cos(pi * s / 65000)) / 2.
    # Video-R1 SFT: linear (HF default) over 165k / 8 = 20,625: 1e-6 * (20625 - s) / 20625.
    # VideoChat-R1: linear over the stage's 1,000 steps; SEED-Bench-R1 GRPO: linear over 750.
    expected = {
        (video_r1, "rl"): [1e-6, 9.997897746394683e-07, 9.99159275336682e-07],
        (video_r1, "sft"): [1e-6, 9.709090909090909e-07, 9.418181818181818e-07],
        (videochat_r1, "rl"): [1e-6, 4e-07, 0.0],
        (seed_bench_r1, "rl"): [1e-6, 2e-07, 0.0],
    }
    for (module, stage), want in expected.items():
        config = module.get_config()
        lr = schedule(config, stage, int(config[stage].steps))
        got = [float(lr(s)) for s in (0, 600, 1200)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12, err_msg=module.__name__)
    # SEED-Bench-R1 SFT: 2e-5, cosine, warm-up ceil(0.1 * 47) = 5 updates: 0 at step 0,
    # 3/5 * 2e-5 at 3, half way down the cosine (21 of 42 steps) at 26, 0 from 47 on.
    lr = schedule(seed_bench_r1.get_config(), "sft", 47)
    got = [float(lr(s)) for s in (0, 3, 26, 600, 1200)]
    np.testing.assert_allclose(got, [0.0, 1.2e-5, 1e-5, 0.0, 0.0], rtol=1e-5, atol=1e-12)


def test_schedule_steps_sets_the_horizon_apart_from_the_stage():
    config = demo.get_config("/nonexistent")
    config.optim.update(schedule="linear", schedule_steps=100, warmup_steps=0, learning_rate=1.0)
    lr = schedule(config, "rl", 10)  # a 10-step stage on a 100-step schedule
    np.testing.assert_allclose([float(lr(s)) for s in (0, 10, 50)], [1.0, 0.9, 0.5], rtol=1e-6)
    config.optim.update(schedule_steps=0, warmup_ratio=0.2)  # horizon 10, warm-up 2
    lr = schedule(config, "rl", 10)
    np.testing.assert_allclose([float(lr(s)) for s in (0, 1, 2, 6)], [0, 0.5, 1.0, 0.5], rtol=1e-6)


def test_each_recipe_clamps_the_kl_estimator_as_released():
    for module, clamp in ((video_r1, 10.0), (videochat_r1, 0.0), (seed_bench_r1, 11.0)):
        config = module.get_config()
        settings = run_plan.loss_settings(config, run_plan.Stage("rl", 0, 1))
        assert settings.kl_clamp == clamp, module.__name__


def test_released_generation_and_pixel_limits():
    tokens = 28 * 28
    v, c, s = video_r1.get_config(), videochat_r1.get_config(), seed_bench_r1.get_config()
    assert [x.rl.max_completion_tokens for x in (v, c, s)] == [768, 1024, 256]
    assert (v.data.video_max_pixels, v.data.max_frames, v.data.image_max_pixels) == (
        128 * tokens, 16, 256 * tokens)  # fmt: skip
    assert (c.data.video_min_pixels, c.data.video_max_pixels, c.data.video_total_pixels) == (
        16 * tokens, 768 * tokens, 3584 * tokens)  # fmt: skip
    assert c.data.max_frames == 768 and c.data.text_first
    assert (s.data.resized_height, s.data.resized_width, s.data.max_frames) == (252, 252, 16)


def test_video_r1_sft_has_its_own_system_message_and_rl_the_templates_default():
    # Video-R1 src/r1-v/src/open_r1/sft_video.py:89 ("You are a helpful assistant", no full stop);
    # grpo.py:241-252 sends no system message (the chat template's own default applies).
    config = video_r1.get_config()
    assert run_plan.stage_config(config, "sft").data.system_prompt == "You are a helpful assistant"
    assert run_plan.stage_config(config, "rl").data.system_prompt == ""


# --------------------------------------------------------------------------- what recipes assign


def assigned_keys(fn) -> list[str]:
    """The dotted config keys `fn` assigns: `config.a.b = ...`, or `x.b = ...` after
    `x = config.a` (the recipes' `data` and `rl` aliases)."""

    def path(node: ast.expr, aliases: dict[str, list[str]]) -> list[str] | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.insert(0, node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == "config":
            return parts
        if isinstance(node, ast.Name) and node.id in aliases:
            return aliases[node.id] + parts
        return None

    aliases: dict[str, list[str]] = {}
    keys = []
    for node in ast.walk(ast.parse(inspect.getsource(fn))):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if isinstance(target, ast.Name):
            if (alias := path(node.value, aliases)) is not None:
                aliases[target.id] = alias
        elif key := path(target, aliases):
            keys.append(".".join(key))
    return keys


def lookup(d: dict, key: str):
    for part in key.split("."):
        d = d[part]
    return d


def with_helper(helper, *args):
    config = base.get_config()
    helper(config, *args)
    return config


# Every function that assigns config fields on top of the base, and the config it produces.
SETTERS = {
    "demo": (demo.get_config, lambda: demo.get_config("/nonexistent")),
    "video_r1": (video_r1.get_config, video_r1.get_config),
    "videochat_r1": (videochat_r1.get_config, videochat_r1.get_config),
    "seed_bench_r1": (seed_bench_r1.get_config, seed_bench_r1.get_config),
    "base.qwen_7b": (base.qwen_7b, lambda: with_helper(base.qwen_7b, "Qwen2.5-VL-7B")),
    "base.trl_optimizer": (base.trl_optimizer, lambda: with_helper(base.trl_optimizer)),
}


@pytest.mark.parametrize("name", sorted(SETTERS))
def test_a_recipe_assigns_each_key_once_and_only_where_it_differs_from_the_base(name):
    fn, build = SETTERS[name]
    keys = assigned_keys(fn)
    got, default = build().to_dict(), base.get_config().to_dict()
    for key in keys:
        lookup(got, key)  # every key read from the source is one the config holds
    # Two assignments of one key, or of a key and a dict that holds it.
    overlap = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
    twice = {b for a, b in overlap if a == b or b.startswith(a + ".") or a.startswith(b + ".")}
    assert not twice, f"{name} assigns a key twice (or inside a dict it assigned): {twice}"
    restated = []
    for key in keys:
        try:
            same = lookup(default, key) == lookup(got, key)
        except KeyError:  # a field the base does not have
            same = False
        restated += [key] if same else []
    assert not restated, f"{name} assigns the base's own values: {restated}"


def test_assigned_keys_reads_aliased_and_direct_assignments():
    keys = assigned_keys(video_r1.get_config)
    assert {"sft.steps", "optim.schedule_steps", "rl.top_p"} <= set(keys)
    assert "rl.beta" not in keys  # Video-R1's 0.04 is the base's


def test_length_bonus_fields_reach_the_length_bonus_reward_alone():
    config = video_r1.get_config()
    settings = scoring.RLSettings.from_config(config.rl)
    assert dict(dict(settings.reward_options)["length_bonus"]) == config.rl.length_bonus.to_dict()
    good = "<think>ok</think><answer>A</answer>"
    args = ([good] * 2, ["<answer>A</answer>"] * 2)
    fields = {
        "completion_lengths": [400, 100],
        "group_ids": [0, 0],
        "problem_type": ["multiple choice"] * 2,
    }
    _, released = registry.combine([("length_bonus", 1.0)], *args, **fields)
    np.testing.assert_allclose(released["length_bonus"], [0.2, 0.0])  # 320..512 tokens
    config.rl.length_bonus.update(min_length=64, bonus=0.5)
    options = {n: dict(v) for n, v in scoring.RLSettings.from_config(config.rl).reward_options}
    _, moved = registry.combine(
        [("length_bonus", 1.0), ("accuracy", 1.0)], *args, options=options, **fields
    )
    np.testing.assert_allclose(moved["length_bonus"], [0.5, 0.5])
    np.testing.assert_allclose(moved["accuracy"], [1.0, 1.0])  # the options reach no other reward


# What each paper recipe resolves to, inherited from the base or set by the recipe (the values
# and their sources are in each recipe's docstring): a change to the base that would move a
# paper's recipe off its released settings fails here.
TOKENS = 28 * 28
RELEASED = {
    "video_r1": {
        "data.batch_size": 4, "train.micro_batches": 1, "rl.num_generations": 8,
        "optim.learning_rate": 1e-6, "optim.schedule": "cosine", "optim.schedule_steps": 65000,
        "optim.warmup_steps": 0, "optim.weight_decay": 0.01, "optim.grad_clip": 5.0,
        "rl.steps": 1200, "rl.beta": 0.04, "rl.max_completion_tokens": 768,
        "rl.temperature": 1.0, "rl.top_p": 0.95, "rl.kl_clamp": 10.0, "rl.algorithm": "tgrpo",
        "rl.shuffled_generations": 4,
        "rl.temporal": {"alpha": 0.3, "mu": 0.8, "rule": "ratio", "threshold": 0.1},
        "rl.length_bonus": {"min_length": 320, "max_length": 512, "bonus": 0.2, "threshold": 0.1},
        "data.fps": 2.0, "data.min_frames": 4, "data.max_frames": 16,
        "data.video_min_pixels": 128 * TOKENS, "data.video_max_pixels": 128 * TOKENS,
        "data.image_min_pixels": 4 * TOKENS, "data.image_max_pixels": 256 * TOKENS,
        "data.system_prompt": "", "data.text_first": False,
        "sft.steps": 20625, "sft.learning_rate": 1e-6, "sft.schedule": "linear",
        "sft.weight_decay": 0.0, "sft.grad_clip": 5.0, "sft.train_on_prompt": True,
    },
    "videochat_r1": {
        "data.batch_size": 8, "train.micro_batches": 1, "rl.num_generations": 8,
        "rl.max_completion_tokens": 1024, "optim.learning_rate": 1e-6, "optim.schedule": "linear",
        "optim.warmup_steps": 0, "optim.weight_decay": 0.0, "optim.grad_clip": 1.0,
        "rl.beta": 0.04, "rl.temperature": 1.0, "rl.top_p": 1.0, "rl.kl_clamp": 0.0,
        "rl.algorithm": "grpo", "data.fps": 2.0, "data.min_frames": 4, "data.max_frames": 768,
        "data.video_min_pixels": 16 * TOKENS, "data.video_max_pixels": 768 * TOKENS,
        "data.video_total_pixels": 3584 * TOKENS, "data.record_options.got10k_frames": 7,
        "data.system_prompt": "", "data.text_first": True,
    },
    "seed_bench_r1": {
        "data.batch_size": 8, "train.micro_batches": 1, "rl.steps": 750,
        "optim.learning_rate": 1e-6, "optim.schedule": "linear", "optim.warmup_steps": 0,
        "optim.weight_decay": 0.0, "optim.grad_clip": 1.0, "rl.beta": 0.1,
        "rl.num_generations": 8, "rl.max_completion_tokens": 256, "rl.temperature": 1.0,
        "rl.top_p": 1.0, "rl.kl_clamp": 11.0, "rl.algorithm": "grpo", "data.fps": 2.0,
        "data.min_frames": 4, "data.max_frames": 16, "data.resized_height": 252,
        "data.resized_width": 252, "data.system_prompt": "", "sft.learning_rate": 2e-5,
        "sft.schedule": "cosine", "sft.warmup_ratio": 0.1, "sft.batch_size": 8,
        "sft.micro_batches": 16,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_each_paper_recipe_resolves_to_its_released_values(name):
    config = importlib.import_module(f"configs.{name}").get_config().to_dict()
    got = {key: lookup(config, key) for key in RELEASED[name]}
    assert got == RELEASED[name]


def _programs(gen) -> list:
    """Every Program a fit stage generator yields (None sent back: no compiled sharding)."""
    out, value = [], next(gen)
    while True:
        out.append(value)
        try:
            value = gen.send(None)
        except StopIteration:
            return out[1:]  # ("state", ...) first


@pytest.mark.parametrize("name", [*RECIPES, "seed_bench_r1_sft"])
def test_trainer_and_fit_check_run_one_plan_per_stage(name, media, tmp_path, monkeypatch):
    """The trainer and jaxvrl.fit take each stage's plan from run_plan.plan_stage: the same
    pipeline config, micro-batches, passes, optimizer, loss, scoring and sampling settings, and
    the fit check compiles the plan's own train-step and log-prob programs with that many
    micro-batches (SEED-Bench-R1's SFT baseline: 16, sft.micro_batches)."""
    from jaxvrl.fit import programs
    from jaxvrl.parallel.mesh import mesh_from_config, rules_from_config

    root, files = media
    config = recipe(name.removesuffix("_sft"), root, files)
    if name == "seed_bench_r1_sft":
        config.rl.steps, config.sft.steps = 0, 47
        config.sft.train_files = files["video_r1"]
    plans: dict[str, list] = {"trainer": [], "fit": []}
    plan_stage = run_plan.plan_stage
    caller = {"now": "trainer"}

    def recording(*args, **kwargs):
        plan = plan_stage(*args, **kwargs)
        plans[caller["now"]].append(plan)
        return plan

    monkeypatch.setattr(run_plan, "plan_stage", recording)
    trainer = train.Trainer(config, str(tmp_path / "run"))
    for stage in trainer.stages:  # the trainer's own stage start, with no step to take
        trainer._run_stage(dataclasses.replace(stage, last=stage.first), None, None)
    trainer.checkpointer.close()
    caller["now"] = "fit"
    mesh = mesh_from_config(config.mesh)
    largest = programs.largest_example(config.data, trainer.model_config.vision, "video", 16, 8)
    fitted = []
    for stage in trainer.stages:
        fitted.append(
            _programs(
                programs.stage_programs(
                    config,
                    stage,
                    trainer.model_config,
                    mesh,
                    rules_from_config(config.mesh.rules),
                    largest,
                )  # fmt: skip
            )
        )
    assert len(plans["trainer"]) == len(plans["fit"]) == len(trainer.stages)
    for ours, theirs, stage_programs in zip(plans["trainer"], plans["fit"], fitted, strict=True):
        assert ours.stage.name == theirs.stage.name
        for field in ("micro_batches", "passes", "loss", "with_reference", "scoring",
                      "sampling", "dynamic_sampling"):  # fmt: skip
            assert getattr(ours, field) == getattr(theirs, field), field
        assert ours.stage_config.to_dict() == theirs.stage_config.to_dict()
        assert ours.micro_batches == run_plan.micro_batches_for(config, ours.stage.name)
        step = next(p for p in stage_programs if p.name.endswith("/train_step"))
        assert step.jitted is theirs.train_step and step.runs_per_step == theirs.passes
        stacked = step.args[2]["prompt_ids" if theirs.is_rl else "input_ids"]
        assert stacked.shape[0] == theirs.micro_batches
        for p in stage_programs:
            if p.name.endswith("logprobs"):
                assert p.jitted is theirs.logprobs
    if name == "seed_bench_r1_sft":
        assert [p.micro_batches for p in plans["fit"]] == [16]
