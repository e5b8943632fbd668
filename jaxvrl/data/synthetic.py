"""A synthetic dataset for tests and the demo: real mp4 videos whose answer depends on the order
of the frames, image questions, Video-R1 records, a small tokenizer with the Qwen special tokens
and chat template, and a tiny model config.json whose special token ids match it.

Video task: a coloured square crosses the frame in one of four directions (left to right, right to
left, top to bottom, bottom to top). Any single frame, and the frames in shuffled order, only show
where the square was, not where it went: the answer needs temporal order (what T-GRPO rewards).
Image tasks: the colour of a square (multiple choice) and the number of squares (numerical).

    python -m jaxvrl.data.synthetic --out=/tmp/jaxvrl_demo
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxvrl.data.templates import VIDEO_R1_QUESTION_TEMPLATE, VIDEO_R1_TYPE_INSTRUCTIONS

# Qwen2-VL special tokens, in the order of their ids in the synthetic tokenizer. The first seven
# match model/tiny.py's TINY_TOKEN_IDS (pad/bos 0... are passed explicitly anyway).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_pad|>",
)
# Reasoning tags: single tokens, but not special (decoding keeps them, rewards read them).
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# The Qwen2-VL chat template's format: a default system turn, vision items as
# <|vision_start|><pad><|vision_end|>, turns closed by <|im_end|> and a newline.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DIRECTIONS = ("left to right", "right to left", "top to bottom", "bottom to top")
# Bumped when the records a spec produces change (2: the change task names the change first), so
# a set built by older code is built again.
FORMAT = 2

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
VIDEO_QUESTION = "In which direction does the square move?"
# The "change" task: how the square changes over time (order-dependent, lost when shuffled).
CHANGES = ("it grows", "it shrinks", "it gets brighter", "it gets darker")
CHANGE_QUESTION = "How does the square change over time?"
COLOUR_QUESTION = "What is the colour of the square?"
COUNT_QUESTION = "How many squares are in the image?"


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """What `build_dataset` writes. Sizes are (height, width) in pixels."""

    num_videos: int = 32
    num_eval_videos: int = 0  # held-out videos, written to eval.json
    num_images: int = 16
    video_size: tuple[int, int] = (112, 112)
    image_size: tuple[int, int] = (112, 112)
    seconds: float = 2.0
    video_fps: int = 8
    square: int = 24
    # Share of the free span the square travels: 1.0 crosses the frame; smaller values keep the
    # shift between sampled frames under a patch, so a single tubelet shows the motion.
    travel: float = 1.0
    # "motion" (which way the square moves) or "change" (grows, shrinks, brightens, darkens).
    video_task: str = "motion"
    # Videos (the first ones of the training set) that also go, with their reasoning, into
    # cold_start.json beside every image: the SFT cold start (Video-R1's CoT subset).
    cold_start_videos: int = 0
    # Videos drawn cell by cell ((change or direction) x colour): each run of 16 consecutive
    # videos holds every cell once, so the training set, its cold-start prefix and the held-out
    # set cover the cells evenly. Drawn at random (False), the demo's seed-0 set had 20 green
    # shrinking squares of 512 in training, 2 of 64 in the cold start and 15 of 128 held out,
    # the one cell every seed's SFT got wrong.
    balanced: bool = False
    seed: int = 0
    codec: str = "mpeg4"


# ------------------------------------------------------------------------------------------------
# Media.


def moving_square_frames(
    direction: str,
    num_frames: int,
    size: tuple[int, int],
    square: int,
    colour,
    rng,
    travel: float = 1.0,
) -> np.ndarray:
    """Frames of a square moving in `direction`: [num_frames, H, W, 3] uint8 on a grey
    background. It covers `travel` of the free span from a random start; the cross-axis position
    is random. With travel 1.0 it crosses from one edge region to the other."""
    height, width = size
    frames = np.full((num_frames, height, width, 3), 96, np.uint8)
    horizontal = direction in ("left to right", "right to left")
    along = width - square if horizontal else height - square
    cross = int(rng.integers(0, (height if horizontal else width) - square + 1))
    distance = int(round(along * travel))
    offset = int(rng.integers(0, along - distance + 1)) if distance < along else 0
    steps = offset + np.linspace(0, distance, num_frames).round().astype(int)
    if direction in ("right to left", "bottom to top"):
        steps = (2 * offset + distance) - steps
    for i, s in enumerate(steps):
        y, x = (cross, s) if horizontal else (s, cross)
        frames[i, y : y + square, x : x + square] = colour
    return frames


def changing_square_frames(
    change: str, num_frames: int, size: tuple[int, int], square: int, colour, rng
) -> np.ndarray:
    """Frames of a square that grows, shrinks, brightens or darkens over time: [num_frames, H, W,
    3] uint8 on a grey background, centred at a random point. Sizes go between square/2 and 2 *
    square; brightness between 35% and 100% of the colour."""
    height, width = size
    frames = np.full((num_frames, height, width, 3), 96, np.uint8)
    ramp = np.linspace(0.0, 1.0, num_frames)
    if change in ("it shrinks", "it gets darker"):
        ramp = ramp[::-1]
    big = min(2 * square, height, width)
    cy = int(rng.integers(big // 2, height - big // 2 + 1))
    cx = int(rng.integers(big // 2, width - big // 2 + 1))
    resizing = change in ("it grows", "it shrinks")
    for i, r in enumerate(ramp):
        side = int(round(square / 2 + r * (big - square / 2))) if resizing else square
        shade = 1.0 if resizing else 0.35 + 0.65 * r
        y0, x0 = cy - side // 2, cx - side // 2
        frames[i, y0 : y0 + side, x0 : x0 + side] = np.round(np.asarray(colour) * shade)
    return frames


def write_video(path: str, frames: np.ndarray, fps: int, codec: str = "mpeg4") -> None:
    """Writes uint8 frames [T, H, W, 3] (H, W even) as an mp4 file with PyAV."""
    import av

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def squares_image(count: int, size: tuple[int, int], square: int, colour, rng) -> np.ndarray:
    """`count` non-overlapping squares of one colour on grey: [H, W, 3] uint8."""
    height, width = size
    image = np.full((height, width, 3), 96, np.uint8)
    cells = [(r, c) for r in range(height // square) for c in range(width // square)]
    for k in rng.choice(len(cells), count, replace=False):
        r, c = cells[k]
        image[r * square : (r + 1) * square, c * square : (c + 1) * square] = colour
    return image


# ------------------------------------------------------------------------------------------------
# Records.


def _letter_options(names: Sequence[str]) -> list[str]:
    return [f"{chr(ord('A') + i)}. {n}" for i, n in enumerate(names)]


def _cells(count: int, rng) -> list[tuple[int, int]]:
    """`count` (answer, colour) cells, each run of len(answers) x len(colours) consecutive ones
    holding every cell once in a random order."""
    grid = [(d, c) for d in range(len(CHANGES)) for c in range(len(COLOURS))]  # 4 directions too
    cells: list[tuple[int, int]] = []
    while len(cells) < count:
        cells += [grid[i] for i in rng.permutation(len(grid))]
    return cells[:count]


def _video_record(
    directory: str, name: str, spec: SyntheticSpec, rng, cell: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Writes one video of the spec's task and returns its Video-R1 record. `cell`: the
    (answer, colour) indices to draw; None draws both from `rng`."""
    num_frames = max(2, round(spec.seconds * spec.video_fps))
    rel = f"videos/{name}.mp4"
    if cell is None:
        cell = (int(rng.integers(len(CHANGES))), int(rng.integers(len(COLOURS))))
    d, colour = cell[0], list(COLOURS)[cell[1]]
    if spec.video_task == "change":
        frames = changing_square_frames(
            CHANGES[d], num_frames, spec.video_size, spec.square, COLOURS[colour], rng
        )
        question, options, source = CHANGE_QUESTION, CHANGES, "synthetic_change"
        # The change first, then the colour: with the colour named first, the tiny model's
        # answer keyed on the colour word it had just written (seeds 0 and 3 of the demo ended
        # with every blue brightening / every green shrinking wrong, and RL never sampled the
        # right word again); the change first has to come from the frames.
        process = f"<think>{CHANGES[d].capitalize()}. The square is {colour}.</think>"
    elif spec.video_task == "motion":
        frames = moving_square_frames(
            DIRECTIONS[d], num_frames, spec.video_size, spec.square, COLOURS[colour], rng,
            spec.travel,
        )  # fmt: skip
        start, end = DIRECTIONS[d].split(" to ")
        question, options, source = VIDEO_QUESTION, DIRECTIONS, "synthetic_motion"
        process = f"<think>The {colour} square starts at the {start} and ends at the {end}.</think>"
    else:
        raise ValueError(f"unknown synthetic video_task {spec.video_task!r} (motion, change)")
    write_video(os.path.join(directory, rel), frames, spec.video_fps, spec.codec)
    return {
        "problem_id": name,
        "problem": question,
        "data_type": "video",
        "problem_type": "multiple choice",
        "options": _letter_options(options),
        "process": process,
        "solution": f"<answer>{chr(ord('A') + d)}</answer>",
        "path": rel,
        "data_source": source,
    }


