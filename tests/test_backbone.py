"""The backbone's run settings: --architecture=resnet18 (GEM's reduced
ResNet-18), --initializer, --normalize, and an empty --hidden_units."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cl_zoo import config as run_config
from cl_zoo import export
from cl_zoo.config import ConfigError, resolve_config
from cl_zoo.layers import (
    BasicBlock,
    BiasUnitDense,
    ConvBatchNorm,
    MemoryNeuronDense,
    SuperpositionDense,
    TaskDense,
    TaskHead,
)
from cl_zoo.layers.initialization import INITIALIZERS, scheme_parts
from cl_zoo.methods import get_method
from cl_zoo.methods.base import ARCHITECTURES, ContinualModel

# Trainable parameters of GEM's `ResNet18(10, nf=20)` on 3-channel images:
# `sum(p.numel() for p in model.parameters())` (batch norm's running
# statistics are buffers, not parameters), worked out from
# facebookresearch/GradientEpisodicMemory, model/common.py at commit
# 34c6b8e9a0607db7567301c48b727430d20bee7e:
#   conv1 3x3x3x20 = 540, bn1 2x20 = 40;
#   layer1: 2 x (3x3x20x20 + 40 + 3x3x20x20 + 40) = 14,560;
#   layer2: (3x3x20x40 + 80 + 3x3x40x40 + 80 + 1x1x20x40 + 80)
#           + (3x3x40x40 + 80) x 2 = 22,640 + 28,960 = 51,600;
#   layer3: (28,800 + 160 + 57,600 + 160 + 3,200 + 160)
#           + 2 x (57,600 + 160) = 90,080 + 115,520 = 205,600;
#   layer4: (115,200 + 320 + 230,400 + 320 + 12,800 + 320)
#           + 2 x (230,400 + 320) = 359,360 + 461,440 = 820,800;
#   linear 160x10 + 10 = 1,610.
GEM_RESNET18_PARAMS = 1_094_750
# The benchmark whose run settings the models of these tests take (they
# train on tiny data of their own).
CONFIG_BENCHMARK = {"dgm": "class_incremental_mnist"}


def _model(input_shape=(8, 8, 3), seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs = {"hidden_units": (), "architecture": "resnet18",
              "resnet_width": 4, **kwargs}
    model = ContinualModel(input_shape, 4, [[0, 1], [2, 3]], **kwargs)
    model.build_for_inputs()
    return model


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def _weights(model):
    return [_numpy(v) for v in model.weights]


def _build_method(name, benchmark, **overrides):
    """`name` on `benchmark`, with the settings of a run of split MNIST (or
    class-incremental MNIST for DGM) and `overrides`."""
    keras.utils.set_random_seed(0)
    cls = get_method(name)
    config = resolve_config(cls, CONFIG_BENCHMARK.get(name, "split_mnist"),
                            overrides, skip_unread=True)
    model = cls.from_run_config(config, benchmark)
    model.build_for_inputs()
    return model


# ----------------------------------------------------------------------
# ResNet-18.
def test_resnet18_parameter_count_is_gems():
    """1,094,750 trainable parameters, as GEM's `ResNet18(10, nf=20)`
    (facebookresearch/GradientEpisodicMemory, model/common.py, commit
    34c6b8e9a0607db7567301c48b727430d20bee7e; see GEM_RESNET18_PARAMS)."""
    keras.utils.set_random_seed(0)
    model = ContinualModel((32, 32, 3), 10, [list(range(10))],
                           hidden_units=(), architecture="resnet18")
    model.build_for_inputs()
    count = sum(math.prod(v.shape) for v in model.trainable_variables)
    assert count == GEM_RESNET18_PARAMS
    blocks = [layer for layer in model.feature_layers
              if isinstance(layer, BasicBlock)]
    assert [b.filters for b in blocks] == [20, 20, 40, 40, 80, 80, 160, 160]
    assert [b.strides for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert [b.projection for b in blocks] == [False, False, True, False,
                                              True, False, True, False]


def test_convolutions_pad_as_pytorch():
    """A 3x3 stride-2 convolution reads the pixels around (2i, 2j), as
    PyTorch's padding=1 does (TF's "same" would read around 2i + 1)."""
    layer = ConvBatchNorm(1, 3, 2)
    x = np.arange(36, dtype="float32").reshape(1, 6, 6, 1)
    layer(x)
    kernel = np.zeros((3, 3, 1, 1), "float32")
    kernel[1, 1] = 1.0  # the centre: output (i, j) = input (2i, 2j)
    layer.conv.kernel.assign(kernel)
    out = _numpy(layer(x, training=False))[0, :, :, 0]
    expected = x[0, ::2, ::2, 0] / np.sqrt(1.0 + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_resnet18_takes_non_square_images():
    model = _model((24, 40, 3), hidden_units=(16,))
    x = np.random.default_rng(0).random((2, 24, 40, 3), "float32")
    out = model.predict(x, verbose=0)
    assert out.shape == (2, 4)
    assert np.all(np.isfinite(out))
    h = model.features(x, np.zeros(2, "int32"))
    assert h.shape == (2, 16)


def test_resnet18_needs_images():
    with pytest.raises(ValueError, match="resnet18' needs image inputs"):
        ContinualModel((12,), 2, [[0, 1]], architecture="resnet18")
    assert "resnet18" in ARCHITECTURES


def test_basic_block_refuses_a_missing_projection():
    with pytest.raises(ValueError, match="needs projection=True"):
        BasicBlock(8, strides=2)(np.zeros((1, 4, 4, 8), "float32"))
    with pytest.raises(ValueError, match="needs projection=True"):
        BasicBlock(8)(np.zeros((1, 4, 4, 3), "float32"))
    with pytest.raises(ValueError, match="positive integer for `filters`"):
        BasicBlock(0)


@pytest.mark.parametrize("layer", [
    ConvBatchNorm(5, 1, 2, relu=True, name="c"),
    BasicBlock(6, 2, projection=True, name="b"),
])
def test_resnet_layers_config_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_resnet18_one_step_under_mirrored_strategy(mirrored_strategy):
    """Two replicas take the step one device takes on the global batch
    (batch statistics are synchronized), and keep equal moving averages."""
    rng = np.random.default_rng(0)
    x = rng.random((8, 8, 8, 3), "float32")
    y = rng.integers(0, 2, 8)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def make():
        model = _model()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.build_optimizers()
        return model

    single = make()
    with mirrored_strategy.scope():
        mirrored = make()
    single.fit(data, epochs=1, verbose=0, shuffle=False)
    mirrored.fit(data, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(single.weights, mirrored.weights):
        np.testing.assert_allclose(_numpy(a), _numpy(b), rtol=1e-4,
                                   atol=1e-5, err_msg=a.path)
    moving = [v for v in mirrored.weights if "moving_" in v.path]
    assert moving
    for v in moving:
        first, second = (c.numpy() for c in v.value.values)
        np.testing.assert_array_equal(first, second)
    assert not np.allclose(_numpy(moving[0]), 0.0)


def test_resnet18_torch_default_normalized_round_trips(
        tmp_path, assert_round_trips, make_tiny_benchmark):
    """A `.keras` file keeps the ResNet's weights and batch statistics,
    the initializer and the normalization."""
    benchmark = make_tiny_benchmark(shape=(8, 8, 3), per_class=16)
    model = _build_method(
        "finetune", benchmark, architecture="resnet18", resnet_width=4,
        hidden_units=(), initializer="torch_default", normalize="standard",
    )
    assert model.get_config()["normalization"] == [
        list(s) for s in benchmark.channel_stats()
    ]
    assert model.get_config()["initializer"] == "torch_default"
    assert model.get_config()["resnet_width"] == 4
    # Eager steps: tracing the ResNet's train step costs seconds.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    model.build_optimizers()
    model.begin_task(0, benchmark)
    model.fit(model.train_dataset(0, benchmark, 8), epochs=1, verbose=0,
              shuffle=False)
    model.end_task(0, benchmark)
    x, _ = benchmark.test_arrays(1, head=model.label_mode)
    loaded = assert_round_trips(model, x, str(tmp_path / "resnet.keras"))
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))


def _compile(model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.build_optimizers()


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["bd_ewc", "lwf", "gem"])
def test_methods_train_two_tasks_on_resnet18(name, make_tiny_benchmark):
    """Per-task units over the ResNet's features, the Fisher's per-example
    gradients through it, LwF's old network, GEM's memory gradients."""
    benchmark = make_tiny_benchmark(shape=(8, 8, 3), per_class=16)
    model = _build_method(
        name, benchmark, architecture="resnet18", resnet_width=2,
        hidden_units=(8,), initializer="torch_default", normalize="standard",
        fisher_samples=8,
    )
    _compile(model)
    for task in range(2):
        model.begin_task(task, benchmark)
        history = model.fit(model.train_dataset(task, benchmark, 8, seed=task),
                            epochs=1, verbose=0, shuffle=False)
        model.end_task(task, benchmark)
        assert all(np.isfinite(v[-1]) for v in history.history.values())


@pytest.mark.heavy
def test_normalized_resnet18_export_takes_pixels(tmp_path,
                                                  make_tiny_benchmark):
    """The SavedModel of a task normalizes inside: it takes [0, 1] pixels
    and answers what the model does."""
    benchmark = make_tiny_benchmark(shape=(8, 8, 3), per_class=16)
    model = _build_method("finetune", benchmark, architecture="resnet18",
                          resnet_width=2, hidden_units=(),
                          normalize="standard")
    _compile(model)
    model.begin_task(0, benchmark)
    model.fit(model.train_dataset(0, benchmark, 8), epochs=1, verbose=0,
              shuffle=False)
    path = str(tmp_path / "task_0")
    export.export_task(model, 0, path)
    loaded = tf.saved_model.load(path)
    x, _ = benchmark.test_arrays(0, head=model.label_mode)
    scores = loaded.serve(tf.constant(x, tf.float32))["scores"].numpy()
    model.task.assign(0)
    expected = _numpy(keras.ops.softmax(model.predict(x, verbose=0)))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------
# Initializers.
def test_initializer_names_match_the_run_setting():
    assert run_config.INITIALIZERS == INITIALIZERS
    with pytest.raises(ValueError, match="Expected `initializer`"):
        ContinualModel((4,), 2, [[0, 1]], initializer="lecun")


@pytest.mark.parametrize("name,overrides", [
    ("finetune", {}),
    ("finetune", {"architecture": "lenet"}),
    ("bd_ewc", {}),
    ("ad_ewc", {}),
    ("stl", {}),
    ("psp", {}),
])
def test_default_initializer_is_the_layers_own(name, overrides,
                                                make_tiny_benchmark):
    """At the default, a model is the one built without any of the new
    arguments, bit for bit (same seed, same draws)."""
    benchmark = make_tiny_benchmark(shape=(16, 16, 1), per_class=8)
    cls = get_method(name)
    values = {"hidden_units": (16, 8), **overrides}
    config = resolve_config(cls, "split_mnist", values, skip_unread=True)
    keras.utils.set_random_seed(3)
    new = cls.from_run_config(config, benchmark)
    new.build_for_inputs()
    keras.utils.set_random_seed(3)
    old = cls(
        input_shape=benchmark.input_shape,
        num_classes=benchmark.num_classes,
        task_classes=benchmark.task_classes, head=config.head,
        hidden_units=config.hidden_units, architecture=config.architecture,
        activation=config.activation, dropout=config.dropout,
        name=cls.method_name, **cls.init_args_from_config(config),
    )
    old.build_for_inputs()
    assert new.initializer == "glorot_uniform"
    assert new.normalization is None
    assert len(new.weights) == len(old.weights)
    for a, b in zip(new.weights, old.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(_numpy(a), _numpy(b))


def _fan_in(layer):
    """kh * kw * in_channels for a convolution, else the kernel's rows (of
    one task for a per-task table)."""
    if isinstance(layer, keras.layers.Conv2D):
        return math.prod(layer.kernel.shape[:-1])
    return int(layer.kernel.shape[-2])


def _kernel_layers(model):
    """Every layer with a kernel, sublayers of the ResNet blocks included."""
    out = []
    for layer in model.backbone_layers():
        if isinstance(layer, BasicBlock):
            out += [c.conv for c in layer.sublayers()]
        elif isinstance(layer, ConvBatchNorm):
            out.append(layer.conv)
        elif hasattr(layer, "kernel"):
            out.append(layer)
    return out


@pytest.mark.parametrize("name,overrides", [
    ("finetune", {"architecture": "lenet", "hidden_units": (16,)}),
    ("finetune", {"architecture": "resnet18", "resnet_width": 2,
                  "hidden_units": (8,)}),
    ("bd_ewc", {"hidden_units": (16,)}),
    ("ad_ewc", {"hidden_units": (16,)}),
    ("stl", {"hidden_units": (16,)}),
    ("psp", {"hidden_units": (16,)}),
])
def test_torch_default_bounds(name, overrides, make_tiny_benchmark):
    """Kernels and biases uniform in +-1/sqrt(fan_in), fan_in per task and
    (convolutions) kh * kw * in_channels; batch norm at 1 and 0; the
    methods' own units as the default model draws them."""
    shape = (16, 16, 3) if "resnet18" in overrides.values() else (16, 16, 1)
    benchmark = make_tiny_benchmark(shape=shape, per_class=8)
    model = _build_method(name, benchmark, initializer="torch_default",
                          **overrides)
    glorot = _build_method(name, benchmark, **overrides)
    layers = _kernel_layers(model)
    assert len(layers) >= 2
    for layer in layers:
        for variable in (layer.kernel, getattr(layer, "bias", None)):
            if variable is None:
                continue
            fan_in = _fan_in(layer)
            values = _numpy(variable)
            limit = 1.0 / math.sqrt(fan_in)
            assert np.abs(values).max() <= limit * (1 + 1e-6), variable.path
            assert np.unique(values).size > values.size // 2, variable.path
    special = ("moving_", "gamma", "beta", "keys", "factor", "bias_table",
               "memory_", "live_task", "class_mask", "task", "frozen")
    for a, b in zip(model.weights, glorot.weights):
        if any(s in a.path.rsplit("/", 1)[-1] for s in special):
            np.testing.assert_array_equal(_numpy(a), _numpy(b), a.path)


