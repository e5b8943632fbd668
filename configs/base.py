"""The library's defaults, and the blocks the 7B recipes share. A recipe's `get_config()` starts
from `get_config()` here and assigns only what differs from it (tests/test_configs.py checks that
no assignment restates a default); its docstring names every released value it relies on, set or
inherited. Every value a run depends on is a field, overridable from the command line
(`--config.data.max_frames=32`).

Where a paper's value was needed as a default, it is Video-R1's (configs/video_r1.py cites each):
2 fps, 4 to 16 frames, 128*28*28 pixels per video frame, images between 4*28*28 and 256*28*28
pixels; G = 8, 768 completion tokens, beta 0.04, the KL estimator clamped to +-10; lr 1e-6,
cosine, weight decay 0.01, gradients clipped to norm 5.
"""

from __future__ import annotations

import ml_collections

from jaxvrl.data import templates

# Pixel counts in units of one merged vision token (patch 14 x merge 2 = 28 pixels a side).
TOKEN_PIXELS = 28 * 28


def prompt_fields(data: ml_collections.ConfigDict, style: str) -> None:
    """Copies a released recipe's prompt (jaxvrl/data/templates.py STYLES: "video_r1",
    "seed_bench_r1", "videochat_r1") into a `data` section, every string overridable."""
    chosen = templates.STYLES[style]
    data.question_template = chosen.question_template
    data.type_instructions = ml_collections.ConfigDict(dict(chosen.type_instructions))
    data.problem_formats = ml_collections.ConfigDict(dict(chosen.problem_formats))
    data.text_first = chosen.text_first
    data.system_prompt = chosen.system_prompt


def data_config() -> ml_collections.ConfigDict:
    """The `data` section: record files, frame sampling, pixel budgets, prompts, batching."""
    d = ml_collections.ConfigDict()
    # Record files: one path or a comma-separated list. A path may carry its format as a prefix
    # ("charades_sta:/data/charades.json"); otherwise the format is detected from the content.
    d.train_files = ""
    d.media_root = ""  # relative media paths in the records start here

    # Frame sampling (qwen-vl-utils `smart_nframes`).
    d.fps = 2.0
    d.min_frames = 4
    d.max_frames = 16
    d.frame_factor = 2  # sampled frame counts are multiples of this
    d.frame_folder_fps = 2.0  # frame rate at which frame folders were extracted

    # Pixel budgets (qwen-vl-utils `fetch_video` / `fetch_image`).
    d.video_min_pixels = 128 * TOKEN_PIXELS
    d.video_max_pixels = 128 * TOKEN_PIXELS
    d.video_total_pixels = int(128000 * TOKEN_PIXELS * 0.9)  # cap across all frames of a video
    d.video_min_pixels_slack = 1.05  # the total cap never pushes a frame below min * slack
    d.image_min_pixels = 4 * TOKEN_PIXELS
    d.image_max_pixels = 256 * TOKEN_PIXELS
    d.max_aspect_ratio = 200.0
    # A fixed size for every image and video frame, rounded to multiples of 28 (SEED-Bench-R1:
    # 256 x 256 -> 252 x 252); 0 = off.
    d.resized_height = 0
    d.resized_width = 0
    d.decode_threads = 1  # decord threads per worker process

    # Prompts (jaxvrl/data/templates.py): the question template, per-type instructions and
    # problem formats, the text's place (before or after the vision items) and the system
    # message ("" = the chat template's own default). Video-R1's words by default.
    prompt_fields(d, "video_r1")
    # SFT: append the target (prompt tokens get loss_mask 0, target tokens 1).
    d.sft_target = False
    d.sft_target_template = "{process}\n{solution}"

    # Record-family options (jaxvrl/data/records.py RecordOptions); media paths are relative
    # to media_root and formatted with the record's fields.
    d.record_options = ml_collections.ConfigDict(
        {
            "seed_bench_negatives": 3,  # negatives sampled per SEED-Bench-R1 training row
            "seed_bench_video": "videos/{video_source}/{video_basename}",
            "seed_bench_image": "images/{video_source}/{current_observation_basename}",
            "charades_video": "{vid}.mp4",
            "nextgqa_video": "{video}.mp4",  # when the record's video has no extension
            "got10k_frames": 7,  # first, evenly spaced, last; padded to an even count
        }
    )

    # T-GRPO shuffled-frame companion: "frame" (single frames), "tubelet" (whole temporal
    # patches) or "none".
    d.shuffle_unit = "frame"

    # Batching.
    d.batch_size = 4  # prompts per step across all hosts
    d.token_buckets = (512, 1024, 2048, 4096, 8192)
    d.patch_buckets = (4096, 8192, 16384, 32768, 65536)
    d.padding_side = "right"
    d.num_epochs = 0  # 0 = repeat forever
    d.shuffle = True
    d.seed = ml_collections.config_dict.placeholder(int)  # None: the run's `seed`
    d.num_workers = 2  # decoding processes; 0 decodes in the training process
    d.worker_buffer_size = 2  # decoded examples each worker keeps ready
    d.read_threads = 1  # decoding threads inside each process
    d.read_buffer_size = 2  # examples each process decodes ahead
    d.strict = False  # raise on the first bad input instead of skipping it
    return d


