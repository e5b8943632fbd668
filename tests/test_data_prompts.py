"""Prompts: question templates, the chat template, pad-token expansion and M-RoPE positions."""

import numpy as np
import pytest

from configs.base import data_config
from jaxvrl.data import synthetic
from jaxvrl.data import vision_inputs as vi
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
    for generation in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
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


# Video-R1 src/r1-v/src/open_r1/grpo.py:210-224, typed from the released file (note "thought
# expressions It's" without a full stop, and "<think> </think> tags").
VIDEO_R1_THINK = (
    "\nPlease think about this question as if you were a human pondering deeply. Engage in an "
    "internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions It's encouraged "
    "to include self-reflection or verification in the reasoning process. Provide your detailed "
    "reasoning between the <think> </think> tags, and then give your final answer between the "
    "<answer> </answer> tags."
)
VIDEO_R1_TYPES = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) "
    "within the <answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> "
    "</answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer "
    "within the <answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> "
    "</answer> tags.",
}


def test_multiple_choice_question_lists_options_then_template_then_instruction():
    settings = PromptSettings.from_config(data_config())
    text = question_text(example(), settings)
    body = "Which way?Options:\nA. up\nB. down\n"
    assert text == body + VIDEO_R1_THINK + VIDEO_R1_TYPES["multiple choice"]


def test_video_r1_prompt_of_each_problem_type_is_the_released_text():
    from configs import video_r1

    settings = PromptSettings.from_config(video_r1.get_config().data)
    for problem_type, instruction in VIDEO_R1_TYPES.items():
        body = "Which way?" + ("Options:\nA. up\nB. down\n" if "choice" in problem_type else "")
        text = question_text(example(problem_type=problem_type), settings)
        assert text == body + VIDEO_R1_THINK + instruction, problem_type


def test_seed_bench_r1_prompt_is_the_released_text():
    # SEED-Bench-R1 src/open_r1_egoplan/grpo.py:149, :160 (question, options, newline, template).
    from configs import seed_bench_r1

    settings = PromptSettings.from_config(seed_bench_r1.get_config().data)
    assert question_text(example(), settings) == (
        "Which way?\nA. up\nB. down\n Output the thinking process in <think> </think> and final "
        "answer in <answer> </answer> tags, i.e., <think> reasoning process here </think><answer> "
        "answer here </answer>. "
    )


VIDEOCHAT_THINK = (
    "Output your thought process within the <think> </think> tags, including analysis with "
    "either specific timestamps (xx.xx) or time ranges (xx.xx to xx.xx) in <timestep> "
    "</timestep> tags.\n\n"
)


def test_videochat_r1_prompt_of_each_task_is_the_released_text():
    # VideoChat-R1 src/open_r1/trainer/grpo_tasks_trainer.py:66-99, filled as at :418-427.
    from configs import videochat_r1

    settings = PromptSettings.from_config(videochat_r1.get_config().data)
    tg = Example("1", "charades_sta", "video", "temporal grounding", "a person opens a door",
                 (), "<answer>1.00 to 2.00</answer>", VIDEO)  # fmt: skip
    assert question_text(tg, settings) == (
        'To accurately pinpoint the event "a person opens a door" in the video, determine the '
        "precise time period of the event.\n\n" + VIDEOCHAT_THINK + "Then, provide the start "
        'and end times (in seconds, precise to two decimal places) in the format "start time to '
        'end time" within the <answer> </answer> tags. For example: "12.54 to 17.83".'
    )
    gqa = Example("2", "nextgqa", "video", "grounded qa", "why did the boy run?",
                  ("(A) rain", "(B) dog"), "<answer>B</answer>", VIDEO)  # fmt: skip
    assert question_text(gqa, settings) == (
        'Answer the question: "why did the boy run?" according to the content of the video. '
        "Select the answer from :['(A) rain', '(B) dog'].\n\n" + VIDEOCHAT_THINK + "Then, "
        "provide your answer within the <answer> </answer> tags, output the corresponding letter "
        "of the option. At the same time, in the <glue> </glue> tags, present the precise time "
        "period in seconds of the video clips on which you base your answer to this question in "
        "the format of [(s1, e1), (s2, e2), ...]. For example: <answer>A</answer><glue>[(5.2, "
        "10.4)]</glue>.\n"
    )
    track = Example("3", "got10k", "video", "tracking", "zebra", (), "<answer>[]</answer>", VIDEO,
                    extra={"start": [0, 0.25, 1, 0.5]})  # fmt: skip
    assert question_text(track, settings) == (
        'Track the "zebra" in the video based on its initial coordinates "[0, 0.25, 1, 0.5]". '
        "The output should be a list containing eight sublists. Each sublist includes four "
        "normalized coordinates [x0, y0, x1, y1] representing the bounding box of the object at "
        "specific time intervals.\n\n" + VIDEOCHAT_THINK + "Provide your answer within the "
        "<answer> </answer> tags as a list of eight sublists, where each sublist contains the "
        "normalized coordinates [x0, y0, x1, y1]. For example: <answer>[[0.1, 0.5, 0.3, 0.55], "
        "[0.72, 0.25, 0.84, 0.43], ...]</answer>.\n"
    )


