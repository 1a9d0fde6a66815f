"""Tests for your own data: sources (`npz:`, `dir:`, `tfds:`, arrays,
`tf.data`), the scenarios over them (`class_split`, `permuted`, `rotated`),
`--class_order`, and the checks that refuse bad data before a run writes.

Images are real MNIST digits (the cl_zoo cache), written by the tests as
npz files and PNG folders; tfds sets are mocked (`tfds.testing.mock_data`).
"""

import concurrent.futures
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cl_zoo import benchmarks
from cl_zoo.benchmarks import mnist, scenarios, sources, tfds_sets
from cl_zoo.benchmarks.base import BenchmarkError


def _per_class(x, y, count, classes=range(10)):
    keep = np.concatenate([np.flatnonzero(y == c)[:count] for c in classes])
    return x[keep], y[keep]


@pytest.fixture(scope="module")
def small(mnist_data):
    """30 training and 8 test digits of each class."""
    x_train, y_train, x_test, y_test = mnist_data
    return (*_per_class(x_train, y_train, 30), *_per_class(x_test, y_test, 8))


def write_npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test,
             y_test=y_test)
    return f"npz:{path}"


def write_png_dir(root, x_train, y_train, x_test, y_test, names=None):
    """`root/{train,test}/<class>/<i>.png` of uint8 [N, 28, 28] digits."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        for i, (image, label) in enumerate(zip(x, y)):
            folder = os.path.join(root, split, names[label] if names
                                  else str(label))
            os.makedirs(folder, exist_ok=True)
            png = tf.io.encode_png(image.reshape(28, 28, 1)).numpy()
            with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
                f.write(png)
    return f"dir:{root}"


# ------------------------------------------------------ equivalence (real)
def _batches(bm, t, count=3):
    return [(x["x"].numpy(), x["task"].numpy(), y.numpy())
            for x, y in bm.train_dataset(t, 128, seed=5).take(count)]


def test_class_split_of_the_mnist_npz_is_split_mnist(mnist_data):
    """The same digits, labels and order, batch for batch: the generic
    scenario over the cache file reproduces the built-in benchmark."""
    reference = benchmarks.get_benchmark("split_mnist")
    generic = benchmarks.get_benchmark(
        "class_split", dataset=f"npz:{mnist.cache_path()}",
        task_classes="0,1;2,3;4,5;6,7;8,9",
    )
    assert generic.task_classes == reference.task_classes
    assert generic.num_classes == reference.num_classes == 10
    assert generic.input_shape == reference.input_shape == (28, 28, 1)
    for t in (0, 4):
        for a, b in zip(_batches(reference, t), _batches(generic, t)):
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(reference.test_arrays(t)[0],
                                      generic.test_arrays(t)[0])


def test_permuted_of_the_mnist_npz_is_permuted_mnist(mnist_data):
    reference = benchmarks.get_benchmark("permuted_mnist", num_tasks=3,
                                         seed=4)
    generic = benchmarks.get_benchmark(
        "permuted", dataset=f"npz:{mnist.cache_path()}", num_tasks=3, seed=4)
    np.testing.assert_array_equal(reference.permutations,
                                  generic.permutations)
    assert generic.task_classes == reference.task_classes
    for a, b in zip(_batches(reference, 2), _batches(generic, 2)):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


# --------------------------------------------------------------- rotated
def test_rotation_maps_are_exact_quarter_turns_and_identity():
    image = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    flat = np.append(image.reshape(-1), 0.0)
    assert np.array_equal(flat[scenarios.rotation_map(5, 7, 0)].reshape(5, 7),
                          image)
    square = np.arange(36, dtype=np.float32).reshape(6, 6)
    flat = np.append(square.reshape(-1), 0.0)
    for k in (1, 2, 3):
        rotated = flat[scenarios.rotation_map(6, 6, 90 * k)].reshape(6, 6)
        np.testing.assert_array_equal(rotated, np.rot90(square, k))
    # Corners of a 45 degree turn fall outside: zeros there.
    corner = scenarios.rotation_map(6, 6, 45)[0]
    assert corner == 36
    assert scenarios.rotation_angles(4, 90) == [0.0, 30.0, 60.0, 90.0]
    assert scenarios.rotation_angles(1, 90) == [0.0]


def test_rotated_tasks_rotate_in_the_pipeline(small):
    bm = scenarios.rotated(small, num_tasks=3, max_angle=180)
    assert bm.angles == [0.0, 90.0, 180.0]
    assert bm.task_classes == [list(range(10))] * 3
    upright, y0 = bm.test_arrays(0)
    turned, y1 = bm.test_arrays(1)
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(np.rot90(upright, 1, axes=(1, 2)), turned)
    x, _ = next(iter(bm.train_dataset(2, 16, with_task_id=False)))
    assert x.shape == (16, 28, 28, 1)
    assert bm.describe()["angles"] == [0.0, 90.0, 180.0]


def test_rotated_needs_images(small):
    x_train, y_train, x_test, y_test = small
    flat = (x_train.reshape(len(x_train), -1), y_train,
            x_test.reshape(len(x_test), -1), y_test)
    with pytest.raises(BenchmarkError, match="rotated needs images"):
        scenarios.rotated(flat, num_tasks=2)
    assert scenarios.permuted(flat, num_tasks=2).input_shape == (784,)


# ----------------------------------------------------------- class_split
def test_classes_per_task_follow_the_class_order(small):
    bm = scenarios.class_split(small, classes_per_task=3, num_tasks=3,
                               class_order="9,8,7,6,5,4,3,2,1")
    assert bm.task_classes == [[9, 8, 7], [6, 5, 4], [3, 2, 1]]
    assert bm.describe()["class_order"] == [9, 8, 7, 6, 5, 4, 3, 2, 1]
    shuffled = scenarios.class_split(small, classes_per_task=2,
                                     class_order="seed:3")
    order = [int(c) for c in np.random.default_rng(3).permutation(10)]
    assert shuffled.task_classes == [order[i:i + 2] for i in range(0, 10, 2)]
    with pytest.raises(BenchmarkError, match="do not split into tasks of 3"):
        scenarios.class_split(small, classes_per_task=3)
    with pytest.raises(BenchmarkError, match="drop --classes_per_task"):
        scenarios.class_split(small, task_classes="0,1", class_order="seed:1")
    with pytest.raises(BenchmarkError, match="needs the tasks' classes"):
        scenarios.class_split(small)


def test_class_order_of_the_builtin_protocols(mnist_data):
    """Unset, the protocols are unchanged; set, the digits are taken in
    that order (the presets' positions mapped through it)."""
    assert benchmarks.get_benchmark("split_mnist").class_order is None
    order = [int(c) for c in np.random.default_rng(7).permutation(10)]
    bm = benchmarks.get_benchmark("split_mnist", class_order="seed:7")
    assert bm.task_classes == [order[i:i + 2] for i in range(0, 10, 2)]
    disjoint = benchmarks.get_benchmark(
        "disjoint_mnist", class_order="9,8,7,6,5,4,3,2,1,0")
    assert disjoint.task_classes == [[9, 8, 7], [5, 4, 3], [2, 1, 0]]
    with pytest.raises(BenchmarkError, match="not read by --benchmark="
                       "permuted_mnist"):
        benchmarks.get_benchmark("permuted_mnist", class_order="seed:1")
    with pytest.raises(BenchmarkError, match="lists 3 classes; this split "
                       "takes 10"):
        benchmarks.get_benchmark("split_mnist", class_order="1,2,3")


# --------------------------------------------------------------- sources
def test_npz_layouts_flat_hw_and_float(tmp_path, small):
    x_train, y_train, x_test, y_test = small
    hw = sources.load_source(write_npz(tmp_path / "hw.npz", *small))
    assert hw.input_shape == (28, 28, 1) and hw.x_train.dtype == np.uint8
    flat = sources.load_source(write_npz(
        tmp_path / "flat.npz", x_train.reshape(-1, 784), y_train,
        x_test.reshape(-1, 784), y_test))
    assert flat.input_shape == (784,)
    floats = sources.load_source(write_npz(
        tmp_path / "float.npz", x_train / 255.0, y_train.astype(np.float32),
        x_test / 255.0, y_test))
    assert floats.x_train.dtype == np.float32
    assert floats.y_train.dtype == np.int32
    bm = scenarios.class_split(floats, task_classes=[[0, 1]])
    reference = scenarios.class_split(hw, task_classes=[[0, 1]])
    np.testing.assert_allclose(bm.test_arrays(0)[0],
                               reference.test_arrays(0)[0], atol=1e-6)


def test_npz_is_read_without_pickle(tmp_path, small):
    x_train, y_train, x_test, y_test = small
    labels = np.array([str(v) for v in y_train], dtype=object)
    np.savez(tmp_path / "objects.npz", x_train=x_train, y_train=labels,
             x_test=x_test, y_test=y_test)
    with pytest.raises(BenchmarkError, match="plain numeric arrays"):
        sources.load_source(f"npz:{tmp_path / 'objects.npz'}")


def test_dir_source_reads_class_folders_by_name(tmp_path, small):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven",
             "eight", "nine"]
    x_train, y_train, x_test, y_test = small
    spec = write_png_dir(tmp_path / "digits", x_train[:60], y_train[:60],
                         x_test[:16], y_test[:16], names=names)
    source = sources.load_source(spec)
    assert source.class_names == tuple(sorted(names[:2]))  # one, zero
    # Folder names sorted: "one" is class 0, "zero" class 1.
    np.testing.assert_array_equal(source.x_train[source.y_train == 1][0],
                                  x_train[0].reshape(28, 28, 1))
    bm = scenarios.class_split(source, task_classes="zero;one")
    assert bm.task_classes == [[1], [0]]
    assert bm.describe()["class_names"] == ["one", "zero"]
    with pytest.raises(BenchmarkError, match="no class 'two'"):
        scenarios.class_split(source, task_classes="zero;two")


