"""Task inference: which learned task an input belongs to, without its id.

BPN's bias units, AMN's memory units, PSP's keys and every multi-head model
need the task id to pick their mode. `SubspaceTaskInference` infers it from
the input alone: at the end of each task it keeps the mean and the
`rank` leading principal directions of that task's training inputs (as the
model sees them: permuted, rotated...), an affine subspace of the input
space, and scores an input by its squared distance to each learned task's
subspace (the reconstruction error of a per-task PCA). The closest task
wins. No raw example is stored: per task, `(rank + 1) * D` float32 numbers
(97,216 bytes for MNIST's D = 784 at rank 30), counted in
`storage_bytes_per_task`.

Output confidence alone does not work here: each mode has only seen its own
task, so every mode is confident on inputs it never saw (measured in
docs/RESULTS.md, "Without a task oracle").
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

DEFAULT_RANK = 30


class SubspaceTaskInference(tf.Module):
    """Per-task affine subspaces of the inputs; the closest one is the task.

    Args:
        num_tasks: tasks of the sequence.
        input_shape: shape of one example.
        rank: principal directions kept per task.
    """

    def __init__(self, num_tasks, input_shape, rank=DEFAULT_RANK,
                 name="task_inference"):
        super().__init__(name=name)
        self.num_tasks = int(num_tasks)
        self.input_size = int(math.prod(input_shape))
        self.rank = int(min(rank, self.input_size))
        self.means = tf.Variable(
            tf.zeros((self.num_tasks, self.input_size)), trainable=False,
            name="means")
        self.bases = tf.Variable(
            tf.zeros((self.num_tasks, self.rank, self.input_size)),
            trainable=False, name="bases")
        # Tasks whose statistics are stored (0..learned-1).
        self.learned = tf.Variable(0, dtype=tf.int32, trainable=False,
                                   name="learned")

    @property
    def variables_to_save(self):
        return [self.means, self.bases, self.learned]

    def per_task_bytes(self):
        return 4 * (self.rank + 1) * self.input_size

    def fit_task(self, task, x):
        """Stores task `task`'s statistics from its training inputs `x`
        (`[N, *input_shape]`, float32 as the model sees them)."""
        flat = np.asarray(x, np.float64).reshape(len(x), self.input_size)
        mean = flat.mean(axis=0)
        centered = flat - mean
        # Leading eigenvectors of the D x D scatter matrix (D is small next
        # to N for images of this size).
        scatter = centered.T @ centered
        values, vectors = np.linalg.eigh(scatter)
        order = np.argsort(values)[::-1][: self.rank]
        basis = vectors[:, order].T  # rank x D, orthonormal rows
        self.means[task].assign(mean.astype(np.float32))
        self.bases[task].assign(basis.astype(np.float32))
        self.learned.assign(max(int(self.learned.numpy()), int(task) + 1))

    def distances(self, x, learned=None):
        """`[batch, num_tasks]` squared distances to each task's subspace;
        +inf for tasks not learned (or at and after `learned`)."""
        flat = tf.reshape(tf.cast(x, tf.float32), [-1, self.input_size])
        # |x - m|^2 - |U (x - m)|^2 for every task at once, as matrix
        # products: |x|^2 - 2 x.m + |m|^2 - |U x - U m|^2.
        squared = (tf.reduce_sum(tf.square(flat), -1, keepdims=True)
                   - 2.0 * tf.matmul(flat, self.means, transpose_b=True)
                   + tf.reduce_sum(tf.square(self.means), -1)[None])
        bases = tf.reshape(self.bases, [-1, self.input_size])  # T*k x D
        projected = tf.reshape(tf.matmul(flat, bases, transpose_b=True),
                               [-1, self.num_tasks, self.rank])
        offsets = tf.einsum("tkd,td->tk", self.bases, self.means)
        distance = squared - tf.reduce_sum(
            tf.square(projected - offsets[None]), -1)
        limit = self.learned if learned is None else learned
        known = tf.range(self.num_tasks) < limit
        return tf.where(known[None], distance,
                        tf.constant(np.inf, tf.float32))

    def infer(self, x, learned=None):
        """The inferred task id of each example (int32)."""
        return tf.argmin(self.distances(x, learned), axis=-1,
                         output_type=tf.int32)


def class_table(model):
    """`[num_tasks, width]` global class of each output of each task's
    mode, -1 past a task's classes (single head: every class)."""
    if model.label_mode == "single":
        row = np.arange(model.num_classes, dtype=np.int32)
        return np.tile(row, (model.num_tasks, 1))
    width = max(len(c) for c in model.task_classes)
    table = np.full((model.num_tasks, width), -1, np.int32)
    for t, classes in enumerate(model.task_classes):
        table[t, : len(classes)] = classes
    return table


def global_scores(model, x, task_ids, table):
    """Probabilities over every class of the sequence for each example,
    under its own task's mode (`task_ids`, one per example)."""
    logits = model({"x": x, "task": task_ids}, training=False)
    table = tf.constant(table)
    rows = tf.gather(table, task_ids)  # B x width
    width = table.shape[1]
    logits = tf.where(rows >= 0, logits[:, :width],
                      tf.constant(-np.inf, logits.dtype))
    probs = tf.nn.softmax(logits)
    onehot = tf.one_hot(tf.maximum(rows, 0), model.num_classes,
                        dtype=probs.dtype)
    return tf.einsum("bw,bwc->bc", probs, onehot)
