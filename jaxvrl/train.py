"""The trainer: an optional SFT stage, then GRPO / T-GRPO, on one device mesh.

    python -m jaxvrl.train --config=configs/video_r1.py --workdir=RUN_DIR \
        [--config.rl.num_generations=8 --config.data.max_frames=32 ...]

Top to bottom: flags and config -> mesh -> model (pretrained or random) -> per stage: data,
optimizer, step functions, resume -> the loop. One RL step reads:

    batch -> rollout (with shuffled-frame companions) -> rewards -> advantages
          -> sharded train step -> metrics -> checkpoint

An unknown override key stops the run before any work (the config is locked).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxvrl import batching, cli, dapo, demo_report, hardware, multihost, rl_batch, steps
from jaxvrl.checkpoint import Checkpointer, data_state_for_process
from jaxvrl.data import pipeline, prompts, records, synthetic
from jaxvrl.eval import report as eval_report
from jaxvrl.eval import runner as eval_runner
from jaxvrl.flops import matmul_flops
from jaxvrl.mesh import (
    distributed_summary,
    initialize_distributed,
    make_mesh,
    rules_from_config,
)
from jaxvrl.metrics import MetricsWriter
from jaxvrl.rollout import RolloutConfig, Sampler, SamplingParams
from model.config import ModelConfig
from model.hf import load_pretrained, save_pretrained
from model.qwen2_vl import Qwen2VL
from model.sharding import activation_layout, logical_to_spec, shard_model

log = logging.getLogger("jaxvrl.train")  # not "__main__" under python -m


# ------------------------------------------------------------------------------------------------
# Model, sampler and config helpers.


def has_weights(directory: str) -> bool:
    return any(
        os.path.isfile(os.path.join(directory, name))
        for name in ("model.safetensors", "model.safetensors.index.json")
    )


def model_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword arguments of the policy model's constructor from the config (beyond its shape
    and dtypes); load_model_for and jaxvrl.fit both build the model with them."""
    m = config.model
    return {
        "remat": bool(m.remat),
        "vision_remat": bool(m.vision_remat),
        "remat_policy": str(m.remat_policy),
    }


def load_model_for(
    config: ml_collections.ConfigDict, workdir: str | None = None, mesh=None, rules=None
):
    """The policy model (pretrained from `model.path`, or random with `model.init="random"`),
    its tokenizer and the mesh it lives on."""
    if mesh is None:
        mesh = make_mesh(dict(config.mesh.shape))
        rules = rules_from_config(config.mesh.rules)
    m = config.model
    if not m.path or not os.path.isfile(os.path.join(m.path, "config.json")):
        raise FileNotFoundError(f"model.path {m.path!r} has no config.json")
    if m.init == "pretrained":
        if not has_weights(m.path):
            raise FileNotFoundError(
                f"model.path {m.path} has no safetensors weights; set model.init='random' to "
                "start from a random model of that config"
            )
        model = load_pretrained(
            m.path,
            param_dtype=m.param_dtype,
            dtype=m.dtype,
            mesh=mesh,
            rules=rules,
            **model_options(config),
        )
    elif m.init == "random":
        model_config = ModelConfig.from_pretrained(m.path).replace(
            param_dtype=m.param_dtype, dtype=m.dtype
        )
        model = Qwen2VL(model_config, rngs=nnx.Rngs(int(config.seed)), **model_options(config))
        shard_model(model, mesh, rules)
    else:
        raise ValueError(f"model.init must be 'pretrained' or 'random', got {m.init!r}")
    tokenizer = prompts.load_tokenizer(m.tokenizer_path or m.path)
    return model, tokenizer, mesh


def rollout_config(config: ml_collections.ConfigDict) -> RolloutConfig:
    r = config.rollout
    return RolloutConfig(
        prompt_buckets=tuple(int(b) for b in r.prompt_buckets),
        patch_buckets=tuple(int(b) for b in r.patch_buckets),
        prompt_row_buckets=tuple(int(b) for b in r.prompt_row_buckets),
        vision_chunk_patches=int(r.vision_chunk_patches),
        rules=rules_from_config(config.mesh.rules),
    )


