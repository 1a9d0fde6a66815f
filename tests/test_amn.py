"""AMN: MemoryNeuronDense, AD / AD+EWC, the shared head, the sigmoid loss."""

import keras
import numpy as np
import pytest

from cl_zoo import export as export_lib
from cl_zoo import train_lib
from cl_zoo.benchmarks.base import Benchmark
from cl_zoo.config import ConfigError, resolve_config
from cl_zoo.layers import MemoryNeuronDense, TaskHead
from cl_zoo.losses import SparseSigmoidCrossEntropy, make_loss
from cl_zoo.methods import get_method
from cl_zoo.methods.amn import AMN

EPS = 0.05


def _mnist_shaped_benchmark():
    """Two tasks of two classes in 28x28 images (LeNet needs that size)."""
    rng = np.random.default_rng(0)

    def pool(n):
        y = np.repeat(np.arange(4), n)
        x = rng.integers(0, 60, size=(len(y), 28, 28))
        for c in range(4):
            x[y == c, 7 * c:7 * c + 7] += 180
        return x.clip(0, 255).astype(np.uint8)[..., None], y

    return Benchmark("tiny28", train=pool(8), test=pool(4),
                     task_classes=[[0, 1], [2, 3]], num_classes=4)


def _x(n=4, d=5, seed=0):
    return np.random.default_rng(seed).random((n, d)).astype("float32")


# Layer ------------------------------------------------------------------
def test_contribution_is_the_tasks_units_times_weights():
    layer = MemoryNeuronDense(3, num_tasks=2, memory_units=4, seed=1)
    x = _x()
    ids = np.array([0, 1, 1, 0], "int32")
    out = keras.ops.convert_to_numpy(layer(x, ids))
    plain = x @ layer.kernel.numpy() + layer.bias.numpy()
    values, weights = layer.memory_values.numpy(), layer.memory_weights.numpy()
    by_hand = np.stack([values[t] @ weights[t] for t in ids])
    np.testing.assert_allclose(out, plain + by_hand, rtol=1e-5, atol=1e-6)
    assert not np.allclose(by_hand[0], by_hand[1])
    # Every task row is drawn on its own, not one row repeated.
    assert not np.allclose(values[0], values[1])
    assert not np.allclose(weights[0], weights[1])
    assert np.abs(values).max() <= 0.05
    limit = np.sqrt(6 / (4 + 3))
    assert np.abs(weights).max() <= limit
    assert layer.per_task_bytes() == 4 * (4 + 4 * 3)


def test_task_sizes_mask_padding_outputs():
    layer = MemoryNeuronDense(3, num_tasks=2, task_sizes=[3, 2])
    out = keras.ops.convert_to_numpy(
        layer(_x(), np.array([0, 1, 0, 1], "int32"))
    )
    assert np.all(out[[1, 3], 2] == -1e9)
    assert np.all(out[[0, 2]] > -1e8)


def test_layer_validation():
    with pytest.raises(ValueError, match="positive integer for `units`"):
        MemoryNeuronDense(0, num_tasks=2)
    with pytest.raises(ValueError, match="positive integer for `memory_"):
        MemoryNeuronDense(3, num_tasks=2, memory_units=0)
    with pytest.raises(ValueError, match="`task_sizes`"):
        MemoryNeuronDense(3, num_tasks=2, task_sizes=[3, 4])


def test_layer_config_round_trip_and_keras_file(tmp_path):
    layer = MemoryNeuronDense(3, 2, memory_units=4, activation="relu",
                              seed=7, task_sizes=[3, 2], name="m")
    clone = MemoryNeuronDense.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    x_in = keras.Input((5,))
    t_in = keras.Input((), dtype="int32")
    model = keras.Model([x_in, t_in], layer(x_in, t_in))
    layer.memory_values.assign(np.ones((2, 4), "float32"))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    t = np.array([0, 1, 1, 0], "int32")
    np.testing.assert_allclose(loaded.predict([_x(), t], verbose=0),
                               model.predict([_x(), t], verbose=0), rtol=1e-6)


