"""GEM: the dual QP, the episodic memory, the projection inside `fit`
(also under MirroredStrategy), serialization, checkpoints and a whole run."""

import itertools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cl_zoo import train_lib
from cl_zoo.config import resolve_config
from cl_zoo.consolidation.gem import GEM as GEMProjection
from cl_zoo.methods import get_method
from cl_zoo.methods.gem import GEM, project_gradient, solve_gem_dual

LR = 0.05


def _gem(benchmark, jit_compile="auto", method="gem", **overrides):
    keras.utils.set_random_seed(0)
    cls = get_method(method)
    values = {"hidden_units": (16, 16), "memory_size": 24, **overrides}
    model = cls.from_run_config(
        resolve_config(cls, "tiny", values), benchmark
    )
    model.build_for_inputs()
    model.compile(
        optimizer=keras.optimizers.SGD(LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    model.build_optimizers()
    return model


def _train(model, benchmark, task, epochs=3):
    model.begin_task(task, benchmark)
    history = model.fit(model.train_dataset(task, benchmark, 16),
                        epochs=epochs, verbose=0, shuffle=False)
    model.end_task(task, benchmark)
    return history


def _flat(tensors):
    return np.concatenate([np.ravel(np.asarray(t)) for t in tensors])


def _assign_flat(variables, flat):
    offset = 0
    for v in variables:
        size = int(np.prod(v.shape))
        v.assign(np.reshape(flat[offset:offset + size], v.shape))
        offset += size


# ----------------------------------------------------------------------
# The QP.
def _brute_force_dual(gram, dots, margin):
    """Minimum of 1/2 v'Pv + b'v over v >= margin, by trying every set of
    free variables (the bound ones held at the margin)."""
    k = len(dots)
    best = None
    for free in itertools.product([False, True], repeat=k):
        free = np.array(free)
        v = np.full(k, margin)
        if free.any():
            rhs = -(dots + gram[:, ~free] @ v[~free])[free]
            v[free] = np.linalg.lstsq(gram[np.ix_(free, free)], rhs,
                                      rcond=None)[0]
        if np.all(v >= margin - 1e-12):
            value = 0.5 * v @ gram @ v + dots @ v
            if best is None or value < best[0]:
                best = (value, v)
    return best


def test_single_constraint_is_the_closed_form_projection():
    g = np.array([1.0, -2.0, 0.5])
    g0 = np.array([0.0, 1.0, 1.0])  # <g, g0> = -1.5
    z, violated = project_gradient(g, g0[None], margin=0.0)
    assert bool(violated)
    expected = g - (g @ g0) / (g0 @ g0) * g0
    np.testing.assert_allclose(z, expected, atol=1e-12)
    assert abs(float(np.dot(z, g0))) < 1e-12
    # A margin above the exact weight 0.75 becomes the weight itself.
    z, _ = project_gradient(g, g0[None], margin=2.0)
    np.testing.assert_allclose(z, g + 2.0 * g0, atol=1e-12)


@pytest.mark.parametrize("margin", [0.0, 0.5])
@pytest.mark.parametrize("seed", range(6))
def test_dual_solver_matches_brute_force(margin, seed):
    rng = np.random.default_rng(seed)
    k, p = 3, 20
    shared = rng.normal(size=p)
    # Old tasks' gradients that mostly agree, of very different norms, and
    # a proposal against them: some constraints bind, some do not.
    memory = (rng.normal(size=(k, p)) + 2.0 * shared) * rng.uniform(
        0.05, 5.0, size=(k, 1)
    )
    g = -shared + 0.7 * rng.normal(size=p)
    gram, dots = memory @ memory.T, memory @ g
    best, v_star = _brute_force_dual(gram, dots, margin)
    v = solve_gem_dual(gram, dots, margin).numpy()
    value = 0.5 * v @ gram @ v + dots @ v
    assert value == pytest.approx(best, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(v, v_star, rtol=1e-6, atol=1e-9)
    z, violated = project_gradient(g, memory, margin)
    assert bool(violated) == bool(np.any(dots < 0))
    if violated:
        # KKT: no constraint violated, tight where v rose above the margin.
        r = memory @ z.numpy()
        scale = np.linalg.norm(memory, axis=1) * np.linalg.norm(z)
        assert np.all(r >= -1e-9 * scale)
        np.testing.assert_allclose(r[v > margin + 1e-9], 0.0,
                                   atol=1e-9 * scale.max())


def test_satisfied_or_inactive_constraints_leave_the_gradient_alone():
    g = np.array([1.0, 2.0, 0.0], np.float32)
    agree = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 5.0]], np.float32)
    z, violated = project_gradient(g, agree, margin=0.5)
    assert not bool(violated)
    np.testing.assert_array_equal(z, g)
    # A violated row that is not a constraint (a task not yet seen).
    rows = np.concatenate([agree, [[-1.0, 0.0, 0.0]]]).astype(np.float32)
    z, violated = project_gradient(g, rows, 0.5, [True, True, False])
    assert not bool(violated)
    np.testing.assert_array_equal(z, g)
    z, violated = project_gradient(g, rows, 0.5, [True, True, True])
    assert bool(violated) and not np.allclose(z, g)


