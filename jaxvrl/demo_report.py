"""The CPU demo's report: held-out accuracy before and after RL (jaxvrl/eval, benchmark
`video_r1`), the reward curve and the temporal bonus rate, printed and written to
WORKDIR/demo_eval.json (`python -m jaxvrl.train --config=configs/demo.py` ends with it)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def _headline(result: dict[str, Any] | None, metric: str) -> float | None:
    """`metric` of the first benchmark of one step's evaluation (the demo has one)."""
    for bench in (result or {}).get("benchmarks", {}).values():
        return bench.get("metrics", {}).get(metric)
    return None


def report(results: dict[str, Any], workdir: str) -> dict[str, Any]:
    """The demo's table: held-out accuracy before and after RL (jaxvrl/eval, benchmark
    `video_r1`), the reward curve, the temporal bonus rate. Written to WORKDIR/demo_eval.json;
    the full evaluation report is in WORKDIR/report/."""
    rl_rows = [h for h in results.get("history", []) if h.get("stage") == "rl"]
    rewards = [h["reward/total"] for h in rl_rows if h.get("reward/total") is not None]
    bonus = [h["temporal/bonus_rate"] for h in rl_rows if h.get("temporal/bonus_rate") is not None]
    tenth = max(1, len(rewards) // 10)
    before, after = results.get("before_rl"), results.get("after_rl")
    counts = [b.get("count") for b in (after or {}).get("benchmarks", {}).values()]
    report = {
        "accuracy_before": _headline(before, "accuracy"),
        "accuracy_after": _headline(after, "accuracy"),
        "unparseable_before": _headline(before, "unparseable"),
        "unparseable_after": _headline(after, "unparseable"),
        "eval_examples": counts[0] if counts else None,
        "reward_first_tenth": float(np.mean(rewards[:tenth])) if rewards else None,
        "reward_last_tenth": float(np.mean(rewards[-tenth:])) if rewards else None,
        "temporal_bonus_rate": float(np.mean(bonus)) if bonus else None,
        "rl_steps": len(rl_rows),
        "nonfinite_skips": results.get("nonfinite_skips", 0),
    }
    with open(os.path.join(workdir, "demo_eval.json"), "w") as f:
        json.dump(report, f, indent=2)
    r = {k: _fmt(v) for k, v in report.items()}
    lines = [
        "",
        "held-out accuracy      before RL   after RL",
        f"  accuracy             {r['accuracy_before']}      {r['accuracy_after']}",
        f"  unparseable          {r['unparseable_before']}      {r['unparseable_after']}",
        f"reward, first / last tenth of RL: {r['reward_first_tenth']} / {r['reward_last_tenth']}",
        f"temporal bonus rate (T-GRPO): {r['temporal_bonus_rate']}",
        f"written to {os.path.join(workdir, 'demo_eval.json')}",
    ]
    if results.get("report"):
        lines.append(f"evaluation report: {results['report']['markdown']}")
    print("\n".join(lines))
    return report


def _fmt(x) -> str:
    return "   n/a" if not isinstance(x, int | float) else f"{x:6.3f}"
