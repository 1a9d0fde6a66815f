"""CIFAR-10, CIFAR-100 and SVHN protocols: class splits of tfds sources.

Inputs `(32, 32, 3)` scaled to [0, 1] in the pipeline; the data is loaded
with `tfds_sets.load_tfds` (fails fast offline).

* `split_cifar10`: 5 tasks of 2 classes, {0,1}, ..., {8,9}.
* `split_cifar100`: 10 tasks of 2 classes over the first 20 fine labels,
  {0,1}, ..., {18,19}: the BPN paper's incremental CIFAR-100 ("10 tasks; each
  new task has 2 classes. We use 20 classes"). The single-head output covers
  those 20 classes (`num_classes == 20`).
* `disjoint_cifar10`: 3 tasks, {0,1,2}, {4,5,6}, {7,8,9} (class 3 unused),
  as `disjoint_mnist`.
* `class_incremental_cifar10`, `class_incremental_svhn`: 10 tasks of one
  class each (`svhn_cropped`, train and test splits; the extra split is not
  used).

`class_order` takes the classes in another order (see
`scenarios.ordered_tasks`); unset, the protocols are as above.
"""

from __future__ import annotations

from cl_zoo.benchmarks import scenarios, sources


def _tfds_benchmark(name, dataset, task_classes, data_dir, class_order):
    """A preset: a class split of the tfds source `dataset` (its single head
    covers the classes up to the largest one used)."""
    source = sources.load_source(f"tfds:{dataset}", data_dir=data_dir)
    tasks, order = scenarios.ordered_tasks(task_classes, class_order,
                                           source.classes)
    bm = scenarios.class_split(source, task_classes=tasks, name=name)
    bm.class_order = order
    return bm


def split_cifar10(*, data_dir=None, seed=0, class_order=None):
    """5 tasks of 2 CIFAR-10 classes."""
    del seed
    return _tfds_benchmark(
        "split_cifar10", "cifar10", [[2 * t, 2 * t + 1] for t in range(5)],
        data_dir, class_order,
    )


def split_cifar100(*, data_dir=None, seed=0, class_order=None):
    """10 tasks of 2 CIFAR-100 classes, fine labels 0..19 (BPN protocol)."""
    del seed
    return _tfds_benchmark(
        "split_cifar100", "cifar100", [[2 * t, 2 * t + 1] for t in range(10)],
        data_dir, class_order,
    )


def disjoint_cifar10(*, data_dir=None, seed=0, class_order=None):
    """3 tasks of CIFAR-10: {0,1,2}, {4,5,6}, {7,8,9}."""
    del seed
    return _tfds_benchmark(
        "disjoint_cifar10", "cifar10", [[0, 1, 2], [4, 5, 6], [7, 8, 9]],
        data_dir, class_order,
    )


def class_incremental_cifar10(*, data_dir=None, seed=0, class_order=None):
    """10 tasks of one CIFAR-10 class each."""
    del seed
    return _tfds_benchmark(
        "class_incremental_cifar10", "cifar10", [[c] for c in range(10)],
        data_dir, class_order,
    )


def class_incremental_svhn(*, data_dir=None, seed=0, class_order=None):
    """10 tasks of one SVHN digit each."""
    del seed
    return _tfds_benchmark(
        "class_incremental_svhn", "svhn_cropped", [[c] for c in range(10)],
        data_dir, class_order,
    )
