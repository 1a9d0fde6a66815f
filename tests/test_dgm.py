"""DGM: masked generator layers, frozen old tasks, growth, the GAN's
train_step on one and two replicas, a whole run with its exports."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging

from cl_zoo import train_lib
from cl_zoo.augment import jitter
from cl_zoo.benchmarks.base import Benchmark
from cl_zoo.config import ConfigError, resolve_config
from cl_zoo.confusion import format_matrix, run_confusion
from cl_zoo.layers.masked import MaskedConv2DTranspose, MaskedDense
from cl_zoo.methods import get_method
from cl_zoo.plots import confusion_png


@pytest.fixture(scope="module")
def ci_benchmark(make_class_incremental):
    return make_class_incremental()


def _config(**overrides):
    values = {
        "generator_units": (6, 4), "noise_dim": 8, "hidden_units": (16,),
        "batch_size": 16, "epochs": 1, "generator_capacity": 3.0,
        **overrides,
    }
    return resolve_config(get_method("dgm"), "tiny_ci", values)


def _build(benchmark, **overrides):
    keras.utils.set_random_seed(1)
    config = _config(**overrides)
    model = get_method("dgm").from_run_config(config, benchmark)
    model.build_for_inputs()
    model.compile(optimizer=train_lib.make_optimizer(config))
    model.build_optimizers()
    return model


def _train_task(model, benchmark, task, steps=4):
    model.begin_task(task, benchmark)
    data = model.train_dataset(task, benchmark, 16, seed=task).repeat()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0,
              shuffle=False)
    model.end_task(task, benchmark)


def _samples(model, labels, seed=5):
    noise = tf.random.stateless_normal((len(labels), model.noise_dim),
                                       seed=[seed, 1])
    return model.generate(np.asarray(labels, np.int32), noise).numpy()


# Layers ---------------------------------------------------------------------
def test_gates_follow_the_task_and_binarise(ci_benchmark):
    layer = MaskedDense(4, num_tasks=3, capacity=6, activation="relu")
    layer.build((None, 5))
    assert layer.kernel.shape == (5, 6)
    layer.embedding.assign(np.array([
        [1.0, -1.0, 2.0, -0.5, 3.0, 3.0],  # units 4, 5 are spare (inactive)
        [-1.0, 1.0, -1.0, 1.0, 0.0, 0.0],
        np.zeros(6),
    ], np.float32))
    soft = layer.soft_gate(0, 1e4).numpy()
    np.testing.assert_array_equal(soft, [1, 0, 1, 0, 0, 0])
    assert layer.finish_task(0) == 2  # units 0 and 2, new
    assert layer.finish_task(1) == 2  # units 1 and 3, new
    np.testing.assert_array_equal(layer.cumulative.numpy(), [1, 1, 1, 1, 0, 0])
    gates = layer.gates(np.array([1, 0, 1], np.int32)).numpy()
    np.testing.assert_array_equal(gates[1], [1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(gates[0], [0, 1, 0, 1, 0, 0])
    assert layer.grow(5) == 2 and int(layer.active.numpy()) == 6
    # Once everything is reserved, weights reading reserved inputs into
    # reserved units are frozen; the HAT rule leaves the rest trainable.
    rules = layer.gradient_multipliers(
        tf.constant([1.0, 0, 1, 0, 0]), s=1.0, s_max=1.0)
    kernel_gate = rules[id(layer.kernel)].numpy()
    assert kernel_gate.shape == (5, 6)
    np.testing.assert_array_equal(kernel_gate[0], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(kernel_gate[1], [1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(rules[id(layer.bias)].numpy(),
                                  [0, 0, 0, 0, 1, 1])


@pytest.mark.parametrize("anneal", ["step", "epoch"])
def test_gate_scale_follows_the_anneal_schedule(ci_benchmark, anneal):
    """step: s linear in the task's steps; epoch (the paper's): constant
    within each epoch, 1/s_max + (s_max - 1/s_max) * i / I."""
    model = _build(ci_benchmark, s_anneal=anneal, epochs=3, s_max=100.0)
    model.begin_task(0, ci_benchmark)
    model.train_dataset(0, ci_benchmark, 16)  # 3 steps per epoch
    low = 1 / 100.0
    scales = []
    for step in range(10):
        model.optimizer.iterations.assign(step)
        scales.append(float(model.gate_scale()))
    if anneal == "step":
        expected = [low + (100 - low) * min(k / 8, 1.0) for k in range(10)]
    else:
        expected = [low + (100 - low) * min(k // 3 / 3, 1.0)
                    for k in range(10)]
    np.testing.assert_allclose(scales, expected, rtol=1e-5)
    with pytest.raises(ConfigError, match="s_anneal"):
        _config(s_anneal="batch")


def test_masked_conv_round_trips_and_counts():
    layer = MaskedConv2DTranspose(3, num_tasks=2, capacity=5, kernel_size=4,
                                  strides=2, name="up")
    clone = MaskedConv2DTranspose.from_config(layer.get_config())
    assert (clone.capacity, clone.kernel_size, clone.padding) == (5, 4, "same")
    y = layer(tf.ones((2, 3, 3, 7)), tf.constant([0, 1]), current_task=0,
              s=1.0)
    assert y.shape == (2, 6, 6, 5)
    # Task 1 has no mask yet (all zero) and spare units are off.
    assert float(tf.reduce_max(tf.abs(y[1]))) == 0.0
    assert float(tf.reduce_max(tf.abs(y[0, ..., 3:]))) == 0.0
    with pytest.raises(ValueError, match="capacity >= units"):
        MaskedDense(4, num_tasks=2, capacity=2)


@pytest.mark.parametrize("first", [True, False])
def test_masked_conv_computes_active_units_as_the_whole_kernel(first):
    """Only the active units are computed (compact), and the projection
    from one pixel is a matrix product: the same outputs, to float
    rounding, as conv2d_transpose over the whole capacity."""
    size, kernel, strides, padding = ((1, 7, 1, "valid") if first
                                      else (5, 4, 2, "same"))
    layer = MaskedConv2DTranspose(3, num_tasks=2, capacity=8,
                                  kernel_size=kernel, strides=strides,
                                  padding=padding, activation="relu")
    layer.build((None, size, size, 6))
    layer.bias.assign(np.linspace(-0.5, 0.5, 8).astype(np.float32))
    layer.embedding.assign(np.float32([[1, -1, 2, 9, 9, 9, 9, 9],
                                       np.zeros(8)]))
    x = tf.random.stateless_uniform((4, size, size, 6), seed=[3, 4])
    ids = tf.constant([0, 1, 0, 1])
    side = kernel if first else size * strides
    out = [4, side, side, 8]
    full = tf.nn.conv2d_transpose(x, layer.kernel, out, strides,
                                  padding=padding.upper())
    gates = layer.gates(ids, current_task=0, s=2.0)[:, None, None, :]
    expected = tf.nn.relu(full + layer.bias) * gates
    y = layer(x, ids, current_task=0, s=2.0)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert not np.any(y.numpy()[..., 3:])  # spare units: exact zeros
    compact = layer(x, ids, current_task=0, s=2.0, compact=True)
    assert compact.shape[-1] == 3
    np.testing.assert_array_equal(compact, y[..., :3])
    # A compact input (the previous layer's first 4 units; the rest are
    # zeros) reads the matching rows of the kernel only.
    narrow = x[..., :4]
    padded = tf.pad(narrow, [[0, 0], [0, 0], [0, 0], [0, 2]])
    np.testing.assert_allclose(layer(narrow, ids, current_task=0, s=2.0),
                               layer(padded, ids, current_task=0, s=2.0),
                               rtol=1e-5, atol=1e-6)


def test_train_step_is_traced_once_across_tasks_and_growth(ci_benchmark,
                                                           monkeypatch):
    """Growth changes the shapes the generator computes, but they are read
    from the layers' variables: one trace serves every task."""
    model = _build(ci_benchmark)
    traces = []
    step = type(model).train_step

    def counting(self, data):
        traces.append(1)
        return step(self, data)

    monkeypatch.setattr(type(model), "train_step", counting)
    for task in range(3):
        model.begin_task(task, ci_benchmark)
        for layer in model.generator.masked_layers:  # reserve, then grow
            e = layer.embedding.numpy()
            e[task, :int(layer.active.numpy())] = 1.0
            layer.embedding.assign(e)
        data = model.train_dataset(task, ci_benchmark, 16).repeat()
        model.fit(data, steps_per_epoch=2, epochs=1, verbose=0,
                  shuffle=False)
        model.end_task(task, ci_benchmark)
    assert [int(layer.active.numpy())
            for layer in model.generator.masked_layers] != [6, 4]
    assert len(traces) == 1


