"""Measured vs predicted seconds per program: a few RL steps of a recipe run on the backend
present, each device program timed, and the same program priced at the roofline the way jaxvrl.fit
prices it (matmul FLOPs with loop trip counts at the chip's peak, HBM bytes from the compiled HLO
at its bandwidth; jaxvrl/fit/flops.py, hlo_cost.py, predict.py).

    python bench/step_time.py [--config=configs/demo.py] [--steps=8] [--config.x=y ...]

The run is the trainer's own (jaxvrl.train.Trainer) from random weights (`model.init=random`; the
RL stage alone), at the recipe's real shapes; the rollout is priced at the decode steps each call
actually took. On a CPU the chip's figures are measured first: the peak by a matmul in the
model's compute dtype, the memory bandwidth by a copy far beyond the caches; on an accelerator they
are jaxvrl/fit/hardware.py's. Each program's first call is left out (the train step compiles
in it; the rollout's is a warm-up).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402 - after the repository is on the path
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxvrl import run_plan, train  # noqa: E402
from jaxvrl.fit import check, hardware, hlo_cost, predict  # noqa: E402
from jaxvrl.fit.flops import matmul_flops  # noqa: E402
from jaxvrl.rollout import sampler as sampler_lib  # noqa: E402
from model.sharding import activation_layout  # noqa: E402


def best_seconds(fn: Any, *args: Any, repeats: int = 7) -> float:
    """The fastest of `repeats` calls of `fn(*args)`, after one to compile."""
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def memory_bandwidth(megabytes: int = 256) -> float:
    """DRAM bytes per second of this host: a copy of `megabytes` (far beyond the caches) between
    two buffers allocated beforehand, split over every core's thread, best of 7. A jitted
    elementwise program is no measure here: each call allocates its output anew, and the page
    faults of 256 MiB (7 GB/s on the 2-core EPYC VM, against 28-29 GB/s copying) would be
    counted as memory traffic."""
    source = np.ones(megabytes << 18, np.float32)
    target = np.empty_like(source)
    parts = np.array_split(np.arange(source.size), os.cpu_count() or 1)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if p.size]

    def copy() -> None:
        threads = [
            threading.Thread(target=np.copyto, args=(target[a:b], source[a:b])) for a, b in bounds
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    copy()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        copy()
        times.append(time.perf_counter() - start)
    return 2 * source.nbytes / min(times)


def measured_cpu_chip(dtype: str) -> hardware.Chip:
    """This CPU's peak matmul FLOP/s in `dtype` ([2048, 2048] x [2048, 2048], best of 7) and its
    memory bandwidth (`memory_bandwidth`)."""
    n = 2048
    a = jnp.ones((n, n), dtype)
    peak = 2 * n**3 / best_seconds(jax.jit(lambda x, y: x @ y), a, a)
    return hardware.Chip("CPU (measured)", 0, peak, ("cpu",), memory_bandwidth(), None)


def chip_of_backend(dtype: str) -> hardware.Chip:
    """The figures the prediction divides by: measured on a CPU, else the chip's data sheet."""
    kind = jax.devices()[0].device_kind
    if jax.default_backend() == "cpu":
        return measured_cpu_chip(dtype)
    for chip in hardware.CHIPS.values():
        if kind in chip.device_kinds:
            return chip
    raise SystemExit(f"no figures for {kind!r} in jaxvrl/fit/hardware.py")


def _abstract(tree: Any) -> Any:
    """Arrays -> ShapeDtypeStructs (with their shardings), so a program can be lowered again after
    its arguments were donated."""

    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, np.ndarray):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        return x

    return jax.tree.map(one, tree)


@dataclasses.dataclass
class Calls:
    """One program at one signature: how to price it, and its timed calls."""

    name: str
    jitted: Any
    args: Any  # abstract
    seconds: list[float] = dataclasses.field(default_factory=list)
    trips: list[int] = dataclasses.field(default_factory=list)  # decode loop trips per call
    # Each call after the first at the roofline (`price`).
    priced: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class Recorder:
    """Times every call of the run's device programs, keyed by program and argument shapes."""

    def __init__(self) -> None:
        self.calls: dict[tuple, Calls] = {}

    def _entry(self, name: str, jitted: Any, args: tuple) -> Calls:
        leaves, treedef = jax.tree.flatten(args)
        key = (
            name,
            str(treedef),
            tuple((getattr(x, "shape", x), str(getattr(x, "dtype", ""))) for x in leaves),
        )
        if key not in self.calls:
            self.calls[key] = Calls(name, jitted, _abstract(args))
        return self.calls[key]

    def wrap(self, name: str, jitted: Any, program: Any = None):
        """`program` (default: `jitted`) timed on each call; `jitted` lowers it for pricing."""
        recorder = self
        run = program or jitted

        class Timed:
            def __call__(self, *args):
                entry = recorder._entry(name, jitted, args)
                start = time.perf_counter()
                out = jax.block_until_ready(run(*args))
                entry.seconds.append(time.perf_counter() - start)
                if isinstance(out, dict) and "num_steps" in out:  # the rollout's decode steps
                    entry.trips.append(max(int(out["num_steps"]) - 1, 1))
                return out

            def __getattr__(self, attribute):  # .trace, .lower: the jitted function's
                return getattr(jitted, attribute)

        return Timed()


