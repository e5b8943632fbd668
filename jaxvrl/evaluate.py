"""Benchmark evaluation from the command line (the scorers live in jaxvrl/eval/).

Generate and score a run's checkpoint (the newest, or --step; a run without checkpoints
evaluates `model.path`) on the benchmarks of `eval.files`, greedy by default:

    python -m jaxvrl.evaluate [run] --config=configs/video_r1.py --workdir=RUN [--step=N] \
        [--benchmarks=vsibench,mvbench] \
        --config.eval.files=vsibench=/data/eval_vsibench.json,mvbench=/data/eval_mvbench.json \
        [--config.eval.per_benchmark.vsibench.max_frames=32 --config.eval.greedy=false ...]

writes RUN/predictions/<step>/<benchmark>.jsonl and RUN/eval/<step>.json and prints a table.

Score responses from anywhere (one JSON line per record: {"id": ..., "response": "..."}; the id
is the record's own id field, or its index / line number when it has none):

    python -m jaxvrl.evaluate score --benchmark=vsibench --records=FILE --predictions=FILE [--json]

The benchmarks and their record formats, and the report of a run (RUN/report/):

    python -m jaxvrl.evaluate list
    python -m jaxvrl.evaluate report --workdir=RUN
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jaxvrl import compile_cache, run_paths
from jaxvrl.eval import benchmarks, report, runner

SUBCOMMANDS = ("score", "list", "report")


def read_predictions(path: str) -> tuple[dict[str, str], int]:
    """{id: response} of a predictions JSONL file and the number of unreadable lines (not JSON,
    no id, or no string response); a later line with the same id replaces an earlier one."""
    out, bad = {}, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if (
                not isinstance(row, dict)
                or "id" not in row
                or not isinstance(row.get("response"), str)
            ):
                bad += 1
                continue
            out[str(row["id"])] = row["response"]
    return out, bad


def score_files(name: str, records: str, predictions: str) -> dict[str, Any]:
    """{"benchmark", "count", "metrics", "skipped"} of the predictions against the records."""
    item = runner.references_for(name, records.split("+"))
    responses, bad = read_predictions(predictions)
    pairs, missing = benchmarks.score_all(item.benchmark, item.references, responses)
    known = {r.id for r in item.references}
    skipped = dict(item.skipped)
    skipped.update(
        unreadable_prediction=bad,
        no_prediction=missing,
        unknown_id=sum(1 for i in responses if i not in known),
    )
    if not pairs:
        raise ValueError(f"no prediction of {predictions} matches a record id of {records}")
    return {
        "benchmark": name,
        "count": len(pairs),
        "metrics": item.benchmark.aggregate([s for s, _ in pairs]),
        "skipped": {k: int(v) for k, v in sorted(skipped.items()) if v},
    }


def cli(argv: list[str]) -> int:
    """The score / list / report subcommands (argv without the program name)."""
    parser = argparse.ArgumentParser(prog="python -m jaxvrl.evaluate")
    sub = parser.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="score responses from any tool against a benchmark file")
    sc.add_argument("--benchmark", required=True, choices=benchmarks.names())
    sc.add_argument("--records", required=True, help="benchmark file(s), '+'-joined")
    sc.add_argument("--predictions", required=True, help='JSONL of {"id", "response"}')
    sc.add_argument("--json", action="store_true", help="last line: one JSON object")
    sub.add_parser("list", help="the benchmarks, their record formats and scoring")
    rp = sub.add_parser("report", help="RUN/report/report.md and PNG plots")
    rp.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in benchmarks.names():
            b = benchmarks.get(name)
            print(f"{name:<24}{b.record_format:<16}{b.scoring}")
        return 0
    if args.command == "report":
        run_paths.require_local({"--workdir": args.workdir})
        out = report.write_report(args.workdir)
        print(f"wrote {out['markdown']} and {len(out['images'])} plots")
        return 0
    result = score_files(args.benchmark, args.records, args.predictions)
    lines = [f"{args.benchmark}: {result['count']} scored, skipped {result['skipped']}"]
    lines += [f"  {k:<40}{v:.4f}" for k, v in result["metrics"].items()]
    print("\n".join(lines))
    if args.json:
        print(json.dumps({k: result[k] for k in ("benchmark", "count", "metrics")}))
    return 0


def run(argv) -> None:
    """Generates and scores one step of a run (absl main; flags defined below)."""
    import logging

    import jax
    from absl import flags
    from flax import nnx

    from jaxvrl import policy, run_plan
    from jaxvrl.checkpoint import Checkpointer
    from jaxvrl.data import synthetic
    from jaxvrl.parallel.mesh import rules_from_config
    from jaxvrl.rollout.sampler import Sampler
    from model.sharding import activation_layout

    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    f = flags.FLAGS
    config = f.config
    run_paths.require_local_run(f.workdir, config)
    compile_cache.enable(str(config.train.compilation_cache_dir))
    if not config.eval.files:
        raise ValueError("set --config.eval.files (benchmark=path,...) to evaluate")
    only = [b.strip() for b in (f.benchmarks or "").split(",") if b.strip()]
    synthetic.ensure_from_config(config)  # a synthetic set is (re)built before it is read
    suite = runner.load_suite(config, only)
    model, tokenizer, mesh = policy.load_model_for(config)
    graphdef, state = nnx.split(model)
    checkpointer = Checkpointer(f.workdir, async_save=False)
    step = f.step if f.step is not None else checkpointer.latest_step()
    if step is not None and step > 0:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        state = checkpointer.restore_params(step, abstract)
    checkpointer.close()
    sampler = Sampler(model, mesh=mesh, tokenizer=tokenizer, config=run_plan.rollout_config(config))
    max_examples = int(config.eval.num_examples) or None
    with activation_layout(mesh, rules_from_config(config.mesh.rules)):
        result = runner.evaluate_suite(
            state, sampler, config, suite, step or 0, f.workdir, max_examples=max_examples
        )
    print(runner.table(result))
    print(f"written to {runner.result_path(f.workdir, step or 0)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        sys.exit(cli(sys.argv[1:]))
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        del sys.argv[1]
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "recipe config file", lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory (its newest checkpoint is evaluated)")
    flags.DEFINE_integer("step", None, "checkpointed step to evaluate (default: the newest)")
    flags.DEFINE_string("benchmarks", "", "comma-separated subset of eval.files' benchmarks")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(run)