def test_image_size_resizes_every_image(tmp_path, small):
    source = sources.load_source(write_npz(tmp_path / "d.npz", *small),
                                 image_size=(14, 20))
    assert source.input_shape == (14, 20, 1)
    assert source.x_train.dtype == np.uint8


def test_arrays_and_tf_data_sources(small):
    x_train, y_train, x_test, y_test = small
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    test = tf.data.Dataset.from_tensor_slices(
        {"image": x_test, "label": y_test})
    from_data = scenarios.class_split((train, test), classes_per_task=5)
    from_arrays = scenarios.class_split(small, classes_per_task=5)
    assert from_data.task_classes == from_arrays.task_classes
    np.testing.assert_array_equal(from_data.test_arrays(1)[0],
                                  from_arrays.test_arrays(1)[0])


TFDS_SETS = {
    # name: (options, input shape)
    "fashion_mnist": ({"task_classes": "T-shirt/top,Trouser;Bag,Sandal"},
                      (28, 28, 1)),
    "cifar10": ({"classes_per_task": 2}, (32, 32, 3)),
    # 360x480 images, and a 'validation' split as the test split.
    "dmlab": ({"classes_per_task": 3, "test_split": "validation"},
              (360, 480, 3)),
    # Images of many sizes, one split: resized, sliced in two.
    "cats_vs_dogs": ({"classes_per_task": 1, "train_split": "train[:70%]",
                      "test_split": "train[70%:]", "image_size": (24, 40)},
                     (24, 40, 3)),
}


