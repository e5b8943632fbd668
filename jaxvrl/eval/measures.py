"""The metrics' arithmetic: relative accuracy, interval and box IoU. Pure functions of floats."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# theta in {0.50, 0.55, ..., 0.95}: VSI-Bench's confidence thresholds.
MRA_THRESHOLDS = 0.5 + 0.05 * np.arange(10)
RECALL_THRESHOLDS = (0.3, 0.5, 0.7)


def mean_relative_accuracy(pred: float, truth: float, *, strict: bool = False) -> float:
    """MRA = mean over theta of [|pred - truth| / |truth| <= 1 - theta] (VSI-Bench, "Thinking in
    Space"). `strict` uses `<` as Video-R1 src/eval_bench.py `mean_relative_accuracy` does. A zero
    truth scores 1 for an exact prediction and 0 otherwise."""
    if truth == 0:
        return float(pred == 0)
    error = abs(pred - truth) / abs(truth)
    bound = 1.0 - MRA_THRESHOLDS
    hits = error < bound if strict else error <= bound
    return float(np.mean(hits))


def span_iou(pred: Sequence[float], truth: Sequence[float]) -> float:
    """Temporal IoU of [start, end] spans, as VideoChat-R1 src_eval/evaluate_grounding.py:
    (min(e, e') - max(s, s')) / (max(e, e') - min(s, s')), negative clipped to 0. An inverted or
    zero-length prediction has no intersection and scores 0; so does a zero union."""
    (s, e), (ts, te) = pred, truth
    union = max(e, te) - min(s, ts)
    if union <= 0:
        return 0.0
    return max(0.0, (min(e, te) - max(s, ts)) / union)


def merge_intervals(intervals: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """Sorted by start, overlapping or touching intervals joined."""
    merged: list[list[float]] = []
    for start, end in sorted((float(a), float(b)) for a, b in intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def merged_interval_iou(pred: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> float:
    """IoU of two sets of intervals after merging each (NExT-GQA grounding, VideoChat-R1
    src_eval/evaluate_gqa.py `compute_iou`); two empty sets (zero union) score 1."""
    a, b = merge_intervals(pred), merge_intervals(truth)
    intersection = sum(max(0.0, min(ae, be) - max(as_, bs)) for as_, ae in a for bs, be in b)
    union = sum(e - s for s, e in a) + sum(e - s for s, e in b) - intersection
    if union == 0:
        return 1.0
    return intersection / union


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of boxes [x0, y0, x1, y1]; a zero union scores 0 (VideoChat-R1
    src_eval/evaluate_track.py `calculate_iou`)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union != 0 else 0.0


def average_overlap(pred: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> float:
    """Mean box IoU over the frames of one clip (GOT-10k's average overlap per sequence)."""
    if len(pred) != len(truth):
        raise ValueError(f"{len(pred)} predicted boxes for {len(truth)} ground-truth boxes")
    return float(np.mean([box_iou(p, t) for p, t in zip(pred, truth, strict=True)]))
