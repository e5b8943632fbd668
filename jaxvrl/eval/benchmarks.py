"""Benchmarks as registered scorers: each names its record format, scores one response against
one `Reference`, and aggregates the scored rows into its metrics.

    bench = benchmarks.get("vsibench")
    rows = [bench.score(ref, response) for ref, response in pairs]
    metrics = bench.aggregate(rows)    # {"accuracy": ..., "mra": ..., "video_r1_avg": ...}

Metric names: `accuracy`, `mra`, `miou`, `r@0.3`, `r@0.5`, `r@0.7`, `overlap` where they apply;
`unparseable` (the fraction of responses nothing could be read from, each scored 0); per-group
scores as `task/<name>` (sub-task, VSI-Bench task, NExT-GQA question type) or `level/<name>`
(SEED-Bench-R1 L1 / L2 / L3).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxvrl.eval import answers, measures
from jaxvrl.eval.references import Reference


@dataclasses.dataclass(frozen=True)
class Scored:
    """One response scored. answer: what was read from it (None: unparseable); values: the
    per-record numbers ({"accuracy": 1.0}, {"mra": 0.4}, {"iou": 0.7}, ...); score: the main one."""

    id: str
    answer: Any
    values: Mapping[str, float]
    score: float
    group: str = ""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def row(self, response: str) -> dict[str, Any]:
        """The predictions-file line: id, response, parsed answer, score and the values."""
        out = {"id": self.id, "response": response, "answer": self.answer, "score": self.score}
        out.update(self.values)
        if self.group:
            out["group"] = self.group
        out.update(self.extra)
        return out


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """name: as on the command line; record_format: jaxvrl/data/records.py format of its files;
    scoring: one line on how it is scored; problem_types: the record problem types it keeps
    (config keys; None = all)."""

    name: str
    record_format: str
    scoring: str
    score: Callable[[Reference, str], Scored]
    aggregate: Callable[[Sequence[Scored]], dict[str, float]]
    problem_types: tuple[str, ...] | None = None


_REGISTRY: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in _REGISTRY:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


def get(name: str) -> Benchmark:
    if name not in _REGISTRY:
        raise KeyError(f"unknown benchmark {name!r}; known: {names()}")
    return _REGISTRY[name]


def names() -> list[str]:
    return list(_REGISTRY)


# ------------------------------------------------------------------------------------------------
# Aggregation helpers.


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _unparseable(rows: Sequence[Scored]) -> float:
    return _mean([float(r.answer is None) for r in rows])


def _by_group(rows: Sequence[Scored], prefix: str) -> dict[str, float]:
    groups: dict[str, list[float]] = collections.defaultdict(list)
    for r in rows:
        if r.group:
            groups[r.group].append(r.score)
    return {f"{prefix}/{g}": _mean(v) for g, v in sorted(groups.items())}


def _values(rows: Sequence[Scored], key: str) -> list[float]:
    return [r.values[key] for r in rows if key in r.values]


# ------------------------------------------------------------------------------------------------
# Video-R1's six (its evaluation JSON, src/eval_bench.py).


def _video_r1_score(ref: Reference, response: str) -> Scored:
    """Video-R1 src/eval_bench.py `reward_fn`: the first answer tag (else the whole response);
    multiple choice by exact match; numerical: both with or without a decimal mark ('.' or ','),
    equal after rounding to 2 decimals; regression: MRA with `<`; other types score 0."""
    answer, parsed = answers.video_r1_answer(response)
    truth, kind = ref.truth["answer"], ref.truth["problem_type"]
    read: Any = answer if parsed else None
    if kind == "regression":
        pred, gt = answers.plain_number(answer), answers.plain_number(truth)
        read = pred if parsed else None
        mra = (
            0.0
            if pred is None or gt is None
            else measures.mean_relative_accuracy(pred, gt, strict=True)
        )
        return Scored(ref.id, read, {"mra": mra}, mra, ref.group)
    if kind == "multiple_choice":
        acc = float(answer.strip() == truth.strip())
    elif kind == "numerical":
        pred, gt = answers.plain_number(answer), answers.plain_number(truth)
        read = pred if parsed else None
        same_mark = any(c in truth for c in ".,") == any(c in answer for c in ".,")
        acc = float(
            same_mark and pred is not None and gt is not None and round(pred, 2) == round(gt, 2)
        )
    else:
        acc = 0.0
    return Scored(ref.id, read, {"accuracy": acc}, acc, ref.group)


def _video_r1_aggregate(rows: Sequence[Scored]) -> dict[str, float]:
    """accuracy over the non-regression records (Video-R1's `mean_acc`), mra over the
    regression ones (`mean_mra`, only when there are any), per sub-task scores."""
    out = {"accuracy": _mean(_values(rows, "accuracy"))}
    if _values(rows, "mra"):
        out["mra"] = _mean(_values(rows, "mra"))
    out["unparseable"] = _unparseable(rows)
    out.update(_by_group(rows, "task"))
    return out


# VSI-Bench's eight tasks (the relative-direction task in three difficulty levels).
VSI_TASKS = (
    "object_counting",
    "object_abs_distance",
    "object_size_estimation",
    "room_size_estimation",
    "object_rel_distance",
    "object_rel_direction",
    "route_planning",
    "obj_appearance_order",
)


def _vsibench_score(ref: Reference, response: str) -> Scored:
    """Multiple choice by exact match of the first answer tag (else the whole response); other
    records are numerical-answer tasks: MRA (with `<=`) of the first number in the answer tag,
    or of the whole response when it is a plain number (as Video-R1 reads a response without a
    tag); no number is unparseable and scores 0."""
    answer, parsed = answers.video_r1_answer(response)
    truth = ref.truth["answer"]
    if ref.truth["problem_type"] == "multiple_choice":
        acc = float(answer.strip() == truth.strip())
        return Scored(ref.id, answer if parsed else None, {"accuracy": acc}, acc, ref.group)
    pred = answers.first_number(answer) if parsed else answers.plain_number(answer.strip())
    gt = answers.first_number(truth)
    mra = 0.0 if pred is None or gt is None else measures.mean_relative_accuracy(pred, gt)
    return Scored(ref.id, pred, {"mra": mra}, mra, ref.group)


def _vsi_task(group: str) -> str:
    g = group.strip().lower().replace(" ", "_")
    return "object_rel_direction" if g.startswith("object_rel_direction") else g


def _vsibench_aggregate(rows: Sequence[Scored]) -> dict[str, float]:
    """accuracy (multiple choice), mra (numerical), Video-R1's `video_r1_avg` = (accuracy +
    mra) / 2 when both kinds are present; per task `task/<name>`; and, when every record names its
    task, the official `macro_avg`: the mean over the tasks, relative direction's easy / medium /
    hard levels first averaged into one (VSI-Bench's lmms-eval aggregation)."""
    acc, mra = _values(rows, "accuracy"), _values(rows, "mra")
    out: dict[str, float] = {}
    if acc:
        out["accuracy"] = _mean(acc)
    if mra:
        out["mra"] = _mean(mra)
    if acc and mra:
        out["video_r1_avg"] = (out["accuracy"] + out["mra"]) / 2
    out["unparseable"] = _unparseable(rows)
    per_group = _by_group(rows, "task")
    out.update(per_group)
    if rows and all(r.group for r in rows):
        tasks: dict[str, list[float]] = collections.defaultdict(list)
        for key, value in per_group.items():
            tasks[_vsi_task(key.split("/", 1)[1])].append(value)
        out["macro_avg"] = _mean([_mean(v) for v in tasks.values()])
    return out


# ------------------------------------------------------------------------------------------------
# VideoChat-R1: temporal grounding, NExT-GQA, GOT-10k.


def _grounding_score(ref: Reference, response: str) -> Scored:
    span = answers.videochat_span(response)
    iou = 0.0 if span is None else measures.span_iou(span, ref.truth["span"])
    return Scored(ref.id, None if span is None else list(span), {"iou": iou}, iou, ref.group)


def _grounding_aggregate(rows: Sequence[Scored]) -> dict[str, float]:
    """mIoU and R@t = the fraction with IoU >= t (VideoChat-R1 src_eval/evaluate_grounding.py:
    `recall += thresh <= iou`); an unparseable answer has IoU 0."""
    ious = np.asarray(_values(rows, "iou"), np.float64)
    out = {"miou": _mean(ious)}
    for t in measures.RECALL_THRESHOLDS:
        out[f"r@{t}"] = float(np.mean(ious >= t)) if ious.size else 0.0
    out["unparseable"] = _unparseable(rows)
    return out


def _nextgqa_score(ref: Reference, response: str) -> Scored:
    """The option letter of the first answer tag (no tag: wrong) and the IoU of the merged glue
    intervals with the ground truth's (unparseable: 0)."""
    tagged = answers.answer_tag(response)
    letter = None if tagged is None else answers.option_letter(tagged)
    acc = float(letter is not None and letter == ref.truth["letter"])
    glue = answers.glue_intervals(response)
    iou = 0.0 if glue is None else measures.merged_interval_iou(glue, ref.truth["glue"])
    read = None if letter is None and glue is None else {"letter": letter, "glue": glue}
    return Scored(ref.id, read, {"accuracy": acc, "iou": iou}, acc, ref.group)


def _nextgqa_aggregate(rows: Sequence[Scored]) -> dict[str, float]:
    return {
        "accuracy": _mean(_values(rows, "accuracy")),
        "miou": _mean(_values(rows, "iou")),
        "unparseable": _unparseable(rows),
        **_by_group(rows, "task"),
    }


def _got10k_score(ref: Reference, response: str) -> Scored:
    """The first answer tag as a list of as many boxes as the ground truth (else unparseable,
    IoU 0); the clip's score is its mean box IoU."""
    tagged = answers.answer_tag(response)
    boxes = None if tagged is None else answers.box_list(tagged, len(ref.truth["boxes"]))
    iou = 0.0 if boxes is None else measures.average_overlap(boxes, ref.truth["boxes"])
    return Scored(ref.id, boxes, {"iou": iou}, iou, extra={"video": ref.truth["video"]})


def _got10k_aggregate(rows: Sequence[Scored]) -> dict[str, float]:
    """overlap: mean box IoU per video (its clips' mean), then the mean over videos."""
    videos: dict[str, list[float]] = collections.defaultdict(list)
    for r in rows:
        videos[str(r.extra.get("video", r.id))].append(r.values["iou"])
    return {
        "overlap": _mean([_mean(v) for v in videos.values()]),
        "unparseable": _unparseable(rows),
    }


# ------------------------------------------------------------------------------------------------
# SEED-Bench-R1.


def _seed_score(ref: Reference, response: str) -> Scored:
    """SEED-Bench-R1 infer.py `accuracy_reward`: correct when the first answer tag's text starts
    with the golden letter; no tag (or an empty one) is wrong. Its first pass, a math_verify
    symbolic comparison meant for math answers, is not reproduced."""
    tagged = answers.answer_tag(response)
    acc = float(bool(tagged) and tagged[0] == ref.truth["letter"])
    return Scored(ref.id, tagged or None, {"accuracy": acc}, acc, ref.group)


def _seed_aggregate(rows: Sequence[Scored]) -> dict[str, float]:
    return {
        "accuracy": _mean(_values(rows, "accuracy")),
        "unparseable": _unparseable(rows),
        **_by_group(rows, "level"),
    }


# ------------------------------------------------------------------------------------------------
# The registry.

_VIDEO_R1_SCORING = (
    "Video-R1 eval_bench.py: first <answer> (else the whole response); multiple choice exact, "
    "numerical equal at 2 decimals, regression MRA; accuracy (and mra), per sub-task"
)

register(Benchmark("video_r1", "video_r1", _VIDEO_R1_SCORING, _video_r1_score, _video_r1_aggregate))
register(
    Benchmark(
        "seed_bench_r1",
        "seed_bench_r1",
        "first <answer>'s first character = golden letter; accuracy, per level L1/L2/L3",
        _seed_score,
        _seed_aggregate,
    )
)
register(
    Benchmark(
        "vsibench",
        "video_r1",
        "multiple choice exact; numerical MRA (theta 0.50..0.95, <=); accuracy, mra, "
        "video_r1_avg = (accuracy + mra) / 2, per task, macro_avg over the 8 tasks",
        _vsibench_score,
        _vsibench_aggregate,
    )
)
for _name in ("videommmu", "mvbench", "tempcompass", "videomme"):
    register(Benchmark(_name, "video_r1", _VIDEO_R1_SCORING, _video_r1_score, _video_r1_aggregate))
register(
    Benchmark(
        "mmvu",
        "video_r1",
        "multiple-choice records only; " + _VIDEO_R1_SCORING,
        _video_r1_score,
        _video_r1_aggregate,
        problem_types=("multiple_choice",),
    )
)
for _name in ("charades_sta", "activitynet_grounding"):
    register(
        Benchmark(
            _name,
            "charades_sta",
            "last 'a to b' / 'a and b' in the response; IoU (0 if unparseable); miou, "
            "r@0.3 / 0.5 / 0.7",
            _grounding_score,
            _grounding_aggregate,
        )
    )
register(
    Benchmark(
        "nextgqa",
        "nextgqa",
        "first <answer>'s option letter: accuracy; <glue>[(s, e), ...]</glue> (or 'a to b' in "
        "<answer>) vs the merged ground-truth spans: miou",
        _nextgqa_score,
        _nextgqa_aggregate,
    )
)
register(
    Benchmark(
        "got10k",
        "got10k",
        "first <answer> as 8 boxes [x0, y0, x1, y1]; mean box IoU per video, then over "
        "videos: overlap",
        _got10k_score,
        _got10k_aggregate,
    )
)

# The benchmark a bare path in `eval.files` is scored as, by its record format.
DEFAULT_FOR_FORMAT = {
    "video_r1": "video_r1",
    "seed_bench_r1": "seed_bench_r1",
    "charades_sta": "charades_sta",
    "nextgqa": "nextgqa",
    "got10k": "got10k",
}


def score_all(
    benchmark: Benchmark, refs: Sequence[Reference], responses: Mapping[str, str]
) -> tuple[list[tuple[Scored, str]], int]:
    """Scores every reference that has a response (by id); returns (scored row, response) pairs
    in reference order and the number of references without a response."""
    out, missing = [], 0
    for ref in refs:
        if ref.id not in responses:
            missing += 1
            continue
        out.append((benchmark.score(ref, responses[ref.id]), responses[ref.id]))
    return out, missing
