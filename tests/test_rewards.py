"""Rewards of DESIGN.md section 5: known values per rule, the papers' edge cases, hostile text."""

import math
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jaxvrl import rewards


def ans(text: str) -> str:
    return f"<think>reasoning</think><answer>{text}</answer>"


def accuracy(pred: str, truth: str, problem_type: str) -> float:
    return rewards.get("accuracy")([ans(pred)], [ans(truth)], problem_type=[problem_type])[0]


# ----------------------------------------------------------------------------- extraction, format


TAG_ALPHABET = ["<answer>", "</answer>", "<think>", "</think>", "a", " ", "\n", "\x1c", "\u00a0"]
tag_soup = st.lists(st.sampled_from(TAG_ALPHABET), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(tag_soup)
def test_answer_extraction_agrees_with_video_r1_regex(text):
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL)
    assert rewards.extract_answer(text) == (match.group(1).strip() if match else None)


@settings(max_examples=300, deadline=None)
@given(tag_soup)
def test_format_agrees_with_video_r1_fullmatch(text):
    pattern = r"<think>.*?</think>\s*<answer>.*?</answer>"
    assert rewards.format_ok(text) == bool(re.fullmatch(pattern, text, re.DOTALL))


def test_format_reward_needs_think_then_answer_and_nothing_else():
    completions = [
        "<think>a</think>\n<answer>B</answer>",
        "<think></think><answer></answer>",
        "<answer>B</answer>",
        "<think>a</think><answer>B</answer> trailing",
        "<answer>B</answer><think>a</think>",
    ]
    assert rewards.get("format")(completions, [""] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- accuracy rules


def test_multiple_choice_scores_exact_answer_only():
    assert accuracy("B", "B", "multiple choice") == 1.0
    assert accuracy(" B ", "B", "multiple choice") == 1.0
    assert accuracy("C", "B", "multiple choice") == 0.0
    assert accuracy("B. dog", "B", "multiple choice") == 0.0


def test_missing_answer_tag_or_empty_answer_scores_zero():
    acc = rewards.get("accuracy")
    assert acc(["B"], ["<answer>B</answer>"], problem_type=["multiple choice"]) == [0.0]
    assert acc([ans("")], [""], problem_type=["multiple choice"]) == [0.0]


def test_numerical_comma_against_point_scores_zero():
    # Video-R1: both sides carry a separator, but "3,14" normalises to 314, not 3.14.
    assert accuracy("3.14", "3,14", "numerical") == 0.0


def test_numerical_decimal_point_on_one_side_only_scores_zero():
    assert accuracy("42.0", "42", "numerical") == 0.0
    assert accuracy("42", "42.0", "numerical") == 0.0


def test_numerical_equal_after_rounding_to_two_decimals():
    assert accuracy("42", "42", "numerical") == 1.0
    assert accuracy("3.14159", "3.14", "numerical") == 1.0
    assert accuracy("1,000.5", "1000.50", "numerical") == 1.0
    assert accuracy("3.2", "3.14", "numerical") == 0.0
    assert accuracy("forty", "40", "numerical") == 0.0


def test_word_error_rate_counts_word_edits_over_reference_words():
    assert rewards.word_error_rate("the cat sat on the mat", "the cat sat on mat") == 1 / 6
    assert rewards.word_error_rate("a b c", "a x c d") == 2 / 3  # one substitution, one insertion
    assert rewards.word_error_rate("", "a b") == 2.0  # max(1, 0 reference words)


def test_ocr_is_one_minus_word_error_rate_clipped():
    assert accuracy("the cat sat on mat", "the cat sat on the mat", "OCR") == pytest.approx(5 / 6)
    assert accuracy("hello world", "hello world", "OCR") == 1.0
    assert accuracy("a b c d e", "a b", "OCR") == 0.0  # WER 1.5 clips to 0


def test_rouge_f1s_known_values():
    r1, r2, rl = rewards.rouge_f1s("the cat sat", "The cat ran!")
    assert (r1, r2, rl) == pytest.approx((2 / 3, 1 / 2, 2 / 3))
    # LCS of "a b c d" and "a c b d" is 3 long: F1 = 3/4.
    assert rewards.rouge_f1s("a b c d", "a c b d")[2] == pytest.approx(3 / 4)


def test_free_form_is_mean_of_rouge_1_2_l():
    expected = (2 / 3 + 1 / 2 + 2 / 3) / 3
    assert accuracy("the cat ran", "the cat sat", "free-form") == pytest.approx(expected)
    assert accuracy("Same words.", "same words", "free-form") == 1.0
    assert accuracy("!!!", "same words", "free-form") == 0.0


def test_regression_is_one_minus_clipped_relative_error():
    assert accuracy("8", "10", "regression") == pytest.approx(0.8)
    assert accuracy("10.5", "10", "regression") == pytest.approx(0.95)
    assert accuracy("25", "10", "regression") == 0.0
    assert accuracy("-10", "10", "regression") == 0.0
    # The formula read literally: gt 0 and pred 0 gives (0 + 1e-9) / (0 + 1e-9) = 1, so 0.
    assert accuracy("0", "0", "regression") == 0.0


def test_non_finite_numbers_score_zero():
    assert accuracy("nan", "nan", "numerical") == 0.0
    assert accuracy("inf", "inf", "regression") == 0.0


def test_accuracy_dispatches_per_completion_and_broadcasts_a_scalar_type():
    acc = rewards.get("accuracy")
    got = acc(
        [ans("B"), ans("42"), ans("x")],
        ["<answer>B</answer>", "<answer>42</answer>", "<answer>x</answer>"],
        problem_type=["multiple choice", "numerical", "no such type"],
    )
    assert got == [1.0, 1.0, 0.0]
    assert acc([ans("B"), ans("C")], ["B", "B"], problem_type="multiple choice") == [1.0, 0.0]
    assert acc([ans("B")], ["B"]) == [0.0]  # no problem_type at all


def test_chat_form_completions_are_read():
    chat = [[{"role": "assistant", "content": ans("B")}]]
    assert rewards.get("accuracy")(chat, ["B"], problem_type=["multiple choice"]) == [1.0]


# ----------------------------------------------------------------------------- length bonus


def test_length_bonus_needs_two_correct_in_group_and_length_in_range():
    lengths = [400, 400, 100, 400, 400, 512, 320, 513]
    groups = [0, 0, 0, 1, 1, 2, 2, 2]
    accuracies = [1.0, 0.5, 1.0, 1.0, 0.1, 1.0, 1.0, 1.0]
    got = rewards.get("length_bonus")(
        [""] * 8, [""] * 8, completion_lengths=lengths, group_ids=groups, accuracies=accuracies
    )
    # Group 0: two of three correct in range; group 1: only one correct (0.1 is not > 0.1);
    # group 2: all correct, 512 and 320 are inside [320, 512], 513 is not.
    assert got == [0.2, 0.2, 0.0, 0.0, 0.0, 0.2, 0.2, 0.0]


def test_length_bonus_computes_accuracy_when_not_given():
    got = rewards.get("length_bonus")(
        [ans("B"), ans("B"), ans("C")],
        ["B"] * 3,
        completion_lengths=[400] * 3,
        group_ids=[7, 7, 7],
        problem_type="multiple choice",
    )
    assert got == [0.2, 0.2, 0.0]


def test_length_bonus_without_lengths_or_groups_is_zero():
    assert rewards.get("length_bonus")([ans("B")] * 2, ["B"] * 2, accuracies=[1, 1]) == [0.0, 0.0]


# ----------------------------------------------------------------------------- VideoChat-R1


SPAN_ALPHABET = ["1", "2", "0", ".", " ", "to", "and", " to ", " and ", "x"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SPAN_ALPHABET), max_size=14).map("".join))
def test_span_parser_agrees_with_videochat_r1_regex(text):
    matches = re.findall(r"(\d+\.?\d*) (to|and) (\d+\.?\d*)", text)
    expected = (float(matches[-1][0]), float(matches[-1][2])) if matches else None
    assert rewards.parse_span(text) == expected