# Frozen old tasks and growth --------------------------------------------------
def test_new_task_leaves_old_generator_outputs_bit_identical(ci_benchmark):
    model = _build(ci_benchmark)
    _train_task(model, ci_benchmark, 0)
    before = _samples(model, [0, 0, 0])
    kernels = [v.numpy().copy() for v in model.generator.trainable_variables]
    for task in (1, 2):
        _train_task(model, ci_benchmark, task)
        np.testing.assert_array_equal(_samples(model, [0, 0, 0]), before)
    changed = [
        not np.array_equal(a, v.numpy())
        for a, v in zip(kernels, model.generator.trainable_variables)
    ]
    assert any(changed)  # the generator did learn the later tasks
    # ... and the classes differ: masks select different units.
    assert not np.allclose(_samples(model, [2, 2, 2]), before)


def test_growth_keeps_free_capacity_and_old_outputs(ci_benchmark):
    model = _build(ci_benchmark)
    layers = model.generator.masked_layers
    model.begin_task(0, ci_benchmark)
    data = model.train_dataset(0, ci_benchmark, 16).repeat()
    model.fit(data, steps_per_epoch=4, epochs=1, verbose=0, shuffle=False)
    for layer in layers:  # make sure the task reserves some units
        e = layer.embedding.numpy()
        e[0, :2] = 1.0
        layer.embedding.assign(e)
    before_masks = [layer.masks.numpy().copy() for layer in layers]
    model.end_task(0, ci_benchmark)
    out_after_growth = _samples(model, [0, 0])
    for layer, masks in zip(layers, before_masks):
        newly = int(layer.masks.numpy()[0].sum())
        assert newly >= 2
        # Free capacity is what it was: active - reserved = initial units.
        active = int(layer.active.numpy())
        assert active == layer.units + newly
        assert active - int(layer.cumulative.numpy().sum()) == layer.units
        # Old tasks' gates on the new units are off.
        assert not layer.masks.numpy()[0, layer.units:].any()
        del masks
    log = model.growth_log[-1]["layers"]
    assert log["project"]["grown"] == log["project"]["new"] >= 2
    # Outputs of task 0 do not depend on the spare units that growth
    # activated: change them and the samples stay bit for bit the same.
    for layer in layers:
        kernel = layer.kernel.numpy()
        kernel[..., layer.units:, :] += 1.0  # (k, k, out, in)
        layer.kernel.assign(kernel)
    np.testing.assert_array_equal(_samples(model, [0, 0]), out_after_growth)