@pytest.mark.parametrize("name", sorted(TFDS_SETS))
def test_tfds_sources_with_mock_data(name, monkeypatch, tmp_path):
    """Offline, tfds's mock: the same calls that load the real sets."""
    monkeypatch.setattr(tfds_sets, "_network_reachable", lambda name: True)
    options, shape = TFDS_SETS[name]
    with tfds.testing.mock_data(
            num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
        bm = benchmarks.get_benchmark(
            "class_split", dataset=f"tfds:{name}", data_dir=str(tmp_path),
            **options)
    assert bm.input_shape == shape
    assert bm.describe()["source"] == f"tfds:{name}"
    x, y = next(iter(bm.train_dataset(0, 2, with_task_id=False)))
    assert x.shape == (2, *shape) and x.dtype == tf.float32
    assert set(y.numpy()) <= set(bm.task_classes[0])
    if name == "fashion_mnist":
        assert bm.task_classes == [[0, 1], [8, 5]]


def test_tfds_sources_fail_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(tfds_sets, "_network_reachable", lambda name: False)
    with pytest.raises(benchmarks.DataUnavailableError,
                       match="fashion_mnist is not prepared"):
        benchmarks.get_benchmark("class_split", dataset="tfds:fashion_mnist",
                                 data_dir=str(tmp_path), classes_per_task=2)
    with pytest.raises(BenchmarkError, match="no usable data set"):
        benchmarks.get_benchmark("class_split", dataset="tfds:no_such_set",
                                 classes_per_task=2)


def test_variable_size_images_need_image_size(monkeypatch, tmp_path):
    monkeypatch.setattr(tfds_sets, "_network_reachable", lambda name: True)
    with tfds.testing.mock_data(
            num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(BenchmarkError, match="--image_size"):
            benchmarks.get_benchmark(
                "class_split", dataset="tfds:cats_vs_dogs",
                data_dir=str(tmp_path), classes_per_task=1,
                test_split="train")


# ------------------------------------------------------------- bad input
def _bad_data(root, small):
    """`{case: (extra trainer flags, message fragments)}`, writing the data
    of each case under `root`."""
    x_train, y_train, x_test, y_test = small
    good = write_npz(root / "good.npz", *small)
    nan = (x_train / 255.0).astype(np.float32)
    nan[3, 4, 5] = np.nan
    keep = ~np.isin(y_test, [2, 3])
    cases = {
        "class_absent": (
            [f"--dataset={good}", "--task_classes=0,1;2,12"],
            ["task 1 names class 12", "its classes: 0..9"]),
        "overlapping_tasks": (
            [f"--dataset={good}", "--task_classes=0,1;1,2"],
            ["class 1 is in task 0 and in task 1"]),
        "task_without_test_examples": (
            [f"--dataset={write_npz(root / 'no_test.npz', x_train, y_train, x_test[keep], y_test[keep])}",  # noqa: E501
             "--task_classes=0,1;2,3"],
            ["task 1 (classes [2, 3]) has no test examples"]),
        "shapes_differ": (
            [f"--dataset={write_npz(root / 'shapes.npz', x_train, y_train, x_test[:, :20, :20], y_test)}",  # noqa: E501
             "--classes_per_task=2"],
            ["train examples have shape [28, 28, 1] but test examples "
             "[20, 20, 1]"]),
        "labels_not_integers": (
            [f"--dataset={write_npz(root / 'labels.npz', x_train, y_train + 0.5, x_test, y_test)}",  # noqa: E501
             "--classes_per_task=2"],
            ["y_train must be integer class ids, not float64"]),
        "non_finite": (
            [f"--dataset={write_npz(root / 'nan.npz', nan, y_train, x_test / 255.0, y_test)}",  # noqa: E501
             "--classes_per_task=2"],
            ["x_train holds 1 NaN or infinite values"]),
        "missing_key": (
            [f"--dataset={_npz_without_y_test(root, small)}",
             "--classes_per_task=2"],
            ["lacks keys y_test"]),
    }
    empty = root / "empty_class"
    write_png_dir(empty, x_train[:4], y_train[:4], x_test[:4], y_test[:4])
    os.makedirs(empty / "train" / "7")
    cases["folder_without_images"] = (
        [f"--dataset=dir:{empty}", "--classes_per_task=1"],
        [f"{empty / 'train' / '7'} holds no images"])
    corrupt = root / "corrupt"
    write_png_dir(corrupt, x_train[:4], y_train[:4], x_test[:4], y_test[:4])
    bad_file = corrupt / "train" / "0" / "broken.png"
    bad_file.write_bytes(b"not a png at all")
    cases["corrupt_image"] = (
        [f"--dataset=dir:{corrupt}", "--classes_per_task=1"],
        [f"{bad_file} is not a readable PNG/JPEG image"])
    cases["batch_larger_than_a_task"] = (
        [f"--dataset={good}", "--task_classes=0,1;2,3",
         "--batch_size=100000"],
        ["--batch_size=100000 is larger than task 0's training set (60 "
         "examples)"])
    return cases


def _npz_without_y_test(root, small):
    x_train, y_train, x_test, _ = small
    path = root / "no_key.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test)
    return f"npz:{path}"


@pytest.fixture(scope="module")
def bad_data_runs(tmp_path_factory, small, run_trainer):
    root = tmp_path_factory.mktemp("bad_data")
    cases = _bad_data(root, small)

    def run(case):
        flags, _ = cases[case]
        model_dir = root / "runs" / case
        proc = run_trainer("--method=sgd", "--benchmark=class_split",
                           f"--model_dir={model_dir}", *flags, timeout=120)
        return proc, model_dir

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(run, case) for case in cases}
        return {case: (*futures[case].result(), cases[case][1])
                for case in cases}


BAD_DATA_CASES = (
    "class_absent", "overlapping_tasks", "task_without_test_examples",
    "shapes_differ", "labels_not_integers", "non_finite", "missing_key",
    "folder_without_images", "corrupt_image", "batch_larger_than_a_task",
)


@pytest.mark.parametrize("case", BAD_DATA_CASES)
def test_bad_data_ends_the_run_before_it_writes(bad_data_runs, case):
    proc, model_dir, fragments = bad_data_runs[case]
    details = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, details
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), details
    for fragment in fragments:
        assert fragment in lines[0], details
    assert not model_dir.exists(), list(model_dir.iterdir())