def rl_config() -> ml_collections.ConfigDict:
    """The `rl` section: sampling, rewards, advantages, T-GRPO and the policy loss."""
    return ml_collections.ConfigDict(
        {
            "steps": 0,  # RL updates; 0 skips the stage
            "algorithm": "grpo",  # "grpo" or "tgrpo" (Video-R1's temporal contrast)
            "num_generations": 8,  # G: samples per prompt
            "shuffled_generations": 4,  # T-GRPO samples on shuffled frames (G/2)
            "max_completion_tokens": 768,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            # Rewards by name (jaxvrl/rewards/) with weights; summed into the group reward.
            "rewards": [["accuracy", 1.0], ["format", 1.0]],
            "accuracy_reward": "accuracy",  # the reward the temporal contrast and eval read
            "advantage": "grpo",  # "grpo" or "dr_grpo"
            "advantage_eps": 1e-4,
            "unbiased_std": True,
            "temporal": {"alpha": 0.3, "mu": 0.8, "rule": "ratio", "threshold": 0.1},
            # The "length_bonus" reward (Video-R1): `bonus` for a correct sample (accuracy >
            # `threshold`) of min_length..max_length completion tokens, when more than one sample
            # of its group is correct (passed to that reward alone: objectives/scoring.py).
            "length_bonus": {"min_length": 320, "max_length": 512, "bonus": 0.2, "threshold": 0.1},
            "policy_loss": "grpo",
            "aggregation": "seq_mean_token_mean",
            "beta": 0.04,  # KL weight; 0 drops the reference model
            "kl_clamp": 10.0,  # |ref - logp| bound inside the k3 KL estimator; 0 = no clamp
            "entropy_coef": 0.0,  # entropy bonus per token (0 in the papers' recipes)
            # Clip range of the ratio: [1 - eps_low, 1 + eps_high]; DAPO's clip-higher raises
            # eps_high (0.28) so that unlikely tokens can gain probability.
            "eps_low": 0.2,
            "eps_high": 0.2,
            # DAPO dynamic sampling: drop groups whose rewards all agree (std <= min_std) and
            # roll out further batches of prompts, at most max_extra_rounds per step, to refill.
            "dynamic_sampling": {"enabled": False, "min_std": 0.0, "max_extra_rounds": 0},
            # DAPO overlong shaping: a penalty falling linearly from 0 to -factor over the last
            # `buffer` tokens before max_completion_tokens (0 = off); mask_truncated gives
            # completions cut off at the limit no loss.
            "overlong": {"buffer": 0, "factor": 1.0, "mask_truncated": False},
            "num_iterations": 1,  # optimisation passes per rollout
            # No vision-tower updates in the RL stage only (an SFT stage still trains it).
            "freeze_vision": False,
        }
    )


# Benchmarks of jaxvrl/eval/benchmarks.py (tests/test_eval_benchmarks.py checks the two lists).
BENCHMARKS = (
    "video_r1",
    "seed_bench_r1",
    "vsibench",
    "videommmu",
    "mvbench",
    "tempcompass",
    "videomme",
    "mmvu",
    "charades_sta",
    "activitynet_grounding",
    "nextgqa",
    "got10k",
)


def eval_config() -> ml_collections.ConfigDict:
    """The `eval` section: benchmark files, when to evaluate during training, sampling, and frames
    and pixels per benchmark (jaxvrl/eval/runner.py)."""
    per = {
        name: {"max_frames": 0, "video_max_pixels": 0, "video_total_pixels": 0, "max_new_tokens": 0}
        for name in BENCHMARKS
    }
    return ml_collections.ConfigDict(
        {
            # Comma-separated `benchmark=path` entries (files of one benchmark joined with '+'),
            # or bare paths scored as their record format's benchmark; "" = no evaluation.
            "files": "",
            # During training: every this many steps and before the first step (0 = only at the
            # start of RL and at the end), on the first `num_examples` of each benchmark.
            "every": 0,
            "num_examples": 0,  # 0 = all
            "batch_size": 0,  # 0 = data.batch_size
            # Frames and pixels for every benchmark (0 = the data section's), e.g. Video-R1's
            # 16 / 32 / 64 frames at 256*28*28; per_benchmark.<name>.<field> overrides one.
            "max_frames": 0,
            "video_max_pixels": 256 * TOKEN_PIXELS,  # Video-R1 evaluates at 256*28*28
            "video_total_pixels": 0,
            "max_new_tokens": 0,  # 0 = rl.max_completion_tokens
            # Greedy by default; the papers' sampling is greedy=False with e.g. Video-R1's
            # temperature 0.1 and top_p 0.001.
            "greedy": True,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "per_benchmark": per,
        }
    )


