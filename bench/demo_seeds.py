"""The CPU demo on several seeds, one run after another: held-out accuracy before and after RL,
the gain, and the minutes each run took, as a Markdown table (for bench/RESULTS.md).

    python bench/demo_seeds.py --seeds=0,1,2,3,4 --out=/tmp/demo_seeds [-- --config.rl.steps=200]

Each run is the README's command with `--config.seed=N` (every random stream of the run: the
random init, the data order, the SFT stage's data stream, the frame shuffles and the sampling) in
its own fresh work directory and compilation cache (each run compiles everything, as on a fresh
machine). Runs are sequential: the minutes are only meaningful on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_seed(seed: int, out: str, extra: list[str]) -> dict:
    workdir = os.path.join(out, f"seed_{seed}")
    shutil.rmtree(workdir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "jaxvrl.train",
        "--config=configs/demo.py",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        "--config.metrics.progress=false",
        # A compilation cache of its own: every run compiles all it runs, as a first run does.
        f"--config.train.compilation_cache_dir={os.path.join(workdir, 'compilation_cache')}",
        *extra,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    minutes = (time.perf_counter() - start) / 60
    # What the run printed (its terminal), for reading beside train.log.
    with open(os.path.join(workdir, "terminal.txt"), "w") as f:
        f.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"seed {seed} failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(workdir, "demo_eval.json")) as f:
        report = json.load(f)
    before, after = report["accuracy_before"], report["accuracy_after"]
    return {
        "seed": seed,
        "before": before,
        "after": after,
        "gain": after - before,
        "minutes": minutes,
        "passes": after >= 0.8 and (after - before >= 0.2 or (before > 0.75 and after >= 0.95)),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| seed | held-out after SFT | after RL | gain | minutes | >= 0.8 and +0.2 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['before']:.3f} | {r['after']:.3f} | {r['gain']:+.3f} | "
            f"{r['minutes']:.1f} | {'yes' if r['passes'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default="/tmp/jaxvrl_demo_seeds")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON last")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows.append(run_seed(seed, args.out, extra))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{cpu_model()}, {os.cpu_count()} cores; overrides: {' '.join(extra) or 'none'}")
    print(table(rows))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
