"""Scale and reliability: one vs two replicas for every method, repeatable
runs, bad input to models and exports, broken run state, atomic writes."""

import concurrent.futures
import json
import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from cl_zoo import export as export_lib
from cl_zoo import train_lib
from cl_zoo.config import resolve_config
from cl_zoo.methods import get_method, method_names

# gem and dgm have their own replica tests (test_gem.py, test_dgm.py).
OWN_REPLICA_TESTS = ("gem", "dgm")
REPLICA_METHODS = tuple(
    n for n in method_names() if n not in OWN_REPLICA_TESTS
)


def _build(name, benchmark, **overrides):
    keras.utils.set_random_seed(3)
    cls = get_method(name)
    values = {
        "hidden_units": (6,), "fisher_samples": 16, "bias_hidden": 3,
        "memory_units": 2, "epsilon": 0.02, "ewc_lambda": 10.0,
        "si_lambda": 10.0, "spp_lambda": 10.0, "mas_lambda": 10.0,
        **overrides,
    }
    config = resolve_config(cls, "tiny", values, skip_unread=True)
    model = cls.from_run_config(config, benchmark)
    model.build_for_inputs()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.build_optimizers()
    return model


def _state(model):
    """Every variable a run keeps: weights, optimizers, method state."""
    groups = {
        "model": model.variables,
        "optimizer": model.optimizer.variables,
        "rules": [v for r in model.gradient_rules
                  for v in r.optimizer.variables],
        "consolidation": (model.consolidation.state_variables()
                          if model.consolidation else []),
        "method_state": model.method_state.variables,
    }
    # Labels without the optimizers' auto-numbered names (sgd, sgd_1...).
    return [
        (f"{group}[{i}] {v.name}", np.array(v.numpy()))
        for group, variables in groups.items()
        for i, v in enumerate(variables)
    ]


def _fixed_batches(model, benchmark, task, steps=3):
    """The first `steps` batches of the method's own training data, fixed.

    The benchmark reshuffles every new iterator, and under a strategy
    Keras's `fit` draws one batch from an iterator of its own before
    training (`_maybe_symbolic_build`), so the same pipeline would hand the
    two runs different orders.
    """
    batches = list(model.train_dataset(task, benchmark, 16, seed=task)
                   .take(steps))
    stacked = tf.nest.map_structure(lambda *b: tf.stack(b), *batches)
    return tf.data.Dataset.from_tensor_slices(stacked)


@pytest.mark.parametrize("name", REPLICA_METHODS)
def test_one_and_two_replicas_agree(name, tiny_benchmark, mirrored_strategy):
    """The same global batches on 1 and 2 replicas, over a task boundary,
    leave the same weights, optimizer slots and consolidation / method
    state (Fisher, importances, anchors, frozen bias rows, old network)."""
    results = []
    for strategy in (tf.distribute.get_strategy(), mirrored_strategy):
        with strategy.scope():
            model = _build(name, tiny_benchmark)
        for task in range(2):
            model.begin_task(task, tiny_benchmark)
            model.fit(_fixed_batches(model, tiny_benchmark, task), epochs=2,
                      verbose=0, shuffle=False)
            model.end_task(task, tiny_benchmark)
        results.append(_state(model))
    one, two = results
    assert [p for p, _ in one] == [p for p, _ in two]
    assert model.trainable_variables
    for (path, a), (_, b) in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=path)


# Repeatable runs -------------------------------------------------------------
def _config(tmp_path, name="run", method="bd_ewc", **overrides):
    values = {
        "model_dir": str(tmp_path / name), "hidden_units": (8,),
        "bias_hidden": 4, "epochs": 2, "batch_size": 16, "lr": 0.01,
        "verbose": 0, "fisher_samples": 16, "eval_batch_size": 64,
        "export": False, **overrides,
    }
    return resolve_config(get_method(method), "tiny", values,
                          skip_unread=True)


