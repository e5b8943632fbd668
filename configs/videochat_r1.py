"""VideoChat-R1 (Li et al. 2025): Qwen2.5-VL-7B trained with GRPO on spatio-temporal perception
tasks (temporal grounding on Charades-STA, grounded QA on NExT-GQA, tracking on GOT-10k), each
task scored by its own reward plus the format reward.

    python -m jaxvrl.train --config=configs/videochat_r1.py --workdir=RUN_DIR \
        --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct --config.data.media_root=/data \
        --config.data.train_files=charades_sta:/data/charades_train.json,nextgqa:/data/nextgqa_train.json,got10k:/data/got10k_train.json
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    config.model.path = ""
    config.model.param_dtype = "bfloat16"
    config.model.dtype = "bfloat16"
    config.model.remat = True
    config.mesh.shape = {"data": 1, "fsdp": -1, "tensor": 1}

    data = config.data
    data.fps = 2.0
    data.video_min_pixels = 16 * base.TOKEN_PIXELS
    data.video_max_pixels = 256 * base.TOKEN_PIXELS
    data.video_total_pixels = 3584 * base.TOKEN_PIXELS
    data.max_frames = 32
    data.batch_size = 8  # prompts per step

    config.optim.learning_rate = 1e-6
    config.optim.schedule = "cosine"
    config.optim.weight_decay = 0.01
    config.optim.grad_clip = 5.0

    rl = config.rl
    rl.steps = 1000
    rl.algorithm = "grpo"
    rl.num_generations = 8
    rl.max_completion_tokens = 1024
    rl.temperature = 1.0
    rl.beta = 0.04
    # Each sample scored by its task's reward (temporal IoU, option letter, tracking IoU).
    rl.rewards = [["task_accuracy", 1.0], ["task_format", 1.0], ["task_glue", 1.0]]
    rl.accuracy_reward = "task_accuracy"
    config.checkpoint.every = 100
    return config
