"""SPP, MAS and SI: importances against per-example loops, SI's path
integral against a hand-kept one, one vs two replicas, LwF's distillation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cl_zoo.config import resolve_config
from cl_zoo.consolidation import MAS, SI, SPP
from cl_zoo.consolidation.importance import spp_term
from cl_zoo.consolidation.lwf import LwF
from cl_zoo.consolidation.per_example import mean_over_examples
from cl_zoo.consolidation.registry import make_consolidation
from cl_zoo.methods import get_method


def _model(benchmark, consolidation=None, name="finetune", lr=0.05,
           settings=None, **overrides):
    keras.utils.set_random_seed(1)
    cls = get_method(name)
    config = resolve_config(
        cls, "tiny",
        {"hidden_units": (8,), "fisher_samples": 24, "head": "multi",
         **overrides, **(settings or {})},
        skip_unread=True,
    )
    if consolidation is None:
        model = cls.from_run_config(config, benchmark)
    else:
        model = cls(
            input_shape=benchmark.input_shape,
            num_classes=benchmark.num_classes,
            task_classes=benchmark.task_classes,
            head="multi",
            hidden_units=(8,),
            consolidation=consolidation,
        )
    model.build_for_inputs()
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.build_optimizers()
    return model


def _loop_importance(model, x, task, objective, term):
    """Reference: one GradientTape per example."""
    variables = model.consolidation.params
    total = [np.zeros(v.shape) for v in variables]
    for i in range(len(x)):
        inputs = {"x": x[i:i + 1], "task": np.array([task], "int32")}
        with tf.GradientTape() as tape:
            value = objective(model(inputs)[0])
        grads = tape.gradient(value, variables)
        for k, (g, v) in enumerate(zip(grads, variables)):
            total[k] += term(g.numpy(), v.numpy())
    return [t / len(x) for t in total]


def _entropy(logits):
    q = tf.nn.softmax(logits)
    return -tf.reduce_sum(q * tf.math.log(q))


def test_spp_term_is_the_clipped_pruning_cost():
    g = np.array([1.0, -1.0, -4.0, 0.0], "float32")
    w = np.array([1.0, 1.0, 1.0, 5.0], "float32")
    # g*w + (g*w)^2/2: 1.5, -0.5 -> 0, -4 + 8 = 4, 0.
    np.testing.assert_allclose(spp_term(g, w).numpy(), [1.5, 0.0, 4.0, 0.0])


@pytest.mark.parametrize("kind", ["spp", "mas"])
def test_importance_matches_per_example_loop(kind, tiny_benchmark):
    cls = SPP if kind == "spp" else MAS
    model = _model(tiny_benchmark, cls(1.0, samples=20, chunk_size=8))
    x, _ = tiny_benchmark.train_arrays(1, head="multi", limit=20)
    consolidation = model.consolidation
    consolidation.build(model)
    ds = tf.data.Dataset.from_tensor_slices(
        ({"x": x, "task": np.ones(len(x), "int32")},
         np.zeros(len(x), "int64"))
    ).batch(8)
    fast = mean_over_examples(
        consolidation._chunk_fn, consolidation.params, ds, 20
    )
    if kind == "spp":
        slow = _loop_importance(
            model, x, 1, _entropy,
            lambda g, w: np.maximum(0, g * w + 0.5 * (g * w) ** 2),
        )
    else:
        slow = _loop_importance(
            model, x, 1, lambda out: tf.reduce_sum(out ** 2),
            lambda g, w: np.abs(g),
        )
    assert any(s.sum() > 0 for s in slow)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-7)


def test_grouped_spp_uses_batch_gradients(tiny_benchmark):
    """group_size=G: the terms of the gradient of each G examples' summed
    entropy, averaged over the groups."""
    model = _model(tiny_benchmark, SPP(1.0, samples=12, group_size=4))
    spp = model.consolidation
    spp.build(model)
    x, _ = tiny_benchmark.train_arrays(0, head="multi", limit=12)
    ds = tf.data.Dataset.from_tensor_slices(
        ({"x": x, "task": np.zeros(len(x), "int32")},
         np.zeros(len(x), "int64"))
    ).batch(spp.chunk_size)
    fast = mean_over_examples(spp._chunk_fn, spp.params, ds, 12, group=4)
    total = [np.zeros(v.shape) for v in spp.params]
    for start in range(0, 12, 4):
        inputs = {"x": x[start:start + 4], "task": np.zeros(4, "int32")}
        with tf.GradientTape() as tape:
            value = tf.add_n([_entropy(row) for row in model(inputs)])
        for k, (g, w) in enumerate(zip(tape.gradient(value, spp.params),
                                       spp.params)):
            gw = g.numpy() * w.numpy()
            total[k] += np.maximum(0, gw + 0.5 * gw**2)
    for a, b in zip(fast, total):
        np.testing.assert_allclose(a.numpy(), b / 3, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="group_size"):
        SPP(1.0, samples=4, group_size=8)


@pytest.mark.parametrize("cls", [SPP, MAS])
def test_importance_is_summed_over_tasks_and_anchored(cls, tiny_benchmark):
    model = _model(tiny_benchmark, cls(2.0, samples=16))
    consolidation = model.consolidation
    consolidation.end_task(model, 0, tiny_benchmark)
    first = [v.numpy().copy() for v in consolidation.importance]
    assert all(np.all(f >= 0) for f in first) and sum(
        f.sum() for f in first) > 0
    kernel = model.hidden_layers[0].kernel
    kernel.assign(kernel + 0.1)
    # No half: strength * Omega * d^2.
    expected = 2.0 * first[0].sum() * 0.01
    assert float(consolidation.penalty(model)) == pytest.approx(
        expected, rel=1e-4)
    consolidation.end_task(model, 1, tiny_benchmark)
    second = consolidation.task_importance(model, 1, tiny_benchmark)
    np.testing.assert_allclose(
        consolidation.importance[0].numpy(), first[0] + second[0].numpy(),
        rtol=1e-5,
    )
    np.testing.assert_array_equal(consolidation.anchor[0].numpy(),
                                  kernel.numpy())


def test_bad_importance_settings_are_refused():
    with pytest.raises(ValueError, match="positive number of importance"):
        SPP(1.0, samples=0)
    with pytest.raises(ValueError, match="damping"):
        SI(1.0, damping=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        MAS(-1.0)


def _data_loss_grads(model, x, y):
    variables = model.consolidation.params
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            y, model(x))
    return [g.numpy() for g in tape.gradient(loss, variables)]


def test_si_path_integral_matches_hand_kept_sum(tiny_benchmark):
    """omega = -sum_steps g_data * delta_w, the penalty's pull left out."""
    model = _model(tiny_benchmark, SI(5.0, damping=0.1), lr=0.1)
    si = model.consolidation
    x, y = tiny_benchmark.train_arrays(0, head="multi", limit=16)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    for task in range(2):
        if task == 1:
            x, y = tiny_benchmark.train_arrays(1, head="multi", limit=16)
            ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        model.begin_task(task, tiny_benchmark)
        start = [p.numpy().copy() for p in si.params]
        expected = [np.zeros(p.shape) for p in si.params]
        for _ in range(4):
            grads = _data_loss_grads(model, x, y)
            before = [p.numpy().copy() for p in si.params]
            model.fit(ds, epochs=1, verbose=0, shuffle=False)
            for k, p in enumerate(si.params):
                expected[k] -= grads[k] * (p.numpy() - before[k])
        for got, want in zip(si.omega, expected):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-3,
                                       atol=1e-7)
        importance = [v.numpy().copy() for v in si.importance]
        model.end_task(task, tiny_benchmark)
        for k, p in enumerate(si.params):
            delta = p.numpy() - start[k]
            gained = np.maximum(0, expected[k] / (delta**2 + 0.1))
            np.testing.assert_allclose(
                si.importance[k].numpy(), importance[k] + gained,
                rtol=1e-3, atol=1e-7)
            np.testing.assert_array_equal(si.anchor[k].numpy(), p.numpy())
            assert not si.omega[k].numpy().any()
    assert sum(v.numpy().sum() for v in si.importance) > 0


