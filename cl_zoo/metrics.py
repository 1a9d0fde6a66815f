"""Continual-learning metrics over an accuracy matrix.

`R[i][j]` is the test accuracy on task `j` after training task `i` (every `j`,
future tasks included) and `b[j]` the accuracy of the untrained model on task
`j`. The definitions follow Lopez-Paz & Ranzato (2017, GEM) for ACC, BWT and
FWT, and Chaudhry et al. (2018, RWalk) for forgetting:

- ACC = mean_j R[T-1][j]
- BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])
- FWT = mean_{j>0} (R[j-1][j] - b[j])
- forgetting = mean_{j<T-1} (max_{i<T-1} R[i][j] - R[T-1][j])

With a single task, BWT, FWT and forgetting are 0 by convention (no pair to
compare).
"""

from __future__ import annotations

import numpy as np


def _as_matrix(accuracy_matrix) -> np.ndarray:
    r = np.asarray(accuracy_matrix, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(
            "Expected a square, non-empty accuracy matrix R[i][j]. "
            f"Received shape {r.shape}."
        )
    if not np.all(np.isfinite(r)):
        raise ValueError("The accuracy matrix holds non-finite values.")
    return r


def average_accuracy(accuracy_matrix) -> float:
    """ACC: mean accuracy over all tasks after the last task."""
    r = _as_matrix(accuracy_matrix)
    return float(r[-1].mean())


def backward_transfer(accuracy_matrix) -> float:
    """BWT: how much training later tasks changed earlier ones (< 0: forgot)."""
    r = _as_matrix(accuracy_matrix)
    t = r.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([r[-1, j] - r[j, j] for j in range(t - 1)]))


def forward_transfer(accuracy_matrix, initial_accuracy) -> float:
    """FWT: accuracy on a task before training it, minus the untrained one's."""
    r = _as_matrix(accuracy_matrix)
    b = np.asarray(initial_accuracy, dtype=np.float64)
    t = r.shape[0]
    if b.shape != (t,):
        raise ValueError(
            f"Expected {t} initial accuracies, one per task. "
            f"Received shape {b.shape}."
        )
    if t < 2:
        return 0.0
    return float(np.mean([r[j - 1, j] - b[j] for j in range(1, t)]))


def forgetting(accuracy_matrix) -> float:
    """Mean drop from each old task's best accuracy to its final one."""
    r = _as_matrix(accuracy_matrix)
    t = r.shape[0]
    if t < 2:
        return 0.0
    return float(
        np.mean([r[: t - 1, j].max() - r[-1, j] for j in range(t - 1)])
    )


def average_accuracy_curve(accuracy_matrix) -> list[float]:
    """Mean accuracy over the tasks seen so far, after each task."""
    r = _as_matrix(accuracy_matrix)
    return [float(r[i, : i + 1].mean()) for i in range(r.shape[0])]


def summarize(accuracy_matrix, initial_accuracy) -> dict[str, float]:
    """All scalar metrics of the contract's results.json."""
    return {
        "acc": average_accuracy(accuracy_matrix),
        "bwt": backward_transfer(accuracy_matrix),
        "fwt": forward_transfer(accuracy_matrix, initial_accuracy),
        "forgetting": forgetting(accuracy_matrix),
    }


def confusion_matrix(labels, predicted, num_classes):
    """`C[i][j]`: test examples of class `i` predicted as class `j`."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    predicted = np.asarray(predicted, np.int64).reshape(-1)
    if labels.shape != predicted.shape:
        raise ValueError(
            "Expected as many predictions as labels. Received "
            f"{predicted.size} predictions for {labels.size} labels."
        )
    out = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(out, (labels, predicted), 1)
    return out
