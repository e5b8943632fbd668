"""Logit parity between the port and transformers (PyTorch, float32) on one checkpoint directory.

    python -m model.parity HF_DIR [--tolerance 1e-4] [--input video ...]
    python -m model.parity --tiny qwen3_vl DIR       # first build a tiny random checkpoint in DIR

Runs a fixed set of inputs (text only; one image; one video; an image and a video in one prompt;
two videos in one prompt; a batch of two prompts of different lengths, right-padded and
left-padded), prints the max absolute and relative logit difference of each, and exits non-zero
when any relative difference (max |diff| / max |logit|) is above the tolerance. Inputs are built
from token ids and the config's special token ids, so no tokenizer is needed; pixels are random
normalised patches.
Both sides get the same position ids (model/rope.py), so the check is on the model itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import numpy as np

from model.config import ModelConfig
from model.packing import pack_vision
from model.rope import rope_index


@dataclasses.dataclass
class ParityInput:
    """One test input: a batch of token ids with its vision items in token order."""

    name: str
    input_ids: np.ndarray  # [batch, seq]
    attention_mask: np.ndarray  # [batch, seq]
    items: list[tuple[str, tuple[int, int, int], np.ndarray]]  # (kind, grid, patches)
    second_per_grid_ts: list[float]


def _prompt(rng, cfg: ModelConfig, length: int) -> list[int]:
    low = (
        max(
            cfg.image_token_id,
            cfg.video_token_id,
            cfg.vision_start_token_id,
            cfg.vision_end_token_id,
        )
        + 1
    )
    high = min(cfg.text.vocab_size, low + 5000)
    ids = rng.integers(low, high, size=length)
    forbidden = {
        cfg.image_token_id,
        cfg.video_token_id,
        cfg.vision_start_token_id,
        cfg.vision_end_token_id,
    }
    return [int(i) if int(i) not in forbidden else low for i in ids]


def _vision_block(cfg: ModelConfig, kind: str, grid: tuple[int, int, int]) -> list[int]:
    """An item's tokens: its pads between vision start and end; a Qwen3-VL video as one such
    block per temporal patch, each after a stand-in for its timestamp text (3 tokens)."""
    tok = cfg.image_token_id if kind == "image" else cfg.video_token_id
    frames = grid[0] if kind == "video" and cfg.timestamped_videos else 1
    count = grid[0] * grid[1] * grid[2] // cfg.vision.merge_unit // frames
    block = [cfg.vision_start_token_id] + [tok] * count + [cfg.vision_end_token_id]
    if frames == 1:
        return block
    stamp = _prompt(np.random.default_rng(count), cfg, 3)
    return [t for _ in range(frames) for t in stamp + block]


# The names of build_inputs' inputs, in its order.
INPUT_NAMES = (
    "text",
    "image",
    "video",
    "image+video",
    "two videos",
    "batch of two, padded",
    "batch of two, left-padded",
)


def build_inputs(cfg: ModelConfig, seed: int = 0) -> list[ParityInput]:
    """The fixed parity inputs. Grids are in patches: a non-square image, a video of 5 frames
    padded to 6 (3 temporal patches), and a second, longer video."""
    rng = np.random.default_rng(seed)
    image_grid, video_grid, video2_grid = (1, 6, 10), (3, 4, 6), (4, 6, 4)

    def patches(grid):
        return rng.standard_normal((int(np.prod(grid)), cfg.vision.patch_dim)).astype(np.float32)

    def single(name, parts, items):
        ids: list[int] = []
        for part in parts:
            ids += part
        arr = np.array([ids], np.int64)
        seconds = [1.0 for kind, _, _ in items if kind == "video"]
        return ParityInput(name, arr, np.ones_like(arr), items, seconds)

    inputs = [single("text", [_prompt(rng, cfg, 24)], [])]
    img = ("image", image_grid, patches(image_grid))
    vid = ("video", video_grid, patches(video_grid))
    vid2 = ("video", video2_grid, patches(video2_grid))
    inputs.append(
        single(
            "image",
            [_prompt(rng, cfg, 5), _vision_block(cfg, *img[:2]), _prompt(rng, cfg, 9)],
            [img],
        )
    )
    inputs.append(
        single(
            "video",
            [_prompt(rng, cfg, 4), _vision_block(cfg, *vid[:2]), _prompt(rng, cfg, 7)],
            [vid],
        )
    )
    inputs.append(
        single(
            "image+video",
            [
                _prompt(rng, cfg, 3),
                _vision_block(cfg, *img[:2]),
                _prompt(rng, cfg, 4),
                _vision_block(cfg, *vid[:2]),
                _prompt(rng, cfg, 6),
            ],
            [img, vid],
        )
    )
    inputs.append(
        single(
            "two videos",
            [
                _prompt(rng, cfg, 3),
                _vision_block(cfg, *vid[:2]),
                _prompt(rng, cfg, 2),
                _vision_block(cfg, *vid2[:2]),
                _prompt(rng, cfg, 5),
            ],
            [vid, vid2],
        )
    )
    # A batch of two prompts of different lengths, right-padded.
    row0 = _prompt(rng, cfg, 4) + _vision_block(cfg, *img[:2]) + _prompt(rng, cfg, 8)
    row1 = _prompt(rng, cfg, 3) + _vision_block(cfg, *vid[:2]) + _prompt(rng, cfg, 3)
    length = max(len(row0), len(row1))
    pad = cfg.pad_token_id or 0
    ids = np.full((2, length), pad, np.int64)
    mask = np.zeros((2, length), np.int64)
    for r, row in enumerate((row0, row1)):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    inputs.append(ParityInput("batch of two, padded", ids, mask, [img, vid], [1.0]))
    # The same rows left-padded (as transformers' generate pads).
    ids_left = np.full((2, length), pad, np.int64)
    mask_left = np.zeros((2, length), np.int64)
    for r, row in enumerate((row0, row1)):
        ids_left[r, length - len(row) :] = row
        mask_left[r, length - len(row) :] = 1
    inputs.append(ParityInput("batch of two, left-padded", ids_left, mask_left, [img, vid], [1.0]))
    return inputs


def port_arrays(cfg: ModelConfig, inp: ParityInput) -> dict:
    """Position ids and packed vision arrays for the port (and, positions, for transformers)."""
    images = [g for kind, g, _ in inp.items if kind == "image"]
    videos = [g for kind, g, _ in inp.items if kind == "video"]
    positions, deltas = rope_index(
        inp.input_ids,
        inp.attention_mask,
        cfg,
        np.array(images) if images else None,
        np.array(videos) if videos else None,
        inp.second_per_grid_ts,
    )
    vision = None
    if inp.items:
        vision = pack_vision(
            [p for _, _, p in inp.items], np.array([g for _, g, _ in inp.items]), cfg.vision
        )
    return {"positions": positions, "deltas": deltas, "vision": vision}


def torch_inputs(
    cfg: ModelConfig, input_ids: np.ndarray, items: list, second_per_grid_ts: list[float]
) -> dict:
    """transformers keyword arguments for token ids [batch, seq] and vision items in token order:
    input_ids, mm_token_type_ids (0 text, 1 image, 2 video; transformers 5.23 requires them),
    pixel values and grids of the images and of the videos (and their seconds per grid)."""
    import torch

    ids = torch.tensor(np.asarray(input_ids))
    token_type = torch.zeros_like(ids)
    token_type[ids == cfg.image_token_id] = 1
    token_type[ids == cfg.video_token_id] = 2
    kwargs = {"input_ids": ids, "mm_token_type_ids": token_type}
    images = [(g, p) for kind, g, p in items if kind == "image"]
    videos = [(g, p) for kind, g, p in items if kind == "video"]
    if images:
        kwargs["pixel_values"] = torch.tensor(np.concatenate([p for _, p in images]))
        kwargs["image_grid_thw"] = torch.tensor([g for g, _ in images])
    if videos:
        kwargs["pixel_values_videos"] = torch.tensor(np.concatenate([p for _, p in videos]))
        kwargs["video_grid_thw"] = torch.tensor([g for g, _ in videos])
        if cfg.model_type == "qwen2_5_vl":
            kwargs["second_per_grid_ts"] = torch.tensor(second_per_grid_ts)
    return kwargs


def torch_logits(hf_model, cfg: ModelConfig, inp: ParityInput, positions: np.ndarray) -> np.ndarray:
    """Logits of the transformers model for one input, with the port's position ids."""
    import torch

    kwargs = torch_inputs(cfg, inp.input_ids, inp.items, inp.second_per_grid_ts)
    with torch.no_grad():
        out = hf_model(
            use_cache=False,  # transformers' hybrid cache needs an attention layer
            attention_mask=torch.tensor(inp.attention_mask),
            position_ids=torch.tensor(positions.astype(np.int64)),
            **kwargs,
        )
    return out.logits.float().numpy()


