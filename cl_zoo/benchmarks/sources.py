"""Where a scenario's examples come from: any image-classification data.

A source is a pair of pools, training and test examples with integer
labels, checked once when it is loaded (`Source`). It comes from

* `tfds:NAME[:CONFIG]`: a tensorflow-datasets set with `image` and `label`
  features (`--train_split` / `--test_split`, default `train` / `test`);
* `npz:PATH`: arrays `x_train`, `y_train`, `x_test`, `y_test`, read with
  `allow_pickle=False`; images uint8 (scaled by 1/255) or float (used as
  they are), `[N, H, W, C]`, `[N, H, W]` (one channel) or flat `[N, D]`;
* `dir:PATH`: PNG/JPEG files in `PATH/train/<class>/` and `PATH/test/<class>/`,
  labelled by the folder names in sorted order;
* in Python: arrays (`from_arrays`) or `tf.data.Dataset`s (`from_datasets`).

`--image_size=H,W` resizes every image (bilinear) for sets whose images
differ in size; without it they must all share one shape.

Every problem is a `BenchmarkError` (the trainer: one line, exit 2) that
names the file, split or class at fault: a missing key, mismatched shapes,
labels that are not integers, non-finite values, a folder without images, a
file that does not decode.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np
from absl import logging

from cl_zoo.benchmarks.base import BenchmarkError, DataUnavailableError

SOURCE_KINDS = ("tfds", "npz", "dir")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """Training and test pools of one data set, checked.

    Attributes:
        spec: where it came from (`npz:/data/x.npz`, `arrays`...).
        x_train, y_train, x_test, y_test: images `[N, *shape]` (uint8 or
            float32) and int32 labels >= 0.
        class_names: the name of each label id where the data has names
            (`dir:` folders, tfds label names), else None.
    """

    spec: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple | None = None

    @property
    def input_shape(self):
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def classes(self):
        """Every label id present in the training or the test pool."""
        return sorted(
            int(c) for c in np.union1d(self.y_train, self.y_test)
        )

    def class_id(self, word):
        """A label id from a class id or (with class names) a class name."""
        text = str(word).strip()
        if self.class_names and text in self.class_names:
            return self.class_names.index(text)
        try:
            return int(text)
        except ValueError:
            known = (f"; its classes are {', '.join(self.class_names)}"
                     if self.class_names else "")
            raise BenchmarkError(
                f"{self.spec}: no class {text!r}{known}"
            ) from None


# ----------------------------------------------------------------- checks
def _check_images(x, where):
    x = np.asarray(x)
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise BenchmarkError(
                f"{where} holds {bad} NaN or infinite values; clean the data "
                "first"
            )
        x = x.astype(np.float32, copy=False)
    else:
        raise BenchmarkError(
            f"{where} must be uint8 pixels or float values, not {x.dtype}"
        )
    if x.ndim == 3:  # [N, H, W]: one channel
        x = x[..., None]
    if x.ndim not in (2, 4):
        raise BenchmarkError(
            f"{where} must be [N, H, W, C], [N, H, W] or flat [N, D]; got "
            f"shape {list(x.shape)}"
        )
    return x


def _check_labels(y, count, where):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != count:
        raise BenchmarkError(
            f"{where} must hold one label per example ({count}); got shape "
            f"{list(y.shape)}"
        )
    if np.issubdtype(y.dtype, np.floating) and y.size and np.all(
            np.isfinite(y)) and np.array_equal(y, np.round(y)):
        y = y.astype(np.int64)  # whole numbers stored as floats
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        example = y.reshape(-1)[:1].tolist()
        raise BenchmarkError(
            f"{where} must be integer class ids, not {y.dtype} (e.g. "
            f"{example}); map the classes to 0..K-1 first"
        )
    if y.size and y.min() < 0:
        raise BenchmarkError(f"{where} holds negative class ids")
    return y.astype(np.int32)


def check_source(spec, x_train, y_train, x_test, y_test, class_names=None):
    """A checked `Source`; BenchmarkError naming `spec` when it is bad."""
    pools = []
    for split, x, y in (("train", x_train, y_train),
                        ("test", x_test, y_test)):
        x = _check_images(x, f"{spec}: x_{split}")
        if x.shape[0] == 0:
            raise BenchmarkError(f"{spec}: the {split} split is empty")
        y = _check_labels(y, x.shape[0], f"{spec}: y_{split}")
        pools += [x, y]
    if pools[0].shape[1:] != pools[2].shape[1:]:
        raise BenchmarkError(
            f"{spec}: train examples have shape {list(pools[0].shape[1:])} "
            f"but test examples {list(pools[2].shape[1:])}"
        )
    if pools[0].dtype != pools[2].dtype:
        raise BenchmarkError(
            f"{spec}: x_train is {pools[0].dtype} but x_test "
            f"{pools[2].dtype}; both must be uint8 or both float"
        )
    return Source(spec, *pools,
                  class_names=tuple(class_names) if class_names else None)


def _resize(x, image_size):
    """Bilinear resize of uint8 / float images to `image_size`, same dtype."""
    import tensorflow as tf

    out = tf.image.resize(x, image_size, method="bilinear").numpy()
    if x.dtype == np.uint8:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out.astype(np.float32)


# ------------------------------------------------------------------ npz
def read_npz(path, what):
    """The arrays `NPZ_KEYS` of the npz file `path`, read without pickle;
    BenchmarkError naming `what` when it is unreadable or incomplete."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise BenchmarkError(
                    f"{what} lacks keys {', '.join(missing)} (has "
                    f"{', '.join(f.files) or 'none'}); expected arrays "
                    f"{', '.join(NPZ_KEYS)}"
                )
            return [f[k] for k in NPZ_KEYS]
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise BenchmarkError(f"{what} is not a readable npz: {e}") \
            from e
    except ValueError as e:  # pickled data: object arrays, not an npz
        raise BenchmarkError(
            f"{what} is not a readable npz: {e}; store plain numeric arrays "
            "(np.savez)"
        ) from e


