"""Scenarios: task sequences built over any source (`sources.Source`).

* `class_split`: tasks made of classes, from explicit lists
  (`task_classes=[[0, 1], [2, 3]]`, or `'0,1;2,3'` on the command line, class
  names allowed for sources that have them) or `classes_per_task=N` over
  the classes in `class_order` (ascending by default; `'seed:S'` shuffles
  them with `np.random.default_rng(S)`; or an explicit list). Labels stay
  the data's own class ids; the single head covers ids up to the largest
  one used.
* `permuted`: `num_tasks` tasks of the whole label set, task t's inputs
  reordered by a fixed random permutation of all their values (drawn from
  `np.random.default_rng(seed)`, row t independent of `num_tasks`; task 0 is
  permuted too, as in `permuted_mnist`).
* `rotated`: `num_tasks` tasks of the whole label set, task t's images
  rotated counterclockwise by `max_angle * t / (num_tasks - 1)` degrees
  about their centre (task 0 upright), nearest-neighbour with zeros outside,
  as torchvision's `rotate` does by default.

    from cl_zoo import benchmarks
    bm = benchmarks.class_split("npz:/data/mnist.npz",
                                task_classes=[[0, 1], [2, 3]])
    bm = benchmarks.rotated((x_train, y_train, x_test, y_test), num_tasks=5)
"""

from __future__ import annotations

import numbers

import numpy as np

from cl_zoo.benchmarks import sources as sources_lib
from cl_zoo.benchmarks.base import Benchmark, BenchmarkError


def as_source(data, **load_args):
    """A `Source` from a spec string, a `Source`, a tuple of four arrays
    `(x_train, y_train, x_test, y_test)` or a pair of `tf.data.Dataset`s."""
    if isinstance(data, sources_lib.Source):
        return data
    if isinstance(data, str):
        return sources_lib.load_source(data, **load_args)
    if isinstance(data, tuple | list) and len(data) == 4:
        return sources_lib.from_arrays(*data)
    if isinstance(data, tuple | list) and len(data) == 2:
        return sources_lib.from_datasets(*data)
    raise BenchmarkError(
        "Expected the data as a source name ('npz:PATH', 'dir:PATH', "
        "'tfds:NAME'), a Source, (x_train, y_train, x_test, y_test) or "
        f"(train_dataset, test_dataset). Received: {type(data).__name__}"
    )


# ---------------------------------------------------------------- classes
def resolve_class_order(order, classes, needed=None):
    """The classes in the order a class split takes them.

    Args:
        order: None (ascending), `"seed:S"`, a comma-separated string or a
            list of classes.
        classes: the data's classes, ascending.
        needed: how many classes the split takes from the order (default
            all of them).
    """
    classes = [int(c) for c in classes]
    if order is None:
        return classes
    if isinstance(order, str) and order.startswith("seed:"):
        try:
            seed = int(order[5:])
        except ValueError:
            raise BenchmarkError(
                f"--class_order={order}: expected seed:S with S an integer"
            ) from None
        return [int(c) for c in np.random.default_rng(seed).permutation(
            classes)]
    if isinstance(order, str):
        words = [w for w in order.split(",") if w.strip()]
        try:
            order = [int(w) for w in words]
        except ValueError:
            raise BenchmarkError(
                f"--class_order={','.join(words)}: expected seed:S or a "
                "comma-separated list of class ids"
            ) from None
    order = [int(c) for c in order]
    missing = sorted(set(order) - set(classes))
    if missing:
        raise BenchmarkError(
            f"--class_order names classes {missing} that the data does not "
            f"have (it has {_span(classes)})"
        )
    if len(set(order)) != len(order):
        raise BenchmarkError("--class_order names a class twice")
    needed = len(classes) if needed is None else needed
    if len(order) < needed:
        raise BenchmarkError(
            f"--class_order lists {len(order)} classes; this split takes "
            f"{needed}"
        )
    return order


def _span(classes):
    classes = list(classes)
    if classes == list(range(classes[0], classes[-1] + 1)):
        return f"{classes[0]}..{classes[-1]}"
    return ", ".join(map(str, classes))


def ordered_tasks(tasks, class_order, classes):
    """A preset's tasks with its classes taken in `class_order`: the class
    at position i of the ascending order is replaced by the i-th class of
    `class_order` (so the default order changes nothing). Returns
    `(tasks, order or None)`."""
    if class_order is None:
        return [list(t) for t in tasks], None
    classes = sorted(int(c) for c in classes)
    position = {c: i for i, c in enumerate(classes)}
    needed = max(position[c] for t in tasks for c in t) + 1
    order = resolve_class_order(class_order, classes, needed=needed)
    return [[order[position[c]] for c in t] for t in tasks], order


def parse_task_classes(value, source):
    """`'0,1;2,3'` (or a list of lists) as lists of class ids."""
    if isinstance(value, str):
        tasks = [t for t in value.split(";")]
        parsed = []
        for t, text in enumerate(tasks):
            words = [w for w in text.split(",") if w.strip()]
            if not words:
                raise BenchmarkError(
                    f"--task_classes={value}: task {t} names no class; "
                    "separate tasks with ';' and classes with ','"
                )
            parsed.append([source.class_id(w) for w in words])
        return parsed
    return [[source.class_id(c) for c in task] for task in value]