def _comparable(results):
    """Results without timings and the run's own directory."""
    out = {k: v for k, v in results.items() if k != "train_seconds"}
    out["extra"] = {k: v for k, v in results["extra"].items()
                    if k != "train_cpu_seconds"}
    out["config"] = {k: v for k, v in results["config"].items()
                     if k != "model_dir"}
    return out


@pytest.mark.heavy
def test_same_seed_gives_the_same_run(tmp_path, tiny_benchmark):
    """Two runs of one config in one process: the same results.json (but
    the wall time) and bit-identical weights, without op determinism."""
    runs = []
    for name in ("a", "b"):
        run = train_lib.ContinualRun(_config(tmp_path, name),
                                     benchmark=tiny_benchmark)
        runs.append((run.run(), [v.numpy() for v in run.model.variables]))
    (first, weights_a), (second, weights_b) = runs
    assert _comparable(first) == _comparable(second)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)


# Bad input to the exports ----------------------------------------------------
@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """`export_all` of an untrained 3-task model with inputs (6, 6, 1), one
    head per task; the loaded signatures, kept referenced."""
    from cl_zoo.benchmarks.base import Benchmark

    rng = np.random.default_rng(0)
    pool = (rng.integers(0, 255, (12, 6, 6, 1)).astype("uint8"),
            np.arange(12) % 6)
    bm = Benchmark("tiny", train=pool, test=pool,
                   task_classes=[[0, 1], [2, 3], [4, 5]], num_classes=6)
    model = _build("finetune", bm)
    root = str(tmp_path_factory.mktemp("exports"))
    export_lib.export_all(model, root)
    loaded = {name: tf.saved_model.load(os.path.join(root, name))
              for name in ("all_tasks", "task_1")}
    return {name: (m, m.signatures["serving_default"])
            for name, m in loaded.items()}


def _x(n=4, shape=(6, 6, 1), dtype="float32"):
    return tf.constant(
        np.random.default_rng(0).random((n, *shape)).astype(dtype))


def _serve(exports, name, x, task_id=1):
    _, fn = exports[name]
    if name == "all_tasks":
        return fn(x=x, task_id=task_id)
    return fn(x=x)


@pytest.mark.parametrize("name", ["all_tasks", "task_1"])
def test_exports_answer_good_input(exports, name):
    scores = _serve(exports, name, _x(), tf.constant(1))["scores"].numpy()
    assert scores.shape == (4, 2)
    np.testing.assert_allclose(scores.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["all_tasks", "task_1"])
@pytest.mark.parametrize(
    "x",
    [_x(shape=(36,)), _x(shape=(6, 6, 2)), _x(shape=(6, 6, 1, 1)),
     _x(shape=(6, 6))],
    ids=["flat", "channels", "rank5", "rank3"],
)
def test_exports_reject_a_wrong_shape(exports, name, x):
    """The loaded signature does not check shapes itself (a flattened batch
    of the same size used to pass): the export does."""
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"x must have shape \(batch, 6, 6, 1\)"):
        _serve(exports, name, x, tf.constant(1))


@pytest.mark.parametrize("name", ["all_tasks", "task_1"])
@pytest.mark.parametrize("dtype", ["int32", "uint8", "float64", "string"])
def test_exports_reject_a_wrong_dtype(exports, name, dtype):
    if dtype == "string":
        x = tf.fill((4, 6, 6, 1), "0.5")
    else:
        x = _x(dtype=dtype)
    shown = {"float64": "double"}.get(dtype, dtype)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=f"expected to be a float tensor but is a {shown} tensor",
    ):
        _serve(exports, name, x, tf.constant(1))


