"""Answers parsed from model text, bounded on hostile input, and the overlap of what they hold.

Video-R1's `<answer>` extraction, tag structure and number reading, VideoChat-R1's temporal
spans, grounded-QA `<glue>` intervals and tracking boxes with their IoUs: pure parsing and
geometry, no reward registration (the reward modules beside it score with them). Work is bounded:
texts are cut at `MAX_TEXT_CHARS`, word sequences at `MAX_WORDS`, parsed numbers at
`MAX_NUMBERS`, and every regular expression runs in linear time (no ambiguous quantifiers).
VideoChat-R1 facts cite OpenGVLab/VideoChat-R1 src/open_r1/grpo_tasks.py by line.
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

MAX_TEXT_CHARS = 32_768
MAX_WORDS = 2_048
MAX_NUMBERS = 4_096

Interval = tuple[float, float]
Box = tuple[float, float, float, float]


def extract_answer(text: str) -> str | None:
    """Video-R1's answer: `<answer>\\s*(.*?)\\s*</answer>` (DOTALL) content; None if absent."""
    start = text.find("<answer>")
    end = text.find("</answer>", start + len("<answer>")) if start >= 0 else -1
    return text[start + len("<answer>") : end].strip() if end >= 0 else None


@functools.lru_cache(maxsize=16)
def _junction(close: str, open_: str) -> re.Pattern[str]:
    return re.compile(re.escape(close) + r"\s*+" + re.escape(open_))


def tags_fullmatch(text: str, tags: Sequence[str]) -> bool:
    """Whether `text` fullmatches `<t1>.*?</t1>\\s*<t2>.*?</t2>...` (DOTALL) for tags t1..tn.

    Linear time: the earliest `</tk>\\s*<tk+1>` junction after the previous one is always the
    best choice (an earlier junction also ends earlier, as `</tk>` cannot start inside one), so
    one left-to-right search per junction decides the match without backtracking.
    """
    first, last = f"<{tags[0]}>", f"</{tags[-1]}>"
    if not (text.startswith(first) and text.endswith(last)):
        return False
    pos = len(first)
    for close, open_ in itertools.pairwise(tags):
        junction = _junction(f"</{close}>", f"<{open_}>").search(text, pos)
        if junction is None:
            return False
        pos = junction.end()
    return len(text) - len(last) >= pos


# A number as a model writes it: optional sign, digits with an optional decimal part (or a bare
# ".5"), optional exponent ("2.6e-02"). Possessive quantifiers and the look-behind (no start
# inside a digit run) keep every search linear in the text's length.
NUMBER_PATTERN = r"(?<![\d.])[-+]?(?:\d++(?:\.\d*+)?|\.\d++)(?:[eE][-+]?\d++)?"
_NUMBER = re.compile(NUMBER_PATTERN)


def parse_numbers(text: str) -> list[float]:
    """Signed decimal numbers (scientific notation too) in `text`, at most MAX_NUMBERS."""
    return [float(m.group()) for m in itertools.islice(_NUMBER.finditer(text), MAX_NUMBERS)]


def to_float(text: str) -> float | None:
    """Video-R1's normalize_number: drop commas, parse a float; None if unparsable or not finite."""
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- VideoChat-R1


def answer_blocks(text: str) -> list[str]:
    """Contents of every `<answer>...</answer>` block (non-greedy, in order), at most
    MAX_NUMBERS of them: `re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)`."""
    out: list[str] = []
    start = text.find("<answer>")
    while start >= 0 and len(out) < MAX_NUMBERS:
        end = text.find("</answer>", start + len("<answer>"))
        if end < 0:
            break
        out.append(text[start + len("<answer>") : end])
        start = text.find("<answer>", end + len("</answer>"))
    return out


def first_tag(text: str, tag: str) -> str | None:
    """Content of the first `<tag>(.*?)</tag>` (DOTALL), unstripped; None if absent."""
    start = text.find(f"<{tag}>")
    end = text.find(f"</{tag}>", start + len(tag) + 2) if start >= 0 else -1
    return text[start + len(tag) + 2 : end] if end >= 0 else None


# VideoChat-R1's `(\d+\.?\d*) (to|and) (\d+\.?\d*)` with re.IGNORECASE (grpo_tasks.py:294), made
# to read what a model writes: signed numbers, scientific notation and any run of whitespace
# around the connective. Linear: possessive quantifiers, and no match starts inside a number.
_SPAN = re.compile(rf"({NUMBER_PATTERN})\s++(?:to|and)\s++({NUMBER_PATTERN})", re.IGNORECASE)


def parse_span(answer: str) -> Interval | None:
    """The last 'S to E' / 'S and E' (any case) in `answer`, in seconds (grpo_tasks.py:297)."""
    last = None
    for last in _SPAN.finditer(answer):  # noqa: B007 - only the last match counts.
        pass
    if last is None:
        return None
    return float(last.group(1)), float(last.group(2))