def qwen_7b(config: ml_collections.ConfigDict, shape: str) -> None:
    """A 7B Qwen-VL recipe's model and mesh: `shape` (model/shapes.py) for jaxvrl.fit without
    model.path, float32 master weights and Adam moments with bfloat16 matmuls (the PyTorch anchors'
    DeepSpeed bf16 / AMP; a bfloat16 weight would round lr-1e-6 updates away), decoder and vision
    layers rematerialised, parameters sharded over every device (fsdp)."""
    config.model.shape = shape
    config.model.dtype = "bfloat16"
    config.model.remat = True
    config.model.vision_remat = True
    config.mesh.shape = {"data": 1, "fsdp": -1, "tensor": 1}


def trl_optimizer(config: ml_collections.ConfigDict) -> None:
    """The optimizer of a released GRPO script that sets no schedule, decay or clip: TRL's
    GRPOConfig / transformers' TrainingArguments defaults, lr 1e-6 (the base's), linear decay
    without warm-up over the stage, weight decay 0, max_grad_norm 1."""
    config.optim.schedule = "linear"
    config.optim.weight_decay = 0.0
    config.optim.grad_clip = 1.0


def get_config() -> ml_collections.ConfigDict:
    """The shared base config. Recipes fill `model.path`, the data files and their RL settings."""
    config = ml_collections.ConfigDict()
    # Seeds every random stream of a run: the random init, the data order (unless `data.seed` is
    # set), the frame shuffles and the sampling of every rollout and evaluation. The stream key is
    # saved with each checkpoint, so a resumed run continues the streams it had.
    config.seed = 0
    config.demo = False  # print the demo's before/after table at the end
    config.model = ml_collections.ConfigDict(
        {
            "path": "",  # local checkpoint directory (config.json, tokenizer, weights)
            # A published shape (model/shapes.py) for jaxvrl.fit when `path` has no config.json.
            "shape": "",
            "tokenizer_path": "",  # "" = model.path
            "init": "pretrained",  # "pretrained" (weights in model.path) or "random"
            "param_dtype": "float32",
            "dtype": "float32",
            # Master weights and optimizer state in param_dtype, matmuls in dtype: the 7B recipes
            # keep float32 weights and compute in bfloat16 (an AdamW update of lr 1e-6 on a
            # bfloat16 weight of 0.02 rounds away: its resolution there is 1.2e-4).
            "remat": False,  # rematerialise decoder layers in the backward pass
            "vision_remat": False,  # rematerialise vision blocks in the backward pass
            # What a rematerialised layer keeps: "full" (its inputs only) or "dots" (also its
            # projections' outputs); model/layers.py REMAT_POLICIES.
            "remat_policy": "full",
            # Attention (model/flash.py, model/splash.py): "xla_flash" (online softmax over key
            # blocks with its own backward pass: no [queries, keys] scores in either pass, every
            # backend), "splash" (the Pallas TPU kernel), "dense" (the scores materialised:
            # memory grows with the square of the length) or "auto" (splash in programs compiled
            # for a TPU, xla_flash elsewhere; GPU cuDNN attention is not wired in).
            "attention": "auto",
            # Decoder layers and vision blocks as stacked parameters run by one scan each
            # (model/stack.py): the program holds one layer, so compile time does not grow with
            # depth. false: one copy per layer (the layout of checkpoints saved before 2026-12-05).
            "scan_layers": True,
            "freeze_vision": False,  # no updates to the vision tower in any stage
        }
    )
    config.mesh = ml_collections.ConfigDict(
        {
            # Sizes of the mesh axes; one may be -1 (all remaining devices).
            "shape": {"data": -1, "fsdp": 1, "tensor": 1},
            # Devices the mesh takes from each process: 0 = all; k = the first k of each.
            "devices_per_process": 0,
            # Logical axis -> mesh axis rules; [] = model/sharding.py DEFAULT_RULES.
            "rules": [],
            # Multi-host start-up (jaxvrl/parallel/mesh.py): True / False, or None = from the
            # environment (JAX_COORDINATOR_ADDRESS, an srun job step of several tasks, a
            # multi-host TPU slice).
            "distributed": ml_collections.FieldReference(None, field_type=bool),
            # Seconds without a heartbeat after which a process counts as lost and every other
            # process of the run ends (JAX's default; a host busy decoding video must not be
            # taken for a dead one: raise it on busy 8-GPU nodes).
            "heartbeat_timeout": 100,
            # Seconds each process waits at start-up for every process to reach the coordinator
            # (jax.distributed.initialize's initialization_timeout; JAX's default).
            "initialization_timeout": 300,
        }
    )
    config.data = data_config()
    # The optimizer of the RL stage, and of the SFT stage where `sft` sets nothing else.
    config.optim = ml_collections.ConfigDict(
        {
            "learning_rate": 1e-6,
            "schedule": "cosine",  # "cosine", "linear" (transformers' default) or "constant"
            # The schedule's horizon in updates; 0 = the stage's length. A released run that
            # was stopped early decayed over its whole epoch, not over the steps it made.
            "schedule_steps": 0,
            "warmup_steps": 0,  # 0 = ceil(warmup_ratio * horizon)
            "warmup_ratio": 0.0,
            "end_lr_fraction": 0.0,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.01,
            "grad_clip": 5.0,
        }
    )
    config.sft = ml_collections.ConfigDict(
        {
            "steps": 0,  # SFT updates before RL; 0 skips the stage
            "learning_rate": 0.0,  # 0 = optim.learning_rate
            "schedule": "",  # "" = optim.schedule
            "schedule_steps": 0,  # the SFT schedule's horizon; 0 = sft.steps
            "warmup_steps": -1,  # -1 = optim.warmup_steps
            "warmup_ratio": -1.0,  # < 0 = optim.warmup_ratio
            "weight_decay": -1.0,  # < 0 = optim.weight_decay
            "grad_clip": -1.0,  # < 0 = optim.grad_clip
            "batch_size": 0,  # sequences per SFT micro-batch; 0 = data.batch_size
            "micro_batches": 0,  # micro-batches per SFT update; 0 = train.micro_batches
            "system_prompt": "",  # "" = data.system_prompt
            "train_files": "",  # "" = data.train_files
            "train_on_prompt": False,  # Video-R1's SFT also trained on the prompt tokens
        }
    )
    config.rl = rl_config()
    config.train = ml_collections.ConfigDict(
        {
            # Pipeline batches per RL update (gradient accumulation): prompts per optimizer
            # step = data.batch_size x this.
            "micro_batches": 1,
            "logprob_chunk": 1024,  # tokens per chunk of the log-prob computation
            # Compiled programs are written here and loaded by a restarted, resumed or evaluated
            # run instead of compiled again (jaxvrl/compile_cache.py); "" = off.
            "compilation_cache_dir": "~/.cache/jaxvrl/compilation_cache",
        }
    )
    config.rollout = ml_collections.ConfigDict(
        {
            "prompt_buckets": (128, 256, 512, 1024, 2048, 4096, 8192, 16384),
            "patch_buckets": (1024, 2048, 4096, 8192, 16384, 32768, 65536),
            "prompt_row_buckets": (),
            # 0 = fitted to each batch's largest temporal slice (faster vision; up to one more
            # rollout program per chunk size 256/512/1024 seen); e.g. 1024 = one fixed size.
            "vision_chunk_patches": 0,
        }
    )
    config.checkpoint = ml_collections.ConfigDict({"every": 100, "keep": 3, "async_save": True})
    config.eval = eval_config()
    config.metrics = ml_collections.ConfigDict(
        {
            # Where the scalars of metrics.jsonl and the config also go: "tensorboard"
            # (WORKDIR/tensorboard), "wandb" (WORKDIR/wandb; offline without credentials or a
            # server), "mlflow" (MLFLOW_TRACKING_URI, else WORKDIR/mlflow.db). W&B and MLflow:
            # pip install -r requirements-trackers.txt. E.g. --config.metrics.trackers=wandb
            # --config.metrics.trackers=mlflow.
            "trackers": ("tensorboard",),
            # The W&B project and the MLflow experiment (the run is named after WORKDIR).
            "project": "jaxvrl",
            "progress": True,
            # Terminal log level: "warning" shows warnings and the trainer's own lines (stages,
            # evaluations); "info" every library's INFO. WORKDIR/train.log keeps INFO always.
            "console_log_level": "warning",
            # Every N steps, the RL step's completions (text, reward, accuracy of each sample) go
            # to WORKDIR/completions/<step>.jsonl (0 = never).
            "completions_every": 10,
        }
    )
    config.export = ml_collections.ConfigDict({"hf_dir": ""})  # export the final model here
    return config
