"""Evaluation with the rollout engine: every benchmark of `eval.files` is generated (greedy by
default), scored, and written as

    WORKDIR/predictions/<step>/<benchmark>.jsonl   one line per example: id, response, answer,
                                                   score and the per-record values
    WORKDIR/eval/<step>.json                       {"step", "sampling", "benchmarks": {name:
                                                   {"metrics", "count", "skipped", ...}}}

`eval.files` is a comma-separated list; each entry is `benchmark=path` (several files of one
benchmark joined with '+', e.g. SEED-Bench-R1's three levels) or a bare path, scored as its record
format's default benchmark (video_r1, seed_bench_r1, charades_sta, nextgqa, got10k).

Imports no trainer: jaxvrl/train.py and jaxvrl/evaluate.py both call in here.

With several JAX processes each generates its block of every batch (jaxvrl.data.pipeline), the
responses are gathered to every process (texts only) and scored there; process 0 writes.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxvrl import run_plan
from jaxvrl.data import pipeline
from jaxvrl.data import records as records_lib
from jaxvrl.data.batching import DataError
from jaxvrl.eval import benchmarks as benchmarks_lib
from jaxvrl.eval.references import Reference, load_rows, read_references
from jaxvrl.parallel import multihost
from jaxvrl.rollout.prompt_batch import Prompts
from jaxvrl.rollout.sampler import Sampler, SamplingParams

log = logging.getLogger(__name__)

# Per-benchmark settings (`eval.per_benchmark.<name>.<field>`; 0 = the eval-wide value).
RECORD_LEVEL_SKIPS = ("malformed_record", "unknown_problem_type")
PER_BENCHMARK_FIELDS = ("max_frames", "video_max_pixels", "video_total_pixels", "max_new_tokens")


@dataclasses.dataclass
class BenchmarkInput:
    """One benchmark of a suite: its files and their ground truth (read once)."""

    name: str
    paths: list[str]
    references: list[Reference]
    skipped: collections.Counter

    @property
    def benchmark(self) -> benchmarks_lib.Benchmark:
        return benchmarks_lib.get(self.name)


def parse_files(spec: str | Sequence[str]) -> list[tuple[str, list[str]]]:
    """`eval.files` -> [(benchmark, [paths])]. A bare path's benchmark comes from its format."""
    entries = records_lib.split_files(spec)
    out = []
    for entry in entries:
        name, sep, paths = entry.partition("=")
        if not sep:
            fmt, path = records_lib.split_format(entry)
            if fmt is None:
                rows, _ = load_rows(path)
                fmt = records_lib.detect_format(rows, path)
            out.append((benchmarks_lib.DEFAULT_FOR_FORMAT[fmt], [path]))
        else:
            benchmarks_lib.get(name.strip())
            out.append((name.strip(), [p.strip() for p in paths.split("+") if p.strip()]))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"eval.files names a benchmark twice: {names} (join files with '+')")
    return out


def references_for(name: str, paths: Sequence[str]) -> BenchmarkInput:
    """The ground truth of one benchmark's files (FormatError when a file is the wrong format);
    records of problem types the benchmark does not keep are counted as excluded."""
    bench = benchmarks_lib.get(name)
    refs, skipped = read_references(paths, bench.record_format, name)
    if bench.problem_types is not None:
        kept = [r for r in refs if r.truth.get("problem_type") in bench.problem_types]
        skipped["excluded_problem_type"] += len(refs) - len(kept)
        refs = kept
    return BenchmarkInput(name, list(paths), refs, skipped)


def load_suite(config: ml_collections.ConfigDict, only: Sequence[str] = ()) -> list[BenchmarkInput]:
    """Every benchmark of `config.eval.files` (or only the named ones), ground truth read."""
    parsed = parse_files(config.eval.files)
    if only:
        unknown = set(only) - {n for n, _ in parsed}
        if unknown:
            raise ValueError(
                f"benchmarks {sorted(unknown)} are not in eval.files {config.eval.files!r}"
            )
        parsed = [(n, p) for n, p in parsed if n in only]
    return [references_for(name, paths) for name, paths in parsed]


def setting(config: ml_collections.ConfigDict, name: str, field: str) -> int:
    """A per-benchmark value, falling back to `eval.<field>` (0 = the data / rl default)."""
    per = config.eval.get("per_benchmark", {}).get(name, {})
    return int(per.get(field, 0) or 0) or int(config.eval.get(field, 0) or 0)


