"""What a config asks a run to do: its stages, optimizer, loss, rollout and model settings, read
from the config alone (no model, no devices), and the checks that stop a run before any work when
its record files are missing or its batches do not split over the processes.

`plan_stage` builds, once per stage, everything the stage runs (`StagePlan`: its pipeline
config, micro-batches, optimizer, loss and scoring settings, the jitted train step and log-prob
programs): jaxvrl/train.py's Trainer runs that plan and jaxvrl/fit/ compiles the same plan's
programs, so the fit check compiles exactly what a run compiles.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from jax.sharding import NamedSharding

from jaxvrl import cli, steps
from jaxvrl.data import records, synthetic
from jaxvrl.objectives.scoring import RLSettings
from jaxvrl.parallel import multihost, placement
from jaxvrl.parallel.mesh import rules_from_config
from jaxvrl.rollout.sampler import RolloutConfig, SamplingParams
from model.config import MODEL_TYPES
from model.sharding import logical_to_spec

# ------------------------------------------------------------------------------------------------
# Stages.


@dataclasses.dataclass
class Stage:
    name: str  # "sft" or "rl"
    first: int  # global step before the stage's first update
    last: int  # global step after its last update


def plan_stages(config: ml_collections.ConfigDict) -> list[Stage]:
    out, step = [], 0
    for name in ("sft", "rl"):
        n = int(config[name].steps)
        if n > 0:
            out.append(Stage(name, step, step + n))
            step += n
    if not out:
        raise ValueError("nothing to train: set sft.steps and/or rl.steps")
    return out


def data_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of the data order and the pipeline's random choices: `data.seed`, or the run's
    `seed` when that is unset (the default), so one number seeds every stream of a run."""
    return int(config.seed if config.data.seed is None else config.data.seed)


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    """The config a stage's data pipeline reads: SFT appends the target to each prompt."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.data.seed = data_seed(config)
    if stage == "sft":
        out.data.sft_target = True
        out.data.shuffle_unit = "none"
        if config.sft.train_files:
            out.data.train_files = config.sft.train_files
        if config.sft.batch_size:
            out.data.batch_size = int(config.sft.batch_size)
        if config.sft.system_prompt:
            out.data.system_prompt = str(config.sft.system_prompt)
        out.data.seed = data_seed(config) + 1
    elif config.rl.algorithm != "tgrpo":
        out.data.shuffle_unit = "none"
    return out


def micro_batches_for(config: ml_collections.ConfigDict, stage: str) -> int:
    """Pipeline batches per update of a stage: `train.micro_batches` for RL, `sft.micro_batches`
    (0 = the same) for SFT. Prompts per optimizer step = that x the stage's batch size."""
    if stage == "sft" and int(config.sft.micro_batches):
        return int(config.sft.micro_batches)
    return int(config.train.micro_batches)


def prompts_per_step(config: ml_collections.ConfigDict, stage: str) -> int:
    """Prompts (SFT: sequences) behind one optimizer step of a stage, across all hosts."""
    return int(stage_config(config, stage).data.batch_size) * micro_batches_for(config, stage)


def evaluation_steps(config: ml_collections.ConfigDict, stages: list[Stage]) -> set[int]:
    """The global steps after which the benchmarks are evaluated: the start of RL and the end,
    and with `eval.every` also step 0 (before the first update) and every `every` steps."""
    total = stages[-1].last
    out = {total} | {s.first for s in stages if s.name == "rl"}
    every = int(config.eval.every)
    if every > 0:
        out |= set(range(0, total + 1, every))
    return out


# ------------------------------------------------------------------------------------------------
# Optimizer and loss.


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """A stage's optimizer and learning-rate schedule (steps.make_optimizer's arguments)."""

    learning_rate: float
    schedule: str
    horizon: int  # the schedule's length in updates (may differ from the stage's)
    warmup_steps: int
    end_lr_fraction: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    grad_clip: float


def optim_settings(config: ml_collections.ConfigDict, stage: Stage) -> OptimSettings:
    """`optim.*` for the RL stage; for SFT each `sft.*` override that is set (learning_rate 0,
    schedule "", negative warm-up / decay / clip = optim's). The horizon is `schedule_steps`
    (optim's for RL, sft's for SFT) or, when 0, the stage's length; warm-up is `warmup_steps`
    or else ceil(warmup_ratio * horizon), as transformers' Trainer computes it."""
    o, sft = config.optim, config.sft
    is_sft = stage.name == "sft"

    def pick(name: str, unset: Any) -> Any:
        value = sft[name] if is_sft else unset
        return o[name] if value == unset else value

    horizon = int(sft.schedule_steps if is_sft else o.schedule_steps) or (stage.last - stage.first)
    warmup = int(pick("warmup_steps", -1))
    ratio = float(pick("warmup_ratio", -1.0))
    return OptimSettings(
        learning_rate=float(pick("learning_rate", 0.0)),
        schedule=str(pick("schedule", "")),
        horizon=horizon,
        warmup_steps=warmup or math.ceil(ratio * horizon),
        end_lr_fraction=float(o.end_lr_fraction),
        b1=float(o.b1),
        b2=float(o.b2),
        eps=float(o.eps),
        weight_decay=float(pick("weight_decay", -1.0)),
        grad_clip=float(pick("grad_clip", -1.0)),
    )