def test_growth_stops_at_capacity_with_a_warning(ci_benchmark, monkeypatch):
    model = _build(ci_benchmark, generator_capacity=1.5)
    warnings = []
    monkeypatch.setattr(logging, "warning",
                        lambda msg, *args: warnings.append(msg % args))
    model.begin_task(0, ci_benchmark)
    for layer in model.generator.masked_layers:
        layer.embedding.assign(np.ones(layer.embedding.shape, np.float32))
    model.end_task(0, ci_benchmark)
    project = model.generator.masked_layers[0]
    assert int(project.active.numpy()) == project.capacity == 9
    assert warnings and "--generator_capacity" in warnings[0]


def test_capacity_per_layer(ci_benchmark):
    """One multiple for every layer, or one per layer (units 6 and 4)."""
    model = _build(ci_benchmark, generator_capacity=(2.0, 3.5))
    assert [layer.capacity for layer in model.generator.masked_layers] == [
        12, 14]
    assert model.get_config()["generator_capacity"] == [2.0, 3.5]
    assert _config(generator_capacity=2).generator_capacity == (2.0,)
    with pytest.raises(ConfigError, match="one per entry"):
        _config(generator_capacity=(2.0, 3.0, 4.0))


# Distribution ---------------------------------------------------------------
def _fixed(model, benchmark, task, steps=2):
    batches = list(model.train_dataset(task, benchmark, 16, seed=task)
                   .take(steps))
    stacked = tf.nest.map_structure(lambda *b: tf.stack(b), *batches)
    return tf.data.Dataset.from_tensor_slices(stacked)


