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
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxvrl import batching, cli, dapo, rl_batch, steps
from jaxvrl.checkpoint import Checkpointer
from jaxvrl.data import pipeline, prompts, records, synthetic
from jaxvrl.evaluate import evaluate
from jaxvrl.mesh import initialize_distributed, make_mesh, rules_from_config
from jaxvrl.metrics import MetricsWriter
from jaxvrl.rollout import RolloutConfig, Sampler, SamplingParams
from model.config import ModelConfig
from model.hf import load_pretrained, save_pretrained
from model.qwen2_vl import Qwen2VL
from model.sharding import logical_to_spec, shard_model

log = logging.getLogger("jaxvrl.train")  # not "__main__" under python -m


# ------------------------------------------------------------------------------------------------
# Model, sampler and config helpers.


def has_weights(directory: str) -> bool:
    return any(
        os.path.isfile(os.path.join(directory, name))
        for name in ("model.safetensors", "model.safetensors.index.json")
    )


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
            m.path, param_dtype=m.param_dtype, dtype=m.dtype, mesh=mesh, rules=rules, remat=m.remat
        )
    elif m.init == "random":
        model_config = ModelConfig.from_pretrained(m.path).replace(
            param_dtype=m.param_dtype, dtype=m.dtype
        )
        model = Qwen2VL(model_config, rngs=nnx.Rngs(int(config.seed)), remat=m.remat)
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
        out.data.seed = int(config.data.seed) + 1
    elif config.rl.algorithm != "tgrpo":
        out.data.shuffle_unit = "none"
    return out


def check_input_files(config: ml_collections.ConfigDict) -> None:
    """Stops before any work when a record file the run's stages will read does not exist."""
    wanted = []
    if int(config.sft.steps) > 0:
        wanted.append(("sft.train_files", config.sft.train_files or config.data.train_files))
    if int(config.rl.steps) > 0:
        wanted.append(("data.train_files", config.data.train_files))
    if config.eval.get("files"):
        wanted.append(("eval.files", config.eval.files))
    for key, files in wanted:
        if not records.split_files(files):
            raise cli.ConfigError(f"{key} is empty: no record file to read")
        for spec in records.split_files(files):
            path = records.split_format(spec)[1]
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{key}: record file {path} does not exist")


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


