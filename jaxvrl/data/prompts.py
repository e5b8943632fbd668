"""Prompts: the recipe's question template, the checkpoint's own chat template and tokenizer, the
image/video pad tokens expanded to one per merged vision token, and M-RoPE positions computed on
the host (`model.rope.rope_index`).

    builder = PromptBuilder(load_tokenizer(path), model_config, config.data)
    tokens = builder.tokens(example, vision_items)   # PromptTokens: ids, positions, rope delta
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxvrl.data.records import Example, problem_type_key
from jaxvrl.data.vision_inputs import VisionInput
from model.config import ModelConfig
from model.rope import rope_index

_TOKENIZER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer in {path} has no chat template")
    return tokenizer


def load_tokenizer(path: str):
    """The checkpoint's tokenizer (with its chat template) from a local directory; never
    downloads. Cached per process, so data workers load it once; the lock keeps decoding
    threads from racing through transformers' lazy imports."""
    with _TOKENIZER_LOCK:
        return _load_tokenizer(path)


@dataclasses.dataclass(frozen=True)
class PromptSettings:
    """The prompt fields of the config's `data` section."""

    question_template: str
    type_instructions: Mapping[str, str]
    problem_formats: Mapping[str, str]
    system_prompt: str = ""
    sft_target: bool = False
    sft_target_template: str = "{process}\n{solution}"
    text_first: bool = False  # the question text before the vision items (VideoChat-R1)

    @classmethod
    def from_config(cls, data) -> PromptSettings:
        return cls(
            question_template=str(data["question_template"]),
            type_instructions=dict(data["type_instructions"]),
            problem_formats=dict(data["problem_formats"]),
            system_prompt=str(data.get("system_prompt", "")),
            text_first=bool(data.get("text_first", False)),
            sft_target=bool(data.get("sft_target", False)),
            sft_target_template=str(data.get("sft_target_template", "{process}\n{solution}")),
        )


@dataclasses.dataclass(frozen=True)
class PromptTokens:
    """One tokenised example.

    input_ids: [L] int32 (prompt, then the SFT target when asked). positions: [3, L] int32
    M-RoPE ids. rope_delta: text position minus token index after the prompt (for decoding).
    prompt_length: tokens of the prompt. loss_mask: [L] int8, 1 on target tokens.
    """

    input_ids: np.ndarray
    positions: np.ndarray
    rope_delta: int
    prompt_length: int
    loss_mask: np.ndarray
    text: str


def question_text(example: Example, settings: PromptSettings) -> str:
    """User text: the problem formatted for its type, put in the question template, followed by
    the type's instruction (jaxvrl/data/templates.py says how). Raises KeyError for a problem
    type without an instruction."""
    key = problem_type_key(example.problem_type)
    if key not in settings.type_instructions:
        raise KeyError(f"unknown problem type {example.problem_type!r}")
    body = settings.problem_formats.get(key, "{problem}").format(
        problem=example.problem,
        options="".join(f"{o}\n" for o in example.options),
        options_list=str(list(example.options)),
        start_box=str(list(example.extra.get("start", []))),
    )
    return settings.question_template.format(question=body) + settings.type_instructions[key]


def chat_messages(example: Example, settings: PromptSettings) -> list[dict[str, Any]]:
    """The conversation: an optional system message, then one user turn holding the vision items
    in order and the question text (after them, or before them with `text_first`)."""
    content: list[dict[str, Any]] = [{"type": m.kind} for m in example.media]
    text = {"type": "text", "text": question_text(example, settings)}
    content.insert(0 if settings.text_first else len(content), text)
    messages: list[dict[str, Any]] = []
    if settings.system_prompt:
        messages.append({"role": "system", "content": settings.system_prompt})
    messages.append({"role": "user", "content": content})
    return messages


