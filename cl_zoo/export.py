"""SavedModel exports: one per task mode, and one that takes the task id.

The exported module tracks only the variables inference reads (not the
optimizer, not consolidation state), and its functions close over the Keras
model, so the SavedModel loads with `tf.saved_model.load` in a process that
never imports cl_zoo. Inputs are float32 in [0, 1] in the benchmark's shape;
outputs are `{"scores": probabilities}` over every class (one head) or over
`task_classes[t]` in that order (one head per task).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf


class _Serving(tf.Module):
    def __init__(self, variables):
        super().__init__()
        # The tf.Variables behind the Keras variables inference reads.
        self.inference_variables = [v.value for v in variables]


def _runtime_shape(t):
    """`tf.shape(t)` computed when the function runs.

    A signature's loaded function accepts tensors of any shape its spec's
    dtype matches, and TensorFlow folds `tf.shape` of a declared dimension
    into a constant: hide the declared shape first.
    """
    return tf.shape(tf.compat.v1.placeholder_with_default(t, shape=None))


def _check_inputs(x, example_shape):
    shape = _runtime_shape(x)
    dims = ", ".join(map(str, example_shape))
    rank_ok = tf.equal(tf.size(shape), len(example_shape) + 1)
    shape_ok = tf.cond(
        rank_ok,
        lambda: tf.reduce_all(tf.equal(shape[1:], example_shape)),
        lambda: tf.constant(False),
    )
    return [
        tf.debugging.Assert(
            shape_ok,
            [f"x must have shape (batch, {dims}); received shape", shape],
            name="check_shape",
        ),
        tf.debugging.assert_all_finite(
            x, "inputs must be finite (pixels as float32 in [0, 1])"
        ),
    ]


def _task_scores(model, x, task, width):
    logits = model({"x": x, "task": task}, training=False)
    return tf.nn.softmax(logits[:, :width])


_TMP_PREFIX = ".tmp-export-"


def _save_atomically(module, path, signatures):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=parent)
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def task_widths(model):
    """Output width of each task's export."""
    if model.label_mode == "single":
        return [model.num_classes] * model.num_tasks
    return [len(c) for c in model.task_classes]


def export_task(model, task, path):
    """Exports the model with task `task` baked in."""
    model._check_task(task)
    spec = tf.TensorSpec((None, *model.example_shape), tf.float32, name="x")
    width = task_widths(model)[task]
    module = _Serving(model.inference_variables())

    @tf.function(input_signature=[spec])
    def serve(x):
        with tf.control_dependencies(_check_inputs(x, model.example_shape)):
            return {"scores": _task_scores(model, x, tf.constant(task), width)}

    module.serve = serve
    _save_atomically(module, path, {"serving_default": serve})


def export_all_tasks(model, path):
    """Exports the model with an int32 scalar `task_id` input.

    A task id out of range, or not a scalar, fails with an
    InvalidArgumentError that says what is allowed. Scores have the widest
    task's width; with one head per task, classes past
    `len(task_classes[task_id])` get probability 0.
    """
    spec = tf.TensorSpec((None, *model.example_shape), tf.float32, name="x")
    # Declared of any shape, so that the scalar check runs (a declared
    # scalar shape would be folded into it).
    task_spec = tf.TensorSpec(None, tf.int32, name="task_id")
    num_tasks = model.num_tasks
    module = _Serving(model.inference_variables())
    width = max(task_widths(model))

    @tf.function(input_signature=[spec, task_spec])
    def serve(x, task_id):
        message = (
            f"task_id out of range: this model has {num_tasks} tasks, "
            f"expected 0 <= task_id < {num_tasks}"
        )
        scalar = tf.debugging.Assert(
            tf.equal(tf.size(tf.shape(task_id)), 0),
            ["task_id must be a scalar int32; received shape",
             tf.shape(task_id)],
            name="check_task_id_scalar",
        )
        with tf.control_dependencies([scalar]):
            task_id = tf.reshape(task_id, [])
        checks = _check_inputs(x, model.example_shape) + [
            tf.debugging.assert_greater_equal(task_id, 0, message=message),
            tf.debugging.assert_less(task_id, num_tasks, message=message),
        ]
        with tf.control_dependencies(checks):
            return {"scores": _task_scores(model, x, task_id, width)}

    module.serve = serve
    _save_atomically(module, path, {"serving_default": serve})


def export_inferred(model, inference, path):
    """Exports the model with the task inferred from the input
    (`cl_zoo.task_inference`): the signature takes `x` only and returns
    `scores` over every class of the sequence and the inferred `task_id`
    of each example."""
    from cl_zoo import task_inference as task_inference_lib

    spec = tf.TensorSpec((None, *model.example_shape), tf.float32, name="x")
    module = _Serving(model.inference_variables())
    module.task_statistics = [inference.means, inference.bases,
                              inference.learned]
    table = task_inference_lib.class_table(model)

    @tf.function(input_signature=[spec])
    def serve(x):
        with tf.control_dependencies(_check_inputs(x, model.example_shape)):
            task_id = inference.infer(x)
            scores = task_inference_lib.global_scores(model, x, task_id,
                                                      table)
            return {"scores": scores, "task_id": task_id}

    module.serve = serve
    _save_atomically(module, path, {"serving_default": serve})


def export_all(model, export_dir, inference=None):
    """Writes `export_dir/task_<t>/` for every task and `all_tasks/`, with
    a task inference also `inferred/` (and what the method's
    `export_extras` adds, e.g. DGM's `generator/`).

    Each SavedModel is written to a temporary directory and renamed into
    place, so a killed export never leaves a half-written one under its
    final name; the temporary directories of a killed export are removed.
    """
    if os.path.isdir(export_dir):
        for entry in os.listdir(export_dir):
            if entry.startswith(_TMP_PREFIX):
                shutil.rmtree(os.path.join(export_dir, entry),
                              ignore_errors=True)
    for task in range(model.num_tasks):
        export_task(model, task, os.path.join(export_dir, f"task_{task}"))
    export_all_tasks(model, os.path.join(export_dir, "all_tasks"))
    if inference is not None:
        export_inferred(model, inference, os.path.join(export_dir,
                                                       "inferred"))
    if hasattr(model, "export_extras"):
        # More SavedModels of the method (DGM's generator), written the same
        # way.
        model.export_extras(export_dir, _save_atomically)
