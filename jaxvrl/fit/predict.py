"""A step's time predicted from its compiled programs: each program's roofline (jaxvrl.fit.check
`roofline`: its matmul FLOPs at the chip's peak, its device-memory bytes at the HBM bandwidth,
its collective bytes at the interconnect bandwidth; the largest of the three, as if the other two
overlapped it) times how often a step runs it, summed per stage.

    prediction = predict_stage(programs, "rl", chips=8, peak_flops=989e12, tokens=...)

What it leaves out, so a measured step takes longer: the host's work between programs (data,
rewards, DAPO's refill, transfers: `step_time/host` measures it), kernels below their roofline
(attention's softmax, small matmuls, the decode's gathers), and collectives that do not overlap.
The parts: `rollout` (the sampler's program), `reference` (reference and old-policy log-probs),
`train` (the train step's forward and backward) and `optimizer` (its update of the parameters
and moments). The train step is one program; its optimizer part is compiled alone too
(`STAGE/optimizer_update`, steps.apply_gradients, runs_per_step 0) and its roofline moved from
the train step's to `optimizer`, once per train step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PARTS = {
    "rollout": "rollout",
    "reference_logprobs": "reference",
    "old_logprobs": "reference",
    "optimizer_update": "optimizer",
}


def part_of(program: str) -> str:
    """The part of a step a program belongs to, from its name ("rl/rollout" -> "rollout")."""
    return PARTS.get(program.split("/", 1)[-1], "train")


def program_seconds(p: dict[str, Any]) -> float | None:
    """One run of a program at its roofline, collectives included (the largest of compute,
    memory and collective seconds); None where the chip has no figures."""
    parts = [p.get("compute_seconds"), p.get("memory_seconds"), p.get("collective_seconds")]
    known = [x for x in parts if x is not None]
    if p.get("roofline_seconds") is None or not known:
        return None
    return max(known)


def predict_stage(
    programs: Sequence[dict[str, Any]],
    stage: str,
    chips: int,
    peak_flops: float,
    tokens: int,
) -> dict[str, Any] | None:
    """The predicted step of `stage` from its programs' report entries (each with
    runs_per_step), or None when a program has no roofline (a CPU target, a refusal)."""
    mine = [p for p in programs if p["name"].startswith(stage + "/") and p["runs_per_step"]]
    if not mine:
        return None
    split: dict[str, float] = {}
    flops = 0.0
    for p in mine:
        seconds = program_seconds(p)
        if seconds is None:
            return None
        part = part_of(p["name"])
        split[part] = split.get(part, 0.0) + seconds * p["runs_per_step"]
        flops += p["flops"] * p["runs_per_step"]
    update = next((p for p in programs if p["name"] == f"{stage}/optimizer_update"), None)
    seconds = None if update is None else program_seconds(update)
    if seconds is not None and "train" in split:
        runs = sum(p["runs_per_step"] for p in mine if part_of(p["name"]) == "train")
        moved = min(seconds * runs, split["train"])
        split["train"] -= moved
        split["optimizer"] = moved
    total = sum(split.values())
    return {
        "predicted_step_seconds": total,
        "split_seconds": split,
        "bound": {p["name"]: p["bound"] for p in mine},
        "tokens_per_step": tokens,
        "predicted_tokens_per_second_per_chip": tokens / total / chips if total else None,
        "predicted_mfu": flops / (total * chips * peak_flops) if total and peak_flops else None,
    }


def tokens_per_step(stage: str, config, largest, completion_tokens: int) -> int:
    """Tokens a step trains on, over all chips: SFT, every sequence's tokens; RL, every sample's
    prompt and completion (G samples per prompt), at the largest example's lengths."""
    from jaxvrl import run_plan

    rows = run_plan.prompts_per_step(config, stage)
    if stage == "sft":
        return rows * int(largest.sft_tokens)
    g = int(config.rl.num_generations)
    return rows * g * (int(largest.prompt_tokens) + int(completion_tokens))
