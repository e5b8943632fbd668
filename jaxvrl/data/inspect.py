"""Dataset checker to run before a long job: reads every record the config names, decodes its
media and tokenises its prompt exactly as training will, and reports counts by data type and
problem type, the distributions of prompt tokens, frames and vision patches, and every record it
would skip with the reason.

    python -m jaxvrl.data.inspect --config=configs/demo.py [--config.data.max_frames=32] [--json]

With --json the last line of the output is one JSON object with (at least) `ok` (records that
load) and `skipped` (records skipped). The exit status is 0 even when records are skipped.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxvrl import cli
from jaxvrl.data import pipeline, synthetic

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file.", lock_config=True)
_JSON = flags.DEFINE_bool("json", False, "End the output with one JSON summary line.")
_WORKERS = flags.DEFINE_integer(
    "workers", None, "Decoding processes (default: the config's data.num_workers)."
)
_LIMIT = flags.DEFINE_integer("limit", 0, "Check only the first N examples (0 = all).")


def _distribution(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    v = np.asarray(values, np.float64)
    return {
        "count": int(v.size),
        "min": float(v.min()),
        "mean": round(float(v.mean()), 2),
        "p50": float(np.percentile(v, 50)),
        "p90": float(np.percentile(v, 90)),
        "max": float(v.max()),
    }


def inspect_config(config, workers: int | None = None, limit: int = 0) -> dict[str, Any]:
    """Checks every record of `config.data.train_files`; returns the report dict."""
    import grain

    synthetic.ensure_from_config(config)
    with config.unlocked():
        config.data.strict = False  # report every bad record instead of stopping at the first
    examples, errors = pipeline.load_examples(config)
    if limit:
        examples = examples[:limit]
    processor = pipeline.ExampleProcessor(
        config.data.to_dict(),
        pipeline.model_config_for(config),
        pipeline.tokenizer_path_for(config),
        summary_only=True,
    )
    skipped = [
        {"origin": e.origin, "category": pipeline.skip_category(e), "reason": e.reason}
        for e in errors
    ]
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=8)
    ds = grain.MapDataset.source(examples).map_with_index(processor).to_iter_dataset(read)
    workers = int(config.data.num_workers if workers is None else workers)
    if workers > 0 and examples:
        pipeline._ensure_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    by_data_type: collections.Counter[str] = collections.Counter()
    by_problem_type: collections.Counter[str] = collections.Counter()
    tokens, frames, patches = [], [], []
    it = iter(ds)
    for element in it:
        if "skip" in element:
            origin, _, reason = element["message"].partition(": ")
            skipped.append({"origin": origin, "category": element["skip"], "reason": reason})
            continue
        meta = element["meta"]
        by_data_type[meta["data_type"]] += 1
        by_problem_type[meta["problem_type"]] += 1
        tokens.append(element["num_tokens"])
        patches.append(element["num_patches"])
        kinds = meta["media_kinds"]
        frames.extend(n for n, k in zip(meta["num_frames"], kinds, strict=True) if k == "video")
    it.close()
    return {
        "ok": sum(by_data_type.values()),
        "skipped": len(skipped),
        "by_data_type": dict(sorted(by_data_type.items())),
        "by_problem_type": dict(sorted(by_problem_type.items())),
        "skipped_by_category": dict(collections.Counter(s["category"] for s in skipped)),
        "prompt_tokens": _distribution(tokens),
        "video_frames": _distribution(frames),
        "vision_patches": _distribution(patches),
        "skipped_records": skipped,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [f"records that load: {report['ok']}    skipped: {report['skipped']}"]
    lines.append("by data type:    " + json.dumps(report["by_data_type"]))
    lines.append("by problem type: " + json.dumps(report["by_problem_type"]))
    for name in ("prompt_tokens", "video_frames", "vision_patches"):
        lines.append(f"{name + ':':16} " + json.dumps(report[name]))
    if report["skipped_records"]:
        lines.append("skipped records:")
        for s in report["skipped_records"]:
            lines.append(f"  [{s['category']}] {s['origin']}: {s['reason']}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("jaxvrl").setLevel(logging.ERROR)
    report = inspect_config(_CONFIG.value, _WORKERS.value, _LIMIT.value)
    print(format_report(report))
    if _JSON.value:
        print(json.dumps(report))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(cli.guard(main), flags_parser=cli.parse_flags)
