"""Rewards of DESIGN.md section 5: known values per rule, the papers' edge cases, hostile text."""

import math
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jaxvrl.rewards import answer_parsing, registry, text_metrics, video_r1, videochat_r1


def ans(text: str) -> str:
    return f"<think>reasoning</think><answer>{text}</answer>"


def accuracy(pred: str, truth: str, problem_type: str) -> float:
    return registry.get("accuracy")([ans(pred)], [ans(truth)], problem_type=[problem_type])[0]


# ----------------------------------------------------------------------------- extraction, format


TAG_ALPHABET = ["<answer>", "</answer>", "<think>", "</think>", "a", " ", "\n", "\x1c", "\u00a0"]
tag_soup = st.lists(st.sampled_from(TAG_ALPHABET), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(tag_soup)
def test_format_agrees_with_video_r1_fullmatch(text):
    pattern = r"<think>.*?</think>\s*<answer>.*?</answer>"
    assert video_r1.format_ok(text) == bool(re.fullmatch(pattern, text, re.DOTALL))


def test_format_reward_needs_think_then_answer_and_nothing_else():
    completions = [
        "<think>a</think>\n<answer>B</answer>",
        "<think></think><answer></answer>",
        "<answer>B</answer>",
        "<think>a</think><answer>B</answer> trailing",
        "<answer>B</answer><think>a</think>",
    ]
    assert registry.get("format")(completions, [""] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- accuracy rules


def test_multiple_choice_scores_exact_answer_only():
    assert accuracy("B", "B", "multiple choice") == 1.0
    assert accuracy(" B ", "B", "multiple choice") == 1.0
    assert accuracy("C", "B", "multiple choice") == 0.0
    assert accuracy("B. dog", "B", "multiple choice") == 0.0


def test_missing_answer_tag_or_empty_answer_scores_zero():
    acc = registry.get("accuracy")
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


def test_ocr_is_one_minus_word_error_rate_clipped():
    assert accuracy("the cat sat on mat", "the cat sat on the mat", "OCR") == pytest.approx(5 / 6)
    assert accuracy("hello world", "hello world", "OCR") == 1.0
    assert accuracy("a b c d e", "a b", "OCR") == 0.0  # WER 1.5 clips to 0


def test_free_form_is_mean_of_rouge_1_2_l():
    expected = (2 / 3 + 1 / 2 + 2 / 3) / 3
    assert accuracy("the cat ran", "the cat sat", "free-form") == pytest.approx(expected)
    assert accuracy("Same words.", "same words", "free-form") == 1.0
    assert accuracy("!!!", "same words", "free-form") == 0.0


def test_free_form_stems_words_like_rouge_score():
    # Video-R1 src/r1-v/src/open_r1/grpo.py:102-106: RougeScorer(..., use_stemmer=True).
    # "dogs"->"dog", "running"/"runs"->"run": unigrams 2 of 3 / 2 of 4 -> F1 4/7, no bigram,
    # LCS "dog run" -> 4/7; mean 8/21 (0 without stemming: no word is shared).
    assert accuracy("a dog runs", "the dogs are running", "free-form") == pytest.approx(8 / 21)
    assert text_metrics.rouge_f1s("the dogs are running", "a dog runs", stem=False) == (0, 0, 0)


def test_free_form_equals_rouge_score_library():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    pairs = [
        ("the man runs across the field with a dog", "the men run across fields with a dog"),
        ("Cooking: she fried 2 eggs, then boiled the potatoes.", "she is boiling potatoes"),
        ("", "anything"),
    ]
    for ref, pred in pairs:
        want = sum(s.fmeasure for s in scorer.score(ref, pred).values()) / 3
        assert accuracy(pred, ref, "free-form") == pytest.approx(want, abs=1e-12)


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
    # Video-R1 grpo.py:146-148 gives "nan" vs 10 a reward of 1 (max(0.0, nan) is 0.0): a bug.
    assert accuracy("nan", "10", "regression") == 0.0
    assert accuracy("-2.5e1", "-25", "regression") == pytest.approx(1.0)  # signs, exponents


def test_accuracy_dispatches_per_completion_and_broadcasts_a_scalar_type():
    acc = registry.get("accuracy")
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
    assert registry.get("accuracy")(chat, ["B"], problem_type=["multiple choice"]) == [1.0]


# ----------------------------------------------------------------------------- length bonus


def test_length_bonus_needs_two_correct_in_group_and_length_in_range():
    lengths = [400, 400, 100, 400, 400, 512, 320, 513]
    groups = [0, 0, 0, 1, 1, 2, 2, 2]
    accuracies = [1.0, 0.5, 1.0, 1.0, 0.1, 1.0, 1.0, 1.0]
    got = registry.get("length_bonus")(
        [""] * 8, [""] * 8, completion_lengths=lengths, group_ids=groups, accuracies=accuracies
    )
    # Group 0: two of three correct in range; group 1: only one correct (0.1 is not > 0.1);
    # group 2: all correct, 512 and 320 are inside [320, 512], 513 is not.
    assert got == [0.2, 0.2, 0.0, 0.0, 0.0, 0.2, 0.2, 0.0]


def test_length_bonus_computes_accuracy_when_not_given():
    got = registry.get("length_bonus")(
        [ans("B"), ans("B"), ans("C")],
        ["B"] * 3,
        completion_lengths=[400] * 3,
        group_ids=[7, 7, 7],
        problem_type="multiple choice",
    )
    assert got == [0.2, 0.2, 0.0]


def test_length_bonus_without_lengths_or_groups_is_zero():
    assert registry.get("length_bonus")([ans("B")] * 2, ["B"] * 2, accuracies=[1, 1]) == [0.0, 0.0]


# ----------------------------------------------------------------------------- VideoChat-R1


def test_temporal_iou_reads_the_last_answer_block():
    # grpo_tasks.py:285-291 takes the LAST <answer> block (Video-R1 and the other tasks: first).
    text = "<think>a</think><answer>0 to 10</answer><answer>10 to 20</answer>"
    assert answer_parsing.parse_timestamp_answer(text) == (10.0, 20.0)
    tiou = registry.get("temporal_iou")
    assert tiou([text], [[10, 20]]) == [1.0]


def test_temporal_iou_known_values():
    tiou = registry.get("temporal_iou")
    completions = [
        ans("The event happens from 12.5 to 17.5 seconds."),
        ans("between 0 and 1, no: between 10 and 20"),  # the last span counts
        ans("at 10 seconds"),
        "12.5 to 17.5 but no answer tag",
        ans("8 TO 14"),  # [8, 14] vs [10, 20]: 4 / 12
    ]
    assert tiou(completions, [[10, 20]] * 5) == pytest.approx([0.5, 1.0, 0.0, 0.0, 1 / 3])


def test_temporal_iou_truth_is_the_records_timestamp():
    # The solution text is rounded to 2 decimals; the record's timestamp is exact.
    tiou = registry.get("temporal_iou")
    got = tiou([ans("1 to 2")], ["<answer>1.00 to 2.00</answer>"], extra=[{"timestamp": [1, 3]}])
    assert got == pytest.approx([0.5])
    assert tiou([ans("2 to 4")], ["<answer>3 to 5</answer>"]) == pytest.approx([1 / 3])


def test_temporal_iou_point_spans_score_zero_instead_of_crashing():
    # grpo_tasks.py:322-327: union 0 leaves `iou` unbound (UnboundLocalError); we score 0.
    assert registry.get("temporal_iou")([ans("5 to 5")], [[5, 5]]) == [0.0]
    assert registry.get("temporal_iou")([ans("9 to 3")], [[2, 8]]) == [0.0]  # reversed: empty


def test_temporal_iou_with_nothing_to_parse_scores_zero():
    assert registry.get("temporal_iou")([ans("I cannot tell")], [[3.0, 4.0]]) == [0.0]


def test_glue_iou_scores_the_glue_block_against_the_records_glue():
    glue = registry.get("glue_iou")
    text = "<think>t</think><answer>C</answer><glue>[(0, 2), (1, 3)]</glue>"
    # The solution is the option; the intervals come from the record (NExT-GQA `glue`).
    assert glue([text], ["<answer>C</answer>"], extra=[{"glue": [[1, 4]]}]) == [0.5]
    assert glue([text], ["<answer>C</answer>"], extra=['{"glue": [[1.0, 4.0]]}']) == [0.5]
    # Pred [1, 5] meets truth [0, 2] and [4, 6] in 1 + 1; union = 4 + 4 - 2 = 6.
    one = "<answer>C</answer><glue>[(1, 5)]</glue>"
    assert glue([one], ["C"], extra=[{"glue": [[0, 2], [4, 6]]}]) == pytest.approx([2 / 6])


def test_glue_iou_empty_union_scores_one_and_unparsable_scores_zero():
    # grpo_tasks.py:166-167: an empty union scores 1.0 (kept: both sides agree on "nothing").
    assert answer_parsing.glue_iou([(3, 3)], [(3, 3)]) == 1.0
    glue = registry.get("glue_iou")
    truth = {"glue": [[1, 4]]}
    assert glue([ans("(C)")], ["C"], extra=[truth]) == [0.0]  # no <glue> block
    assert glue(["<glue>1 2 3</glue>"], ["C"], extra=[truth]) == [0.0]
    assert glue(["<glue>[(5, 2)]</glue>"], ["C"], extra=[truth]) == [0.0]  # reversed interval


BOXES = [[0.0, 0.0, 0.5, 0.5]] * 8


def boxes_text(boxes) -> str:
    return ans("[" + ", ".join("[" + ", ".join(str(x) for x in b) + "]" for b in boxes) + "]")


def test_tracking_iou_is_mean_box_iou_over_eight_boxes():
    track = registry.get("tracking_iou")
    assert track([boxes_text(BOXES)], [BOXES]) == [1.0]
    half = [[0.0, 0.0, 0.5, 0.25]] * 4 + [[0.0, 0.0, 0.5, 0.5]] * 4
    assert track([boxes_text(half)], [BOXES]) == pytest.approx([0.75])
    assert track([boxes_text(BOXES)], [boxes_text(BOXES)]) == [1.0]
    # The record's boxes win over the solution text; newlines inside the list are dropped.
    text = ans("[\n" + ",\n".join(["[0, 0, 5e-1, 0.5]"] * 8) + "\n]")
    assert track([text], ["<answer>[]</answer>"], extra=[{"boxes": BOXES}]) == [1.0]


def test_tracking_reads_signed_boxes():
    track = registry.get("tracking_iou")
    shifted = [[-0.25, 0.0, 0.25, 0.5]] * 8  # overlap 0.25 x 0.5 of union 0.375: 1/3
    assert track([boxes_text(shifted)], [BOXES]) == pytest.approx([1 / 3])


def test_tracking_needs_a_list_of_exactly_eight_lists_of_four_numbers():
    # grpo_tasks.py:359-377: literal list, 8 elements, each a list of 4.
    track = registry.get("tracking_iou")
    assert track([boxes_text(BOXES[:7])], [BOXES]) == [0.0]
    assert track([boxes_text(BOXES + BOXES[:1])], [BOXES]) == [0.0]
    three_numbers = [[0.0, 0.0, 0.5]] + BOXES[1:]
    assert track([boxes_text(three_numbers)], [BOXES]) == [0.0]
    assert track([ans(" ".join(["0 0 0.5 0.5"] * 8))], [BOXES]) == [0.0]
    bare = ans(", ".join("[0.0, 0.0, 0.5, 0.5]" for _ in range(8)))  # a tuple, not a list
    assert track([bare], [BOXES]) == [0.0]
    tuples = ans("[" + ", ".join("(0.0, 0.0, 0.5, 0.5)" for _ in range(8)) + "]")
    assert track([tuples], [BOXES]) == [0.0]


def test_option_letter_after_common_prefixes():
    for text, letter in [
        ("The answer is (B)", "B"),
        ("Option C", "C"),
        ("(D) a dog", "D"),
        ("Answer: A", "A"),
        # grpo_tasks.py:225 takes the first capital A-G anywhere: "Answer: D" -> "A"; fixed.
        ("Answer: D", "D"),
        ("Best option: B.", "B"),
        ("E", "E"),
        ("Because of the dog, the answer is F", "F"),
        ("no letter here", None),
        ("H", None),
    ]:
        assert videochat_r1.option_letter(text) == letter, text


def test_option_letter_reward_compares_letters():
    letter = registry.get("option_letter")
    completions = [ans("The answer is (C)"), ans("B"), "C without tags"]
    assert letter(completions, ["(C)"] * 3) == [1.0, 0.0, 0.0]
    assert letter([ans("C")], [2]) == [1.0]  # an option index
    # The first answer block counts (grpo_tasks.py:238 re.search).
    assert letter(["<answer>C</answer><answer>B</answer>"], ["<answer>C</answer>"]) == [1.0]


def test_first_letter_is_seed_bench_r1s_rule():
    # SEED-Bench-R1 src/open_r1_egoplan/grpo.py:88-99: first character of the first answer block
    # against the first character of "<answer>B.</answer>".
    first = registry.get("first_letter")
    completions = [ans("B"), ans(" B. the cup"), ans("The answer is B"), ans(""), "B"]
    assert first(completions, ["<answer>B.</answer>"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]


def tg(text):
    return {"text": text, "type": "temporal grounding", "sol": "<answer>10.00 to 20.00</answer>",
            "extra": {"timestamp": [10.0, 20.0], "duration": 30.0}}  # fmt: skip


def gqa(text):
    return {"text": text, "type": "grounded qa", "sol": "<answer>C</answer>",
            "extra": {"glue": [[1.0, 4.0]], "answer": "C", "duration": 20.0}}  # fmt: skip


def track(text):
    return {"text": text, "type": "tracking", "sol": "<answer>[]</answer>",
            "extra": {"boxes": BOXES, "start": BOXES[0]}}  # fmt: skip


VIDEOCHAT_TOTALS = [
    # (sample, released total) -- the sum of the task's three rewards in grpo_tasks.py:513-523.
    # tg: tg_iou + tg_format + pad. [12, 20] vs [10, 20]: 8 / 10; format 1 -> 1.8.
    (tg("<think>t</think>\n<answer>12 to 20</answer>\n"), 1.8),
    # Text after the answer: format 0 (fullmatch); the IoU still reads the block -> 0.8.
    (tg("<think>t</think><answer>12 to 20</answer> done"), 0.8),
    # No think: format 0; "12-20" has no connective: IoU 0 -> 0.
    (tg("<answer>12-20</answer>"), 0.0),
    # gqa: gqa_iou + gqa_format + gqa_reward. Glue [(0, 2), (1, 3)] -> [0, 3] vs [1, 4]: 2 / 4.
    (gqa("<think>t</think><answer>C</answer><glue>[(0, 2), (1, 3)]</glue>"), 0.5 + 1 + 1),
    # The anchor's own output form without think tags: format 0, IoU 1, answer 1 -> 2.
    (gqa("<answer>(C) a cat</answer><glue>[(1, 4)]</glue>"), 2.0),
    # Wrong letter, glue with a reversed pair: format 0 (invalid glue), IoU 0, answer 0.
    (gqa("<think>t</think><answer>B</answer><glue>[(4, 1)]</glue>"), 0.0),
    # tracking: tracking_iou + tracking_format + pad; 8 exact boxes -> 2.
    (track("<think>t</think><answer>" + str(BOXES) + "</answer>"), 2.0),
    # 7 boxes: not a valid list: IoU 0 and format 0.
    (track("<think>t</think><answer>" + str(BOXES[:7]) + "</answer>"), 0.0),
]


def test_videochat_r1_totals_per_task_equal_the_released_code():
    from configs import videochat_r1

    weights = [tuple(w) for w in videochat_r1.get_config().rl.rewards]
    for sample, expected in VIDEOCHAT_TOTALS:
        total, _ = registry.combine(
            weights, [sample["text"]], [sample["sol"]],
            problem_type=[sample["type"]], extra=[sample["extra"]],
        )  # fmt: skip
        assert total[0] == pytest.approx(expected, abs=1e-6), sample["text"]


# ----------------------------------------------------------------------------- registry, combine


def test_registry_finds_every_reward_of_design_section_5():
    expected = {"accuracy", "format", "length_bonus", "temporal_iou", "glue_iou", "tracking_iou"}
    assert expected | {"option_letter"} <= set(registry.names())
    with pytest.raises(KeyError):
        registry.get("no such reward")


def test_users_register_their_own_reward():
    @registry.register("test_constant_half")
    def half(completions, solutions, **fields):
        return [0.5] * len(completions)

    try:
        assert registry.get("test_constant_half")(["a"], ["b"]) == [0.5]
        with pytest.raises(ValueError):
            registry.register("test_constant_half")(half)
    finally:
        registry._REGISTRY.pop("test_constant_half")


def test_combine_weights_rewards_by_name():
    completions = [ans("B"), "<answer>B</answer>", ans("C")]
    total, per = registry.combine(
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
    "-", "e-2", "[[", "]]", "(1, 2)", " TO ",
]  # fmt: skip
RANGES = {"length_bonus": (0.0, 0.2)}
PROBLEM_TYPES = ["multiple choice", "numerical", "OCR", "free-form", "regression", "?", None,
                 "temporal grounding", "grounded qa", "tracking"]  # fmt: skip

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
@example(  # literal_eval on deep nesting and on long lists (glue, tracking)
    completions=[
        "<think>t</think><answer>" + "[" * 5_000 + "]" * 5_000 + "</answer>",
        "<think>t</think><answer>C</answer><glue>[" + "(1, 2), " * 3_000 + "]</glue>",
        "<think>t</think><answer>[" + "[0, 0, 1, 1], " * 2_000 + "]</answer>",
    ],
    solution="<answer>C</answer>",
    problem_type="grounded qa",
    lengths=[],
)
@example(
    completions=["<answer>" + "-1e-2 TO -2.5e1 " * 2_000 + "</answer>"] * 2,
    solution="<answer>1.00 to 2.00</answer>",
    problem_type="temporal grounding",
    lengths=[],
)
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
        "extra": [{"glue": [[1.0, 4.0]], "timestamp": [1.0, 2.0], "boxes": [[0, 0, 1, 1]] * 8}] * n,
    }
    for name in registry.names():
        low, high = RANGES.get(name, (0.0, 1.0))
        start = time.perf_counter()
        got = registry.get(name)(completions, [solution] * n, **fields)
        elapsed = time.perf_counter() - start
        # A backtracking pattern on these 10-100 KB texts takes minutes; linear parsing takes
        # milliseconds. 5 s leaves room for a loaded machine (1.4 s seen beside two compiles).
        assert elapsed < 5.0, (name, elapsed)
        assert len(got) == n
        assert all(isinstance(x, float) and math.isfinite(x) and low <= x <= high for x in got)
