"""The trainer: an optional SFT stage, then GRPO / T-GRPO, on one device mesh.

    python -m jaxvrl.train --config=configs/video_r1.py --workdir=RUN_DIR \
        [--config.rl.num_generations=8 --config.data.max_frames=32 ...]

Top to bottom: flags and config -> mesh -> model (pretrained or random, jaxvrl/policy.py) ->
per stage: its plan (run_plan.plan_stage: data, optimizer, loss and scoring settings, the jitted
programs; jaxvrl.fit compiles the same plan), resume -> the loop (`Trainer._run_stage`). One RL
step reads:

    batch -> rollout (with shuffled-frame companions) -> rewards -> advantages
          -> (DAPO refill) -> sharded train step -> metrics -> checkpoint

An unknown override key stops the run before any work (the config is locked).
"""

from __future__ import annotations

if __name__ == "__main__":  # before JAX loads: its C++ libraries' lines go to the run's log
    from jaxvrl import native_logs

    native_logs.hold()

import dataclasses
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
    compile_cache,
    demo_report,
    microbatches,
    policy,
    run_paths,
    run_plan,
    steps,
)
from jaxvrl.checkpoint import Checkpointer, data_state_for_process
from jaxvrl.data import pipeline, synthetic
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
    mesh_from_config,
    rules_from_config,
)
from jaxvrl.rollout.sampler import Sampler
from model.config import ModelConfig
from model.hf import save_pretrained
from model.sharding import activation_layout

log = logging.getLogger("jaxvrl.train")  # not "__main__" under python -m


# ------------------------------------------------------------------------------------------------
# The run.