@pytest.mark.parametrize("name, consolidation", [
    ("spp", None), ("si", None), ("lwf", None),
    # BD+LwF: bias units' sign rule with a penalty on the batch.
    ("bd_ewc", "lwf"),
])
def test_one_and_two_replicas_agree(name, consolidation, tiny_benchmark,
                                    mirrored_strategy):
    """The same batches give the same parameters and state on 1 and 2
    replicas, across a task boundary (importances, anchors, old network)."""
    head = "single" if consolidation else "multi"
    data = [tiny_benchmark.train_arrays(t, head=head, limit=16)
            for t in range(2)]
    results = []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy):
        with strategy.scope():
            extra = {"consolidation": consolidation, "bias_hidden": 4,
                     "head": "single"} if consolidation else {}
            model = _model(tiny_benchmark, name=name, lr=0.05,
                           settings=extra)
        for task, (x, y) in enumerate(data):
            model.begin_task(task, tiny_benchmark)
            ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
            model.fit(ds, epochs=3, verbose=0, shuffle=False)
            model.end_task(task, tiny_benchmark)
        state = model.consolidation.state_variables() if (
            model.consolidation) else model.method_state.variables
        results.append([v.numpy() for v in model.trainable_variables]
                       + [v.numpy() for v in state])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_registry_builds_each_consolidation():
    config = resolve_config(get_method("bd_ewc"), "split_mnist",
                            {"consolidation": "spp", "spp_lambda": 3.0})
    spp = make_consolidation(config.consolidation, config)
    assert isinstance(spp, SPP) and spp.strength == 3.0
    for name, cls in (("si", SI), ("mas", MAS), ("lwf", LwF)):
        config = resolve_config(get_method("bd_ewc"), "split_mnist",
                                {"consolidation": name})
        assert isinstance(make_consolidation(name, config), cls)