def eval_records(directory: str, spec: SyntheticSpec) -> list[dict[str, Any]]:
    """Held-out videos (their own random stream, so the training set does not change)."""
    rng = np.random.default_rng([spec.seed, 1])
    n = spec.num_eval_videos
    cells = _cells(n, np.random.default_rng([spec.seed, 3])) if spec.balanced else [None] * n
    return [_video_record(directory, f"eval_{i:04d}", spec, rng, cells[i]) for i in range(n)]


def build_media_and_records(directory: str, spec: SyntheticSpec) -> list[dict[str, Any]]:
    """Writes videos/ and images/ under `directory`; returns Video-R1 records (relative paths)."""
    rng = np.random.default_rng(spec.seed)
    colours = list(COLOURS)
    n = spec.num_videos
    cells = _cells(n, np.random.default_rng([spec.seed, 2])) if spec.balanced else [None] * n
    records: list[dict[str, Any]] = []
    for i in range(n):
        records.append(_video_record(directory, f"move_{i:04d}", spec, rng, cells[i]))
    for i in range(spec.num_images):
        colour_index = int(rng.integers(len(colours)))
        colour = colours[colour_index]
        count = 1 if i % 2 == 0 else int(rng.integers(1, 5))
        image = squares_image(count, spec.image_size, spec.square, COLOURS[colour], rng)
        rel = f"images/squares_{i:04d}.png"
        os.makedirs(os.path.join(directory, "images"), exist_ok=True)
        Image.fromarray(image).save(os.path.join(directory, rel))
        if i % 2 == 0:
            record = {
                "problem": COLOUR_QUESTION,
                "problem_type": "multiple choice",
                "options": _letter_options(colours),
                "process": f"<think>The square is {colour}.</think>",
                "solution": f"<answer>{chr(ord('A') + colour_index)}</answer>",
            }
        else:
            record = {
                "problem": COUNT_QUESTION,
                "problem_type": "numerical",
                "options": [],
                "process": f"<think>I count {count} squares.</think>",
                "solution": f"<answer>{count}</answer>",
            }
        records.append(
            {
                "problem_id": f"image_{i:04d}",
                "data_type": "image",
                "path": rel,
                "data_source": "synthetic_squares",
                **record,
            }
        )
    return records


