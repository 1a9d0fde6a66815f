"""Gradient rules: rewrites of some variables' gradients in the train step.

Every rule of the zoo goes through one protocol, `GradientRule`, and one
helper, `apply_rules`, which owns the cross-replica bookkeeping:

- freezing (`FreezeRule`: SGD-F's shared layers, AD's normal weights);
- the fast-gradient-sign step of BPN's bias-unit factors (beneficial
  direction) and AMN's memory units (adversarial direction),
  `x <- x - eps * sign(dL/dx)` (`SignGradientRule`, which owns its
  variables and applies them with its own optimizer: plain SGD at rate 1,
  so that `eps` is the step size whatever the main optimizer is);
- GEM's projection (`cl_zoo.consolidation.gem`), with any method;
- DGM's mask gating of its generator (`cl_zoo.methods.dgm`).

Under `tf.distribute` a rule that is not linear in the gradient (a sign, a
projection) must see the gradient of the global batch: `apply_rules`
all-reduces the gradients of its variables, rewrites them, and divides the
result by the replica count, because `optimizer.apply` sums the replicas'
gradients again (keras-team/keras#19308). A linear rule (freezing, gating)
commutes with the sum, so it rewrites each replica's gradient as it is and
costs no all-reduce. Rules apply in order; each sees the previous ones'
output.
"""

from __future__ import annotations

import abc

import keras
from keras import ops

from cl_zoo.replicas import cross_replica_sum, num_replicas
from cl_zoo.settings import Setting

# The step of the sign rule, read by every method that uses one.
EPSILON = Setting(
    "epsilon", float, 0.01,
    "Step of the sign updates: BPN's bias-unit factors M_t (beneficial "
    "direction) and AMN's memory units X_t (adversarial direction), "
    "v -= epsilon * sign(grad) per training step (the papers do not give "
    "it).", above=0, expected="a positive number")


class GradientRule(abc.ABC):
    """A rewrite of the gradients of `variables()`.

    Subclasses set `linear` (True when the rewrite commutes with a sum over
    replicas) and implement `rewrite`. A rule with an `optimizer` owns its
    variables: the model's main optimizer leaves them to it.
    """

    linear = False
    optimizer = None
    name = "rule"

    def variables(self):
        """The variables whose gradients this rule rewrites."""
        return []

    @abc.abstractmethod
    def rewrite(self, model, grads):
        """The new gradients of `variables()`, in their order.

        Args:
            model: the model being trained.
            grads: the gradients of `variables()`: of the global batch
                (summed over replicas) unless the rule is linear.
        """

    def build(self):  # noqa: B027 (optional: most rules have no state)
        """Creates the rule's own state (its optimizer); called before
        training, under the strategy's scope."""


def apply_rules(model, rules, grads, variables):
    """`grads` of `variables` with every rule of `rules` applied in order.

    Runs in a replica context (inside `train_step`); returns gradients to
    hand to `optimizer.apply`, which sums them over replicas.
    """
    grads = list(grads)
    position = {id(v): i for i, v in enumerate(variables)}
    replicas = num_replicas()
    for rule in rules:
        index = [position[id(v)] for v in rule.variables()
                 if id(v) in position]
        if not index:
            continue
        chosen = [grads[i] for i in index]
        if rule.linear or replicas == 1:
            new = rule.rewrite(model, chosen)
        else:
            total = [cross_replica_sum(g) for g in chosen]
            new = [g / replicas for g in rule.rewrite(model, total)]
        for i, g in zip(index, new):
            grads[i] = g
    return grads


class FreezeRule(GradientRule):
    """Zeroes the gradients of `variables` while `switch` is 1.0.

    `switch` is a variable (the model's `frozen`, 1.0 from the second task
    on), so freezing needs no recompile or retrace.
    """

    linear = True
    name = "freeze"

    def __init__(self, variables, switch):
        self._variables = list(variables)
        self.switch = switch

    def variables(self):
        return self._variables

    def rewrite(self, model, grads):
        keep = 1.0 - self.switch
        return [g * ops.cast(keep, g.dtype) for g in grads]


class SignGradientRule(GradientRule):
    """`v <- v - epsilon * sign(grad)` for a group of variables.

    `sign=False` gives the ablation in the gradient direction,
    `v <- v - epsilon * grad`: the same step scale and plain SGD, so the two
    differ only by the sign (an adaptive main optimizer such as Adam would
    itself make the steps sign-like and blur the ablation).

    Args:
        epsilon: the step size (the paper's eps of the FGSM update).
        name: a label for logs.
        sign: take the sign of the (all-reduced) gradient.
    """

    def __init__(self, epsilon, name="sign_rule", sign=True):
        if not epsilon > 0:
            raise ValueError(
                "Expected a positive `epsilon` for the sign rule. "
                f"Received: epsilon={epsilon}"
            )
        self.epsilon = float(epsilon)
        self.name = name
        self.sign = bool(sign)
        # Without the sign the step is linear in the gradient.
        self.linear = not self.sign
        self._variables = []
        self.optimizer = None

    def bind(self, variables):
        """Takes ownership of `variables` (call before `build`)."""
        self._variables = list(variables)

    def variables(self):
        return self._variables

    def build(self):
        self.optimizer = keras.optimizers.SGD(
            learning_rate=1.0, name=f"{self.name}_sgd"
        )
        self.optimizer.build(self._variables)

    def rewrite(self, model, grads):
        if not self.sign:
            return [self.epsilon * g for g in grads]
        return [self.epsilon * ops.sign(g) for g in grads]

