"""End-to-end runs on a tiny benchmark: results, summaries, exports, resume."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cl_zoo import metrics, train_lib
from cl_zoo.config import resolve_config
from cl_zoo.methods import get_method
from cl_zoo.methods.base import ContinualModel


def config_for(tmp_path, method="finetune", **overrides):
    values = {
        "model_dir": str(tmp_path / "run"),
        "hidden_units": (32,),
        "epochs": 3,
        "batch_size": 16,
        "lr": 0.01,
        "verbose": 0,
        "fisher_samples": 32,
        "eval_batch_size": 64,
    }
    values.update(overrides)
    return resolve_config(get_method(method), "tiny", values,
                          skip_unread=True)


@pytest.fixture
def finished_run(tmp_path, tiny_benchmark):
    config = config_for(tmp_path, method="ewc", head="multi")
    results = train_lib.run(config, benchmark=tiny_benchmark)
    return config, results


def test_results_json_follows_the_contract(finished_run, tiny_benchmark):
    config, results = finished_run
    with open(os.path.join(config.model_dir, "results.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    keys = {
        "method", "benchmark", "num_tasks", "seed", "task_classes",
        "accuracy_matrix", "initial_accuracy", "acc", "bwt", "fwt",
        "forgetting", "storage_bytes_per_task", "num_params",
        "train_seconds", "extra", "config",
    }
    assert keys <= set(saved)
    r = np.array(saved["accuracy_matrix"])
    assert r.shape == (3, 3) and np.all((r >= 0) & (r <= 1))
    assert len(saved["initial_accuracy"]) == 3
    expected = metrics.summarize(r, saved["initial_accuracy"])
    for key, value in expected.items():
        assert saved[key] == pytest.approx(value)
    assert np.all(np.diag(r) > 0.9)
    assert saved["config"]["method"] == "ewc"
    assert saved["task_classes"] == tiny_benchmark.task_classes
    assert saved["train_seconds"] > 0
    # one head per task: each task adds its head's weights, and task
    # inference's statistics (the mean and 30 directions of 36 pixels)
    inference = saved["extra"]["task_agnostic"]["bytes_per_task"]
    assert inference == 4 * (30 + 1) * 36
    assert saved["storage_bytes_per_task"] == 4 * (32 + 1) * 2 + inference


def test_run_leaves_summaries_plots_and_exports(finished_run):
    config, _ = finished_run
    d = config.model_dir
    for name in ("config.json", "accuracy_matrix.png",
                 "average_accuracy.png", "progress.json"):
        assert os.path.isfile(os.path.join(d, name)), name
    events = [
        f for _, _, files in os.walk(os.path.join(d, "summaries"))
        for f in files if f.startswith("events.out")
    ]
    assert len(events) >= 2  # train curves and eval scalars/images
    for t in range(3):
        assert os.path.isfile(
            os.path.join(d, "export", f"task_{t}", "saved_model.pb")
        )
    assert not [e for e in os.listdir(os.path.join(d, "export"))
                if e.startswith(".tmp")]


@pytest.mark.heavy
def test_exports_load_without_cl_zoo(finished_run, tiny_benchmark, tmp_path):
    config, results = finished_run
    arrays = {}
    for t in range(3):
        x, y = tiny_benchmark.test_arrays(t, head="multi")
        arrays[f"x{t}"], arrays[f"y{t}"] = x, y
    np.savez(tmp_path / "data.npz", **arrays)
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        data = np.load({str(tmp_path / "data.npz")!r})
        out = {{}}
        for t in range(3):
            path = {config.model_dir!r} + f"/export/task_{{t}}"
            m = tf.saved_model.load(path)
            s = m.signatures["serving_default"](
                x=tf.constant(data[f"x{{t}}"]))
            out[t] = float(np.mean(
                s["scores"].numpy().argmax(-1) == data[f"y{{t}}"]))
        a = tf.saved_model.load({config.model_dir!r} + "/export/all_tasks")
        f = a.signatures["serving_default"]
        s = f(x=tf.constant(data["x1"]), task_id=tf.constant(1))
        out["all1"] = float(np.mean(s["scores"].numpy().argmax(-1)
                                    == data["y1"]))
        try:
            f(x=tf.constant(data["x1"]), task_id=tf.constant(3))
            out["bad"] = "accepted"
        except tf.errors.InvalidArgumentError as e:
            out["bad"] = str(e)
        try:
            f(x=tf.constant(data["x1"] * np.nan), task_id=tf.constant(0))
            out["nan"] = "accepted"
        except tf.errors.InvalidArgumentError as e:
            out["nan"] = str(e)
        out["imported"] = "cl_zoo" in sys.modules
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        cwd=str(tmp_path), env=env, timeout=300, check=True,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["imported"] is False
    final = results["accuracy_matrix"][-1]
    for t in range(3):
        assert out[str(t)] == pytest.approx(final[t], abs=1e-6)
    assert out["all1"] == pytest.approx(final[1], abs=1e-6)
    assert "0 <= task_id < 3" in out["bad"]
    assert "must be finite" in out["nan"]


def test_finished_run_is_refused_unless_overwrite(finished_run,
                                                  tiny_benchmark):
    config, _ = finished_run
    with pytest.raises(train_lib.RunStateError, match="--overwrite"):
        train_lib.run(config, benchmark=tiny_benchmark)


class _Killed(Exception):
    pass


@pytest.mark.heavy
def test_killed_run_resumes_without_retraining(tmp_path, tiny_benchmark,
                                               monkeypatch):
    config = config_for(tmp_path, method="ewc", head="multi")
    original = train_lib._EpochCheckpoint.on_epoch_end
    calls = {"n": 0}

    def dying(self, epoch, logs=None):
        original(self, epoch, logs)
        calls["n"] += 1
        if self.task == 1 and epoch == config.epochs + 1:
            raise _Killed  # after task 1's second epoch was saved

    monkeypatch.setattr(train_lib._EpochCheckpoint, "on_epoch_end", dying)
    with pytest.raises(_Killed):
        train_lib.run(config, benchmark=tiny_benchmark)
    progress = train_lib.read_progress(config.model_dir)
    assert (progress["task"], progress["epochs_done"]) == (1, 2)
    monkeypatch.setattr(train_lib._EpochCheckpoint, "on_epoch_end", original)

    begun = []

    base_begin = ContinualModel.begin_task

    def record(self, task, benchmark=None):
        begun.append(task)
        return base_begin(self, task, benchmark)

    monkeypatch.setattr(ContinualModel, "begin_task", record)
    fits = []
    real_fit = ContinualModel.fit

    def record_fit(self, *args, **kwargs):
        fits.append((kwargs["initial_epoch"], kwargs["epochs"]))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(ContinualModel, "fit", record_fit)
    results = train_lib.run(config, benchmark=tiny_benchmark)
    assert begun == [2]  # task 1 continued, task 0 not retrained
    assert fits == [(5, 6), (6, 9)]
    r = np.array(results["accuracy_matrix"])
    assert r.shape == (3, 3) and np.all(np.diag(r) > 0.9)
    monkeypatch.undo()
    straight = train_lib.run(
        config_for(tmp_path / "straight", method="ewc", head="multi"),
        benchmark=tiny_benchmark,
    )
    assert results["acc"] == pytest.approx(straight["acc"], abs=0.1)


def test_other_settings_on_unfinished_run_are_refused(tmp_path,
                                                      tiny_benchmark):
    config = config_for(tmp_path)
    os.makedirs(config.model_dir)
    train_lib.write_json_atomically(
        os.path.join(config.model_dir, train_lib.PROGRESS_FILE),
        {"status": "running", "config": {**config.to_dict(), "lr": 0.5}},
    )
    with pytest.raises(train_lib.RunStateError, match=r"other settings \(lr\)"):
        train_lib.ContinualRun(config, benchmark=tiny_benchmark)


def test_mirrored_two_replicas_trains(tmp_path, tiny_benchmark,
                                      mirrored_strategy):
    config = config_for(tmp_path, method="ewc", head="multi",
                        strategy="mirrored", num_cpu_devices=2, export=False)
    results = train_lib.run(config, benchmark=tiny_benchmark,
                            strategy=mirrored_strategy)
    assert np.all(np.diag(np.array(results["accuracy_matrix"])) > 0.9)


@pytest.mark.heavy
def test_toy_run_writes_decision_boundaries(tmp_path):
    from cl_zoo import benchmarks

    bm = benchmarks.get_benchmark("gaussian_clusters")
    config = resolve_config(get_method("bd_ewc"), "gaussian_clusters", {
        "model_dir": str(tmp_path / "toy"), "epochs": 2, "verbose": 0,
        "export": False, "hidden_units": (16,), "bias_hidden": 8,
        "fisher_samples": 64,
    })
    train_lib.run(config, benchmark=bm)
    for t in (1, 2):
        path = tmp_path / "toy" / f"decision_boundary_task{t}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_examples_limits_the_test_subset(tmp_path, tiny_benchmark):
    config = config_for(tmp_path, eval_examples=7, export=False, epochs=1)
    run = train_lib.ContinualRun(config, benchmark=tiny_benchmark)
    seen = sum(int(y.shape[0]) for _, y in run.evaluator._dataset(0))
    assert seen == 7


def test_checkpoint_restores_every_variable(tmp_path, tiny_benchmark):
    config = config_for(tmp_path, method="bd_ewc", hidden_units=(8, 8),
                        bias_hidden=4, export=False, epochs=1)
    run = train_lib.ContinualRun(config, benchmark=tiny_benchmark)
    run.model.begin_task(0, tiny_benchmark)
    run.model.fit(run.model.train_dataset(0, tiny_benchmark, 16),
                  epochs=1, verbose=0, shuffle=False)
    run.model.end_task(0, tiny_benchmark)
    run.checkpoint.save("ckpt-1")
    saved = [v.numpy().copy() for v in run.model.variables]
    state = [v.numpy().copy()
             for v in run.model.consolidation.state_variables()]
    fresh = train_lib.ContinualRun(
        config_for(tmp_path / "other", method="bd_ewc", hidden_units=(8, 8),
                   bias_hidden=4, export=False, epochs=1),
        benchmark=tiny_benchmark,
    )
    fresh.checkpoint.restore_root = run.checkpoint.root
    fresh.checkpoint.restore("ckpt-1")
    assert len(saved) == len(fresh.model.variables) > 10
    for a, v in zip(saved, fresh.model.variables):
        np.testing.assert_array_equal(a, v.numpy(), err_msg=v.path)
    for a, v in zip(state, fresh.model.consolidation.state_variables()):
        np.testing.assert_array_equal(a, v.numpy())


def test_importances_are_logged_as_histograms(finished_run):
    """After each task, every protected parameter's importance (EWC's
    Fisher here) is a TensorBoard histogram, as in the SPP paper's Fig. 6."""
    import tensorflow as tf

    config, _ = finished_run
    eval_dir = os.path.join(config.model_dir, "summaries", "eval")
    steps = {}
    for name in os.listdir(eval_dir):
        for event in tf.compat.v1.train.summary_iterator(
                os.path.join(eval_dir, name)):
            for value in event.summary.value:
                if value.tag.startswith("importance/"):
                    plugin = value.metadata.plugin_data.plugin_name
                    assert plugin == "histograms"
                    steps.setdefault(value.tag, set()).add(event.step)
    assert any("kernel" in tag for tag in steps)
    assert all(s == {1, 2, 3} for s in steps.values())


