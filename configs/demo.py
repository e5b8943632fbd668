"""Demo recipe: a tiny random Qwen2-VL learns the synthetic moving-square task on a CPU.

    python -m jaxvrl.data.inspect --config=configs/demo.py
    python -m jaxvrl.data.inspect --config=configs/demo.py:/tmp/my_demo_dir

The optional argument after the colon is the directory of the synthetic set (videos, images,
train.json and model/ with the tokenizer and a tiny config.json); it is generated on first use
(`data.synthetic`), nothing is downloaded. This file holds the data settings; the trainer issue
completes the model and RL sections.
"""

from __future__ import annotations

import os

import ml_collections

from configs import base

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "jaxvrl", "demo")


def get_config(directory: str | None = None) -> ml_collections.ConfigDict:
    directory = directory or DEFAULT_DIR
    config = base.get_config()
    config.model.path = os.path.join(directory, "model")

    data = config.data
    data.train_files = os.path.join(directory, "train.json")
    data.media_root = directory
    # Small inputs: 4 frames of 112 x 112 (16 merged tokens each), images of 112 x 112.
    data.fps = 2.0
    data.min_frames = 4
    data.max_frames = 4
    data.video_min_pixels = 16 * base.TOKEN_PIXELS
    data.video_max_pixels = 16 * base.TOKEN_PIXELS
    data.video_total_pixels = 64 * base.TOKEN_PIXELS * 4
    data.image_min_pixels = 4 * base.TOKEN_PIXELS
    data.image_max_pixels = 16 * base.TOKEN_PIXELS
    # A short reasoning prompt: the tiny tokenizer spends about one token per 3 characters.
    data.question_template = (
        "{question}\nThink inside <think> </think>, then answer inside <answer> </answer>."
    )
    data.batch_size = 4
    data.token_buckets = (192, 256, 384)
    data.patch_buckets = (256, 512, 1024)
    data.num_workers = 0
    data.shuffle_unit = "frame"
    # The synthetic set this config reads (jaxvrl/data/synthetic.py SyntheticSpec).
    data.synthetic = ml_collections.ConfigDict(
        {
            "enabled": True,
            "directory": directory,
            "num_videos": 64,
            "num_images": 32,
            "video_size": (112, 112),
            "image_size": (112, 112),
            "seconds": 2.0,
            "video_fps": 8,
            "square": 24,
            "seed": 0,
            "generation": "qwen2_vl",
        }
    )

    config.rl.algorithm = "tgrpo"
    config.rl.num_generations = 4
    config.rl.max_completion_tokens = 64
    return config
