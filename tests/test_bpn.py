"""BPN: BiasUnitDense, the sign rule (also under MirroredStrategy), presets."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cl_zoo import export as export_lib
from cl_zoo.config import resolve_config
from cl_zoo.layers import BiasUnitDense, SuperpositionDense
from cl_zoo.methods import get_method
from cl_zoo.methods.bpn import BPN


def _x(n=4, d=5, seed=0):
    return np.random.default_rng(seed).random((n, d)).astype("float32")


def test_bias_unit_dense_live_frozen_and_modes():
    layer = BiasUnitDense(3, num_tasks=2, bias_hidden=4)
    x = _x()
    t0, t1 = np.zeros(4, "int32"), np.ones(4, "int32")
    plain = keras.ops.convert_to_numpy(layer(x, t0))
    layer.start_task(0)
    layer.factor_m.assign(np.ones((1, 4), "float32"))
    live = keras.ops.convert_to_numpy(layer(x, t0))
    bias = np.ones((1, 4)) @ layer.factor_w.numpy()
    np.testing.assert_allclose(live, plain + bias, rtol=1e-5)
    # Task 1 has no bias yet: its examples do not see task 0's live units.
    np.testing.assert_allclose(layer(x, t1), plain, rtol=1e-6)
    layer.freeze_task(0)
    np.testing.assert_allclose(layer.frozen_bias(0), bias[0], rtol=1e-6)
    np.testing.assert_allclose(layer(x, t0), live, rtol=1e-5)
    # New factors for task 1 leave task 0's frozen row alone.
    layer.start_task(1)
    layer.factor_m.assign(np.full((1, 4), -2.0, "float32"))
    np.testing.assert_allclose(layer(x, t0), live, rtol=1e-5)
    assert not np.allclose(layer(x, t1), live)
    assert np.all(layer.factor_w.numpy() != 0)
    assert layer.per_task_bytes() == 4 * 3


def test_bias_unit_dense_validation():
    with pytest.raises(ValueError, match="positive integer for `bias_hidden`"):
        BiasUnitDense(3, num_tasks=2, bias_hidden=0)
    with pytest.raises(ValueError, match="positive integer for `units`"):
        BiasUnitDense(0, num_tasks=2)


def test_superposition_keys_are_binary_and_differ_per_task():
    layer = SuperpositionDense(3, num_tasks=2, key_seed=4)
    out0 = layer(_x(), np.zeros(4, "int32"))
    out1 = layer(_x(), np.ones(4, "int32"))
    keys = layer.keys.numpy()
    assert set(np.unique(keys)) == {-1.0, 1.0}
    assert not np.array_equal(keys[0], keys[1])
    assert not np.allclose(out0, out1)
    assert layer.per_task_bytes() == 4 * 5


@pytest.mark.parametrize(
    "layer",
    [
        BiasUnitDense(3, 2, bias_hidden=4, activation="relu",
                      superposition=True, key_seed=3, name="b"),
        SuperpositionDense(3, 2, key_seed=1, name="s"),
    ],
)
def test_layer_config_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_bias_unit_keras_file_keeps_frozen_rows(tmp_path):
    x_in = keras.Input((5,))
    t_in = keras.Input((), dtype="int32")
    out = BiasUnitDense(3, num_tasks=2, bias_hidden=4, name="b")(x_in, t_in)
    model = keras.Model([x_in, t_in], out)
    layer = model.get_layer("b")
    layer.start_task(1)
    layer.factor_m.assign(np.ones((1, 4), "float32"))
    layer.freeze_task(1)
    path = str(tmp_path / "b.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    t = np.ones(4, "int32")
    np.testing.assert_allclose(loaded.predict([_x(), t], verbose=0),
                               model.predict([_x(), t], verbose=0), rtol=1e-6)


def _bpn(name, benchmark, **overrides):
    keras.utils.set_random_seed(0)
    cls = get_method(name)
    values = {"hidden_units": (8, 8), "fisher_samples": 16, "epsilon": 0.05,
              "bias_hidden": 4, **overrides}
    config = resolve_config(cls, "tiny", values, skip_unread=True)
    model = cls.from_run_config(config, benchmark)
    model.build_for_inputs()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.build_optimizers()
    return model


def _one_step(model, benchmark, task=0):
    model.begin_task(task, benchmark)
    x, y = benchmark.train_arrays(task, limit=16)
    before = [layer.factor_m.numpy().copy()
              for layer in model.bias_unit_layers()]
    model.train_on_batch(x, y)
    after = [layer.factor_m.numpy() for layer in model.bias_unit_layers()]
    return before, after


def test_sign_rule_moves_m_by_exactly_epsilon(tiny_benchmark):
    model = _bpn("bd_ewc", tiny_benchmark)
    before, after = _one_step(model, tiny_benchmark)
    for b, a in zip(before, after):
        step = np.abs(a - b)
        assert np.all(np.isclose(step, 0.05) | np.isclose(step, 0.0))
        assert np.isclose(step, 0.05).mean() > 0.5


def test_gradient_ablation_moves_m_by_eps_times_its_gradient(tiny_benchmark):
    model = _bpn("gd_ewc", tiny_benchmark)
    assert not model.sign_rule.sign
    model.begin_task(0, tiny_benchmark)
    x, y = tiny_benchmark.train_arrays(0, limit=16)
    layers = model.bias_unit_layers()
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
    grads = tape.gradient(loss, [layer.factor_m for layer in layers])
    before = [layer.factor_m.numpy().copy() for layer in layers]
    model.train_on_batch(x, y)
    for b, g, layer in zip(before, grads, layers):
        np.testing.assert_allclose(layer.factor_m.numpy(),
                                   b - 0.05 * g.numpy(), rtol=1e-4,
                                   atol=1e-7)


def test_ewc_protects_normal_weights_only(tiny_benchmark):
    model = _bpn("bd_ewc", tiny_benchmark)
    protected = {id(v) for v in model.consolidation.params}
    factors = {id(v) for v in model.factor_variables()}
    assert protected and not protected & factors
    assert {id(layer.kernel) for layer in model.hidden_layers} <= protected


def test_sign_after_all_reduce_matches_one_device(tiny_benchmark,
                                                  mirrored_strategy):
    """Two replicas give the same M update as one device on the same batch."""
    x, y = tiny_benchmark.train_arrays(0, limit=16)
    results = []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy):
        with strategy.scope():
            model = _bpn("bd_ewc", tiny_benchmark)
        model.begin_task(0, tiny_benchmark)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        for _ in range(3):
            model.fit(ds, epochs=1, verbose=0, shuffle=False)
        results.append(
            [layer.factor_m.numpy() for layer in model.bias_unit_layers()]
            + [v.numpy() for v in model.shared_trainable_variables()]
        )
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bd_ewc_trains_and_modes_differ_in_export(tiny_benchmark, tmp_path):
    model = _bpn("bd_ewc", tiny_benchmark)
    for task in range(2):
        model.begin_task(task, tiny_benchmark)
        model.fit(model.train_dataset(task, tiny_benchmark, 16), epochs=3,
                  verbose=0, shuffle=False)
        model.end_task(task, tiny_benchmark)
    for layer in model.bias_unit_layers():
        rows = layer.bias_table.numpy()
        assert np.linalg.norm(rows[0]) > 0 and np.linalg.norm(rows[1]) > 0
        assert not np.allclose(rows[0], rows[1])
        assert np.all(rows[2] == 0)  # not trained yet
    export_lib.export_all_tasks(model, str(tmp_path / "all"))
    serve = tf.saved_model.load(str(tmp_path / "all"))
    fn = serve.signatures["serving_default"]
    x, _ = tiny_benchmark.test_arrays(0)
    s0 = fn(x=tf.constant(x), task_id=tf.constant(0))["scores"].numpy()
    s1 = fn(x=tf.constant(x), task_id=tf.constant(1))["scores"].numpy()
    assert not np.allclose(s0, s1)
    model.task.assign(1)
    np.testing.assert_allclose(s1, tf.nn.softmax(model(x)).numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["bd_ewc", "gd_ewc", "bd_psp", "psp"])
def test_presets_round_trip(name, tiny_benchmark, tmp_path,
                            assert_round_trips):
    model = _bpn(name, tiny_benchmark)
    x, _ = tiny_benchmark.test_arrays(1)
    assert_round_trips(model, x, str(tmp_path / f"{name}.keras"))


def test_storage_is_the_frozen_rows(tiny_benchmark):
    split = resolve_config(get_method("bd_ewc"), "split_mnist", {})
    # The swept defaults of docs/RESULTS.md; a flag the user sets wins.
    assert (split.epsilon, split.lr, split.ewc_lambda) == (0.1, 3e-4, 1000.0)
    assert split.fisher_normalize == "max" and split.bias_hidden == 25
    assert resolve_config(get_method("bd_psp"), "split_mnist",
                          {}).bias_hidden == 200
    assert resolve_config(get_method("gd_ewc"), "split_mnist", {}).lr == 3e-4
    assert resolve_config(get_method("bd_psp"), "split_mnist", {}).lr == 1e-3
    for name in ("psp", "bd_psp"):
        permuted = resolve_config(get_method(name), "permuted_mnist", {})
        assert permuted.lr == 1e-4
    assert resolve_config(get_method("bd_psp"), "permuted_mnist",
                          {}).epsilon == 0.01
    assert resolve_config(
        get_method("bd_ewc"), "split_mnist", {"lr": 1e-3}
    ).lr == 1e-3
    model = BPN(
        input_shape=(28, 28, 1), num_classes=10,
        task_classes=[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
        hidden_units=split.hidden_units, bias_hidden=split.bias_hidden,
    )
    model.build_for_inputs()
    # 5 hidden layers of 300 and the 10-way head: K floats each per task.
    assert model.storage_bytes_per_task() == 4 * (5 * 300 + 10)
    last = BPN(
        input_shape=(28, 28, 1), num_classes=10,
        task_classes=[[0, 1], [2, 3]], hidden_units=(200, 200),
        bias_layers="last",
    )
    last.build_for_inputs()
    assert [layer.name for layer in last.bias_unit_layers()] == [
        "bias_dense_1"
    ]
    assert last.storage_bytes_per_task() == 4 * 200


@pytest.mark.parametrize("name", ["bd_ewc", "psp"])
@pytest.mark.parametrize("head", ["multi", "shared"])
def test_task_heads_replace_the_keyed_head(name, head, tiny_benchmark):
    model = _bpn(name, tiny_benchmark, head=head)
    x, _ = tiny_benchmark.test_arrays(0)
    assert model.predict(x, verbose=0).shape == (len(x), 2)
    assert model.label_mode == "multi"
