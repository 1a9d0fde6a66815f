"""Tests for `--strategy=multi_worker_mirrored` and `trainers.launch_local`.

The heavy ones start two worker processes on 127.0.0.1 inside a private
network namespace (the launcher makes one with `unshare -n` where it can),
each bounded by a timeout that stops its processes: the workers end with
identical weights, equal to `--strategy=mirrored --num_cpu_devices=2`'s
(exactly for EWC and GEM, to rounding for the sign rules and DGM); only the
chief writes; a worker killed with `kill -9` stops the job, and the same
command resumes it.
"""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from cl_zoo import multi_worker
from cl_zoo.benchmarks import mnist
from cl_zoo.config import ConfigError, resolve_config
from cl_zoo.methods import get_method
from trainers import launch_local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300


# ---------------------------------------------------------------- config
def test_tf_config_is_required_and_checked(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs TF_CONFIG.*launch_local"):
        multi_worker.cluster_spec()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG is malformed"):
        multi_worker.cluster_spec()
    monkeypatch.setenv("TF_CONFIG", launch_local.tf_config([1, 2], 3))
    with pytest.raises(ConfigError, match="expected a worker index in 0..1"):
        multi_worker.cluster_spec()
    monkeypatch.setenv("TF_CONFIG", launch_local.tf_config([1, 2], 1))
    assert multi_worker.cluster_spec() == (
        ["127.0.0.1:1", "127.0.0.1:2"], 1)


def test_unverified_keras_is_refused():
    multi_worker.check_keras_version()  # this environment's: verified
    with pytest.raises(ConfigError, match="keras-team/keras#20585.*Keras "
                       "3.16.0"):
        multi_worker.check_keras_version("3.16.0")


def test_cpu_replicas_are_refused_under_multi_worker():
    with pytest.raises(ConfigError, match="--num_cpu_devices is read with "
                       "--strategy=mirrored only"):
        resolve_config(get_method("sgd"), "split_mnist", {
            "strategy": "multi_worker_mirrored", "num_cpu_devices": 2})


def test_launcher_arguments():
    workers, namespace, program, flags = launch_local.parse_args(
        ["--workers=3", "--", "--method=ewc", "--model_dir=/tmp/x"])
    assert (workers, namespace, program) == (3, True, "trainers.train")
    assert flags[-1] == "--strategy=multi_worker_mirrored"
    for argv, message in (
            (["--workers=2", "--method=ewc"], "after '--'"),
            (["--", "--model_dir=/x"], "--workers=N is required"),
            (["--workers=2", "--", "--method=ewc"], "--model_dir is required"),
            (["--workers=2", "--", "--model_dir=/x", "--strategy=mirrored"],
             "leave --strategy out")):
        with pytest.raises(SystemExit) as info:
            launch_local.parse_args(argv)
        assert info.value.code == 2, message


def test_workaround_leaves_other_strategies_alone():
    """Installed, Keras's fit under the default strategy is unchanged;
    uninstalled, Keras's own functions are back."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = (tf_trainer.TensorFlowTrainer._maybe_symbolic_build,
                tf_trainer.reduce_per_replica)
    multi_worker.install()
    multi_worker.install()  # idempotent
    try:
        assert tf_trainer.reduce_per_replica is not original[1]
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile("sgd", "mse")
        x = np.ones((8, 3), np.float32)
        history = model.fit(x, np.zeros((8, 2)), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        multi_worker.uninstall()
    assert (tf_trainer.TensorFlowTrainer._maybe_symbolic_build,
            tf_trainer.reduce_per_replica) == original


# --------------------------------------------------------------- workers
PROBE = '''"""The trainer's run, then the model's variables to PROBE_OUT."""
import json, os
import numpy as np
from absl import app
from trainers import train

def main(argv):
    config = train.build_config()
    from cl_zoo import train_lib
    train_lib.split_cpu(config.num_cpu_devices)
    run = train_lib.ContinualRun(config,
                                 strategy=train_lib.make_strategy(config))
    run.run()
    index = json.loads(os.environ.get("TF_CONFIG", "{}")).get(
        "task", {}).get("index", 0)
    np.savez(os.environ["PROBE_OUT"] + f"-{index}.npz",
             *[v.numpy() for v in run.model.variables])

app.run(main, flags_parser=train.parse_flags)
'''

METHODS = {
    # method: (flags, how close to mirrored x2)
    "ewc": (["--benchmark=split_mnist", "--fisher_samples=64"], 0.0),
    "gem": (["--benchmark=split_mnist", "--memory_size=32"], 0.0),
    "bd_ewc": (["--benchmark=split_mnist", "--fisher_samples=64",
                "--bias_hidden=8"], 1e-3),
    # Adam steps on a GAN amplify the all-reduce's rounding (the ring sums
    # in another order than one machine's replicas): after 18 steps all the
    # weights together differed from mirrored's by up to 1.5 % of their
    # norm (a small bias vector by 8 % of its own).
    "dgm": (["--benchmark=class_split", "--task_classes=0;1;2",
             "--noise_dim=16", "--replay_per_class=4"], "5% of the norm"),
}
COMMON = ["--hidden_units=32", "--steps_per_task=6", "--batch_size=32",
          "--verbose=0"]
EXPORTED = "ewc"  # the others skip the exports (time)


def _env(tmp_path, **extra):
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [REPO, str(tmp_path)]), "TMPDIR": str(scratch),
        "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _run(command, env, cwd=REPO):
    try:
        return subprocess.run(command, env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:  # the launcher stops its workers
        raise AssertionError(f"timed out: {command}") from e


@pytest.fixture(scope="module")
def probe_runs(tmp_path_factory):
    """Each method on 2 workers (launch_local) and on mirrored x2: the
    weights of every worker and of the reference."""
    root = tmp_path_factory.mktemp("multi_worker")
    (root / "mw_probe.py").write_text(PROBE)
    out = {}
    for method, (flags, _) in METHODS.items():
        args = [f"--method={method}", *flags, *COMMON]
        if method != EXPORTED:
            args.append("--export=false")
        if "--benchmark=class_split" in flags:
            args.append(f"--dataset=npz:{mnist.cache_path()}")
        env = _env(root, PROBE_OUT=str(root / f"{method}-mw"))
        proc = _run([sys.executable, "-m", "trainers.launch_local",
                     "--workers=2", "--program=mw_probe", "--",
                     *args, f"--model_dir={root / method / 'mw'}"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        env = _env(root, PROBE_OUT=str(root / f"{method}-mirrored"))
        proc = _run([sys.executable, str(root / "mw_probe.py"), *args,
                     "--strategy=mirrored", "--num_cpu_devices=2",
                     f"--model_dir={root / method / 'mirrored'}"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]

        def load(name):
            with np.load(root / f"{name}.npz") as f:
                return [f[k] for k in sorted(f.files,
                                             key=lambda k: int(k[4:]))]

        out[method] = {
            "workers": [load(f"{method}-mw-{i}") for i in (0, 1)],
            "mirrored": load(f"{method}-mirrored-0"),
            "root": root / method,
        }
    out["scratch"] = root / "tmp"
    return out


@pytest.mark.heavy
@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_workers_agree_and_match_mirrored(probe_runs, method):
    runs = probe_runs[method]
    first, second = runs["workers"]
    assert len(first) == len(second) == len(runs["mirrored"])
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)  # the workers agree exactly
    tolerance = METHODS[method][1]
    if isinstance(tolerance, str):
        a = np.concatenate([v.reshape(-1) for v in first])
        b = np.concatenate([v.reshape(-1) for v in runs["mirrored"]])
        assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(b)
        return
    for a, b in zip(first, runs["mirrored"]):
        if tolerance == 0.0:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, atol=tolerance, rtol=tolerance)


@pytest.mark.heavy
def test_only_the_chief_writes(probe_runs):
    for method in METHODS:
        model_dir = probe_runs[method]["root"] / "mw"
        results = json.loads((model_dir / "results.json").read_text())
        assert results["config"]["strategy"] == "multi_worker_mirrored"
        assert results["config"]["model_dir"] == str(model_dir)
    # The other worker's scratch directories are gone.
    assert not [p for p in os.listdir(probe_runs["scratch"])
                if p.startswith("cl_zoo_worker_")]
    # One set of exports, written by the chief, that loads as usual and
    # computes what the trained weights do.
    import tensorflow as tf

    from cl_zoo.benchmarks import get_benchmark

    export = probe_runs[EXPORTED]["root"] / "mw" / "export"
    assert sorted(os.listdir(export)) == [
        "all_tasks", *(f"task_{t}" for t in range(5))]
    served = tf.saved_model.load(str(export / "all_tasks"))
    x, _ = get_benchmark("split_mnist").test_arrays(4)
    scores = served.signatures["serving_default"](
        x=tf.constant(x[:8]), task_id=tf.constant(4))["scores"]
    assert scores.shape == (8, 10)
    assert np.isfinite(scores.numpy()).all()


def _worker_pid(model_dir, index):
    """The pid of worker `index` of the run writing `model_dir`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().decode(errors="replace")
        except OSError:
            continue
        if (f"--model_dir={model_dir}" in cmdline and "trainers.train"
                in cmdline and f'"index": {index}' in environ):
            return int(pid)
    return None


@pytest.mark.heavy
def test_kill_9_of_a_worker_then_the_same_command_resumes(tmp_path):
    model_dir = tmp_path / "run"
    command = [sys.executable, "-m", "trainers.launch_local", "--workers=2",
               "--", "--method=ewc", "--benchmark=split_mnist",
               "--hidden_units=32", "--steps_per_task=60", "--batch_size=32",
               "--fisher_samples=64", "--verbose=2", "--export=false",
               f"--model_dir={model_dir}"]
    env = _env(tmp_path)
    launcher = subprocess.Popen(command, env=env, cwd=REPO,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        progress = model_dir / "progress.json"
        while time.monotonic() < deadline:  # until task 3 has begun
            if progress.exists():
                try:
                    if json.loads(progress.read_text())["task"] >= 1:
                        break
                except (ValueError, KeyError):
                    pass
            time.sleep(0.2)
        pid = _worker_pid(model_dir, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=TIMEOUT_S)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "worker 1 was killed (signal 9)" in stderr, stderr[-2000:]
    assert "Rerun the same command to resume" in stderr
    done = json.loads(progress.read_text())
    assert done["status"] == "running" and done["task"] in (1, 2)

    resumed = _run(command, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout
    # The tasks finished before the kill are not trained again.
    for finished in range(done["task"] + 1):
        assert f"Task {finished + 1}/5:" not in resumed.stdout
    results = json.loads((model_dir / "results.json").read_text())

    straight = _run([*command[:-1], f"--model_dir={tmp_path / 'straight'}"],
                    env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = json.loads((tmp_path / "straight" / "results.json")
                           .read_text())
    assert abs(results["acc"] - reference["acc"]) < 0.03