def test_he_uniform_variance_and_zero_biases():
    model = _model((28, 28, 1), architecture="mlp", hidden_units=(512,),
                   initializer="he_uniform")
    kernel = _numpy(model.hidden_layers[0].kernel)
    assert np.var(kernel) == pytest.approx(2.0 / 784, rel=0.03)
    assert np.abs(kernel).max() <= math.sqrt(6.0 / 784)
    head = _numpy(model.head.kernel)
    assert np.var(head) == pytest.approx(2.0 / 512, rel=0.2)
    for layer in (model.hidden_layers[0], model.head):
        assert not _numpy(layer.bias).any()


def test_initializer_repeats_with_the_seed():
    a = _model(initializer="torch_default", seed=5)
    b = _model(initializer="torch_default", seed=5)
    c = _model(initializer="torch_default", seed=6)
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(_numpy(va), _numpy(vb))
    assert not np.array_equal(_numpy(a.head.kernel), _numpy(c.head.kernel))


def test_build_for_inputs_keeps_a_built_model():
    model = _model(initializer="he_uniform")
    before = _weights(model)
    model.build_for_inputs()
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


class _Unknown(keras.layers.Layer):
    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 3))

    def call(self, x, training=False):
        return x @ self.kernel


class _WithUnknownLayer(ContinualModel):
    def make_hidden_layer(self, units, index):
        return _Unknown(name=f"unknown_{index}")