def test_temporal_iou_known_values():
    tiou = rewards.get("temporal_iou")
    completions = [
        ans("The event happens from 12.5 to 17.5 seconds."),
        ans("between 0 and 1, no: between 10 and 20"),  # the last span counts
        ans("at 10 seconds"),
        "12.5 to 17.5 but no answer tag",
    ]
    assert tiou(completions, [[10, 20]] * 4) == pytest.approx([0.5, 1.0, 0.0, 0.0])


def test_temporal_iou_with_nothing_to_parse_scores_zero():
    assert rewards.get("temporal_iou")([ans("I cannot tell")], [[3.0, 4.0]]) == [0.0]


def test_temporal_iou_reads_string_solutions():
    tiou = rewards.get("temporal_iou")
    assert tiou([ans("2 to 4")], ["<answer>3 to 5</answer>"]) == pytest.approx([1 / 3])
    assert tiou([ans("2 to 4")], ["[3.0, 5.0]"]) == pytest.approx([1 / 3])


def test_glue_intervals_are_merged_before_iou():
    # Unmerged, the overlapping pieces [0, 2] and [1, 3] would count [1, 2] twice.
    assert rewards.merge_intervals([(1, 3), (0, 2), (5, 6)]) == [(0, 3), (5, 6)]
    assert rewards.glue_iou([(0, 2), (1, 3)], [(1, 4)]) == pytest.approx(2 / 4)
    got = rewards.get("glue_iou")(["<answer>(C)</answer><glue>[(0, 2), (1, 3)]</glue>"], [[[1, 4]]])
    assert got == pytest.approx([0.5])


