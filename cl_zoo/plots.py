"""PNG plots of a run: accuracy matrix heatmap, accuracy curves."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def accuracy_matrix_png(matrix, num_tasks, title=""):
    """Heatmap of R[i][j] (rows: after task i; columns: task j) as PNG bytes.

    Rows not trained yet are left blank.
    """
    grid = np.full((num_tasks, num_tasks), np.nan)
    for i, row in enumerate(matrix):
        grid[i, : len(row)] = row
    size = min(2 + 0.6 * num_tasks, 14)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(image, ax=ax, label="test accuracy")
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    if num_tasks <= 20:
        ticks = range(num_tasks)
        ax.set_xticks(ticks, [str(t + 1) for t in ticks])
        ax.set_yticks(ticks, [str(t + 1) for t in ticks])
        for i in range(num_tasks):
            for j in range(num_tasks):
                if np.isfinite(grid[i, j]):
                    ax.text(
                        j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                        color="white" if grid[i, j] < 0.6 else "black",
                        fontsize=8,
                    )
    ax.set_title(title or "accuracy matrix")
    return _png(fig)


def curve_png(values, title="", ylabel="mean accuracy over tasks seen"):
    """Line plot of one curve, or several (a dict name -> values)."""
    series = values if isinstance(values, dict) else {title or "run": values}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        xs = np.arange(1, len(ys) + 1)
        ax.plot(xs, ys, marker="o" if len(ys) <= 20 else None, label=name)
    ax.set_xlabel("tasks trained")
    # Whole tasks only (no tick at 1.5 on a 3-task run).
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    ax.set_title(title)
    return _png(fig)


def decision_boundary_png(grids, extent, points, title=""):
    """Heatmaps of P(class 0) over the plane, one panel per task mode.

    Args:
        grids: list of `(n, n)` arrays, P(class 0 | x, task j) on a grid.
        extent: `(xmin, xmax, ymin, ymax)` of the grid.
        points: list, per panel, of `(x (m, 2), y (m,))` to overlay.
        title: figure title.
    """
    panels = len(grids)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.6),
                             squeeze=False)
    colors = np.array(["black", "tab:red", "tab:cyan", "tab:green"])
    for j, (ax, grid, (x, y)) in enumerate(zip(axes[0], grids, points)):
        image = ax.imshow(grid, origin="lower", extent=extent, vmin=0.0,
                          vmax=1.0, cmap="viridis", aspect="auto")
        other = colors[1 + (j % 3)]
        ax.scatter(x[:, 0], x[:, 1], s=3,
                   c=np.where(y == 0, "black", other), alpha=0.5)
        ax.set_title(f"task {j + 1} mode")
    fig.colorbar(image, ax=list(axes[0]), label="P(black cluster)")
    fig.suptitle(title)
    return _png(fig)


def sweep_png(xs, series, xlabel, title="", ylabel="test accuracy"):
    """Line plot of several named series against one swept setting."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 1.02)
    positive = all(x > 0 for x in xs)
    if positive and len(xs) > 2 and max(xs) / min(xs) > 100:
        ax.set_xscale("log")  # a strength swept over decades
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{x:g}" for x in xs])
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _png(fig)


def confusion_png(matrix, classes, title=""):
    """Counts of a confusion matrix (rows: true class, columns: predicted),
    the errors shaded, as PNG bytes."""
    matrix = np.asarray(matrix)
    n = len(classes)
    errors = matrix.astype(float)
    np.fill_diagonal(errors, 0.0)
    fig, ax = plt.subplots(figsize=(1 + 0.45 * n, 0.8 + 0.45 * n))
    ax.imshow(errors, cmap="Reds")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    fontsize=7)
    ax.set_xticks(range(n), classes)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "test examples (errors shaded)")
    return _png(fig)
