"""Consolidation: a penalty plus the state it needs, accumulated over tasks."""

from __future__ import annotations

import abc

import keras
from keras import ops

from cl_zoo.consolidation.penalties import quadratic_penalty
from cl_zoo.settings import Setting

NORMALIZATIONS = ("none", "max")

# Settings several consolidations read (one declaration, shared).
FISHER_SAMPLES = Setting(
    "fisher_samples", int, 1024,
    "Training examples per task for the importance estimate (EWC's "
    "diagonal Fisher, SPP's and MAS's importances).", minimum=1)
FISHER_NORMALIZE = Setting(
    "fisher_normalize", str, "none",
    "'none', or 'max': divide each task's Fisher (EWC) or importance (SPP, "
    "MAS) by its largest entry, so every task is protected on one scale.",
    choices=NORMALIZATIONS)


def check_normalization(normalize):
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"Expected `normalize` in {NORMALIZATIONS}. "
            f"Received: normalize={normalize!r}"
        )
    return normalize


def normalize_importance(importances, normalize):
    """`"max"`: divides one task's importances by their largest entry, so
    that every task is protected on the same scale however confident the
    model was on it (a saturated softmax makes the raw values vanish)."""
    if normalize == "max":
        top = max(float(ops.max(v)) for v in importances)
        if top > 0:
            return [v / top for v in importances]
    return importances


class Consolidation(abc.ABC):
    """Protects what earlier tasks learned with a penalty on the parameters.

    Subclasses hold per-parameter state (`keras.Variable`s, not trainable),
    created by `build` for the model's shared variables, and update it in
    eager code between fits (`end_task`), which writes every replica's copy
    under `tf.distribute`. `penalty(model)` is traced into the train step.

    A consolidation registered by name (`cl_zoo.consolidation.registry`)
    also defines the classmethod `from_config(config)`: itself, built from
    a run's `RunConfig`; `register` refuses a class without it.

    Args:
        strength: the penalty's weight (lambda).
    """

    name = "consolidation"
    # The settings `from_config` reads (`cl_zoo.settings.Setting`).
    SETTINGS = ()
    # False for a consolidation that protects through a gradient rule only
    # (GEM's projection): no penalty enters the loss.
    has_penalty = True
    # True when `penalty_and_gradients` gives the penalty's gradient in
    # closed form: the train step then adds it to the tape's gradients
    # instead of differentiating the penalty (fewer ops per weight).
    closed_form_gradient = False

    def __init__(self, strength):
        if strength < 0:
            raise ValueError(
                "Expected a non-negative consolidation strength. "
                f"Received: strength={strength}"
            )
        self.strength = float(strength)
        self.built = False
        self.state = {}

    def build(self, model):
        """Creates the state for `model.shared_trainable_variables()`."""
        self.params = model.shared_trainable_variables()
        self.built = True

    def add_state(self, key, like, initializer="zeros"):
        """One non-trainable variable per parameter, shaped like it."""
        variables = [
            keras.Variable(
                initializer=initializer,
                shape=p.shape,
                dtype="float32",
                trainable=False,
                name=f"{key}_{i}",
            )
            for i, p in enumerate(like)
        ]
        self.state[key] = variables
        return variables

    def state_variables(self):
        return [v for vs in self.state.values() for v in vs]

    @abc.abstractmethod
    def penalty(self, model):
        """The penalty for the current parameters, a float32 scalar."""

    def batch_penalty(self, model, x):
        """The penalty on a training batch `x` (the model's inputs): the
        same as `penalty` unless it depends on the data (LwF's
        distillation)."""
        del x
        return self.penalty(model)

    def gradient_rules(self, model):
        """`cl_zoo.rules.GradientRule`s this consolidation adds to the train
        step (GEM's projection); none for a penalty."""
        del model
        return []

    @property
    def metrics(self):
        """Keras metrics the train step logs beside the penalty."""
        return []

    def per_task_bytes(self, model):
        """Bytes this consolidation keeps for each task (GEM's memory);
        a penalty's state does not grow with the tasks."""
        del model
        return 0

    def add_variables(self, key, shapes, dtype="float32"):
        """Non-trainable state variables of the given shapes, under `key`
        (checkpointed with the run, left out of exports)."""
        self.state[key] = [
            keras.Variable(
                initializer="zeros", shape=shape, dtype=dtype,
                trainable=False, name=f"{key}_{i}",
            )
            for i, shape in enumerate(shapes)
        ]
        return self.state[key]

    def penalty_and_gradients(self):
        """`(penalty, [d penalty / d param for param in self.params])`.

        Only for consolidations with `closed_form_gradient`.
        """
        raise TypeError(
            f"{type(self).__name__} has no closed-form penalty gradient; "
            "its penalty goes through the gradient tape."
        )

    def begin_task(self, model, task, benchmark):
        """Called before `task` trains (online estimates reset here)."""
        if not self.built:
            self.build(model)

    def end_task(self, model, task, benchmark):
        """Called after `task` trained: update importances and anchors."""
        if not self.built:
            self.build(model)

    def after_apply(self, model, grads, variables):
        """Traced into the train step after the optimizer's update.

        `grads` are this replica's gradients of `variables` (the model's
        trainable variables). Online estimates (SI's path integral) update
        their state here; the others need nothing.
        """
        del model, grads, variables

    def importances(self):
        """`(parameter path, importance)` pairs, for TensorBoard."""
        return []

    def config(self):
        return {"name": self.name, "strength": self.strength}


class QuadraticConsolidation(Consolidation):
    """`scale * strength * sum importance * (param - anchor)^2`.

    `penalty_scale` is 1/2 for EWC (its paper's lambda/2) and 1 for SI, MAS
    and SPP, whose papers write the penalty without the half.
    """

    penalty_scale = 0.5
    closed_form_gradient = True

    def build(self, model):
        super().build(model)
        self.importance = self.add_state("importance", self.params)
        self.anchor = self.add_state("anchor", self.params)

    def penalty(self, model):
        return self.penalty_scale * self.strength * quadratic_penalty(
            self.params, self.anchor, self.importance
        )

    def penalty_and_gradients(self):
        """One pass per weight: `diff`, `importance * diff`, then both the
        penalty's term and its gradient `2 * factor * importance * diff`."""
        factor = self.penalty_scale * self.strength
        terms, grads = [], []
        for p, a, imp in zip(self.params, self.anchor, self.importance):
            diff = ops.cast(p.value, "float32") - a.value
            weighted = imp.value * diff
            terms.append(ops.sum(weighted * diff))
            grads.append((2.0 * factor) * weighted)
        if not terms:
            return ops.zeros((), "float32"), grads
        return factor * ops.sum(ops.stack(terms)), grads

    def penalty_gradients(self, params):
        """The penalty's gradient at `params` (closed form, per parameter)."""
        factor = 2.0 * self.penalty_scale * self.strength
        return [
            factor * imp * (p - a)
            for p, a, imp in zip(params, self.anchor, self.importance)
        ]

    def importances(self):
        return [
            (p.path, imp.value) for p, imp in zip(self.params, self.importance)
        ]
