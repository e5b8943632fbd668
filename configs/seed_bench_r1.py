"""SEED-Bench-R1 (Chen et al. 2025): GRPO vs SFT on Qwen2-VL-7B for video understanding of
egocentric tasks; option-letter accuracy is the only reward; evaluated on the L1 / L2 / L3
splits. Each frame is resized to 252 x 252 (from 256 x 256), 2 fps, 4 to 16 frames.

    python -m jaxvrl.train --config=configs/seed_bench_r1.py --workdir=RUN_DIR \
        --config.model.path=/ckpt/Qwen2-VL-7B-Instruct \
        --config.data.media_root=/data/SEED-Bench-R1 \
        --config.data.train_files=seed_bench_r1:/data/SEED-Bench-R1/annotations/training_6k.jsonl \
        --config.eval.files=seed_bench_r1:/data/SEED-Bench-R1/annotations/validation_L1.jsonl

For the SFT baseline of the paper, set --config.rl.steps=0 --config.sft.steps=750.
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    config.model.path = ""
    config.model.shape = "Qwen2-VL-7B"  # what jaxvrl.fit compiles without model.path
    # float32 master weights and Adam moments, bfloat16 matmuls (the PyTorch anchors' DeepSpeed
    # bf16 / AMP): a bfloat16 weight would round lr-1e-6 updates away.
    config.model.param_dtype = "float32"
    config.model.dtype = "bfloat16"
    config.model.remat = True
    config.model.vision_remat = True
    config.mesh.shape = {"data": 1, "fsdp": -1, "tensor": 1}

    data = config.data
    data.fps = 2.0
    data.min_frames = 4
    data.max_frames = 16
    data.resized_height = 252
    data.resized_width = 252
    data.batch_size = 8  # prompts per step

    config.optim.learning_rate = 1e-6
    config.optim.schedule = "cosine"
    config.optim.weight_decay = 0.01

    rl = config.rl
    rl.steps = 750
    rl.algorithm = "grpo"
    rl.num_generations = 8
    rl.max_completion_tokens = 768
    rl.beta = 0.1
    rl.rewards = [["option_letter", 1.0]]
    rl.accuracy_reward = "option_letter"
    config.eval.video_max_pixels = 0  # evaluation frames are 252 x 252 too
    config.checkpoint.every = 50
    return config
