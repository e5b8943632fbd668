"""The trainer: an optional SFT stage, then GRPO / T-GRPO, on one device mesh.

    python -m jaxvrl.train --config=configs/video_r1.py --workdir=RUN_DIR \
        [--config.rl.num_generations=8 --config.data.max_frames=32 ...]

Top to bottom: flags and config -> mesh -> model (pretrained or random) -> per stage: data,
optimizer, step functions, resume -> the loop. What the config asks for (the stages, their
optimizer, loss and rollout settings) is read in jaxvrl/run_plan.py. One RL step reads:

    batch -> rollout (with shuffled-frame companions) -> rewards -> advantages
          -> sharded train step -> metrics -> checkpoint

An unknown override key stops the run before any work (the config is locked).
"""

from __future__ import annotations

if __name__ == "__main__":  # before JAX loads: its C++ libraries' lines go to the run's log
    from jaxvrl import native_logs

    native_logs.hold()

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

from jaxvrl import (
    cli,
    demo_report,
    microbatches,
    run_paths,
    run_plan,
    steps,
)
from jaxvrl.checkpoint import Checkpointer, data_state_for_process
from jaxvrl.data import pipeline, prompts, synthetic
from jaxvrl.eval import report as eval_report
from jaxvrl.eval import runner as eval_runner
from jaxvrl.fit import hardware
from jaxvrl.fit.flops import matmul_flops
from jaxvrl.metrics import MetricsWriter, check_trackers
from jaxvrl.objectives import dapo, scoring
from jaxvrl.parallel import multihost, placement
from jaxvrl.parallel.mesh import (
    distributed_summary,
    initialize_from_config,
    make_mesh,
    rules_from_config,
)
from jaxvrl.rollout.sampler import Sampler
from model.config import ModelConfig
from model.hf import load_pretrained, save_pretrained
from model.qwen2_vl import Qwen2VL
from model.sharding import activation_layout, shard_model

log = logging.getLogger("jaxvrl.train")  # not "__main__" under python -m


# ------------------------------------------------------------------------------------------------
# The model.


def has_weights(directory: str) -> bool:
    return any(
        os.path.isfile(os.path.join(directory, name))
        for name in ("model.safetensors", "model.safetensors.index.json")
    )


def load_model_for(config: ml_collections.ConfigDict, mesh=None, rules=None):
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
            **run_plan.model_options(config),
        )
    elif m.init == "random":
        model_config = ModelConfig.from_pretrained(m.path).replace(
            param_dtype=m.param_dtype, dtype=m.dtype
        )
        model = Qwen2VL(
            model_config, rngs=nnx.Rngs(int(config.seed)), **run_plan.model_options(config)
        )
        shard_model(model, mesh, rules)
    else:
        raise ValueError(f"model.init must be 'pretrained' or 'random', got {m.init!r}")
    tokenizer = prompts.load_tokenizer(m.tokenizer_path or m.path)
    return model, tokenizer, mesh


# ------------------------------------------------------------------------------------------------
# The run.


