"""How far apart the demo's four changes lie in a run's vision features, colour by colour.

    python bench/vision_change_signal.py WORKDIR [--step=N]

WORKDIR is a demo run's work directory (configs/demo.py; its model_config.json and checkpoints,
e.g. of an SFT-only run: `--config.rl.steps=0`). For every training and held-out video of the
synthetic set, the run's vision tower (the merger's output; DeepStack's mergers left out) gives
the merged tokens of its two temporal patches; a video's feature is their mean and max per patch
side by side. Per colour, the table gives:

- the mean distance between the four changes' mean features over the training videos (how
  strongly the tower tells grows / shrinks / brighter / darker apart for that colour), and the
  mean distance of a training video from its own change's mean (the spread);
- the accuracy on the held-out videos of a nearest-mean classifier of the change, means from
  the training videos (standardised features), which says whether the features separate the
  changes at all.

With `--step=init` the run's model at random init (`--seed`) instead of a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs import demo  # noqa: E402
from jaxvrl.checkpoint import restore_model, run_model_config  # noqa: E402
from jaxvrl.data import media  # noqa: E402
from jaxvrl.data import vision_inputs as vi  # noqa: E402
from jaxvrl.data.synthetic import CHANGES, COLOURS  # noqa: E402
from model.packing import pack_vision  # noqa: E402
from model.qwen2_vl import Qwen2VL  # noqa: E402


def load_model(workdir: str, step: str, seed: int) -> Qwen2VL:
    if step != "init":
        return restore_model(workdir, None if step == "latest" else int(step))[0]
    config, scan, _ = run_model_config(workdir)
    return Qwen2VL(config, rngs=nnx.Rngs(seed), scan_layers=scan)


def cell(record: dict) -> tuple[int, str]:
    """(change index, colour) of a change-task record, from its reasoning and answer."""
    colour = re.search(r"The square is (\w+)", record["process"]).group(1)
    return "ABCD".index(record["solution"][len("<answer>")]), colour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir")
    parser.add_argument("--step", default="latest", help="a checkpoint step, latest, or init")
    parser.add_argument("--seed", type=int, default=0, help="the init's seed with --step=init")
    parser.add_argument("--data", default=None, help="the synthetic set (configs/demo.py's)")
    args = parser.parse_args()

    model = load_model(args.workdir, args.step, args.seed)
    vision = model.config.vision
    spec = vi.VisionSpec.of(vision)
    data = demo.get_config(args.data).data
    sampling = media.FrameSampling.from_config(data)
    width = vision.out_hidden_size
    tower = nnx.jit(lambda tower, packed: tower(packed))

    def feature(record: dict) -> np.ndarray:
        frames = media.read_video(os.path.join(data.media_root, record["path"]), sampling, spec)
        item = vi.vision_input(frames.frames, "video", spec, frames.sample_fps, frames.times)
        packed = pack_vision([item.patches], np.array([item.grid_thw]), vision)
        tokens = np.asarray(tower(model.visual, {k: jnp.asarray(v) for k, v in packed.items()}))
        tokens = tokens[:, :width]  # the merger's features, not DeepStack's
        first, second = np.split(tokens, 2)  # the two temporal patches
        return np.concatenate([first.mean(0), second.mean(0), first.max(0), second.max(0)])

    def table(path: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
        with open(path) as f:
            records = [r for r in json.load(f) if r.get("data_type") == "video"]
        return np.stack([feature(r) for r in records]), [cell(r) for r in records]

    train_x, train_y = table(data.train_files)
    held_x, held_y = table(os.path.join(data.media_root, "eval.json"))
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    print(f"{args.workdir}, step {args.step}: {len(train_y)} training, {len(held_y)} held-out")
    print("| colour | distance between the changes' means | spread | held-out nearest mean |")
    print("|---|---|---|---|")
    changes = range(len(CHANGES))
    pairs = [(a, b) for a in changes for b in changes if a < b]
    for colour in COLOURS:
        rows = [i for i, y in enumerate(train_y) if y[1] == colour]
        labels = np.array([train_y[i][0] for i in rows])
        groups = [train_x[rows][labels == k] for k in changes]
        means = np.stack([group.mean(0) for group in groups])
        distance = np.mean([np.linalg.norm(means[a] - means[b]) for a, b in pairs])
        spread = np.mean(
            [np.linalg.norm(g - m, axis=1).mean() for g, m in zip(groups, means, strict=True)]
        )
        held = [i for i, y in enumerate(held_y) if y[1] == colour]
        centres = (means - mean) / std
        guess = (((held_x[held] - mean) / std)[:, None] - centres[None]) ** 2
        right = guess.sum(-1).argmin(1) == np.array([held_y[i][0] for i in held])
        print(f"| {colour} | {distance:.1f} | {spread:.1f} | {right.mean():.3f} |")


if __name__ == "__main__":
    main()
