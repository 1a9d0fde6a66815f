"""TaskHead and TaskDense: shapes, masking, task selection, serialization."""

import keras
import numpy as np
import pytest

from cl_zoo.layers import TaskDense, TaskHead


def test_single_head_ignores_task():
    head = TaskHead("single", 5, [2, 3])
    x = np.random.rand(4, 3).astype("float32")
    a = head(x, np.zeros(4, "int32"))
    b = head(x, np.ones(4, "int32"))
    assert a.shape == (4, 5)
    np.testing.assert_allclose(a, b)


def test_multi_head_selects_rows_and_masks_padding():
    head = TaskHead("multi", 5, [2, 3])
    x = np.random.rand(2, 3).astype("float32")
    out = keras.ops.convert_to_numpy(head(x, np.array([0, 1], "int32")))
    assert out.shape == (2, 3)
    # Task 0 has 2 classes: its third logit is masked.
    assert out[0, 2] < -1e8
    assert np.all(out[1] > -1e8)
    # Example 0 reads the first head's columns.
    kernel = keras.ops.convert_to_numpy(head.kernel)
    bias = keras.ops.convert_to_numpy(head.bias)
    np.testing.assert_allclose(out[0, :2], x[0] @ kernel[:, :2] + bias[:2],
                               rtol=1e-5)
    np.testing.assert_allclose(out[1], x[1] @ kernel[:, 3:6] + bias[3:6],
                               rtol=1e-5)


def test_task_head_validation():
    with pytest.raises(ValueError, match="Expected `mode`"):
        TaskHead("both", 5, [2])
    with pytest.raises(ValueError, match="positive integer for `num_classes`"):
        TaskHead("single", 0, [2])


def test_task_dense_rows_are_independent():
    layer = TaskDense(4, num_tasks=3)
    x = np.random.rand(5, 6).astype("float32")
    outs = [keras.ops.convert_to_numpy(layer(x, np.full(5, t, "int32")))
            for t in range(3)]
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    assert not np.allclose(kernel[0], kernel[1])
    for t in range(3):
        np.testing.assert_allclose(outs[t], x @ kernel[t], rtol=1e-5)
    assert layer.per_task_bytes() == 4 * (6 + 1) * 4


def test_task_dense_rejects_mixed_batches():
    layer = TaskDense(2, num_tasks=2)
    with pytest.raises(Exception, match="same task"):
        layer(np.zeros((2, 3), "float32"), np.array([0, 1], "int32"))


@pytest.mark.parametrize(
    "layer",
    [
        TaskHead("multi", 6, [2, 3, 1], name="h"),
        TaskDense(3, num_tasks=2, activation="relu", name="d"),
    ],
)
def test_config_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_keras_save_load(tmp_path):
    inputs = keras.Input((4,))
    tasks = keras.Input((), dtype="int32")
    h = TaskDense(3, num_tasks=2, activation="relu")(inputs, tasks)
    outputs = TaskHead("multi", 4, [2, 2])(h, tasks)
    model = keras.Model([inputs, tasks], outputs)
    x = np.random.rand(3, 4).astype("float32")
    t = np.array([1, 1, 1], "int32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict([x, t], verbose=0),
                               model.predict([x, t], verbose=0), rtol=1e-6)
