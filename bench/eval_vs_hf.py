"""Evaluation throughput: jaxvrl's evaluation (jaxvrl/eval, the rollout engine) against
transformers `generate` on the same tiny model and the same video prompts, greedy, one timed run
each (float32, CPU by default).

    python bench/eval_vs_hf.py [--examples 128] [--new-tokens 32] [--batch-size 16]

The model and prompts are the CPU demo's (configs/demo.py): its tiny random Qwen2-VL (seed 0),
saved with `save_pretrained` and loaded by transformers, and its held-out videos (4 frames of
112 x 112 each, the multiple-choice question of the demo template), read once by our data
pipeline. Both sides get the same batches of `--batch-size` prompts (token ids, the same decoded
patches; HF's prompts re-padded on the left).

Three measurements, each after a warm-up run (our compilation is reported apart):

- end to end: `jaxvrl.eval.runner.evaluate_suite` on the benchmark file, greedy, stopping at the
  end-of-turn token: reading and decoding the videos, tokenising, generating, scoring, writing
  the predictions. Examples per second.
- generation, natural stops: both sides greedy on the same batches, each stopping at its stop
  tokens (max `--new-tokens`); the fraction of identical completions is printed (same weights,
  float32: the greedy tokens should agree).
- generation, fixed length: both sides forced to exactly `--new-tokens` tokens per example (HF
  `min_new_tokens`, ours `SamplingParams.min_new_tokens`), the same work on both sides.

HF runs once per torch thread count of `--hf-threads` (default 1 and 2) and keeps its best. The
last line printed is `speedup_vs_hf: X.XX` (fixed-length generation, HF time / ours).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs import demo  # noqa: E402
from jaxvrl import policy, run_plan  # noqa: E402
from jaxvrl.data import pipeline, synthetic  # noqa: E402
from jaxvrl.eval import runner  # noqa: E402
from jaxvrl.rollout.prompt_batch import Prompts  # noqa: E402
from jaxvrl.rollout.sampler import Sampler, SamplingParams, default_stop_tokens  # noqa: E402
from model.hf import save_pretrained  # noqa: E402


def hf_inputs(batch, cfg) -> list[dict]:
    """One transformers `generate` input per real row group: the batch's rows (filler rows
    dropped) left-padded, and their videos' patches (the packed patches without the padding)."""
    import torch

    keep = np.asarray(batch["example_mask"], bool)
    ids = np.asarray(batch["input_ids"])[keep]
    mask = np.asarray(batch["attention_mask"])[keep]
    grids = [g for g, k in zip(batch["meta"]["grid_thw"], keep, strict=True) if k]
    grid = np.asarray([item for row in grids for item in row], np.int64)
    total = int(np.prod(grid, axis=1).sum())
    rows = [r[m.astype(bool)] for r, m in zip(ids, mask, strict=True)]
    length = max(len(r) for r in rows)
    pad = cfg.pad_token_id or 0
    input_ids = np.full((len(rows), length), pad, np.int64)
    attention = np.zeros((len(rows), length), np.int64)
    for i, r in enumerate(rows):
        input_ids[i, length - len(r) :] = r
        attention[i, length - len(r) :] = 1
    token_type = np.zeros_like(input_ids)
    token_type[input_ids == cfg.video_token_id] = 2
    token_type[input_ids == cfg.image_token_id] = 1
    return {
        "input_ids": torch.tensor(input_ids),
        "attention_mask": torch.tensor(attention),
        "mm_token_type_ids": torch.tensor(token_type),
        "pixel_values_videos": torch.tensor(np.asarray(batch["vision"]["patches"])[:total]),
        "video_grid_thw": torch.tensor(grid),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directory", default=demo.DEFAULT_DIR, help="the demo's synthetic set")
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--hf-threads", default="1,2", help="torch thread counts; HF keeps its best"
    )
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForImageTextToText

    hf_threads = [int(n) for n in args.hf_threads.split(",")]
    config = demo.get_config(args.directory)
    synthetic.ensure_from_config(config)
    config.eval.files = os.path.join(args.directory, "eval.json")
    config.eval.batch_size = args.batch_size
    config.eval.max_new_tokens = args.new_tokens
    config.eval.num_examples = args.examples
    model, tokenizer, mesh = policy.load_model_for(config)
    cfg = model.config
    _, state = nnx.split(model)
    hf_dir = tempfile.mkdtemp(prefix="jaxvrl_bench_eval_")
    save_pretrained(model, hf_dir, tokenizer_dir=config.model.path)
    torch_model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32).eval()
    sampler = Sampler(model, mesh=mesh, tokenizer=tokenizer, config=run_plan.rollout_config(config))
    suite = runner.load_suite(config)
    print(
        f"model: the demo's tiny Qwen2-VL (hidden {cfg.text.hidden_size}, "
        f"{cfg.text.num_layers} layers, vision depth {cfg.vision.depth}); float32; "
        f"devices {jax.devices()}; torch threads tried {hf_threads}"
    )

    # End to end through jaxvrl/eval (warm-up run first: compiles).
    workdir = tempfile.mkdtemp(prefix="jaxvrl_bench_eval_run_")
    t0 = time.perf_counter()
    runner.evaluate_suite(state, sampler, config, suite, 0, workdir, max_examples=args.examples)
    warm_e2e = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = runner.evaluate_suite(
        state, sampler, config, suite, 1, workdir, max_examples=args.examples
    )
    e2e = time.perf_counter() - t0
    bench = result["benchmarks"]["video_r1"]
    print(
        f"jaxvrl end to end ({bench['count']} examples: videos read, generated, scored): "
        f"{e2e:.2f} s = {bench['count'] / e2e:.1f} examples/s (first run {warm_e2e:.2f} s, "
        f"{sampler.num_compilations} programs); accuracy {bench['metrics']['accuracy']:.3f}"
    )

    data_config = runner.eval_data_config(config, suite[0])
    batches = []
    for batch in pipeline.build_dataset(data_config):
        batches.append(batch)
        if sum(int(np.asarray(b["example_mask"]).sum()) for b in batches) >= args.examples:
            break
    n = sum(int(np.asarray(b["example_mask"]).sum()) for b in batches)
    inputs = [hf_inputs(b, cfg) for b in batches]
    stops = tuple(default_stop_tokens(cfg, tokenizer))

    def trimmed(tokens: list[int]) -> list[int]:
        """A completion up to and including its first stop token."""
        for i, t in enumerate(tokens):
            if t in stops:
                return tokens[: i + 1]
        return tokens

    def ours(fixed: bool) -> tuple[float, list[list[int]]]:
        params = SamplingParams(
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens if fixed else 0,
            greedy=True,
            stop_token_ids=stops,
        )
        out_tokens = []
        start = time.perf_counter()
        for b in batches:
            out = sampler.sample(state, Prompts.from_batch(b), 1, params, seed=0)
            tokens, lengths = jax.device_get((out.tokens, out.lengths))
            keep = np.asarray(b["example_mask"], bool)
            out_tokens += [
                list(t[:n_]) for t, n_, k in zip(tokens, lengths, keep, strict=True) if k
            ]
        return time.perf_counter() - start, out_tokens

    def hf(fixed: bool) -> tuple[float, list[list[int]]]:
        out_tokens = []
        start = time.perf_counter()
        for kw in inputs:
            with torch.no_grad():
                out = torch_model.generate(
                    **kw,
                    do_sample=False,
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens if fixed else 0,
                    pad_token_id=cfg.pad_token_id or 0,
                    eos_token_id=list(stops),
                )
            for row in out[:, kw["input_ids"].shape[1] :].tolist():
                out_tokens.append(row)
        return time.perf_counter() - start, out_tokens

    def hf_best(fixed: bool) -> tuple[float, list[list[int]], dict[int, float]]:
        """HF once per torch thread count, keeping the best: on a shared 2-core VM 2 OpenMP
        threads are sometimes many times slower than 1 (CPU steal stalls their barriers)."""
        per = {}
        for n_threads in hf_threads:
            torch.set_num_threads(n_threads)
            per[n_threads], tokens = hf(fixed)
        return min(per.values()), tokens, per

    times = {}
    for fixed in (False, True):
        ours(fixed)  # compiles this program
        hf(fixed)
        t_ours, tok_ours = ours(fixed)
        t_hf, tok_hf, per = hf_best(fixed)
        times[fixed] = (t_ours, t_hf)
        label = f"fixed {args.new_tokens} tokens" if fixed else "natural stops"
        print(f"  HF by torch threads: { {k: round(v, 2) for k, v in per.items()} } s")
        same = sum(trimmed(a) == trimmed(b) for a, b in zip(tok_ours, tok_hf, strict=True))
        mean_length = np.mean([len(trimmed(a)) for a in tok_ours])
        print(
            f"generation, {label}, {n} examples in {len(batches)} batches: jaxvrl {t_ours:.2f} s "
            f"= {n / t_ours:.1f} examples/s, HF {t_hf:.2f} s = {n / t_hf:.1f} examples/s, "
            f"{t_hf / t_ours:.2f}x; identical completions {same}/{n}, mean length "
            f"{mean_length:.1f} tokens"
        )
    print(f"speedup_vs_hf: {times[True][1] / times[True][0]:.2f}")


if __name__ == "__main__":
    main()