def test_one_and_two_replicas_agree(ci_benchmark, mirrored_strategy):
    """The GAN's steps (noise, replay and its jitter, the classifier's
    dropout, gradient penalty, gates, masks) are the same on one replica
    and on two."""
    results = []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy):
        with strategy.scope():
            model = _build(ci_benchmark, classifier_dropout=0.3)
        for task in range(2):
            model.begin_task(task, ci_benchmark)
            model.fit(_fixed(model, ci_benchmark, task), epochs=2,
                      verbose=0, shuffle=False)
            model.end_task(task, ci_benchmark)
        state = [v.numpy() for v in model.variables]
        state += [v.numpy() for v in model.optimizer.variables]
        state += [v.numpy() for opt in model.extra_optimizers()
                  for v in opt.variables]
        results.append(state)
    assert len(results[0]) == len(results[1])
    for i, (a, b) in enumerate(zip(*results)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5,
                                   err_msg=str(i))


# Runs -----------------------------------------------------------------------
@pytest.mark.heavy
def test_run_writes_results_samples_and_generator_export(tmp_path,
                                                         ci_benchmark):
    config = _config(model_dir=str(tmp_path / "run"), epochs=2, verbose=0,
                     eval_batch_size=64)
    results = train_lib.run(config, benchmark=ci_benchmark)
    assert results["method"] == "dgm" and results["extra"]["head"] == "single"
    r = np.array(results["accuracy_matrix"])
    assert r.shape == (3, 3)
    assert np.all(r[np.triu_indices(3, 1)] == 0.0)  # unseen classes
    assert r[0, 0] == 1.0  # one class seen: nothing else to answer
    counts = results["extra"]["unit_counts"]
    assert [c["task"] for c in counts] == [0, 1, 2]
    assert set(counts[0]["layers"]) == {"project", "up_1"}
    for name in ("generated_task3.png", "dgm_units.png"):
        assert os.path.getsize(tmp_path / "run" / name) > 0
    generator = tf.saved_model.load(str(tmp_path / "run/export/generator"))
    serve = generator.signatures["serving_default"]
    images = serve(label=tf.constant([0, 2]),
                   noise=tf.zeros((2, 8)))["images"].numpy()
    assert images.shape == (2, 8, 8, 1)
    assert 0.0 <= images.min() and images.max() <= 1.0
    with pytest.raises(tf.errors.InvalidArgumentError, match="label must"):
        serve(label=tf.constant([3]), noise=tf.zeros((1, 8)))
    classifier = tf.saved_model.load(str(tmp_path / "run/export/task_2"))
    x, _ = ci_benchmark.test_arrays(2)
    scores = classifier.signatures["serving_default"](x=x[:4])["scores"]
    assert scores.shape == (4, 3)
    # The confusion matrix of the last export agrees with the accuracies.
    matrix, classes = run_confusion(str(tmp_path / "run"),
                                    benchmark=ci_benchmark)
    assert classes == [0, 1, 2]
    np.testing.assert_allclose(matrix.diagonal() / matrix.sum(axis=1),
                               r[2], rtol=1e-6)
    matrix, classes = run_confusion(str(tmp_path / "run"), after_task=2,
                                    benchmark=ci_benchmark)
    assert classes == [0, 1] and matrix.sum() == sum(
        len(ci_benchmark.test_arrays(t)[1]) for t in range(2))
    assert "errors" in format_matrix(matrix, classes)
    assert confusion_png(matrix, classes).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="trained tasks 1..3"):
        run_confusion(str(tmp_path / "run"), after_task=4,
                      benchmark=ci_benchmark)


def test_lr_decay_reaches_the_generator_optimizer(ci_benchmark):
    model = _build(ci_benchmark)
    decay = train_lib._LearningRateDecay(1e-3, 0.5)
    decay.set_model(model)
    decay.on_epoch_begin(3)
    for opt in (model.optimizer, model.generator_optimizer):
        assert float(opt.learning_rate) == pytest.approx(1.25e-4)


def test_a5_and_a10_weigh_classes_by_test_examples(make_class_incremental):
    bm = make_class_incremental(num_classes=10, side=8, per_class=4)
    matrix = [[0.0] * 10 for _ in range(10)]
    matrix[4][:5] = [1.0, 1.0, 1.0, 1.0, 0.0]
    matrix[9] = [0.5] * 10
    model = _build(bm)
    extra = model.extra_results(matrix, bm)
    assert extra["a5"] == pytest.approx(0.8)
    assert extra["a10"] == pytest.approx(0.5)