# Methods ----------------------------------------------------------------
def _amn(name, benchmark, optimizer=None, **overrides):
    keras.utils.set_random_seed(0)
    cls = get_method(name)
    values = {"hidden_units": (8, 8), "fisher_samples": 16, "epsilon": EPS,
              "memory_units": 3, **overrides}
    config = resolve_config(cls, "tiny", values, skip_unread=True)
    model = cls.from_run_config(config, benchmark)
    model.build_for_inputs()
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.05),
        loss=make_loss(config.loss),
        metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
    )
    model.build_optimizers()
    return model


def _values(model):
    return [layer.memory_values.numpy().copy()
            for layer in model.memory_layers()]


def _one_step(model, benchmark, task):
    model.begin_task(task, benchmark)
    x, y = benchmark.train_arrays(task, head=model.label_mode, limit=16)
    before = _values(model)
    model.train_on_batch(x, y)
    return before, _values(model)


def test_sign_rule_moves_units_by_exactly_epsilon(tiny_benchmark):
    model = _amn("ad_ewc", tiny_benchmark)
    before, after = _one_step(model, tiny_benchmark, 1)
    for b, a in zip(before, after):
        step = np.abs(a - b)
        assert np.all(np.isclose(step, EPS) | np.isclose(step, 0.0))
        assert np.isclose(step[1], EPS).mean() > 0.5
        np.testing.assert_array_equal(a[[0, 2]], b[[0, 2]])


def test_gradient_ablation_moves_units_by_their_gradient(tiny_benchmark):
    model = _amn("ad_ewc", tiny_benchmark, memory_update="grad")
    assert not model.sign_rule.sign
    before, after = _one_step(model, tiny_benchmark, 0)
    steps = np.concatenate([np.abs(a - b)[0] for b, a in zip(before, after)])
    assert steps.max() > 0
    assert not np.all(np.isclose(steps, EPS) | np.isclose(steps, 0.0))


def _fit(model, benchmark, task, epochs=1):
    model.begin_task(task, benchmark)
    history = model.fit(model.train_dataset(task, benchmark, 16, seed=task),
                        epochs=epochs, verbose=0, shuffle=False)
    model.end_task(task, benchmark)
    return history


def test_other_tasks_rows_are_untouched(tiny_benchmark):
    # Adam, whose slots are reset at each task, must not move them either.
    model = _amn("ad_ewc", tiny_benchmark, memory_update="grad",
                 optimizer=keras.optimizers.Adam(1e-2))
    _fit(model, tiny_benchmark, 0)
    tables = [v.numpy().copy() for v in model.memory_variables()]
    _fit(model, tiny_benchmark, 1)
    for old, v in zip(tables, model.memory_variables()):
        new = v.numpy()
        np.testing.assert_array_equal(old[[0, 2]], new[[0, 2]])
        assert not np.allclose(old[1], new[1])


def test_ad_freezes_normal_weights_after_the_first_task(tiny_benchmark):
    model = _amn("ad", tiny_benchmark, optimizer=keras.optimizers.Adam(1e-2))
    assert model.consolidation is None
    normal = model.shared_trainable_variables()
    assert {id(v) for v in model.frozen_variables()} == {
        id(v) for v in normal
    }
    first = [v.numpy().copy() for v in normal]
    _fit(model, tiny_benchmark, 0)
    assert not all(np.allclose(a, v.numpy()) for a, v in zip(first, normal))
    after_first = [v.numpy().copy() for v in normal]
    memory = [v.numpy().copy() for v in model.memory_variables()]
    _fit(model, tiny_benchmark, 1)
    for a, v in zip(after_first, normal):
        np.testing.assert_array_equal(a, v.numpy())
    for m, v in zip(memory, model.memory_variables()):
        assert not np.allclose(m[1], v.numpy()[1])


def test_ad_with_task_heads_keeps_training_them(tiny_benchmark):
    model = _amn("ad", tiny_benchmark, head="multi")
    assert isinstance(model.head, TaskHead)
    _fit(model, tiny_benchmark, 0)
    head = model.head.kernel.numpy().copy()
    _fit(model, tiny_benchmark, 1)
    assert not np.allclose(head, model.head.kernel.numpy())
    assert model.storage_bytes_per_task() == (
        2 * 4 * (3 + 3 * 8) + 4 * (8 + 1) * 2
    )


