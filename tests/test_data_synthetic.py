"""The synthetic set: real videos whose answer needs frame order, a Qwen-style tokenizer and a
matching tiny model config."""

import dataclasses
import json
import os

import decord
import numpy as np
import pytest

from jaxvrl.data import synthetic
from jaxvrl.data.prompts import load_tokenizer
from model.config import ModelConfig
from model.tiny import tiny_hf_config

SPEC = synthetic.SyntheticSpec(
    num_videos=6, num_images=4, seconds=1.0, video_fps=8, seed=1, cold_start_videos=2
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic.build_dataset(str(tmp_path_factory.mktemp("syn")), SPEC)


def centre(frame: np.ndarray) -> np.ndarray:
    """(row, column) centre of the pixels that differ from the grey background."""
    mask = np.abs(frame.astype(int) - 96).sum(-1) > 60
    return np.argwhere(mask).mean(axis=0)


def test_records_are_video_r1_rows_for_every_file(dataset):
    with open(dataset["train_file"]) as f:
        records = json.load(f)
    assert len(records) == SPEC.num_videos + SPEC.num_images
    keys = {"problem_id", "problem", "data_type", "problem_type", "options", "process",
            "solution", "path", "data_source"}  # fmt: skip
    for r in records:
        assert keys <= set(r)
        assert os.path.isfile(os.path.join(dataset["media_root"], r["path"]))
    assert {r["problem_type"] for r in records} == {"multiple choice", "numerical"}


def test_cold_start_file_holds_every_image_and_the_first_videos(dataset):
    def load(key):
        with open(dataset[key]) as f:
            return json.load(f)

    cold = load("cold_start_file")
    assert cold == load("image_file") + load("video_file")[: SPEC.cold_start_videos]
    assert all(r["process"].startswith("<think>") for r in cold)


def test_video_answer_is_the_direction_the_square_moves(dataset):
    with open(dataset["train_file"]) as f:
        videos = [r for r in json.load(f) if r["data_type"] == "video"]
    moves = {"A": (0, 1), "B": (0, -1), "C": (1, 0), "D": (-1, 0)}  # (d row, d column) signs
    for r in videos:
        reader = decord.VideoReader(os.path.join(dataset["media_root"], r["path"]))
        assert len(reader) == 8 and reader[0].shape == (112, 112, 3)
        first, last = centre(reader[0].asnumpy()), centre(reader[len(reader) - 1].asnumpy())
        step = np.sign(np.round(last - first)).astype(int)
        assert tuple(step) == moves[r["solution"][len("<answer>")]]


def test_tokenizer_has_qwen_special_tokens_and_keeps_reasoning_tags(dataset):
    tokenizer = load_tokenizer(dataset["model_dir"])
    assert len(tokenizer) <= 400
    for token in synthetic.SPECIAL_TOKENS + synthetic.TAG_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token
    text = "<think>Hmm, 3.14 ünïcode</think> <answer>B</answer>"
    ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_model_config_special_ids_match_the_tokenizer(dataset):
    tokenizer = load_tokenizer(dataset["model_dir"])
    config = ModelConfig.from_pretrained(dataset["model_dir"])
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert config.eos_token_id == (tokenizer.eos_token_id,)
    assert config.text.vocab_size >= len(tokenizer) and config.text.vocab_size % 64 == 0


def test_building_again_with_the_same_spec_reuses_the_files(dataset):
    before = os.path.getmtime(dataset["train_file"])
    again = synthetic.build_dataset(dataset["media_root"], SPEC)
    assert again == dataset and os.path.getmtime(dataset["train_file"]) == before


def test_another_generation_rewrites_only_the_model_config(tmp_path):
    """The same set for a Qwen3-VL model: the videos, records and tokenizer stay; config.json
    becomes a tiny Qwen3-VL with the tokenizer's ids; switching back restores Qwen2-VL."""
    paths = synthetic.build_dataset(str(tmp_path), SPEC)
    before = os.path.getmtime(paths["train_file"])
    again = synthetic.build_dataset(str(tmp_path), SPEC, "qwen3_vl")
    assert again == paths and os.path.getmtime(paths["train_file"]) == before
    config = ModelConfig.from_pretrained(paths["model_dir"])
    tokenizer = load_tokenizer(paths["model_dir"])
    assert config.model_type == "qwen3_vl"
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    synthetic.build_dataset(str(tmp_path), SPEC)
    assert ModelConfig.from_pretrained(paths["model_dir"]).model_type == "qwen2_vl"


def test_balanced_sets_hold_every_cell_equally_in_train_cold_start_and_eval(tmp_path):
    spec = synthetic.SyntheticSpec(
        num_videos=32, num_eval_videos=16, num_images=0, video_size=(32, 32), seconds=0.5,
        video_fps=4, square=8, video_task="change", cold_start_videos=16, balanced=True,
    )  # fmt: skip
    paths = synthetic.build_dataset(str(tmp_path), spec)

    def cells(key):
        with open(paths[key]) as f:
            records = [r for r in json.load(f) if r["data_type"] == "video"]
        return [(r["solution"], r["process"].split("is ")[-1]) for r in records]

    for key, each in (("video_file", 2), ("cold_start_file", 1), ("eval_file", 1)):
        drawn = cells(key)
        counts = {c: drawn.count(c) for c in set(drawn)}
        assert len(counts) == 16 and set(counts.values()) == {each}, (key, counts)
    # Drawn at random the same sizes miss cells (the default, kept for the other tasks' sets).
    unbalanced = synthetic.build_dataset(
        str(tmp_path / "random"), dataclasses.replace(spec, balanced=False)
    )
    with open(unbalanced["eval_file"]) as f:
        drawn = {(r["solution"], r["process"].split("is ")[-1]) for r in json.load(f)}
    assert len(drawn) < 16


def test_model_by_generation_overrides_the_tiny_model_for_its_generation_only():
    from configs import demo

    section = demo.get_config().data.synthetic
    base = section.model.to_dict()
    wider_init = {"vision_overrides": {"initializer_range": 0.185}}
    assert synthetic.model_kwargs(section, "qwen2_vl") == base
    assert synthetic.model_kwargs(section, "qwen3_vl") == {**base, **wider_init}
    hybrid = {"vision_depth": 2, "heads": 8, "head_dim": 16, "rotary_fraction": 1.0}
    qwen3_5 = {**base, "num_layers": 2, **hybrid, **wider_init}
    assert synthetic.model_kwargs(section, "qwen3_5") == qwen3_5
    section.model_by_generation.qwen3_5.num_layers = 4  # as a command-line override sets it
    assert synthetic.model_kwargs(section, "qwen3_5") == {**qwen3_5, "num_layers": 4}
    # The nested section reaches config.json as plain JSON: the tower's own init, the text's
    # unchanged.
    raw = tiny_hf_config("qwen3_vl", **synthetic.model_kwargs(section, "qwen3_vl"))
    json.dumps(raw)
    config = ModelConfig.from_hf_dict(raw)
    assert config.vision.initializer_range == 0.185
    assert config.text.initializer_range == base["initializer_range"]
