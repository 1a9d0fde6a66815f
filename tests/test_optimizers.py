"""cl_zoo's Adam: Keras's updates, bit for bit, with shared step scalars."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cl_zoo import optimizers, train_lib
from cl_zoo.config import resolve_config
from cl_zoo.methods import get_method

SHAPES = [(30, 20), (20,), (20, 3)]


def _train(make_optimizer, steps=40, strategy=None):
    """`steps` traced updates of three variables with gradients of very
    different scales; the final weights and optimizer state."""
    strategy = strategy or tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    with strategy.scope():
        optimizer = make_optimizer()
        variables = [
            keras.Variable(rng.standard_normal(s).astype("float32"))
            for s in SHAPES
        ]
        optimizer.build(variables)

    @tf.function
    def step(grads):
        strategy.run(optimizer.apply, args=(grads, variables))

    draws = np.random.default_rng(1)
    for _ in range(steps):
        step([
            tf.constant(draws.standard_normal(s).astype("float32")
                        * 10 ** draws.uniform(-4, 1))
            for s in SHAPES
        ])
    return ([np.asarray(v) for v in variables]
            + [np.asarray(v) for v in optimizer.variables])


def _assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kwargs", [
    {}, {"amsgrad": True}, {"beta_1": 0.5, "learning_rate": 3e-4},
])
def test_updates_are_bit_identical_to_keras(kwargs):
    _assert_identical(_train(lambda: keras.optimizers.Adam(**kwargs)),
                      _train(lambda: optimizers.Adam(**kwargs)))


def test_step_scalars_are_computed_once_per_step(monkeypatch):
    computed = []
    alpha = optimizers.Adam._alpha

    def counting(self, learning_rate, dtype):
        before = len(self._step_scalars)
        out = alpha(self, learning_rate, dtype)
        computed.append(len(self._step_scalars) - before)
        return out

    monkeypatch.setattr(optimizers.Adam, "_alpha", counting)
    _train(optimizers.Adam, steps=3)
    # One trace: three variables, one new entry.
    assert computed == [1, 0, 0]


def test_bit_identical_under_mirrored_strategy(tmp_path, tiny_benchmark,
                                              mirrored_strategy, monkeypatch):
    """A two-replica run (one `update_step` per device and variable):
    the same weights as with Keras's Adam."""
    weights = {}
    for name, adam in (("keras", keras.optimizers.Adam),
                       ("cl_zoo", optimizers.Adam)):
        monkeypatch.setattr(optimizers, "Adam", adam)
        config = resolve_config(get_method("bd_ewc"), "tiny", {
            "model_dir": str(tmp_path / name), "optimizer": "adam",
            "hidden_units": (16,), "epochs": 1, "batch_size": 8,
            "verbose": 0, "fisher_samples": 16, "export": False,
            "strategy": "mirrored", "num_cpu_devices": 2,
        }, skip_unread=True)
        run = train_lib.ContinualRun(config, benchmark=tiny_benchmark,
                                     strategy=mirrored_strategy)
        run.run()
        assert type(run.model.optimizer) is adam
        weights[name] = [np.asarray(v) for v in run.model.weights]
    _assert_identical(weights["keras"], weights["cl_zoo"])


def test_other_keras_versions_run_keras_update(monkeypatch):
    assert optimizers.shares_step_scalars(keras.__version__)
    assert not optimizers.shares_step_scalars("3.16.0")
    monkeypatch.setattr(optimizers, "VERIFIED_KERAS", ("0.0.",))
    adam = optimizers.Adam()
    _assert_identical(_train(keras.optimizers.Adam, steps=5),
                      _train(lambda: adam, steps=5))
    assert adam._step_scalars is None


def test_serializes_and_keeps_keras_state_layout():
    adam = optimizers.Adam(learning_rate=2e-3, beta_1=0.5)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(adam))
    assert type(again) is optimizers.Adam
    assert again.get_config() == adam.get_config()
    # The same slots in the same order as Keras's: checkpoints of runs
    # made with keras.optimizers.Adam restore.
    variables = [keras.Variable(np.zeros(s, "float32")) for s in SHAPES]
    ours, theirs = optimizers.Adam(), keras.optimizers.Adam()
    ours.build(variables)
    theirs.build(variables)
    assert ([(v.name, v.shape) for v in ours.variables]
            == [(v.name, v.shape) for v in theirs.variables])


def test_runs_with_adam_use_it(tmp_path):
    config = resolve_config(get_method("ewc"), "tiny",
                            {"model_dir": str(tmp_path), "optimizer": "adam"},
                            skip_unread=True)
    assert type(train_lib.make_optimizer(config)) is optimizers.Adam