def optimizer_for(config: ml_collections.ConfigDict, stage: Stage, params):
    o = config.optim
    lr = (
        float(config.sft.learning_rate)
        if stage.name == "sft" and config.sft.learning_rate
        else float(o.learning_rate)
    )
    frozen_vision = config.model.freeze_vision or (stage.name == "rl" and config.rl.freeze_vision)
    freeze = (lambda path: path[:1] == ("visual",)) if frozen_vision else None
    return steps.make_optimizer(
        learning_rate=lr,
        total_steps=stage.last - stage.first,
        warmup_steps=int(o.warmup_steps),
        schedule=str(o.schedule),
        end_lr_fraction=float(o.end_lr_fraction),
        b1=float(o.b1),
        b2=float(o.b2),
        eps=float(o.eps),
        weight_decay=float(o.weight_decay),
        grad_clip=float(o.grad_clip) if o.grad_clip else None,
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
        initialize_distributed(config.mesh.distributed)
        self.mesh = make_mesh(dict(config.mesh.shape))
        self.rules = rules_from_config(config.mesh.rules)
        synthetic.ensure_from_config(config)
        check_input_files(config)
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
        self.checkpointer = Checkpointer(
            workdir,
            save_every=int(config.checkpoint.every),
            keep=int(config.checkpoint.keep),
            async_save=bool(config.checkpoint.async_save),
        )
        self.train_programs: set = set()
        self.nonfinite_skips = 0
        self.history: list[dict[str, Any]] = []
        with open(os.path.join(workdir, "model_config.json"), "w") as f:
            json.dump(
                {
                    "hf_config": self.model_config.to_hf_dict(),
                    "tokenizer_dir": config.model.tokenizer_path or config.model.path,
                },
                f,
                indent=2,
            )

    # -- device placement ------------------------------------------------------------------------

    def _put_stacked(self, stacked: dict[str, Any]) -> dict[str, Any]:
        """Micro-batches [M, ...] onto the mesh: batch dimension over (data, fsdp), vision
        items replicated (a packed sequence of all prompts' patches has no batch axis)."""
        batch_axis = {"positions": 2, "prompt_positions": 2}

        def put(key, x):
            if key == "vision":
                return jax.device_put(x, NamedSharding(self.mesh, PartitionSpec()))
            axes = [None] * x.ndim
            axes[batch_axis.get(key, 1)] = "batch"
            spec = logical_to_spec(axes, self.rules, self.mesh)
            size = int(np.prod([self.mesh.shape[a] for a in _axes(spec[batch_axis.get(key, 1)])]))
            if x.shape[batch_axis.get(key, 1)] % size:
                spec = PartitionSpec()
            return jax.device_put(x, NamedSharding(self.mesh, spec))

        return {k: put(k, v) for k, v in stacked.items()}

    def _train_fn(self, tx, settings: steps.LossSettings):
        return jax.jit(
            functools.partial(steps.train_step, self.graphdef, tx=tx, settings=settings),
            donate_argnums=(0, 1),
        )

    def _count_program(self, name: str, tree: Any) -> None:
        signature = (name, tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(tree)))
        if signature not in self.train_programs:
            self.train_programs.add(signature)
            log.info("compiling %s step for shapes %s", name, signature[1][:4])

    # -- stages ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
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
                    # Stopped at the boundary: the previous stage's end starts this one (and is
                    # what the before-RL evaluation scores).
                    self.params = self.checkpointer.restore_params(latest, _abstract(self.params))
                if stage.name == "rl" and config.eval.files:
                    results["before_rl"] = self._evaluate_once("before_rl", stage.first, latest)
                self._run_stage(stage, latest, writer)
                latest = stage.last
            if config.eval.files:
                results["after_rl"] = self._evaluate_once("after_rl", self.total_steps, None)
        finally:
            writer.close()
            self.checkpointer.close()
        if config.export.hf_dir:
            model = nnx.merge(self.graphdef, self.params)
            save_pretrained(
                model,
                config.export.hf_dir,
                tokenizer_dir=config.model.tokenizer_path or config.model.path,
            )
            results["export"] = config.export.hf_dir
        results["nonfinite_skips"] = self.nonfinite_skips
        results["history"] = self.history
        return results

    def _evaluate_once(self, tag: str, step: int, latest: int | None) -> dict[str, Any]:
        """Evaluates the parameters of `step` (the current ones), or reads the result an
        earlier run of this workdir wrote for that step."""
        path = os.path.join(self.workdir, f"eval_{tag}.json")
        if os.path.isfile(path):
            with open(path) as f:
                earlier = json.load(f)
            if earlier.get("step") == step:
                return earlier
        if latest is not None and latest > step:
            raise FileNotFoundError(
                f"resuming at step {latest}, but {path} holds no evaluation of step {step}"
            )
        ev = self.config.eval
        result = evaluate(
            self.params,
            self.sampler,
            self.config,
            str(ev.files),
            max_examples=int(ev.num_examples) or None,
            params=SamplingParams(
                max_new_tokens=int(self.config.rl.max_completion_tokens), greedy=True
            ),
            accuracy_reward=str(self.config.rl.accuracy_reward),
        )
        result["step"] = step
        if jax.process_index() == 0:
            with open(path, "w") as f:
                json.dump(result, f, indent=2)
        log.info("%s: accuracy %.3f over %d examples", tag, result["accuracy"], result["count"])
        return result

    def _run_stage(self, stage: Stage, latest: int | None, writer: MetricsWriter) -> None:
        config = self.config
        log.info("stage %s: steps %d to %d", stage.name, stage.first + 1, stage.last)
        tx, schedule = optimizer_for(config, stage, self.params)
        settings = loss_settings(config, stage)
        dataset = pipeline.build_dataset(stage_config(config, stage.name))
        iterator = iter(dataset)
        with_ref = stage.name == "rl" and settings.beta > 0
        opt_state = jax.jit(tx.init)(self.params)
        ref_params = jax.tree.map(lambda x: x.copy(), self.params) if with_ref else None
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
            iterator.set_state(data_state)
            log.info("resumed %s at step %d", stage.name, step)
        train_fn = self._train_fn(tx, settings)
        # One compiled program per batch shape (a lambda made per step would recompile).
        ref_fn = jax.jit(
            functools.partial(steps.stacked_reference_logprobs, self.graphdef, settings=settings)
        )
        rng = jax.random.key(int(config.seed))
        micro = int(config.train.micro_batches)
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
            stacked = self._put_stacked(
                batching.stack(batches, self.model_config.vision.merge_unit)
            )
            if with_ref:
                stacked["ref_logp"] = ref_fn(ref_params, stacked)
            t1 = time.perf_counter()
            passes = int(config.rl.num_iterations) if stage.name == "rl" else 1
            if passes > 1:
                stacked["old_logp"] = ref_fn(self.params, stacked)
            self._count_program(stage.name, stacked)
            for _ in range(passes):
                self.params, opt_state, out = train_fn(self.params, opt_state, stacked)
            out = jax.device_get(out)
            t_train = time.perf_counter() - t1
            step += 1
            self.nonfinite_skips += int(out["skipped"] > 0)
            skip_counts = raw[-1]["meta"].get("skip_counts", {})
            tokens = sum(
                int(
                    np.asarray(
                        b["completion_mask" if stage.name == "rl" else "attention_mask"]
                    ).sum()
                )
                for b in batches
            )
            total_time = time.perf_counter() - t0
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
                "step_time/total": total_time,
                "compilations/sampler": self.sampler.num_compilations,
                "compilations/train": len(self.train_programs),
                "nonfinite_skips": self.nonfinite_skips,
                "data/skipped_records": int(raw[-1]["meta"].get("skipped", 0)),
                **{f"data/skipped/{k}": v for k, v in skip_counts.items()},
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
            data_state = iterator.get_state()
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
                try:
                    batch = next(iterator)
                except StopIteration:
                    return None
                # Negative seeds: streams apart from every step's first-round seeds.
                return roll_out(batch, seed=-1 - (step * int(ds.max_extra_rounds) + round_))

            extra_rounds = dapo.refill(candidates, roll_out_more, int(ds.max_extra_rounds))
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
        if ds.enabled:
            metrics["dynamic/dropped_groups"] = dapo.dropped_groups(candidates)
            metrics["dynamic/extra_rounds"] = extra_rounds
            metrics["dynamic/kept_groups"] = selection.kept_groups
            metrics["dynamic/filled_fraction"] = selection.kept_groups / (len(raw) * p)
        return batches, metrics


