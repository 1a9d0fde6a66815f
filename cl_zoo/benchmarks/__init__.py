"""Continual-learning task sequences as `tf.data` pipelines.

```python
from cl_zoo import benchmarks

bm = benchmarks.get_benchmark("split_mnist")
ds = bm.train_dataset(0, batch_size=128)   # ({"x", "task"}, y), y global ids
x, y = bm.test_arrays(4, head="multi")      # y index within task_classes[4]
```

See `base.Benchmark` for the pipeline API, the modules `mnist`, `toy` and
`cifar` for each protocol, `sources` and `scenarios` for any other data.
"""

from __future__ import annotations

import importlib
import numbers
from typing import NamedTuple

from cl_zoo.benchmarks.base import (
    HEADS,
    Benchmark,
    BenchmarkError,
    DataUnavailableError,
    TaskIndexError,
)
from cl_zoo.settings import Setting

# Settings that benchmarks read (declared here, owned by the benchmarks
# that list them in `_SPECS`; the others refuse them).
DATASET = Setting(
    "dataset", str, None, "The data of class_split / permuted / rotated: "
    "tfds:NAME[:CONFIG] (a tensorflow-datasets image-classification set), "
    "npz:PATH (arrays x_train, y_train, x_test, y_test) or dir:PATH "
    "(train/<class>/*.png|jpg and test/<class>/*).")
TASK_CLASSES = Setting(
    "task_classes", str, None, "class_split: each task's classes, tasks "
    "separated by ';' and classes by ',' ('0,1;2,3;4,5'); class ids, or "
    "folder / label names where the data has them.")
CLASSES_PER_TASK = Setting(
    "classes_per_task", int, None, "class_split: tasks of N classes each, "
    "taken in --class_order (instead of --task_classes).", minimum=1)
CLASS_ORDER = Setting(
    "class_order", str, None, "The order of the classes before they are "
    "split into tasks: 'seed:S' (a seeded shuffle) or a comma-separated "
    "list of class ids. Unset: ascending (the protocol's own tasks).")
MAX_ANGLE = Setting(
    "max_angle", float, 180.0, "rotated: task t is rotated by max_angle * "
    "t / (num_tasks - 1) degrees, counterclockwise (task 0 upright).",
    minimum=0, maximum=360)
TRAIN_SPLIT = Setting(
    "train_split", str, None, "tfds: sources: the split trained on (tfds "
    "names and slices, e.g. 'train[:80%]'). Unset: 'train'.")
TEST_SPLIT = Setting(
    "test_split", str, None, "tfds: sources: the split tested on (e.g. "
    "'validation' or 'train[80%:]'). Unset: 'test'.")
IMAGE_SIZE = Setting(
    "image_size", (int,), None, "H,W: resize every image (bilinear) when "
    "loading --dataset, for data whose images differ in size.", minimum=1,
    min_items=2)

_SOURCE_SETTINGS = (DATASET, TRAIN_SPLIT, TEST_SPLIT, IMAGE_SIZE)


class _Spec(NamedTuple):
    module: str  # submodule of cl_zoo.benchmarks, imported on first use
    factory: str
    num_tasks: int | None  # None: chosen with `num_tasks`
    default_num_tasks: int | None  # None: decided by the data
    settings: tuple = (CLASS_ORDER,)  # settings the benchmark reads


_SPECS = {
    "split_mnist": _Spec("mnist", "split_mnist", 5, 5),
    "disjoint_mnist": _Spec("mnist", "disjoint_mnist", 3, 3),
    "permuted_mnist": _Spec("mnist", "permuted_mnist", None, 10, ()),
    "class_incremental_mnist": _Spec(
        "mnist", "class_incremental_mnist", 10, 10
    ),
    "gaussian_clusters": _Spec("toy", "gaussian_clusters", 2, 2, ()),
    "split_cifar10": _Spec("cifar", "split_cifar10", 5, 5),
    "split_cifar100": _Spec("cifar", "split_cifar100", 10, 10),
    "disjoint_cifar10": _Spec("cifar", "disjoint_cifar10", 3, 3),
    "class_incremental_svhn": _Spec(
        "cifar", "class_incremental_svhn", 10, 10
    ),
    "class_incremental_cifar10": _Spec(
        "cifar", "class_incremental_cifar10", 10, 10
    ),
    "class_split": _Spec(
        "scenarios", "class_split", None, None,
        (*_SOURCE_SETTINGS, TASK_CLASSES, CLASSES_PER_TASK, CLASS_ORDER),
    ),
    "permuted": _Spec("scenarios", "permuted", None, 10, _SOURCE_SETTINGS),
    "rotated": _Spec(
        "scenarios", "rotated", None, 10, (*_SOURCE_SETTINGS, MAX_ANGLE)
    ),
}

BENCHMARKS = tuple(sorted(_SPECS))


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def default_num_tasks(name: str) -> int | None:
    """The number of tasks `name` has when `num_tasks` is not given (None:
    it depends on the data, `class_split`)."""
    return _spec(name).default_num_tasks


def benchmark_settings(name: str) -> tuple:
    """The settings (`cl_zoo.settings.Setting`) that benchmark `name`
    reads beyond the run's generic ones."""
    return _spec(name).settings