def test_unknown_layer_with_weights_is_refused():
    model = _WithUnknownLayer((4,), 2, [[0, 1]], hidden_units=(3,),
                              initializer="he_uniform")
    with pytest.raises(TypeError, match="No initialization rule for layer "
                       "'unknown_0' of type _Unknown"):
        model.build_for_inputs()
    # The default reads nothing.
    _WithUnknownLayer((4,), 2, [[0, 1]], hidden_units=(3,)).build_for_inputs()


def test_scheme_parts_cover_the_custom_layers():
    x, tasks = np.zeros((2, 5), "float32"), np.zeros(2, "int32")
    layers = [
        BiasUnitDense(3, 2, bias_hidden=4), SuperpositionDense(3, 2),
        MemoryNeuronDense(3, 2), TaskDense(3, 2), TaskHead("multi", 4, [2, 2]),
    ]
    for layer in layers:
        layer(x, tasks)
    parts = scheme_parts(layers)
    assert [(p[0].path.rsplit("/", 1)[-1], p[1]) for p in parts] == [
        ("kernel", 5), ("bias", 5)] * len(layers)


# ----------------------------------------------------------------------
# Hidden layers.
@pytest.mark.parametrize("name,what", [
    ("bd_ewc", "bias units"), ("bd_psp", "bias units"),
    ("gd_ewc", "bias units"), ("ad", "memory units"),
    ("ad_ewc", "memory units"), ("psp", "keys"),
])
def test_per_task_units_need_a_hidden_layer(name, what):
    with pytest.raises(ConfigError, match=rf"^--method={name} needs at least "
                       rf"one hidden layer \(--hidden_units\): its {what} "
                       "live there.$"):
        resolve_config(get_method(name), "split_mnist", {"hidden_units": ()})


