"""Every recipe config loads and builds its whole pipeline (mesh, model, sampler, each stage's
data) on a tiny stand-in model, so a typo in a recipe fails here, not on a pod; an unknown
command-line override stops the trainer before any work."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import demo
from jaxvrl import rl_batch, train
from jaxvrl.data import pipeline, synthetic

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
    assert trainer.mesh.devices.size == 8 or config.mesh.shape["data"] == 1
    stages = [s.name for s in trainer.stages]
    assert "rl" in stages
    for stage in trainer.stages:
        stage_config = train.stage_config(config, stage.name)
        batch = next(iter(pipeline.build_dataset(stage_config)))
        assert batch["input_ids"].shape[0] == stage_config.data.batch_size
        if stage.name == "sft":
            assert batch["loss_mask"].sum() > 0
        else:
            settings = rl_batch.RLSettings.from_config(config.rl)
            prompts, counts, _ = rl_batch.rollout_prompts(
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