def test_bad_settings_are_refused(ci_benchmark, make_class_incremental):
    with pytest.raises(ConfigError, match="generator_capacity"):
        _config(generator_capacity=0.5)
    with pytest.raises(ConfigError, match="replay_per_class"):
        _config(replay_per_class=-1)
    with pytest.raises(ConfigError, match="replay_jitter"):
        _config(replay_jitter=-0.5)
    with pytest.raises(ConfigError, match="classifier_dropout"):
        _config(classifier_dropout=1.0)
    with pytest.raises(ConfigError, match="--head=multi is not allowed"):
        _config(head="multi")
    with pytest.raises(ValueError, match="head='single'"):
        get_method("dgm").from_run_config(
            _config().replace(head="multi"), ci_benchmark)
    flat = Benchmark(
        "flat", train=(np.zeros((4, 10), np.uint8), np.arange(4) % 2),
        test=(np.zeros((4, 10), np.uint8), np.arange(4) % 2),
        task_classes=[[0], [1]], num_classes=2,
    )
    with pytest.raises(ValueError, match=r"image inputs of shape \(H, W, C\)"):
        get_method("dgm").from_run_config(_config(), flat)
    odd = make_class_incremental(side=6)
    with pytest.raises(ValueError, match="divides by 4"):
        get_method("dgm").from_run_config(_config(), odd)


def _draws(shift_x=0.5, shift_y=0.5, angle=0.5, zoom=0.5, n=1):
    return np.tile(np.float32([[shift_x, shift_y, angle, zoom]]), (n, 1))


def test_jitter_moves_rotates_and_zooms_as_documented():
    image = np.zeros((1, 9, 9, 1), np.float32)
    image[0, 2, 4] = 1.0  # above the centre (4, 4)
    # Middle draws: no change.
    np.testing.assert_allclose(jitter(image, _draws(), 1.0), image,
                               atol=1e-6)
    # The largest shift to the right at strength s is 0.08 s of the side:
    # 2 pixels on a side of 9 at s = 2 / 0.72.
    moved = np.asarray(jitter(image, _draws(shift_x=1.0), 2 / 0.72))
    np.testing.assert_allclose(moved, np.roll(image, 2, axis=2), atol=1e-5)
    moved = np.asarray(jitter(image, _draws(shift_y=0.0), 2 / 0.72))
    np.testing.assert_allclose(moved, np.roll(image, -2, axis=1), atol=1e-5)
    # A quarter turn (0.04 s of a full turn at s = 6.25) keeps the pixel 2
    # from the centre, on the row of the centre.
    turned = np.asarray(jitter(image, _draws(angle=1.0), 6.25))[0, :, :, 0]
    assert turned[4, 2] + turned[4, 6] == pytest.approx(1.0, abs=1e-5)
    assert turned.sum() == pytest.approx(1.0, abs=1e-5)
    # Zooming in (+10 % at s = 1 reads 1/1.1 of the offset) pulls the
    # reading point towards the centre: the pixel spreads outwards.
    zoomed = np.asarray(jitter(image, _draws(zoom=1.0), 5.0))[0, :, :, 0]
    assert zoomed[1, 4] > 0 and zoomed[2, 4] > 0
    assert zoomed[3:, :].sum() == pytest.approx(0.0, abs=1e-6)


def test_replay_jitter_changes_only_the_classifier_step(ci_benchmark):
    """With and without jitter, task 0 (no replay) trains identically; on
    task 1 the discriminator sees other replayed images."""
    def train(jitter_strength):
        model = _build(ci_benchmark, replay_jitter=jitter_strength)
        weights = []
        for task in range(2):
            _train_task(model, ci_benchmark, task)
            weights.append([v.numpy() for v in
                            model.discriminator_variables()])
        return weights

    plain, jittered = train(0.0), train(1.0)
    for a, b in zip(plain[0], jittered[0]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b)
               for a, b in zip(plain[1], jittered[1]))


