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


def _check_inputs(x):
    return [
        tf.debugging.assert_all_finite(
            x, "inputs must be finite (pixels as float32 in [0, 1])"
        )
    ]


def _task_scores(model, x, task, width):
    logits = model({"x": x, "task": task}, training=False)
    return tf.nn.softmax(logits[:, :width])


def _save_atomically(module, path, signatures):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
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
        with tf.control_dependencies(_check_inputs(x)):
            return {"scores": _task_scores(model, x, tf.constant(task), width)}

    module.serve = serve
    _save_atomically(module, path, {"serving_default": serve})


def export_all_tasks(model, path):
    """Exports the model with an int32 scalar `task_id` input.

    A task id out of range fails with an InvalidArgumentError that names the
    allowed range. Scores have the widest task's width; with one head per
    task, classes past `len(task_classes[task_id])` get probability 0.
    """
    spec = tf.TensorSpec((None, *model.example_shape), tf.float32, name="x")
    task_spec = tf.TensorSpec((), tf.int32, name="task_id")
    num_tasks = model.num_tasks
    module = _Serving(model.inference_variables())
    width = max(task_widths(model))

    @tf.function(input_signature=[spec, task_spec])
    def serve(x, task_id):
        message = (
            f"task_id out of range: this model has {num_tasks} tasks, "
            f"expected 0 <= task_id < {num_tasks}"
        )
        checks = _check_inputs(x) + [
            tf.debugging.assert_greater_equal(task_id, 0, message=message),
            tf.debugging.assert_less(task_id, num_tasks, message=message),
        ]
        with tf.control_dependencies(checks):
            return {"scores": _task_scores(model, x, task_id, width)}

    module.serve = serve
    _save_atomically(module, path, {"serving_default": serve})


def export_all(model, export_dir):
    """Writes `export_dir/task_<t>/` for every task and `all_tasks/`."""
    for task in range(model.num_tasks):
        export_task(model, task, os.path.join(export_dir, f"task_{task}"))
    export_all_tasks(model, os.path.join(export_dir, "all_tasks"))