def load_npz(path, image_size=None):
    spec = f"npz:{path}"
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DataUnavailableError(f"{spec}: no such file")
    arrays = read_npz(path, spec)
    if image_size is not None:
        arrays[0], arrays[2] = (
            _resize(_check_images(a, f"{spec}: {k}"), image_size)
            for a, k in ((arrays[0], "x_train"), (arrays[2], "x_test"))
        )
    return check_source(spec, *arrays)


# ------------------------------------------------------------------ dir
def _decode(path, image_size):
    import tensorflow as tf

    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, expand_animations=False)
    except (tf.errors.OpError, ValueError) as e:
        message = " ".join(str(getattr(e, "message", e)).split())[:120]
        raise BenchmarkError(
            f"{path} is not a readable PNG/JPEG image ({message}); remove or "
            "replace it"
        ) from None
    if image_size is not None:
        return _resize(image.numpy()[None], image_size)[0]
    return image.numpy()


def _image_files(folder):
    """Sorted image files of `folder`; hidden files are skipped, other
    files are an error (not silently left out)."""
    files = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or os.path.isdir(path):
            continue
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            raise BenchmarkError(
                f"{path} is not a PNG/JPEG image file; the class folders "
                "may hold images only"
            )
        files.append(path)
    return files


def load_dir(path, image_size=None):
    """Images of `path/train/<class>/*` and `path/test/<class>/*`."""
    spec = f"dir:{path}"
    root = os.path.expanduser(path)
    splits = {}
    for split in ("train", "test"):
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise DataUnavailableError(
                f"{spec}: no folder {folder}; expected {split}/<class>/ "
                "image folders"
            )
        classes = sorted(
            d for d in os.listdir(folder)
            if os.path.isdir(os.path.join(folder, d)) and not d.startswith(".")
        )
        if not classes:
            raise BenchmarkError(
                f"{folder} has no class folders; expected {split}/<class>/"
                "<image files>"
            )
        splits[split] = {c: _image_files(os.path.join(folder, c))
                         for c in classes}
    names = sorted(set(splits["train"]) | set(splits["test"]))
    arrays = []
    shape, first = None, None
    for split in ("train", "test"):
        images, labels = [], []
        for name, files in splits[split].items():
            if not files:
                raise BenchmarkError(
                    f"{os.path.join(root, split, name)} holds no images"
                )
            for file in files:
                image = _decode(file, image_size)
                if shape is None:
                    shape, first = image.shape, file
                elif image.shape != shape:
                    raise BenchmarkError(
                        f"{file} is {'x'.join(map(str, image.shape))} but "
                        f"{first} is {'x'.join(map(str, shape))}; pass "
                        "--image_size=H,W to resize every image"
                    )
                images.append(image)
                labels.append(names.index(name))
        arrays += [np.stack(images), np.asarray(labels, np.int32)]
    logging.info("%s: %d train and %d test images of %s, %d classes", spec,
                 arrays[0].shape[0], arrays[2].shape[0], shape, len(names))
    return check_source(spec, *arrays, class_names=names)


