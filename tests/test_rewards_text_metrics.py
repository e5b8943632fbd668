"""Text metrics of DESIGN.md section 5: Video-R1's word error rate and ROUGE F1."""

import pytest

from jaxvrl.rewards import text_metrics


def test_word_error_rate_counts_word_edits_over_reference_words():
    assert text_metrics.word_error_rate("the cat sat on the mat", "the cat sat on mat") == 1 / 6
    # One substitution, one insertion.
    assert text_metrics.word_error_rate("a b c", "a x c d") == 2 / 3
    assert text_metrics.word_error_rate("", "a b") == 2.0  # max(1, 0 reference words)


def test_rouge_f1s_known_values():
    r1, r2, rl = text_metrics.rouge_f1s("the cat sat", "The cat ran!")
    assert (r1, r2, rl) == pytest.approx((2 / 3, 1 / 2, 2 / 3))
    # LCS of "a b c d" and "a c b d" is 3 long: F1 = 3/4.
    assert text_metrics.rouge_f1s("a b c d", "a c b d")[2] == pytest.approx(3 / 4)
