"""Settings shared by every recipe. A recipe's `get_config()` starts from `get_config()` here and
changes what differs; every value a run depends on is a field, overridable from the command line
(`--config.data.max_frames=32`).

The data defaults are Video-R1's training settings (DESIGN.md section 4): 2 fps, 4 to 16 frames,
128*28*28 pixels per video frame, images between 4*28*28 and 256*28*28 pixels.
"""

from __future__ import annotations

import ml_collections

# Pixel counts in units of one merged vision token (patch 14 x merge 2 = 28 pixels a side).
TOKEN_PIXELS = 28 * 28

# Video-R1's question template: reason inside <think>, answer inside <answer>.
VIDEO_R1_QUESTION_TEMPLATE = (
    "{question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', "
    "'oh, I see', 'let's break it down', etc, or other natural language thought expressions. "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> and </think> tags, and then give your "
    "final answer between the <answer> and </answer> tags."
)


def type_instructions() -> ml_collections.ConfigDict:
    """Per-problem-type instruction appended to the templated question. Keys are problem types in
    snake case (`multiple choice` -> `multiple_choice`, `OCR` -> `ocr`); a record whose problem
    type has no entry here is skipped as an unknown problem type."""
    return ml_collections.ConfigDict(
        {
            "multiple_choice": " Please provide only the single option letter (e.g., A, B, C, D, "
            "etc.) within the <answer> </answer> tags.",
            "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the "
            "<answer> </answer> tags.",
            "ocr": " Please transcribe text from the image/video clearly and provide your text "
            "answer within the <answer> </answer> tags.",
            "free_form": " Please provide your text answer within the <answer> </answer> tags.",
            "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the "
            "<answer> </answer> tags.",
            "temporal_grounding": " Please provide the start and end times in seconds, precise "
            "to two decimal places, as 'start to end' (e.g., 12.54 to 17.83) within the "
            "<answer> </answer> tags.",
            "grounded_qa": " Please provide only the single option letter (e.g., A, B, C, D, "
            "etc.) and the supporting time span in seconds as 'start to end' within the "
            "<answer> </answer> tags.",
            "tracking": " Please provide the object's bounding box in each of the 8 frames as "
            "[x0, y0, x1, y1] in normalised coordinates within the <answer> </answer> tags.",
        }
    )


def problem_formats() -> ml_collections.ConfigDict:
    """How a record's problem becomes the question body, per problem type. Placeholders:
    `{problem}` (the record's question text) and `{options}` (one option per line, each followed
    by a newline). Types without an entry use `{problem}`."""
    return ml_collections.ConfigDict(
        {
            "multiple_choice": "{problem}Options:\n{options}",
            "grounded_qa": "{problem}\nOptions:\n{options}",
            "temporal_grounding": 'To accurately pinpoint the event "{problem}" in the video, '
            "determine the precise time period of the event.",
            "tracking": "Track the {problem} through the video frames.",
        }
    )


def data_config() -> ml_collections.ConfigDict:
    """The `data` section: record files, frame sampling, pixel budgets, prompts, batching."""
    d = ml_collections.ConfigDict()
    # Record files: one path or a comma-separated list. A path may carry its format as a prefix
    # ("charades_sta:/data/charades.json"); otherwise the format is detected from the content.
    d.train_files = ""
    d.media_root = ""  # relative media paths in the records start here

    # Frame sampling (qwen-vl-utils `smart_nframes`).
    d.fps = 2.0
    d.min_frames = 4
    d.max_frames = 16
    d.frame_factor = 2  # sampled frame counts are multiples of this
    d.frame_folder_fps = 2.0  # frame rate at which frame folders were extracted

    # Pixel budgets (qwen-vl-utils `fetch_video` / `fetch_image`).
    d.video_min_pixels = 128 * TOKEN_PIXELS
    d.video_max_pixels = 128 * TOKEN_PIXELS
    d.video_total_pixels = int(128000 * TOKEN_PIXELS * 0.9)  # cap across all frames of a video
    d.video_min_pixels_slack = 1.05  # the total cap never pushes a frame below min * slack
    d.image_min_pixels = 4 * TOKEN_PIXELS
    d.image_max_pixels = 256 * TOKEN_PIXELS
    d.max_aspect_ratio = 200.0
    # A fixed frame size for every video frame (SEED-Bench-R1: 256 x 256 -> 252 x 252); 0 = off.
    d.resized_height = 0
    d.resized_width = 0
    d.decode_threads = 1  # decord threads per worker process

    # Prompts.
    d.question_template = VIDEO_R1_QUESTION_TEMPLATE
    d.type_instructions = type_instructions()
    d.problem_formats = problem_formats()
    d.system_prompt = ""  # "" = the chat template's own default
    # SFT: append the target (prompt tokens get loss_mask 0, target tokens 1).
    d.sft_target = False
    d.sft_target_template = "{process}\n{solution}"

    # Record-family options (jaxvrl/data/records.py RecordOptions); media paths are relative
    # to media_root and formatted with the record's fields.
    d.record_options = ml_collections.ConfigDict(
        {
            "seed_bench_negatives": 3,  # negatives sampled per SEED-Bench-R1 training row
            "seed_bench_video": "videos/{video_source}/{video_basename}",
            "seed_bench_image": "images/{video_source}/{current_observation_basename}",
            "charades_video": "{vid}.mp4",
            "nextgqa_video": "{video}.mp4",  # when the record's video has no extension
            "got10k_frames": 7,  # first, evenly spaced, last; padded to an even count
        }
    )

    # T-GRPO shuffled-frame companion: "frame" (single frames), "tubelet" (whole temporal
    # patches) or "none".
    d.shuffle_unit = "frame"

    # Batching.
    d.batch_size = 4  # prompts per step across all hosts
    d.token_buckets = (512, 1024, 2048, 4096, 8192)
    d.patch_buckets = (4096, 8192, 16384, 32768, 65536)
    d.padding_side = "right"
    d.num_epochs = 0  # 0 = repeat forever
    d.shuffle = True
    d.seed = 0
    d.num_workers = 2  # decoding processes; 0 decodes in the training process
    d.worker_buffer_size = 2  # decoded examples each worker keeps ready
    d.read_threads = 1  # decoding threads inside each process
    d.read_buffer_size = 2  # examples each process decodes ahead
    d.strict = False  # raise on the first bad input instead of skipping it
    return d


def get_config() -> ml_collections.ConfigDict:
    """The shared base config. Recipes fill `model.path` and their own RL settings."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict(
        {
            "path": "",  # local checkpoint directory (config.json, tokenizer, weights)
            "tokenizer_path": "",  # "" = model.path
            "param_dtype": "float32",
            "dtype": "float32",
        }
    )
    config.data = data_config()
    config.rl = ml_collections.ConfigDict(
        {
            "algorithm": "grpo",  # "grpo" or "tgrpo"
            "num_generations": 8,
            "max_completion_tokens": 768,
        }
    )
    return config