# ----------------------------------------------------------------- tfds
def load_tfds_source(name, data_dir=None, train_split="train",
                     test_split="test", image_size=None):
    """`tfds:NAME[:CONFIG]`: the `image` and `label` features of two splits.

    Offline, a set that is not prepared in `data_dir` fails at once (see
    `tfds_sets.load_tfds`).
    """
    from cl_zoo.benchmarks import tfds_sets

    spec = f"tfds:{name}"
    builder_name = name.replace(":", "/", 1)
    features = tfds_sets.builder_features(builder_name, data_dir)
    for key in ("image", "label"):
        if features is not None and key not in features:
            raise BenchmarkError(
                f"{spec} has no {key!r} feature (it has "
                f"{', '.join(features)}); expected an image-classification "
                "set with 'image' and 'label'"
            )
    class_names = None
    if features is not None:
        names = getattr(features["label"], "names", None)
        if names and not all(n == str(i) for i, n in enumerate(names)):
            class_names = tuple(names)
    x_train, y_train, x_test, y_test = tfds_sets.load_tfds(
        builder_name, data_dir, splits=(train_split, test_split),
        image_size=image_size,
    )
    return check_source(spec, x_train, y_train, x_test, y_test,
                        class_names=class_names)


# --------------------------------------------------------------- Python
def from_arrays(x_train, y_train, x_test, y_test, *, name="arrays",
                class_names=None):
    """A `Source` of in-memory arrays (the layouts of `npz:`)."""
    return check_source(name, x_train, y_train, x_test, y_test, class_names)


def _dataset_arrays(ds, where):
    xs, ys = [], []
    for element in ds.batch(4096).as_numpy_iterator():
        if isinstance(element, dict):
            if "image" not in element or "label" not in element:
                raise BenchmarkError(
                    f"{where}: dict elements need 'image' and 'label' keys "
                    f"(got {sorted(element)})"
                )
            x, y = element["image"], element["label"]
        else:
            x, y = element
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    if not xs:
        raise BenchmarkError(f"{where} is empty")
    return np.concatenate(xs), np.concatenate(ys)


def from_datasets(train, test, *, name="tf.data", class_names=None):
    """A `Source` of two unbatched `tf.data.Dataset`s whose elements are
    `(image, label)` or `{"image": ..., "label": ...}`; read once into
    memory."""
    x_train, y_train = _dataset_arrays(train, f"{name}: train")
    x_test, y_test = _dataset_arrays(test, f"{name}: test")
    return check_source(name, x_train, y_train, x_test, y_test, class_names)


# ---------------------------------------------------------------- specs
def parse_spec(spec):
    """`"npz:/a/b.npz"` -> `("npz", "/a/b.npz")`; BenchmarkError if bad."""
    kind, sep, rest = str(spec or "").partition(":")
    if not sep or kind not in SOURCE_KINDS or not rest:
        raise BenchmarkError(
            f"--dataset={spec}: expected tfds:NAME[:CONFIG], npz:PATH or "
            "dir:PATH"
        )
    return kind, rest


_MEMO = {}


def load_source(spec, *, data_dir=None, train_split=None, test_split=None,
                image_size=None):
    """Loads and checks the source `spec` (a string, or a `Source` as is).

    Memoized on the arguments (and a file's modification time), keeping
    one source, so that a sweep loads its data once.
    """
    if isinstance(spec, Source):
        return spec
    kind, rest = parse_spec(spec)
    if kind != "tfds":
        for option, value in (("--train_split", train_split),
                              ("--test_split", test_split),
                              ("--data_dir", data_dir)):
            if value is not None:
                raise BenchmarkError(
                    f"{option} is read with tfds: sources only; "
                    f"--dataset={spec} has its own train and test data"
                )
    image_size = tuple(int(v) for v in image_size) if image_size else None
    path = os.path.expanduser(rest)
    stamp = None
    if kind != "tfds" and os.path.exists(path):
        stamp = os.stat(path).st_mtime_ns
    key = (spec, data_dir, train_split, test_split, image_size, stamp)
    if key in _MEMO:
        return _MEMO[key]
    if kind == "npz":
        source = load_npz(rest, image_size)
    elif kind == "dir":
        source = load_dir(rest, image_size)
    else:
        source = load_tfds_source(
            rest, data_dir, train_split or "train", test_split or "test",
            image_size,
        )
    _MEMO.clear()
    _MEMO[key] = source
    return source
