"""Every registered method: one fit on tiny data, serialization, task hooks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cl_zoo import methods
from cl_zoo.config import RunConfig, resolve_config
from cl_zoo.methods import get_method, method_names
from cl_zoo.methods.base import ContinualModel

FOUNDATION_METHODS = (
    "sgd", "finetune", "sgd_freeze", "joint", "stl", "ewc", "online_ewc",
)
# The SPP paper's comparison points (gem has its own tests).
IMPORTANCE_METHODS = ("spp", "si", "mas", "lwf")


def build(name, benchmark, **overrides):
    keras.utils.set_random_seed(0)
    cls = get_method(name)
    overrides = {"hidden_units": (32, 32), "fisher_samples": 32, **overrides}
    config = resolve_config(cls, benchmark.name, overrides,
                            skip_unread=True)
    model = cls.from_run_config(config, benchmark)
    model.build_for_inputs()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
    )
    model.build_optimizers()
    return model


def train_task(model, benchmark, task, epochs=2):
    model.begin_task(task, benchmark)
    ds = model.train_dataset(task, benchmark, batch_size=16, seed=task)
    history = model.fit(ds, epochs=epochs, verbose=0, shuffle=False)
    model.end_task(task, benchmark)
    return history


def test_foundation_methods_are_registered():
    assert set(FOUNDATION_METHODS) <= set(method_names())


def test_unknown_method_lists_names():
    with pytest.raises(methods.UnknownMethodError, match="expected one of:.*"
                       "ewc"):
        get_method("nope")


@pytest.mark.parametrize("name", FOUNDATION_METHODS + IMPORTANCE_METHODS)
def test_method_learns_each_task(name, tiny_benchmark):
    model = build(name, tiny_benchmark)
    for task in range(2):
        history = train_task(model, tiny_benchmark, task, epochs=8)
        assert np.isfinite(history.history["loss"][-1])
    model.task.assign(1)
    x, y = tiny_benchmark.test_arrays(1, head=model.label_mode)
    pred = np.argmax(model.predict(x, verbose=0), axis=-1)
    assert np.mean(pred == y) > 0.85


def _small_benchmark(name, tiny_benchmark, make_class_incremental):
    """The tiny benchmark, or for dgm (class-incremental images whose side
    halves per generator layer) its own one-class-per-task set."""
    if name != "dgm":
        return tiny_benchmark, {}
    return make_class_incremental(), {
        "generator_units": (6, 4), "noise_dim": 8,
        "generator_capacity": (3.0,), "batch_size": 16,
    }


@pytest.mark.parametrize("name", method_names())
def test_every_method_fits_and_round_trips(name, tiny_benchmark, tmp_path,
                                           assert_round_trips,
                                           make_class_incremental):
    """Every registered method (found by discovery, none listed here): one
    fit of two tasks, then `get_config`/`from_config` and `.keras`."""
    benchmark, extra = _small_benchmark(name, tiny_benchmark,
                                        make_class_incremental)
    model = build(name, benchmark, **extra)
    for task in range(2):
        history = train_task(model, benchmark, task, epochs=1)
        assert all(np.isfinite(v[-1]) for v in history.history.values())
    x, _ = benchmark.test_arrays(1, head=model.label_mode)
    loaded = assert_round_trips(model, x, str(tmp_path / f"{name}.keras"))
    assert isinstance(loaded, ContinualModel)
    assert type(loaded) is get_method(name)


@pytest.mark.parametrize("name", method_names())
def test_method_defaults_are_settings_it_reads(name):
    """A method's per-benchmark defaults name only settings its run reads
    (a value for another would be dropped without a word), and its own
    settings are declared once, with a type and a help line."""
    from cl_zoo.benchmarks import BENCHMARKS
    from cl_zoo.config import applicable_settings

    cls = get_method(name)
    for benchmark in BENCHMARKS:
        for preset in (cls.default_config(benchmark),
                       cls.fast_config(benchmark)):
            reads = applicable_settings(
                cls, cls.default_config(benchmark).get(
                    "consolidation", "none"))
            assert set(preset) <= set(reads), (benchmark, preset)
    for setting in cls.settings():
        assert setting.help and setting.name.isidentifier()
        setting.check(setting.normalize(setting.default))


def test_task_switch_does_not_retrace(tiny_benchmark):
    model = build("finetune", tiny_benchmark)
    x = tf.random.uniform((4, *tiny_benchmark.input_shape))

    @tf.function
    def forward(x):
        return model(x)

    a = forward(x)
    model.task.assign(2)
    b = forward(x)
    assert forward.experimental_get_tracing_count() == 1
    assert not np.allclose(a, b)  # another head answered


def test_train_function_survives_task_switch(tiny_benchmark):
    model = build("ewc", tiny_benchmark)
    train_task(model, tiny_benchmark, 0, epochs=1)
    fn = model.train_function
    train_task(model, tiny_benchmark, 1, epochs=1)
    assert model.train_function is fn


def test_sgd_freeze_keeps_shared_layers_after_task_one(tiny_benchmark):
    model = build("sgd_freeze", tiny_benchmark)
    train_task(model, tiny_benchmark, 0, epochs=1)
    before = [v.numpy().copy() for v in model.hidden_layers[0].weights]
    head_before = model.head.kernel.numpy().copy()
    train_task(model, tiny_benchmark, 1, epochs=1)
    for b, v in zip(before, model.hidden_layers[0].weights):
        np.testing.assert_array_equal(b, v.numpy())
    assert not np.allclose(head_before, model.head.kernel.numpy())


def test_stl_tasks_do_not_interfere(tiny_benchmark):
    model = build("stl", tiny_benchmark)
    train_task(model, tiny_benchmark, 0, epochs=1)
    model.task.assign(0)
    x, _ = tiny_benchmark.test_arrays(0, head="multi")
    before = model.predict(x, verbose=0)
    train_task(model, tiny_benchmark, 1, epochs=2)
    model.task.assign(0)
    np.testing.assert_array_equal(before, model.predict(x, verbose=0))
    assert model.storage_bytes_per_task() > 0


def test_begin_task_rejects_out_of_range(tiny_benchmark):
    model = build("sgd", tiny_benchmark)
    with pytest.raises(IndexError, match=r"0 <= task < 3"):
        model.begin_task(3)


def test_wrong_input_shape_is_a_clear_error(tiny_benchmark):
    model = build("sgd", tiny_benchmark)
    with pytest.raises(ValueError, match=r"Expected inputs of shape"):
        model(np.zeros((2, 7, 7, 1), "float32"))


def test_joint_trains_on_union_with_task_ids(tiny_benchmark):
    model = build("joint", tiny_benchmark, head="multi")
    ds = model.train_dataset(1, tiny_benchmark, batch_size=8)
    inputs, y = next(iter(ds))
    assert set(inputs) == {"x", "task"}
    seen = set()
    for inputs, _ in ds:
        seen |= set(inputs["task"].numpy().tolist())
    assert seen == {0, 1}


def test_resolve_config_layers_defaults():
    config = resolve_config(get_method("finetune"), "split_mnist", {})
    assert config.head == "multi"
    assert config.hidden_units == (300,) * 5 and config.epochs == 5
    config = resolve_config(get_method("ewc"), "permuted_mnist",
                            {"epochs": 3})
    assert config.hidden_units == (128,) * 4 and config.epochs == 3
    assert isinstance(config, RunConfig)
