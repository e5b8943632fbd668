"""VideoChat-R1 (Li et al. 2025): Qwen2.5-VL-7B trained with GRPO on spatio-temporal perception
tasks (temporal grounding on Charades-STA, grounded QA on NExT-GQA, tracking on GOT-10k), each
sample scored by its task's three rewards.

    python -m jaxvrl.train --config=configs/videochat_r1.py --workdir=RUN_DIR \
        --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct --config.data.media_root=/data \
        --config.data.train_files=charades_sta:/data/charades_train.json,nextgqa:/data/nextgqa_train.json,got10k:/data/got10k_train.json

What the released code did (OpenGVLab/VideoChat-R1; file:line), and the fields that hold it
(marked "base" where configs/base.py's default is the released value):
- Batch: 8 processes x per_device_train_batch_size 1 x gradient_accumulation_steps 1 = 8
  prompts per optimizer step, G = 8, 1,024 completion tokens (training_scripts/
  run_grpo_video_task.sh): data.batch_size 8, rl.max_completion_tokens 1024;
  train.micro_batches 1, rl.num_generations 8 (base).
- Optimizer: the script sets no learning rate, schedule, decay or clip, so TRL 0.15.1's
  GRPOConfig / transformers defaults hold (requirements.txt: trl==0.15.1): lr 1e-6, linear
  decay without warm-up over one epoch, weight decay 0, max_grad_norm 1, beta 0.04:
  configs/base.py trl_optimizer; rl.beta (base).
- Sampling: temperature 1, top_p 1 (src/open_r1/trainer/grpo_tasks_trainer.py:343-349):
  rl.temperature, rl.top_p (base).
- KL: k3 without a clamp (grpo_tasks_trainer.py:535): rl.kl_clamp 0.
- Rewards (src/open_r1/grpo_tasks.py:46, 513-523, summed per task at grpo_tasks_trainer.py:545,
  577): temporal grounding = tg_iou + tg_format; grounded QA = gqa_iou (glue intervals of the
  record) + gqa_format (think, answer and glue tags, a valid glue list) + gqa_reward (option
  letter); tracking = tracking_iou + tracking_format (a list of 8 boxes): rl.rewards
  task_accuracy + task_format + task_glue (jaxvrl/rewards/).
- Prompts: QUESTION_TEMPLATE_TG / _GQA / _TRACK word for word with the options as
  str(list) and the tracking prompt's initial box str(gt[0]) (grpo_tasks_trainer.py:66-99,
  418-427), the text BEFORE the video, no system message (:428-439); Charades sentences
  lower-cased without their full stop (grpo_tasks.py:564-566): the data section's prompt fields
  from base.prompt_fields(data, "videochat_r1").
- Pixels: each video at most 3,584 x 28 x 28 pixels in all, frames between 16 and 768 x 28 x 28
  (grpo_tasks_trainer.py:434-435; src/open_r1/trainer/yza_vision_process.py:34-39, 312), 2 fps,
  4..768 frames: data.video_total_pixels / video_min_pixels / video_max_pixels / max_frames;
  data.fps, data.min_frames (base). GOT-10k: 7 frames (first, 5 evenly spaced, last;
  grpo_tasks.py:614-622): data.record_options.got10k_frames (base).

Hardware: the fit check (python -m jaxvrl.fit --config=configs/videochat_r1.py --topology=...)
passes on v5p:2x2x1 and h100x8 as configured. On v6e:2x4 (32 GB chips) one update of 64
samples of ~7,700 tokens does not fit; add --config.data.batch_size=2
--config.train.micro_batches=4: the same 8 prompts per update, rolled out and differentiated 2 at
a time, the gradients accumulated exactly (jaxvrl/steps.py), so the update is the same
(bench/RESULTS.md, fit check).

Departures from the released code, and why:
- Horizon: the released linear schedule spans one epoch of its three files (N / 8 updates);
  the GOT-10k file is not public in that form, so the horizon here is rl.steps (1,000).
  With the files at hand set optim.schedule_steps = rl.steps = ceil(N / 8).
- Plain bugs fixed: a point span (start == end on both sides) crashed the step (tg_iou leaves
  `iou` unbound, grpo_tasks.py:322-327) and scores 0; "Answer: D" read as "A" (the first capital
  A-G, grpo_tasks.py:225) reads as "D".
- Parsing reads what a model writes (issue 14): spans and glue take signed numbers and
  scientific notation, any whitespace around "to"/"and"; glue accepts any literal list of
  [s, e] / (s, e) pairs (the released regex, grpo_tasks.py:92, rejects signs, exponents, lists
  and a space after '['); tracking boxes must hold numbers (there, 4 strings pass the format).
- GOT-10k frames are resized once, with Pillow, to the final size; the released code resized
  each frame with Pillow to a multiple of 28 near its own size, then the stack with
  torchvision (yza_vision_process.py:432-478).
- A record whose media cannot be read is skipped and counted; several prompts of one step are
  sampled together (the released trainer supports one per process, :463).
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    base.qwen_7b(config, "Qwen2.5-VL-7B")
    base.trl_optimizer(config)  # over the stage's length (see the departures above)

    data = config.data
    base.prompt_fields(data, "videochat_r1")
    data.max_frames = 768
    data.video_min_pixels = 16 * base.TOKEN_PIXELS
    data.video_max_pixels = 768 * base.TOKEN_PIXELS
    data.video_total_pixels = 3584 * base.TOKEN_PIXELS
    data.batch_size = 8  # prompts per step (8 processes x 1)

    rl = config.rl
    rl.steps = 1000
    rl.max_completion_tokens = 1024
    rl.kl_clamp = 0.0
    # Each sample scored by its task's rewards (temporal IoU / option letter / tracking IoU, the
    # task's format, and grounded QA's glue IoU).
    rl.rewards = [["task_accuracy", 1.0], ["task_format", 1.0], ["task_glue", 1.0]]
    rl.accuracy_reward = "task_accuracy"
    return config