def test_batch_check_covers_the_builtin_benchmarks(mnist_data, tmp_path):
    """`--batch_size=100000` on split MNIST used to train nothing and
    write the untrained accuracies; now the run refuses it first."""
    from cl_zoo import train_lib
    from cl_zoo.config import resolve_config
    from cl_zoo.methods import get_method

    config = resolve_config(get_method("sgd"), "split_mnist", {
        "batch_size": 100000, "model_dir": str(tmp_path / "run")})
    with pytest.raises(BenchmarkError, match="larger than task 2's training "
                       "set \\(11263 examples\\)"):
        train_lib.ContinualRun(config)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------- knobs
def test_steps_per_task_sets_the_training_length(small, tmp_path):
    from cl_zoo import train_lib
    from cl_zoo.config import ConfigError, resolve_config
    from cl_zoo.methods import get_method

    bm = scenarios.class_split(small, classes_per_task=5)
    config = resolve_config(get_method("sgd"), "class_split", {
        "steps_per_task": 7, "batch_size": 16, "hidden_units": (8,),
        "model_dir": str(tmp_path / "run"), "export": False, "verbose": 0})
    assert config.epochs == 1  # one pass of 7 batches per task
    run = train_lib.ContinualRun(config, benchmark=bm)
    results = run.run()
    assert int(run.model.optimizer.iterations.numpy()) == 2 * 7
    assert results["data"]["scenario"] == "class_split"
    with pytest.raises(ConfigError, match="give one"):
        resolve_config(get_method("sgd"), "class_split",
                       {"steps_per_task": 7, "epochs": 2})
    # Unset, the length is --epochs (the default changes nothing).
    default = resolve_config(get_method("sgd"), "split_mnist", {})
    assert default.steps_per_task is None and default.epochs == 5


