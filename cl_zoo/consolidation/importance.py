"""Importance-weighted penalties: SPP, MAS (from data) and SI (online).

All three keep one importance per parameter, summed over finished tasks,
and anchor the penalty `strength * sum Omega (p - p*)^2` at the parameters
left by the latest task.

- SPP (soft parameter pruning, label-free): for each example, `g` the
  gradient of the entropy `H = -sum q log q` of the model's softmax output
  `q` (for the example's task head) and `Omega = max(0, g*W + g^2 W^2 / 2)`,
  the second-order change of `H` when the weight is pruned, with the
  diagonal Fisher of the entropy `g^2` standing in for the Hessian (the
  authors' TensorFlow code), averaged over examples.
- MAS (Aljundi et al. 2018): `Omega = mean |d ||f(x)||^2 / dW|`, the
  sensitivity of the squared L2 norm of the output; label-free as well.
- SI (Zenke et al. 2017): while a task trains, `omega += -g * delta_w` for
  each step (`g` the gradient of the task's loss without the penalty);
  at its end `Omega += max(0, omega / (Delta^2 + xi))`, `Delta` the task's
  total change of the weight.

SPP and MAS compute per-example gradients vectorized, like EWC's Fisher.
"""

from __future__ import annotations

import tensorflow as tf

from cl_zoo.consolidation.base import (
    FISHER_NORMALIZE,
    FISHER_SAMPLES,
    QuadraticConsolidation,
    check_normalization,
    normalize_importance,
)
from cl_zoo.consolidation.per_example import (
    jit_compile_ok,
    mean_over_examples,
    per_example_terms,
    task_chunks,
)
from cl_zoo.consolidation.registry import register
from cl_zoo.replicas import cross_replica_sum
from cl_zoo.settings import Setting

SPP_LAMBDA = Setting(
    "spp_lambda", float, 4.0,
    "SPP strength lambda in lambda * sum Omega (w - w*)^2, Omega the "
    "label-free entropy importance summed over tasks. The paper sweeps "
    "0.01-12 and finds 4 best; with this importance's scale 100-300 is the "
    "useful range on permuted MNIST.", minimum=0)
SPP_GROUP = Setting(
    "spp_group", int, 1,
    "SPP: examples per entropy gradient. 1: each example's own gradient "
    "(vectorized). G > 1: the gradient of the entropy summed over G "
    "examples, the importance averaged over such batches.", minimum=1)
MAS_LAMBDA = Setting(
    "mas_lambda", float, 1.0,
    "MAS strength lambda in lambda * sum Omega (w - w*)^2 (Aljundi et al. "
    "2018).", minimum=0)
SI_LAMBDA = Setting(
    "si_lambda", float, 1.0,
    "SI strength c in c * sum Omega (w - w*)^2 (Zenke et al. 2017).",
    minimum=0)
SI_DAMPING = Setting(
    "si_damping", float, 0.1,
    "SI's xi in Omega += omega / (delta_w^2 + xi).", above=0)


def output_entropy(logits, unused=None):
    """Entropy of the softmax of one example's logits (SPP's objective);
    of a `(group, classes)` batch, the sum of its examples' entropies."""
    del unused
    log_q = tf.nn.log_softmax(logits)
    return -tf.reduce_sum(tf.exp(log_q) * log_q)


def spp_term(grad, weight):
    """`max(0, g W + g^2 W^2 / 2)`: the pruning cost of each weight."""
    gw = grad * weight
    return tf.nn.relu(gw + 0.5 * tf.square(gw))


def squared_output_norm(logits, unused=None):
    """`||f(x)||^2` of one example's output (MAS's objective); of a
    `(group, classes)` batch, the sum over its examples."""
    del unused
    return tf.reduce_sum(tf.square(logits))


def mas_term(grad, weight):
    del weight
    return tf.abs(grad)


