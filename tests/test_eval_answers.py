"""Reading answers out of responses, one rule per benchmark family (jaxvrl/eval/answers.py)."""

from jaxvrl.eval import answers


def test_the_first_of_several_answer_tags_wins():
    response = "<think>A?</think><answer> B </answer> then <answer>C</answer>"
    assert answers.answer_tag(response) == "B"
    assert answers.answer_tag("no tags here") is None


def test_video_r1_falls_back_to_the_whole_response_without_a_tag():
    assert answers.video_r1_answer("<answer>D</answer>") == ("D", True)
    assert answers.video_r1_answer("D") == ("D", False)


def test_first_number_reads_units_commas_signs_and_exponents():
    assert answers.first_number("about 1,234.5 meters") == 1234.5
    assert answers.first_number("3.5m") == 3.5
    assert answers.first_number("-2e3 cm") == -2000.0
    assert answers.first_number("twelve") is None


def test_plain_number_is_the_whole_text_without_commas():
    assert answers.plain_number("1,234") == 1234.0
    assert answers.plain_number("12 m") is None


def test_grounding_span_is_the_last_to_or_and_pair_in_the_response():
    response = "<think>1.0 to 2.0 looks wrong</think><answer>3.5 to 7.25</answer>"
    assert answers.videochat_span(response) == (3.5, 7.25)
    assert answers.videochat_span("between 3 and 5") == (3.0, 5.0)
    assert answers.videochat_span("7.0 to 3.0") == (7.0, 3.0)  # inverted: kept, scored 0
    assert answers.videochat_span("somewhere in the middle") is None


def test_option_letter_skips_answer_prefixes_and_reads_the_first_capital():
    assert answers.option_letter("The answer is (C) crawl") == "C"
    assert answers.option_letter("the baby crawls on the floor") is None


def test_glue_list_then_answer_spans_and_inverted_spans_are_unparseable():
    assert answers.glue_intervals("<answer>C</answer><glue>[(1.0, 2.5), (2, 4)]</glue>") == [
        (1.0, 2.5),
        (2.0, 4.0),
    ]
    assert answers.glue_intervals("<glue>[(5.0, 2.0)]</glue>") is None
    assert answers.glue_intervals("<glue>5 to 7</glue>") is None
    assert answers.glue_intervals("<answer>C 1.0 to 3.0</answer>") == [(1.0, 3.0)]
    assert answers.glue_intervals("<answer>C</answer>") is None


def test_box_list_needs_the_ground_truth_count_of_four_number_boxes():
    assert answers.box_list("[[0.1, 0.2, 0.3, 0.4],\n [0, 0, 1, 1]]", 2) == [
        [0.1, 0.2, 0.3, 0.4],
        [0.0, 0.0, 1.0, 1.0],
    ]
    assert answers.box_list("[[0.1, 0.2, 0.3, 0.4]]", 2) is None
    assert answers.box_list("[[0.1, 0.2, 0.3]]", 1) is None
    assert answers.box_list("__import__('os')", 1) is None
