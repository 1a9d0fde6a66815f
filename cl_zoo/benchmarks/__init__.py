"""Continual-learning task sequences as `tf.data` pipelines.

```python
from cl_zoo import benchmarks

bm = benchmarks.get_benchmark("split_mnist")
ds = bm.train_dataset(0, batch_size=128)   # ({"x", "task"}, y), y global ids
x, y = bm.test_arrays(4, head="multi")      # y index within task_classes[4]
```

See `base.Benchmark` for the pipeline API and the modules `mnist`, `toy` and
`tfds_sets` for each protocol and where its data comes from.
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


class _Spec(NamedTuple):
    module: str  # submodule of cl_zoo.benchmarks, imported on first use
    factory: str
    num_tasks: int | None  # None: chosen with `num_tasks`
    default_num_tasks: int


_SPECS = {
    "split_mnist": _Spec("mnist", "split_mnist", 5, 5),
    "disjoint_mnist": _Spec("mnist", "disjoint_mnist", 3, 3),
    "permuted_mnist": _Spec("mnist", "permuted_mnist", None, 10),
    "class_incremental_mnist": _Spec(
        "mnist", "class_incremental_mnist", 10, 10
    ),
    "gaussian_clusters": _Spec("toy", "gaussian_clusters", 2, 2),
    "split_cifar10": _Spec("tfds_sets", "split_cifar10", 5, 5),
    "split_cifar100": _Spec("tfds_sets", "split_cifar100", 10, 10),
    "disjoint_cifar10": _Spec("tfds_sets", "disjoint_cifar10", 3, 3),
    "class_incremental_svhn": _Spec(
        "tfds_sets", "class_incremental_svhn", 10, 10
    ),
    "class_incremental_cifar10": _Spec(
        "tfds_sets", "class_incremental_cifar10", 10, 10
    ),
}

BENCHMARKS = tuple(sorted(_SPECS))


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def default_num_tasks(name: str) -> int:
    """The number of tasks `name` has when `num_tasks` is not given."""
    return _spec(name).default_num_tasks


def _spec(name):
    if name not in _SPECS:
        raise BenchmarkError(
            f"Unknown benchmark {name!r}; expected one of: "
            + ", ".join(BENCHMARKS)
        )
    return _SPECS[name]


def get_benchmark(
    name: str, *, num_tasks: int | None = None, seed: int = 0, data_dir=None
) -> Benchmark:
    """Builds benchmark `name`, loading its data now.

    Args:
        name: one of `BENCHMARKS`.
        num_tasks: number of tasks; only `permuted_mnist` lets it vary
            (default 10, at least 1). For the others it must be None or
            their fixed count.
        seed: seeds the permutations (`permuted_mnist`) and the points
            (`gaussian_clusters`); the other protocols are fixed.
        data_dir: directory holding the data (`mnist.npz` for MNIST, a tfds
            data dir for CIFAR/SVHN).

    Raises:
        BenchmarkError: unknown name or impossible `num_tasks` / `seed`.
        DataUnavailableError: the data cannot be found or downloaded.
    """
    spec = _spec(name)
    if not _is_int(seed) or seed < 0:
        raise BenchmarkError(
            f"Expected a non-negative integer seed for {name}. "
            f"Received: seed={seed!r}"
        )
    if spec.num_tasks is None:
        if num_tasks is None:
            num_tasks = spec.default_num_tasks
        if not _is_int(num_tasks) or num_tasks < 1:
            raise BenchmarkError(
                f"Expected num_tasks >= 1 for {name}. "
                f"Received: num_tasks={num_tasks!r}"
            )
        kwargs = {"num_tasks": int(num_tasks)}
    else:
        if num_tasks is not None and num_tasks != spec.num_tasks:
            raise BenchmarkError(
                f"{name} has a fixed number of tasks ({spec.num_tasks}); "
                f"received num_tasks={num_tasks!r}. Only "
                + ", ".join(n for n, s in _SPECS.items() if s.num_tasks is None)
                + " takes num_tasks"
            )
        kwargs = {}
    module = importlib.import_module(f"{__name__}.{spec.module}")
    factory = getattr(module, spec.factory)
    return factory(data_dir=data_dir, seed=int(seed), **kwargs)


__all__ = [
    "BENCHMARKS",
    "HEADS",
    "Benchmark",
    "BenchmarkError",
    "DataUnavailableError",
    "TaskIndexError",
    "default_num_tasks",
    "get_benchmark",
]


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
    )