def test_no_hidden_layer_feeds_the_head_the_features(tiny_benchmark):
    model = _build_method("finetune", tiny_benchmark, hidden_units=())
    assert model.hidden_layers == []
    x, _ = tiny_benchmark.test_arrays(0, head=model.label_mode)
    h = model.features(x, np.zeros(len(x), "int32"))
    assert h.shape == (len(x), 36)
    assert model.predict(x, verbose=0).shape == (len(x), 2)


# ----------------------------------------------------------------------
# DGM.
def test_dgm_takes_the_settings_of_its_discriminator(make_class_incremental):
    benchmark = make_class_incremental()
    extra = {"generator_units": (6, 4), "noise_dim": 8,
             "generator_capacity": (3.0,)}
    with pytest.raises(ConfigError, match="^--architecture=resnet18 is not "
                       "allowed with --method=dgm"):
        resolve_config(get_method("dgm"), "class_incremental_mnist",
                       {"architecture": "resnet18", **extra})
    model = _build_method("dgm", benchmark, hidden_units=(),
                          initializer="torch_default", normalize="standard",
                          **extra)
    glorot = _build_method("dgm", benchmark, hidden_units=(), **extra)
    for layer in (model.feature_layers[0], model.head, model.critic):
        limit = 1.0 / math.sqrt(_fan_in(layer))
        assert np.abs(_numpy(layer.kernel)).max() <= limit * (1 + 1e-6)
        assert _numpy(layer.bias).any()
    for a, b in zip(model.generator.weights, glorot.generator.weights):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))
    # The redraw of a new task draws the scheme again.
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    conv = model.feature_layers[0]
    before = _numpy(conv.kernel)
    model.begin_task(1, benchmark)
    after = _numpy(conv.kernel)
    assert not np.array_equal(before, after)
    assert np.abs(after).max() <= 1.0 / math.sqrt(_fan_in(conv))
    x, _ = benchmark.test_arrays(0, head=model.label_mode)
    assert np.all(np.isfinite(model.predict(x, verbose=0)))


