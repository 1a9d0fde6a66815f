"""CIFAR-10, CIFAR-100 and SVHN protocols, loaded with tensorflow-datasets.

Each data set is read whole into memory as uint8 numpy arrays
(`tfds.load(..., as_supervised=True)` in batches of 10000), inputs `(32, 32, 3)`
scaled to [0, 1] in the pipeline.

Loading fails fast offline: when the data set is not prepared in `data_dir`
(default `~/tensorflow_datasets`), a download is attempted only if the
download host answers a TCP connection within a few seconds; otherwise
`DataUnavailableError` says how to prepare the data elsewhere.

Protocols:

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
"""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
from absl import logging

from cl_zoo.benchmarks.base import Benchmark, DataUnavailableError

# Hosts the tfds builders download from (TCP port 443).
DOWNLOAD_HOSTS = {
    "cifar10": "www.cs.toronto.edu",
    "cifar100": "www.cs.toronto.edu",
    "svhn_cropped": "ufldl.stanford.edu",
}
NETWORK_TIMEOUT_S = 3.0
# Batch size used to read a split into memory. Not `batch_size=-1`: that
# needs the split sizes from the data set's metadata and aborts the process
# (a C++ std::length_error, not an exception) when they are unknown.
LOAD_BATCH = 10000


def _host_reachable(host: str, port: int = 443, timeout=NETWORK_TIMEOUT_S):
    """Whether a TCP connection to `host` opens within `timeout` seconds.

    Name resolution is not covered by socket timeouts, so the attempt runs in
    a daemon thread that is abandoned after `timeout + 1` seconds.
    """
    result = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _network_reachable(name: str) -> bool:
    """Whether the download host of tfds data set `name` is reachable."""
    return _host_reachable(DOWNLOAD_HOSTS.get(name, "www.google.com"))


def _is_prepared(name: str, data_dir) -> bool:
    """Whether tfds has `name` prepared in `data_dir` (no network)."""
    import tensorflow_datasets as tfds

    # Asking is no error: tfds warns about a version folder without
    # dataset_info.json while it looks, before the run's own clear message.
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        return bool(tfds.builder(name, data_dir=data_dir).is_prepared())
    except Exception as e:  # noqa: BLE001 - a broken dir is "not prepared"
        problem = e
    finally:
        logging.set_verbosity(verbosity)
    logging.warning(
        "tfds could not inspect %s in %s: %s", name, data_dir, problem
    )
    return False


def _unavailable(name, data_dir, reason):
    where = data_dir or "~/tensorflow_datasets"
    return DataUnavailableError(
        f"tfds data set {name} is not prepared in {where} and {reason}; "
        f"prepare it with tfds (`tfds build {name} --data_dir=DIR`) on a "
        "machine with internet and pass --data_dir=DIR"
    )


def load_tfds(name: str, data_dir=None):
    """Returns `(x_train, y_train, x_test, y_test)` of a tfds data set.

    Images are uint8 `[N, H, W, C]`, labels int32.

    Raises:
        DataUnavailableError: not prepared and not downloadable.
    """
    import tensorflow_datasets as tfds

    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
    prepared = _is_prepared(name, data_dir)
    if not prepared:
        if not _network_reachable(name):
            raise _unavailable(name, data_dir, "the network is unreachable")
        logging.info("tfds: downloading and preparing %s", name)
    try:
        splits = tfds.load(
            name,
            split=["train", "test"],
            data_dir=data_dir,
            as_supervised=True,
            batch_size=LOAD_BATCH,
            download=not prepared,
        )
        (x_train, y_train), (x_test, y_test) = (_to_numpy(ds) for ds in splits)
    except Exception as e:  # noqa: BLE001 - report any failure in one line
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise _unavailable(name, data_dir, f"loading failed ({reason})") from e
    logging.info(
        "tfds: loaded %s (%d train, %d test) from %s",
        name,
        len(y_train),
        len(y_test),
        data_dir or "the default data dir",
    )
    return x_train, y_train, x_test, y_test


def _to_numpy(ds):
    """Concatenates a batched `(image, label)` dataset into numpy arrays."""
    import tensorflow_datasets as tfds

    xs, ys = [], []
    for x, y in tfds.as_numpy(ds):
        xs.append(np.asarray(x, np.uint8))
        ys.append(np.asarray(y).astype(np.int32))
    if not xs:
        raise ValueError("the split is empty")
    return np.concatenate(xs), np.concatenate(ys)


def _tfds_benchmark(name, dataset, task_classes, num_classes, data_dir):
    x_train, y_train, x_test, y_test = load_tfds(dataset, data_dir)
    return Benchmark(
        name,
        train=(x_train, y_train),
        test=(x_test, y_test),
        task_classes=task_classes,
        num_classes=num_classes,
    )


def split_cifar10(*, data_dir=None, seed=0):
    """5 tasks of 2 CIFAR-10 classes."""
    del seed
    return _tfds_benchmark(
        "split_cifar10",
        "cifar10",
        [[2 * t, 2 * t + 1] for t in range(5)],
        10,
        data_dir,
    )


def split_cifar100(*, data_dir=None, seed=0):
    """10 tasks of 2 CIFAR-100 classes, fine labels 0..19 (BPN protocol)."""
    del seed
    return _tfds_benchmark(
        "split_cifar100",
        "cifar100",
        [[2 * t, 2 * t + 1] for t in range(10)],
        20,
        data_dir,
    )


def disjoint_cifar10(*, data_dir=None, seed=0):
    """3 tasks of CIFAR-10: {0,1,2}, {4,5,6}, {7,8,9}."""
    del seed
    return _tfds_benchmark(
        "disjoint_cifar10",
        "cifar10",
        [[0, 1, 2], [4, 5, 6], [7, 8, 9]],
        10,
        data_dir,
    )


def class_incremental_cifar10(*, data_dir=None, seed=0):
    """10 tasks of one CIFAR-10 class each."""
    del seed
    return _tfds_benchmark(
        "class_incremental_cifar10",
        "cifar10",
        [[c] for c in range(10)],
        10,
        data_dir,
    )


def class_incremental_svhn(*, data_dir=None, seed=0):
    """10 tasks of one SVHN digit each."""
    del seed
    return _tfds_benchmark(
        "class_incremental_svhn",
        "svhn_cropped",
        [[c] for c in range(10)],
        10,
        data_dir,
    )