def optimizer_for(config: ml_collections.ConfigDict, stage: Stage, params):
    s = optim_settings(config, stage)
    frozen_vision = config.model.freeze_vision or (stage.name == "rl" and config.rl.freeze_vision)
    freeze = (lambda path: path[:1] == ("visual",)) if frozen_vision else None
    return steps.make_optimizer(
        learning_rate=s.learning_rate,
        total_steps=s.horizon,
        warmup_steps=s.warmup_steps,
        schedule=s.schedule,
        end_lr_fraction=s.end_lr_fraction,
        b1=s.b1,
        b2=s.b2,
        eps=s.eps,
        weight_decay=s.weight_decay,
        grad_clip=s.grad_clip or None,
        freeze=freeze,
        params=params,
    )


def loss_settings(config: ml_collections.ConfigDict, stage: Stage) -> steps.LossSettings:
    rl = config.rl
    if stage.name == "sft":
        return steps.LossSettings(
            kind="sft",
            chunk_size=int(config.train.logprob_chunk),
            train_on_prompt=bool(config.sft.train_on_prompt),
        )
    return steps.LossSettings(
        kind="grpo",
        policy_loss=str(rl.policy_loss),
        aggregation=str(rl.aggregation),
        beta=float(rl.beta),
        kl_clamp=float(rl.kl_clamp),
        entropy_coef=float(rl.entropy_coef),
        eps_low=float(rl.eps_low),
        eps_high=float(rl.eps_high),
        norm_constant=float(rl.max_completion_tokens),
        temperature=rollout_temperature(config),
        chunk_size=int(config.train.logprob_chunk),
    )


# ------------------------------------------------------------------------------------------------
# A stage's plan.


@dataclasses.dataclass(frozen=True)
class DynamicSampling:
    """DAPO dynamic sampling (`rl.dynamic_sampling`): drop groups whose reward std is at most
    `min_std`, refilling the step with up to `max_extra_rounds` more batches."""

    enabled: bool = False
    min_std: float = 0.0
    max_extra_rounds: int = 0


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """Everything one stage runs, built once by `plan_stage` for the trainer and the fit check.

    `train_step(params, opt_state, stacked)` is the jitted update; `logprobs(params, stacked)`
    the jitted log-prob program (the reference model's, and the old policy's when `passes` > 1).
    RL only: `scoring` (rewards and advantages), `sampling` (the rollout's sampling) and
    `dynamic_sampling`; None / off for SFT."""

    stage: Stage
    stage_config: ml_collections.ConfigDict  # the config its pipeline reads (stage_config())
    micro_batches: int  # pipeline batches per update
    passes: int  # updates per batch: rl.num_iterations (1 for SFT)
    tx: Any  # optax.GradientTransformation
    schedule: Callable[[int], Any]  # learning rate at update i of the stage
    loss: steps.LossSettings
    with_reference: bool  # a frozen reference copy for the KL term (RL with beta > 0)
    train_step: Callable
    logprobs: Callable
    scoring: RLSettings | None = None
    sampling: SamplingParams | None = None
    dynamic_sampling: DynamicSampling = DynamicSampling()

    @property
    def is_rl(self) -> bool:
        return self.stage.name == "rl"


def plan_stage(config: ml_collections.ConfigDict, stage: Stage, graphdef, params) -> StagePlan:
    """The plan of one stage of `config` for a model (`graphdef`, and `params`: arrays or
    ShapeDtypeStructs with the shardings the run keeps them in)."""
    tx, schedule = optimizer_for(config, stage, params)
    loss = loss_settings(config, stage)
    rl = stage.name == "rl"
    ds = config.rl.dynamic_sampling
    return StagePlan(
        stage=stage,
        stage_config=stage_config(config, stage.name),
        micro_batches=micro_batches_for(config, stage.name),
        passes=int(config.rl.num_iterations) if rl else 1,
        tx=tx,
        schedule=schedule,
        loss=loss,
        with_reference=rl and loss.beta > 0,
        train_step=steps.jit_train_step(graphdef, tx, loss, params),
        # One compiled program per batch shape (a lambda made per step would recompile).
        logprobs=jax.jit(
            functools.partial(steps.stacked_reference_logprobs, graphdef, settings=loss)
        ),
        scoring=RLSettings.from_config(config.rl) if rl else None,
        sampling=sampling_params(config) if rl else None,
        dynamic_sampling=DynamicSampling(
            enabled=bool(ds.enabled),
            min_std=float(ds.min_std),
            max_extra_rounds=int(ds.max_extra_rounds),
        )
        if rl
        else DynamicSampling(),
    )


