"""The vision tower on K temporal slices of 1,024 patches: XLA's temporary bytes for its gradient
and its forward time, one packed sequence (attended in query blocks) vs the trainer's chunks of
whole slices (microbatches.chunk_vision) vs the rollout's chunk scan (group_decode.vision_features).
With --before COMMIT the rollout scan of that commit's model/vision.py runs too, on the same
weights, and the features of both are compared.

    python bench/vision_memory.py [--generation qwen2_vl] [--width 128] [--depth 4] \
        [--slices 4 8 16] [--rounds 5] [--before 02118b2]

Compiled memory analysis needs no execution; times are the minimum over interleaved rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvrl import microbatches
from jaxvrl.rollout import group_decode, vision_chunks
from model import vision
from model.config import VisionConfig
from model.packing import pack_vision


def tower_config(generation: str, width: int, depth: int) -> VisionConfig:
    return VisionConfig(
        generation=generation,
        depth=depth,
        hidden_size=width,
        num_heads=max(1, width // 32),
        intermediate_size=4 * width,
        out_hidden_size=64,
        hidden_act="quick_gelu" if generation == "qwen2_vl" else "silu",
        fullatt_block_indexes=(depth - 1,) if generation == "qwen2_5_vl" else (),
    )


def slices(cfg: VisionConfig, count: int) -> dict[str, np.ndarray]:
    grids = np.array([(1, 32, 32)] * count)
    patches = np.random.default_rng(0).standard_normal((count * 1024, cfg.patch_dim))
    return pack_vision(patches.astype(np.float32), grids, cfg)


def old_module(commit: str):
    """model/vision.py as of `commit`, imported on its own (it uses today's model.layers)."""
    source = subprocess.run(
        ["git", "show", f"{commit}:model/vision.py"], capture_output=True, text=True, check=True
    ).stdout
    path = os.path.join(tempfile.mkdtemp(), "vision_before.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("vision_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gradient_temp_bytes(graphdef, state, inputs) -> int:
    loss = lambda s, v: jnp.sum(nnx.merge(graphdef, s)(v) ** 2)  # noqa: E731
    compiled = jax.jit(jax.grad(loss)).lower(state, inputs).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def timed(fns: dict, rounds: int) -> dict[str, float]:
    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: round(min(t), 3) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--generation", default="qwen2_vl")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--slices", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", default="")
    parser.add_argument("--skip-packed-memory", action="store_true")
    args = parser.parse_args()
    cfg = tower_config(args.generation, args.width, args.depth)
    tower = vision.VisionTower(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(tower)
    out: dict = {"config": vars(args), "gradient_temp_MB": {}}
    for count in args.slices:
        packed = slices(cfg, count)
        chunks = {k: v[0] for k, v in microbatches.chunk_vision([packed], cfg, (1024,)).items()}
        row = {"chunks": gradient_temp_bytes(graphdef, state, chunks) / 2**20}
        if not args.skip_packed_memory:
            row["packed"] = gradient_temp_bytes(graphdef, state, packed) / 2**20
        out["gradient_temp_MB"][count] = {k: round(v, 1) for k, v in row.items()}
        print(json.dumps({count: out["gradient_temp_MB"][count]}), flush=True)

    packed = slices(cfg, max(args.slices))
    trainer = {k: v[0] for k, v in microbatches.chunk_vision([packed], cfg, (1024,)).items()}
    rollout, index = vision_chunks.vision_chunks(packed, cfg, 0, (1024,))
    forward = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))

    def scan_fn(graphdef):
        def run(s, c, i):
            model = types.SimpleNamespace(visual=nnx.merge(graphdef, s), dtype=jnp.float32)
            return group_decode.vision_features(model, c, i)

        return jax.jit(run)

    scan = scan_fn(graphdef)
    fns = {
        "packed": lambda: forward(state, packed),
        "trainer_chunks": lambda: forward(state, trainer),
        "rollout_scan": lambda: scan(state, rollout, index),
    }
    if args.before:
        before = old_module(args.before).VisionTower(cfg, rngs=nnx.Rngs(0))
        nnx.update(before, state)
        before_graphdef, before_state = nnx.split(before)
        scan_before = scan_fn(before_graphdef)
        fns["rollout_scan_before"] = lambda: scan_before(before_state, rollout, index)
        a = np.asarray(fns["rollout_scan_before"]())
        b = np.asarray(fns["rollout_scan"]())
        out["features_vs_before"] = {
            "bit_identical": bool((a == b).all()),
            "max_abs_diff": float(np.abs(a - b).max()),
            "max_abs_value": float(np.abs(a).max()),
        }
    out["forward_seconds"] = timed(fns, args.rounds)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
