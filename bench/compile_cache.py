"""What the compilation cache (train.compilation_cache_dir, jaxvrl/compile_cache.py) saves a
restarted run: the demo run twice with one fresh cache directory, the second run in a fresh work
directory, so it compiles exactly the programs the first compiled.

    python bench/compile_cache.py [--out /tmp/compile_cache] [-- --config.rl.steps=2 ...]

Each run is `python -m jaxvrl.train --config=configs/demo.py` (plus the overrides after `--`;
default: the CI's shortened demo, 2 RL steps and 8 held-out examples). Prints, for both runs,
the compile figures of the last metrics.jsonl row (XLA compile or cache-load seconds, programs,
cache hits, tracing/lowering seconds) and the wall time, and the second run's compile seconds
as a share of the first's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["--config.rl.steps=2", "--config.eval.num_examples=8"]
FIELDS = ("compile/seconds", "compile/programs", "compile/cache_hits", "compile/lowering_seconds")


def run(workdir: str, cache: str, extra: list[str]) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    command = [
        sys.executable, "-m", "jaxvrl.train", "--config=configs/demo.py", f"--workdir={workdir}",
        f"--config.train.compilation_cache_dir={cache}", "--config.metrics.progress=false",
        *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    return {"wall_seconds": wall, **{k: last[k] for k in FIELDS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/compile_cache")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"] or SHORT
    cache = os.path.join(args.out, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    first = run(os.path.join(args.out, "first"), cache, extra)
    second = run(os.path.join(args.out, "second"), cache, extra)
    print(json.dumps({"overrides": extra, "first": first, "second": second}, indent=1))
    share = second["compile/seconds"] / max(first["compile/seconds"], 1e-9)
    print(f"second run's compile seconds: {share:.1%} of the first's")


if __name__ == "__main__":
    main()