class Trainer:
    """Holds the mesh, model, sampler and writers of one run; `run()` trains every stage."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        initialize_from_config(config.mesh)
        self.mesh = make_mesh(dict(config.mesh.shape))
        self.rules = rules_from_config(config.mesh.rules)
        if multihost.index() == 0:  # one writer; the others wait, then find it there
            synthetic.ensure_from_config(config)
        multihost.barrier("synthetic data")
        synthetic.ensure_from_config(config)
        run_plan.check_input_files(config)
        check_trackers(config)
        run_plan.check_batch_split(config, self.mesh, self.rules)
        model, self.tokenizer, _ = load_model_for(config, self.mesh, self.rules)
        self.model_config: ModelConfig = model.config
        self.graphdef, self.params = nnx.split(model)
        self.sampler = Sampler(
            model,
            mesh=self.mesh,
            config=run_plan.rollout_config(config),
            tokenizer=self.tokenizer,
            checkpoint_dir=config.model.path,
        )
        self.stages = run_plan.plan_stages(config)
        self.total_steps = self.stages[-1].last
        # Benchmark files are read (and their format checked) before any work.
        self.eval_suite = eval_runner.load_suite(config) if config.eval.files else []
        self.eval_steps = (
            run_plan.evaluation_steps(config, self.stages) if self.eval_suite else set()
        )
        self.checkpointer = Checkpointer(
            workdir,
            save_every=int(config.checkpoint.every),
            keep=int(config.checkpoint.keep),
            async_save=bool(config.checkpoint.async_save),
        )
        # The run's stream key (saved with every checkpoint; a resumed run continues with it).
        self.rng = jax.random.key(int(config.seed))
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
        """This process's micro-batches stacked (microbatches.stack) and placed on the mesh as the
        global batch (`place_stacked`); the processes pad to the sizes they agree on."""
        vision = self.model_config.vision
        buckets = self.config.data.patch_buckets
        multiple = max(1, placement.batch_axis_size(self.mesh, self.rules) // multihost.count())
        sizes = None
        if multihost.count() > 1:
            sizes = multihost.agree_max(
                microbatches.stack_sizes(batches, vision, buckets, multiple)
            )
            if sizes["chunk_patches"]:
                # The chunk count at the agreed chunk size.
                local = 0
                if any(b.get("vision") is not None for b in batches):
                    local = microbatches.stack_sizes(
                        batches, vision, buckets, multiple, sizes["chunk_patches"]
                    )["num_chunks"]
                sizes["num_chunks"] = multihost.agree_max({"k": local})["k"]
        stacked = microbatches.stack(batches, vision, buckets, multiple, sizes)
        return placement.place_stacked(stacked, self.mesh, self.rules, vision.merge_unit)

    def _step_flops(self, train_fn, opt_state, stacked) -> float:
        """Matmul FLOPs of one train step (jaxvrl.fit.flops, as jaxvrl.fit counts them), traced once
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

    def rollout_seed(self, step: int, rollout: int) -> int:
        """The seed of a step's `rollout`-th sampler call (micro-batches, then refill rounds):
        drawn from the run's stream key, so `config.seed` moves every sample and a resumed run
        samples what the uninterrupted one would have."""
        words = [int(w) for w in np.asarray(jax.random.key_data(self.rng)).reshape(-1)]
        return int(np.random.SeedSequence([*words, step, rollout]).generate_state(1)[0] >> 1)

    def _write_completions(self, step: int, completions: list[dict[str, Any]]) -> None:
        """This process's completions of the step (train step `step + 1`), every
        `metrics.completions_every` steps: WORKDIR/completions/<step>.jsonl (process k > 0:
        <step>.<k>.jsonl)."""
        every = int(self.config.metrics.completions_every)
        if not every or (step + 1) % every:
            return
        directory = os.path.join(self.workdir, "completions")
        os.makedirs(directory, exist_ok=True)
        index = multihost.index()
        name = f"{step + 1}.jsonl" if index == 0 else f"{step + 1}.{index}.jsonl"
        with open(os.path.join(directory, name), "w") as f:
            f.writelines(json.dumps(c) + "\n" for c in completions)

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
            trackers=tuple(config.metrics.trackers),
            run_params=config,
            project=str(config.metrics.project),
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

    def _run_stage(self, stage: run_plan.Stage, latest: int | None, writer: MetricsWriter) -> None:
        config = self.config
        log.info("stage %s: steps %d to %d", stage.name, stage.first + 1, stage.last)
        tx, schedule = run_plan.optimizer_for(config, stage, self.params)
        settings = run_plan.loss_settings(config, stage)
        dataset = pipeline.build_dataset(run_plan.stage_config(config, stage.name))
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
            state, self.rng, data_state, step = self.checkpointer.restore(latest, abstract)
            self.params, opt_state = state["params"], state["opt_state"]
            ref_params = state.get("ref_params")
            iterator.set_state(
                data_state_for_process(
                    data_state,
                    int(run_plan.stage_config(config, stage.name).data.batch_size),
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
        micro = run_plan.micro_batches_for(config, stage.name)
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
            self.checkpointer.save(
                step, saved_state, self.rng, data_state, force=step == stage.last
            )
        self.checkpointer.wait()

    def _rollouts(
        self, raw: list[dict[str, Any]], step: int, iterator=None
    ) -> tuple[list[dict], dict[str, Any]]:
        """Samples each micro-batch's prompts (and T-GRPO companions), scores them, and returns
        the training batches and the averaged metrics. With DAPO dynamic sampling, groups whose
        rewards all agree are dropped and further batches from `iterator` are rolled out to
        refill the step (module jaxvrl/objectives/dapo.py)."""
        settings = scoring.RLSettings.from_config(self.config.rl)
        params = run_plan.sampling_params(self.config)
        ds = self.config.rl.dynamic_sampling
        candidates, rows, completions = [], [], []

        def roll_out(batch: dict[str, Any], seed: int) -> dapo.Candidate:
            prompts_, counts, companions = scoring.rollout_prompts(
                batch, settings, self.model_config.vision
            )
            rollout = self.sampler.sample(self.params, prompts_, counts, params, seed=seed)
            scored = scoring.score_rollout(batch, rollout, companions, settings)
            train = scoring.training_batch(
                batch, rollout, scored, mask_truncated=settings.mask_truncated
            )
            # Tagged with the sampler call (micro-batches first, then DAPO refill rounds).
            completions.extend({"rollout": len(rows), **c} for c in scored["completions"])
            drop = scored["group_std"] < 0  # filler rows
            if ds.enabled:
                drop = drop | (scored["group_std"] <= float(ds.min_std))
            rows.append(scored["metrics"])
            return dapo.Candidate(raw=batch, train=train, drop=drop)

        for i, batch in enumerate(raw):
            candidates.append(roll_out(batch, seed=self.rollout_seed(step, i)))
        if ds.enabled:

            def roll_out_more(round_: int) -> dapo.Candidate | None:
                batch = next(iterator, None)
                if multihost.agree_any(batch is None):  # the data ran out on some process
                    return None
                return roll_out(batch, seed=self.rollout_seed(step, len(raw) + round_))

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
        self._write_completions(step, completions)
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
    run_paths.require_local_run(workdir, config)  # before any directory is made
    console_level = cli.setup_console(str(config.metrics.console_log_level))
    # Before any JAX call (the log file's name asks for the process index).
    initialize_from_config(config.mesh)
    cli.open_log_file(workdir, console_level)
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