def test_solver_handles_duplicate_and_zero_rows():
    g = np.array([-1.0, 0.0, 1.0])
    row = np.array([1.0, 1.0, 0.0])
    memory = np.stack([row, row, np.zeros(3)])
    z, violated = project_gradient(g, memory, margin=0.0)
    assert bool(violated)
    # Both copies of the row together add exactly what one would.
    np.testing.assert_allclose(z, [-0.5, 0.5, 1.0], atol=1e-9)


# ----------------------------------------------------------------------
# The memory.
@pytest.mark.parametrize("head", ["single", "multi"])
def test_memory_holds_seeded_examples_of_each_task(tiny_benchmark, head):
    model = _gem(tiny_benchmark, head=head)
    model.end_task(0, tiny_benchmark)
    model.end_task(1, tiny_benchmark)
    mem_x, mem_y, count = (v.numpy() for v in model.consolidation.memory)
    assert count.tolist() == [24, 24, 0]
    for t in (0, 1):
        x, y = tiny_benchmark.train_arrays(t, head=model.label_mode)
        keep = model.consolidation.memory_indices(t, len(x))
        assert len(set(keep.tolist())) == 24
        np.testing.assert_array_equal(mem_x[t], x[keep])
        np.testing.assert_array_equal(mem_y[t], y[keep])
        labels = [0, 1] if head == "multi" else tiny_benchmark.task_classes[t]
        assert set(mem_y[t].tolist()) <= set(labels)
    assert not np.any(mem_x[2]) and not np.any(mem_y[2])
    # The same seed keeps the same examples; another seed others.
    again = _gem(tiny_benchmark, head=head)
    again.end_task(1, tiny_benchmark)
    np.testing.assert_array_equal(
        again.consolidation.memory[0].numpy()[1], mem_x[1])
    other = _gem(tiny_benchmark, head=head, seed=1)
    other.end_task(1, tiny_benchmark)
    assert not np.array_equal(
        other.consolidation.memory[0].numpy()[1], mem_x[1])


def test_short_task_fills_part_of_the_memory(tiny_benchmark):
    model = _gem(tiny_benchmark, memory_size=100)
    model.end_task(2, tiny_benchmark)
    mem_x, mem_y, count = (v.numpy() for v in model.consolidation.memory)
    x, y = tiny_benchmark.train_arrays(2)
    assert count[2] == len(x) == 80
    np.testing.assert_array_equal(mem_x[2, :80], x)
    np.testing.assert_array_equal(mem_y[2, :80], y)
    assert not np.any(mem_x[2, 80:]) and not np.any(mem_y[2, 80:])


def test_memory_gradients_are_each_old_tasks_mean_loss_gradient(
        tiny_benchmark):
    model = _gem(tiny_benchmark, head="multi")
    for task in (0, 1):
        _train(model, tiny_benchmark, task, epochs=1)
    model.begin_task(2, tiny_benchmark)
    variables = model.trainable_variables
    rows = model.consolidation.memory_gradients(model, variables).numpy()
    assert rows.shape == (3, sum(int(np.prod(v.shape)) for v in variables))
    mem_x, mem_y = (v.numpy() for v in model.consolidation.memory[:2])
    for t in (0, 1):
        with tf.GradientTape() as tape:
            logits = model({"x": mem_x[t], "task": tf.fill([24], t)})
            loss = keras.losses.sparse_categorical_crossentropy(
                mem_y[t], logits, from_logits=True
            )
            loss = tf.reduce_mean(loss)
        expected = _flat(tape.gradient(loss, variables))
        np.testing.assert_allclose(rows[t], expected, rtol=1e-4, atol=1e-6)
    assert not np.any(rows[2])