def parse_timestamp_answer(text: str) -> Interval | None:
    """VideoChat-R1's temporal-grounding answer: the last span of the LAST `<answer>` block
    (grpo_tasks.py:285-300); None without a block or a span."""
    blocks = answer_blocks(text)
    return parse_span(blocks[-1]) if blocks else None


def _valid(interval: Sequence[float]) -> bool:
    return len(interval) == 2 and all(map(math.isfinite, interval)) and interval[0] <= interval[1]


def interval_iou(pred: Interval, truth: Interval) -> float:
    """VideoChat-R1 temporal IoU of two [start, end] spans (grpo_tasks.py:322-325).

    An empty union (two equal point spans) scores 0.0: the released code leaves `iou` unbound
    there and crashes the step (a plain bug, fixed). A reversed span scores 0.0 as in the
    released code (its intersection is then always empty).
    """
    if not (_valid(pred) and _valid(truth)):
        return 0.0
    inter = max(0.0, min(pred[1], truth[1]) - max(pred[0], truth[0]))
    union = max(pred[1], truth[1]) - min(pred[0], truth[0])
    return inter / union if union > 0 else 0.0


def merge_intervals(intervals: Sequence[Interval]) -> list[Interval]:
    """VideoChat-R1: sort by start and merge overlapping (or touching) intervals
    (grpo_tasks.py:117-134)."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def glue_iou(pred: Sequence[Interval], truth: Sequence[Interval]) -> float:
    """VideoChat-R1 grounded-QA IoU: total intersection / total union of merged intervals; an
    empty union scores 1.0 as in the released code (grpo_tasks.py:136-169)."""
    a, b = merge_intervals(pred), merge_intervals(truth)
    inter, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):  # Both lists are sorted and disjoint: one sweep suffices.
        inter += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    union = sum(e - s for s, e in a) + sum(e - s for s, e in b) - inter
    return inter / union if union > 0 else 1.0


def _literal(text: str) -> Any:
    """A Python literal (`ast.literal_eval`, as the released code reads glue and boxes) or None
    when the text is not one (bounded: MAX_TEXT_CHARS; deep nesting fails cleanly)."""
    if len(text) > MAX_TEXT_CHARS:
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def is_real(value: Any) -> bool:
    """A finite int or float, not a bool (what a parsed interval or box may hold)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_glue(content: str) -> list[Interval] | None:
    """A `<glue>` content as intervals: a list of (start, end) pairs with start <= end
    (grpo_tasks.py:91-111 `is_valid_two_d_list_format`). The released code's regex also
    rejects signs, exponents, spaces after '[' and [s, e] lists; we read any literal list of
    pairs of real numbers (issue 14: parse what a model writes). `[]` is valid, as there."""
    value = _literal(content)
    if not isinstance(value, list) or len(value) > MAX_NUMBERS:
        return None
    out: list[Interval] = []
    for item in value:
        if not (isinstance(item, tuple | list) and len(item) == 2 and all(map(is_real, item))):
            return None
        if item[0] > item[1]:
            return None
        out.append((float(item[0]), float(item[1])))
    return out


def parse_box_list(content: str, num_boxes: int = 8) -> list[Box] | None:
    """A tracking answer: a literal list of exactly `num_boxes` lists of 4 real numbers
    (grpo_tasks.py:359-377 `is_valid_list_of_lists`, which also drops newlines first). The
    released code accepts any 4 elements; we also need them to be numbers (else its IoU raises
    and scores 0 while its format reward scores 1)."""
    value = _literal(content.replace("\n", ""))
    if not isinstance(value, list) or len(value) != num_boxes:
        return None
    if not all(isinstance(b, list) and len(b) == 4 and all(map(is_real, b)) for b in value):
        return None
    return [(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in value]


_BRACKETED = re.compile(r"[\[(]([^\[\]()]*)[\])]")


def parse_boxes(text: str) -> list[Box]:
    """Innermost bracketed groups of `text` as boxes; a group without exactly 4 numbers gives []
    (a lenient reader for solutions written as text)."""
    boxes: list[Box] = []
    for match in _BRACKETED.finditer(text):
        numbers = parse_numbers(match.group(1))
        if len(numbers) != 4 or len(boxes) >= MAX_NUMBERS:
            return []
        boxes.append((numbers[0], numbers[1], numbers[2], numbers[3]))
    return boxes


def box_iou(a: Box, b: Box) -> float:
    """IoU of two [x0, y0, x1, y1] boxes (grpo_tasks.py:382-421; 0.0 for an empty union). The
    released code does not clamp areas; an inverted box has an empty intersection either way,
    so both score 0."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0