# ------------------------------------------------------------------------------------------------
# Tokenizer and model config.


def _corpus(records: Sequence[dict[str, Any]]) -> list[str]:
    texts = [VIDEO_R1_QUESTION_TEMPLATE, "You are a helpful assistant.", "system user assistant"]
    texts += list(VIDEO_R1_TYPE_INSTRUCTIONS.values())
    for r in records:
        texts += [r["problem"], *r["options"], r["process"], r["solution"]]
    texts += [f"{d} {c}" for d in (*DIRECTIONS, *CHANGES) for c in COLOURS] + [
        "0 1 2 3 4 5 6 7 8 9 . , ?"
    ]
    return texts


def make_tokenizer(directory: str, texts: Sequence[str] = (), vocab_size: int = 384):
    """A byte-level BPE tokenizer (any text encodes) of about `vocab_size` tokens, trained on
    `texts` plus the prompt templates, with the Qwen special tokens, single-token reasoning tags
    and the Qwen2-VL chat template. Saved to `directory` (save_pretrained); returns the
    PreTrainedTokenizerFast."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *TAG_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [*_corpus([]), *texts]
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    os.makedirs(directory, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


def load_tokenizer_dir(directory: str):
    """The tokenizer make_tokenizer saved in `directory`."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(directory)


def token_ids(tokenizer) -> dict[str, int]:
    """The special token ids a model config.json needs, read from the tokenizer."""
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    return {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
    }