# ----------------------------------------------------------------------
# The projection inside `fit`.
@pytest.mark.parametrize("margin", [0.0, 2.0])
def test_fit_takes_the_projected_step(tiny_benchmark, margin):
    """One task-1 step of `fit` moves the weights by -lr * GEM's projection
    of the batch gradient against task 0's memory gradient (here the
    closed form of one constraint: `g + max(margin, v*) g0`)."""
    model = _gem(tiny_benchmark, gem_margin=margin)
    _train(model, tiny_benchmark, 0)
    model.begin_task(1, tiny_benchmark)
    variables = model.trainable_variables
    x, y = tiny_benchmark.train_arrays(1, limit=16)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    mem_x, mem_y = (v.numpy() for v in model.consolidation.memory[:2])

    def memory_loss():
        inputs = {"x": mem_x[0], "task": np.zeros(24, "int32")}
        return loss_fn(mem_y[0], model(inputs))

    with tf.GradientTape() as tape:
        old_loss = memory_loss()
    g0 = _flat(tape.gradient(old_loss, variables))
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    g = _flat(tape.gradient(loss, variables))
    # The plain step would raise task 0's loss: GEM must step elsewhere.
    assert g @ g0 < 0
    expected, violated = project_gradient(g, g0[None], margin)
    expected = expected.numpy()
    assert bool(violated)
    weight = max(margin, -(g @ g0) / (g0 @ g0))
    np.testing.assert_allclose(expected, g + weight * g0, rtol=1e-5,
                               atol=1e-7)
    before = _flat(variables)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
                        epochs=1, verbose=0, shuffle=False)
    assert history.history["projected"] == [1.0]
    np.testing.assert_allclose(_flat(variables) - before, -LR * expected,
                               rtol=1e-3, atol=1e-7)
    assert not np.allclose(expected, g)
    # Task 0's memory loss: flat to first order after GEM's step, up by the
    # first order after the plain one.
    gem_rise = float(memory_loss()) - float(old_loss)
    _assign_flat(variables, before - LR * g)
    plain_rise = float(memory_loss()) - float(old_loss)
    assert plain_rise > 0 and gem_rise < 0.1 * plain_rise
    if margin > weight - 1e-6:  # the margin's extra push: the loss falls
        assert gem_rise < 0


def test_first_task_trains_without_projection(tiny_benchmark):
    model = _gem(tiny_benchmark)
    history = _train(model, tiny_benchmark, 0, epochs=2)
    assert history.history["projected"] == [0.0, 0.0]
    fn = model.train_function
    history = _train(model, tiny_benchmark, 1, epochs=2)
    assert model.train_function is fn  # the task switch did not retrace
    assert max(history.history["projected"]) > 0


def _half_batches(benchmark, task):
    """Batches of 16 whose halves (one per replica) hold different classes,
    so that the replicas' own gradients differ."""
    x, y = benchmark.train_arrays(task)
    first, second = (np.flatnonzero(y == c)[:16] for c in
                     benchmark.task_classes[task])
    order = np.concatenate([first[:8], second[:8], second[8:], first[8:]])
    return tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(16)


@pytest.mark.parametrize("method, extra", [
    ("gem", {}),
    # BD+GEM: the bias units' sign rule beside GEM's projection.
    ("bd_ewc", {"consolidation": "gem", "bias_hidden": 4}),
])
def test_one_and_two_replicas_take_the_same_steps(
        method, extra, tiny_benchmark, mirrored_strategy):
    """The all-reduce happens before the (nonlinear) projection."""
    results, projected = [], []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy):
        with strategy.scope():
            model = _gem(tiny_benchmark, memory_size=16, method=method,
                         **extra)
        for task in range(3):
            model.begin_task(task, tiny_benchmark)
            history = model.fit(_half_batches(tiny_benchmark, task),
                                epochs=2, verbose=0, shuffle=False)
            model.end_task(task, tiny_benchmark)
        projected.append(history.history["projected"])
        results.append([v.numpy() for v in model.trainable_variables])
        for v in model.consolidation.state_variables():
            copies = [c.numpy() for c in getattr(v.value, "values", [v])]
            for c in copies[1:]:
                np.testing.assert_array_equal(c, copies[0])
    assert projected[0] == projected[1] and min(projected[0]) > 0
    for a, b in zip(*results):
        # float32 round-off is ~3e-8 here; projecting each replica's own
        # gradient instead is off by ~7e-5.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_xla_takes_the_same_steps(tiny_benchmark):
    """Under XLA (static shapes) every task's memory row is computed and
    masked, instead of the old tasks' rows only."""
    results = []
    for jit_compile in (False, True):
        model = _gem(tiny_benchmark, memory_size=16, jit_compile=jit_compile)
        for task in range(3):
            model.begin_task(task, tiny_benchmark)
            history = model.fit(_half_batches(tiny_benchmark, task),
                                epochs=2, verbose=0, shuffle=False)
            model.end_task(task, tiny_benchmark)
        assert model.jit_compile == jit_compile
        assert min(history.history["projected"]) > 0
        results.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------
