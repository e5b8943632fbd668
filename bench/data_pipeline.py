"""Examples per second of the whole input pipeline (decode, sample, resize, patchify, T-GRPO
companion, tokenise, M-RoPE positions, bucketed batching) at Video-R1's training settings:
16 frames at 128*28*28 pixels per frame, 2 fps, 4 prompts per batch.

The synthetic set has 10 s videos at 24 fps, 448 x 224 (exactly 128 merged tokens per frame, so
the frames are decoded and resized but not distorted), plus a few image questions.

    python bench/data_pipeline.py                 # 0 and 2 worker processes
    python bench/data_pipeline.py --workers 0,1,2 --batches 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from jaxvrl.data import pipeline, synthetic  # noqa: E402


def bench_config(directory: str, workers: int, shuffle_unit: str):
    config = base.get_config()
    config.model.path = os.path.join(directory, "model")
    data = config.data
    data.train_files = os.path.join(directory, "train.json")
    data.media_root = directory
    data.num_workers = workers
    data.shuffle_unit = shuffle_unit
    return config


def measure(config, batches: int, warmup: int) -> dict:
    """Examples per second over `batches` batches after `warmup` batches (worker start-up and
    the first decodes are excluded)."""
    it = iter(pipeline.build_dataset(config, process_index=0, process_count=1))
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    examples = videos = 0
    for _ in range(batches):
        batch = next(it)
        examples += int(batch["example_mask"].sum())
        videos += int(batch["is_video"].sum())
    elapsed = time.perf_counter() - start
    shape = {
        "tokens": batch["input_ids"].shape[1],
        "patches": batch["vision"]["patches"].shape[0],
        "frames": max(n for row in batch["meta"]["num_frames"] for n in row),
    }
    it.close()
    return {
        "examples_per_s": examples / elapsed,
        "examples": examples,
        "videos": videos,
        "seconds": elapsed,
        **shape,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "jaxvrl_bench_data"))
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shuffle_unit", default="frame", choices=("frame", "tubelet", "none"))
    args = parser.parse_args(argv)

    spec = synthetic.SyntheticSpec(
        num_videos=32, num_images=8, video_size=(224, 448), image_size=(336, 448),
        seconds=10.0, video_fps=24, square=48, seed=0,
    )  # fmt: skip
    synthetic.build_dataset(args.dir, spec)
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        result = measure(
            bench_config(args.dir, workers, args.shuffle_unit), args.batches, args.warmup
        )
        result["workers"] = workers
        rows.append(result)
        print(
            f"workers={workers}: {result['examples_per_s']:.2f} examples/s "
            f"({result['examples']} examples, {result['videos']} videos, "
            f"{result['seconds']:.1f} s; batch {result['tokens']} tokens, "
            f"{result['patches']} patches, {result['frames']} frames)",
            flush=True,
        )
    print(
        json.dumps({"machine": f"{os.cpu_count()}-core CPU, {platform.processor()}", "rows": rows})
    )


if __name__ == "__main__":
    main()
