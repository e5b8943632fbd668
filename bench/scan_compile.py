"""Compile time of a recipe's RL programs with the decoder layers and vision blocks scanned
(`model.scan_layers=true`, model/stack.py) and unrolled, one after the other in one run, from the
fit check's ahead-of-time compiles (nothing executes; runs on a CPU-only host).

    python bench/scan_compile.py [--config configs/video_r1.py] [--topology v5p:2x2x1]
        [--out /tmp/scan_compile]

Each layout runs `python -m jaxvrl.fit CONFIG --topology=T --config.sft.steps=0 --json` in its
own process (the RL stage's programs only) and its report goes to OUT/<layout>.json. Prints, per
program, the compile seconds and peak GiB per chip of both layouts and their ratio, as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fit(config: str, topology: str, scan: bool, out: str) -> dict:
    path = os.path.join(out, f"{'scanned' if scan else 'unrolled'}.json")
    command = [
        sys.executable, "-m", "jaxvrl.fit", f"--config={config}", f"--topology={topology}",
        "--config.sft.steps=0", f"--config.model.scan_layers={str(scan).lower()}", "--json",
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode not in (0, 1):  # 1: a program does not fit (still a report)
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])  # the report's last line
    report["wall_seconds"] = wall
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/video_r1.py")
    parser.add_argument("--topology", default="v5p:2x2x1")
    parser.add_argument("--out", default="/tmp/scan_compile")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    scanned = fit(args.config, args.topology, True, args.out)
    unrolled = fit(args.config, args.topology, False, args.out)
    lines = [
        f"{args.config} on {args.topology}: the RL stage's programs, compile seconds and peak GiB "
        "per chip",
        "",
        "| program | unrolled compile s | scanned compile s | unrolled / scanned | unrolled peak | "
        "scanned peak |",
        "|---|---|---|---|---|---|",
    ]
    by_name = {p["name"]: p for p in scanned["programs"]}
    for p in unrolled["programs"]:
        s = by_name[p["name"]]
        ratio = p["compile_seconds"] / max(s["compile_seconds"], 1e-9)
        lines.append(
            f"| {p['name']} | {p['compile_seconds']:.1f} | {s['compile_seconds']:.1f} | "
            f"{ratio:.1f}x | {p['peak_gib']:.2f} | {s['peak_gib']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"whole fit check: unrolled {unrolled['wall_seconds']:.0f} s, scanned "
        f"{scanned['wall_seconds']:.0f} s (wall clock, tracing and lowering included)"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
