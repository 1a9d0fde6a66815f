"""LwF: learning without forgetting (Li and Hoiem, 2017).

While task t trains, the network's old heads are held to what the network
answered before task t, on task t's own data: the loss adds, for every old
head, the cross-entropy between the old network's softened outputs
`softmax(y_old / T)` and the current ones (temperature T, weight lambda).
No data of old tasks is kept; the old network's weights are (a copy in
`method_state`, checkpointed with the run, left out of exports).

With one head per task (`--head=multi`, the protocol of the SPP paper) each
old task's head is distilled; with a single or shared head, the one head's
whole output is.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register
from cl_zoo.methods.spp import protocol
from cl_zoo.settings import Setting

LWF_LAMBDA = Setting(
    "lwf_lambda", float, 1.0,
    "LwF: weight of the distillation loss on the old heads' outputs.",
    minimum=0)
LWF_TEMPERATURE = Setting(
    "lwf_temperature", float, 2.0, "LwF: distillation temperature.",
    above=0)


@register("lwf")
class LwF(ContinualModel):
    """Distils the old network's outputs on the new task's data.

    Args:
        lwf_lambda: weight of the distillation loss.
        temperature: distillation temperature T.
    """

    SETTINGS = (LWF_LAMBDA, LWF_TEMPERATURE)

    @classmethod
    def default_config(cls, benchmark):
        return protocol(benchmark, consolidation="none")

    @classmethod
    def init_args_from_config(cls, config):
        return {
            "lwf_lambda": config.lwf_lambda,
            "temperature": config.lwf_temperature,
        }

    def __init__(self, *args, lwf_lambda=1.0, temperature=2.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not lwf_lambda >= 0:
            raise ValueError(
                "Expected a non-negative `lwf_lambda`. "
                f"Received: lwf_lambda={lwf_lambda}"
            )
        if not temperature > 0:
            raise ValueError(
                "Expected a positive `temperature`. "
                f"Received: temperature={temperature}"
            )
        self.lwf_lambda = float(lwf_lambda)
        self.temperature = float(temperature)
        self._distill_tracker = keras.metrics.Mean(name="distillation")

    def build_method_state(self):
        self.method_state.add(
            "old_weights", [v.shape for v in self.trainable_variables]
        )

    def begin_task(self, task, benchmark=None):
        super().begin_task(task, benchmark)
        old_weights = self.method_state["old_weights"]
        for old, v in zip(old_weights, self.trainable_variables):
            old.assign(v)

    def _all_heads(self, x, task_ids, training):
        return self.head.all_heads(self.features(x, task_ids, training))

    def distillation_loss(self, x):
        """Cross-entropy of the old network's softened outputs, summed over
        the old heads, averaged over the batch (0 on the first task)."""
        x, task_ids = self.unpack_inputs(x)
        mapping = [
            (v, old.value)
            for v, old in zip(
                self.trainable_variables, self.method_state["old_weights"]
            )
        ]
        with keras.StatelessScope(state_mapping=mapping):
            old_logits = self._all_heads(x, task_ids, training=False)
        old_logits = ops.stop_gradient(old_logits)
        new_logits = self._all_heads(x, task_ids, training=True)
        t = self.temperature
        targets = ops.softmax(old_logits / t, axis=-1)
        log_probs = ops.log_softmax(new_logits / t, axis=-1)
        per_head = -ops.mean(ops.sum(targets * log_probs, axis=-1), axis=0)
        heads = ops.shape(per_head)[0]
        if self.head_mode == "multi":
            old = ops.cast(ops.arange(heads) < self.task, per_head.dtype)
        else:
            old = ops.cast(self.task > 0, per_head.dtype) * ops.ones_like(
                per_head
            )
        return ops.sum(per_head * old)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        loss = super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
            training=training,
        )
        if not training or self.lwf_lambda == 0:
            return loss
        distill = self.distillation_loss(x)
        self._distill_tracker.update_state(distill)
        # Per-replica mean over the replica's batch, like the compiled loss:
        # divide by the replicas so that their sum is the global mean.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss + ops.cast(
            self.lwf_lambda * distill / replicas, loss.dtype
        )

    @property
    def metrics(self):
        return [*super().metrics, self._distill_tracker]

    def get_config(self):
        return {
            **super().get_config(),
            "lwf_lambda": self.lwf_lambda,
            "temperature": self.temperature,
        }