def _axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


# ------------------------------------------------------------------------------------------------
# Demo report.


def demo_report(results: dict[str, Any], workdir: str) -> dict[str, Any]:
    """The demo's table: held-out accuracy before and after RL, the reward curve, the temporal
    bonus rate. Written to WORKDIR/demo_eval.json."""
    rl_rows = [h for h in results.get("history", []) if h.get("stage") == "rl"]
    rewards = [h["reward/total"] for h in rl_rows if h.get("reward/total") is not None]
    bonus = [h["temporal/bonus_rate"] for h in rl_rows if h.get("temporal/bonus_rate") is not None]
    tenth = max(1, len(rewards) // 10)
    report = {
        "accuracy_before": results.get("before_rl", {}).get("accuracy"),
        "accuracy_after": results.get("after_rl", {}).get("accuracy"),
        "format_before": results.get("before_rl", {}).get("format"),
        "format_after": results.get("after_rl", {}).get("format"),
        "eval_examples": results.get("after_rl", {}).get("count"),
        "reward_first_tenth": float(np.mean(rewards[:tenth])) if rewards else None,
        "reward_last_tenth": float(np.mean(rewards[-tenth:])) if rewards else None,
        "temporal_bonus_rate": float(np.mean(bonus)) if bonus else None,
        "rl_steps": len(rl_rows),
        "nonfinite_skips": results.get("nonfinite_skips", 0),
    }
    with open(os.path.join(workdir, "demo_eval.json"), "w") as f:
        json.dump(report, f, indent=2)
    r = {k: _fmt(v) for k, v in report.items()}
    lines = [
        "",
        "held-out accuracy      before RL   after RL",
        f"  accuracy             {r['accuracy_before']}      {r['accuracy_after']}",
        f"  format               {r['format_before']}      {r['format_after']}",
        f"reward, first / last tenth of RL: {r['reward_first_tenth']} / {r['reward_last_tenth']}",
        f"temporal bonus rate (T-GRPO): {r['temporal_bonus_rate']}",
        f"written to {os.path.join(workdir, 'demo_eval.json')}",
    ]
    print("\n".join(lines))
    return report


def _fmt(x) -> str:
    return "   n/a" if not isinstance(x, int | float) else f"{x:6.3f}"


def main(argv) -> None:
    from absl import flags

    del argv
    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir
    cli.setup_logging(workdir, str(config.metrics.get("console_log_level", "warning")))
    results = Trainer(config, workdir).run()
    if config.get("demo", False) and jax.process_index() == 0:
        demo_report(results, workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "recipe config file (configs/*.py)", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, evaluation")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(cli.guard(main), flags_parser=cli.parse_flags)
