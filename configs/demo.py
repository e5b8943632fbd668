"""Demo recipe: a tiny random Qwen2-VL learns a synthetic temporal video task on a CPU.

    python -m jaxvrl.data.inspect --config=configs/demo.py
    python -m jaxvrl.data.inspect --config=configs/demo.py:/tmp/my_demo_dir

    python -m jaxvrl.train --config=configs/demo.py --workdir=/tmp/jaxvrl_demo

The optional argument after the colon is the directory of the synthetic set (videos, images,
record files and model/ with the tokenizer and a tiny config.json); it is generated on first use
(`data.synthetic`), nothing is downloaded.

The Video-R1 recipe in miniature on a 2-core CPU (about 6 minutes): a tiny random model, an
SFT cold start on the image questions and 64 of the 512 videos with their reasoning (it learns
the <think>/<answer> format, to answer with an option letter and part of the task), then 200
T-GRPO steps on all training videos, 16 prompts per step. The task: does the square grow, shrink,
brighten or darken? Without the frame order only the pair (size or brightness) can be told, so
shuffled frames cap accuracy at about 0.5 (chance 0.25). 128 held-out videos are evaluated before
and after RL (`--config.seed` 0-4 on a 2-core AMD VM, 5.7-6.1 minutes: 0.81 -> 1.00,
0.74 -> 0.99, 0.63 -> 0.93, 0.69 -> 0.99, 0.64 -> 0.93: docs/demo.md).

`--config.data.synthetic.generation=qwen3_vl` runs it on a tiny random Qwen3-VL instead (the
same videos and records; only the model's config.json changes): after RL 1.000 on seeds 0-4, in
6.6-7.3 minutes a run against 5.7-6.1 for the Qwen2-VL demo that morning (docs/demo.md).
`--config.data.synthetic.generation=qwen3_5` on a tiny random Qwen3.5 (2 layers), its rollouts
sampled at temperature 1.5 (`rl.temperature_by_generation`): seeds 0-4 all meet the promise, in
6.9-7.7 minutes a run (docs/demo.md).
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict

from configs import base

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "jaxvrl", "demo")


def get_config(directory: str | None = None) -> ml_collections.ConfigDict:
    directory = directory or DEFAULT_DIR
    config = base.get_config()
    config.model.path = os.path.join(directory, "model")

    data = config.data
    data.train_files = os.path.join(directory, "train_videos.json")
    data.media_root = directory
    # Small inputs: 4 frames of 112 x 112 (16 merged tokens each, 2 fps), images of 112 x 112.
    # The fixed frame size keeps 16 tokens a frame on Qwen3-VL too (its 16-pixel patches round
    # the 112-pixel frames up to 128 x 128; the budgets below would give it 96 x 96).
    data.max_frames = 4
    data.resized_height = data.resized_width = 112
    data.video_min_pixels = 16 * base.TOKEN_PIXELS
    data.video_max_pixels = 16 * base.TOKEN_PIXELS
    data.video_total_pixels = 64 * base.TOKEN_PIXELS * 4
    data.image_max_pixels = 16 * base.TOKEN_PIXELS
    # A short reasoning prompt: the tiny tokenizer spends about one token per 3 characters.
    data.question_template = (
        "{question}\nThink inside <think> </think>, then answer inside <answer> </answer>."
    )
    data.batch_size = 16  # RL prompts per step (the SFT stage takes 4: sft.batch_size)
    # Every RL prompt is 201 tokens: a bucket of 208 instead of 256 cuts the padding the rollout
    # and the update compute on (RL step 1.78 -> 1.57 s on the AMD VM beside other work). Not
    # 232 here for Qwen3-VL's 225-token prompts: it moved Qwen2-VL's SFT examples from 256 to
    # 232, and that rounding alone ended seed 2 at 0.742 -> 0.922 (docs/demo.md). The rollout
    # re-pads the RL prompts to its own buckets (below), where 232 touches no Qwen2-VL shape.
    data.token_buckets = (192, 208, 256, 384)
    data.patch_buckets = (256, 512, 1024)
    data.num_workers = 0
    # Two RL batches decoded ahead by the reading thread while the device programs run (grain's
    # read buffer; base: 2 examples): the same batches in the same order, the RL step's wait
    # for data 0.10 -> 0.04 s (tiny Qwen3.5, seed 4, 20 RL steps, AMD VM; bench/RESULTS.md).
    data.read_buffer_size = 32
    # The synthetic set this config reads (jaxvrl/data/synthetic.py SyntheticSpec).
    data.synthetic = ml_collections.ConfigDict(
        {
            "enabled": True,
            "directory": directory,
            # 512: with 256 (about 11 per colour and change) some seeds never learnt one cell.
            "num_videos": 512,
            "num_eval_videos": 128,
            "num_images": 32,
            "video_size": (112, 112),
            "image_size": (112, 112),
            "seconds": 2.0,
            "video_fps": 8,
            "square": 24,
            "travel": 1.0,
            "video_task": "change",
            "cold_start_videos": 64,
            "balanced": True,
            "seed": 0,
            "generation": "qwen2_vl",
            # The tiny model (model/tiny.py tiny_hf_config arguments). At these widths the
            # checkpoints' init std of 0.02 leaves attention near uniform for hundreds of steps;
            # 0.1 (about 1/sqrt(width)) lets the random model learn the task in minutes.
            "model": {
                "hidden_size": 128,
                "num_layers": 2,
                "vision_depth": 4,
                "vision_width": 64,
                "initializer_range": 0.1,
            },
            # Qwen3-VL's and Qwen3.5's tower: their processors normalise with mean and std 0.5
            # where Qwen2-VL's use CLIP's (std about 0.27), so the same frames reach the tower
            # at about half the contrast. At Qwen2-VL's init the tiny tower then barely learnt
            # blue's and green's changes in the cold start (seed 4: after SFT, the distance
            # between the 4 changes' mean features 6.6 for blue against 71-74 for red and
            # yellow; every blue and green video answered alike, and RL left blue so). Its
            # init scaled by 0.5 / 0.27 (0.185) gives 189 for blue (docs/demo.md).
            # Qwen3.5 alternates Gated DeltaNet and attention layers: 2 layers (one of each;
            # 4 cost 12 minutes a run against 7). The attention layer is the decoder's only
            # reach across the video (most DeltaNet heads at init forget within a few tokens).
            # With 4 heads of 32 dims, half rotating, three of seeds 0-4 learnt the direction of
            # the size change; 8 heads of 16 dims, every dim rotating, with a 2-layer tower
            # (Qwen3.5's has no DeepStack: the decoder reads only its last layer), four, at
            # 6.6-7.4 minutes a run (docs/demo.md).
            "model_by_generation": {
                "qwen3_vl": {"vision_overrides": {"initializer_range": 0.185}},
                "qwen3_5": {
                    "num_layers": 2,
                    "vision_depth": 2,
                    "heads": 8,
                    "head_dim": 16,
                    "rotary_fraction": 1.0,
                    "vision_overrides": {"initializer_range": 0.185},
                },
            },
        }
    )

    config.demo = True
    config.model.init = "random"
    # One device of each process: one device alone, and under launch/local.sh (several
    # processes) data parallel over one device of each, so the multi-host path runs the same demo.
    config.mesh.devices_per_process = 1

    # SFT cold start: the images and 64 of the videos with their reasoning (Video-R1's CoT
    # subset), then T-GRPO on all 512 videos.
    config.sft.steps = 400
    config.sft.train_files = os.path.join(directory, "cold_start.json")
    config.sft.learning_rate = 1e-3
    config.sft.batch_size = 4

    # RL: 1e-3 (the SFT rate) collapses the policy within 40 steps; 3e-4 after a short warm-up.
    # 16 prompts per step: with 4 or 8 the policy turns deterministic on every video (0 or 8 of 8
    # right) before the vision tower has learnt the direction of the change, and learning stops
    # (measured from one SFT checkpoint at 0.56 held-out: 4 prompts x 300 steps with beta 0.04
    # 0.67, 8 x 500 0.64, 16 x 300 0.83). RL trains the vision tower: kept at its SFT weights
    # (rl.freeze_vision), 16 x 300 ends at 0.64.
    config.optim.learning_rate = 3e-4
    config.optim.warmup_steps = 10
    config.optim.schedule = "constant"
    config.optim.weight_decay = 0.0
    config.optim.grad_clip = 1.0

    rl = config.rl
    # 200 steps: on the balanced set held-out accuracy reaches its final value by RL step 50-150
    # on seeds 0 and 4 (evaluated every 50 of 300 steps: 0.875 -> 1.000 at step 50; 0.711 ->
    # 0.875, 0.953, 1.000 at steps 50, 100, 150, then flat), but 150 left seed 2 at 0.914 (one
    # cell, green growing, still wrong); 300 steps took 8.6-10.9 minutes.
    rl.steps = 200
    rl.algorithm = "tgrpo"
    rl.max_completion_tokens = 32
    rl.beta = 0.0
    # An entropy bonus keeps a cell the policy answers wrong on every sample from freezing there
    # (such a group has no signal): without it seed 2 answered all 8 held-out green growing
    # squares wrong from RL step ~100 on (0.781 -> 0.922); with 0.01, 0.781 -> 0.992, and seeds
    # 0, 1, 3, 4 end as before or within 0.008 (AMD VM, 2026-12-05; docs/demo.md).
    rl.entropy_coef = 0.01
    # The rollout's temperature by generation (rl.temperature unset: run_plan.rollout_temperature;
    # `--config.rl.temperature=T` sets one for every generation): 1.0 (Video-R1's) but for
    # Qwen3.5, 1.5. The update's log-probs take the same temperature; evaluation stays greedy.
    # Once RL learns a colour's size changes the policy turns deterministic within about 20
    # steps; a colour it settles on one answer for both directions leaves one cell wrong on every
    # sample and the other right on every sample, both groups without signal, and dynamic
    # sampling drops them, so the entropy bonus never reaches them either. At 1.0 tiny Qwen3.5
    # seed 1 froze green's shrinking squares on "grows" (0.750 -> 0.938); at 1.5 the policy
    # sharpens later and every seed 0-4 meets the promise. Qwen2-VL learns less at 1.5 (seeds 2
    # and 4: 0.930 -> 0.852 and 0.891): docs/demo.md, "Rollout temperature".
    rl.temperature = config_dict.placeholder(float)
    rl.temperature_by_generation = {"qwen3_5": 1.5}
    # DAPO dynamic sampling: once the policy is deterministic on most videos their groups carry
    # no signal; dropping them and rolling out one more batch keeps RL learning (AMD VM, merged
    # code: seed 0 0.531 -> 0.625 without, 0.531 -> 0.938 with, 7 min 14 s; docs/demo.md).
    rl.dynamic_sampling.enabled = True
    rl.dynamic_sampling.max_extra_rounds = 1

    # The rollout's prompt widths, which the RL update takes too: 208 for Qwen2-VL's 201-token
    # prompts, 232 for Qwen3-VL's and Qwen3.5's 225 (their timestamps), not 256.
    config.rollout.prompt_buckets = (192, 208, 232, 256, 384)
    config.rollout.patch_buckets = (512, 1024, 2048, 4096)
    config.train.logprob_chunk = 512
    config.checkpoint.every = 20
    config.checkpoint.keep = 2
    config.eval.files = os.path.join(directory, "eval.json")
    config.eval.video_max_pixels = 0  # evaluate at the training resolution
    return config
