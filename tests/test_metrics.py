"""Metrics against hand-computed values."""

import numpy as np
import pytest

from cl_zoo import metrics

R = [
    [0.9, 0.1, 0.2],
    [0.6, 0.8, 0.3],
    [0.5, 0.7, 0.95],
]
B = [0.1, 0.2, 0.25]


def test_acc():
    assert metrics.average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_bwt():
    # ((0.5 - 0.9) + (0.7 - 0.8)) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.25)


def test_fwt():
    # ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.1 - 0.2) + (0.3 - 0.25)) / 2
    assert metrics.forward_transfer(R, B) == pytest.approx(-0.025)


def test_forgetting_uses_best_earlier_accuracy():
    r = [
        [0.7, 0.0, 0.0],
        [0.9, 0.8, 0.0],
        [0.6, 0.5, 0.9],
    ]
    # task 0: max(0.7, 0.9) - 0.6 = 0.3; task 1: 0.8 - 0.5 = 0.3
    assert metrics.forgetting(r) == pytest.approx(0.3)


def test_summarize_and_curve():
    out = metrics.summarize(R, B)
    assert set(out) == {"acc", "bwt", "fwt", "forgetting"}
    assert out["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert metrics.average_accuracy_curve(R) == pytest.approx(
        [0.9, 0.7, (0.5 + 0.7 + 0.95) / 3]
    )


def test_single_task_has_no_transfer():
    assert metrics.summarize([[0.8]], [0.1]) == {
        "acc": pytest.approx(0.8), "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0,
    }


@pytest.mark.parametrize(
    "matrix", [[[0.1, 0.2]], [], [[0.1, np.nan], [0.2, 0.3]]]
)
def test_bad_matrix(matrix):
    with pytest.raises(ValueError, match="accuracy matrix"):
        metrics.average_accuracy(matrix)


def test_wrong_number_of_initial_accuracies():
    with pytest.raises(ValueError, match="3 initial accuracies"):
        metrics.forward_transfer(R, [0.1, 0.2])


def test_confusion_matrix_counts_true_against_predicted():
    m = metrics.confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], 3)
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    with pytest.raises(ValueError, match="as many predictions as labels"):
        metrics.confusion_matrix([0, 1], [0], 2)