def test_videochat_r1_puts_the_text_before_the_video(checkpoint):
    # grpo_tasks_trainer.py:428-437: content = [text, video], no system message.
    from configs import videochat_r1

    data = videochat_r1.get_config().data
    b = builder(checkpoint["qwen2_5_vl"], **{k: data[k] for k in (
        "question_template", "type_instructions", "problem_formats", "text_first")})  # fmt: skip
    tg = Example("1", "charades_sta", "video", "temporal grounding", "x", (), "", VIDEO)
    text = b.prompt_text(tg)
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        'To accurately pinpoint the event "x"'
    )
    assert text.endswith(
        '"12.54 to 17.83".<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_other_types_use_the_bare_problem_and_their_own_instruction():
    settings = PromptSettings.from_config(data_config())
    text = question_text(example(problem_type="numerical"), settings)
    assert text == "Which way?" + VIDEO_R1_THINK + VIDEO_R1_TYPES["numerical"]
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


def test_qwen3_video_prompt_equals_the_transformers_processor(checkpoint):
    """Qwen3-VL: each temporal patch after its timestamp, in its own start/end, as transformers'
    Qwen3VLProcessor.replace_video_token writes it (substituted for the chat template's
    start/pad/end, as 4.57 and vLLM do); positions equal the transformers model's rope index."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLModel
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    b = builder(checkpoint["qwen3_vl"])
    config = b.config
    indices = np.array([0, 6, 12, 17, 23, 29, 35])  # 7 frames of a 12 fps video: 4 patches
    frames = np.zeros((7, 64, 96, 3), np.uint8)
    video = vi.vision_input(frames, "video", vi.VisionSpec.of(config.vision), 2.0, indices / 12)
    image = vi.vision_input(frames[:1], "image", vi.VisionSpec.of(config.vision))
    tokens = b.tokens(
        example(media=(Media("video", "a.mp4"), Media("image", "b.png"))), [video, image]
    )

    processor = Qwen3VLProcessor.__new__(Qwen3VLProcessor)  # its __init__ checks torchvision
    processor.video_processor = Qwen3VLVideoProcessor()
    processor.video_token = "<|video_pad|>"
    processor.vision_start_token, processor.vision_end_token = "<|vision_start|>", "<|vision_end|>"
    metadata = VideoMetadata(total_num_frames=36, fps=12.0, frames_indices=indices)
    grid = np.array([video.grid_thw])
    replacement = processor.replace_video_token(
        {"video_grid_thw": grid, "video_metadata": [metadata]}, 0
    )
    assert replacement.startswith("<0.2 seconds><|vision_start|><|video_pad|>")
    text = b.prompt_text(example(media=(Media("video", "a.mp4"), Media("image", "b.png"))))
    text = text.replace("<|vision_start|><|video_pad|><|vision_end|>", replacement, 1)
    text = text.replace("<|image_pad|>", "<|image_pad|>" * (image.num_patches // 4), 1)
    expected = b.tokenizer(text, add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(tokens.input_ids, expected)

    hf_config = Qwen3VLConfig(
        text_config={"vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1,
                     "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 8,
                     "intermediate_size": 8, "rope_parameters": {"rope_type": "default",
                     "mrope_section": [2, 1, 1], "rope_theta": 1.0}},
        vision_config={"depth": 1, "hidden_size": 8, "num_heads": 1, "intermediate_size": 8,
                       "out_hidden_size": 8, "deepstack_visual_indexes": []},
        image_token_id=config.image_token_id, video_token_id=config.video_token_id,
        vision_start_token_id=config.vision_start_token_id,
        vision_end_token_id=config.vision_end_token_id,
    )  # fmt: skip
    ids = torch.tensor(np.asarray(expected))[None]
    types = (ids == config.image_token_id).long() + 2 * (ids == config.video_token_id).long()
    positions, _ = Qwen3VLModel(hf_config).get_rope_index(
        ids, types, image_grid_thw=torch.tensor([image.grid_thw]),
        video_grid_thw=torch.tensor(grid),
    )  # fmt: skip
    np.testing.assert_array_equal(tokens.positions, positions[:, 0].numpy())