# ----------------------------------------------------------------------
# Normalization.
def test_normalization_is_inside_the_model():
    rng = np.random.default_rng(0)
    x = rng.random((3, 4, 4, 3), "float32")
    mean, std = [0.5, 0.2, 0.1], [0.25, 0.5, 2.0]
    kwargs = {"architecture": "mlp", "hidden_units": (8,)}
    plain = _model((4, 4, 3), **kwargs)
    normalized = _model((4, 4, 3), normalization=(mean, std), **kwargs)
    identity = _model((4, 4, 3), normalization=([0.0] * 3, [1.0] * 3),
                      **kwargs)
    for a, b in zip(plain.weights, normalized.weights):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))
    tasks = np.zeros(3, "int32")
    manual = (x - np.array(mean, "float32")) / np.array(std, "float32")
    np.testing.assert_allclose(
        normalized.predict(x, verbose=0), plain.predict(manual, verbose=0),
        rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        _numpy(identity.features(x, tasks)), _numpy(plain.features(x, tasks)))
    constant = np.full((1, 4, 4, 3), 0.7, "float32")
    np.testing.assert_allclose(
        _numpy(normalized.normalize(constant))[0, 0, 0],
        (0.7 - np.array(mean)) / np.array(std), rtol=1e-6)


def test_normalization_of_flat_inputs_is_one_value():
    model = _model((6,), architecture="mlp", hidden_units=(4,),
                   normalization=([0.5], [0.25]))
    x = np.full((2, 6), 1.0, "float32")
    np.testing.assert_allclose(_numpy(model.normalize(x)), 2.0)
    with pytest.raises(ValueError, match="lists of 1 finite values"):
        ContinualModel((6,), 2, [[0, 1]], normalization=([0.5] * 6,
                                                         [0.25] * 6))
    with pytest.raises(ValueError, match="lists of 1 or 3 finite values"):
        ContinualModel((4, 4, 3), 2, [[0, 1]], normalization=([0.5, 0.5],
                                                              [1.0, 1.0]))
    with pytest.raises(ValueError, match="std > 0"):
        ContinualModel((6,), 2, [[0, 1]], normalization=([0.5], [0.0]))


def test_normalize_none_passes_no_statistics(tiny_benchmark):
    model = _build_method("finetune", tiny_benchmark)
    assert model.get_config()["normalization"] is None
    model = _build_method("finetune", tiny_benchmark, normalize="standard")
    mean, std = tiny_benchmark.channel_stats()
    assert model.get_config()["normalization"] == [list(mean), list(std)]