def test_glue_iou_sums_over_several_intervals():
    # Pred [1, 5] meets truth [0, 2] and [4, 6] in 1 + 1; union = 4 + 4 - 2 = 6.
    assert rewards.glue_iou([(1, 5)], [(0, 2), (4, 6)]) == pytest.approx(2 / 6)


def test_glue_iou_empty_union_scores_one_and_unparsable_scores_zero():
    assert rewards.glue_iou([(3, 3)], [(3, 3)]) == 1.0
    glue = rewards.get("glue_iou")
    assert glue([ans("(C)")], [[[1, 4]]]) == [0.0]
    assert glue([ans("1 2 3")], [[[1, 4]]]) == [0.0]  # odd count of numbers
    assert glue([ans("5 to 2")], [[[1, 4]]]) == [0.0]  # reversed interval


BOXES = [[0.0, 0.0, 0.5, 0.5]] * 8


def boxes_text(boxes) -> str:
    return ans(", ".join("[" + ", ".join(str(x) for x in b) + "]" for b in boxes))


def test_tracking_iou_is_mean_box_iou_over_eight_boxes():
    track = rewards.get("tracking_iou")
    assert track([boxes_text(BOXES)], [BOXES]) == [1.0]
    half = [[0.0, 0.0, 0.5, 0.25]] * 4 + [[0.0, 0.0, 0.5, 0.5]] * 4
    assert track([boxes_text(half)], [BOXES]) == pytest.approx([0.75])
    assert track([boxes_text(BOXES)], [boxes_text(BOXES)]) == [1.0]


def test_tracking_needs_exactly_eight_boxes_of_four_numbers():
    track = rewards.get("tracking_iou")
    assert track([boxes_text(BOXES[:7])], [BOXES]) == [0.0]
    assert track([boxes_text(BOXES + BOXES[:1])], [BOXES]) == [0.0]
    three_numbers = [[0.0, 0.0, 0.5]] + BOXES[1:]
    assert track([boxes_text(three_numbers)], [BOXES]) == [0.0]
    assert track([ans(" ".join(["0 0 0.5 0.5"] * 8))], [BOXES]) == [0.0]  # no boxes to read


def test_option_letter_after_common_prefixes():
    for text, letter in [
        ("The answer is (B)", "B"),
        ("Option C", "C"),
        ("(D) a dog", "D"),
        ("Answer: A", "A"),
        ("Best option: B.", "B"),
        ("E", "E"),
        ("Because of the dog, the answer is F", "F"),
        ("no letter here", None),
        ("H", None),
    ]:
        assert rewards.option_letter(text) == letter, text


def test_option_letter_reward_compares_letters():
    letter = rewards.get("option_letter")
    completions = [ans("The answer is (C)"), ans("B"), "C without tags"]
    assert letter(completions, ["(C)"] * 3) == [1.0, 0.0, 0.0]
    assert letter([ans("C")], [2]) == [1.0]  # an option index


# ----------------------------------------------------------------------------- registry, combine


def test_registry_finds_every_reward_of_design_section_5():
    expected = {"accuracy", "format", "length_bonus", "temporal_iou", "glue_iou", "tracking_iou"}
    assert expected | {"option_letter"} <= set(rewards.names())
    with pytest.raises(KeyError):
        rewards.get("no such reward")


