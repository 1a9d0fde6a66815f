r"""Scores a DGM run's generator with a reference classifier.

    python -m trainers.score_generator --runs='runs/dgm/*' \
        [--samples=1000] [--reference_dir=~/.cache/cl_zoo/reference]

For every run (a `--model_dir` of `--method=dgm` with its export), draws
`--samples` images of every class the generator learned and reports the
share that a reference classifier assigns to that class: a direct measure
of how well the generator remembers each class, apart from how the
continual classifier then learns from the samples. The reference is a
small CNN trained on the benchmark's whole training set (every class at
once, so it is not a continual learner; it is a yardstick) and cached in
`--reference_dir` per benchmark; its own test accuracy is printed too.
Prints one line per run: the per-class scores in % and their mean.
"""

from __future__ import annotations

import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "DGM run directories, or globs of them.")
flags.DEFINE_integer("samples", 1000, "Generated images per class.")
flags.DEFINE_integer("reference_epochs", 3, "Epochs of the reference "
                     "classifier's training (when it is not cached).")
flags.DEFINE_string(
    "reference_dir", os.path.join("~", ".cache", "cl_zoo", "reference"),
    "Where the reference classifiers are cached, one per benchmark.",
)
flags.DEFINE_string("data_dir", None, "Data directory of the benchmarks "
                    "(as the trainer's --data_dir).")
flags.DEFINE_integer("seed", 0, "Seed of the noise and of the reference.")


def _run_dirs(patterns):
    dirs = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise FileNotFoundError(f"--runs: nothing matches {pattern!r}")
        dirs += [d for d in matched if os.path.isdir(d)]
    return dirs


def main(argv):
    del argv
    import tensorflow as tf

    from cl_zoo import benchmarks
    from cl_zoo.generator_score import (
        reference_classifier,
        reference_test_accuracy,
        score,
    )

    tf.get_logger().setLevel("ERROR")
    if not FLAGS.runs:
        print("error: give --runs=DIR[,DIR...] (DGM run directories)",
              file=sys.stderr)
        sys.exit(2)
    try:
        runs = _run_dirs(FLAGS.runs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    references = {}
    for run in runs:
        config_path = os.path.join(run, "config.json")
        results_path = os.path.join(run, "results.json")
        export = os.path.join(run, "export", "generator")
        if not (os.path.exists(config_path) and os.path.exists(results_path)
                and os.path.isdir(export)):
            print(f"error: {run} is not a finished DGM run with its export "
                  "(config.json, results.json and export/generator/); "
                  "rerun it with --export", file=sys.stderr)
            sys.exit(2)
        with open(config_path) as f:
            config = json.load(f)
        name = config["benchmark"]
        if name not in references:
            try:
                bm = benchmarks.get_benchmark(
                    name, seed=config.get("seed", 0),
                    data_dir=FLAGS.data_dir or config.get("data_dir"))
            except benchmarks.BenchmarkError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            path = os.path.join(os.path.expanduser(FLAGS.reference_dir),
                                f"{name}.keras")
            ref = reference_classifier(bm, path, FLAGS.reference_epochs,
                                       FLAGS.seed)
            print(f"reference classifier for {name}: test accuracy "
                  f"{100 * reference_test_accuracy(ref, bm):.2f} %")
            references[name] = (bm, ref)
        bm, ref = references[name]
        serve = tf.saved_model.load(export).signatures["serving_default"]
        with open(results_path) as f:
            done = len(json.load(f)["accuracy_matrix"])
        classes = [c for t in range(done) for c in bm.task_classes[t]]
        scores = score(
            lambda labels, noise, serve=serve: serve(
                label=labels, noise=noise)["images"],
            classes, ref, config["noise_dim"], FLAGS.samples, FLAGS.seed,
        )
        values = list(scores.values())
        print(f"{run}: " + " ".join(f"{c}:{100 * s:.1f}"
                                    for c, s in scores.items())
              + f"  mean {100 * sum(values) / len(values):.2f} %")


if __name__ == "__main__":
    app.run(main)