def test_balance_classes_weighs_current_examples_as_a_replayed_class():
    benchmark = Benchmark(
        "two_per_task", train=(np.zeros((8, 8, 8, 1), np.uint8),
                               np.arange(8) % 4),
        test=(np.zeros((8, 8, 8, 1), np.uint8), np.arange(8) % 4),
        task_classes=[[0, 1], [2, 3]], num_classes=4,
    )
    for overrides, expected in (({"replay_per_class": 8}, 8 * 2 / 16),
                                ({"replay_per_class": 0}, 2.0),
                                ({"replay_per_class": 8,
                                  "balance_classes": False}, 1.0)):
        model = _build(benchmark, **overrides)
        model.begin_task(1, benchmark)
        assert float(model._current_weight(16)) == pytest.approx(expected)


def test_classifier_dropout_drops_and_rescales(ci_benchmark):
    h = tf.ones((64, 32))
    assert _build(ci_benchmark)._head_dropout(h, 6) is h
    dropped = _build(ci_benchmark, classifier_dropout=0.25)._head_dropout(
        h, 6).numpy()
    assert set(np.unique(dropped)) == {0.0, np.float32(1 / 0.75)}
    assert np.mean(dropped == 0.0) == pytest.approx(0.25, abs=0.03)


def test_fast_preset_only_for_methods_that_have_one():
    config = resolve_config(get_method("dgm"), "class_incremental_mnist",
                            {"fast": True, "epochs": 3})
    assert (config.epochs, config.replay_per_class) == (3, 16)
    with pytest.raises(ConfigError, match="no quick preset"):
        resolve_config(get_method("ewc"), "split_mnist", {"fast": True})


@pytest.mark.heavy
def test_results_json_is_json(tmp_path, ci_benchmark):
    config = _config(model_dir=str(tmp_path / "r"), verbose=0, export=False)
    train_lib.run(config, benchmark=ci_benchmark)
    with open(tmp_path / "r" / "results.json") as f:
        results = json.load(f)
    assert results["config"]["generator_units"] == [6, 4]


@pytest.mark.heavy
@pytest.mark.parametrize(
    "name", ["class_incremental_svhn", "class_incremental_cifar10"])
def test_tfds_pipelines_run_end_to_end_on_mock_data(name, monkeypatch,
                                                    tmp_path):
    """SVHN and CIFAR-10, one class per task, 32x32x3: the whole run on
    tfds's mock data (their real accuracy is not measured here)."""
    import tensorflow_datasets as tfds

    from cl_zoo import benchmarks
    from cl_zoo.benchmarks import tfds_sets

    monkeypatch.setattr(tfds_sets, "_network_reachable", lambda name: True)
    with tfds.testing.mock_data(num_examples=200):
        bm = benchmarks.get_benchmark(name, data_dir=str(tmp_path / "data"))
    config = resolve_config(get_method("dgm"), name, {
        "model_dir": str(tmp_path / "run"), "generator_units": (8, 4),
        "noise_dim": 8, "hidden_units": (16,), "batch_size": 8,
        "epochs": 1, "verbose": 0, "export": False, "eval_batch_size": 64,
    })
    results = train_lib.run(config, benchmark=bm)
    assert np.array(results["accuracy_matrix"]).shape == (10, 10)
    assert 0.0 <= results["extra"]["a10"] <= 1.0
    assert os.path.exists(tmp_path / "run" / "generated_task10.png")


class _Killed(Exception):
    pass


