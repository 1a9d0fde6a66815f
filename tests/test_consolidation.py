"""EWC: penalties, merged quadratics, the vectorized Fisher vs a loop."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cl_zoo.consolidation import EWC, merge_quadratic, quadratic_penalty
from cl_zoo.consolidation import fisher as fisher_lib
from cl_zoo.consolidation.base import Consolidation
from cl_zoo.consolidation.registry import consolidation_names, register
from cl_zoo.methods import get_method
from cl_zoo.rules import GradientRule


def test_quadratic_penalty_by_hand():
    params = [np.array([1.0, 2.0]), np.array([[3.0]])]
    anchors = [np.array([0.0, 1.0]), np.array([[1.0]])]
    weights = [np.array([2.0, 0.5]), np.array([[0.25]])]
    # 2*1 + 0.5*1 + 0.25*4
    assert float(quadratic_penalty(params, anchors, weights)) == \
        pytest.approx(3.5)


def test_quadratic_penalty_checks_lengths():
    with pytest.raises(ValueError, match="as many anchors"):
        quadratic_penalty([np.zeros(2)], [], [np.zeros(2)])


def test_merge_quadratic_has_the_same_gradient():
    rng = np.random.default_rng(0)
    f, g = rng.random(5), rng.random(5)
    f[0] = g[0] = 0.0  # a weight no task cares about
    a, b = rng.normal(size=5), rng.normal(size=5)
    total, center = (np.asarray(t) for t in merge_quadratic(f, a, g, b))
    p = rng.normal(size=5)
    grad_sum = 2 * f * (p - a) + 2 * g * (p - b)
    grad_merged = 2 * total * (p - center)
    np.testing.assert_allclose(grad_merged, grad_sum, atol=1e-12)
    assert center[0] == b[0]
    # Values differ by a constant only.
    p2 = rng.normal(size=5)

    def both(q):
        return np.sum(f * (q - a) ** 2 + g * (q - b) ** 2)

    def merged(q):
        return np.sum(total * (q - center) ** 2)

    assert both(p) - merged(p) == pytest.approx(both(p2) - merged(p2))


def _model(tiny_benchmark, head="multi"):
    keras.utils.set_random_seed(1)
    cls = get_method("finetune")
    model = cls(
        input_shape=tiny_benchmark.input_shape,
        num_classes=tiny_benchmark.num_classes,
        task_classes=tiny_benchmark.task_classes,
        head=head,
        hidden_units=(8,),
    )
    model.build_for_inputs()
    return model


def _loop_fisher(model, x, task, labels_or_probs, expected=False):
    """Reference: one GradientTape per example (and per class)."""
    variables = model.trainable_variables
    total = [np.zeros(v.shape) for v in variables]
    for i in range(len(x)):
        inputs = {"x": x[i:i + 1], "task": np.array([task], "int32")}
        classes = range(labels_or_probs.shape[1]) if expected else [None]
        for c in classes:
            with tf.GradientTape() as tape:
                logp = tf.nn.log_softmax(model(inputs)[0])
                label = c if expected else labels_or_probs[i]
                ll = logp[label]
            grads = tape.gradient(ll, variables)
            weight = labels_or_probs[i, c] if expected else 1.0
            for k, gr in enumerate(grads):
                if gr is not None:
                    total[k] += weight * np.square(gr.numpy())
    return [t / len(x) for t in total]


def test_empirical_fisher_matches_per_example_loop(tiny_benchmark):
    model = _model(tiny_benchmark)
    x, y = tiny_benchmark.train_arrays(1, head="multi", limit=20)
    ds = tf.data.Dataset.from_tensor_slices(
        ({"x": x, "task": np.full(len(x), 1, "int32")}, y)
    ).batch(8)
    fast = fisher_lib.diagonal_fisher(
        model, model.trainable_variables, ds, num_samples=20
    )
    slow = _loop_fisher(model, x, 1, y)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-8)


def test_expected_fisher_matches_loop(tiny_benchmark):
    model = _model(tiny_benchmark)
    x, y = tiny_benchmark.train_arrays(0, head="multi", limit=6)
    task_ids = np.zeros(len(x), "int32")
    ds = tf.data.Dataset.from_tensor_slices(
        ({"x": x, "task": task_ids}, y)
    ).batch(6)
    fast = fisher_lib.diagonal_fisher(
        model, model.trainable_variables, ds, 6, mode="expected"
    )
    probs = tf.nn.softmax(model({"x": x, "task": task_ids})).numpy()
    slow = _loop_fisher(model, x, 0, probs, expected=True)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-8)


def test_true_fisher_is_seeded_and_nonnegative(tiny_benchmark):
    model = _model(tiny_benchmark)
    ds = tiny_benchmark.train_dataset(
        0, 16, head="multi", with_task_id=True, shuffle=False,
        drop_remainder=False,
    )
    a = fisher_lib.diagonal_fisher(
        model, model.trainable_variables, ds, 32, mode="true", seed=3
    )
    b = fisher_lib.diagonal_fisher(
        model, model.trainable_variables, ds, 32, mode="true", seed=3
    )
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u.numpy(), v.numpy())
        assert np.all(u.numpy() >= 0)


def test_fisher_rejects_bad_arguments(tiny_benchmark):
    model = _model(tiny_benchmark)
    with pytest.raises(ValueError, match="Fisher mode"):
        fisher_lib.make_fisher_fn(model, model.trainable_variables, "nope")
    with pytest.raises(ValueError, match="positive number of samples"):
        fisher_lib.diagonal_fisher(model, [], [], num_samples=0)
    with pytest.raises(ValueError, match="fisher_mode"):
        EWC(1.0, fisher_mode="nope")
    with pytest.raises(ValueError, match="non-negative"):
        EWC(-1.0)


@pytest.mark.parametrize("online", [False, True])
def test_ewc_end_task_updates_state(tiny_benchmark, online):
    model = _model(tiny_benchmark)
    ewc = EWC(10.0, fisher_samples=16, online=online, gamma=0.5)
    ewc.build(model)
    assert float(ewc.penalty(model)) == 0.0
    ewc.end_task(model, 0, tiny_benchmark)
    first = [v.numpy().copy() for v in ewc.importance]
    np.testing.assert_allclose(ewc.anchor[0].numpy(), ewc.params[0].numpy(),
                               rtol=1e-6)
    assert any(f.sum() > 0 for f in first)
    # Move the parameters: the penalty grows as lambda/2 * F * d^2.
    model.hidden_layers[0].kernel.assign(model.hidden_layers[0].kernel + 0.1)
    expected = 0.5 * 10.0 * first[0].sum() * 0.01
    assert float(ewc.penalty(model)) == pytest.approx(expected, rel=1e-4)
    ewc.end_task(model, 1, tiny_benchmark)
    second = ewc.fisher(model, 1, tiny_benchmark)
    decay = 0.5 if online else 1.0
    np.testing.assert_allclose(
        ewc.importance[0].numpy(), decay * first[0] + second[0].numpy(),
        rtol=1e-5,
    )


def _compiled_model(method, benchmark, hidden_units, consolidation,
                    optimizer):
    """A seeded `method` model with `consolidation`, compiled for `fit`."""
    keras.utils.set_random_seed(0)
    model = get_method(method)(
        input_shape=benchmark.input_shape,
        num_classes=benchmark.num_classes,
        task_classes=benchmark.task_classes,
        hidden_units=hidden_units,
        consolidation=consolidation,
    )
    model.build_for_inputs()
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.build_optimizers()
    return model


def test_ewc_penalty_holds_old_weights(tiny_benchmark):
    """With a huge lambda, task 2 barely moves the weights task 1 needs."""

    def drift(strength):
        model = _compiled_model(
            "ewc", tiny_benchmark, (16,), EWC(strength, fisher_samples=64),
            keras.optimizers.Adam(0.01),
        )
        model.begin_task(0, tiny_benchmark)
        model.fit(tiny_benchmark.train_dataset(0, 16), epochs=3, verbose=0,
                  shuffle=False)
        model.end_task(0, tiny_benchmark)
        anchor = [v.numpy().copy() for v in model.trainable_variables]
        importance = [v.numpy().copy() for v in model.consolidation.importance]
        model.begin_task(1, tiny_benchmark)
        model.fit(tiny_benchmark.train_dataset(1, 16), epochs=3, verbose=0,
                  shuffle=False)
        model.task.assign(0)
        x, y = tiny_benchmark.test_arrays(0)
        accuracy = np.mean(model.predict(x, verbose=0).argmax(-1) == y)
        moved = sum(
            float(np.sum(f * (v.numpy() - a) ** 2))
            for f, v, a in zip(importance, model.trainable_variables, anchor)
        )
        return moved, accuracy

    free_drift, free_accuracy = drift(0.0)
    held_drift, held_accuracy = drift(1e4)
    assert held_drift < 0.2 * free_drift
    assert free_accuracy < 0.5 < 0.9 < held_accuracy


def test_max_normalized_fisher_peaks_at_one(tiny_benchmark):
    model = _model(tiny_benchmark)
    ewc = EWC(1.0, fisher_samples=16, normalize="max")
    ewc.build(model)
    ewc.end_task(model, 0, tiny_benchmark)
    top = max(float(v.numpy().max()) for v in ewc.importance)
    assert top == pytest.approx(1.0)
    with pytest.raises(ValueError, match="normalize"):
        EWC(1.0, normalize="sum")


def test_quadratic_penalty_gradient_is_closed_form():
    rng = np.random.default_rng(0)
    p = tf.Variable(rng.normal(size=(3, 4)).astype("float32"))
    b = tf.Variable(rng.normal(size=(4,)).astype("float32"))
    anchors = [rng.normal(size=(3, 4)), rng.normal(size=(4,))]
    weights = [rng.random((3, 4)), rng.random(4)]
    with tf.GradientTape() as tape:
        value = quadratic_penalty([p, b], anchors, weights)
    gp, gb = tape.gradient(value, [p, b])
    expected = sum(
        np.sum(w * (v.numpy() - a) ** 2)
        for v, a, w in zip([p, b], anchors, weights)
    )
    assert float(value) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(gp, 2 * weights[0] * (p.numpy() - anchors[0]),
                               rtol=1e-5)
    np.testing.assert_allclose(gb, 2 * weights[1] * (b.numpy() - anchors[1]),
                               rtol=1e-5)


class _TapeEWC(EWC):
    """EWC whose penalty goes through the gradient tape (the reference)."""

    closed_form_gradient = False


@pytest.mark.parametrize("method", ["ewc", "bd_ewc"])
def test_closed_form_penalty_step_matches_the_tape(tiny_benchmark, method):
    """The train step's closed-form penalty gradient, added to the tape's,
    takes the step that differentiating `loss + penalty` takes."""

    def train(consolidation_cls):
        model = _compiled_model(
            method, tiny_benchmark, (16, 16),
            consolidation_cls(50.0, fisher_samples=32),
            keras.optimizers.SGD(0.05),
        )
        model.begin_task(0, tiny_benchmark)
        model.fit(tiny_benchmark.train_dataset(0, 16), epochs=1, verbose=0,
                  shuffle=False)
        model.end_task(0, tiny_benchmark)
        model.begin_task(1, tiny_benchmark)
        history = model.fit(tiny_benchmark.train_dataset(1, 16), epochs=2,
                            verbose=0, shuffle=False)
        return [v.numpy() for v in model.trainable_variables], history.history

    closed_weights, closed_logs = train(EWC)
    tape_weights, tape_logs = train(_TapeEWC)
    assert EWC.closed_form_gradient and not _TapeEWC.closed_form_gradient
    assert closed_logs["penalty"][-1] > 0
    for key in ("loss", "penalty"):
        np.testing.assert_allclose(closed_logs[key], tape_logs[key],
                                   rtol=1e-4)
    for closed, tape in zip(closed_weights, tape_weights):
        np.testing.assert_allclose(closed, tape, rtol=1e-4, atol=1e-6)


def test_register_refuses_a_consolidation_without_from_config():
    class Unbuildable(Consolidation):
        def penalty(self, model):
            return 0.0

    with pytest.raises(TypeError, match="needs a classmethod from_config"):
        register("unbuildable")(Unbuildable)
    assert "unbuildable" not in consolidation_names()


def test_a_gradient_rule_must_rewrite():
    class NoRewrite(GradientRule):
        pass

    with pytest.raises(TypeError, match="abstract method"):
        NoRewrite()
