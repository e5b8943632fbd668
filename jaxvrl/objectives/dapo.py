"""DAPO's sampling-side techniques (Yu et al. 2025, "DAPO: an open-source LLM reinforcement
learning system at scale"): dynamic sampling and overlong reward shaping.

Dynamic sampling: a group whose rewards are all equal has zero advantage everywhere, so it carries
no policy gradient and only dilutes the batch. Such groups are dropped, and the step rolls out
further prompts until its batch holds enough groups with signal (or a limit of extra rounds is
spent). The step's arrays keep their static shapes: the groups kept are laid out row by row into
the step's usual P prompt rows per micro-batch, and rows left over when the limit is reached are
filled with dropped groups whose completions are fully masked (they weigh nothing in the loss).

Overlong shaping: a soft penalty on completions that run into a buffer before the length limit,
and optionally no loss at all on completions cut off by the limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxvrl.data.batching import bucket, pad_to
from model.config import VisionConfig
from model.packing import pack_vision


def soft_overlong_penalty(
    lengths: np.ndarray, max_length: int, buffer: int, factor: float = 1.0
) -> np.ndarray:
    """DAPO's soft overlong punishment (eq. 13): 0 up to max_length - buffer, then falling
    linearly to -factor at max_length (and -factor past it). lengths: [n] completion tokens."""
    lengths = np.asarray(lengths, np.float64)
    if buffer <= 0:
        return np.zeros(lengths.shape, np.float32)
    start = max_length - buffer
    penalty = np.clip((start - lengths) / buffer, -1.0, 0.0)
    return (factor * penalty).astype(np.float32)


@dataclasses.dataclass
class Candidate:
    """One rolled-out pipeline batch: its raw batch (host `meta` with each row's vision grids),
    its training batch (scoring.training_batch layout) and which prompt rows to drop [P]."""

    raw: dict[str, Any]
    train: dict[str, Any]
    drop: np.ndarray


@dataclasses.dataclass(frozen=True)
class Selection:
    """The rows a step trains on: (candidate, row) picks per micro-batch, and how many of them
    are masked fillers."""

    picks: list[list[tuple[int, int]]]
    kept_groups: int
    filler_rows: int


def select_rows(candidates: Sequence[Candidate], num_batches: int, rows: int) -> Selection:
    """Lays the kept groups of `candidates`, in order, into `num_batches` micro-batches of `rows`
    prompt rows; missing rows are filled with dropped rows (masked when assembled)."""
    kept = [
        (c, r)
        for c, cand in enumerate(candidates)
        for r in range(len(cand.drop))
        if not cand.drop[r]
    ]
    spare = [
        (c, r) for c, cand in enumerate(candidates) for r in range(len(cand.drop)) if cand.drop[r]
    ]
    need = num_batches * rows
    chosen = kept[:need]
    fillers = spare[: need - len(chosen)]
    if len(chosen) + len(fillers) < need:
        raise ValueError(f"{len(chosen) + len(fillers)} rows for {need} slots")
    flat = chosen + fillers
    picks = [flat[i * rows : (i + 1) * rows] for i in range(num_batches)]
    return Selection(picks=picks, kept_groups=len(chosen), filler_rows=len(fillers))


def refill(
    candidates: list[Candidate],
    roll_out_more: Callable[[int], Candidate | None],
    max_extra_rounds: int,
    agree: Callable[[bool], bool] = bool,
) -> int:
    """Rolls out further batches (`roll_out_more(round)`, None when the data is exhausted) until
    the kept groups fill as many rows as the first candidates hold, or `max_extra_rounds` are
    spent. Appends to `candidates`; returns the number of extra rounds run. With several
    processes `agree` (jaxvrl.parallel.multihost.agree_any) makes all run a round while any
    needs it."""
    need = sum(len(c.drop) for c in candidates)
    rounds = 0
    while rounds < max_extra_rounds and agree(sum(int((~c.drop).sum()) for c in candidates) < need):
        more = roll_out_more(rounds)
        if more is None:
            break
        candidates.append(more)
        rounds += 1
    return rounds


def dropped_groups(candidates: Sequence[Candidate]) -> int:
    """Real groups dropped for zero variance (filler rows of short batches are not counted)."""
    return sum(int((c.drop & np.asarray(c.raw["example_mask"], bool)).sum()) for c in candidates)


def _row_patches(raw: dict[str, Any], vision: dict[str, np.ndarray], row: int) -> tuple:
    """A prompt row's vision items: (patches [n, patch_dim], grids [items, 3])."""
    grids_per_row = [np.asarray(g, np.int64).reshape(-1, 3) for g in raw["meta"]["grid_thw"]]
    counts = [int(np.prod(g, axis=1).sum()) if len(g) else 0 for g in grids_per_row]
    start = int(sum(counts[:row]))
    return np.asarray(vision["patches"])[start : start + counts[row]], grids_per_row[row]


def assemble(
    candidates: Sequence[Candidate],
    picks: Sequence[tuple[int, int]],
    masked: Sequence[bool],
    vision_config: VisionConfig,
    patch_buckets: Sequence[int],
) -> dict[str, Any]:
    """One training batch (scoring.training_batch layout) of the picked prompt rows with their
    G completions each; `masked` rows keep their arrays but get no loss weight (mask 0,
    advantage 0). Token axes are padded on the right to the longest source; vision is re-packed."""
    g = len(candidates[0].train["sample_to_prompt"]) // len(candidates[0].drop)
    prompt_len = max(np.asarray(candidates[c].train["prompt_ids"]).shape[1] for c, _ in picks)
    completion_len = max(
        np.asarray(candidates[c].train["completion_ids"]).shape[1] for c, _ in picks
    )
    out: dict[str, list] = {
        k: []
        for k in (
            "prompt_ids",
            "prompt_mask",
            "prompt_positions",
            "rope_deltas",
            "completion_ids",
            "completion_mask",
            "advantages",
            "sampler_logp",
        )
    }
    patches, grids = [], []
    for (c, r), hide in zip(picks, masked, strict=True):
        t = candidates[c].train
        out["prompt_ids"].append(pad_to(np.asarray(t["prompt_ids"])[r], 0, prompt_len))
        out["prompt_mask"].append(pad_to(np.asarray(t["prompt_mask"])[r], 0, prompt_len))
        out["prompt_positions"].append(
            pad_to(np.asarray(t["prompt_positions"])[:, r], 1, prompt_len)
        )
        out["rope_deltas"].append(np.asarray(t["rope_deltas"])[r])
        samples = slice(r * g, (r + 1) * g)
        mask = np.asarray(t["completion_mask"])[samples]
        if hide:
            mask = np.zeros_like(mask)
        out["completion_ids"].append(
            pad_to(np.asarray(t["completion_ids"])[samples], 1, completion_len)
        )
        out["completion_mask"].append(pad_to(mask, 1, completion_len))
        out["advantages"].append(
            np.zeros(g, np.float32) if hide else np.asarray(t["advantages"])[samples]
        )
        out["sampler_logp"].append(
            pad_to(np.asarray(t["sampler_logp"])[samples] * mask, 1, completion_len)
        )
        if t.get("vision") is not None:
            p, grid = _row_patches(candidates[c].raw, t["vision"], r)
            patches.append(p)
            grids.append(grid)
    batch: dict[str, Any] = {
        "prompt_ids": np.stack(out["prompt_ids"]).astype(np.int32),
        "prompt_mask": np.stack(out["prompt_mask"]).astype(bool),
        "prompt_positions": np.stack(out["prompt_positions"], axis=1).astype(np.int32),
        "rope_deltas": np.asarray(out["rope_deltas"], np.int32),
        "vision": None,
        "sample_to_prompt": np.repeat(np.arange(len(picks)), g).astype(np.int32),
        "completion_ids": np.concatenate(out["completion_ids"]).astype(np.int32),
        "completion_mask": np.concatenate(out["completion_mask"]).astype(bool),
        "advantages": np.concatenate(out["advantages"]).astype(np.float32),
        "sampler_logp": np.concatenate(out["sampler_logp"]).astype(np.float32),
    }
    if patches:
        grid = np.concatenate(grids).reshape(-1, 3)
        total = int(np.prod(grid, axis=1).sum()) if len(grid) else 0
        num_patches = bucket(max(total, 1), tuple(patch_buckets))
        num_patches += -num_patches % vision_config.merge_unit
        batch["vision"] = pack_vision(patches, grid, vision_config, num_patches)
    return batch
