"""Loading tensorflow-datasets image-classification sets into memory.

A split is read whole as uint8 numpy arrays (its `image` and `label`
features, in batches of 10000), optionally resized. The CIFAR / SVHN
protocols built on it live in `cifar`, any other set is a `tfds:` source
(`sources`).

Loading fails fast offline: when the data set is not prepared in `data_dir`
(default `~/tensorflow_datasets`), a download is attempted only if the
download host answers a TCP connection within a few seconds; otherwise
`DataUnavailableError` says how to prepare the data elsewhere.
"""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
from absl import logging

from cl_zoo.benchmarks.base import BenchmarkError, DataUnavailableError

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


def builder_features(name: str, data_dir=None):
    """The features of tfds set `name` (`NAME` or `NAME/CONFIG`), from its
    code (no download); BenchmarkError when tfds knows no such set."""
    import tensorflow_datasets as tfds

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        return dict(tfds.builder(name, data_dir=data_dir).info.features)
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:160]
        raise BenchmarkError(
            f"tensorflow-datasets has no usable data set {name!r} ({reason})"
        ) from None
    finally:
        logging.set_verbosity(verbosity)


def load_tfds(name: str, data_dir=None, splits=("train", "test"),
              image_size=None):
    """Returns `(x_train, y_train, x_test, y_test)` of a tfds data set.

    Reads the `image` and `label` features of the two `splits` (tfds split
    names, slices allowed: `train[:80%]`). Images are uint8 `[N, H, W, C]`
    (resized bilinearly to `image_size` when given), labels int32.

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
        datasets = tfds.load(
            name,
            split=list(splits),
            data_dir=data_dir,
            download=not prepared,
        )
        (x_train, y_train), (x_test, y_test) = (
            _to_numpy(ds, image_size) for ds in datasets
        )
    except BenchmarkError:
        raise
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


def _to_numpy(ds, image_size=None):
    """Reads a split's `image` and `label` features into numpy arrays."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def pick(element):
        image = element["image"]
        if image_size is not None:
            image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
                image, image_size)), 0, 255), tf.uint8)
        return image, element["label"]

    # Batches of at most about 64 MB: large images (dmlab's 360x480) in
    # batches of LOAD_BATCH would ask for gigabytes at once.
    shape = ds.element_spec["image"].shape
    if image_size is not None:
        shape = (*image_size, shape[-1])
    if None not in shape:
        batch = int(min(LOAD_BATCH, max(1, 2**26 // int(np.prod(shape)))))
    else:
        batch = 256
    xs, ys = [], []
    try:
        for x, y in tfds.as_numpy(ds.map(pick).batch(batch)):
            xs.append(np.asarray(x, np.uint8))
            ys.append(np.asarray(y).astype(np.int32))
    except tf.errors.InvalidArgumentError as e:
        if image_size is None and "shape" in str(e).lower():
            raise BenchmarkError(
                "the images of this tfds set differ in size; pass "
                "--image_size=H,W to resize them"
            ) from None
        raise
    if not xs:
        raise ValueError("the split is empty")
    return np.concatenate(xs), np.concatenate(ys)