def test_knobs_are_in_help_with_their_defaults():
    from flags import common

    text = common.short_help("Trains.")
    for flag in ("--normalize", "--initializer", "--steps_per_task",
                 "--class_order", "--dataset", "--task_classes",
                 "--classes_per_task", "--max_angle", "--resnet_width",
                 "--image_size", "--test_split"):
        assert flag in text, flag
    from cl_zoo.config import resolve_config
    from cl_zoo.methods import get_method

    config = resolve_config(get_method("ewc"), "split_mnist", {})
    assert (config.normalize, config.initializer, config.class_order) == (
        "none", "glorot_uniform", None)


def test_benchmark_settings_are_refused_where_not_read():
    from cl_zoo.config import ConfigError, resolve_config
    from cl_zoo.methods import get_method

    with pytest.raises(ConfigError, match="--dataset is not read by "
                       "--benchmark=split_mnist; it is a setting of "
                       "--benchmark=class_split/permuted/rotated"):
        resolve_config(get_method("sgd"), "split_mnist",
                       {"dataset": "npz:x.npz"})
    with pytest.raises(ConfigError, match="--max_angle is not read by "
                       "--benchmark=permuted"):
        resolve_config(get_method("sgd"), "permuted", {"max_angle": 30.0})
    with pytest.raises(ConfigError, match="--resnet_width is read with "
                       "--architecture=resnet18 only"):
        resolve_config(get_method("sgd"), "split_mnist", {"resnet_width": 8})
    with pytest.raises(BenchmarkError, match="needs --dataset"):
        benchmarks.get_benchmark("rotated")