def test_ad_ewc_protects_normal_weights_only(tiny_benchmark):
    model = _amn("ad_ewc", tiny_benchmark)
    protected = {id(v) for v in model.consolidation.params}
    memory = {id(v) for v in model.memory_variables()}
    assert protected and not protected & memory
    assert len(memory) == 2 * 3  # two hidden layers and the head
    kernels = {id(layer.kernel) for layer in model.memory_layers()}
    assert kernels <= protected
    assert model.frozen_variables() == []  # an MLP: no conv layers


@pytest.mark.parametrize("name", ["ad", "ad_ewc"])
def test_method_trains_and_round_trips(name, tiny_benchmark, tmp_path,
                                       assert_round_trips):
    model = _amn(name, tiny_benchmark)
    for task in range(2):
        history = _fit(model, tiny_benchmark, task)
        assert np.isfinite(history.history["loss"][-1])
    x, _ = tiny_benchmark.test_arrays(1)
    assert_round_trips(model, x, str(tmp_path / f"{name}.keras"))


def test_storage_is_units_and_weights_per_task():
    config = resolve_config(get_method("ad_ewc"), "disjoint_mnist", {})
    assert config.hidden_units == (300,) * 5 and config.epochs == 20
    assert config.memory_units == 9 and config.head == "shared"
    assert config.consolidation == "ewc" and config.memory_update == "sign"
    assert (config.epsilon, config.ewc_lambda, config.lr) == (0.1, 1000.0,
                                                              1e-4)
    assert resolve_config(get_method("ad"), "disjoint_mnist", {}).epsilon == 0.1
    model = AMN(
        input_shape=(28, 28, 1), num_classes=10,
        task_classes=[[0, 1, 2], [4, 5, 6], [7, 8, 9]],
        hidden_units=config.hidden_units, memory_units=9,
    )
    model.build_for_inputs()
    assert model.storage_bytes_per_task() == 4 * (
        5 * (9 + 9 * 300) + (9 + 9 * 10)
    )


@pytest.mark.heavy
def test_lenet_memory_layers_and_frozen_conv():
    bm = _mnist_shaped_benchmark()
    model = _amn("ad_ewc", bm, architecture="lenet", hidden_units=(8, 8))
    convs = [v for layer in model.feature_layers
             for v in layer.trainable_variables]
    assert len(convs) == 4
    assert {id(v) for v in model.frozen_variables()} == {id(v) for v in convs}
    assert len(model.memory_layers()) == 3
    _fit(model, bm, 0)
    before = [v.numpy().copy() for v in convs]
    _fit(model, bm, 1)
    for b, v in zip(before, convs):
        np.testing.assert_array_equal(b, v.numpy())


# Shared head --------------------------------------------------------------
def test_task_head_shared_mode():
    head = TaskHead("shared", 6, [3, 2])
    out = keras.ops.convert_to_numpy(
        head(_x(), np.array([0, 1, 0, 1], "int32"))
    )
    assert out.shape == (4, 3) and head.kernel.shape == (5, 3)
    assert np.all(out[[1, 3], 2] == -1e9)
    assert head.per_task_bytes() == 0
    clone = TaskHead.from_config(head.get_config())
    assert clone.get_config() == head.get_config()


def test_shared_head_amn_trains_on_local_labels(tiny_benchmark):
    model = _amn("ad_ewc", tiny_benchmark, head="shared")
    assert model.label_mode == "multi"
    assert isinstance(model.head, MemoryNeuronDense)
    assert model.head.units == max(len(c) for c in tiny_benchmark.task_classes)
    _, y = next(iter(model.train_dataset(2, tiny_benchmark, 16)))
    assert set(np.unique(y.numpy())) <= {0, 1}
    for task in range(2):
        _fit(model, tiny_benchmark, task, epochs=6)
    model.task.assign(1)
    x, y = tiny_benchmark.test_arrays(1, head=model.label_mode)
    pred = np.argmax(model.predict(x, verbose=0), axis=-1)
    assert np.mean(pred == y) > 0.85