@pytest.mark.heavy
def test_killed_run_resumes_to_the_same_results(tmp_path, ci_benchmark,
                                                monkeypatch):
    """Killed mid-task 2, rerun: masks, grown layers and both optimizers
    come back from the checkpoint and the run ends as an uninterrupted one
    (the noise depends on the step, not on the process)."""
    def config(name):
        return _config(model_dir=str(tmp_path / name), epochs=2, verbose=0,
                       export=False, eval_batch_size=64)

    original = train_lib._EpochCheckpoint.on_epoch_end

    def dying(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.task == 1 and epoch == 2:
            raise _Killed  # task 2's first epoch saved

    monkeypatch.setattr(train_lib._EpochCheckpoint, "on_epoch_end", dying)
    with pytest.raises(_Killed):
        train_lib.run(config("killed"), benchmark=ci_benchmark)
    monkeypatch.setattr(train_lib._EpochCheckpoint, "on_epoch_end", original)
    resumed = train_lib.run(config("killed"), benchmark=ci_benchmark)
    straight = train_lib.run(config("straight"), benchmark=ci_benchmark)
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    timing = "train_cpu_seconds"
    assert ({k: v for k, v in resumed["extra"].items() if k != timing}
            == {k: v for k, v in straight["extra"].items() if k != timing})
    assert len(resumed["extra"]["unit_counts"]) == 3


@pytest.mark.parametrize("cls", [MaskedDense, MaskedConv2DTranspose])
def test_output_layer_starts_each_task_from_the_previous(cls):
    """Unmasked (the output layer): one kernel per task; task t starts as
    task t-1 ended, and the examples of each task use their own."""
    layer = cls(2, num_tasks=3, masked=False)
    shape = (None, 3) if cls is MaskedDense else (None, 2, 2, 3)
    layer.build(shape)
    x = tf.random.stateless_normal((2, *shape[1:]), seed=[1, 2])
    before = layer(x, tf.constant([0, 1])).numpy()
    assert not np.allclose(before[0], before[1])  # distinct kernels
    layer.bias.assign(layer.bias.numpy() + [[0.5, -1.0], [0, 0], [0, 0]])
    layer.start_task(1)
    same = layer(tf.stack([x[1], x[1]]), tf.constant([0, 1])).numpy()
    np.testing.assert_array_equal(same[0], same[1])
    assert layer.gradient_multipliers(None, 1.0, 1.0) == {}


# Scoring a generator with a reference classifier ------------------------------
@pytest.mark.heavy
def test_reference_classifier_scores_what_a_generator_draws(tmp_path,
                                                           ci_benchmark):
    from cl_zoo import generator_score as score_generator

    path = str(tmp_path / "ref" / "tiny.keras")
    ref = score_generator.reference_classifier(ci_benchmark, path, epochs=30,
                                               verbose=0)
    assert os.path.exists(path)
    accuracy = score_generator.reference_test_accuracy(ref, ci_benchmark)
    assert accuracy > 0.9, accuracy
    # Cached: a second call loads the same weights.
    again = score_generator.reference_classifier(ci_benchmark, path)
    for a, b in zip(ref.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    real = {t: ci_benchmark.test_arrays(t)[0] for t in range(3)}

    def faithful(labels, noise):  # real test images of each label
        c = int(labels[0])
        return real[c][np.arange(len(labels)) % len(real[c])]

    def stuck(labels, noise):  # class 0's images, whatever the label
        return faithful(tf.zeros_like(labels), noise)

    good = score_generator.score(faithful, [0, 1, 2], ref, 4, samples=20)
    assert set(good) == {0, 1, 2} and min(good.values()) > 0.9, good
    bad = score_generator.score(stuck, [0, 1, 2], ref, 4, samples=20)
    assert bad[0] > 0.9 and max(bad[1], bad[2]) < 0.1, bad

    # GAN-train: a CNN that learns a faithful generator's images classifies
    # the real test set; one that learns the stuck generator's cannot.
    accuracy, per_class = score_generator.train_on_samples(
        faithful, [0, 1, 2], ci_benchmark, 4, per_class=64, epochs=15,
        jitter=0.5)
    assert accuracy > 0.9 and set(per_class) == {0, 1, 2}, per_class
    accuracy, per_class = score_generator.train_on_samples(
        stuck, [0, 1, 2], ci_benchmark, 4, per_class=64, epochs=15)
    assert accuracy < 0.5, per_class
    # Only the classes asked for are tested.
    _, per_class = score_generator.train_on_samples(
        faithful, [0, 1], ci_benchmark, 4, per_class=16, epochs=1)
    assert set(per_class) == {0, 1}


def test_confusion_refuses_a_dir_without_a_finished_run(tmp_path,
                                                        run_trainer):
    result = run_trainer(f"--run={tmp_path}", module="trainers.confusion")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path} holds no finished run (results.json)")
    assert "Traceback" not in result.stderr


def test_score_generator_refuses_a_dir_without_a_dgm_export(tmp_path,
                                                            run_trainer):
    result = run_trainer(f"--runs={tmp_path}",
                         module="trainers.score_generator")
    assert result.returncode == 2
    assert "not a finished DGM run" in result.stderr
    assert "Traceback" not in result.stderr