def sampling_params(config: ml_collections.ConfigDict) -> SamplingParams:
    rl = config.rl
    return SamplingParams(
        max_new_tokens=int(rl.max_completion_tokens),
        temperature=float(rl.temperature),
        top_p=float(rl.top_p),
        top_k=int(rl.top_k),
    )


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    """The config a stage's data pipeline reads: SFT appends the target to each prompt."""
    out = ml_collections.ConfigDict(config.to_dict())
    if stage == "sft":
        out.data.sft_target = True
        out.data.shuffle_unit = "none"
        if config.sft.train_files:
            out.data.train_files = config.sft.train_files
        if config.sft.batch_size:
            out.data.batch_size = int(config.sft.batch_size)
        if config.sft.system_prompt:
            out.data.system_prompt = str(config.sft.system_prompt)
        out.data.seed = int(config.data.seed) + 1
    elif config.rl.algorithm != "tgrpo":
        out.data.shuffle_unit = "none"
    return out


def evaluation_steps(config: ml_collections.ConfigDict, stages: list[Stage]) -> set[int]:
    """The global steps after which the benchmarks are evaluated: the start of RL and the end,
    and with `eval.every` also step 0 (before the first update) and every `every` steps."""
    total = stages[-1].last
    out = {total} | {s.first for s in stages if s.name == "rl"}
    every = int(config.eval.every)
    if every > 0:
        out |= set(range(0, total + 1, every))
    return out


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
    devices = batching.batch_axis_size(mesh, rules)
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


def micro_batches_for(config: ml_collections.ConfigDict, stage: str) -> int:
    """Pipeline batches per update of a stage: `train.micro_batches` for RL, `sft.micro_batches`
    (0 = the same) for SFT. Prompts per optimizer step = that x the stage's batch size."""
    if stage == "sft" and int(config.sft.micro_batches):
        return int(config.sft.micro_batches)
    return int(config.train.micro_batches)


def prompts_per_step(config: ml_collections.ConfigDict, stage: str) -> int:
    """Prompts (SFT: sequences) behind one optimizer step of a stage, across all hosts."""
    return int(stage_config(config, stage).data.batch_size) * micro_batches_for(config, stage)


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
        temperature=float(rl.temperature),
        chunk_size=int(config.train.logprob_chunk),
    )


# ------------------------------------------------------------------------------------------------
# The run.