def install(recorder: Recorder) -> None:
    """The trainer's programs timed: the stage plan's train step and log-prob program, and the
    sampler's compiled rollout."""
    plan_stage = run_plan.plan_stage

    def timed_plan(config, stage, graphdef, params):
        plan = plan_stage(config, stage, graphdef, params)
        return dataclasses.replace(
            plan,
            train_step=recorder.wrap(f"{stage.name}/train_step", plan.train_step),
            logprobs=recorder.wrap(f"{stage.name}/logprobs", plan.logprobs),
        )

    run_plan.plan_stage = timed_plan
    program_of = sampler_lib.Sampler._program

    def timed_program(self, static, args):
        compiled = program_of(self, static, args)
        return recorder.wrap("rl/rollout", self.jitted(static), compiled)

    sampler_lib.Sampler._program = timed_program


def price(entry: Calls, chip: hardware.Chip, chips: int) -> list[dict[str, Any]]:
    """Each timed call of a program after the first at the roofline, as jaxvrl.fit prices it
    (check.roofline, predict.program_seconds): matmul FLOPs over the chips at the peak, HBM bytes
    at the memory bandwidth, collective bytes at the interconnect's where the chip has one; the
    largest. The program is traced and compiled once; a loop that exits on data (the decode) is
    priced at each call's trips, each trip count once."""
    traced = entry.jitted.trace(*entry.args)
    text = traced.lower().compile().as_text()
    priced: dict[int, dict[str, Any]] = {}
    for trips in set(entry.trips[1:] or [1]):
        cost = hlo_cost.hlo_cost(text, while_trips=trips)
        result = check.Result(
            entry.name, 0.0, matmul_flops(traced.jaxpr, trips), None,
            hbm_bytes=cost.hbm_bytes, collective_bytes=cost.collective_bytes,
        )  # fmt: skip
        line = check.roofline(result, chip, chips)
        priced[trips] = {
            "flops": result.flops,
            "hbm_bytes": cost.hbm_bytes,
            "seconds": predict.program_seconds(line),
            "bound": line["bound"],
        }
    return [priced[t] for t in entry.trips[1:] or [1] * (len(entry.seconds) - 1)]


def main() -> None:
    """Runs the steps, prints the chip's figures and the table (bench/RESULTS.md holds a run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", default="", help="also write the results to this file")
    args, overrides = parser.parse_known_args()
    flags = [
        f"--config={args.config}",
        "--config.model.init=random",
        "--config.sft.steps=0",
        f"--config.rl.steps={args.steps}",
        "--config.eval.files=",
        "--config.metrics.progress=false",
        "--config.metrics.trackers=()",
        *overrides,
    ]
    config, _ = check._load_config(flags)
    chip = chip_of_backend(str(config.model.dtype))
    print(
        f"chip: {chip.name} ({jax.devices()[0].device_kind}), {chip.peak_bf16_flops / 1e9:.1f} "
        f"GFLOP/s peak ({config.model.dtype} matmul), "
        f"{chip.hbm_bytes_per_second / 1e9:.1f} GB/s memory",
        flush=True,
    )
    recorder = Recorder()
    install(recorder)
    with tempfile.TemporaryDirectory(prefix="step_time_") as workdir:
        trainer = train.Trainer(config, workdir)
        mesh, rules, chips = trainer.mesh, trainer.rules, trainer.mesh.size
        start = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - start
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r.get("stage") == "rl"][1:]  # step 1 holds the compiles
    host = statistics.mean(r["step_time/host"] for r in rows) if rows else float("nan")
    total = statistics.mean(r["step_time/total"] for r in rows) if rows else float("nan")

    print(f"{args.steps} RL steps in {wall:.1f} s on {chips} device(s); after the first step, a "
          f"step {total:.3f} s of which host {host:.3f} s ({host / total:.0%})")  # fmt: skip
    print(
        "| program | calls | measured s per call | predicted s per call | measured / predicted "
        "| bound | GFLOP per call | MB per call |"
    )
    print("|---|---|---|---|---|---|---|---|")
    results = []
    with activation_layout(mesh, rules):  # as the trainer traced them
        for entry in recorder.calls.values():
            entry.priced = price(entry, chip, chips) if len(entry.seconds) > 1 else []
    for entry in recorder.calls.values():
        seconds, trips, priced = entry.seconds[1:], entry.trips[1:], entry.priced
        if not seconds:
            continue
        predicted = statistics.mean(p["seconds"] for p in priced)
        measured = statistics.mean(seconds)
        bound = priced[-1]["bound"]
        name = entry.name + (f" ({statistics.mean(trips):.1f} decode trips)" if trips else "")
        gflop = statistics.mean(p["flops"] for p in priced) / 1e9
        megabytes = statistics.mean(p["hbm_bytes"] for p in priced) / 1e6
        print(
            f"| {name} | {len(seconds)} | {measured:.4f} | {predicted:.5f} | "
            f"{measured / predicted:.1f} | {bound} | {gflop:.2f} | {megabytes:.1f} |"
        )
        results.append(
            {"program": entry.name, "calls": len(seconds), "measured_seconds": measured,
             "predicted_seconds": predicted, "bound": bound, "trips": trips}
        )  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"chip": dataclasses.asdict(chip), "results": results, "host_seconds": host,
                       "step_seconds": total}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
