"""The confusion matrix of a finished single-head run (`trainers.confusion`).

`run_confusion` loads a run's per-task export and counts, on the real test
examples of every class seen so far, which class each is given; in
class-incremental learning the latest classes tend to draw old classes'
examples (a recency bias), which the matrix's last columns show.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from cl_zoo import benchmarks
from cl_zoo.metrics import confusion_matrix


def run_confusion(run, after_task=None, benchmark=None, data_dir=None):
    """`(matrix, classes)` of `run`'s export after task `after_task`
    (1-based; default the last), over the classes seen by then.

    Raises ValueError with a message for the user when the run cannot give
    one.
    """
    try:
        with open(os.path.join(run, "results.json")) as f:
            results = json.load(f)
    except (OSError, ValueError):
        raise ValueError(
            f"{run} holds no finished run (results.json)") from None
    config = results["config"]
    if config.get("head") != "single":
        raise ValueError(
            f"{run} has one head per task (head={config.get('head')!r}); a "
            "confusion across classes needs head=single")
    done = len(results["accuracy_matrix"])
    task = done if after_task is None else after_task
    if not 1 <= task <= done:
        raise ValueError(f"--after_task={task}: the run trained tasks "
                         f"1..{done}")
    export = os.path.join(run, "export", f"task_{task - 1}")
    if not os.path.isdir(export):
        raise ValueError(f"{run} has no export of task {task} ({export}); "
                         "rerun it with --export")
    if benchmark is None:
        try:
            benchmark = benchmarks.run_benchmark(config, data_dir)
        except benchmarks.BenchmarkError as e:
            raise ValueError(str(e)) from e
    serve = tf.saved_model.load(export).signatures["serving_default"]
    labels, predicted = [], []
    for t in range(task):
        x, y = benchmark.test_arrays(t)
        for start in range(0, len(y), 1000):
            scores = serve(x=tf.constant(x[start:start + 1000],
                                         tf.float32))["scores"]
            predicted.append(np.argmax(scores.numpy(), axis=-1))
        labels.append(y)
    classes = sorted({c for t in range(task)
                      for c in benchmark.task_classes[t]})
    matrix = confusion_matrix(np.concatenate(labels),
                              np.concatenate(predicted),
                              benchmark.num_classes)
    return matrix[np.ix_(classes, classes)], classes


def format_matrix(matrix, classes):
    width = max(5, len(str(int(matrix.max()))) + 1)
    head = "true\\pred" + "".join(f"{c:>{width}}" for c in classes)
    rows = [f"{c:>9}" + "".join(f"{v:>{width}}" for v in row)
            for c, row in zip(classes, matrix)]
    wrong = matrix.sum(axis=0) - matrix.diagonal()
    total = int(matrix.sum())
    accuracy = matrix.diagonal().sum() / max(total, 1)
    return "\n".join([
        head, *rows,
        "wrongly" + " " * 2 + "".join(f"{v:>{width}}" for v in wrong),
        f"accuracy {100 * accuracy:.2f} % over {total} test examples; "
        f"{total - int(matrix.diagonal().sum())} errors",
    ])