def _check_task_classes(task_classes, source):
    present = set(source.classes)
    seen = {}
    for t, classes in enumerate(task_classes):
        for c in classes:
            if c not in present:
                name = (f" ({source.class_names[c]})"
                        if source.class_names and c < len(source.class_names)
                        else "")
                raise BenchmarkError(
                    f"task {t} names class {c}{name}, which {source.spec} "
                    f"does not have (its classes: {_span(sorted(present))})"
                )
            if c in seen:
                raise BenchmarkError(
                    f"class {c} is in task {seen[c]} and in task {t}: tasks "
                    "of a class split must not overlap"
                )
            seen[c] = t


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def class_split(data, *, task_classes=None, classes_per_task=None,
                class_order=None, num_tasks=None, seed=0,
                name="class_split", **load_args):
    """Tasks of classes; see the module docstring."""
    del seed  # the split is fixed by its arguments
    source = as_source(data, **load_args)
    if task_classes is not None:
        if classes_per_task is not None or class_order is not None:
            raise BenchmarkError(
                "--task_classes fixes every task's classes and their order; "
                "drop --classes_per_task / --class_order"
            )
        tasks = parse_task_classes(task_classes, source)
        if num_tasks is not None and num_tasks != len(tasks):
            raise BenchmarkError(
                f"--num_tasks={num_tasks} but --task_classes lists "
                f"{len(tasks)} tasks"
            )
        order = None
    elif classes_per_task is not None:
        if not _is_int(classes_per_task) or classes_per_task < 1:
            raise BenchmarkError(
                f"--classes_per_task must be a positive integer; got "
                f"{classes_per_task!r}"
            )
        order = resolve_class_order(
            class_order, source.classes,
            needed=None if num_tasks is None else num_tasks * classes_per_task,
        )
        if num_tasks is None:
            if len(order) % classes_per_task:
                raise BenchmarkError(
                    f"{len(order)} classes do not split into tasks of "
                    f"{classes_per_task}; give --num_tasks (the first tasks "
                    "only) or --task_classes"
                )
            num_tasks = len(order) // classes_per_task
        if num_tasks * classes_per_task > len(order):
            raise BenchmarkError(
                f"--num_tasks={num_tasks} tasks of {classes_per_task} "
                f"classes need {num_tasks * classes_per_task} classes; the "
                f"data has {len(order)}"
            )
        tasks = [order[t * classes_per_task:(t + 1) * classes_per_task]
                 for t in range(num_tasks)]
    else:
        raise BenchmarkError(
            "class_split needs the tasks' classes: --task_classes='0,1;2,3;"
            "...' or --classes_per_task=N"
        )
    _check_task_classes(tasks, source)
    return _benchmark(name, source, tasks, scenario="class_split",
                      class_order=order)


def permuted(data, *, num_tasks=10, seed=0, name="permuted", **load_args):
    """`num_tasks` pixel permutations of the whole label set."""
    source = as_source(data, **load_args)
    num_tasks = _num_tasks(num_tasks)
    size = int(np.prod(source.input_shape))
    rng = np.random.default_rng(seed)
    permutations = np.stack([rng.permutation(size) for _ in range(num_tasks)])
    return _benchmark(name, source, [source.classes] * num_tasks,
                      scenario="permuted", permutations=permutations)


def rotation_map(height, width, angle):
    """Source pixel (flat index) of every output pixel of an image rotated
    counterclockwise by `angle` degrees about its centre, nearest
    neighbour; `height * width` (a zero pixel) where it falls outside."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width),
                             indexing="ij")
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    y, x = rows - cy, cols - cx
    a = np.deg2rad(angle)
    src_r = np.rint(y * np.cos(a) + x * np.sin(a) + cy).astype(np.int64)
    src_c = np.rint(x * np.cos(a) - y * np.sin(a) + cx).astype(np.int64)
    inside = (src_r >= 0) & (src_r < height) & (src_c >= 0) & (src_c < width)
    flat = np.where(inside, src_r * width + src_c, height * width)
    return flat.reshape(-1).astype(np.int32)


def rotation_angles(num_tasks, max_angle):
    """Task t's angle: `max_angle * t / (num_tasks - 1)` (0 for one task)."""
    if num_tasks == 1:
        return [0.0]
    return [float(max_angle) * t / (num_tasks - 1) for t in range(num_tasks)]


def rotated(data, *, num_tasks=10, max_angle=180.0, seed=0, name="rotated",
            **load_args):
    """`num_tasks` rotations of the whole label set."""
    del seed  # the angles are fixed
    source = as_source(data, **load_args)
    num_tasks = _num_tasks(num_tasks)
    if len(source.input_shape) != 3:
        raise BenchmarkError(
            f"rotated needs images [H, W, C]; {source.spec} holds flat "
            f"examples of shape {list(source.input_shape)}"
        )
    height, width = source.input_shape[:2]
    angles = rotation_angles(num_tasks, max_angle)
    maps = np.stack([rotation_map(height, width, a) for a in angles])
    bm = _benchmark(name, source, [source.classes] * num_tasks,
                    scenario="rotated", pixel_maps=maps)
    bm.angles = angles
    return bm


def _num_tasks(num_tasks):
    if not _is_int(num_tasks) or num_tasks < 1:
        raise BenchmarkError(
            f"Expected num_tasks >= 1. Received: num_tasks={num_tasks!r}"
        )
    return int(num_tasks)


def _benchmark(name, source, tasks, *, scenario, class_order=None, **kwargs):
    num_classes = max(max(t) for t in tasks) + 1
    bm = Benchmark(
        name,
        train=(source.x_train, source.y_train),
        test=(source.x_test, source.y_test),
        task_classes=tasks,
        num_classes=num_classes,
        **kwargs,
    )
    bm.source = source.spec
    bm.scenario = scenario
    bm.class_order = class_order
    bm.class_names = source.class_names
    return bm