# ------------------------------------------- every family on a PNG folder
FAMILIES = {
    # a regularizer, BPN, AMN, episodic memory, generative replay
    "ewc": (),
    "bd_ewc": (),
    "ad_ewc": (),
    "gem": (),
    "dgm": ("--noise_dim=32", "--replay_per_class=8"),
}


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory, mnist_data, run_trainer):
    """Each family trains end to end on real MNIST PNGs in class folders
    (200 training and 50 test digits per class)."""
    import json

    root = tmp_path_factory.mktemp("families")
    x_train, y_train, x_test, y_test = mnist_data
    classes = range(4)
    spec = write_png_dir(
        root / "digits", *_per_class(x_train, y_train, 200, classes),
        *_per_class(x_test, y_test, 50, classes))

    def run(method):
        model_dir = root / method
        proc = run_trainer(
            f"--method={method}", "--benchmark=class_split",
            f"--dataset={spec}", "--task_classes=0,1;2,3",
            "--steps_per_task=30", "--batch_size=32", "--hidden_units=64",
            f"--model_dir={model_dir}", *FAMILIES[method], timeout=600)
        results = model_dir / "results.json"
        return proc, (json.loads(results.read_text())
                      if results.exists() else None), model_dir

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {m: pool.submit(run, m) for m in FAMILIES}
        return {m: futures[m].result() for m in FAMILIES}


@pytest.mark.parametrize("method", sorted(FAMILIES))
def test_every_family_trains_on_a_png_folder(family_runs, method):
    proc, results, model_dir = family_runs[method]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results["data"]["source"].startswith("dir:")
    assert results["data"]["class_names"] == ["0", "1", "2", "3"]
    matrix = np.asarray(results["accuracy_matrix"])
    assert matrix.shape == (2, 2)
    # 30 steps learn 0-vs-1 (chance 0.5 within the task, less over the
    # single head's classes seen).
    assert matrix[0, 0] > 0.8, matrix
    assert (model_dir / "export" / "all_tasks").is_dir()


def test_resnet18_trains_on_mock_cifar_under_mirrored(
        mirrored_strategy, monkeypatch, tmp_path):
    """The reduced ResNet-18 on a class split of CIFAR-shaped (mock) data,
    two CPU replicas, through the run loop; the exports take 32x32x3."""
    from cl_zoo import train_lib
    from cl_zoo.config import resolve_config
    from cl_zoo.methods import get_method

    monkeypatch.setattr(tfds_sets, "_network_reachable", lambda name: True)
    with tfds.testing.mock_data(
            num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
        bm = benchmarks.get_benchmark("class_split", dataset="tfds:cifar10",
                                      data_dir=str(tmp_path / "tfds"),
                                      classes_per_task=5)
    config = resolve_config(get_method("ewc"), "class_split", {
        "architecture": "resnet18", "resnet_width": 8, "hidden_units": (),
        "steps_per_task": 2, "batch_size": 8, "strategy": "mirrored",
        "num_cpu_devices": 2, "normalize": "standard",
        "initializer": "torch_default", "fisher_samples": 16,
        "model_dir": str(tmp_path / "run"), "verbose": 0})
    results = train_lib.ContinualRun(config, benchmark=bm,
                                     strategy=mirrored_strategy).run()
    assert np.asarray(results["accuracy_matrix"]).shape == (2, 2)
    assert results["data"]["input_shape"] == [32, 32, 3]
    served = tf.saved_model.load(str(tmp_path / "run" / "export" / "task_0"))
    x, _ = bm.test_arrays(0)
    scores = served.signatures["serving_default"](x=tf.constant(x[:3]))
    assert next(iter(scores.values())).shape[0] == 3
