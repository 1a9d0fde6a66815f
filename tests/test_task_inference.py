"""Tests for task inference (`cl_zoo.task_inference`) and the task-agnostic
evaluation and export of task-conditioned runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cl_zoo import benchmarks, train_lib
from cl_zoo.benchmarks import mnist
from cl_zoo.config import resolve_config
from cl_zoo.methods import get_method
from cl_zoo.task_inference import (
    SubspaceTaskInference,
    class_table,
    global_scores,
)


def test_subspaces_tell_tasks_apart():
    """Two tasks whose inputs lie near different planes: each input goes
    to its own task, and a task not learned yet is never chosen."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(20, 4)))[0].T  # 4 x 20

    def task(rows):
        return (rng.normal(size=(200, 2)) @ basis[rows]
                + 0.01 * rng.normal(size=(200, 20))).reshape(200, 4, 5, 1)

    a, b = task([0, 1]), task([2, 3])
    inference = SubspaceTaskInference(3, (4, 5, 1), rank=2)
    assert inference.per_task_bytes() == 4 * 3 * 20
    inference.fit_task(0, a[:100])
    assert set(inference.infer(b[100:]).numpy()) == {0}  # only task 0
    inference.fit_task(1, b[:100])
    assert (inference.infer(a[100:]).numpy() == 0).all()
    assert (inference.infer(b[100:]).numpy() == 1).all()
    assert (inference.infer(b[100:], learned=1).numpy() == 0).all()
    distances = inference.distances(a[:3]).numpy()
    assert np.isinf(distances[:, 2]).all()


def test_mnist_digit_pairs_are_inferred_from_pixels():
    """Split MNIST's five tasks from test digits alone, at rank 30
    (97,216 bytes per task): the figure behind BD+EWC's task-agnostic
    accuracy."""
    try:
        bm = benchmarks.get_benchmark("split_mnist")
    except benchmarks.DataUnavailableError as e:
        pytest.skip(f"real MNIST unavailable: {e}")
    inference = SubspaceTaskInference(5, bm.input_shape)
    assert inference.per_task_bytes() == 97_216
    for t in range(5):
        inference.fit_task(t, bm.train_arrays(t, limit=4000)[0])
    right = total = 0
    for t in range(5):
        x, _ = bm.test_arrays(t)
        right += int((inference.infer(x).numpy() == t).sum())
        total += len(x)
    assert right / total > 0.92, right / total


def test_global_scores_map_each_head_to_its_classes(tiny_benchmark):
    model = get_method("finetune")(
        input_shape=tiny_benchmark.input_shape,
        num_classes=tiny_benchmark.num_classes,
        task_classes=tiny_benchmark.task_classes, head="multi",
        hidden_units=(8,))
    model.build_for_inputs()
    assert model.task_conditioned
    table = class_table(model)
    assert table.tolist() == tiny_benchmark.task_classes
    x, _ = tiny_benchmark.test_arrays(0)
    ids = tf.constant([0, 1, 2, 1], tf.int32)
    scores = global_scores(model, x[:4], ids, table).numpy()
    np.testing.assert_allclose(scores.sum(-1), 1.0, rtol=1e-5)
    for row, task in zip(scores, ids.numpy()):
        others = np.setdiff1d(np.arange(6), tiny_benchmark.task_classes[task])
        assert (row[others] == 0).all()
    assert not get_method("ewc")(
        input_shape=(4,), num_classes=2, task_classes=[[0, 1]],
        hidden_units=(4,)).task_conditioned


def _run(tmp_path, method, benchmark, **overrides):
    config = resolve_config(get_method(method), "tiny", {
        "epochs": 3, "batch_size": 16, "hidden_units": (16,), "verbose": 0,
        "model_dir": str(tmp_path / method), **overrides})
    return train_lib.ContinualRun(config, benchmark=benchmark).run()


def test_runs_report_task_agnostic_figures(tmp_path, tiny_benchmark):
    results = _run(tmp_path, "bd_ewc", tiny_benchmark, export=False)
    agnostic = results["extra"]["task_agnostic"]
    matrix = agnostic["accuracy_matrix"]
    assert [len(row) for row in matrix] == [1, 2, 3]  # the tasks seen
    assert agnostic["acc"] == pytest.approx(np.mean(matrix[-1]))
    # The tiny tasks light separate pixel blocks: easy to tell apart.
    assert agnostic["task_accuracy"] > 0.9
    assert results["storage_bytes_per_task"] >= agnostic["bytes_per_task"]
    plain = _run(tmp_path, "sgd", tiny_benchmark, export=False)
    assert "task_agnostic" not in plain["extra"]


@pytest.mark.heavy
def test_inferred_export_reproduces_the_task_agnostic_row(tmp_path):
    """`export/inferred`, loaded in a process that never imports cl_zoo,
    gives the accuracies of `extra.task_agnostic`'s last row."""
    try:
        mnist.load_mnist()
    except benchmarks.DataUnavailableError as e:
        pytest.skip(f"real MNIST unavailable: {e}")
    config = resolve_config(get_method("bd_ewc"), "split_mnist", {
        "epochs": 1, "hidden_units": (64,), "bias_hidden": 8,
        "eval_examples": 300, "verbose": 0,
        "model_dir": str(tmp_path / "run")})
    results = train_lib.ContinualRun(config).run()
    bm = benchmarks.get_benchmark("split_mnist")
    arrays = {}
    for t in range(bm.num_tasks):
        x, y = bm.test_arrays(t)
        arrays[f"x{t}"], arrays[f"y{t}"] = x[:300], y[:300]
    np.savez(tmp_path / "test.npz", **arrays)
    script = (
        "import json, sys\n"
        "import numpy as np, tensorflow as tf\n"
        "served = tf.saved_model.load(sys.argv[1])\n"
        "data = np.load(sys.argv[2])\n"
        "row = []\n"
        "for t in range(5):\n"
        "    out = served.signatures['serving_default'](\n"
        "        x=tf.constant(data[f'x{t}']))\n"
        "    pred = np.argmax(out['scores'].numpy(), -1)\n"
        "    row.append(float((pred == data[f'y{t}']).mean()))\n"
        "assert 'cl_zoo' not in sys.modules\n"
        "print(json.dumps(row))\n")
    proc = subprocess.run(
        [sys.executable, "-c", script,
         str(tmp_path / "run" / "export" / "inferred"),
         str(tmp_path / "test.npz")],
        capture_output=True, text=True, timeout=300,
        cwd=str(tmp_path), env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = results["extra"]["task_agnostic"]["accuracy_matrix"][-1]
    np.testing.assert_allclose(row, expected, atol=1e-9)