@pytest.mark.parametrize("name", ["all_tasks", "task_1"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_exports_reject_non_finite_inputs(exports, name, value):
    x = _x().numpy()
    x[2, 3, 3, 0] = value
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="inputs must be finite"):
        _serve(exports, name, tf.constant(x), tf.constant(1))


@pytest.mark.parametrize(
    "task_id, message",
    [
        (tf.constant(-1), r"0 <= task_id < 3"),
        (tf.constant(3), r"0 <= task_id < 3"),
        (tf.constant([0, 1, 2, 0]), "task_id must be a scalar"),
        (tf.constant([1]), "task_id must be a scalar"),
        (tf.constant(1, tf.int64), "expected to be a int32 tensor"),
        (tf.constant(1.0), "expected to be a int32 tensor"),
    ],
    ids=["negative", "too_big", "per_example", "vector", "int64", "float"],
)
def test_all_tasks_export_rejects_bad_task_ids(exports, task_id, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _serve(exports, "all_tasks", _x(), task_id)


def test_export_module_function_checks_its_signature(exports):
    """`loaded.serve` (the tf.function, not the signature) refuses other
    shapes and dtypes when it binds its inputs."""
    module, _ = exports["task_1"]
    with pytest.raises(TypeError, match="Can not cast TensorSpec"):
        module.serve(_x(shape=(6, 6, 2)))
    with pytest.raises(TypeError, match="Can not cast TensorSpec"):
        module.serve(_x(dtype="int32"))


# Bad input to the model ------------------------------------------------------
@pytest.fixture
def model(tiny_benchmark):
    model = _build("finetune", tiny_benchmark)
    model.task.assign(1)
    return model


def test_model_rejects_a_wrong_shape(model):
    x = _x().numpy()
    with pytest.raises(ValueError, match=r"shape \(batch, 6, 6, 1\)"):
        model(x.reshape(4, 36))
    with pytest.raises(ValueError, match=r"shape \(batch, 6, 6, 1\)"):
        model.predict(x.reshape(4, 36), verbose=0)
    # A later predict traces with relaxed shapes: still checked, at run time.
    model.predict(x, verbose=0)
    model.predict(x[:3], verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"not compatible with expected shape "
                             r"\[\?,6,6,1\]"):
        model.predict(np.zeros((4, 6, 6, 1, 1), "float32"), verbose=0)


def test_model_rejects_strings_and_casts_integers(model):
    with pytest.raises(TypeError, match="Received: dtype=string"):
        model(tf.fill((4, 6, 6, 1), "0.5"))
    with pytest.raises(ValueError, match="Invalid dtype"):
        model.predict(np.full((4, 6, 6, 1), "0.5"), verbose=0)
    # Integers are cast as they are (documented): not scaled by 1/255.
    ints = np.random.default_rng(0).integers(0, 3, (4, 6, 6, 1))
    np.testing.assert_allclose(model(ints.astype("int32")),
                               model(ints.astype("float32")), rtol=1e-6)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_model_rejects_non_finite_inputs(model, value):
    x = _x().numpy()
    x[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match="Expected finite inputs"):
        model(x)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="inputs must be finite"):
        model.predict(x, verbose=0)


@pytest.mark.parametrize("task", [-1, 3, 7])
def test_model_rejects_task_ids_out_of_range(model, task):
    x = _x().numpy()
    ids = np.array([0, 1, task, 2], "int32")
    with pytest.raises(IndexError, match=r"0 <= task < 3"):
        model({"x": x, "task": ids})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"task id out of range.*0 <= task < 3"):
        model.predict({"x": x, "task": ids}, verbose=0)
    # The active task, set by hand around begin_task's check.
    model.task.assign(task)
    with pytest.raises(IndexError, match=r"0 <= task < 3"):
        model(x)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="task id out of range"):
        model.predict(x, verbose=0)


# Broken run state ------------------------------------------------------------
def _truncate(fraction):
    def corrupt(model_dir, ckpt):
        for name in os.listdir(ckpt):
            if name.startswith("ckpt.data"):
                path = os.path.join(ckpt, name)
                with open(path, "r+b") as f:
                    f.truncate(int(os.path.getsize(path) * fraction))
    return corrupt


