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


def main(argv):
    del argv
    from cl_zoo.startup import import_tensorflow_quietly

    import_tensorflow_quietly()  # no C++ start-up notices on stderr
    from cl_zoo.confusion import format_matrix, run_confusion

    if not FLAGS.run:
        _fail("give --run=DIR (a finished single-head run)")
    try:
        matrix, classes = run_confusion(FLAGS.run, FLAGS.after_task,
                                        data_dir=FLAGS.data_dir)
    except ValueError as e:
        _fail(e)
    print(format_matrix(matrix, classes))
    if FLAGS.plot:
        from cl_zoo.plots import confusion_png

        with open(FLAGS.plot, "wb") as f:
            f.write(confusion_png(matrix, classes))
        print(f"wrote {FLAGS.plot}")


if __name__ == "__main__":
    app.run(main)