def all_benchmark_settings() -> dict:
    """`{name: Setting}` over every benchmark."""
    out = {}
    for spec in _SPECS.values():
        for setting in spec.settings:
            out[setting.name] = setting
    return out


def readers_of(setting_name: str) -> list:
    """The benchmarks that read `setting_name`."""
    return [name for name in BENCHMARKS
            if setting_name in {s.name for s in _SPECS[name].settings}]


def _spec(name):
    if name not in _SPECS:
        raise BenchmarkError(
            f"Unknown benchmark {name!r}; expected one of: "
            + ", ".join(BENCHMARKS)
        )
    return _SPECS[name]


def get_benchmark(
    name: str, *, num_tasks: int | None = None, seed: int = 0, data_dir=None,
    **options,
) -> Benchmark:
    """Builds benchmark `name`, loading its data now.

    Args:
        name: one of `BENCHMARKS`.
        num_tasks: number of tasks; `permuted_mnist`, `permuted` and
            `rotated` let it vary (default 10, at least 1); `class_split`
            takes the first `num_tasks` tasks. For the others it must be
            None or their fixed count.
        seed: seeds the permutations and the points
            (`gaussian_clusters`); the other protocols are fixed.
        data_dir: directory holding the data (`mnist.npz` for MNIST, a tfds
            data dir for CIFAR/SVHN and `tfds:` sources).
        **options: the benchmark's own settings (`benchmark_settings`), e.g.
            `dataset="npz:/data/x.npz", task_classes="0,1;2,3"`; None
            values are left out.

    Raises:
        BenchmarkError: unknown name, an option the benchmark does not
            read, impossible `num_tasks` / `seed`, or bad data.
        DataUnavailableError: the data cannot be found or downloaded.
    """
    spec = _spec(name)
    if not _is_int(seed) or seed < 0:
        raise BenchmarkError(
            f"Expected a non-negative integer seed for {name}. "
            f"Received: seed={seed!r}"
        )
    readable = {s.name for s in spec.settings}
    options = {k: v for k, v in options.items() if v is not None}
    for key in options:
        if key not in readable:
            raise BenchmarkError(
                f"--{key} is not read by --benchmark={name}; it is a "
                f"setting of --benchmark={'/'.join(readers_of(key))}"
            )
    if spec.num_tasks is None:
        if num_tasks is None:
            num_tasks = spec.default_num_tasks
        if num_tasks is not None and (not _is_int(num_tasks) or num_tasks < 1):
            raise BenchmarkError(
                f"Expected num_tasks >= 1 for {name}. "
                f"Received: num_tasks={num_tasks!r}"
            )
        kwargs = {"num_tasks": None if num_tasks is None else int(num_tasks)}
    else:
        if num_tasks is not None and num_tasks != spec.num_tasks:
            raise BenchmarkError(
                f"{name} has a fixed number of tasks ({spec.num_tasks}); "
                f"received num_tasks={num_tasks!r}. Only "
                + ", ".join(n for n, s in _SPECS.items() if s.num_tasks is None)
                + " take num_tasks"
            )
        kwargs = {}
    if "dataset" in readable:
        if "dataset" not in options:
            raise BenchmarkError(
                f"--benchmark={name} needs --dataset: tfds:NAME[:CONFIG], "
                "npz:PATH or dir:PATH"
            )
        data = options.pop("dataset")
        load = {"data_dir": data_dir,
                "train_split": options.pop("train_split", None),
                "test_split": options.pop("test_split", None),
                "image_size": options.pop("image_size", None)}
        module = importlib.import_module(f"{__name__}.{spec.module}")
        return getattr(module, spec.factory)(
            data, seed=int(seed), **kwargs, **options, **load)
    module = importlib.import_module(f"{__name__}.{spec.module}")
    factory = getattr(module, spec.factory)
    return factory(data_dir=data_dir, seed=int(seed), **kwargs, **options)


def benchmark_options(config) -> dict:
    """The benchmark's own settings in a run's config (a mapping)."""
    return {s.name: config.get(s.name)
            for s in _spec(config["benchmark"]).settings}


__all__ = [
    "BENCHMARKS",
    "HEADS",
    "Benchmark",
    "BenchmarkError",
    "DataUnavailableError",
    "TaskIndexError",
    "all_benchmark_settings",
    "benchmark_options",
    "benchmark_settings",
    "class_split",
    "default_num_tasks",
    "from_arrays",
    "from_datasets",
    "get_benchmark",
    "load_source",
    "permuted",
    "rotated",
    "run_benchmark",
]


def __getattr__(name):
    # The scenarios and sources for Python users, imported on first use.
    if name in ("class_split", "permuted", "rotated"):
        from cl_zoo.benchmarks import scenarios

        return getattr(scenarios, name)
    if name in ("from_arrays", "from_datasets", "load_source"):
        from cl_zoo.benchmarks import sources

        return getattr(sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_benchmark(config, data_dir=None) -> Benchmark:
    """The benchmark a finished run trained on, from its saved config (a
    dict: config.json, or results.json's "config"): its name, number of
    tasks, seed and data directory, as the trainer built it. `data_dir`
    replaces the saved data directory (the data moved)."""
    return get_benchmark(
        config["benchmark"],
        num_tasks=config.get("num_tasks"),
        seed=config.get("seed", 0),
        data_dir=data_dir or config.get("data_dir"),
        **benchmark_options(config),
    )
