"""The `Benchmark` class: a sequence of tasks served as `tf.data` pipelines.

A benchmark keeps one pool of raw training examples and one pool of raw test
examples in memory (uint8 pixels for image data, float32 coordinates for the
toy data) and, per task, the indices of the pool examples that belong to it.
Conversion to float32, the optional per-task pixel permutation and the mapping
of global to per-task labels all happen inside the pipeline, batch by batch,
so no task ever holds a converted copy of the data; a permuted-MNIST sequence
of 100 tasks costs no more memory than one of 2.

Elements are `({"x": x, "task": task}, y)`, `task` the int32 task id of each
example, so that `model.fit`, `model.evaluate` and `model.predict` on a
task's dataset use that task's mode (bias units, keys, head) without a
manual `model.task.assign(t)`; `with_task_id=False` gives plain `(x, y)`.
`head="single"` gives global class ids as labels, `head="multi"` the index of
the class within `task_classes[t]`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

HEADS = ("single", "multi")


class BenchmarkError(ValueError):
    """A benchmark name, option or task index that is not allowed."""


class DataUnavailableError(BenchmarkError):
    """The data a benchmark needs cannot be found or downloaded."""


class TaskIndexError(BenchmarkError, IndexError):
    """A task index outside `0 <= task < num_tasks`."""


def _check_positive_int(value, name):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"Expected a positive integer for `{name}`. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _check_head(head):
    if head not in HEADS:
        raise ValueError(
            f"Unknown head {head!r}: expected one of {', '.join(HEADS)}"
        )
    return head


def without_autotune(dataset):
    """`dataset` with tf.data's autotuning off.

    The autotuner's thread sleeps between its rounds, and deleting an
    iterator waits for it: 0.2-0.5 s of idle wall time at the end of every
    `fit` and every evaluation pass on 2 cores (TF 2.21), for no faster
    batches here, where a batch is one in-memory gather. Without it,
    `AUTOTUNE` parallelism is the core count and prefetching stays on.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def derive_seed(*parts: int) -> int:
    """Returns a 31-bit seed derived from integers, e.g. `(seed, task)`."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


class Benchmark:
    """A continual-learning task sequence with held-out test splits.

    Args:
        name: the benchmark's registry name.
        train: `(x, y)` raw training pool; x uint8 pixels (scaled by 1/255 in
            the pipeline) or float data (cast to float32 as is), with shape
            `(N, *input_shape)`; y integer class ids.
        test: `(x, y)` raw test pool, same layout.
        task_classes: global class ids of each task, e.g. `[[0, 1], [2, 3]]`.
        num_classes: size of the single-head output space; every id in
            `task_classes` must be below it.
        train_indices: optional per-task indices into the training pool.
            Defaults to the examples whose label is in the task's classes.
        test_indices: the same for the test pool.
        permutations: optional int array `(num_tasks, prod(input_shape))`;
            task t's inputs are flattened, reordered with
            `x_flat[:, permutations[t]]` and reshaped back.
        pixel_maps: optional int array `(num_tasks, H * W)` for images
            `(H, W, C)`: output pixel i of task t takes input pixel
            `pixel_maps[t, i]` (all its channels), or zeros where that is
            `H * W` (a rotation's corners).

    Every task must have training and test examples. Attributes that
    describe the sequence for `results.json` (`describe()`): `source`,
    `scenario`, `class_order`, `class_names`, `angles`.
    """

    # Set by the scenario that builds the benchmark (see `describe`).
    source = None
    scenario = None
    class_order = None
    class_names = None
    angles = None

    def __init__(
        self,
        name: str,
        *,
        train: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        task_classes: Sequence[Sequence[int]],
        num_classes: int,
        train_indices: Sequence[np.ndarray] | None = None,
        test_indices: Sequence[np.ndarray] | None = None,
        permutations: np.ndarray | None = None,
        pixel_maps: np.ndarray | None = None,
    ):
        self.name = str(name)
        self.task_classes = [[int(c) for c in cls] for cls in task_classes]
        self.num_tasks = len(self.task_classes)
        self.num_classes = _check_positive_int(num_classes, "num_classes")
        if self.num_tasks == 0:
            raise BenchmarkError(f"{name}: a benchmark needs at least 1 task")
        for t, cls in enumerate(self.task_classes):
            if not cls or len(set(cls)) != len(cls):
                raise BenchmarkError(
                    f"{name}: task {t} needs distinct classes, got {cls}"
                )
            if min(cls) < 0 or max(cls) >= self.num_classes:
                raise BenchmarkError(
                    f"{name}: task {t} classes {cls} outside "
                    f"0..{self.num_classes - 1}"
                )
        self.max_task_classes = max(len(c) for c in self.task_classes)

        self._train_x, self._train_y = self._check_pool(train, "train")
        self._test_x, self._test_y = self._check_pool(test, "test")
        if self._train_x.shape[1:] != self._test_x.shape[1:]:
            raise BenchmarkError(
                f"{name}: train inputs {self._train_x.shape[1:]} and test "
                f"inputs {self._test_x.shape[1:]} differ in shape"
            )
        self.input_shape = tuple(int(d) for d in self._train_x.shape[1:])
        self._train_idx = self._task_indices(
            train_indices, self._train_y, "train"
        )
        self._test_idx = self._task_indices(test_indices, self._test_y, "test")

        if permutations is not None:
            permutations = np.asarray(permutations)
            size = int(np.prod(self.input_shape))
            if permutations.shape != (self.num_tasks, size):
                raise BenchmarkError(
                    f"{name}: permutations must have shape "
                    f"({self.num_tasks}, {size}), got {permutations.shape}"
                )
            permutations = permutations.astype(np.int32)
        self.permutations = permutations
        if pixel_maps is not None:
            pixel_maps = np.asarray(pixel_maps)
            if len(self.input_shape) != 3 or pixel_maps.shape != (
                    self.num_tasks, self.input_shape[0] * self.input_shape[1]):
                raise BenchmarkError(
                    f"{name}: pixel_maps must have shape (num_tasks, H * W) "
                    f"for images (H, W, C); got {pixel_maps.shape} for "
                    f"inputs {self.input_shape}"
                )
            pixel_maps = pixel_maps.astype(np.int32)
        self.pixel_maps = pixel_maps
        for t, cls in enumerate(self.task_classes):
            for split, idx in (("training", self._train_idx[t]),
                               ("test", self._test_idx[t])):
                if idx.size == 0:
                    raise BenchmarkError(
                        f"{name}: task {t} (classes {cls}) has no {split} "
                        "examples"
                    )

        # global -> local label per task; -1 for classes outside the task.
        local = np.full((self.num_tasks, self.num_classes), -1, np.int32)
        for t, cls in enumerate(self.task_classes):
            local[t, cls] = np.arange(len(cls), dtype=np.int32)
        self._local_labels = local
        self._tensors = {}

    # ------------------------------------------------------------------ checks
    def _check_pool(self, pool, split):
        try:
            x, y = pool
        except (TypeError, ValueError) as e:
            raise BenchmarkError(
                f"{self.name}: {split} must be a pair (x, y)"
            ) from e
        x = np.asarray(x)
        y = np.asarray(y).astype(np.int32).reshape(-1)
        if x.ndim < 2 or x.shape[0] != y.shape[0]:
            raise BenchmarkError(
                f"{self.name}: {split} x has shape {x.shape} but y has "
                f"{y.shape[0]} labels"
            )
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise BenchmarkError(
                f"{self.name}: {split} x must be uint8 or float, got {x.dtype}"
            )
        return x, y

    def _task_indices(self, indices, labels, split):
        if indices is None:
            return [
                np.flatnonzero(np.isin(labels, cls)).astype(np.int64)
                for cls in self.task_classes
            ]
        if len(indices) != self.num_tasks:
            raise BenchmarkError(
                f"{self.name}: {split}_indices has {len(indices)} entries, "
                f"expected one per task ({self.num_tasks})"
            )
        out = []
        for t, idx in enumerate(indices):
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= labels.shape[0]):
                raise BenchmarkError(
                    f"{self.name}: {split}_indices[{t}] out of range"
                )
            if not np.isin(labels[idx], self.task_classes[t]).all():
                raise BenchmarkError(
                    f"{self.name}: {split}_indices[{t}] selects examples "
                    f"outside the task's classes {self.task_classes[t]}"
                )
            out.append(idx)
        return out

    def _check_task(self, task) -> int:
        if isinstance(task, bool) or not isinstance(task, numbers.Integral):
            raise TypeError(
                f"Expected an integer task id for {self.name}. "
                f"Received: task={task!r}"
            )
        if not 0 <= task < self.num_tasks:
            raise TaskIndexError(
                f"task {task} out of range for {self.name}: expected "
                f"0 <= task < {self.num_tasks}"
            )
        return int(task)

    # ------------------------------------------------------------ public info
    def train_size(self, t: int) -> int:
        """Number of training examples of task `t`."""
        return int(self._train_idx[self._check_task(t)].size)

    def test_size(self, t: int) -> int:
        """Number of test examples of task `t`."""
        return int(self._test_idx[self._check_task(t)].size)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel `(mean, std)` of the whole training pool, on the
        pipeline's scale (uint8 pixels / 255), before any permutation or
        rotation (both leave per-channel statistics nearly unchanged).

        Images `(H, W, C)` give C values each; other inputs one value over
        every feature. A std of 0 (a constant channel) is reported as 1, so
        that dividing by it is harmless. Memoized.
        """
        if "stats" not in self._tensors:
            x = self._train_x
            channels = x.shape[-1] if x.ndim == 4 else 1
            total = np.zeros(channels)
            squares = np.zeros(channels)
            count = 0
            for start in range(0, x.shape[0], 4096):
                chunk = x[start:start + 4096].astype(np.float64)
                if x.dtype == np.uint8:
                    chunk /= 255.0
                chunk = chunk.reshape(-1, channels)
                total += chunk.sum(axis=0)
                squares += np.square(chunk).sum(axis=0)
                count += chunk.shape[0]
            mean = total / max(count, 1)
            var = np.maximum(squares / max(count, 1) - np.square(mean), 0.0)
            std = np.sqrt(var)
            std[std == 0] = 1.0
            self._tensors["stats"] = (
                tuple(float(v) for v in mean), tuple(float(v) for v in std)
            )
        return self._tensors["stats"]

    def describe(self) -> dict:
        """What `results.json` records of the sequence ("data")."""
        out = {
            "source": self.source,
            "scenario": self.scenario or self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "task_classes": self.task_classes,
            "train_examples": [self.train_size(t)
                               for t in range(self.num_tasks)],
            "test_examples": [self.test_size(t)
                              for t in range(self.num_tasks)],
        }
        if self.class_order is not None:
            out["class_order"] = list(self.class_order)
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
        if self.angles is not None:
            out["angles"] = list(self.angles)
        return out

    def __repr__(self):
        return (
            f"Benchmark(name={self.name!r}, num_tasks={self.num_tasks}, "
            f"input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )

    # -------------------------------------------------------------- pipelines
    def _pool_tensors(self, split):
        """The raw pool as tensors, made once and shared by all pipelines."""
        if split not in self._tensors:
            x, y = (
                (self._train_x, self._train_y)
                if split == "train"
                else (self._test_x, self._test_y)
            )
            with tf.init_scope(), tf.device("/cpu:0"):
                self._tensors[split] = (tf.constant(x), tf.constant(y))
        if "tables" not in self._tensors:
            with tf.init_scope(), tf.device("/cpu:0"):
                perms = (
                    tf.constant(self.permutations)
                    if self.permutations is not None
                    else None
                )
                maps = (
                    tf.constant(self.pixel_maps)
                    if self.pixel_maps is not None
                    else None
                )
                self._tensors["tables"] = (
                    tf.constant(self._local_labels),
                    perms,
                    maps,
                )
        return self._tensors[split], self._tensors["tables"]

    def _preprocess_fn(self, split, head, with_task_id):
        """Maps a batch of `(pool_index, task)` to model inputs and labels."""
        (pool_x, pool_y), (local, perms, maps) = self._pool_tensors(split)
        scale = self._train_x.dtype == np.uint8
        shape = self.input_shape
        size = int(np.prod(shape))
        multi = head == "multi"

        # Not converted by autograph (no tensor-dependent control flow):
        # converting it again for every pipeline cost 0.1-0.4 s each.
        @tf.autograph.experimental.do_not_convert
        def fn(index, task):
            x = tf.gather(pool_x, index)
            y = tf.gather(pool_y, index)
            x = tf.cast(x, tf.float32)
            if scale:
                x = x / 255.0
            if perms is not None:
                flat = tf.reshape(x, [-1, size])
                flat = tf.gather(flat, tf.gather(perms, task), batch_dims=1)
                x = tf.reshape(flat, [-1, *shape])
            if maps is not None:
                pixels = tf.reshape(x, [-1, shape[0] * shape[1], shape[2]])
                pixels = tf.pad(pixels, [[0, 0], [0, 1], [0, 0]])
                pixels = tf.gather(pixels, tf.gather(maps, task),
                                   batch_dims=1)
                x = tf.reshape(pixels, [-1, *shape])
            if multi:
                y = tf.gather_nd(local, tf.stack([task, y], axis=-1))
            if with_task_id:
                return {"x": x, "task": task}, y
            return x, y

        return fn

    def _index_arrays(self, tasks, split):
        idx = self._train_idx if split == "train" else self._test_idx
        index = np.concatenate([idx[t] for t in tasks])
        task = np.concatenate(
            [np.full(idx[t].size, t, np.int32) for t in tasks]
        )
        return index, task

    def _pipeline(
        self,
        tasks,
        split,
        batch_size,
        *,
        head,
        shuffle,
        seed,
        drop_remainder,
        with_task_id,
    ):
        batch_size = _check_positive_int(batch_size, "batch_size")
        _check_head(head)
        index, task = self._index_arrays(tasks, split)
        if drop_remainder and index.size < batch_size:
            logging.warning(
                "%s tasks %s: %d %s examples < batch_size %d with "
                "drop_remainder=True gives an empty dataset",
                self.name,
                tasks,
                index.size,
                split,
                batch_size,
            )
        ds = tf.data.Dataset.from_tensor_slices((index, task))
        if shuffle:
            ds = ds.shuffle(
                max(int(index.size), 1),
                seed=seed,
                reshuffle_each_iteration=True,
            )
        # Batch first, then convert whole batches: one vectorized gather per
        # batch is far cheaper than one map call per example.
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(
            self._preprocess_fn(split, head, with_task_id),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return without_autotune(ds.prefetch(tf.data.AUTOTUNE))

    def train_dataset(
        self,
        t: int,
        batch_size: int,
        *,
        head: str = "single",
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = True,
        with_task_id: bool = True,
    ) -> tf.data.Dataset:
        """Training data of task `t`, reshuffled each epoch.

        The shuffle order depends only on `(seed, t)`, so runs repeat.
        """
        t = self._check_task(t)
        return self._pipeline(
            [t],
            "train",
            batch_size,
            head=head,
            shuffle=shuffle,
            seed=derive_seed(seed, t),
            drop_remainder=drop_remainder,
            with_task_id=with_task_id,
        )

    def test_dataset(
        self,
        t: int,
        batch_size: int,
        *,
        head: str = "single",
        with_task_id: bool = True,
    ) -> tf.data.Dataset:
        """Test data of task `t`, in a fixed order, last partial batch kept."""
        t = self._check_task(t)
        return self._pipeline(
            [t],
            "test",
            batch_size,
            head=head,
            shuffle=False,
            seed=None,
            drop_remainder=False,
            with_task_id=with_task_id,
        )

    def joint_train_dataset(
        self,
        tasks: Sequence[int],
        batch_size: int,
        *,
        head: str = "single",
        seed: int = 0,
        drop_remainder: bool = True,
    ) -> tf.data.Dataset:
        """The union of several tasks' training data, shuffled together.

        Elements always carry the task id: `({"x": x, "task": task}, y)`,
        since with `head="multi"` a label means nothing without its task.
        """
        if isinstance(tasks, numbers.Integral) or not isinstance(
            tasks, Sequence | range | np.ndarray
        ):
            raise TypeError(
                "Expected a list of task ids for `tasks`. "
                f"Received: tasks={tasks!r}"
            )
        tasks = [self._check_task(t) for t in tasks]
        if not tasks:
            raise ValueError("Expected at least one task in `tasks`.")
        if len(set(tasks)) != len(tasks):
            raise ValueError(
                f"Expected distinct task ids. Received: tasks={tasks}"
            )
        return self._pipeline(
            tasks,
            "train",
            batch_size,
            head=head,
            shuffle=True,
            seed=derive_seed(seed, 1_000_003, *tasks),
            drop_remainder=drop_remainder,
            with_task_id=True,
        )

    def _arrays(self, t, split, head, limit=None):
        t = self._check_task(t)
        _check_head(head)
        idx = (self._train_idx if split == "train" else self._test_idx)[t]
        if limit is not None:
            if (
                isinstance(limit, bool)
                or not isinstance(limit, numbers.Integral)
                or limit < 0
            ):
                raise ValueError(
                    "Expected a non-negative integer or None for `limit`. "
                    f"Received: limit={limit!r}"
                )
            idx = idx[:limit]
        fn = self._preprocess_fn(split, head, with_task_id=False)
        x, y = fn(
            tf.constant(idx, tf.int64),
            tf.fill([idx.size], tf.constant(t, tf.int32)),
        )
        return x.numpy().astype(np.float32), y.numpy().astype(np.int32)

    def test_arrays(
        self, t: int, *, head: str = "single"
    ) -> tuple[np.ndarray, np.ndarray]:
        """The whole test split of task `t` as `(x float32, y int32)`."""
        return self._arrays(t, "test", head)

    def train_arrays(
        self, t: int, *, head: str = "single", limit: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Task `t`'s training data (first `limit` examples) as arrays."""
        return self._arrays(t, "train", head, limit)