# ------------------------------------------------------------------------------------------------
# Model and rollout.


def model_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword arguments of the policy model's constructor from the config (beyond its shape
    and dtypes); jaxvrl.policy.load_model_for and jaxvrl.fit both build the model with them."""
    m = config.model
    return {
        "remat": bool(m.remat),
        "vision_remat": bool(m.vision_remat),
        "remat_policy": str(m.remat_policy),
        "attention": str(m.attention),
        "scan_layers": bool(m.scan_layers),
    }


def rollout_config(config: ml_collections.ConfigDict) -> RolloutConfig:
    r = config.rollout
    return RolloutConfig(
        prompt_buckets=tuple(int(b) for b in r.prompt_buckets),
        patch_buckets=tuple(int(b) for b in r.patch_buckets),
        prompt_row_buckets=tuple(int(b) for b in r.prompt_row_buckets),
        vision_chunk_patches=int(r.vision_chunk_patches),
        rules=rules_from_config(config.mesh.rules),
    )


def rollout_temperature(config: ml_collections.ConfigDict) -> float:
    """The RL rollout's sampling temperature, which the update's log-probs take too:
    `rl.temperature`, or where a config leaves it unset (None, as the CPU demo does) the value
    `rl.temperature_by_generation` names for its synthetic set's model generation
    (`data.synthetic.generation`), 1.0 where it names none."""
    rl = config.rl
    by_generation = dict(rl.get("temperature_by_generation") or {})
    unknown = sorted(set(by_generation) - set(MODEL_TYPES))
    if unknown:
        raise cli.ConfigError(
            f"rl.temperature_by_generation names {', '.join(unknown)}: "
            f"the generations are {', '.join(MODEL_TYPES)}"
        )
    if rl.get("temperature") is not None:
        return float(rl.temperature)
    generation = synthetic.generation_of(config.data.get("synthetic") or {})
    return float(by_generation.get(generation, 1.0))


def sampling_params(
    config: ml_collections.ConfigDict,
    section: str = "rl",
    max_new_tokens: int | None = None,
    greedy: bool = False,
) -> SamplingParams:
    """How the run samples: the RL rollout (`rl`) or evaluation (`eval`) by that section's
    temperature, top_p, top_k and greedy (`greedy` when the section has none); max_new_tokens
    defaults to rl.max_completion_tokens."""
    s = config[section]
    temperature = rollout_temperature(config) if section == "rl" else s.get("temperature", 1.0)
    return SamplingParams(
        max_new_tokens=int(max_new_tokens or config.rl.max_completion_tokens),
        greedy=bool(s.get("greedy", greedy)),
        temperature=float(temperature),
        top_p=float(s.get("top_p", 1.0)),
        top_k=int(s.get("top_k", 0)),
    )


# ------------------------------------------------------------------------------------------------
# Checks before any work.


def check_input_files(config: ml_collections.ConfigDict) -> None:
    """Stops before any work when a record file the run's stages will read does not exist."""
    wanted = []
    if int(config.sft.steps) > 0:
        wanted.append(("sft.train_files", config.sft.train_files or config.data.train_files))
    if int(config.rl.steps) > 0:
        wanted.append(("data.train_files", config.data.train_files))
    for key, files in wanted:
        if not records.split_files(files):
            raise cli.ConfigError(f"{key} is empty: no record file to read")
        for spec in records.split_files(files):
            path = records.split_format(spec)[1]
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{key}: record file {path} does not exist")
    # eval.files: "benchmark=path+path" entries or bare paths (jaxvrl/eval/runner.py).
    for entry in records.split_files(config.eval.get("files", "")):
        name, sep, paths = entry.partition("=")
        for path in paths.split("+") if sep else [records.split_format(entry)[1]]:
            if path.strip() and not os.path.isfile(path.strip()):
                raise FileNotFoundError(f"eval.files: record file {path.strip()} does not exist")


def check_batch_split(config: ml_collections.ConfigDict, mesh, rules) -> None:
    """With several processes each stage's batch must split into equal blocks, one per process,
    each spread over that process's share of the batch devices."""
    n = multihost.count()
    if n == 1:
        return
    devices = placement.batch_axis_size(mesh, rules)
    per_process = devices // n
    if devices % n:
        raise cli.ConfigError(
            f"the mesh's batch axes span {devices} devices, not a multiple "
            f"of the {n} processes: set mesh.shape so that data x fsdp covers every process"
        )
    for stage in ("sft", "rl"):
        if int(config[stage].steps) <= 0:
            continue
        size = int(stage_config(config, stage).data.batch_size)
        if size % n or (size // n) % per_process:
            raise cli.ConfigError(
                f"{stage}: batch size {size} does not split into {n} processes x "
                f"{per_process} batch devices each"
            )
        spec = logical_to_spec(["batch"], rules, mesh)
        multihost.check_row_blocks(NamedSharding(mesh, spec), size // n)
