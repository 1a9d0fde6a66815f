"""GEM: gradient episodic memory (Lopez-Paz and Ranzato, 2017).

After each task, `memory_size` of its training examples (a seeded random
choice; the authors' code keeps the task's last examples in a ring buffer)
go into an episodic memory. While task t trains, every step computes the
gradient `g_k` of the loss on the memory of each earlier task k < t; if the
proposed gradient `g` would increase one of those losses (`<g, g_k> < 0`),
`g` is replaced by the closest gradient that increases none of them, found
by solving GEM's QP.

The QP. With `G` the `(k, P)` matrix of the old tasks' gradients (flattened
over every protected variable), GEM's primal problem (paper, eq. 10-11) is

    min_z 1/2 ||g - z||^2   s.t.   G z >= 0,

whose dual (eq. 13) is over one variable per old task:

    min_v 1/2 v' (G G') v + (G g)' v   s.t.   v >= 0,   z = G' v + g.

The memory strength gamma (`margin`) enters as in the authors' code
(`project2cone2` in facebookresearch/GradientEpisodicMemory, which calls
`quadprog.solve_qp(P, q, C, h)`, i.e. `min 1/2 v'Pv - q'v s.t. C'v >= h`,
with `P = G G'`, `q = -G g`, `C = I`, `h = margin`): as a lower bound on the
dual variables,

    min_v f(v) = 1/2 v' P v + b' v   s.t.   v >= gamma,
    P = G G',  b = G g,  z = G' v + g,

so that every old task's gradient is added with a weight of at least gamma
once a projection happens (the paper: "adding a small constant gamma >= 0 to
v* biased the gradient projection to updates that favoured beneficial
backwards transfer"). Its KKT conditions read, with `r = P v + b = G z`:
`v >= gamma`, `r >= 0`, `(v - gamma) * r = 0`. So the projected gradient
satisfies every constraint, `<z, g_k> >= 0`, with equality for the tasks
whose weight rose above gamma; with one old task, `z = g + max(gamma, v*) g_0`
with `v* = -<g, g_0> / ||g_0||^2`. (Later copies of `project2cone2` add
`1e-3 I` to P so that quadprog's factorization never fails; the solver here
needs no such term and keeps P exact.)

The solver runs in the graph with fixed shapes and a fixed number of
iterations, in float64 (as the authors' QP): accelerated projected gradient
(FISTA, with gradient-based restarts) on the Jacobi-scaled problem
`w = v * sqrt(P_ii)`, step 1/L with L the largest absolute row sum of the
scaled matrix (a bound of its largest eigenvalue), then projected Newton
steps (Newton's step on the variables off the bound, the best of a few step
lengths along the projected arc), which are exact once the active set is
found: on problems of up to a dozen old tasks the answer matches a
brute-force search over active sets to round-off.

Under `tf.distribute` the projection, not linear in `g`, is applied to the
all-reduced gradient of the global batch, then divided by the replica count,
since `optimizer.apply` sums the replicas' gradients again. The memory is the
same on every replica, and so are its gradients (taken in inference mode).
A consolidation (`--consolidation=gem`), so any method combines with it:
the projection is a gradient rule (`cl_zoo.rules`) on the variables the
method shares between tasks (`shared_trainable_variables`), e.g. BD+GEM is
`--method=bd_ewc --consolidation=gem` (bias units in the beneficial
direction, GEM's projection on the shared weights). The memory is the
consolidation's state: checkpointed with the run, left out of exports.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cl_zoo.consolidation.base import Consolidation
from cl_zoo.consolidation.registry import register
from cl_zoo.rules import GradientRule
from cl_zoo.settings import Setting

MEMORY_SIZE = Setting(
    "memory_size", int, 256,
    "GEM: training examples of each finished task kept in the episodic "
    "memory (the BPN tables' GEM(10)...GEM(256)).", minimum=1)
GEM_MARGIN = Setting(
    "gem_margin", float, 0.5,
    "GEM: the QP's margin (memory strength) gamma.", minimum=0)

# Iterations of the dual QP's solver: FISTA to come close, then projected
# Newton steps, exact once the active set is found.
QP_ITERATIONS = 50
NEWTON_STEPS = 10


def solve_gem_dual(gram, dots, margin=0.0, active=None,
                   iterations=QP_ITERATIONS, newton_steps=NEWTON_STEPS):
    """Solves GEM's dual QP: `argmin_{v >= margin} 1/2 v'Pv + b'v`.

    Args:
        gram: `P = G G'`, `(k, k)`, positive semi-definite.
        dots: `b = G g`, `(k,)`.
        margin: the lower bound gamma of every active dual variable.
        active: optional `(k,)` bool mask of the constraints that exist (old
            tasks with a memory); the others get `v = 0`.
        iterations: FISTA iterations.
        newton_steps: projected Newton steps after them.

    Returns:
        `v`, `(k,)`, in the dtype of `gram`.
    """
    gram = tf.convert_to_tensor(gram)
    dtype = gram.dtype
    dots = tf.cast(dots, dtype)
    if active is None:
        active = tf.ones(tf.shape(dots), tf.bool)
    active = tf.convert_to_tensor(active, tf.bool)
    on = tf.cast(active, dtype)
    gram = gram * on[:, None] * on[None, :]
    dots = dots * on
    lower = tf.cast(margin, dtype) * on
    zero = tf.zeros([], dtype)

    def objective(v):
        return 0.5 * tf.reduce_sum(v * tf.linalg.matvec(gram, v)) + (
            tf.reduce_sum(dots * v)
        )

    # Jacobi scaling v = d * w, d = 1 / sqrt(P_ii): a unit diagonal.
    diag = tf.linalg.diag_part(gram)
    d = tf.where(diag > 0, tf.math.rsqrt(tf.where(diag > 0, diag, 1)), 1)
    a = gram * d[:, None] * d[None, :]
    c = dots * d
    lo = lower / d
    step = 1.0 / tf.maximum(tf.reduce_max(tf.reduce_sum(tf.abs(a), 1)), 1e-30)

    def body(w, y, t):
        w_new = tf.maximum(y - step * (tf.linalg.matvec(a, y) + c), lo)
        t_new = 0.5 * (1.0 + tf.sqrt(1.0 + 4.0 * t * t))
        # Restart the momentum when it points uphill (O'Donoghue and Candes).
        restart = tf.reduce_sum((y - w_new) * (w_new - w)) > 0
        beta = tf.where(restart, zero, (t - 1.0) / t_new)
        t_new = tf.where(restart, tf.ones([], dtype), t_new)
        return w_new, w_new + beta * (w_new - w), t_new

    w, _, _ = tf.while_loop(
        lambda w, y, t: True,
        body,
        (lo, lo, tf.ones([], dtype)),
        maximum_iterations=iterations,
    )
    v = d * w

    # Projected Newton steps (Bertsekas, 1982) from FISTA's answer: Newton's
    # step on the free set F (all but the variables at the bound with r > 0),
    # then the best of 20 step lengths 2^-j along the projected arc, kept if
    # it lowers f; exact once F is right.
    eye = tf.eye(tf.shape(dots)[0], dtype=dtype)
    ridge = 1e-12 * tf.maximum(tf.reduce_max(diag), 1e-30) * eye
    alphas = tf.constant([0.5**j for j in range(20)], dtype)

    def newton(v):
        r = tf.linalg.matvec(gram, v) + dots
        bound = (v <= lower + 1e-12 * (1.0 + lower)) & (r > 0)
        free = active & ~bound
        system = tf.where(free[:, None] & free[None, :], gram + ridge, eye)
        direction = tf.linalg.solve(system, tf.where(free, -r, zero)[:, None])
        trial = tf.maximum(v[None] + alphas[:, None] * direction[None, :, 0],
                           lower)
        values = 0.5 * tf.reduce_sum(trial * tf.matmul(trial, gram), 1) + (
            tf.linalg.matvec(trial, dots)
        )
        values = tf.where(tf.math.is_finite(values), values, np.inf)
        # A gather, not `trial[best]`: XLA would take a sliced index for a
        # compile-time constant and recompile for every value of it.
        best = tf.argmin(values)
        better = tf.gather(values, best) < objective(v)
        return (tf.where(better, tf.gather(trial, best), v),)

    return tf.while_loop(
        lambda v: True, newton, (v,), maximum_iterations=newton_steps
    )[0]


def project_gradient(grad, memory_grads, margin=0.0, active=None,
                     iterations=QP_ITERATIONS):
    """GEM's projection of a flat gradient against old tasks' gradients.

    Args:
        grad: the proposed gradient `g`, `(P,)`.
        memory_grads: `G`, `(k, P)`: the gradient of each old task's memory
            loss (rows of tasks without memory are ignored).
        margin: GEM's memory strength gamma.
        active: optional `(k,)` bool mask of the rows that are constraints.
        iterations: the QP solver's FISTA iterations.

    Returns:
        `(z, violated)`: `z = G'v + g` if some `<g, g_k> < 0` (else `g`
        itself), and whether a constraint was violated.
    """
    grad = tf.convert_to_tensor(grad)
    memory_grads = tf.cast(memory_grads, grad.dtype)
    if active is None:
        active = tf.ones(tf.shape(memory_grads)[:1], tf.bool)
    active = tf.convert_to_tensor(active, tf.bool)
    g64 = tf.cast(grad, tf.float64)
    mem64 = tf.cast(memory_grads, tf.float64) * tf.cast(active, tf.float64)[
        :, None
    ]
    dots = tf.linalg.matvec(mem64, g64)
    violated = tf.reduce_any((dots < 0) & active)

    def project():
        gram = tf.matmul(mem64, mem64, transpose_b=True)
        v = solve_gem_dual(gram, dots, margin, active, iterations)
        return tf.cast(tf.linalg.matvec(mem64, v, transpose_a=True) + g64,
                       grad.dtype)

    return tf.cond(violated, project, lambda: grad), violated


def _check_integer(name, value, minimum):
    if (
        not isinstance(value, int | np.integer)
        or isinstance(value, bool)
        or value < minimum
    ):
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(
            f"Expected a {kind} integer for `{name}`. "
            f"Received: {name}={value!r}"
        )




class _Projection(GradientRule):
    """GEM's projection of the protected variables' global gradient."""

    name = "gem_projection"

    def __init__(self, gem, variables):
        self.gem = gem
        self._variables = list(variables)

    def variables(self):
        return self._variables

    def rewrite(self, model, grads):
        gem = self.gem
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
        counts = gem.memory[2].value
        active = (tf.range(model.num_tasks) < model.task) & (counts > 0)

        def with_memory():
            memory_grads = gem.memory_gradients(model, self._variables)
            return project_gradient(flat, memory_grads, gem.margin, active)

        flat, violated = tf.cond(
            tf.reduce_any(active), with_memory, lambda: (flat, False)
        )
        gem.projected.update_state(tf.cast(violated, tf.float32))
        out, offset = [], 0
        for v in self._variables:
            size = int(np.prod(v.shape))
            out.append(tf.reshape(flat[offset:offset + size], v.shape))
            offset += size
        return out


@register("gem")
class GEM(Consolidation):
    """Projects each step's gradient so no old task's memory loss rises.

    Args:
        memory_size: training examples of each finished task kept in the
            episodic memory (fewer if the task has fewer).
        margin: the memory strength gamma, a lower bound of the QP's dual
            variables (see the module's docstring).
        memory_seed: seed of the choice of each task's memory examples.
    """

    SETTINGS = (MEMORY_SIZE, GEM_MARGIN)
    has_penalty = False

    @classmethod
    def from_config(cls, config):
        return cls(config.memory_size, margin=config.gem_margin,
                   memory_seed=config.seed)

    def __init__(self, memory_size=256, margin=0.5, memory_seed=0):
        super().__init__(0.0)
        _check_integer("memory_size", memory_size, minimum=1)
        if (
            isinstance(margin, bool)
            or not isinstance(margin, int | float | np.number)
            or not np.isfinite(margin)
            or margin < 0
        ):
            raise ValueError(
                "Expected a non-negative number for `margin`. "
                f"Received: margin={margin!r}"
            )
        _check_integer("memory_seed", memory_seed, minimum=0)
        self.memory_size = int(memory_size)
        self.margin = float(margin)
        self.memory_seed = int(memory_seed)
        self.projected = keras.metrics.Mean(name="projected")

    # ------------------------------------------------------------------
    # The episodic memory.
    def build(self, model):
        super().build(model)
        tasks, size = model.num_tasks, self.memory_size
        self.add_variables("memory_x", [(tasks, size, *model.example_shape)])
        self.add_variables("memory_y", [(tasks, size)], "int32")
        self.add_variables("memory_count", [(tasks,)], "int32")
        self._rule = _Projection(self, self.params)

    @property
    def memory(self):
        """`(x, y, count)`: the memory variables, one row per task."""
        return tuple(
            self.state[key][0]
            for key in ("memory_x", "memory_y", "memory_count")
        )

    def memory_indices(self, task, num_examples):
        """Positions in task `task`'s training data that the memory keeps.

        A seeded choice of `min(memory_size, num_examples)` positions, in
        increasing order; the same for the same seed and task.
        """
        rng = np.random.default_rng([self.memory_seed, int(task)])
        take = min(self.memory_size, int(num_examples))
        return np.sort(rng.choice(int(num_examples), take, replace=False))

    def end_task(self, model, task, benchmark):
        if benchmark is None:
            raise ValueError(
                "GEM's `end_task` needs the benchmark: it stores examples of "
                f"the task in its episodic memory. Received: task={task}, "
                "benchmark=None"
            )
        super().end_task(model, task, benchmark)
        self.store_task(model, task, benchmark)

    def store_task(self, model, task, benchmark):
        """Writes the memory's examples of `task` (its training data)."""
        keep = self.memory_indices(task, benchmark.train_size(task))
        dataset = benchmark.train_dataset(
            task, 1024, head=model.label_mode, shuffle=False,
            drop_remainder=False, with_task_id=False,
        )
        xs, ys, start = [], [], 0
        for x, y in dataset:
            n = int(x.shape[0])
            rows = keep[(keep >= start) & (keep < start + n)] - start
            xs.append(tf.gather(x, rows).numpy())
            ys.append(tf.gather(y, rows).numpy())
            start += n
        count = len(keep)
        mem_x, mem_y, mem_count = self.memory
        new_x = mem_x.numpy()
        new_y = mem_y.numpy()
        new_count = mem_count.numpy()
        new_x[task] = 0.0
        new_y[task] = 0
        if count:
            new_x[task, :count] = np.concatenate(xs)
            new_y[task, :count] = np.concatenate(ys)
        new_count[task] = count
        mem_x.assign(new_x)
        mem_y.assign(new_y)
        mem_count.assign(new_count)

    # ------------------------------------------------------------------
    # The projection.
    def penalty(self, model):
        del model
        return tf.zeros((), tf.float32)

    def gradient_rules(self, model):
        del model
        return [self._rule]

    @property
    def metrics(self):
        return [self.projected]

    def per_example_loss(self, model, y, logits):
        """The compiled loss of each example, unreduced and unscaled."""
        loss = model.loss
        if isinstance(loss, str):
            loss = keras.losses.get(loss)
        if isinstance(loss, keras.losses.Loss):
            return loss.call(y, logits)
        if callable(loss):
            return loss(y, logits)
        raise ValueError(
            "GEM needs a single compiled loss for its memory's gradients. "
            f"Received: loss={model.loss!r}"
        )

    def memory_gradients(self, model, variables):
        """`(num_tasks, P)`: each old task's flat memory-loss gradient.

        Task k's row is the gradient of the mean loss over its memory
        (in inference mode, so every replica gets the same); rows of tasks
        `>= model.task` are zero. One vectorized pass over the old tasks
        (over every task under XLA, which needs static shapes).
        """
        mem_x, mem_y, mem_count = self.memory
        task = tf.convert_to_tensor(model.task)
        size = self.memory_size
        sizes = [int(np.prod(v.shape)) for v in variables]

        def one_task(args):
            x, y, count, k = args
            with tf.GradientTape() as tape:
                logits = model(
                    {"x": x, "task": tf.fill([size], k)}, training=False
                )
                losses = tf.cast(
                    self.per_example_loss(model, y, logits), tf.float32)
                weights = tf.cast(tf.range(size) < count, tf.float32)
                loss = tf.reduce_sum(losses * weights) / tf.cast(
                    tf.maximum(count, 1), tf.float32
                )
            grads = tape.gradient(loss, variables)
            return tf.concat(
                [
                    tf.reshape(
                        g if g is not None else tf.zeros(v.shape), [-1]
                    )
                    for g, v in zip(grads, variables)
                ],
                0,
            )

        tasks = tf.range(model.num_tasks)
        memory = (mem_x.value, mem_y.value, mem_count.value, tasks)
        if model.jit_compile:
            # XLA needs static shapes: every task's row, then masked.
            rows = tf.vectorized_map(
                one_task, memory, fallback_to_while_loop=False
            )
            return rows * tf.cast(tasks < task, rows.dtype)[:, None]
        # Only the old tasks' rows (a slice of dynamic length), padded.
        rows = tf.vectorized_map(
            one_task,
            tuple(m[:task] for m in memory),
            fallback_to_while_loop=False,
        )
        rows = tf.pad(rows, [[0, model.num_tasks - task], [0, 0]])
        return tf.ensure_shape(rows, (model.num_tasks, sum(sizes)))

    def per_task_bytes(self, model):
        """One task's memory.

        Each kept example costs its float32 input and its int32 label, as
        this implementation holds them. (The BPN paper's tables count
        `memory_size * pixels * 6` bytes for GEM, e.g. 4,718,592 for
        GEM(256) on CIFAR-10.)
        """
        example = 4 * int(np.prod(model.example_shape)) + 4
        return self.memory_size * example

    def config(self):
        return {**super().config(), "memory_size": self.memory_size,
                "margin": self.margin, "memory_seed": self.memory_seed}