# Construction, serialization, storage.
@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"memory_size": 0}, "positive integer for `memory_size`"),
        ({"memory_size": 2.5}, "positive integer for `memory_size`"),
        ({"memory_size": True}, "positive integer for `memory_size`"),
        ({"margin": -0.1}, "non-negative number for `margin`"),
        ({"margin": float("nan")}, "non-negative number for `margin`"),
        ({"memory_seed": -1}, "non-negative integer for `memory_seed`"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        GEMProjection(**kwargs)


def test_end_task_needs_the_benchmark(tiny_benchmark):
    model = _gem(tiny_benchmark)
    with pytest.raises(ValueError, match="needs the benchmark"):
        model.end_task(0)


def test_config_round_trip_and_keras_file(tiny_benchmark, tmp_path,
                                          assert_round_trips):
    model = _gem(tiny_benchmark, head="multi", memory_size=7, gem_margin=0.25)
    _train(model, tiny_benchmark, 0, epochs=1)
    gem = model.consolidation.config()
    assert (gem["memory_size"], gem["margin"]) == (7, 0.25)
    x, _ = tiny_benchmark.test_arrays(1, head="multi")
    loaded = assert_round_trips(model, x, str(tmp_path / "gem.keras"))
    assert isinstance(loaded, GEM)
    # The memory is training state: not among the saved weights.
    assert len(loaded.weights) == len(model.weights)
    assert loaded.consolidation is None


def test_storage_adds_one_tasks_memory():
    model = GEM(input_shape=(28, 28, 1), num_classes=10,
                task_classes=[[0, 1], [2, 3]], head="multi",
                hidden_units=(512, 256),
                consolidation=GEMProjection(memory_size=256))
    model.build_for_inputs()
    head = 4 * (256 + 1) * 2
    assert model.storage_bytes_per_task() == head + 256 * (4 * 784 + 4)


# ----------------------------------------------------------------------
# A whole run: memory in the checkpoints, not in the exports.
@pytest.mark.heavy
def test_run_keeps_old_tasks_and_checkpoints_the_memory(tmp_path,
                                                        tiny_benchmark):
    def config(name):
        return resolve_config(get_method("gem"), "tiny", {
            "model_dir": str(tmp_path / name), "hidden_units": (32,),
            "epochs": 5, "batch_size": 16, "lr": 0.01, "verbose": 0,
            "memory_size": 16, "eval_batch_size": 64,
        })

    run = train_lib.ContinualRun(config("run"), benchmark=tiny_benchmark)
    results = run.run()
    r = np.array(results["accuracy_matrix"])
    assert results["config"]["head"] == "single"
    # One head over every class: plain SGD ends near [0.4, 0.5, 1.0].
    assert np.all(np.diag(r) > 0.9) and np.all(r[-1] > 0.9)
    model = run.model
    assert results["storage_bytes_per_task"] == 16 * (4 * 36 + 4)
    memory = [v.numpy() for v in model.consolidation.state_variables()]
    assert memory[2].tolist() == [16, 16, 16]
    exported = {id(v) for v in model.inference_variables()}
    assert not exported & {
        id(v) for v in model.consolidation.state_variables()}
    assert results["num_params"] == sum(
        int(np.prod(v.shape)) for v in model.variables
    )
    assert os.path.isdir(tmp_path / "run" / "export" / "all_tasks")

    fresh = train_lib.ContinualRun(config("fresh"), benchmark=tiny_benchmark)
    fresh.checkpoint.root = run.checkpoint.root
    fresh.checkpoint.restore(train_lib.read_progress(
        run.config.model_dir)["checkpoint"])
    for a, v in zip(memory, fresh.model.consolidation.state_variables()):
        np.testing.assert_array_equal(a, v.numpy())
