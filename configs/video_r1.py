"""Video-R1 (Feng et al. 2025): Qwen2.5-VL-7B, an SFT stage on Video-R1-COT-165k, then T-GRPO on
Video-R1-260k with accuracy, format and length rewards and the temporal contrast.

    python -m jaxvrl.train --config=configs/video_r1.py --workdir=RUN_DIR \
        --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.train_files=/data/Video-R1-260k.json \
        --config.sft.train_files=/data/Video-R1-COT-165k.json --config.data.media_root=/data

What the released code did (tulerfeng/Video-R1; file:line), and the fields that hold it; most are
configs/base.py's defaults (marked "base"), which this recipe leaves as they are:
- RL batch: 4 processes x per_device_train_batch_size 1 x gradient_accumulation_steps 1 = 4
  prompts per optimizer step, G = 8 samples each (src/scripts/run_grpo_video.sh: nproc 4,
  --per_device_train_batch_size 1 --gradient_accumulation_steps 1 --num_generations 8):
  data.batch_size 4, train.micro_batches 1, rl.num_generations 8 (base).
- RL schedule: lr 1e-6, cosine over ONE EPOCH of Video-R1-260k (--num_train_epochs 1, ~65k
  updates of 4 prompts), no warm-up; the run was stopped after 1.2k steps (README.md:151), so
  its rate stayed near 1e-6: optim.schedule_steps 65,000, rl.steps 1,200; optim.learning_rate,
  schedule cosine, warmup_steps 0 (base). Weight decay 0.01, max_grad_norm 5, beta 0.04, 768
  completion tokens (run_grpo_video.sh): optim.weight_decay, optim.grad_clip, rl.beta,
  rl.max_completion_tokens (base).
- Sampling: temperature 1, top_p 0.95 (src/r1-v/src/open_r1/trainer/grpo_trainer.py:291-297):
  rl.top_p 0.95, rl.temperature (base).
- KL: k3 on ref - logp clamped to +-10 (grpo_trainer.py:564): rl.kl_clamp 10 (base).
- T-GRPO: G/2 = 4 shuffled-frame samples, bonus 0.3 when acc >= 0.8 x shuffled acc, on
  rewards > 0.1 (grpo_trainer.py:299, 611-624): rl.algorithm tgrpo; rl.shuffled_generations,
  rl.temporal (base). Length bonus 0.2 for a correct completion of 320..512 tokens
  (grpo_trainer.py:633-656): the length_bonus reward in rl.rewards; rl.length_bonus (base).
- SFT: 4 processes x 1 x gradient_accumulation_steps 2 = 8 sequences per update, lr 1e-6,
  transformers' default linear schedule without warm-up over one epoch (~20.6k updates),
  weight decay 0 (the default), max_grad_norm 5 (src/scripts/run_sft_video.sh); target =
  process + "\n" + solution, loss on the prompt too, system message "You are a helpful
  assistant" (src/r1-v/src/open_r1/sft_video.py:89, 137-141): the sft section, sft.batch_size 4
  x sft.micro_batches 2.
- Prompts: QUESTION_TEMPLATE and TYPE_TEMPLATE word for word (grpo.py:210-224; jaxvrl/data/
  templates.py), the vision item before the text, no system message in RL: the data section's
  prompt fields (base).
- Pixels: videos 128 x 28 x 28 per frame, 2 fps, 4..16 frames; images 4..256 x 28 x 28
  (src/qwen-vl-utils/src/qwen_vl_utils/vision_process.py:25-37): the data section's frame and
  pixel fields (base); frames resized with torchvision's antialiased bicubic
  (vision_process.py:310-315), which data/vision_inputs.py reproduces.

Departures from the released code, and why:
- Dataset sizes: the horizons use the nominal 260k and 165k records; with the exact files set
  optim.schedule_steps = ceil(N_rl / 4) and sft.steps = sft.schedule_steps = ceil(N_sft / 8).
- A plain bug fixed: a regression answer "nan" scored 1 (grpo.py:141-148: the relative error
  is NaN and max(0.0, nan) is 0.0); a non-finite number scores 0 here.
- A record whose media cannot be read is skipped and counted; the released trainer swapped in a
  fixed placeholder image or video (grpo_trainer.py:418-427).
- Several prompts of one step are sampled together (the released trainer took exactly one prompt
  per process); the maths per group is the same.
"""

from __future__ import annotations

import ml_collections

from configs import base
from jaxvrl.data import templates


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()  # its data, prompt, sampling and optimizer defaults are Video-R1's
    base.qwen_7b(config, "Qwen2.5-VL-7B")

    # Video-R1's SFT: one epoch of Video-R1-COT-165k, target = process + "\n" + solution,
    # trained on the prompt tokens too; 4 sequences x 2 micro-batches = 8 per update.
    config.sft.steps = 20625
    config.sft.train_on_prompt = True
    config.sft.learning_rate = 1e-6
    config.sft.batch_size = 4
    config.sft.micro_batches = 2
    config.sft.schedule = "linear"
    config.sft.warmup_steps = 0
    config.sft.warmup_ratio = 0.0
    config.sft.weight_decay = 0.0
    config.sft.grad_clip = 5.0
    config.sft.system_prompt = templates.VIDEO_R1_SFT_SYSTEM_PROMPT

    config.optim.schedule_steps = 65000  # one epoch of Video-R1-260k at 4 prompts per step

    rl = config.rl
    rl.steps = 1200
    rl.algorithm = "tgrpo"
    rl.top_p = 0.95
    rl.rewards = [["accuracy", 1.0], ["format", 1.0], ["length_bonus", 1.0]]
    return config