class Trainer:
    """Holds the mesh, model, sampler and writers of one run; `run()` trains every stage."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        self.compile_time = compile_cache.watch()
        os.makedirs(workdir, exist_ok=True)
        initialize_from_config(config.mesh)
        self.mesh = mesh_from_config(config.mesh)
        self.rules = rules_from_config(config.mesh.rules)
        if multihost.index() == 0:  # one writer; the others wait, then find it there
            synthetic.ensure_from_config(config)
        multihost.barrier("synthetic data")
        synthetic.ensure_from_config(config)
        run_plan.check_input_files(config)
        check_trackers(config)
        run_plan.check_batch_split(config, self.mesh, self.rules)
        run_plan.rollout_temperature(config)  # a bad per-generation table stops here, not after SFT
        model, self.tokenizer, _ = policy.load_model_for(config, self.mesh, self.rules)
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
                    "scan_layers": bool(config.model.scan_layers),
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
        """One stage, step by step: data -> (RL: rollout -> rewards -> advantages -> DAPO
        refill) -> update -> metrics -> checkpoint."""
        log.info("stage %s: steps %d to %d", stage.name, stage.first + 1, stage.last)
        plan = run_plan.plan_stage(self.config, stage, self.graphdef, self.params)
        iterator = iter(pipeline.build_dataset(plan.stage_config))
        state = self._start_stage(plan, latest, iterator)
        while state.step < stage.last:
            clock = _Clock()
            sampled = self.sampler.device_seconds
            raw = [next(iterator) for _ in range(plan.micro_batches)]
            clock.lap("data")
            if plan.is_rl:
                batches, metrics = self._rl_batches(plan, raw, state.step, iterator)
                clock.lap("rollout")
            else:
                batches, metrics = raw, {}
                clock.laps["rollout"] = 0.0
            out, flops, clock.laps["train"] = self._update(plan, state, batches)
            # Time inside device programs (the rollouts' and the updates'); the rest is the host's.
            clock.device = self.sampler.device_seconds - sampled + clock.laps["train"]
            state.step += 1
            row = self._step_row(plan, state.step, raw, batches, {**metrics, **out}, clock, flops)
            writer.write(state.step, row)
            self._save(plan, state, iterator)
        self.checkpointer.wait()

    def _start_stage(self, plan: run_plan.StagePlan, latest: int | None, iterator) -> _StageState:
        """A fresh optimizer state (and reference copy), or the checkpoint `latest` of this
        stage with the data iterator's position and the stream key."""
        opt_state = steps.init_optimizer_state(plan.tx, self.params)
        ref_params = None
        if plan.with_reference:
            ref_params = steps.reference_parameters(self.params, self.model_config.dtype)
        state = _StageState(plan.stage.first, opt_state, ref_params)
        if latest is None or latest <= plan.stage.first:
            return state
        saved, self.rng, data_state, state.step = self.checkpointer.restore(
            latest, _abstract(state.saved(self.params))
        )
        self.params, state.opt_state = saved["params"], saved["opt_state"]
        state.ref_params = saved.get("ref_params")
        iterator.set_state(
            data_state_for_process(
                data_state,
                int(plan.stage_config.data.batch_size),
                multihost.count(),
                multihost.index(),
            )
        )
        log.info("resumed %s at step %d", plan.stage.name, state.step)
        return state

    def _update(
        self, plan: run_plan.StagePlan, state: _StageState, batches: list[dict[str, Any]]
    ) -> tuple[dict[str, float], float, float]:
        """The optimizer step(s) on a step's micro-batches: they are stacked and placed on the
        mesh, the reference (and, with several passes, old-policy) log-probs computed, then
        `plan.passes` updates. Returns the step's loss metrics, its matmul FLOPs and the
        seconds of the updates alone."""
        stacked = self._stack(batches)
        if plan.with_reference:
            stacked["ref_logp"] = plan.logprobs(state.ref_params, stacked)
        if plan.passes > 1:
            stacked["old_logp"] = plan.logprobs(self.params, stacked)
        self._count_program(plan.stage.name, stacked)
        start = time.perf_counter()
        flops = self._step_flops(plan.train_step, state.opt_state, stacked) * plan.passes
        for _ in range(plan.passes):
            self.params, state.opt_state, out = plan.train_step(
                self.params, state.opt_state, stacked
            )
        out = {k: multihost.replicated_scalar(v) for k, v in out.items()}
        seconds = time.perf_counter() - start
        self.nonfinite_skips += int(out["skipped"] > 0)
        names = {k: k if k in ("loss", "grad_norm", "skipped") else f"train/{k}" for k in out}
        return {names[k]: float(v) for k, v in out.items()}, flops, seconds

    def _save(self, plan: run_plan.StagePlan, state: _StageState, iterator) -> None:
        """The checkpoint of the step (every `checkpoint.every` steps and at the stage's end),
        with every process's data-iterator state (each reads its own block of the batches)."""
        data_state = {"processes": multihost.gather_objects(iterator.get_state())}
        self.checkpointer.save(
            state.step,
            state.saved(self.params),
            self.rng,
            data_state,
            force=state.step == plan.stage.last,
        )

    def _step_row(
        self,
        plan: run_plan.StagePlan,
        step: int,
        raw: list[dict[str, Any]],
        batches: list[dict[str, Any]],
        metrics: dict[str, Any],
        clock: _Clock,
        flops: float,
    ) -> dict[str, Any]:
        """The step's metrics.jsonl row: the step's own metrics, then throughput, the slowest
        process's times, token and skipped-record counts summed over the processes, compile
        counts, and the evaluation when one is due."""
        mask = "completion_mask" if plan.is_rl else "attention_mask"
        meta = raw[-1]["meta"]
        counts = multihost.sum_over_processes(
            {
                "tokens": sum(int(np.asarray(b[mask]).sum()) for b in batches),
                "skipped": int(meta.get("skipped", 0)),
                **{f"data/skipped/{k}": v for k, v in meta.get("skip_counts", {}).items()},
            }
        )
        tokens, skipped_records = counts.pop("tokens"), counts.pop("skipped")
        total_time = clock.total()
        t_data, t_rollout, t_train, t_host = multihost.max_over_processes(
            clock.laps["data"],
            clock.laps["rollout"],
            clock.laps["train"],
            total_time - clock.device,
        )
        row = {
            "stage": plan.stage.name,
            **metrics,
            "learning_rate": float(plan.schedule(step - plan.stage.first - 1)),
            "tokens_per_second": tokens / max(total_time, 1e-9),
            "step_time/data": t_data,
            "step_time/rollout": t_rollout,
            "step_time/train": t_train,
            "step_time/host": t_host,
            **self._mfu(flops, t_train),
            "step_time/total": total_time,
            "compilations/sampler": self.sampler.num_compilations,
            "compilations/train": len(self.train_programs),
            **self.compile_time.metrics(),
            "nonfinite_skips": self.nonfinite_skips,
            "data/skipped_records": int(skipped_records),
            **{k: int(v) for k, v in counts.items()},
            **(self._evaluate_at(step) if step in self.eval_steps else {}),
        }
        keys = ("stage", "reward/total", "accuracy", "temporal/bonus_rate", "loss")
        self.history.append({"step": step, **{k: row.get(k) for k in keys}})
        return row

    # -- an RL step's batches --------------------------------------------------------------------

    def _rl_batches(
        self, plan: run_plan.StagePlan, raw: list[dict[str, Any]], step: int, iterator
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Each micro-batch rolled out, rewarded and given advantages; with DAPO dynamic sampling
        the groups without signal dropped and the step refilled from `iterator`. Returns the
        training batches and the step's rollout metrics (averaged over the sampler calls and
        the processes)."""
        rolled = [
            self._roll_out(plan, batch, self.rollout_seed(step, i)) for i, batch in enumerate(raw)
        ]
        dynamic = {}
        if plan.dynamic_sampling.enabled:
            batches, dynamic = self._refill(plan, rolled, len(raw), step, iterator)
        else:
            batches = [candidate.train for candidate, _ in rolled]
        self._write_completions(
            step, [{"rollout": i, **c} for i, (_, s) in enumerate(rolled) for c in s["completions"]]
        )
        rows = [s["metrics"] for _, s in rolled]
        metrics = {}
        for key in rows[0]:
            values = [r[key] for r in rows if r.get(key) is not None]
            metrics[key] = float(np.mean(values)) if values else None
        # Every process holds as many rows.
        return batches, {**multihost.mean_metrics(metrics), **dynamic}

    def _roll_out(
        self, plan: run_plan.StagePlan, batch: dict[str, Any], seed: int
    ) -> tuple[dapo.Candidate, dict[str, Any]]:
        """One pipeline batch: rollout (with T-GRPO's shuffled-frame companions) -> rewards ->
        advantages -> the training batch. Returns it as a DAPO candidate (its groups without
        signal marked to drop) and the scored rollout (metrics, completions)."""
        vision = self.model_config.vision
        prompts_, counts, companions = scoring.rollout_prompts(batch, plan.scoring, vision)
        rollout = self.sampler.sample(self.params, prompts_, counts, plan.sampling, seed=seed)
        rewards = scoring.rewards(batch, rollout, companions, plan.scoring)
        advantages = scoring.advantages(rewards, plan.scoring)
        scored = scoring.scored(batch, rewards, advantages)
        train = scoring.training_batch(
            batch, rollout, scored, mask_truncated=plan.scoring.mask_truncated
        )
        drop = scored["group_std"] < 0  # filler rows
        if plan.dynamic_sampling.enabled:
            drop = drop | (scored["group_std"] <= plan.dynamic_sampling.min_std)
        return dapo.Candidate(raw=batch, train=train, drop=drop), scored

    def _refill(
        self, plan: run_plan.StagePlan, rolled: list, micro: int, step: int, iterator
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """DAPO dynamic sampling (jaxvrl/objectives/dapo.py): rolls out further batches from
        `iterator` (up to `max_extra_rounds`) while groups were dropped, then lays the kept
        groups out over the step's micro-batches. Appends the extra rollouts to `rolled`."""
        candidates = [candidate for candidate, _ in rolled]

        def roll_out_more(round_: int) -> dapo.Candidate | None:
            batch = next(iterator, None)
            if multihost.agree_any(batch is None):  # the data ran out on some process
                return None
            rolled.append(self._roll_out(plan, batch, self.rollout_seed(step, micro + round_)))
            return rolled[-1][0]

        # Each process refills its own rows; a round runs while any process needs one.
        extra_rounds = dapo.refill(
            candidates,
            roll_out_more,
            plan.dynamic_sampling.max_extra_rounds,
            multihost.agree_any,
        )
        p = len(candidates[0].raw["example_mask"])
        selection = dapo.select_rows(candidates, micro, p)
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
        counts = multihost.sum_over_processes(
            {
                "dropped_groups": dapo.dropped_groups(candidates),
                "kept_groups": selection.kept_groups,
                "rows": micro * p,
            }
        )
        return batches, {
            "dynamic/dropped_groups": counts["dropped_groups"],
            "dynamic/extra_rounds": extra_rounds,
            "dynamic/kept_groups": counts["kept_groups"],
            "dynamic/filled_fraction": counts["kept_groups"] / counts["rows"],
        }


@dataclasses.dataclass
class _StageState:
    """What a stage carries from step to step beside the parameters (Trainer.params)."""

    step: int
    opt_state: Any
    ref_params: Any = None

    def saved(self, params: Any) -> dict[str, Any]:
        """The tree a checkpoint holds."""
        tree = {"params": params, "opt_state": self.opt_state}
        return tree if self.ref_params is None else {**tree, "ref_params": self.ref_params}


class _Clock:
    """A step's wall-clock laps (data, rollout, train), its seconds inside device programs and
    its total."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}
        self.device = 0.0  # seconds inside device programs

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = now - self.last, now

    def total(self) -> float:
        return time.perf_counter() - self.start


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
    compile_cache.enable(str(config.train.compilation_cache_dir))
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
