"""Reading answers out of model responses, one rule per benchmark family, as the papers' own
evaluation scripts read them (not as the training rewards do in jaxvrl/rewards/answer_parsing.py,
which may differ). Every reader returns None when the response holds nothing it can read: the
caller scores that 0 and counts it as unparseable.
"""

from __future__ import annotations

import ast
import re

_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_GLUE = re.compile(r"<glue>(.*?)</glue>", re.DOTALL)
# A number: optional sign, digits with optional thousands commas, decimals, exponent.
_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
)
# VideoChat-R1's span: "12.5 to 17.8" or "12.5 and 17.8", unsigned decimals, one space each.
_SPAN = re.compile(r"(\d+\.?\d*) (to|and) (\d+\.?\d*)")
_GLUE_PAIR = r"\(\s*\d+(?:\.\d+)?\s*,\s*\d+(?:\.\d+)?\s*\)"
_GLUE_LIST = re.compile(rf"^\[\s*(?:{_GLUE_PAIR}(?:\s*,\s*{_GLUE_PAIR})*\s*,?)?\s*\]$")
_LETTER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
)


def answer_tag(response: str) -> str | None:
    """The text inside the first `<answer>...</answer>`, stripped; None without one. The first
    tag wins when there are several (re.search in Video-R1 src/eval_bench.py `extract_answer`,
    SEED-Bench-R1 infer.py, VideoChat-R1 src_eval/evaluate_*.py)."""
    match = _ANSWER.search(response)
    return match.group(1).strip() if match else None


def video_r1_answer(response: str) -> tuple[str, bool]:
    """(answer, parsed): the first answer tag's text, or the whole response when there is no tag
    (Video-R1 src/eval_bench.py: `if output_ans == '': output_ans = model_output`)."""
    tagged = answer_tag(response)
    if tagged:
        return tagged, True
    return response, False


def plain_number(text: str) -> float | None:
    """The whole text as a number after removing commas (Video-R1 src/eval_bench.py
    `normalize_number`): "1,234.5" -> 1234.5; "12 m" -> None."""
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def first_number(text: str) -> float | None:
    """The first number in the text, units and words around it ignored: "3.5 meters" -> 3.5,
    "about 1,200 cm" -> 1200.0, "-2e3" -> -2000.0. VSI-Bench's official scorer reads the first
    word of the answer; a number glued to its unit ("3.5m") reads the same here."""
    match = _NUMBER.search(text)
    return float(match.group(0).replace(",", "")) if match else None


def videochat_span(response: str) -> tuple[float, float] | None:
    """The last "a to b" / "a and b" in the whole response (VideoChat-R1
    src_eval/evaluate_grounding.py `parse_timestamp_output`; its second look inside the answer
    tag finds nothing the first missed). The order is kept: an inverted span scores IoU 0."""
    matches = _SPAN.findall(response)
    if not matches:
        return None
    start, _, end = matches[-1]
    return float(start), float(end)


def option_letter(text: str) -> str | None:
    """The first capital A-G after removing "The answer is"-style prefixes; None when there is
    none, or when a text of more than 10 words has none (VideoChat-R1 src_eval/evaluate_gqa.py
    `extract_characters_regex`)."""
    s = text.strip()
    for prefix in _LETTER_PREFIXES:
        s = s.replace(prefix, "")
    match = re.search(r"[ABCDEFG]", s)
    return match.group(0) if match else None


def glue_intervals(response: str) -> list[tuple[float, float]] | None:
    """NExT-GQA's grounding: the first `<glue>[(s1, e1), (s2, e2), ...]</glue>` (VideoChat-R1
    src_eval/evaluate_gqa.py; every s <= e, else None), or failing that every "a to b" span in the
    answer tag (the form jaxvrl's grounded_qa prompt asks for). None when neither is there."""
    match = _GLUE.search(response)
    if match:
        text = match.group(1).strip()
        if not _GLUE_LIST.match(text):
            return None
        pairs = [(float(a), float(b)) for a, b in ast.literal_eval(text)]
        return pairs if all(a <= b for a, b in pairs) else None
    tagged = answer_tag(response)
    if tagged is None:
        return None
    spans = [(float(a), float(b)) for a, _, b in _SPAN.findall(tagged)]
    if not spans or any(a > b for a, b in spans):
        return None
    return spans


def box_list(text: str, count: int) -> list[list[float]] | None:
    """`count` boxes [x0, y0, x1, y1] from a Python/JSON list literal (newlines removed), else
    None (VideoChat-R1 src_eval/evaluate_track.py `is_valid_list_of_lists`: a list of 8 lists of
    4)."""
    try:
        value = ast.literal_eval(text.replace("\n", ""))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list | tuple) or len(value) != count:
        return None
    boxes = []
    for box in value:
        if not isinstance(box, list | tuple) or len(box) != 4:
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            return None
        boxes.append([float(v) for v in box])
    return boxes
