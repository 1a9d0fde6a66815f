"""What the speed work may not change: the runs' results.

The timings themselves live in `trainers/bench_vs_torch.py` and
`trainers.bench_step`, never in tests.
"""

import numpy as np
import pytest
import tensorflow as tf

from cl_zoo import train_lib
from cl_zoo.benchmarks.base import without_autotune
from cl_zoo.config import resolve_config
from cl_zoo.consolidation import fisher
from cl_zoo.consolidation.dense_path import DensePath
from cl_zoo.consolidation.per_example import per_example_terms, task_chunks
from cl_zoo.methods import get_method


def _config(tmp_path, method, name, benchmark="tiny", **overrides):
    values = {
        "model_dir": str(tmp_path / name),
        "hidden_units": (32, 32),
        "epochs": 2,
        "batch_size": 8,
        "lr": 0.01,
        "verbose": 0,
        "fisher_samples": 32,
        "eval_batch_size": 64,
        "export": False,
    }
    values.update(overrides)
    return resolve_config(get_method(method), benchmark, values,
                          skip_unread=True)


def _weights(run):
    return [np.asarray(v) for v in run.model.weights]


DGM = {"generator_units": (6, 4), "noise_dim": 8, "hidden_units": (16,),
       "batch_size": 16, "epochs": 1, "generator_capacity": 3.0}


@pytest.mark.heavy
@pytest.mark.parametrize("method", ["sgd", "ewc", "bd_ewc", "ad_ewc", "gem",
                                    "er", "spp", "lwf", "dgm"])
def test_steps_per_execution_gives_the_same_run(
        method, tmp_path, make_tiny_benchmark, make_class_incremental,
        monkeypatch):
    """Several steps per call of Keras's train function: bit-identical
    weights and accuracy matrices (a task of 30 steps ends mid-loop)."""
    if method == "dgm":
        benchmark = make_class_incremental()
        overrides = dict(DGM, benchmark="tiny_ci")
    else:
        benchmark = make_tiny_benchmark(per_class=120)
        overrides = {}
    runs = {}
    for steps in (1, train_lib.STEPS_PER_EXECUTION):
        monkeypatch.setattr(train_lib, "STEPS_PER_EXECUTION", steps)
        run = train_lib.ContinualRun(
            _config(tmp_path, method, f"spe{steps}", **overrides),
            benchmark=benchmark)
        assert run.model.steps_per_execution == steps
        results = run.run()
        runs[steps] = (results["accuracy_matrix"], _weights(run))
    (matrix_1, weights_1), (matrix_n, weights_n) = runs.values()
    assert matrix_1 == matrix_n
    for a, b in zip(weights_1, weights_n):
        np.testing.assert_array_equal(a, b)


def test_pipelines_run_without_autotune(make_tiny_benchmark):
    benchmark = make_tiny_benchmark()
    for dataset in (benchmark.train_dataset(0, 8),
                    benchmark.test_dataset(1, 8),
                    without_autotune(benchmark.train_dataset(2, 8))):
        assert dataset.options().autotune.enabled is False


def _built(method, benchmark, **overrides):
    config = resolve_config(get_method(method), "tiny", {
        "hidden_units": (16, 16), "model_dir": "/unused", **overrides},
        skip_unread=True)
    model = get_method(method).from_run_config(config, benchmark)
    model.build_for_inputs()
    model.compile(optimizer="adam")
    model.build_optimizers()
    model.begin_task(1, benchmark)
    return model


@pytest.mark.parametrize("method, overrides", [
    ("ewc", {}),
    ("ewc", {"head": "multi"}),
    ("ewc", {"head": "shared", "dropout": 0.3}),
    ("bd_ewc", {}),
    ("ad_ewc", {}),
    ("psp", {}),
    ("ewc", {"normalize": "standard"}),
])
def test_dense_path_equals_per_example_gradients(method, overrides,
                                                 tiny_benchmark):
    """The two-matmul squared gradients are the vectorized per-example
    ones, to float rounding, for every dense layer kind."""
    model = _built(method, tiny_benchmark, **overrides)
    variables = model.shared_trainable_variables()
    plan = DensePath.of(model, variables)
    assert plan is not None
    (inputs, y), = task_chunks(model, tiny_benchmark, 1, 24, 0).take(1)
    x, ids, y = inputs["x"], tf.cast(inputs["task"], tf.int32), tf.cast(
        y, tf.int32)
    fast = plan.sums(x, ids, fisher._log_likelihoods, y)
    slow = fisher._per_example_squared_grads(model, variables, x, ids, y)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=2e-5,
                                   atol=1e-6 * float(np.max(b)))
    # |g| sums, for label-free importances.
    fast = plan.sums(x, ids, fisher._log_likelihoods, y, term="abs")
    slow = per_example_terms(model, variables, x, ids, fisher._log_likelihood,
                             lambda g, v: tf.abs(g), extra=y)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=2e-5,
                                   atol=1e-6 * float(np.max(b)))


def test_dense_path_leaves_other_networks_to_the_vectorized_path(
        tiny_benchmark, make_tiny_benchmark):
    lenet = _built("ewc", make_tiny_benchmark(shape=(28, 28, 1), per_class=4),
                   architecture="lenet")
    assert DensePath.of(lenet, lenet.shared_trainable_variables()) is None
    model = _built("bd_ewc", tiny_benchmark)
    # The bias units' factors are no dense kernel or bias.
    assert DensePath.of(model, model.trainable_variables) is None


def test_threads_default_to_one_for_dense_networks_on_one_replica():
    def threads(method, **values):
        config = resolve_config(get_method(method), "split_mnist",
                                {"model_dir": "/unused", **values},
                                skip_unread=True)
        return train_lib.intra_op_threads(config)

    assert threads("ewc") == 1
    assert threads("bd_ewc", strategy="multi_worker_mirrored") == 1
    assert threads("ewc", strategy="mirrored", num_cpu_devices=2) == 0
    assert threads("ewc", architecture="lenet") == 0
    assert threads("dgm") == 0
    assert threads("ewc", threads=0) == 0
    assert threads("dgm", threads=3) == 3