def eval_data_config(
    config: ml_collections.ConfigDict, item: BenchmarkInput
) -> ml_collections.ConfigDict:
    """The run's config with the data section pointed at the benchmark's files: one pass in
    order, no companions, no SFT target, the evaluation frames and pixel budgets, and only the
    problem types the benchmark keeps."""
    out = ml_collections.ConfigDict(config.to_dict())
    data = out.data
    fmt = item.benchmark.record_format
    data.train_files = ",".join(f"{fmt}:{p}" for p in item.paths)
    data.shuffle = False
    data.num_epochs = 1
    data.shuffle_unit = "none"
    data.sft_target = False
    data.strict = False
    max_frames = setting(config, item.name, "max_frames")
    if max_frames:
        data.max_frames = max_frames
        data.min_frames = min(int(data.min_frames), max_frames)
    pixels = setting(config, item.name, "video_max_pixels")
    if pixels:
        data.video_max_pixels = pixels
        data.video_min_pixels = min(int(data.video_min_pixels), pixels)
    total = setting(config, item.name, "video_total_pixels")
    if total:
        data.video_total_pixels = total
    if config.eval.get("batch_size"):
        data.batch_size = int(config.eval.batch_size)
    if item.benchmark.problem_types is not None:
        kept = {
            k: v for k, v in data.type_instructions.items() if k in item.benchmark.problem_types
        }
        data.type_instructions = ml_collections.ConfigDict(kept)
    return out


def benchmark_sampling(config: ml_collections.ConfigDict, name: str) -> SamplingParams:
    """Greedy by default (`eval.greedy`); the papers' sampling (Video-R1: temperature 0.1,
    top_p 0.001) with `eval.greedy=False eval.temperature=... eval.top_p=...`."""
    max_new = setting(config, name, "max_new_tokens") or int(config.rl.max_completion_tokens)
    return run_plan.sampling_params(config, "eval", max_new, greedy=True)


def generate(
    state: Any,
    sampler: Sampler,
    config: ml_collections.ConfigDict,
    item: BenchmarkInput,
    *,
    max_examples: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, str], dict[str, int]]:
    """Responses by example key (the pipeline's origin) and the pipeline's skip counts."""
    if sampler.tokenizer is None:
        raise ValueError("evaluation needs a sampler with a tokenizer (to read the answers)")
    params = benchmark_sampling(config, item.name)
    dataset = pipeline.build_dataset(eval_data_config(config, item))
    iterator = iter(dataset)
    responses: list[tuple[int, int, str, str]] = []  # (batch, row, key, response)
    for i in itertools.count():
        batch = next(iterator, None)
        # Several processes generate in step: each its block of every batch; a process whose
        # share ran out generates a batch of fillers until all are done.
        if not multihost.agree_any(batch is not None):
            break
        if batch is None:
            sampler.sample(state, filler_prompts(), 1, params, seed=seed + i)
            continue
        keep = np.asarray(batch["example_mask"], bool)
        rollout = sampler.sample(state, Prompts.from_batch(batch), 1, params, seed=seed + i)
        for row, (origin, text, k) in enumerate(
            zip(batch["meta"]["origin"], rollout.texts, keep, strict=True)
        ):
            if k:
                responses.append((i, row, origin, text))
        done = multihost.sum_over_processes({"n": len(responses)})["n"]
        if max_examples is not None and done >= max_examples:
            break
    skips = multihost.sum_over_processes(dict(iterator.skip_counts()))
    # Every process's responses in the global order (batch, process, row): the first
    # `max_examples` are those one process would have generated.
    ordered = sorted(
        (batch, p, row, key, text)
        for p, part in enumerate(multihost.gather_objects(responses))
        for batch, row, key, text in part
    )
    merged = {key: text for *_, key, text in ordered[:max_examples]}
    return merged, {k: int(v) for k, v in skips.items()}


def filler_prompts() -> Prompts:
    """One prompt of one pad token: what a process whose share of a benchmark has run out
    samples while the others still generate (the rollout program is collective)."""
    return Prompts(
        np.zeros((1, 1), np.int32),
        np.ones((1, 1), bool),
        np.zeros((3, 1, 1), np.int32),
        np.zeros(1, np.int32),
    )


