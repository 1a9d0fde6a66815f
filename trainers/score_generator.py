r"""Scores a DGM run's generator with a reference classifier.

    python -m trainers.score_generator --runs='runs/dgm/*' \
        [--samples=1000] [--reference_dir=~/.cache/cl_zoo/reference] \
        [--train_on_samples [--train_per_class=3000] [--train_jitter=1]]

For every run (a `--model_dir` of `--method=dgm` with its export), draws
`--samples` images of every class the generator learned and reports the
share that a reference classifier assigns to that class: a direct measure
of how well the generator remembers each class, apart from how the
continual classifier then learns from the samples. The reference is a
small CNN trained on the benchmark's whole training set (every class at
once, so it is not a continual learner; it is a yardstick) and cached in
`--reference_dir` per benchmark; its own test accuracy is printed too.
Prints one line per run: the per-class scores in % and their mean.

`--train_on_samples` adds a second line per run ("GAN-train", Shmelkov et
al. 2018): a fresh CNN of the reference's shape learns from
`--train_per_class` generated images of every class only (optionally
jittered as DGM's `--replay_jitter` does) and is tested on the real test
examples of those classes. The first score asks whether the samples look
like their class; this one whether they cover its variety, which is what a
classifier learning from them needs.
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
flags.DEFINE_integer("samples", 1000, "Generated images per class.",
                     lower_bound=1)
flags.DEFINE_integer("reference_epochs", 3, "Epochs of the reference "
                     "classifier's training (when it is not cached).")
flags.DEFINE_string(
    "reference_dir", os.path.join("~", ".cache", "cl_zoo", "reference"),
    "Where the reference classifiers are cached, one per benchmark.",
)
flags.DEFINE_string("data_dir", None, "Data directory of the benchmarks "
                    "(as the trainer's --data_dir).")
flags.DEFINE_integer("seed", 0, "Seed of the noise and of the reference.")
flags.DEFINE_boolean(
    "train_on_samples", False,
    "Also train a fresh CNN on generated images only and print its "
    "accuracy on the real test set (GAN-train), overall and per class.",
)
flags.DEFINE_integer("train_per_class", 3000, "With --train_on_samples: "
                     "generated training images per class.",
                     lower_bound=1)
flags.DEFINE_integer("train_epochs", 3, "With --train_on_samples: epochs "
                     "over them.", lower_bound=1)
flags.DEFINE_float("train_jitter", 0.0, "With --train_on_samples: jitter "
                   "strength of the generated images (as DGM's "
                   "--replay_jitter; 0: none).", lower_bound=0.0)


def _run_dirs(patterns):
    dirs = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise FileNotFoundError(f"--runs: nothing matches {pattern!r}")
        dirs += [d for d in matched if os.path.isdir(d)]
    return dirs


def _per_class(values):
    return " ".join(f"{c}:{100 * v:.1f}" for c, v in values.items())


def main(argv):
    del argv
    from cl_zoo.startup import import_tensorflow_quietly

    import_tensorflow_quietly()  # no C++ start-up notices on stderr
    import tensorflow as tf

    from cl_zoo import benchmarks
    from cl_zoo.generator_score import (
        reference_classifier,
        reference_test_accuracy,
        score,
        train_on_samples,
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
                bm = benchmarks.run_benchmark(config, FLAGS.data_dir)
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
        def generate(labels, noise, serve=serve):
            return serve(label=labels, noise=noise)["images"]

        scores = score(generate, classes, ref, config["noise_dim"],
                       FLAGS.samples, FLAGS.seed)
        values = list(scores.values())
        print(f"{run}: " + _per_class(scores)
              + f"  mean {100 * sum(values) / len(values):.2f} %",
              flush=True)
        if FLAGS.train_on_samples:
            accuracy, per_class = train_on_samples(
                generate, classes, bm, config["noise_dim"],
                FLAGS.train_per_class, FLAGS.train_epochs, FLAGS.seed,
                FLAGS.train_jitter,
            )
            print(f"{run}: trained on samples, real test accuracy "
                  f"{100 * accuracy:.2f} %: " + _per_class(per_class),
                  flush=True)


if __name__ == "__main__":
    app.run(main)