def write_model_config(
    directory: str, tokenizer, generation: str = "qwen2_vl", **kwargs: Any
) -> dict[str, Any]:
    """Writes a tiny model's config.json (model/tiny.py sizes) into `directory`, with the
    tokenizer's special token ids and a vocabulary covering it (rounded up to 64). Returns the
    dict; `ModelConfig.from_pretrained(directory)` reads it."""
    from model.tiny import tiny_hf_config

    vocab = -(-len(tokenizer) // 64) * 64
    raw = tiny_hf_config(generation, vocab_size=vocab, token_ids=token_ids(tokenizer), **kwargs)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    return raw


def build_dataset(
    directory: str,
    spec: SyntheticSpec | None = None,
    generation: str = "qwen2_vl",
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Writes the whole synthetic set under `directory`: videos/, images/, train.json (Video-R1
    records; also split into train_videos.json and train_images.json), cold_start.json (the
    images and the first `cold_start_videos` videos), eval.json (held-out videos) and model/
    (tokenizer + tiny config.json). Skips the work when `directory` already holds a set built
    from the same spec. Returns the paths {"train_file", "video_file", "image_file",
    "cold_start_file", "eval_file", "media_root", "model_dir"}."""
    spec = spec or SyntheticSpec()
    paths = {
        "train_file": os.path.join(directory, "train.json"),
        "video_file": os.path.join(directory, "train_videos.json"),
        "image_file": os.path.join(directory, "train_images.json"),
        "cold_start_file": os.path.join(directory, "cold_start.json"),
        "eval_file": os.path.join(directory, "eval.json"),
        "media_root": directory,
        "model_dir": os.path.join(directory, "model"),
    }
    manifest = os.path.join(directory, "synthetic.json")
    wanted = {
        "format": FORMAT,
        "spec": dataclasses.asdict(spec),
        "generation": generation,
        "model": dict(model_kwargs or {}),
    }
    if os.path.isfile(manifest):
        with open(manifest) as f:
            found = json.load(f)
        wanted_json = json.loads(json.dumps(wanted))
        if found == wanted_json:
            return paths
        media = ("format", "spec")
        if all(found.get(k) == wanted_json[k] for k in media) and os.path.isdir(paths["model_dir"]):
            # Same videos and records, another model (e.g. generation=qwen3_vl): only the tiny
            # model's config.json is rewritten.
            tokenizer = load_tokenizer_dir(paths["model_dir"])
            write_model_config(paths["model_dir"], tokenizer, generation, **(model_kwargs or {}))
            with open(manifest, "w") as f:
                json.dump(wanted, f)
            return paths
    os.makedirs(directory, exist_ok=True)
    records = build_media_and_records(directory, spec)
    held_out = eval_records(directory, spec)
    videos = [r for r in records if r["data_type"] == "video"]
    images = [r for r in records if r["data_type"] == "image"]
    for key, subset in (
        ("train_file", records),
        ("video_file", videos),
        ("image_file", images),
        ("cold_start_file", images + videos[: spec.cold_start_videos]),
        ("eval_file", held_out),
    ):
        with open(paths[key], "w") as f:
            json.dump(subset, f, indent=1)
    tokenizer = make_tokenizer(paths["model_dir"], _corpus(records))
    write_model_config(paths["model_dir"], tokenizer, generation, **(model_kwargs or {}))
    with open(manifest, "w") as f:
        json.dump(wanted, f)
    return paths


def spec_from_config(synthetic) -> SyntheticSpec:
    """A SyntheticSpec from a config's `data.synthetic` section."""
    fields = {f.name for f in dataclasses.fields(SyntheticSpec)}
    values = {k: v for k, v in dict(synthetic).items() if k in fields}
    for key in ("video_size", "image_size"):
        if key in values:
            values[key] = tuple(int(v) for v in values[key])
    return SyntheticSpec(**values)


def ensure_from_config(config) -> None:
    """Builds the synthetic set a config reads (its `data.synthetic` section) unless it is
    already there; does nothing for configs without an enabled `data.synthetic`."""
    synthetic = config.data.get("synthetic")
    if not synthetic or not synthetic.get("enabled", False):
        return
    generation = generation_of(synthetic)
    build_dataset(
        str(synthetic.directory),
        spec_from_config(synthetic),
        generation,
        model_kwargs(synthetic, generation),
    )


def generation_of(synthetic) -> str:
    """The model generation a `data.synthetic` section (a mapping) builds its tiny model for."""
    return str(synthetic.get("generation", "qwen2_vl"))


def model_kwargs(synthetic, generation: str) -> dict[str, Any]:
    """The tiny model's tiny_hf_config arguments: `synthetic.model`, then what
    `synthetic.model_by_generation[generation]` sets for that generation."""
    kwargs = dict(synthetic.get("model", {}))
    kwargs.update(dict(synthetic.get("model_by_generation", {}).get(generation, {})))
    # Nested sections (vision_overrides) as plain dicts: they go into config.json.
    return {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in kwargs.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num_videos", type=int, default=SyntheticSpec.num_videos)
    parser.add_argument("--num_images", type=int, default=SyntheticSpec.num_images)
    parser.add_argument("--seconds", type=float, default=SyntheticSpec.seconds)
    parser.add_argument("--height", type=int, default=SyntheticSpec.video_size[0])
    parser.add_argument("--width", type=int, default=SyntheticSpec.video_size[1])
    parser.add_argument(
        "--generation",
        default="qwen2_vl",
        choices=("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"),
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spec = SyntheticSpec(
        num_videos=args.num_videos,
        num_images=args.num_images,
        seconds=args.seconds,
        video_size=(args.height, args.width),
        seed=args.seed,
    )
    print(json.dumps(build_dataset(args.out, spec, args.generation)))


if __name__ == "__main__":
    main()
