"""LwF's distillation as a consolidation (Li and Hoiem, 2017).

While task t trains, the network's old heads are held to what the network
answered before task t, on task t's own data: the penalty is, for every old
head, the cross-entropy between the old network's softened outputs
`softmax(y_old / T)` and the current ones (temperature T), times lambda.
No data of old tasks is kept; the old network's weights are (a copy in the
consolidation's state, checkpointed with the run, left out of exports).

A penalty that needs the batch: the train step hands it the inputs
(`batch_penalty`). Any method combines with it, e.g. BD+LwF is
`--method=bd_ewc --consolidation=lwf`.

With one head per task (`--head=multi`, the protocol of the SPP paper) each
old task's head is distilled; with a single or shared head, the one head's
whole output is.
"""

from __future__ import annotations

import keras
from keras import ops

from cl_zoo.consolidation.base import Consolidation
from cl_zoo.consolidation.registry import register
from cl_zoo.settings import Setting

LWF_LAMBDA = Setting(
    "lwf_lambda", float, 1.0,
    "LwF: weight of the distillation loss on the old heads' outputs.",
    minimum=0)
LWF_TEMPERATURE = Setting(
    "lwf_temperature", float, 2.0, "LwF: distillation temperature.",
    above=0)


def _all_heads(model, x, task_ids, training):
    """`(batch, heads, width)`: every head's logits (`TaskHead.all_heads`),
    or the one task-conditioned head's (BPN's bias-unit head)."""
    h = model.features(x, task_ids, training=training)
    if hasattr(model.head, "all_heads"):
        return model.head.all_heads(h)
    return model.head(h, task_ids)[:, None, :]


@register("lwf")
class LwF(Consolidation):
    """Distils the old network's outputs on the new task's data.

    Args:
        strength: lambda, the weight of the distillation loss.
        temperature: distillation temperature T.
    """

    SETTINGS = (LWF_LAMBDA, LWF_TEMPERATURE)

    @classmethod
    def from_config(cls, config):
        return cls(config.lwf_lambda, temperature=config.lwf_temperature)

    def __init__(self, strength, temperature=2.0):
        super().__init__(strength)
        if not temperature > 0:
            raise ValueError(
                "Expected a positive `temperature`. "
                f"Received: temperature={temperature}"
            )
        self.temperature = float(temperature)

    def build(self, model):
        super().build(model)
        # The whole network, heads and per-task units included: the old
        # outputs are the old network's.
        self.weights = list(model.trainable_variables)
        self.old_weights = self.add_state("old_weights", self.weights)

    def begin_task(self, model, task, benchmark):
        super().begin_task(model, task, benchmark)
        for old, v in zip(self.old_weights, self.weights):
            old.assign(v)

    def penalty(self, model):
        raise TypeError(
            "LwF's penalty is a distillation on the training batch: call "
            "`batch_penalty(model, x)`."
        )

    def batch_penalty(self, model, x):
        if self.strength == 0:
            return ops.zeros((), "float32")
        return self.strength * self.distillation_loss(model, x)

    def distillation_loss(self, model, x):
        """Cross-entropy of the old network's softened outputs, summed over
        the old heads, averaged over the batch (0 on the first task)."""
        x, task_ids = model.unpack_inputs(x)
        mapping = [(v, old.value)
                   for v, old in zip(self.weights, self.old_weights)]
        with keras.StatelessScope(state_mapping=mapping):
            old_logits = _all_heads(model, x, task_ids, training=False)
        old_logits = ops.stop_gradient(old_logits)
        new_logits = _all_heads(model, x, task_ids, training=True)
        t = self.temperature
        targets = ops.softmax(old_logits / t, axis=-1)
        log_probs = ops.log_softmax(new_logits / t, axis=-1)
        per_head = -ops.mean(ops.sum(targets * log_probs, axis=-1), axis=0)
        heads = ops.shape(per_head)[0]
        if model.head_mode == "multi":
            old = ops.cast(ops.arange(heads) < model.task, per_head.dtype)
        else:
            old = ops.cast(model.task > 0, per_head.dtype) * ops.ones_like(
                per_head
            )
        return ops.sum(per_head * old)

    def config(self):
        return {**super().config(), "temperature": self.temperature}
