"""ER: experience replay with a reservoir buffer (Chaudhry et al., 2019).

The strongest simple baseline of Avalanche and Mammoth. A buffer of
`buffer_size` training examples holds a uniform sample of every example of
the finished tasks: reservoir sampling (Vitter's algorithm R) over the
stream of all tasks' training examples, in their order, so that each of the
`n` examples seen keeps a `buffer_size / n` chance of being held. The
buffer is updated at the end of each task, as Avalanche's replay plugin does
(while task t trains, it holds examples of tasks < t).

From the second task on, each training batch is half replayed: the task's
`batch_size` examples plus as many drawn uniformly, with replacement, from
the buffer. Replayed examples carry their own task id, so one head per task
(`--head=multi`) works too. The replay is part of the input pipeline (the
global batch is drawn before the strategy splits it), so the train step is
the base's and one and two replicas take the same steps.

The buffer lives in `method_state` (checkpointed with the run, left out of
exports). Its size is fixed, whatever the number of tasks: results.json's
`extra["buffer_bytes"]` gives it, and `storage_bytes_per_task` counts no
buffer bytes.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cl_zoo.benchmarks.base import without_autotune
from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register
from cl_zoo.settings import Setting

BUFFER_SIZE = Setting(
    "buffer_size", int, 500,
    "ER: training examples in the reservoir buffer, over all tasks (the "
    "replay half of each batch is drawn from it).", minimum=1)


def reservoir_slots(seen, count, size, rng):
    """Where each of `count` new examples goes in a reservoir of `size`.

    Algorithm R over a stream that has already shown `seen` examples: the
    i-th new one (stream position n = seen + i) fills slot n while the
    buffer is not full, else replaces a slot drawn uniformly from [0, n] if
    that draw is below `size`. Returns `(slots, rows)`: the buffer slots
    written and the new examples written there, each slot once, the last
    write winning.
    """
    positions = seen + np.arange(count, dtype=np.int64)
    draws = rng.integers(0, positions + 1)
    slots = np.where(positions < size, positions, draws)
    rows = np.flatnonzero(slots < size)
    slots = slots[rows]
    # Later examples overwrite earlier ones in the same slot.
    _, last = np.unique(slots[::-1], return_index=True)
    keep = np.sort(len(slots) - 1 - last)
    return slots[keep], rows[keep]


@register("er")
class ER(ContinualModel):
    """Experience replay: half of each batch from a reservoir buffer.

    Args:
        buffer_size: examples the buffer holds, over all tasks.
        buffer_seed: seed of the reservoir's and the replay's draws.
        (other arguments: see `ContinualModel`)
    """

    SETTINGS = (BUFFER_SIZE,)

    @classmethod
    def default_config(cls, benchmark):
        del benchmark
        return {"head": "single", "consolidation": "none"}

    @classmethod
    def init_args_from_config(cls, config):
        return {**super().init_args_from_config(config),
                "buffer_seed": config.seed}

    def __init__(self, *args, buffer_size=500, buffer_seed=0, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(buffer_size, bool) or not isinstance(
                buffer_size, int | np.integer) or buffer_size < 1:
            raise ValueError(
                "Expected a positive integer for `buffer_size`. "
                f"Received: buffer_size={buffer_size!r}"
            )
        self.buffer_size = int(buffer_size)
        self.buffer_seed = int(buffer_seed)

    def build_method_state(self):
        size = self.buffer_size
        self.method_state.add("buffer_x", [(size, *self.example_shape)])
        self.method_state.add("buffer_y", [(size,)], "int32")
        self.method_state.add("buffer_task", [(size,)], "int32")
        # Examples the stream has shown (all finished tasks').
        self.method_state.add("buffer_seen", [()], "int32")

    def buffer(self):
        """`(x, y, task)` arrays of the filled part of the buffer."""
        seen = int(self.method_state["buffer_seen"][0].numpy())
        filled = min(seen, self.buffer_size)
        return tuple(
            self.method_state[key][0].numpy()[:filled]
            for key in ("buffer_x", "buffer_y", "buffer_task")
        )

    def end_task(self, task, benchmark=None):
        if benchmark is None:
            raise ValueError(
                "ER's `end_task` needs the benchmark: it samples the task's "
                f"training examples into its buffer. Received: task={task}, "
                "benchmark=None"
            )
        super().end_task(task, benchmark)
        if not self.method_state.built:
            self.build_method_state()
        x, y = benchmark.train_arrays(task, head=self.label_mode)
        (bx,), (by,), (bt,), (seen,) = (
            self.method_state[k]
            for k in ("buffer_x", "buffer_y", "buffer_task", "buffer_seen")
        )
        rng = np.random.default_rng([self.buffer_seed, int(task)])
        slots, rows = reservoir_slots(
            int(seen.numpy()), len(x), self.buffer_size, rng
        )
        new_x, new_y, new_t = bx.numpy(), by.numpy(), bt.numpy()
        new_x[slots], new_y[slots], new_t[slots] = x[rows], y[rows], task
        bx.assign(new_x)
        by.assign(new_y)
        bt.assign(new_t)
        seen.assign(int(seen.numpy()) + len(x))

    def train_dataset(self, task, benchmark, batch_size, seed=0):
        """Task `task`'s batches, each followed by as many replayed ones."""
        current = self.limit_steps(benchmark.train_dataset(
            task, batch_size, head=self.label_mode, seed=seed,
            with_task_id=True,
        ))
        if not self.method_state.built:
            self.build_method_state()
        bx, by, bt = self.buffer()
        if not len(bx):
            return current
        bx, by, bt = (tf.constant(a) for a in (bx, by, bt))
        filled = int(bx.shape[0])
        draws = tf.data.Dataset.random(
            seed=self.buffer_seed * 1_000_003 + seed,
            rerandomize_each_iteration=True,
        ).batch(batch_size).map(lambda r: r % filled)

        # Not converted by autograph, as the benchmark's own map: no
        # tensor-dependent control flow, and it is converted per task.
        @tf.autograph.experimental.do_not_convert
        def join(batch, rows):
            (inputs, y) = batch
            rows = tf.cast(rows, tf.int32)
            x = tf.concat([inputs["x"], tf.gather(bx, rows)], 0)
            ids = tf.concat(
                [tf.cast(inputs["task"], tf.int32), tf.gather(bt, rows)], 0
            )
            labels = tf.concat([tf.cast(y, tf.int32), tf.gather(by, rows)], 0)
            return {"x": x, "task": ids}, labels

        return without_autotune(tf.data.Dataset.zip(current, draws).map(
            join, num_parallel_calls=tf.data.AUTOTUNE
        ).prefetch(tf.data.AUTOTUNE))

    def extra_results(self, matrix, benchmark):
        del matrix, benchmark
        example = 4 * int(np.prod(self.example_shape)) + 8
        return {"buffer_bytes": self.buffer_size * example}

    def get_config(self):
        return {**super().get_config(), "buffer_size": self.buffer_size,
                "buffer_seed": self.buffer_seed}