def test_config_checks_memory_loss_and_head():
    cls = get_method("ad")
    config = resolve_config(cls, "tiny", {"head": "shared", "loss": "sigmoid"})
    assert config.head == "shared" and config.loss == "sigmoid"
    for key, value in [("memory_units", 0), ("memory_update", "fgsm"),
                       ("loss", "hinge"), ("head", "both")]:
        with pytest.raises(ConfigError, match=f"--{key}={value}"):
            resolve_config(cls, "tiny", {key: value})


# Sigmoid loss ---------------------------------------------------------------
def test_sigmoid_loss_matches_a_hand_computation():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -1e9]], "float32")
    labels = np.array([2, 0])
    targets = np.eye(3)[labels]
    p = 1 / (1 + np.exp(-logits[:, :2].astype("float64")))
    bce = -(targets[:, :2] * np.log(p) + (1 - targets[:, :2]) * np.log(1 - p))
    # Example 0 has 3 real classes; example 1 a padding class (logit -1e9,
    # target 0) that adds 0 to the sum but counts in the class mean.
    first = (bce[0].sum() + np.log1p(np.exp(-0.5))) / 3
    second = bce[1].sum() / 3
    expected = (first + second) / 2
    loss = SparseSigmoidCrossEntropy()(labels, logits)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert isinstance(make_loss("softmax"),
                      keras.losses.SparseCategoricalCrossentropy)
    clone = SparseSigmoidCrossEntropy.from_config(
        SparseSigmoidCrossEntropy().get_config()
    )
    assert isinstance(clone, SparseSigmoidCrossEntropy)


@pytest.mark.heavy
def test_run_with_sigmoid_loss_and_shared_head(tmp_path, tiny_benchmark):
    config = resolve_config(get_method("ad_ewc"), "tiny", {
        "model_dir": str(tmp_path / "run"), "hidden_units": (16,),
        "epochs": 2, "batch_size": 16, "lr": 0.01, "verbose": 0,
        "fisher_samples": 16, "eval_batch_size": 64, "export": False,
        "head": "shared", "loss": "sigmoid", "memory_units": 3,
        "epsilon": EPS,
    })
    run = train_lib.ContinualRun(config, benchmark=tiny_benchmark)
    assert isinstance(run.model.loss, SparseSigmoidCrossEntropy)
    results = run.run()
    assert np.all(np.diag(results["accuracy_matrix"]) > 0.6)
    # The per-task memory units and their weights, plus task inference's
    # statistics (a mean and 30 directions of 36 pixels).
    assert results["storage_bytes_per_task"] == 4 * (
        (3 + 3 * 16) + (3 + 3 * 2)
    ) + 4 * (30 + 1) * 36
    # The shared head's exports score each task's own classes.
    assert export_lib.task_widths(run.model) == [2, 2, 2]


@pytest.mark.heavy
def test_disjoint_cifar10_runs_end_to_end_on_mock_data(tmp_path, monkeypatch):
    """The AMN CIFAR protocol (LeNet, memory layers) through the trainer.

    Mock images and labels: this checks the pipeline, not the accuracy,
    which is not measured (tensorflow-datasets cannot download here).
    """
    import os

    import tensorflow_datasets as tfds

    from cl_zoo import benchmarks
    from cl_zoo.benchmarks import tfds_sets

    monkeypatch.setattr(tfds_sets, "_network_reachable", lambda name: True)
    with tfds.testing.mock_data(num_examples=300):
        bm = benchmarks.get_benchmark("disjoint_cifar10",
                                      data_dir=str(tmp_path / "data"))
    config = resolve_config(get_method("ad_ewc"), "disjoint_cifar10", {
        "model_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 16,
        "hidden_units": (16, 16), "fisher_samples": 16, "verbose": 0,
    })
    assert config.architecture == "lenet"
    results = train_lib.run(config, benchmark=bm)
    assert len(results["accuracy_matrix"]) == 3
    assert os.path.isfile(
        tmp_path / "run" / "export" / "all_tasks" / "saved_model.pb"
    )
