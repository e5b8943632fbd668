"""Patches and position ids from the pipeline, fed to the port, give the same logits as
transformers given the same frames through its own patch ordering and its own rope index.

The transformers side is built independently of the pipeline: the prompt text has its pad tokens
expanded in string space (as Qwen2VLProcessor does) and is tokenised again; images go through
transformers' Qwen2VLImageProcessorPil; videos through a loop-by-loop re-implementation of the
video processor's patch order (its torchvision dependency is not installed here); positions come
from the transformers model's own get_rope_index. Inputs are chosen where transformers 5.23's
rope rule and the original one agree (each item's temporal extent <= its larger merged side).
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from configs import demo
from jaxvrl.data import media, pipeline, synthetic
from jaxvrl.data.prompts import PromptBuilder, PromptSettings, load_tokenizer
from jaxvrl.data.records import load_examples, resolve_path
from model.tiny import make_tiny_checkpoint

TOLERANCE = 1e-4  # DESIGN.md section 7: max |logit difference| <= 1e-4 x max |logit|


def hf_video_patches(frames_uint8: np.ndarray, patch: int = 14, merge: int = 2) -> np.ndarray:
    """transformers' video patch order, written as loops: pad to an even frame count with the
    last frame, /255, CLIP normalise, then for each temporal patch, each 2x2 merge window
    (row-major), each patch of the window (row-major): values in (channel, frame, y, x) order."""
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    frames = list(frames_uint8)
    if len(frames) % 2:
        frames.append(frames[-1])
    x = (np.stack(frames).astype(np.float64) / 255.0 - mean) / std  # [T, H, W, C]
    t, h, w, _ = x.shape
    rows = []
    for gt in range(t // 2):
        for by in range(h // patch // merge):
            for bx in range(w // patch // merge):
                for my in range(merge):
                    for mx in range(merge):
                        y0, x0 = (by * merge + my) * patch, (bx * merge + mx) * patch
                        block = x[2 * gt : 2 * gt + 2, y0 : y0 + patch, x0 : x0 + patch]
                        rows.append(block.transpose(3, 0, 1, 2).reshape(-1))
    return np.stack(rows).astype(np.float32)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A synthetic set plus a SEED-Bench-R1 style record (progress clip, then an image)."""
    root = str(tmp_path_factory.mktemp("parity"))
    config = demo.get_config(root)
    config.data.synthetic.num_videos, config.data.synthetic.num_images = 2, 2
    synthetic.ensure_from_config(config)
    with open(os.path.join(root, "train.json")) as f:
        records = json.load(f)
    os.makedirs(os.path.join(root, "videos", "Ego4D"))
    os.makedirs(os.path.join(root, "images", "Ego4D"))
    shutil.copy(os.path.join(root, records[0]["path"]), os.path.join(root, "videos/Ego4D/c.mp4"))
    shutil.copy(os.path.join(root, records[-1]["path"]), os.path.join(root, "images/Ego4D/c.png"))
    seed_row = {
        "sample_id": "seed0", "task_goal": "move the square", "question": "What is next?",
        "choice_a": "up", "choice_b": "down", "choice_c": "left", "choice_d": "right",
        "golden_choice_idx": "D", "video_source": "Ego4D", "video_basename": "c.mp4",
        "current_observation_basename": "c.png", "task_progress_metadata": [{"step": 1}],
    }  # fmt: skip
    with open(os.path.join(root, "seed.jsonl"), "w") as f:
        f.write(json.dumps(seed_row) + "\n")
    return root


