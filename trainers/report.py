r"""Tabulates finished runs: a Markdown table and an accuracy-curve plot.

    python -m trainers.report --runs='runs/split_mnist/*' \
        [--plot=docs/split_mnist_curves.png] [--title="split MNIST"]

Reads each run's results.json. The table names each run by its directory
and gives ACC, BWT, FWT and forgetting
(in %), the final accuracy of every task, the training time and the storage
per task; the plot the mean accuracy over tasks seen after each task.
"""

from __future__ import annotations

import glob
import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "Run directories or globs of them.")
flags.DEFINE_string("plot", None, "Write the accuracy curves to this PNG.")
flags.DEFINE_string("title", "", "Title of the plot.")
flags.DEFINE_boolean("rows", True, "Show each task's final accuracy.")
flags.DEFINE_string(
    "sweep", None,
    "A config key (e.g. memory_units): with --plot, plot task-1 accuracy "
    "after the last task and ACC against that setting instead of the "
    "accuracy curves.",
    # trainers.train has a --sweep of its own; a process that imports both
    # (the test suite) keeps the later one.
    allow_override=True,
)


def load_runs(patterns):
    runs = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            results = os.path.join(path, "results.json")
            if os.path.isfile(results):
                with open(results) as f:
                    run = json.load(f)
                # Two runs of one setting differ by their directory only.
                run["run"] = os.path.normpath(path)
                runs.append(run)
    return runs


def markdown_table(runs, rows=True):
    head = ["run", "method", "benchmark", "head", "ACC %", "BWT %", "FWT %",
            "forgetting %"]
    if rows:
        head.append("final accuracy per task %")
    head += ["train s", "bytes/task"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in runs:
        cells = [
            r.get("run", ""), r["method"], r["benchmark"],
            r["extra"].get("head", ""),
            f"{100 * r['acc']:.2f}", f"{100 * r['bwt']:+.2f}",
            f"{100 * r['fwt']:+.2f}", f"{100 * r['forgetting']:.2f}",
        ]
        if rows:
            final = r["accuracy_matrix"][-1]
            if len(final) > 10:
                low, high = 100 * min(final), 100 * max(final)
                shown = f"min {low:.1f}, max {high:.1f}"
            else:
                shown = " ".join(f"{100 * a:.1f}" for a in final)
            cells.append(shown)
        cells += [f"{r['train_seconds']:.0f}", str(r["storage_bytes_per_task"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    if not FLAGS.runs:
        print("error: --runs is required", file=sys.stderr)
        sys.exit(2)
    runs = load_runs(FLAGS.runs)
    if not runs:
        print(f"error: no results.json under {FLAGS.runs}", file=sys.stderr)
        sys.exit(2)
    print(markdown_table(runs, FLAGS.rows))
    if FLAGS.plot:
        from cl_zoo import plots

        if FLAGS.sweep:
            png = sweep_plot(runs, FLAGS.sweep, FLAGS.title)
        else:
            curves = {
                r["run"]: r["extra"]["average_accuracy_curve"]
                for r in runs
            }
            png = plots.curve_png(curves, title=FLAGS.title)
        with open(FLAGS.plot, "wb") as f:
            f.write(png)


def sweep_plot(runs, key, title=""):
    """PNG: task-1 accuracy after the last task and ACC against `key`."""
    from cl_zoo import plots

    missing = [r["method"] for r in runs if key not in r["config"]]
    if missing:
        print(f"error: runs without config key {key!r}: {missing}",
              file=sys.stderr)
        sys.exit(2)
    runs = sorted(runs, key=lambda r: r["config"][key])
    xs = [r["config"][key] for r in runs]
    series = {
        "task 1 after the last task": [
            r["accuracy_matrix"][-1][0] for r in runs
        ],
        "ACC": [r["acc"] for r in runs],
    }
    return plots.sweep_png(xs, series, xlabel=key, title=title)


if __name__ == "__main__":
    app.run(main)
