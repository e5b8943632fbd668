"""Time per video frame of the frame resize (jaxvrl/data/vision_inputs.py `resize_frames`, equal
to torchvision's antialiased bicubic) against Pillow's bicubic and torch's own interpolate, and
the largest difference to torch in grey levels.

    python bench/frame_resize.py [--frames 16] [--repeats 5]

Needs torch (requirements-test.txt) for the reference columns.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxvrl.data import vision_inputs as vi  # noqa: E402

# (source height, width) -> (target height, width): typical decoded videos to Video-R1's
# 128 x 28 x 28 frames and VideoChat-R1's larger ones.
CASES = (((360, 640), (252, 448)), ((720, 1280), (252, 448)), ((1080, 1920), (476, 840)))


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def torch_resize(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = torch.nn.functional.interpolate(x, (h, w), mode="bicubic", antialias=True)
    return torch.round(y.clamp(0, 255)).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("| source | target | ours ms/frame | Pillow ms/frame | torch ms/frame | max diff |")
    print("|---|---|---|---|---|---|")
    for (sh, sw), (h, w) in CASES:
        frames = rng.integers(0, 256, (args.frames, sh, sw, 3), dtype=np.uint8)
        vi.resize_frames(frames[:1], h, w)  # builds the cached weights

        def pillow(frames=frames, h=h, w=w):
            return [Image.fromarray(f).resize((w, h), Image.Resampling.BICUBIC) for f in frames]

        per_frame = [
            best_time(fn, args.repeats) / args.frames * 1e3
            for fn in (
                lambda frames=frames, h=h, w=w: vi.resize_frames(frames, h, w),
                pillow,
                lambda frames=frames, h=h, w=w: torch_resize(frames, h, w),
            )
        ]
        diff = np.abs(vi.resize_frames(frames, h, w).astype(int) - torch_resize(frames, h, w))
        print(
            f"| {sh}x{sw} | {h}x{w} | {per_frame[0]:.1f} | {per_frame[1]:.1f} | "
            f"{per_frame[2]:.1f} | {diff.max()} ({(diff > 0).mean():.3%} of values) |"
        )


if __name__ == "__main__":
    main()
