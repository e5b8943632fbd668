"""Prompt templates of the three released recipes, word for word, and the record fields that fill
them. A recipe names one (`templates.STYLES["video_r1"]`) and copies it into its `data` section,
where every string stays overridable.

How a question is built (`jaxvrl.data.prompts.question_text`): the record's problem goes into its
type's problem format, that into the question template, and the type's instruction follows:

    question_template.format(question=problem_formats[type].format(**fields))
        + type_instructions[type]

Problem-format fields: `{problem}` (the record's question text), `{options}` (one option per
line, each followed by a newline), `{options_list}` (the options as a Python list literal, as
VideoChat-R1 writes `str(options)`), `{start_box}` (the first box of a tracking record as a Python
list literal, `str(gt[0])`).

Sources (file:line of the released code):
- Video-R1: tulerfeng/Video-R1 src/r1-v/src/open_r1/grpo.py:210-224 (QUESTION_TEMPLATE,
  TYPE_TEMPLATE), :255-259 (multiple choice: problem + "Options:\\n" + one option per line).
  The SFT script uses the same words (src/r1-v/src/open_r1/sft_video.py:92-108) with the system
  message "You are a helpful assistant" (:89).
- SEED-Bench-R1: TencentARC/SEED-Bench-R1 src/open_r1_egoplan/grpo.py:149 (QUESTION_TEMPLATE),
  :160 (question, newline, "A. option" lines, newline).
- VideoChat-R1: OpenGVLab/VideoChat-R1 src/open_r1/trainer/grpo_tasks_trainer.py:66-99
  (QUESTION_TEMPLATE_TG / _GQA / _TRACK), :418-439 (text before the video, no system message).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

# --- Video-R1 ---------------------------------------------------------------------------------

# grpo.py:210-216. Note the missing full stop after "thought expressions" (the released string
# concatenation has none) and "<think> </think> tags".
VIDEO_R1_QUESTION_TEMPLATE = (
    "{question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', "
    "'oh, I see', 'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> </think> tags, and then give your final "
    "answer between the <answer> </answer> tags."
)

# grpo.py:218-224; the last three entries are jaxvrl's own (Video-R1 has no such problem types:
# they let the grounding record families train with Video-R1-style prompts).
VIDEO_R1_TYPE_INSTRUCTIONS = types.MappingProxyType(
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

VIDEO_R1_PROBLEM_FORMATS = types.MappingProxyType(
    {
        "multiple_choice": "{problem}Options:\n{options}",
        "grounded_qa": "{problem}\nOptions:\n{options}",
        "temporal_grounding": 'To accurately pinpoint the event "{problem}" in the video, '
        "determine the precise time period of the event.",
        "tracking": "Track the {problem} through the video frames.",
    }
)

VIDEO_R1_SFT_SYSTEM_PROMPT = "You are a helpful assistant"  # sft_video.py:89, no full stop

# --- SEED-Bench-R1 ----------------------------------------------------------------------------

SEED_BENCH_R1_QUESTION_TEMPLATE = (
    "{question} Output the thinking process in <think> </think> and final answer in "
    "<answer> </answer> tags, i.e., <think> reasoning process here </think>"
    "<answer> answer here </answer>. "
)

# --- VideoChat-R1 -----------------------------------------------------------------------------

_VIDEOCHAT_THINK = (
    "Output your thought process within the <think> </think> tags, including analysis with "
    "either specific timestamps (xx.xx) or time ranges (xx.xx to xx.xx) in <timestep> "
    "</timestep> tags.\n\n"
)

VIDEOCHAT_R1_PROBLEM_FORMATS = types.MappingProxyType(
    {
        "temporal_grounding": 'To accurately pinpoint the event "{problem}" in the video, '
        "determine the precise time period of the event.\n\n" + _VIDEOCHAT_THINK + "Then, "
        "provide the start and end times (in seconds, precise to two decimal places) in the "
        'format "start time to end time" within the <answer> </answer> tags. For example: '
        '"12.54 to 17.83".',
        "grounded_qa": 'Answer the question: "{problem}" according to the content of the '
        "video. Select the answer from :{options_list}.\n\n" + _VIDEOCHAT_THINK + "Then, "
        "provide your answer within the <answer> </answer> tags, output the corresponding "
        "letter of the option. At the same time, in the <glue> </glue> tags, present the "
        "precise time period in seconds of the video clips on which you base your answer to "
        "this question in the format of [(s1, e1), (s2, e2), ...]. For example: "
        "<answer>A</answer><glue>[(5.2, 10.4)]</glue>.\n",
        "tracking": 'Track the "{problem}" in the video based on its initial coordinates '
        '"{start_box}". The output should be a list containing eight sublists. Each sublist '
        "includes four normalized coordinates [x0, y0, x1, y1] representing the bounding box "
        "of the object at specific time intervals.\n\n" + _VIDEOCHAT_THINK + "Provide your "
        "answer within the <answer> </answer> tags as a list of eight sublists, where each "
        "sublist contains the normalized coordinates [x0, y0, x1, y1]. For example: "
        "<answer>[[0.1, 0.5, 0.3, 0.55], [0.72, 0.25, 0.84, 0.43], ...]</answer>.\n",
    }
)


@dataclasses.dataclass(frozen=True)
class PromptStyle:
    """One recipe's prompt: the strings of `question_text` and where the text goes.

    text_first: the question text precedes the vision items in the user turn (VideoChat-R1);
    otherwise the vision items come first (Video-R1, SEED-Bench-R1).
    system_prompt: "" = the chat template's own default.
    """

    question_template: str
    type_instructions: Mapping[str, str]
    problem_formats: Mapping[str, str]
    text_first: bool = False
    system_prompt: str = ""


STYLES: Mapping[str, PromptStyle] = types.MappingProxyType(
    {
        "video_r1": PromptStyle(
            VIDEO_R1_QUESTION_TEMPLATE, VIDEO_R1_TYPE_INSTRUCTIONS, VIDEO_R1_PROBLEM_FORMATS
        ),
        "seed_bench_r1": PromptStyle(
            SEED_BENCH_R1_QUESTION_TEMPLATE,
            types.MappingProxyType({"multiple_choice": ""}),
            types.MappingProxyType({"multiple_choice": "{problem}\n{options}"}),
        ),
        "videochat_r1": PromptStyle(
            "{question}",
            types.MappingProxyType(dict.fromkeys(VIDEOCHAT_R1_PROBLEM_FORMATS, "")),
            VIDEOCHAT_R1_PROBLEM_FORMATS,
            text_first=True,
        ),
    }
)