class DataImportance(QuadraticConsolidation):
    """A penalty whose importance is a mean over a task's examples.

    Subclasses set `objective(logits_row, unused) -> scalar` and
    `term(grad, weight) -> importance`, both per example.

    Args:
        strength: lambda.
        samples: training examples of each task the importance is averaged
            over.
        chunk_size: examples per vectorized per-example-gradient chunk.
        seed: seed of the data order.
        group_size: examples per gradient. 1 (the default): each example's
            own gradient. G > 1: the gradient of the objective summed over
            G examples (a mini-batch, as in code that takes the gradient of
            a batch's summed entropy), the terms averaged over the batches:
            the first-order term grows with G, the second with G^2.
        normalize: `"none"`, or `"max"` to divide each task's importance
            by its largest entry before it is added (as EWC's
            `fisher_normalize`).
    """

    penalty_scale = 1.0
    objective = None
    term = None

    def __init__(self, strength, samples=1024, chunk_size=128, seed=0,
                 group_size=1, normalize="none"):
        super().__init__(strength)
        self.normalize = check_normalization(normalize)
        if samples < 1:
            raise ValueError(
                "Expected a positive number of importance samples. "
                f"Received: samples={samples}"
            )
        if group_size < 1 or group_size > samples:
            raise ValueError(
                "Expected 1 <= group_size <= samples. "
                f"Received: group_size={group_size}, samples={samples}"
            )
        self.group_size = int(group_size)
        # Whole groups only.
        self.samples = int(samples) // self.group_size * self.group_size
        self.chunk_size = self.group_size * max(
            1, int(chunk_size) // self.group_size
        )
        self.seed = int(seed)

    def build(self, model):
        super().build(model)
        self._chunk_fn = self.make_chunk_fn(model, self.params)

    def make_chunk_fn(self, model, variables):
        """A traced `(x, task_ids, y, seed) -> per-variable sums`."""
        objective, term = type(self).objective, type(self).term
        group = self.group_size

        @tf.function(reduce_retracing=True, autograph=False,
                     jit_compile=jit_compile_ok())
        def chunk(x, task_ids, y, seed):
            del y, seed  # label-free
            return per_example_terms(
                model, variables, x, task_ids, objective, term, group=group
            )

        return chunk

    def task_importance(self, model, task, benchmark):
        """This task's importance, one tensor per parameter."""
        dataset = task_chunks(
            model, benchmark, task, self.chunk_size, self.seed,
            drop_remainder=self.group_size > 1,
        )
        # A mean over gradients: over examples, or over groups of them.
        return mean_over_examples(
            self._chunk_fn, self.params, dataset, self.samples,
            group=self.group_size,
        )

    def end_task(self, model, task, benchmark):
        super().end_task(model, task, benchmark)
        new = normalize_importance(
            self.task_importance(model, task, benchmark), self.normalize
        )
        for imp, anchor, param, omega in zip(
            self.importance, self.anchor, self.params, new
        ):
            imp.assign(imp + omega)
            anchor.assign(param)

    def config(self):
        return {**super().config(), "samples": self.samples,
                "group_size": self.group_size, "normalize": self.normalize}


@register("spp")
class SPP(DataImportance):
    """Soft parameter pruning: label-free entropy importance, summed."""

    name = "spp"
    SETTINGS = (SPP_LAMBDA, SPP_GROUP, FISHER_SAMPLES, FISHER_NORMALIZE)

    @classmethod
    def from_config(cls, config):
        return cls(
            config.spp_lambda, samples=config.fisher_samples,
            seed=config.seed, group_size=config.spp_group,
            normalize=config.fisher_normalize,
        )
    objective = staticmethod(output_entropy)
    term = staticmethod(spp_term)


@register("mas")
class MAS(DataImportance):
    """Memory-aware synapses: sensitivity of the output's squared norm."""

    name = "mas"
    SETTINGS = (MAS_LAMBDA, FISHER_SAMPLES, FISHER_NORMALIZE)

    @classmethod
    def from_config(cls, config):
        return cls(
            config.mas_lambda, samples=config.fisher_samples,
            seed=config.seed, normalize=config.fisher_normalize,
        )
    objective = staticmethod(squared_output_norm)
    term = staticmethod(mas_term)


@register("si")
class SI(QuadraticConsolidation):
    """Synaptic intelligence: the path integral of the loss, online.

    Args:
        strength: c.
        damping: xi, which keeps `omega / (Delta^2 + xi)` finite for
            weights that hardly moved.
    """

    name = "si"
    penalty_scale = 1.0
    SETTINGS = (SI_LAMBDA, SI_DAMPING)

    @classmethod
    def from_config(cls, config):
        return cls(config.si_lambda, damping=config.si_damping)

    def __init__(self, strength, damping=0.1):
        super().__init__(strength)
        if not damping > 0:
            raise ValueError(
                f"Expected a positive SI damping. Received: damping={damping}"
            )
        self.damping = float(damping)

    def build(self, model):
        super().build(model)
        self.omega = self.add_state("omega", self.params)
        self.start = self.add_state("start", self.params)
        self.previous = self.add_state("previous", self.params)

    def begin_task(self, model, task, benchmark):
        super().begin_task(model, task, benchmark)
        for omega, start, previous, param in zip(
            self.omega, self.start, self.previous, self.params
        ):
            omega.assign(tf.zeros_like(omega))
            start.assign(param)
            previous.assign(param)

    def after_apply(self, model, grads, variables):
        # The sum over replicas of the replicas' gradients is the global
        # gradient, the same on every replica, so each replica writes the
        # same value into its copy of the state.
        by_id = {id(v): g for g, v in zip(grads, variables)}
        total = [cross_replica_sum(by_id[id(p)]) for p in self.params]
        # The path integral follows the task's loss: take away the
        # penalty's own pull, evaluated where the gradient was taken.
        pull = self.penalty_gradients([p.value for p in self.previous])
        for omega, previous, param, g, h in zip(
            self.omega, self.previous, self.params, total, pull
        ):
            step = param.value - previous.value
            omega.assign(omega.value - (g - h) * step)
            previous.assign(param.value)

    def end_task(self, model, task, benchmark):
        super().end_task(model, task, benchmark)
        for imp, anchor, omega, start, param in zip(
            self.importance, self.anchor, self.omega, self.start, self.params
        ):
            delta = param - start
            imp.assign(
                imp + tf.nn.relu(omega / (tf.square(delta) + self.damping))
            )
            anchor.assign(param)
            omega.assign(tf.zeros_like(omega))

    def config(self):
        return {**super().config(), "damping": self.damping}