@pytest.mark.heavy
@pytest.mark.parametrize(
    "method", ["bd_ewc", "ad_ewc", "psp", "finetune", "ewc"])
def test_evaluate_on_a_tasks_dataset_scores_that_task(
        method, tmp_path, tiny_benchmark):
    """The obvious Keras call after a sequence, `model.evaluate(
    bm.test_dataset(t, ...))`, gives task t's accuracy: the dataset carries
    the task id, so the model uses task t's mode whatever `model.task` is
    (the last task's after training)."""
    config = config_for(tmp_path, method=method, epochs=2, export=False,
                        bias_hidden=4, memory_units=2)
    run = train_lib.ContinualRun(config, benchmark=tiny_benchmark)
    results = run.run()
    model = run.model
    assert int(model.task.numpy()) == tiny_benchmark.num_tasks - 1
    last_row = results["accuracy_matrix"][-1]
    for t in range(tiny_benchmark.num_tasks):
        logs = model.evaluate(
            tiny_benchmark.test_dataset(t, 64, head=model.label_mode),
            verbose=0, return_dict=True,
        )
        assert logs["accuracy"] == pytest.approx(last_row[t], abs=1e-6), t


@pytest.mark.heavy
def test_readme_library_example_runs_verbatim_and_matches_the_trainer(
        tmp_path, capsys):
    """The README's library example, executed as written, prints the
    accuracy matrix that `python -m trainers.train` writes to results.json
    for the same settings, and `model.evaluate` on task 0's test set gives
    the matrix's last-row value for task 0."""
    readme = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(readme) as f:
        text = f.read()
    section = text[text.index("## Using the library"):]
    code = section[section.index("```python\n") + 10:]
    code = code[:code.index("```\n")]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    printed = [[float(a) for a in line.split()] for line in lines[:5]]
    config = resolve_config(get_method("ewc"), "split_mnist", {
        "epochs": 1, "hidden_units": (100,), "export": False, "verbose": 0,
        "model_dir": str(tmp_path / "run"),
    })
    results = train_lib.run(config)
    np.testing.assert_allclose(printed, results["accuracy_matrix"],
                               atol=5e-4)
    assert lines[5] == f"ACC {round(results['acc'], 4)}"
    logs = namespace["model"].evaluate(
        namespace["bm"].test_dataset(0, 1000), return_dict=True, verbose=0)
    assert logs["accuracy"] == pytest.approx(
        results["accuracy_matrix"][-1][0], abs=1e-6)


def test_tensorboard_hparams_view_holds_the_runs_settings(finished_run):
    """Each run writes TensorBoard's hparams summary (its resolved
    settings) beside its test-accuracy scalars, so sweeps compare in the
    HPARAMS view."""
    import glob

    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    config, _ = finished_run
    events = glob.glob(os.path.join(config.model_dir, "summaries", "eval",
                                    "events.out.tfevents.*"))
    found = {}
    for path in events:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                meta = value.metadata.plugin_data
                if meta.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        meta.content)
                    if data.HasField("session_start_info"):
                        found = data.session_start_info.hparams
    assert found["method"].string_value == "ewc"
    assert found["ewc_lambda"].number_value == config.ewc_lambda
    assert found["hidden_units"].string_value == "32"
