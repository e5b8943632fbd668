"""The fit check (python -m jaxvrl.fit) of the three 7B recipes on TPU slices and GPU nodes: per
program the peak memory per chip, the FLOPs of a step and the compile time, as one Markdown table;
where a program does not fit, how much over and the largest buffers alive at its peak; then each
recipe's step predicted at the roofline (jaxvrl/fit/predict.py) as a second table.

    python bench/fit_recipes.py [--topologies v5p:2x2x1,h100x8,v6e:2x4]
        [--recipes video_r1,videochat_r1,seed_bench_r1,seed_bench_r1_sft]
        [--out bench/fit_results] [--table-only]

Each (recipe, topology) runs `python -m jaxvrl.fit ... --json` in its own process, one at a time
(a 7B compile takes minutes and several GB of memory), and its JSON report is saved to
OUT/RECIPE__TOPOLOGY.json; a report already there is reused. The table is built from every report
in OUT. SEED-Bench-R1's examples hold a progress video and a current-observation image, so its
largest example is `--media=video+image`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxvrl.fit.peak import short_op  # noqa: E402 - after the repository is on the path

PARTS = ("rollout", "reference", "train", "optimizer")

RECIPES = {
    "video_r1": ["--config=configs/video_r1.py"],
    "videochat_r1": ["--config=configs/videochat_r1.py"],
    "seed_bench_r1": ["--config=configs/seed_bench_r1.py", "--media=video+image"],
    # The paper's SFT baseline (the recipe's docstring): one epoch at 128 sequences per update.
    "seed_bench_r1_sft": [
        "--config=configs/seed_bench_r1.py",
        "--media=video+image",
        "--config.rl.steps=0",
        "--config.sft.steps=47",
    ],
}


# Where a recipe needs a layout of its own on a topology (its docstring says so): VideoChat-R1's
# 8 prompts per update as 4 micro-batches of 2 on v6e's 32 GB chips (the same update: gradients
# are accumulated exactly, jaxvrl/steps.py).
TOPOLOGY_FLAGS = {
    ("videochat_r1", "v6e:2x4"): ["--config.data.batch_size=2", "--config.train.micro_batches=4"],
}


def run_one(recipe: str, topology: str, out_dir: str, extra: list[str]) -> dict | None:
    path = os.path.join(out_dir, f"{recipe}__{topology.replace(':', '_')}.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    command = [sys.executable, "-m", "jaxvrl.fit", *RECIPES[recipe], f"--topology={topology}"]
    command += [*TOPOLOGY_FLAGS.get((recipe, topology), []), *extra, "--json"]
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode not in (0, 1) or not lines:
        print(f"failed ({done.returncode}): {done.stderr[-3000:]}", flush=True)
        return None
    report = json.loads(lines[-1])
    report["recipe"] = recipe
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    report["command"] = " ".join(["python", *command[1:]])
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print("\n".join(lines[:-1]), flush=True)
    return report


def recipe_name(report: dict) -> str:
    """The recipe, with the layout flags of TOPOLOGY_FLAGS its run used (from its command)."""
    name = report.get("recipe") or report["config"].split("/")[-1].removesuffix(".py")
    used = report.get("command", "").split()
    flags = [f for f in TOPOLOGY_FLAGS.get((name, report["topology"]), []) if f in used]
    flags = [f.removeprefix("--config.") for f in flags]
    return f"{name} ({', '.join(flags)})" if flags else name


def buffer_text(b: dict) -> str:
    """`2 x bf16[4,2048,3584] 0.11 GiB (.../mlp/dot_general)`: one line of jaxvrl.fit's
    peak_buffers."""
    count = f"{b['count']} x " if b["count"] > 1 else ""
    return f"{count}`{b['shape'] or '?'}` {b['gib']:.2f} GiB (`{short_op(b['op'], 3)}`)"


def table(reports: list[dict]) -> str:
    rows = [
        "| recipe | topology | program | peak GiB / chip | of which resident outside | "
        "TFLOP per run (all chips) | compile s | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        for p in r["programs"]:
            verdict = "fits" if p["fits"] else "does not fit"
            if "refused" in p:
                verdict = "refused by the compiler"
                if p.get("needed_gib") is not None:
                    over = p["needed_gib"] - p["available_gib"]
                    verdict += (
                        f" ({p['needed_gib']:.2f} of {p['available_gib']:.2f} GiB, {over:.2f} over)"
                    )
            if not p["fits"] and p.get("peak_buffers"):
                verdict += "; largest at the peak: " + "; ".join(
                    buffer_text(b) for b in p["peak_buffers"][:3]
                )
            rows.append(
                f"| {recipe_name(r)} | {r['topology']} | {p['name']} | {p['peak_gib']:.2f} | "
                f"{p['resident_outside_gib']:.2f} | "
                f"{p['flops'] / 1e12:.1f} | {p['compile_seconds']:.0f} | {verdict} |"
            )
    rows.append("")
    rows.append(
        "| recipe | topology | chip memory GiB | peak GiB / chip | SFT step TFLOP | "
        "RL step TFLOP | fits |"
    )
    rows.append("|---|---|---|---|---|---|---|")
    for r in reports:
        sft = r["step_flops"].get("sft")
        rl = r["step_flops"].get("rl")
        rows.append(
            f"| {recipe_name(r)} | {r['topology']} | {r['chip_memory_gib']:.1f} | "
            f"{r['peak_gib']:.2f} | "
            f"{'-' if sft is None else f'{sft / 1e12:.0f}'} | "
            f"{'-' if rl is None else f'{rl / 1e12:.0f}'} | {'yes' if r['fits'] else 'NO'} |"
        )
    return "\n".join(rows)


def prediction_table(reports: list[dict]) -> str:
    """Each report's predicted RL step (jaxvrl/fit/predict.py; the SFT step where there is no RL
    stage): seconds and their split, tokens per step and per second per chip, MFU, the bound of
    its longest part, and the decode's bytes per completion token per chip."""
    rows = [
        "| recipe | topology | step s | rollout / reference / train / optimizer s | "
        "tokens per step | tokens/s per chip | MFU | longest part bound by | "
        "decode GB per token per chip |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        stages = r.get("predicted") or {}
        stage = "rl" if stages.get("rl") else "sft"
        guess = stages.get(stage)
        if not guess:
            continue
        split = guess["split_seconds"]
        programs = [p for p in r["programs"] if p["name"].startswith(stage + "/")]
        longest = max(programs, key=lambda p: (p["roofline_seconds"] or 0) * p["runs_per_step"])
        decode = [
            p["token_hbm_bytes_per_chip"] for p in programs if p.get("token_hbm_bytes_per_chip")
        ]
        parts = " / ".join(f"{split.get(k, 0.0):.2f}" for k in PARTS)
        rows.append(
            f"| {recipe_name(r)}{'' if stage == 'rl' else ' (SFT)'} | {r['topology']} | "
            f"{guess['predicted_step_seconds']:.2f} | {parts} | {guess['tokens_per_step']:,} | "
            f"{guess['predicted_tokens_per_second_per_chip']:,.0f} | "
            f"{guess['predicted_mfu']:.1%} | {longest['name']}: {longest['bound']} | "
            f"{'-' if not decode else f'{decode[0] / 1e9:.1f}'} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", default="v5p:2x2x1,h100x8,v6e:2x4")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "fit_results"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("extra", nargs="*", help="more jaxvrl.fit flags (e.g. --config.x=...)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.table_only:
        for topology in args.topologies.split(","):
            for recipe in args.recipes.split(","):
                run_one(recipe, topology, args.out, args.extra)
    reports = []
    for path in sorted(glob.glob(os.path.join(args.out, "*.json"))):
        with open(path) as f:
            reports.append(json.load(f))
    print(table(reports))
    print()
    print(prediction_table(reports))


if __name__ == "__main__":
    main()
