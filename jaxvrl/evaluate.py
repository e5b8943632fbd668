"""Benchmark evaluation: every record of an evaluation file, one greedy (or sampled) answer each,
scored by the recipe's accuracy and format rewards.

    python -m jaxvrl.evaluate --config=configs/seed_bench_r1.py --workdir=RUN_DIR \
        --config.eval.files=/data/seed_bench_r1/L1.jsonl
"""

from __future__ import annotations

import collections
import json
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from jaxvrl import rewards
from jaxvrl.data import pipeline
from jaxvrl.rollout import Prompts, Sampler, SamplingParams

log = logging.getLogger(__name__)


def eval_data_config(config: ml_collections.ConfigDict, files: str) -> ml_collections.ConfigDict:
    """The run's config with the data section pointed at `files`: one pass, in order, no
    companions, the evaluation pixel budget."""
    out = ml_collections.ConfigDict(config.to_dict())
    data = out.data
    data.train_files = files
    data.shuffle = False
    data.num_epochs = 1
    data.shuffle_unit = "none"
    data.sft_target = False
    ev = config.get("eval", {})
    if ev.get("video_max_pixels"):
        data.video_max_pixels = int(ev.video_max_pixels)
        data.video_min_pixels = min(int(data.video_min_pixels), data.video_max_pixels)
    if ev.get("batch_size"):
        data.batch_size = int(ev.batch_size)
    return out


def evaluate(
    state: Any,
    sampler: Sampler,
    config: ml_collections.ConfigDict,
    files: str,
    *,
    max_examples: int | None = None,
    params: SamplingParams | None = None,
    accuracy_reward: str = "accuracy",
) -> dict[str, Any]:
    """Scores the model (parameters `state`) on every record of `files`. Returns the mean
    accuracy and format reward, the count, per-problem-type accuracy and a few sample answers."""
    if sampler.tokenizer is None:
        raise ValueError("evaluation needs a sampler with a tokenizer (to read the answers)")
    params = params or SamplingParams(
        max_new_tokens=int(config.rl.max_completion_tokens), greedy=True
    )
    dataset = pipeline.build_dataset(eval_data_config(config, files))
    accuracy_fn = rewards.get(accuracy_reward)
    format_fn = rewards.get("format")
    scores: list[float] = []
    formats: list[float] = []
    by_type: dict[str, list[float]] = collections.defaultdict(list)
    samples: list[dict[str, str]] = []
    iterator = iter(dataset)
    for batch in iterator:
        meta = batch["meta"]
        keep = np.asarray(batch["example_mask"], bool)
        rollout = sampler.sample(state, Prompts.from_batch(batch), 1, params, seed=0)
        texts = [t for t, k in zip(rollout.texts, keep, strict=True) if k]
        solutions = [s for s, k in zip(meta["solution"], keep, strict=True) if k]
        types = [p for p, k in zip(meta["problem_type"], keep, strict=True) if k]
        acc = accuracy_fn(texts, solutions, problem_type=types)
        fmt = format_fn(texts, solutions)
        scores += acc
        formats += fmt
        for t, a in zip(types, acc, strict=True):
            by_type[t].append(a)
        if len(samples) < 8:
            samples += [{"answer": t, "solution": s} for t, s in zip(texts, solutions, strict=True)]
        if max_examples is not None and len(scores) >= max_examples:
            break
    skipped = getattr(iterator, "skip_counts", lambda: {})()
    if not scores:
        raise ValueError(f"no evaluation examples could be read from {files}")
    return {
        "accuracy": float(np.mean(scores)),
        "format": float(np.mean(formats)),
        "count": len(scores),
        "skipped": int(sum(skipped.values())) if isinstance(skipped, dict) else 0,
        "accuracy_by_type": {k: float(np.mean(v)) for k, v in sorted(by_type.items())},
        "samples": samples[:8],
    }


def main(argv) -> None:
    from absl import flags

    from jaxvrl import train

    flags_ = flags.FLAGS
    config = flags_.config
    model, tokenizer, mesh = train.load_model_for(config, flags_.workdir)
    sampler = Sampler(model, mesh=mesh, tokenizer=tokenizer, config=train.rollout_config(config))
    files = config.eval.files or config.data.train_files
    result = evaluate(model, sampler, config, files)
    out = os.path.join(flags_.workdir, "eval.json")
    os.makedirs(flags_.workdir, exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "recipe config file", lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory (its newest checkpoint is evaluated)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
