"""Video-R1 (Feng et al. 2025): Qwen2.5-VL-7B, an SFT stage on Video-R1-COT-165k, then T-GRPO on
Video-R1-260k with accuracy, format and length rewards and the temporal contrast.

    python -m jaxvrl.train --config=configs/video_r1.py --workdir=RUN_DIR \
        --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.train_files=/data/Video-R1-260k.json \
        --config.sft.train_files=/data/Video-R1-COT-165k.json --config.data.media_root=/data
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    config.model.path = ""  # a local Qwen2.5-VL-7B(-Instruct) directory
    config.model.shape = "Qwen2.5-VL-7B"  # what jaxvrl.fit compiles without model.path
    # float32 master weights and Adam moments, bfloat16 matmuls (the PyTorch anchors' DeepSpeed
    # bf16 / AMP): a bfloat16 weight would round lr-1e-6 updates away.
    config.model.param_dtype = "float32"
    config.model.dtype = "bfloat16"
    config.model.remat = True
    config.model.vision_remat = True
    config.mesh.shape = {"data": 1, "fsdp": -1, "tensor": 1}

    data = config.data
    data.max_frames = 16
    data.video_min_pixels = 128 * base.TOKEN_PIXELS
    data.video_max_pixels = 128 * base.TOKEN_PIXELS
    data.batch_size = 4  # prompts per step

    # Video-R1's SFT: one epoch of Video-R1-COT-165k, target = process + "\n" + solution,
    # trained on the prompt tokens too. 4 sequences x 4 micro-batches = 16 per update.
    config.sft.steps = 10313
    config.sft.train_on_prompt = True
    config.sft.learning_rate = 1e-6

    config.optim.learning_rate = 1e-6
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 0
    config.optim.weight_decay = 0.01
    config.optim.grad_clip = 5.0
    config.train.micro_batches = 4

    rl = config.rl
    rl.steps = 1200
    rl.algorithm = "tgrpo"
    rl.num_generations = 8
    rl.shuffled_generations = 4
    rl.max_completion_tokens = 768
    rl.temperature = 1.0
    rl.top_p = 0.95
    rl.beta = 0.04
    rl.rewards = [["accuracy", 1.0], ["format", 1.0], ["length_bonus", 1.0]]
    rl.temporal = {"alpha": 0.3, "mu": 0.8, "rule": "ratio", "threshold": 0.1}
    rl.aggregation = "seq_mean_token_mean"
    config.checkpoint.every = 100
    return config
