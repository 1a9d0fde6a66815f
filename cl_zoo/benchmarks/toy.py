"""`gaussian_clusters`: the BPN toy of 2-D Gaussian clusters (BPN Fig. 5).

The paper generates three normally distributed clusters at different
locations, "black", "red" and "light blue". Task 1 separates black from red,
task 2 black from light blue, and the figure's heat map shows the chance that
the network calls a location "black". The paper gives no centres, spreads or
counts, so this module fixes them:

* centres: black (0, 0), red (-2, 1), light blue (2, -1); isotropic standard
  deviation 0.6. Black lies between the other two, so a network that only
  learns task 2's boundary (black vs light blue) extends the "black" side over
  the red cluster: plain gradient descent forgets task 1, as in the figure.
* labels, one binary output shared by both tasks as in the figure: class 0 =
  black, class 1 = the task's other cluster (red in task 0, light blue in
  task 1). So `task_classes == [[0, 1], [0, 1]]` and `num_classes == 2`;
  single-head and multi-head labels coincide.
* per task 1000 training points and 500 test points, half per class; each
  task draws its own black points. Inputs are the raw float32 coordinates,
  `input_shape == (2,)`.
* the points are drawn from `np.random.default_rng(seed)`, so one seed gives
  one data set.
"""

from __future__ import annotations

import numpy as np

from cl_zoo.benchmarks.base import Benchmark

BLACK = (0.0, 0.0)
RED = (-2.0, 1.0)
LIGHT_BLUE = (2.0, -1.0)
STDDEV = 0.6
TRAIN_PER_TASK = 1000
TEST_PER_TASK = 500
# (class-0 centre, class-1 centre) of each task.
TASK_CENTRES = ((BLACK, RED), (BLACK, LIGHT_BLUE))


def _draw(rng, centres, count):
    """`count` points, half around each centre, in a random order."""
    half = count // 2
    xs, ys = [], []
    for label, (centre, n) in enumerate(
        zip(centres, (half, count - half), strict=True)
    ):
        xs.append(rng.normal(centre, STDDEV, size=(n, 2)))
        ys.append(np.full(n, label, np.int32))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys)
    order = rng.permutation(count)
    return x[order], y[order]


def gaussian_clusters(*, data_dir=None, seed=0):
    """The two-task Gaussian-cluster toy; `data_dir` is unused."""
    del data_dir
    rng = np.random.default_rng(seed)
    pools = {"train": ([], [], []), "test": ([], [], [])}
    for centres in TASK_CENTRES:
        for split, count in (
            ("train", TRAIN_PER_TASK),
            ("test", TEST_PER_TASK),
        ):
            xs, ys, idx = pools[split]
            start = sum(len(y) for y in ys)
            x, y = _draw(rng, centres, count)
            xs.append(x)
            ys.append(y)
            idx.append(np.arange(start, start + count))
    (tr_x, tr_y, tr_idx), (te_x, te_y, te_idx) = (
        pools["train"],
        pools["test"],
    )
    return Benchmark(
        "gaussian_clusters",
        train=(np.concatenate(tr_x), np.concatenate(tr_y)),
        test=(np.concatenate(te_x), np.concatenate(te_y)),
        task_classes=[[0, 1], [0, 1]],
        num_classes=2,
        train_indices=tr_idx,
        test_indices=te_idx,
    )