def compare(
    hf_dir: str, tolerance: float = 1e-4, seed: int = 0, names: Sequence[str] | None = None
) -> list[dict]:
    """Runs every parity input (or those `names` lists); returns one row per input with its
    differences."""
    unknown = set(names or ()) - set(INPUT_NAMES)
    if unknown:
        raise ValueError(f"no parity inputs named {sorted(unknown)}: {INPUT_NAMES}")
    import jax
    import torch
    from flax import nnx
    from transformers import AutoModelForImageTextToText

    from model.hf import load_pretrained

    jax.config.update("jax_default_matmul_precision", "highest")
    port = load_pretrained(hf_dir, param_dtype="float32", dtype="float32")
    cfg = port.config
    hf_model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32)
    hf_model.eval()
    graphdef, state = nnx.split(port)

    @jax.jit
    def forward(state, ids, pos, mask, vision):
        model = nnx.merge(graphdef, state)
        return model.logits(model(ids, pos, mask, vision))

    rows = []
    inputs = [inp for inp in build_inputs(cfg, seed) if names is None or inp.name in names]
    for inp in inputs:
        arrays = port_arrays(cfg, inp)
        ours = np.asarray(
            forward(
                state,
                inp.input_ids,
                arrays["positions"],
                inp.attention_mask.astype(bool),
                arrays["vision"],
            )
        )
        ref = torch_logits(hf_model, cfg, inp, arrays["positions"])
        valid = inp.attention_mask.astype(bool)
        diff = float(np.abs(ours - ref)[valid].max())
        scale = float(np.abs(ref)[valid].max())
        rows.append(
            {
                "input": inp.name,
                "tokens": int(valid.sum()),
                "max_abs_diff": diff,
                "max_abs_logit": scale,
                "rel_diff": diff / max(scale, 1e-30),
                "ok": diff <= tolerance * scale,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_dir", help="checkpoint directory (config.json + safetensors)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| / max |logit|")
    parser.add_argument(
        "--tiny",
        choices=("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"),
        help="first write a tiny random checkpoint of this generation into hf_dir",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--input",
        action="append",
        dest="inputs",
        choices=INPUT_NAMES,
        metavar="NAME",
        help=f"run only this input (repeatable), one of {', '.join(map(repr, INPUT_NAMES))}",
    )
    args = parser.parse_args(argv)
    if args.tiny:
        from model.tiny import make_tiny_checkpoint

        make_tiny_checkpoint(args.hf_dir, args.tiny, seed=args.seed)
        print(f"wrote a tiny random {args.tiny} checkpoint to {args.hf_dir}")
    rows = compare(args.hf_dir, args.tolerance, args.seed, args.inputs)
    print(f"{'input':<28}{'tokens':>8}{'max|diff|':>14}{'max|logit|':>14}{'relative':>12}  ok")
    for r in rows:
        print(
            f"{r['input']:<28}{r['tokens']:>8}{r['max_abs_diff']:>14.3e}{r['max_abs_logit']:>14.3e}"
            f"{r['rel_diff']:>12.2e}  {'yes' if r['ok'] else 'NO'}"
        )
    bad = [r["input"] for r in rows if not r["ok"]]
    if bad:
        print(f"FAILED: relative logit difference above {args.tolerance:g} on: {', '.join(bad)}")
        return 1
    print(f"parity OK: every input within {args.tolerance:g} x max|logit|")
    return 0


if __name__ == "__main__":
    sys.exit(main())
