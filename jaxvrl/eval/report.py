"""The evaluation report of a run: `RUN/report/report.md` (a table of every benchmark metric by
evaluated step) and PNG plots: each benchmark's metrics against the training step, the IoU
distribution of the grounding and tracking benchmarks, VSI-Bench's per-task scores.

    python -m jaxvrl.evaluate report --workdir=RUN
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxvrl.eval import runner

IOU_BENCHMARKS = ("charades_sta", "activitynet_grounding", "nextgqa", "got10k")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_results(workdir: str) -> list[dict[str, Any]]:
    """Every `eval/<step>.json` of the run, by step."""
    return [r for s in runner.evaluated_steps(workdir) if (r := runner.load_result(workdir, s))]


def metric_table(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list[float | None]]]:
    """(benchmark, metric, value per step) rows: benchmarks in first-seen order, metrics sorted
    with the headline ones (no '/') first."""
    rows: dict[tuple[str, str], list[float | None]] = {}
    for i, result in enumerate(results):
        for name, b in result["benchmarks"].items():
            for metric, value in b.get("metrics", {}).items():
                rows.setdefault((name, metric), [None] * len(results))[i] = float(value)
            rows.setdefault((name, "count"), [None] * len(results))[i] = b.get("count")
    order = {name: i for i, (name, _) in enumerate(rows)}
    keys = sorted(rows, key=lambda k: (order[k[0]], "/" in k[1], k[1] == "count", k[1]))
    return [(name, metric, rows[(name, metric)]) for name, metric in keys]


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return str(int(value)) if metric == "count" else f"{value:.3f}"


def markdown(results: Sequence[Mapping[str, Any]], images: Sequence[str]) -> str:
    steps = [r["step"] for r in results]
    lines = [
        "# Evaluation report",
        "",
        "Benchmarks (rows) by evaluated training step (columns); metric names as in "
        "`eval/<step>.json` and `eval/<benchmark>/<metric>` in metrics.jsonl.",
        "",
        "| benchmark | metric | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---|" + "---:|" * len(steps),
    ]
    for name, metric, values in metric_table(results):
        cells = " | ".join(_cell(v, metric) for v in values)
        lines.append(f"| {name} | {metric} | {cells} |")
    skipped = [
        f"- step {r['step']} {n}: " + (b["error"] if "error" in b else json.dumps(b["skipped"]))
        for r in results
        for n, b in r["benchmarks"].items()
        if "error" in b or b.get("skipped")
    ]
    if skipped:
        lines += ["", "Skipped records (by category) and errors:", "", *skipped]
    lines += ["", *[f"![{os.path.splitext(i)[0]}]({i})" for i in images], ""]
    return "\n".join(lines)


def plot_metrics(results: Sequence[Mapping[str, Any]], name: str, path: str) -> bool:
    """The benchmark's headline metrics against the step; False when it has none."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        for metric, value in r["benchmarks"].get(name, {}).get("metrics", {}).items():
            if "/" not in metric:
                series.setdefault(metric, []).append((r["step"], float(value)))
    if not series:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 4.0), dpi=110)
    for metric, points in series.items():
        x, y = zip(*points, strict=True)
        style = ":" if metric == "unparseable" else "-"
        ax.plot(x, y, style, marker="o", label=metric)
    ax.set_xlabel("training step")
    ax.set_ylabel("score (unparseable: fraction)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{name}: metrics by step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _predictions(workdir: str, result: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    rel = result["benchmarks"].get(name, {}).get("predictions")
    path = os.path.join(workdir, rel) if rel else ""
    if not rel or not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_iou_distribution(rows: Sequence[Mapping[str, Any]], name: str, step: int, path: str):
    """Histogram of per-example IoU (0.05-wide bins); grounding marks the R@ thresholds."""
    ious = np.asarray([r["iou"] for r in rows if "iou" in r], np.float64)
    if not ious.size:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.hist(ious, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    if name in ("charades_sta", "activitynet_grounding"):
        for t in (0.3, 0.5, 0.7):
            ax.axvline(t, color="tab:red", linestyle="--", linewidth=1)
            ax.text(t, 0.97, f" R@{t}", color="tab:red", fontsize=8, va="top",
                    transform=ax.get_xaxis_transform())  # fmt: skip
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("IoU")
    ax.set_ylabel("examples")
    ax.set_title(f"{name}: IoU at step {step} ({ious.size} examples, mean {ious.mean():.3f})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_tasks(metrics: Mapping[str, float], name: str, step: int, path: str) -> bool:
    """Horizontal bars of the per-task scores (`task/<name>`)."""
    tasks = sorted((k.split("/", 1)[1], v) for k, v in metrics.items() if k.startswith("task/"))
    if not tasks:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(tasks) + 1.2), dpi=110)
    labels, values = zip(*tasks, strict=True)
    ax.barh(labels, values, color="tab:green")
    for i, v in enumerate(values):
        ax.text(min(v + 0.01, 0.9), i, f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("score (accuracy or MRA)")
    ax.set_title(f"{name}: per task at step {step}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(workdir: str) -> dict[str, Any]:
    """Writes RUN/report/report.md and the PNGs; returns {"markdown": path, "images": [paths]}.
    Raises FileNotFoundError when the run holds no evaluation."""
    results = load_results(workdir)
    if not results:
        raise FileNotFoundError(f"{workdir} holds no eval/<step>.json to report")
    out_dir = os.path.join(workdir, "report")
    os.makedirs(out_dir, exist_ok=True)
    last = results[-1]
    names = list(dict.fromkeys(n for r in results for n in r["benchmarks"]))
    images: list[str] = []
    for name in names:
        if plot_metrics(results, name, os.path.join(out_dir, f"{name}.png")):
            images.append(f"{name}.png")
        if name in IOU_BENCHMARKS:
            rows = _predictions(workdir, last, name)
            image = f"{name}_iou.png"
            if plot_iou_distribution(rows, name, last["step"], os.path.join(out_dir, image)):
                images.append(image)
        if name == "vsibench":
            metrics = last["benchmarks"].get(name, {}).get("metrics", {})
            image = f"{name}_tasks.png"
            if plot_tasks(metrics, name, last["step"], os.path.join(out_dir, image)):
                images.append(image)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(markdown(results, images))
    return {"markdown": path, "images": [os.path.join(out_dir, i) for i in images]}