class Trainer:
    """Holds the mesh, model, sampler and writers of one run; `run()` trains every stage."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        initialize_distributed(config.mesh.distributed, int(config.mesh.heartbeat_timeout))
        self.mesh = make_mesh(dict(config.mesh.shape))
        self.rules = rules_from_config(config.mesh.rules)
        if multihost.index() == 0:  # one writer; the others wait, then find it there
            synthetic.ensure_from_config(config)
        multihost.barrier("synthetic data")
        synthetic.ensure_from_config(config)
        check_input_files(config)
        check_batch_split(config, self.mesh, self.rules)
        model, self.tokenizer, _ = load_model_for(config, workdir, self.mesh, self.rules)
        self.model_config: ModelConfig = model.config
        self.graphdef, self.params = nnx.split(model)
        self.sampler = Sampler(
            model,
            mesh=self.mesh,
            config=rollout_config(config),
            tokenizer=self.tokenizer,
            checkpoint_dir=config.model.path,
        )
        self.stages = plan_stages(config)
        self.total_steps = self.stages[-1].last
        # Benchmark files are read (and their format checked) before any work.
        self.eval_suite = eval_runner.load_suite(config) if config.eval.files else []
        self.eval_steps = evaluation_steps(config, self.stages) if self.eval_suite else set()
        self.checkpointer = Checkpointer(
            workdir,
            save_every=int(config.checkpoint.every),
            keep=int(config.checkpoint.keep),
            async_save=bool(config.checkpoint.async_save),
        )
        self.train_programs: set = set()
        self.step_flops: dict[Any, float] = {}
        self.nonfinite_skips = 0
        self.history: list[dict[str, Any]] = []
        if multihost.index() == 0:
            self._write_model_config()

    def _write_model_config(self) -> None:
        config = self.config
        with open(os.path.join(self.workdir, "model_config.json"), "w") as f:
            json.dump(
                {
                    "hf_config": self.model_config.to_hf_dict(),
                    "tokenizer_dir": config.model.tokenizer_path or config.model.path,
                },
                f,
                indent=2,
            )

    # -- device placement ------------------------------------------------------------------------

    def _stack(self, batches: list[dict[str, Any]]) -> dict[str, Any]:
        """This process's micro-batches stacked (batching.stack) and placed on the mesh as the
        global batch (`place_stacked`); the processes pad to the sizes they agree on."""
        vision = self.model_config.vision
        buckets = self.config.data.patch_buckets
        multiple = max(1, batching.batch_axis_size(self.mesh, self.rules) // multihost.count())
        sizes = None
        if multihost.count() > 1:
            sizes = multihost.agree_max(batching.stack_sizes(batches, vision, buckets, multiple))
            if sizes["chunk_patches"]:
                # The chunk count at the agreed chunk size.
                local = 0
                if any(b.get("vision") is not None for b in batches):
                    local = batching.stack_sizes(
                        batches, vision, buckets, multiple, sizes["chunk_patches"]
                    )["num_chunks"]
                sizes["num_chunks"] = multihost.agree_max({"k": local})["k"]
        stacked = batching.stack(batches, vision, buckets, multiple, sizes)
        return batching.place_stacked(stacked, self.mesh, self.rules, vision.merge_unit)

    def _step_flops(self, train_fn, opt_state, stacked) -> float:
        """Matmul FLOPs of one train step (jaxvrl.flops, as jaxvrl.fit counts them), traced once
        per batch shape; 0 where the chip's peak is unknown (no perf/mfu then)."""
        if hardware.peak_flops(jax.devices()[0].device_kind) is None:
            return 0.0
        key = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(stacked))
        if key not in self.step_flops:
            traced = train_fn.trace(self.params, opt_state, stacked)
            self.step_flops[key] = matmul_flops(traced.jaxpr)
        return self.step_flops[key]

    def _mfu(self, flops: float, seconds: float) -> dict[str, float]:
        value = hardware.model_flops_utilisation(flops, seconds, jax.devices())
        return {} if value is None else {"perf/mfu": value}

    def _count_program(self, name: str, tree: Any) -> None:
        signature = (name, tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(tree)))
        if signature not in self.train_programs:
            self.train_programs.add(signature)
            log.info("compiling %s step for shapes %s", name, signature[1][:4])

    # -- stages ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Every stage, then the export; the programs traced on the way lay their activations
        out on the run's mesh (model.sharding.activation_layout)."""
        with activation_layout(self.mesh, self.rules):
            return self._run()

    def _run(self) -> dict[str, Any]:
        config = self.config
        latest = self.checkpointer.latest_step()
        results: dict[str, Any] = {}
        writer = MetricsWriter(
            self.workdir,
            total_steps=self.total_steps,
            tensorboard=bool(config.metrics.tensorboard),
            progress=bool(config.metrics.progress),
            resume_step=latest or 0,
        )
        try:
            for stage in self.stages:
                if latest is not None and latest >= stage.last and stage is not self.stages[-1]:
                    continue  # finished earlier; its parameters come with a later checkpoint
                if latest is not None and latest == stage.first and stage.first > 0:
                    # Stopped at the boundary: the previous stage's end starts this one.
                    self.params = self.checkpointer.restore_params(latest, _abstract(self.params))
                if stage.first == 0 and 0 in self.eval_steps and latest is None:
                    writer.write(0, self._evaluate_at(0))
                self._run_stage(stage, latest, writer)
                latest = stage.last
        finally:
            writer.close()
            self.checkpointer.close()
        if config.export.hf_dir:
            # Every process takes part in gathering the parameters; process 0 writes them.
            params = multihost.gather_params(self.params)
            if multihost.index() == 0:
                save_pretrained(
                    nnx.merge(self.graphdef, params),
                    config.export.hf_dir,
                    tokenizer_dir=config.model.tokenizer_path or config.model.path,
                )
            multihost.barrier("export written")
            results["export"] = config.export.hf_dir
        results["nonfinite_skips"] = self.nonfinite_skips
        results["history"] = self.history
        if self.eval_suite:
            results["evaluations"] = {
                s: r
                for s in sorted(self.eval_steps)
                if (r := eval_runner.load_result(self.workdir, s))
            }
            rl = [s for s in self.stages if s.name == "rl"]
            results["before_rl"] = results["evaluations"].get(rl[0].first) if rl else None
            results["after_rl"] = results["evaluations"].get(self.total_steps)
            if jax.process_index() == 0:
                results["report"] = eval_report.write_report(self.workdir)
        return results

    def _evaluate_at(self, step: int) -> dict[str, float]:
        """Evaluates the current parameters (those of `step`) on the benchmark subsets, or
        reads what an earlier run of this workdir wrote for that step; returns the
        `eval/<benchmark>/<metric>` metrics."""
        result = eval_runner.load_result(self.workdir, step)
        # Process 0 (the writer) decides, so that all evaluate together or none does.
        if multihost.agree_any(multihost.index() == 0 and result is None):
            result = eval_runner.evaluate_suite(
                self.params,
                self.sampler,
                self.config,
                self.eval_suite,
                step,
                self.workdir,
                max_examples=int(self.config.eval.num_examples) or None,
                write=jax.process_index() == 0,
            )
            log.info("%s", eval_runner.table(result))
        return eval_runner.flat_metrics(result) if result else {}

    def _run_stage(self, stage: Stage, latest: int | None, writer: MetricsWriter) -> None:
        config = self.config
        log.info("stage %s: steps %d to %d", stage.name, stage.first + 1, stage.last)
        tx, schedule = optimizer_for(config, stage, self.params)
        settings = loss_settings(config, stage)
        dataset = pipeline.build_dataset(stage_config(config, stage.name))
        iterator = iter(dataset)
        with_ref = stage.name == "rl" and settings.beta > 0
        opt_state = steps.init_optimizer_state(tx, self.params)
        ref_params = (
            steps.reference_parameters(self.params, self.model_config.dtype) if with_ref else None
        )
        step = stage.first
        if latest is not None and latest > stage.first:
            abstract = _abstract(
                {
                    "params": self.params,
                    "opt_state": opt_state,
                    **({"ref_params": ref_params} if with_ref else {}),
                }
            )
            state, _, data_state, step = self.checkpointer.restore(latest, abstract)
            self.params, opt_state = state["params"], state["opt_state"]
            ref_params = state.get("ref_params")
            iterator.set_state(
                data_state_for_process(
                    data_state,
                    int(stage_config(config, stage.name).data.batch_size),
                    multihost.count(),
                    multihost.index(),
                )
            )
            log.info("resumed %s at step %d", stage.name, step)
        train_fn = steps.jit_train_step(self.graphdef, tx, settings, self.params)
        # One compiled program per batch shape (a lambda made per step would recompile).
        ref_fn = jax.jit(
            functools.partial(steps.stacked_reference_logprobs, self.graphdef, settings=settings)
        )
        rng = jax.random.key(int(config.seed))
        micro = micro_batches_for(config, stage.name)
        while step < stage.last:
            t0 = time.perf_counter()
            raw = [next(iterator) for _ in range(micro)]
            t_data = time.perf_counter() - t0
            if stage.name == "sft":
                batches, metrics = raw, {}
                t_rollout = 0.0
            else:
                batches, metrics = self._rollouts(raw, step, iterator)
                t_rollout = time.perf_counter() - t0 - t_data
            stacked = self._stack(batches)
            if with_ref:
                stacked["ref_logp"] = ref_fn(ref_params, stacked)
            t1 = time.perf_counter()
            passes = int(config.rl.num_iterations) if stage.name == "rl" else 1
            if passes > 1:
                stacked["old_logp"] = ref_fn(self.params, stacked)
            self._count_program(stage.name, stacked)
            flops = self._step_flops(train_fn, opt_state, stacked) * passes
            for _ in range(passes):
                self.params, opt_state, out = train_fn(self.params, opt_state, stacked)
            out = {k: multihost.replicated_scalar(v) for k, v in out.items()}
            t_train = time.perf_counter() - t1
            step += 1
            self.nonfinite_skips += int(out["skipped"] > 0)
            # Counts summed over the processes, times of the slowest.
            counts = multihost.sum_over_processes(
                {
                    "tokens": sum(
                        int(
                            np.asarray(
                                b["completion_mask" if stage.name == "rl" else "attention_mask"]
                            ).sum()
                        )
                        for b in batches
                    ),
                    "skipped": int(raw[-1]["meta"].get("skipped", 0)),
                    **{
                        f"data/skipped/{k}": v
                        for k, v in raw[-1]["meta"].get("skip_counts", {}).items()
                    },
                }
            )
            tokens = counts.pop("tokens")
            skipped_records = counts.pop("skipped")
            t_data, t_rollout, t_train = multihost.max_over_processes(t_data, t_rollout, t_train)
            total_time = time.perf_counter() - t0
            evaluated = self._evaluate_at(step) if step in self.eval_steps else {}
            row = {
                "stage": stage.name,
                **metrics,
                **{
                    k if k in ("loss", "grad_norm", "skipped") else f"train/{k}": float(v)
                    for k, v in out.items()
                },
                "learning_rate": float(schedule(step - stage.first - 1)),
                "tokens_per_second": tokens / max(total_time, 1e-9),
                "step_time/data": t_data,
                "step_time/rollout": t_rollout,
                "step_time/train": t_train,
                **self._mfu(flops, t_train),
                "step_time/total": total_time,
                "compilations/sampler": self.sampler.num_compilations,
                "compilations/train": len(self.train_programs),
                "nonfinite_skips": self.nonfinite_skips,
                "data/skipped_records": int(skipped_records),
                **{k: int(v) for k, v in counts.items()},
                **evaluated,
            }
            writer.write(step, row)
            self.history.append(
                {
                    "step": step,
                    **{
                        k: row.get(k)
                        for k in (
                            "stage",
                            "reward/total",
                            "accuracy",
                            "temporal/bonus_rate",
                            "loss",
                        )
                    },
                }
            )
            # Every process's iterator state (each reads its own block of the global batches).
            data_state = {"processes": multihost.gather_objects(iterator.get_state())}
            saved_state = {
                "params": self.params,
                "opt_state": opt_state,
                **({"ref_params": ref_params} if with_ref else {}),
            }
            self.checkpointer.save(step, saved_state, rng, data_state, force=step == stage.last)
        self.checkpointer.wait()

    def _rollouts(
        self, raw: list[dict[str, Any]], step: int, iterator=None
    ) -> tuple[list[dict], dict[str, Any]]:
        """Samples each micro-batch's prompts (and T-GRPO companions), scores them, and returns
        the training batches and the averaged metrics. With DAPO dynamic sampling, groups whose
        rewards all agree are dropped and further batches from `iterator` are rolled out to
        refill the step (module jaxvrl/dapo.py)."""
        settings = rl_batch.RLSettings.from_config(self.config.rl)
        params = sampling_params(self.config)
        ds = self.config.rl.dynamic_sampling
        candidates, rows = [], []

        def roll_out(batch: dict[str, Any], seed: int) -> dapo.Candidate:
            prompts_, counts, companions = rl_batch.rollout_prompts(
                batch, settings, self.model_config.vision
            )
            rollout = self.sampler.sample(self.params, prompts_, counts, params, seed=seed)
            scored = rl_batch.score_rollout(batch, rollout, companions, settings)
            train = rl_batch.training_batch(
                batch, rollout, scored, mask_truncated=settings.mask_truncated
            )
            drop = scored["group_std"] < 0  # filler rows
            if ds.enabled:
                drop = drop | (scored["group_std"] <= float(ds.min_std))
            rows.append(scored["metrics"])
            return dapo.Candidate(raw=batch, train=train, drop=drop)

        for i, batch in enumerate(raw):
            candidates.append(roll_out(batch, seed=step * len(raw) + i))
        if ds.enabled:

            def roll_out_more(round_: int) -> dapo.Candidate | None:
                batch = next(iterator, None)
                if multihost.agree_any(batch is None):  # the data ran out on some process
                    return None
                # Negative seeds: streams apart from every step's first-round seeds.
                return roll_out(batch, seed=-1 - (step * int(ds.max_extra_rounds) + round_))

            # Each process refills its own rows; a round runs while any process needs one.
            extra_rounds = dapo.refill(
                candidates, roll_out_more, int(ds.max_extra_rounds), multihost.agree_any
            )
            p = len(raw[0]["example_mask"])
            selection = dapo.select_rows(candidates, len(raw), p)
            batches = [
                dapo.assemble(
                    candidates,
                    picks,
                    [i * p + j >= selection.kept_groups for j in range(len(picks))],
                    self.model_config.vision,
                    self.config.data.patch_buckets,
                )
                for i, picks in enumerate(selection.picks)
            ]
        else:
            batches = [c.train for c in candidates]
        metrics = {}
        for key in rows[0]:
            values = [r[key] for r in rows if r.get(key) is not None]
            metrics[key] = float(np.mean(values)) if values else None
        metrics = multihost.mean_metrics(metrics)  # every process holds as many rows
        if ds.enabled:
            counts = multihost.sum_over_processes(
                {
                    "dropped_groups": dapo.dropped_groups(candidates),
                    "kept_groups": selection.kept_groups,
                    "rows": len(raw) * p,
                }
            )
            metrics["dynamic/dropped_groups"] = counts["dropped_groups"]
            metrics["dynamic/extra_rounds"] = extra_rounds
            metrics["dynamic/kept_groups"] = counts["kept_groups"]
            metrics["dynamic/filled_fraction"] = counts["kept_groups"] / counts["rows"]
        return batches, metrics


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def main(argv) -> None:
    from absl import flags

    del argv
    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir
    # Before any JAX call (the log file's name asks for the process index).
    initialize_distributed(config.mesh.distributed, int(config.mesh.heartbeat_timeout))
    cli.setup_logging(workdir, str(config.metrics.get("console_log_level", "warning")))
    if jax.process_count() > 1:
        log.info("%s", distributed_summary(int(config.mesh.heartbeat_timeout)))
    results = Trainer(config, workdir).run()
    if config.get("demo", False) and jax.process_index() == 0:
        demo_report.report(results, workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "recipe config file (configs/*.py)", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, evaluation")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(cli.guard(main), flags_parser=cli.parse_flags)
