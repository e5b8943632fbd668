"""SEED-Bench-R1 (Chen et al. 2025): GRPO vs SFT on Qwen2-VL-7B for video understanding of
egocentric tasks; option-letter accuracy is the only reward; evaluated on the L1 / L2 / L3
splits.

    python -m jaxvrl.train --config=configs/seed_bench_r1.py --workdir=RUN_DIR \
        --config.model.path=/ckpt/Qwen2-VL-7B-Instruct \
        --config.data.media_root=/data/SEED-Bench-R1 \
        --config.data.train_files=seed_bench_r1:/data/SEED-Bench-R1/annotations/training_6k.jsonl \
        --config.eval.files=seed_bench_r1:/data/SEED-Bench-R1/annotations/validation_L1.jsonl

For the paper's SFT baseline set --config.rl.steps=0 --config.sft.steps=47 (one epoch of
training_with_cot_6k at 128 sequences per update) with its file as sft.train_files.

What the released code did (TencentARC/SEED-Bench-R1; file:line), and the fields that hold it
(marked "base" where configs/base.py's default is the released value):
- GRPO batch: 8 processes x per_device_train_batch_size 1 x gradient_accumulation_steps 1 = 8
  prompts per optimizer step, one epoch of training_6k = 750 updates (scripts/grpo.sh):
  data.batch_size 8, rl.steps 750; train.micro_batches 1 (base).
- GRPO optimizer: lr 1e-6, beta 0.1 (grpo.sh); no schedule, decay or clip given, so
  transformers' defaults hold: linear decay without warm-up over the epoch, weight decay 0,
  max_grad_norm 1: configs/base.py trl_optimizer, rl.beta 0.1; optim.learning_rate (base).
  TRL's GRPOConfig defaults: G = 8, 256 completion tokens (the inference script also generates
  256, infer.py:198): rl.max_completion_tokens 256; rl.num_generations (base). Temperature 1,
  top_p 1 (src/open_r1_egoplan/trainer/grpo_trainer.py:282-288): rl.temperature, rl.top_p (base).
- KL: k3 on ref - logp clamped to +-11 (grpo_trainer.py:477): rl.kl_clamp 11.
- Reward: accuracy only (grpo.py:39-41): the first character of the first answer block against
  the solution's "<answer>X.</answer>" (grpo.py:85-99): rl.rewards first_letter.
- Prompt: question, newline, "A. option" lines, newline, then QUESTION_TEMPLATE (grpo.py:149,
  160); the progress video (when the record has one) then the current image, then the text
  (grpo.py:164-173); no system message: the data section's prompt fields from
  base.prompt_fields(data, "seed_bench_r1").
- Pixels: every image and video frame is resized to 256 x 256 -> smart_resize 252 x 252
  (qwen-vl-utils/src/qwen_vl_utils/vision_process_egoplan.py:351-352, 121-126, 295-300); 2 fps,
  4..16 frames (:33-35): data.resized_height / resized_width 252 for images and frames;
  data.fps, min_frames, max_frames (base).
- SFT baseline: lr 2e-5, cosine, warm-up ratio 0.1, 8 processes x 1 x gradient_accumulation
  16 = 128 sequences per update, one epoch (scripts/qwen2vl_sft_config.yaml, scripts/zero3.yaml
  num_processes 8): sft.batch_size 8 x sft.micro_batches 16.

Departures from the released code, and why:
- The accuracy's math_verify step (grpo.py:77-82, tried before the first-letter rule) is left
  out: on option letters it either agrees with the rule or matches answers the rule rejects.
- Options are shuffled with a per-record seeded generator (the released code calls Python's
  global `random`), so the same record gets the same order in every run.
- The SFT stage reads SEED-Bench-R1 records with our prompt and solution; the released SFT
  script's chain-of-thought targets (src/open_r1_egoplan/sft.py) are not reproduced.
- A record whose media cannot be read is skipped and counted.
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    base.qwen_7b(config, "Qwen2-VL-7B")
    base.trl_optimizer(config)  # over the stage's length: one epoch of training_6k

    data = config.data
    base.prompt_fields(data, "seed_bench_r1")
    data.resized_height = 252  # images and video frames alike
    data.resized_width = 252
    data.batch_size = 8  # prompts per step (8 processes x 1)

    # The SFT baseline (sft.steps = 0: off by default).
    config.sft.learning_rate = 2e-5
    config.sft.schedule = "cosine"
    config.sft.warmup_steps = 0
    config.sft.warmup_ratio = 0.1
    config.sft.batch_size = 8
    config.sft.micro_batches = 16

    rl = config.rl
    rl.steps = 750
    rl.max_completion_tokens = 256
    rl.beta = 0.1
    rl.kl_clamp = 11.0
    rl.rewards = [["first_letter", 1.0]]
    rl.accuracy_reward = "first_letter"
    config.eval.video_max_pixels = 0  # evaluation frames are 252 x 252 too
    config.checkpoint.every = 50
    return config
