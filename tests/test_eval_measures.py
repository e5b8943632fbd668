"""The metrics' arithmetic (jaxvrl/eval/measures.py), checked against hand-computed values.
Tolerance 1e-12: a few float operations on small decimals."""

import pytest

from jaxvrl.eval import measures


@pytest.mark.parametrize(
    "pred,truth,mra",
    [
        (10.0, 10.0, 1.0),
        (7.6, 10.0, 0.6),  # error 0.24 <= 1 - theta for theta 0.50 ... 0.75
        (1.27, 1.0, 0.5),  # error 0.27: theta 0.50 ... 0.70
        (0.0, 10.0, 0.0),
        (0.0, 0.0, 1.0),
        (1.0, 0.0, 0.0),
    ],
)
def test_mean_relative_accuracy_counts_the_thresholds_met(pred, truth, mra):
    assert measures.mean_relative_accuracy(pred, truth) == pytest.approx(mra, abs=1e-12)


def test_mra_boundary_counts_with_less_equal_and_not_with_video_r1_strict_less():
    # error exactly 0.5 = 1 - 0.50: VSI-Bench counts theta 0.50, Video-R1's `<` does not.
    assert measures.mean_relative_accuracy(1.5, 1.0) == pytest.approx(0.1)
    assert measures.mean_relative_accuracy(1.5, 1.0, strict=True) == 0.0


def test_span_iou_with_zero_length_and_inverted_predictions():
    assert measures.span_iou((2.0, 6.0), (4.0, 8.0)) == pytest.approx(1 / 3)
    assert measures.span_iou((4.0, 8.0), (4.0, 8.0)) == 1.0
    assert measures.span_iou((5.0, 5.0), (4.0, 8.0)) == 0.0
    assert measures.span_iou((6.0, 2.0), (0.0, 10.0)) == 0.0
    assert measures.span_iou((0.0, 1.0), (2.0, 3.0)) == 0.0
    assert measures.span_iou((3.0, 3.0), (3.0, 3.0)) == 0.0  # zero union


def test_merged_interval_iou_merges_overlapping_intervals_first():
    # prediction (0, 4) + (2, 6) -> (0, 6); truth (4, 8): intersection 2, union 8.
    assert measures.merged_interval_iou([(0, 4), (2, 6)], [(4, 8)]) == pytest.approx(0.25)
    assert measures.merged_interval_iou([(1, 2), (3, 4)], [(0, 10)]) == pytest.approx(0.2)
    assert measures.merged_interval_iou([], []) == 1.0


def test_box_iou_and_average_overlap():
    assert measures.box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert measures.box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    pred = [[1, 1, 3, 3], [0, 0, 1, 1]]
    truth = [[0, 0, 2, 2], [0, 0, 1, 1]]
    assert measures.average_overlap(pred, truth) == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match="1 predicted boxes for 2"):
        measures.average_overlap(pred[:1], truth)