def test_users_register_their_own_reward():
    @rewards.register("test_constant_half")
    def half(completions, solutions, **fields):
        return [0.5] * len(completions)

    try:
        assert rewards.get("test_constant_half")(["a"], ["b"]) == [0.5]
        with pytest.raises(ValueError):
            rewards.register("test_constant_half")(half)
    finally:
        rewards._REGISTRY.pop("test_constant_half")


def test_combine_weights_rewards_by_name():
    completions = [ans("B"), "<answer>B</answer>", ans("C")]
    total, per = rewards.combine(
        {"accuracy": 1.0, "format": 0.5},
        completions,
        ["B"] * 3,
        problem_type=["multiple choice"] * 3,
    )
    np.testing.assert_array_equal(per["accuracy"], [1, 1, 0])
    np.testing.assert_array_equal(per["format"], [1, 0, 1])
    np.testing.assert_allclose(total, [1.5, 1.0, 0.5])
    assert total.dtype == np.float32


# ----------------------------------------------------------------------------- hostile text


PIECES = [
    "<answer>", "</answer>", "<think>", "</think>", "<glue>", "</glue>", "[", "]", "(", ")", "9",
    "1.5 to 2.5 ", " and ", "3,14", ".", ",", " ", "\n", "A", "é", "\x00", "\u00a0", "0.5, ",
]  # fmt: skip
RANGES = {"length_bonus": (0.0, 0.2)}
PROBLEM_TYPES = ["multiple choice", "numerical", "OCR", "free-form", "regression", "?", None]

huge = st.tuples(st.sampled_from(PIECES), st.integers(1, 40_000)).map(lambda t: t[0] * t[1])
nested = st.tuples(st.sampled_from(PIECES), st.integers(1, 5_000), st.text(max_size=20)).map(
    lambda t: "<answer><think>" * t[1] + t[2] + t[0] * t[1] + "</think></answer>" * t[1]
)
many_numbers = st.lists(st.floats(allow_nan=True), max_size=2_000).map(
    lambda xs: "<answer>" + " to ".join(map(str, xs)) + "</answer>"
)
long_answer = st.tuples(st.sampled_from(["w ", "x y ", "9 ", "a. "]), st.integers(1, 12_000)).map(
    lambda t: "<think>t</think><answer>" + t[0] * t[1] + "</answer>"
)
texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(PIECES), max_size=80).map("".join),
    huge,
    nested,
    many_numbers,
    long_answer,
)
solutions = st.one_of(
    texts,
    st.lists(st.floats(allow_nan=True), max_size=4),
    st.lists(st.lists(st.floats(allow_nan=True), max_size=5), max_size=10),
    st.integers(-3, 9),
    st.none(),
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    completions=st.lists(texts, min_size=1, max_size=3),
    solution=solutions,
    problem_type=st.sampled_from(PROBLEM_TYPES),
    lengths=st.lists(st.integers(-5, 2_000), min_size=0, max_size=3),
)
@example(  # the largest edit-distance and LCS work: two closed answers of MAX_WORDS words
    completions=["<think>t</think><answer>" + "w x " * 4_000 + "</answer>"] * 3,
    solution="<answer>" + "x w " * 4_000 + "</answer>",
    problem_type="OCR",
    lengths=[400] * 3,
)
@example(
    completions=["<answer>" + "w x " * 4_000 + "</answer>"] * 3,
    solution="<answer>" + "x y " * 4_000 + "</answer>",
    problem_type="free-form",
    lengths=[],
)
@example(completions=["9" * 40_000], solution="9" * 40_000, problem_type="numerical", lengths=[])
@example(
    completions=["<answer>" + "1.5 to 2.5 " * 3_000 + "</answer><glue>" + "1 2 " * 8_000],
    solution="<glue>" + "(1, 2) " * 5_000 + "</glue>",
    problem_type="regression",
    lengths=[1],
)
def test_hostile_text_never_raises_stays_in_range_and_is_fast(
    completions, solution, problem_type, lengths
):
    n = len(completions)
    fields = {
        "problem_type": [problem_type] * n,
        "completion_lengths": lengths,  # possibly too short: missing entries score 0
        "group_ids": [0] * n,
    }
    for name in rewards.names():
        low, high = RANGES.get(name, (0.0, 1.0))
        start = time.perf_counter()
        got = rewards.get(name)(completions, [solution] * n, **fields)
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, (name, elapsed)
        assert len(got) == n
        assert all(isinstance(x, float) and math.isfinite(x) and low <= x <= high for x in got)