def _garble(prefix):
    def corrupt(model_dir, ckpt):
        for name in os.listdir(ckpt):
            if name.startswith(prefix):
                path = os.path.join(ckpt, name)
                with open(path, "rb") as f:
                    data = bytearray(f.read())
                start = len(data) // 3
                data[start:start + 16] = bytes(b ^ 0xFF for b in
                                               data[start:start + 16])
                with open(path, "wb") as f:
                    f.write(bytes(data))
    return corrupt


def _progress(text):
    def corrupt(model_dir, ckpt):
        with open(os.path.join(model_dir, "progress.json"), "wb") as f:
            f.write(text)
    return corrupt


def _edit_progress(**changes):
    def corrupt(model_dir, ckpt):
        path = os.path.join(model_dir, "progress.json")
        with open(path) as f:
            progress = json.load(f)
        progress.update(changes)
        for key, value in changes.items():
            if value is None:
                del progress[key]
        with open(path, "w") as f:
            json.dump(progress, f)
    return corrupt


CORRUPTIONS = {
    "data_truncated": (_truncate(0.5), "is corrupt"),
    "data_emptied": (_truncate(0.0), "is corrupt"),
    "data_garbled": (_garble("ckpt.data"), "Checksum does not match"),
    "index_garbled": (_garble("ckpt.index"), "is corrupt"),
    "index_missing": (
        lambda d, ckpt: os.remove(os.path.join(ckpt, "ckpt.index")),
        "is corrupt"),
    "checkpoint_missing": (lambda d, ckpt: shutil.rmtree(ckpt),
                           "is corrupt"),
    "progress_truncated": (_progress(b'{"status": "runn'),
                           "progress.json is unreadable"),
    "progress_binary": (_progress(bytes(range(256))),
                        "progress.json is unreadable"),
    "progress_not_object": (_progress(b"[1, 2]"),
                            "progress.json is unreadable"),
    "progress_no_checkpoint": (_edit_progress(checkpoint=None),
                               "progress.json is malformed"),
    "progress_bad_task": (_edit_progress(task="two"),
                          "progress.json is malformed"),
}


def _unfinished_run(tmp_path, benchmark):
    """A run killed after its last task's final checkpoint, before it
    wrote "finished": what a kill between results.json and the last
    progress.json leaves."""
    config = _config(tmp_path, "base", method="ewc", epochs=1)
    train_lib.run(config, benchmark=benchmark)
    _edit_progress(status="running")(config.model_dir, None)
    return config


@pytest.mark.heavy
def test_broken_run_state_is_an_error_never_a_restart(tmp_path,
                                                      tiny_benchmark):
    """Every corruption of an unfinished run's checkpoint or progress.json
    raises RunStateError with a one-line message naming the file and the
    way out, and leaves the run as it was."""
    base = _unfinished_run(tmp_path, tiny_benchmark)
    for case, (corrupt, fragment) in CORRUPTIONS.items():
        model_dir = str(tmp_path / case)
        shutil.copytree(base.model_dir, model_dir)
        with open(os.path.join(model_dir, "progress.json"), "rb") as f:
            name = json.loads(f.read())["checkpoint"]
        corrupt(model_dir, os.path.join(model_dir, "checkpoints", name))
        before = sorted(os.listdir(model_dir))
        with open(os.path.join(model_dir, "progress.json"), "rb") as f:
            progress = f.read()
        config = resolve_config(get_method("ewc"), "tiny",
                                {**base.to_dict(), "model_dir": model_dir})
        with pytest.raises(train_lib.RunStateError) as info:
            train_lib.run(config, benchmark=tiny_benchmark)
        message = str(info.value)
        assert fragment in message, (case, message)
        assert "--overwrite" in message and "\n" not in message, case
        assert sorted(os.listdir(model_dir)) == before, case
        with open(os.path.join(model_dir, "progress.json"), "rb") as f:
            assert f.read() == progress, case
    # --overwrite replaces even a run whose progress.json is unreadable.
    config = resolve_config(
        get_method("ewc"), "tiny",
        {**base.to_dict(), "model_dir": str(tmp_path / "progress_binary"),
         "overwrite": True},
    )
    results = train_lib.run(config, benchmark=tiny_benchmark)
    assert len(results["accuracy_matrix"]) == 3


