r"""Confusion matrix of a finished single-head run on the real test set.

    python -m trainers.confusion --run=DIR [--after_task=T] [--plot=F.png]

Loads `DIR/export/task_<T-1>/` (by default the last task trained), runs it
on the test examples of every class seen up to task T and prints the matrix
(rows: true class, columns: predicted class) with, under it, the test
examples wrongly given to each class. In class-incremental learning the
latest classes tend to draw the old ones' examples (a recency bias); this
shows how many. Needs a run with one head over all classes (`head=single`,
e.g. `dgm`).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "A finished run's --model_dir.")
flags.DEFINE_integer("after_task", None, "1-based task whose export to "
                     "load (default: the last task trained).", lower_bound=1)
flags.DEFINE_string("plot", None, "Also write the matrix as a PNG here.")
flags.DEFINE_string("data_dir", None, "Data directory of the benchmark "
                    "(as the trainer's --data_dir).")


def _fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def confusion(run, after_task=None, benchmark=None, data_dir=None):
    """`(matrix, classes)` of `run`'s export after task `after_task`
    (1-based; default the last), over the classes seen by then.

    Raises ValueError with a message for the user when the run cannot give
    one.
    """
    import numpy as np
    import tensorflow as tf

    from cl_zoo import benchmarks
    from cl_zoo.metrics import confusion_matrix

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
            benchmark = benchmarks.get_benchmark(
                results["benchmark"], seed=results.get("seed", 0),
                data_dir=data_dir or config.get("data_dir"))
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


def _plot(matrix, classes, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(classes),
                                    0.8 + 0.45 * len(classes)))
    off = matrix.astype(float).copy()
    for i in range(len(classes)):
        off[i, i] = 0.0
    ax.imshow(off, cmap="Reds")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    fontsize=7)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("errors (shade) and counts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    if not FLAGS.run:
        _fail("give --run=DIR (a finished single-head run)")
    try:
        matrix, classes = confusion(FLAGS.run, FLAGS.after_task,
                                    data_dir=FLAGS.data_dir)
    except ValueError as e:
        _fail(e)
    print(format_matrix(matrix, classes))
    if FLAGS.plot:
        _plot(matrix, classes, FLAGS.plot)
        print(f"wrote {FLAGS.plot}")


if __name__ == "__main__":
    app.run(main)