def expand_vision_tokens(
    ids: np.ndarray, items: Sequence[VisionInput], config: ModelConfig
) -> np.ndarray:
    """Replaces the k-th image/video pad token by t*h*w/merge^2 copies of itself, one per merged
    vision feature of the k-th item. ids: [L] -> [L'] int32."""
    pads = np.flatnonzero((ids == config.image_token_id) | (ids == config.video_token_id))
    if len(pads) != len(items):
        raise ValueError(f"prompt has {len(pads)} vision pad tokens for {len(items)} vision items")
    unit = config.vision.spatial_merge_size**2
    pieces, start = [], 0
    for pos, item in zip(pads, items, strict=True):
        want = config.video_token_id if item.kind == "video" else config.image_token_id
        if ids[pos] != want:
            raise ValueError(f"vision item {item.kind} meets pad token {int(ids[pos])} at {pos}")
        pieces.append(ids[start:pos])
        pieces.append(np.full((item.num_patches // unit,), want, ids.dtype))
        start = pos + 1
    pieces.append(ids[start:])
    return np.concatenate(pieces).astype(np.int32)


def timestamped_videos(text: str, items: Sequence[VisionInput], tokens: dict[str, str]) -> str:
    """Qwen3-VL's video prompt: the k-th video's `<|vision_start|><|video_pad|><|vision_end|>`
    becomes, for each of its temporal patches, `<T seconds>` (its timestamp, one decimal) and
    the patch's own start, pad and end (transformers 4.57's Qwen3VLProcessor and vLLM; 5.23
    replaces the pad alone and keeps the outer start and end around the blocks). `tokens`: the
    tokenizer's strings of vision_start, video_pad and vision_end. Returns the text with one
    pad per temporal patch (expand_vision_tokens then takes per-patch items)."""
    start, pad, end = tokens["vision_start"], tokens["video_pad"], tokens["vision_end"]
    triple = start + pad + end
    videos = [item for item in items if item.kind == "video"]
    pieces = text.split(triple)
    if len(pieces) - 1 != len(videos):
        raise ValueError(
            f"prompt has {len(pieces) - 1} video placeholders for {len(videos)} videos"
        )
    out = [pieces[0]]
    for video, rest in zip(videos, pieces[1:], strict=True):
        if len(video.timestamps) != video.grid_thw[0]:
            raise ValueError(
                f"a Qwen3-VL video needs a timestamp per temporal patch: {len(video.timestamps)} "
                f"for grid {video.grid_thw}"
            )
        out += [f"<{t:.1f} seconds>{triple}" for t in video.timestamps]
        out.append(rest)
    return "".join(out)


def per_temporal_patch(items: Sequence[VisionInput]) -> list[VisionInput]:
    """Each video split into its temporal patches (views, no copy), images as they are: the
    items of a Qwen3-VL prompt's pads in order."""
    out = []
    for item in items:
        t, h, w = item.grid_thw
        if item.kind != "video" or t == 1:
            out.append(item)
            continue
        out += [
            dataclasses.replace(
                item, patches=item.patches[j * h * w : (j + 1) * h * w], grid_thw=(1, h, w)
            )
            for j in range(t)
        ]
    return out


class PromptBuilder:
    """Tokenises examples with the checkpoint's tokenizer and chat template."""

    def __init__(self, tokenizer, config: ModelConfig, settings: PromptSettings):
        self.tokenizer = tokenizer
        self.config = config
        self.settings = settings
        for name, want in (
            ("<|image_pad|>", config.image_token_id),
            ("<|video_pad|>", config.video_token_id),
        ):
            got = tokenizer.convert_tokens_to_ids(name)
            if got != want:
                raise ValueError(f"tokenizer maps {name} to {got}, the model config to {want}")
        self.vision_tokens = {
            "vision_start": tokenizer.convert_ids_to_tokens(config.vision_start_token_id),
            "video_pad": tokenizer.convert_ids_to_tokens(config.video_token_id),
            "vision_end": tokenizer.convert_ids_to_tokens(config.vision_end_token_id),
        }

    def prompt_text(self, example: Example) -> str:
        """The rendered chat prompt, one pad token per vision item, ending with the assistant
        turn's opening."""
        return self.tokenizer.apply_chat_template(
            chat_messages(example, self.settings), tokenize=False, add_generation_prompt=True
        )

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)

    def target_text(self, example: Example) -> str:
        """The SFT target (Video-R1: process + newline + solution)."""
        return self.settings.sft_target_template.format(
            process=example.process, solution=example.solution
        )

    def tokens(self, example: Example, items: Sequence[VisionInput]) -> PromptTokens:
        """Token ids with expanded pad tokens and their M-RoPE positions. With SFT targets on,
        the target and the end-of-turn token follow the prompt (tokenised separately)."""
        text = self.prompt_text(example)
        if self.config.timestamped_videos:
            text = timestamped_videos(text, items, self.vision_tokens)
            ids = expand_vision_tokens(self.encode(text), per_temporal_patch(items), self.config)
        else:
            ids = expand_vision_tokens(self.encode(text), items, self.config)
        prompt_length = len(ids)
        loss_mask = np.zeros((prompt_length,), np.int8)
        if self.settings.sft_target:
            target = self.encode(self.target_text(example))
            eos = self.tokenizer.eos_token_id
            target = np.concatenate([target, np.asarray([eos], np.int32)])
            ids = np.concatenate([ids, target])
            loss_mask = np.concatenate([loss_mask, np.ones((len(target),), np.int8)])
        images = [i.grid_thw for i in items if i.kind == "image"]
        videos = [i for i in items if i.kind == "video"]
        positions, _ = rope_index(
            ids[None],
            None,
            self.config,
            np.asarray(images, np.int64).reshape(-1, 3) if images else None,
            np.asarray([v.grid_thw for v in videos], np.int64).reshape(-1, 3) if videos else None,
            [v.second_per_grid_t for v in videos] if videos else None,
        )
        # Decoding continues right after the prompt (rope_index's delta on the prompt alone).
        prompt_delta = int(positions[:, 0, :prompt_length].max()) + 1 - prompt_length
        return PromptTokens(
            input_ids=ids,
            positions=positions[:, 0],
            rope_delta=prompt_delta,
            prompt_length=prompt_length,
            loss_mask=loss_mask,
            text=text,
        )