# The command line: exit status 2 and one line --------------------------------
# TensorFlow's C++ start-up lines, which no environment variable silences.
_CPP_LOG = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog"
    r"|[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] )"
)
_TOY_ARGS = ("--method=finetune", "--benchmark=gaussian_clusters",
             "--epochs=1", "--hidden_units=8", "--verbose=0")


def test_trainer_exits_2_on_a_corrupt_run(tmp_path, run_trainer):
    """The trainer ends with exit status 2 and one line for a truncated
    checkpoint and for a garbled progress.json of an unfinished run."""
    base = str(tmp_path / "base")
    proc = run_trainer(*_TOY_ARGS, f"--model_dir={base}")
    assert proc.returncode == 0, proc.stderr
    _edit_progress(status="running")(base, None)
    with open(os.path.join(base, "progress.json")) as f:
        name = json.load(f)["checkpoint"]
    cases = {"checkpoint": (_truncate(0.5), "is corrupt or from another"),
             "progress": (_progress(b"\x00garbled"),
                          "progress.json is unreadable")}
    for case, (corrupt, _) in cases.items():
        shutil.copytree(base, str(tmp_path / case))
        corrupt(str(tmp_path / case),
                str(tmp_path / case / "checkpoints" / name))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        procs = {case: pool.submit(run_trainer, *_TOY_ARGS,
                                   f"--model_dir={tmp_path / case}")
                 for case in cases}
    for case, (_, fragment) in cases.items():
        proc = procs[case].result()
        details = f"{case}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        assert proc.returncode == 2, details
        assert "Traceback" not in proc.stderr, details
        lines = [line for line in proc.stderr.splitlines()
                 if line.strip() and not _CPP_LOG.match(line)]
        assert len(lines) == 1 and lines[0].startswith("error: "), details
        assert fragment in lines[0], details


# Atomic checkpoints and exports ----------------------------------------------
class _Killed(Exception):
    pass


@pytest.mark.heavy
def test_kill_while_writing_a_checkpoint_resumes_from_the_previous(
        tmp_path, tiny_benchmark, monkeypatch):
    """A checkpoint written halfway is never named in progress.json: the
    rerun resumes from the last complete one, keeps the finished tasks'
    rows and does not retrain them."""
    config = _config(tmp_path, method="ewc", epochs=2)
    original = train_lib.RunCheckpoint.save
    calls = []

    def dying(self, name):
        calls.append(name)
        if len(calls) == 4:  # task 1's first epoch
            path = os.path.join(self.root, name)
            os.makedirs(path)
            with open(os.path.join(path, "ckpt.index"), "wb") as f:
                f.write(b"half")
            raise _Killed
        return original(self, name)

    monkeypatch.setattr(train_lib.RunCheckpoint, "save", dying)
    with pytest.raises(_Killed):
        train_lib.run(config, benchmark=tiny_benchmark)
    progress = train_lib.read_progress(config.model_dir)
    assert progress["checkpoint"] == calls[2]  # the end of task 0
    assert (progress["task"], progress["epochs_done"]) == (0, 2)
    done = progress["accuracy_matrix"]
    monkeypatch.setattr(train_lib.RunCheckpoint, "save", original)
    begun = []
    real_begin = train_lib.ContinualRun._train_task

    def record(self, task, first_epoch):
        begun.append((task, first_epoch))
        return real_begin(self, task, first_epoch)

    monkeypatch.setattr(train_lib.ContinualRun, "_train_task", record)
    results = train_lib.run(config, benchmark=tiny_benchmark)
    assert begun == [(1, 0), (2, 0)]
    assert results["accuracy_matrix"][:1] == done
    # The half-written checkpoint was replaced, then pruned.
    assert os.listdir(os.path.join(config.model_dir, "checkpoints")) == [
        train_lib.read_progress(config.model_dir)["checkpoint"]]


