"""ER: the reservoir's sampling, the half-replayed batches, the buffer."""

import keras
import numpy as np
import pytest

from cl_zoo.config import ConfigError, resolve_config
from cl_zoo.methods import get_method
from cl_zoo.methods.er import ER, reservoir_slots


def _er(benchmark, **overrides):
    keras.utils.set_random_seed(0)
    cls = get_method("er")
    config = resolve_config(
        cls, "tiny", {"hidden_units": (16,), "buffer_size": 30, **overrides}
    )
    model = cls.from_run_config(config, benchmark)
    model.build_for_inputs()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
    )
    model.build_optimizers()
    return model


def test_reservoir_keeps_every_example_with_equal_chance():
    # 40 examples in two tasks of 20 through a buffer of 10: each example
    # is held with probability 10/40 at the end.
    size, held = 10, np.zeros(40)
    for trial in range(2000):
        rng = np.random.default_rng(trial)
        buffer = np.full(size, -1)
        for task in range(2):
            slots, rows = reservoir_slots(20 * task, 20, size, rng)
            assert len(set(slots.tolist())) == len(slots)
            buffer[slots] = 20 * task + rows
        held[buffer] += 1
    np.testing.assert_allclose(held / 2000, 0.25, atol=0.04)


def test_reservoir_fills_in_order_before_replacing():
    slots, rows = reservoir_slots(0, 6, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(slots, np.arange(6))
    np.testing.assert_array_equal(rows, np.arange(6))


def test_batches_are_half_replayed_from_earlier_tasks(tiny_benchmark):
    model = _er(tiny_benchmark, head="multi")
    model.begin_task(0, tiny_benchmark)
    first = next(iter(model.train_dataset(0, tiny_benchmark, 8)))
    assert first[0]["x"].shape[0] == 8  # nothing to replay yet
    model.end_task(0, tiny_benchmark)
    x, y, task = model.buffer()
    assert len(x) == 30 and set(task.tolist()) == {0}
    model.begin_task(1, tiny_benchmark)
    inputs, labels = next(iter(model.train_dataset(1, tiny_benchmark, 8)))
    ids = inputs["task"].numpy()
    np.testing.assert_array_equal(ids, [1] * 8 + [0] * 8)
    # Replayed examples keep their labels (local to their task's head).
    bx, by, _ = model.buffer()
    for row, label in zip(inputs["x"].numpy()[8:], labels.numpy()[8:]):
        match = np.flatnonzero(np.all(bx == row, axis=(1, 2, 3)))
        assert match.size and label in by[match]


def test_replay_protects_old_tasks_where_finetuning_forgets(tiny_benchmark):
    def last_row(model):
        accuracies = []
        for t in range(3):
            model.begin_task(t, tiny_benchmark)
            model.fit(model.train_dataset(t, tiny_benchmark, 16, seed=t),
                      epochs=6, verbose=0, shuffle=False)
            model.end_task(t, tiny_benchmark)
        for t in range(3):
            x, y = tiny_benchmark.test_arrays(t)
            model.task.assign(t)
            pred = np.argmax(model.predict(x, verbose=0), axis=-1)
            accuracies.append(np.mean(pred == y))
        return accuracies

    replay = last_row(_er(tiny_benchmark))
    plain = last_row(_er(tiny_benchmark, buffer_size=1))
    assert np.mean(replay) > np.mean(plain) + 0.2
    assert replay[0] > plain[0] + 0.3


def test_buffer_is_method_state_and_sizes_are_reported(tiny_benchmark):
    model = _er(tiny_benchmark)
    model.begin_task(0, tiny_benchmark)
    model.end_task(0, tiny_benchmark)
    ids = {id(v) for v in model.method_state.variables}
    assert not ids & {id(v) for v in model.inference_variables()}
    assert model.extra_results(None, tiny_benchmark)["buffer_bytes"] == (
        30 * (4 * 36 + 8)
    )
    with pytest.raises(ValueError, match="needs the benchmark"):
        model.end_task(0)


def test_bad_buffer_size_is_refused(tiny_benchmark):
    with pytest.raises(ConfigError, match="--buffer_size=0 is not allowed"):
        resolve_config(get_method("er"), "tiny", {"buffer_size": 0})
    with pytest.raises(ValueError, match="positive integer for `buffer_s"):
        ER(input_shape=(6, 6, 1), num_classes=6,
           task_classes=[[0, 1], [2, 3]], buffer_size=0)