def evaluate_benchmark(
    state: Any,
    sampler: Sampler,
    config: ml_collections.ConfigDict,
    item: BenchmarkInput,
    *,
    max_examples: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(result, prediction rows) of one benchmark: metrics, counts, skips, throughput."""
    t0 = time.perf_counter()
    by_key, pipeline_skips = generate(
        state, sampler, config, item, max_examples=max_examples, seed=int(config.seed)
    )
    seconds = time.perf_counter() - t0
    bench = item.benchmark
    rows, scored = [], []
    for ref in item.references:
        if ref.key in by_key:
            s = bench.score(ref, by_key[ref.key])
            scored.append(s)
            rows.append(s.row(by_key[ref.key]))
    if not scored:
        raise ValueError(f"{item.name}: no example of {item.paths} could be generated")
    # Record-level skips are the reader's (the pipeline reads the same records); media and
    # length skips are the pipeline's. On a full pass, references generated for no known reason
    # (a record the pipeline rejects and the reader accepts) are counted too.
    skipped = collections.Counter(item.skipped)
    media = {k: v for k, v in pipeline_skips.items() if k not in RECORD_LEVEL_SKIPS}
    skipped.update(media)
    if max_examples is None:
        unaccounted = len(item.references) - len(scored) - sum(media.values())
        skipped["not_generated"] += max(0, unaccounted)
    return (
        {
            "metrics": bench.aggregate(scored),
            "count": len(scored),
            "skipped": {k: int(v) for k, v in sorted(skipped.items()) if v},
            "files": item.paths,
            "seconds": seconds,
            "examples_per_second": len(scored) / max(seconds, 1e-9),
        },
        rows,
    )


def evaluate_suite(
    state: Any,
    sampler: Sampler,
    config: ml_collections.ConfigDict,
    suite: Sequence[BenchmarkInput],
    step: int,
    workdir: str,
    *,
    max_examples: int | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluates every benchmark of the suite at `step`; writes the predictions and
    `eval/<step>.json` (when `write`) and returns that JSON's content. A benchmark that cannot be
    generated at all records its error instead of metrics; the others still run."""
    result: dict[str, Any] = {"step": int(step), "benchmarks": {}, "max_examples": max_examples}
    for item in suite:
        try:
            out, rows = evaluate_benchmark(state, sampler, config, item, max_examples=max_examples)
        except (ValueError, OSError, DataError) as e:  # e.g. every record skipped
            if multihost.count() > 1:
                raise  # the others are still generating: carrying on would pair collectives wrongly
            log.error("evaluation of %s failed: %s", item.name, e)
            result["benchmarks"][item.name] = {"error": str(e), "files": item.paths}
            continue
        params = benchmark_sampling(config, item.name)
        out["sampling"] = dataclasses.asdict(params)
        if write:
            path = predictions_path(workdir, step, item.name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            out["predictions"] = os.path.relpath(path, workdir)
        result["benchmarks"][item.name] = out
    if write:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(result_path(workdir, step), "w") as f:
            json.dump(result, f, indent=2)
    return result


def predictions_path(workdir: str, step: int, name: str) -> str:
    return os.path.join(workdir, "predictions", str(int(step)), f"{name}.jsonl")


def result_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, "eval", f"{int(step)}.json")


def load_result(workdir: str, step: int) -> dict[str, Any] | None:
    path = result_path(workdir, step)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def evaluated_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "eval")
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(n[:-5]) for n in os.listdir(directory) if n.endswith(".json") and n[:-5].isdigit()
    )


def flat_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """{"eval/<benchmark>/<metric>": value} of one step's result (metrics.jsonl, TensorBoard)."""
    out = {}
    for name, b in result.get("benchmarks", {}).items():
        for metric, value in b.get("metrics", {}).items():
            out[f"eval/{name}/{metric}"] = float(value)
    return out


def table(result: Mapping[str, Any]) -> str:
    """A plain-text table of one step's result: benchmark, count, skipped, metrics."""
    lines = [f"evaluation at step {result['step']}"]
    lines.append(f"  {'benchmark':<24}{'count':>7}{'skipped':>9}  metrics")
    for name, b in result.get("benchmarks", {}).items():
        if "error" in b:
            lines.append(f"  {name:<24}{'-':>7}{'-':>9}  error: {b['error']}")
            continue
        main = {k: v for k, v in b["metrics"].items() if "/" not in k}
        text = "  ".join(f"{k} {v:.3f}" for k, v in main.items())
        lines.append(f"  {name:<24}{b['count']:>7}{sum(b['skipped'].values()):>9}  {text}")
    return "\n".join(lines)