def test_lwf_holds_old_heads_to_the_old_network(tiny_benchmark):
    """Task 2's training keeps task 1's head outputs where they were; the
    distillation term is zero on the first task."""

    def head_drift(lwf_lambda):
        model = _model(tiny_benchmark, name="lwf", lr=0.05,
                       lwf_lambda=lwf_lambda)
        model.begin_task(0, tiny_benchmark)
        model.fit(model.train_dataset(0, tiny_benchmark, 16), epochs=3,
                  verbose=0, shuffle=False)
        x, _ = tiny_benchmark.train_arrays(1, head="multi", limit=64)
        lwf = model.consolidation
        assert float(lwf.distillation_loss(model, x)) == 0.0
        model.end_task(0, tiny_benchmark)
        old = model({"x": x, "task": np.zeros(len(x), "int32")}).numpy()
        model.begin_task(1, tiny_benchmark)
        np.testing.assert_array_equal(
            lwf.old_weights[0].numpy(), model.trainable_variables[0].numpy())
        model.fit(model.train_dataset(1, tiny_benchmark, 16), epochs=5,
                  verbose=0, shuffle=False)
        new = model({"x": x, "task": np.zeros(len(x), "int32")}).numpy()
        return float(np.mean((tf.nn.softmax(new) - tf.nn.softmax(old))**2))

    assert head_drift(10.0) < 0.5 * head_drift(0.0)


def test_max_normalized_importance_peaks_at_one(tiny_benchmark):
    model = _model(tiny_benchmark, SPP(1.0, samples=16, normalize="max"))
    model.consolidation.end_task(model, 0, tiny_benchmark)
    top = max(float(v.numpy().max()) for v in model.consolidation.importance)
    assert top == pytest.approx(1.0)
    with pytest.raises(ValueError, match="normalize"):
        MAS(1.0, normalize="sum")