@pytest.mark.heavy
def test_kill_while_exporting_leaves_no_half_export(tmp_path,
                                                    tiny_benchmark,
                                                    monkeypatch):
    """Exports are written aside and renamed: a kill mid-export leaves the
    finished ones and a temporary directory, never a partial export under
    its final name; the rerun exports again and clears the leftovers."""
    config = _config(tmp_path, method="finetune", export=True, epochs=1)
    real_save = tf.saved_model.save
    saves = []

    def dying(module, path, signatures=None):
        saves.append(path)
        if len(saves) == 2:  # task_1, halfway
            with open(os.path.join(path, "saved_model.pb"), "wb") as f:
                f.write(b"half")
            raise _Killed
        return real_save(module, path, signatures=signatures)

    monkeypatch.setattr(export_lib.tf.saved_model, "save", dying)
    with pytest.raises(_Killed):
        train_lib.run(config, benchmark=tiny_benchmark)
    export_dir = os.path.join(config.model_dir, "export")
    entries = sorted(os.listdir(export_dir))
    assert entries == ["task_0"], entries  # the temporary one was removed
    assert not os.path.exists(os.path.join(config.model_dir,
                                           "results.json"))
    assert train_lib.read_progress(config.model_dir)["status"] == "running"
    # A kill (not an exception) would also leave the temporary directory.
    os.makedirs(os.path.join(export_dir, ".tmp-export-killed"))
    monkeypatch.setattr(export_lib.tf.saved_model, "save", real_save)
    train_lib.run(config, benchmark=tiny_benchmark)
    # finetune has a head per task: export/inferred too.
    assert sorted(os.listdir(export_dir)) == [
        "all_tasks", "inferred", "task_0", "task_1", "task_2"]
    assert train_lib.read_progress(config.model_dir)["status"] == "finished"


@pytest.mark.parametrize("replicas", [1, 2])
def test_resumed_run_is_the_uninterrupted_run(replicas, tmp_path,
                                              tiny_benchmark, monkeypatch,
                                              mirrored_strategy):
    """Killed after an epoch in the middle of a task and started again, a
    run ends with the same weights and results as one never interrupted:
    the checkpoint holds every variable and the resumed task skips the
    data orders of the epochs it had done (and BPN's random factors of a
    task do not depend on the tasks this process started)."""
    strategy = None
    settings = {"method": "bd_ewc", "epochs": 3}
    if replicas == 2:
        strategy = mirrored_strategy
        settings.update(strategy="mirrored", num_cpu_devices=2)
    straight = train_lib.ContinualRun(
        _config(tmp_path, "straight", **settings),
        benchmark=tiny_benchmark, strategy=strategy)
    expected = straight.run()
    config = _config(tmp_path, "killed", **settings)
    original = train_lib._EpochCheckpoint.on_epoch_end

    def dying(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.task == 1 and epoch == config.epochs:  # task 1's 1st epoch
            raise _Killed

    monkeypatch.setattr(train_lib._EpochCheckpoint, "on_epoch_end", dying)
    with pytest.raises(_Killed):
        train_lib.run(config, benchmark=tiny_benchmark, strategy=strategy)
    monkeypatch.undo()
    progress = train_lib.read_progress(config.model_dir)
    assert (progress["task"], progress["epochs_done"]) == (1, 1)
    resumed = train_lib.ContinualRun(config, benchmark=tiny_benchmark,
                                     strategy=strategy)
    results = resumed.run()
    assert _comparable(results) == _comparable(expected)
    for a, b in zip(resumed.model.variables, straight.model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
