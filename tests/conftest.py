"""Test set-up: two logical CPUs (for MirroredStrategy tests), absl flags,
and tiny benchmarks that train in seconds."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

# Logical devices must be configured before TensorFlow runs any op.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

flags.FLAGS(["pytest"], known_only=True)

from cl_zoo.benchmarks.base import Benchmark  # noqa: E402


def make_tiny_benchmark(
    num_tasks=3, classes_per_task=2, shape=(6, 6, 1), per_class=40, seed=0
):
    """Separable images: each class lights up its own pixel block."""
    rng = np.random.default_rng(seed)
    num_classes = num_tasks * classes_per_task
    size = int(np.prod(shape))

    def pool(n):
        y = np.repeat(np.arange(num_classes), n)
        x = rng.integers(0, 60, size=(len(y), size))
        block = size // num_classes
        for c in range(num_classes):
            x[y == c, c * block:(c + 1) * block] += 180
        return x.clip(0, 255).astype(np.uint8).reshape(-1, *shape), y

    return Benchmark(
        "tiny",
        train=pool(per_class),
        test=pool(per_class // 2),
        task_classes=[
            list(range(t * classes_per_task, (t + 1) * classes_per_task))
            for t in range(num_tasks)
        ],
        num_classes=num_classes,
    )


def _make_class_incremental(num_classes=3, side=8, per_class=48, seed=0):
    """One class per task; class c is a bright horizontal band at row c."""
    rng = np.random.default_rng(seed)

    def pool(n):
        y = np.repeat(np.arange(num_classes), n)
        x = rng.integers(0, 40, size=(len(y), side, side, 1))
        for c in range(num_classes):
            x[y == c, 2 * c:2 * c + 2] += 200
        return x.clip(0, 255).astype(np.uint8), y

    return Benchmark(
        "tiny_ci", train=pool(per_class), test=pool(per_class // 2),
        task_classes=[[c] for c in range(num_classes)],
        num_classes=num_classes,
    )



@pytest.fixture(scope="session")
def make_class_incremental():
    """`_make_class_incremental`: DGM's tiny class-incremental images."""
    return _make_class_incremental


def _assert_round_trips(model, x, path):
    """`get_config`/`from_config` and a `.keras` save/load keep the model.

    The saved active task comes back; predictions in task 1's mode match.
    Returns the loaded model.
    """
    clone = model.__class__.from_config(model.get_config())
    clone.build_for_inputs()
    assert clone.get_config() == model.get_config()
    model.save(path)
    loaded = keras.models.load_model(path)
    assert int(loaded.task.numpy()) == int(model.task.numpy())
    model.task.assign(1)
    loaded.task.assign(1)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5
    )
    return loaded


@pytest.fixture
def assert_round_trips():
    """`_assert_round_trips`, shared by the tests of every method."""
    return _assert_round_trips


# Not os.path.realpath: under Bazel the runfiles tree is the repository.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_trainer(*args, timeout=300, module="trainers.train"):
    """`python -m trainers.train ARGS` (or another `module`) from the
    repository root, output captured (a `CompletedProcess`)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def run_trainer():
    """`_run_trainer`, shared by the tests that run the trainer's command."""
    return _run_trainer


# Fixtures that start processes (the trainer's command) or replicas: the
# tests that use them are "heavy", run by `.ci/run` after the default suite
# (`python -m pytest -m heavy`), which keeps within its CPU budget.
HEAVY_FIXTURES = {"run_trainer", "trainer_runs", "mirrored_strategy"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    del config
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)


@pytest.fixture(scope="session")
def mnist_data():
    """Real MNIST from the cl_zoo cache (fetched once); skips without it."""
    from cl_zoo.benchmarks import mnist
    from cl_zoo.benchmarks.base import DataUnavailableError

    try:
        return mnist.load_mnist()
    except DataUnavailableError as e:
        pytest.skip(f"real MNIST unavailable: {e}")


@pytest.fixture
def tiny_benchmark():
    return make_tiny_benchmark()


@pytest.fixture(name="make_tiny_benchmark")
def make_tiny_benchmark_fixture():
    """`make_tiny_benchmark`, for tests that need other shapes or sizes."""
    return make_tiny_benchmark


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole session.

    Two strategy objects in one process can hand their collective ops the
    same instance keys and abort with a shape mismatch; a process runs one
    strategy in production, so the tests share one too.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
