"""Prompts: question templates, the chat template, pad-token expansion and M-RoPE positions."""

import numpy as np
import pytest

from configs.base import data_config
from jaxvrl.data import synthetic
from jaxvrl.data.prompts import (
    PromptBuilder,
    PromptSettings,
    expand_vision_tokens,
    load_tokenizer,
    question_text,
)
from jaxvrl.data.records import Example, Media
from jaxvrl.data.vision_inputs import VisionInput
from model.config import ModelConfig
from model.rope import rope_index


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tokenizer directory with a tiny config.json for each generation."""
    root = tmp_path_factory.mktemp("ckpt")
    dirs = {}
    tokenizer = synthetic.make_tokenizer(str(root / "qwen2_vl"))
    for generation in ("qwen2_vl", "qwen2_5_vl"):
        directory = str(root / generation)
        if generation != "qwen2_vl":
            tokenizer.save_pretrained(directory)
        synthetic.write_model_config(directory, tokenizer, generation)
        dirs[generation] = directory
    return dirs


def builder(directory, **changes) -> PromptBuilder:
    data = data_config()
    data.update(changes)
    settings = PromptSettings.from_config(data)
    return PromptBuilder(
        load_tokenizer(directory), ModelConfig.from_pretrained(directory), settings
    )


VIDEO = (Media("video", "a.mp4"),)


def example(media=VIDEO, problem_type="multiple choice") -> Example:
    return Example(
        uid="1",
        source="video_r1",
        data_type=media[0].kind,
        problem_type=problem_type,
        problem="Which way?",
        options=("A. up", "B. down"),
        solution="<answer>A</answer>",
        media=tuple(media),
        process="<think>up</think>",
    )


def item(kind, grid, seconds=1.0) -> VisionInput:
    t, h, w = grid
    return VisionInput(kind, np.zeros((t * h * w, 1176), np.float32), grid, seconds)


def test_multiple_choice_question_lists_options_then_template_then_instruction():
    settings = PromptSettings.from_config(data_config())
    text = question_text(example(), settings)
    body = "Which way?Options:\nA. up\nB. down\n"
    assert text.startswith(body + "\nPlease think about this question")
    assert text.endswith(
        "<answer> and </answer> tags. Please provide only the single option letter (e.g., A, B, C, "
        "D, etc.) within the <answer> </answer> tags."
    )


def test_other_types_use_the_bare_problem_and_their_own_instruction():
    settings = PromptSettings.from_config(data_config())
    text = question_text(example(problem_type="numerical"), settings)
    assert text.startswith("Which way?\nPlease think")
    assert text.endswith("Please provide the numerical value (e.g., 42 or 3.14) within the "
                         "<answer> </answer> tags.")  # fmt: skip
    with pytest.raises(KeyError, match="riddle"):
        question_text(example(problem_type="riddle"), settings)


def test_chat_template_places_vision_items_before_the_question(checkpoint):
    b = builder(checkpoint["qwen2_vl"], question_template="Q: {question}")
    media = (Media("video", "v.mp4"), Media("image", "i.png"))
    text = b.prompt_text(example(media, "free-form"))
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
        "Q: Which way? Please provide your text answer within the <answer> </answer> tags."
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    system = builder(checkpoint["qwen2_vl"], system_prompt="Be brief.").prompt_text(example())
    assert system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_pad_tokens_expand_to_one_per_merged_vision_feature(checkpoint):
    config = ModelConfig.from_pretrained(checkpoint["qwen2_vl"])
    v, i = config.video_token_id, config.image_token_id
    ids = np.array([9, v, 10, i, 11], np.int32)
    out = expand_vision_tokens(ids, [item("video", (2, 4, 6)), item("image", (1, 2, 2))], config)
    # video: 2 * 4 * 6 / 4 = 12 tokens, image: 1 * 2 * 2 / 4 = 1 token
    np.testing.assert_array_equal(out, [9] + [v] * 12 + [10, i, 11])
    with pytest.raises(ValueError, match="2 vision pad tokens for 1"):
        expand_vision_tokens(ids, [item("video", (2, 4, 6))], config)


def test_positions_are_rope_index_of_the_expanded_prompt(checkpoint):
    b = builder(checkpoint["qwen2_vl"])
    tokens = b.tokens(example(), [item("video", (2, 4, 6))])
    ids = tokens.input_ids
    config = b.config
    pads = np.flatnonzero(ids == config.video_token_id)
    assert len(pads) == 12 and np.all(np.diff(pads) == 1)
    assert ids[pads[0] - 1] == config.vision_start_token_id
    assert ids[pads[-1] + 1] == config.vision_end_token_id
    expected, delta = rope_index(ids[None], None, config, None, np.array([[2, 4, 6]]))
    np.testing.assert_array_equal(tokens.positions, expected[:, 0])
    # The video block spans t 0..1, h 0..1, w 0..2 from the start position s; text resumes at s + 3.
    s = pads[0]
    assert tokens.positions[:, pads[-1]].tolist() == [s + 1, s + 1, s + 2]
    assert tokens.positions[:, pads[-1] + 1].tolist() == [s + 3] * 3
    assert tokens.rope_delta == int(delta[0]) == 3 - 12
    assert tokens.prompt_length == len(ids) and not tokens.loss_mask.any()


def test_qwen2_5_vl_temporal_positions_follow_seconds_per_temporal_patch(checkpoint):
    b = builder(checkpoint["qwen2_5_vl"])
    # 0.5 s per temporal patch (4 fps sampling) x tokens_per_second 2 = 1 position per patch;
    # 2 s per patch = 4 positions per patch
    for seconds, step in ((0.5, 1), (2.0, 4)):
        tokens = b.tokens(example(), [item("video", (3, 2, 2), seconds)])
        pads = np.flatnonzero(tokens.input_ids == b.config.video_token_id)
        temporal = tokens.positions[0, pads] - tokens.positions[0, pads[0]]
        np.testing.assert_array_equal(temporal, [0, step, 2 * step])


def test_sft_target_follows_the_prompt_and_is_the_only_loss_position(checkpoint):
    b = builder(checkpoint["qwen2_vl"], sft_target=True)
    tokens = b.tokens(example(), [item("video", (2, 2, 2))])
    n = tokens.prompt_length
    target = tokens.input_ids[n:]
    assert b.tokenizer.decode(target) == "<think>up</think>\n<answer>A</answer><|im_end|>"
    np.testing.assert_array_equal(tokens.loss_mask, [0] * n + [1] * len(target))
    assert tokens.positions.shape == (3, len(tokens.input_ids))


def test_tokenizer_and_model_config_must_agree_on_pad_tokens(checkpoint):
    tokenizer = load_tokenizer(checkpoint["qwen2_vl"])
    config = ModelConfig.from_pretrained(checkpoint["qwen2_vl"]).replace(video_token_id=99)
    with pytest.raises(ValueError, match="video_pad"):
        PromptBuilder(tokenizer, config, PromptSettings.from_config(data_config()))
