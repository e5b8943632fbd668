"""Answer parsing of DESIGN.md section 5: Video-R1's extraction, VideoChat-R1's spans and glue."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvrl.rewards import answer_parsing

TAG_ALPHABET = ["<answer>", "</answer>", "<think>", "</think>", "a", " ", "\n", "\x1c", "\u00a0"]
tag_soup = st.lists(st.sampled_from(TAG_ALPHABET), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(tag_soup)
def test_answer_extraction_agrees_with_video_r1_regex(text):
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL)
    assert answer_parsing.extract_answer(text) == (match.group(1).strip() if match else None)


SPAN_TOKENS = ["12", "0.5", "3", "7.", "to", "and", "TO", "And", "x", "-"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SPAN_TOKENS), max_size=10).map(" ".join))
def test_span_parser_agrees_with_videochat_r1_regex_on_unsigned_single_spaced_text(text):
    # VideoChat-R1 src/open_r1/grpo_tasks.py:294 (re.IGNORECASE, the last match counts). A "-"
    # token stands apart (" - 3"), so no number here carries a sign.
    matches = re.findall(r"(\d+\.?\d*) (to|and) (\d+\.?\d*)", text, re.IGNORECASE)
    expected = (float(matches[-1][0]), float(matches[-1][2])) if matches else None
    assert answer_parsing.parse_span(text) == expected


def test_span_parser_reads_signs_exponents_any_case_and_whitespace():
    # The released regex reads "-0.02" as 0.02 and "2.6e-02" as "2.6" then fails.
    assert answer_parsing.parse_span("-0.02 to 1.5") == (-0.02, 1.5)
    assert answer_parsing.parse_span("2.6e-02 to 1E1") == (0.026, 10.0)
    assert answer_parsing.parse_span("8.2 To 17.0") == (8.2, 17.0)
    assert answer_parsing.parse_span("from 3 AND 4.25") == (3.0, 4.25)
    assert answer_parsing.parse_span("+1.5  to\n.5") == (1.5, 0.5)  # any whitespace; ".5" is 0.5
    assert answer_parsing.parse_span("5 into 6") is None


def test_glue_intervals_are_merged_before_iou():
    # Unmerged, the overlapping pieces [0, 2] and [1, 3] would count [1, 2] twice.
    assert answer_parsing.merge_intervals([(1, 3), (0, 2), (5, 6)]) == [(0, 3), (5, 6)]
    assert answer_parsing.glue_iou([(0, 2), (1, 3)], [(1, 4)]) == pytest.approx(2 / 4)


def test_glue_parsing_reads_signed_scientific_and_list_pairs_and_rejects_the_rest():
    assert answer_parsing.parse_glue("[(5.2, 10.4)]") == [(5.2, 10.4)]
    assert answer_parsing.parse_glue("[ [1e1, 2.5E1], (-0.5, 0) ]") == [(10.0, 25.0), (-0.5, 0.0)]
    assert answer_parsing.parse_glue("[]") == []  # valid in the released regex too
    assert answer_parsing.parse_glue("[(5, 2)]") is None  # start > end (grpo_tasks.py:107)
    assert answer_parsing.parse_glue("[(1, 2, 3)]") is None
    assert answer_parsing.parse_glue("(1, 2)") is None  # not a list
    assert answer_parsing.parse_glue("[('a', 2)]") is None
    assert answer_parsing.parse_glue("__import__('os')") is None