@pytest.mark.parametrize("generation", ["qwen2_vl", "qwen2_5_vl"])
def test_pipeline_inputs_give_transformers_logits_through_the_port(generation, data_root, tmp_path):
    from model.hf import load_pretrained

    # A tiny random checkpoint whose special ids match the synthetic tokenizer.
    tokenizer = load_tokenizer(os.path.join(data_root, "model"))
    checkpoint = str(tmp_path / generation)
    hf_model = make_tiny_checkpoint(
        checkpoint, generation, seed=3, vocab_size=384, token_ids=synthetic.token_ids(tokenizer)
    )
    tokenizer.save_pretrained(checkpoint)

    config = demo.get_config(data_root)
    config.model.path = checkpoint
    config.data.synthetic.enabled = False
    config.data.train_files = f"{data_root}/train.json,{data_root}/seed.jsonl"
    config.data.update(batch_size=5, shuffle=False, shuffle_unit="frame", num_workers=0)
    batch = next(iter(pipeline.build_dataset(config, process_index=0, process_count=1)))
    assert batch["meta"]["data_type"] == ["video", "video", "image", "image", "video"]

    # ---- the port, fed the pipeline's batch -------------------------------------------------
    port = load_pretrained(checkpoint)
    mask = batch["attention_mask"].astype(bool)
    ours = np.asarray(
        port.logits(port(batch["input_ids"], batch["positions"], mask, batch["vision"]))
    )

    # ---- transformers, from the same frames through its own processing ----------------------
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    examples, _ = load_examples(config.data.train_files)
    sampling = media.FrameSampling.from_config(config.data)
    spec = pipeline.vision_spec(port.config.vision)
    builder = PromptBuilder(tokenizer, port.config, PromptSettings.from_config(config.data))
    image_processor = Qwen2VLImageProcessorPil()
    length = batch["input_ids"].shape[1]
    ids = np.full((len(examples), length), tokenizer.pad_token_id, np.int64)
    hf_mask = np.zeros_like(ids)
    images, videos, image_grids, video_grids, seconds = [], [], [], [], []
    for row, example in enumerate(examples):
        text = builder.prompt_text(example)
        for m in example.media:
            frames = media.read_media(m.kind, resolve_path(m.path, data_root), sampling, spec)
            if m.kind == "image":
                out = image_processor(
                    images=[Image.fromarray(frames.frames[0])], do_resize=False,
                    return_tensors="np",
                )  # fmt: skip
                images.append(out["pixel_values"])
                grid = [int(v) for v in out["image_grid_thw"][0]]
                image_grids.append(grid)
            else:
                videos.append(hf_video_patches(frames.frames))
                grid = [-(-len(frames.frames) // 2), *(s // 14 for s in frames.frames.shape[1:3])]
                video_grids.append(grid)
                seconds.append(2 / frames.sample_fps)  # temporal_patch_size / sample fps
            # Expand in string space, as Qwen2VLProcessor does (placeholders keep the order).
            pad, mark = (
                ("<|image_pad|>", "\x00I") if m.kind == "image" else ("<|video_pad|>", "\x00V")
            )
            text = text.replace(pad, mark * (int(np.prod(grid)) // 4), 1)
        text = text.replace("\x00I", "<|image_pad|>").replace("\x00V", "<|video_pad|>")
        row_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids[row, : len(row_ids)] = row_ids
        hf_mask[row, : len(row_ids)] = 1
    np.testing.assert_array_equal(ids, batch["input_ids"])
    np.testing.assert_array_equal(hf_mask, batch["attention_mask"])

    cfg = port.config
    token_type = np.zeros_like(ids)
    token_type[ids == cfg.image_token_id] = 1
    token_type[ids == cfg.video_token_id] = 2
    kwargs = {
        "pixel_values": torch.tensor(np.concatenate(images)),
        "image_grid_thw": torch.tensor(image_grids),
        "pixel_values_videos": torch.tensor(np.concatenate(videos)),
        "video_grid_thw": torch.tensor(video_grids),
    }
    rope_kwargs = {}
    if generation == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = rope_kwargs["second_per_grid_ts"] = torch.tensor(seconds)
    positions, _ = hf_model.model.get_rope_index(
        torch.tensor(ids), torch.tensor(token_type), image_grid_thw=kwargs["image_grid_thw"],
        video_grid_thw=kwargs["video_grid_thw"], attention_mask=torch.tensor(hf_mask),
        **rope_kwargs,
    )  # fmt: skip
    np.testing.assert_array_equal(positions.numpy()[:, mask], batch["positions"][:, mask])
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(hf_mask),
            mm_token_type_ids=torch.tensor(token_type),
            **kwargs,
        ).logits.numpy()
    diff = np.abs(ours - ref)[mask].max()
    scale = np.abs(ref)[mask].max()
    assert diff <= TOLERANCE * scale, (diff, scale)

    # The vision path matters: the T-GRPO companion (frames shuffled) moves the logits of the
    # rows with a video far beyond the tolerance and leaves the image-only rows alone.
    shuffled = np.asarray(
        port.logits(port(batch["input_ids"], batch["positions"], mask, batch["vision_shuffled"]))
    )
    moved = np.abs(shuffled - ours).max(axis=(1, 2))
    assert batch["is_video"].tolist() == [True, True, False, False, True]
    assert (moved[[0, 1, 4]] > 100 * TOLERANCE * scale).all()
    assert (moved[[2, 3]] <= TOLERANCE * scale).all()
