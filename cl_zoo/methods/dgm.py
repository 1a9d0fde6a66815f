"""DGM: Dynamic Generative Memory (Ostapenko et al., 2019), DGMa variant.

A class-incremental learner with no stored data: an AC-GAN whose generator
remembers every class seen so far.

- The **generator** `G(class, z)` is a DCGAN made of `MaskedConv2DTranspose`
  layers: each task learns a binary mask over the generator's units (HAT's
  annealed sigmoid gates), weights of reserved units are frozen, and every
  layer grows after each task by the units the task newly reserved, so the
  free capacity stays constant (`cl_zoo.layers.masked`).
- The **discriminator** is the model's backbone (conv/conv/dense) with two
  heads: a WGAN-GP critic and the auxiliary classifier over all classes.
  The classifier learns from real data of the current task and from
  generated data of every earlier class (`replay_per_class` per class and
  step, each class weighing as much as a current one, and jittered by
  small random affine transforms), and it is what the model predicts
  with: a single head over the classes seen so far (task ids are
  ignored). On MNIST and SVHN the authors re-initialise the discriminator
  for every task; so do we.
- Both optimizers (Adam, beta_1 0.5) and the alternating critic and generator
  steps live in `train_step`, so `model.fit` trains the GAN.
- The run's network settings act on the discriminator: `--hidden_units`
  (may be empty: the heads then read the conv features), `--initializer`
  (its convolutions, dense layers, class head and critic, at the start and
  at every re-draw; the generator keeps its own initialization) and
  `--normalize` (inside `features`, so real, generated and interpolated
  images are normalized alike, and the generator still makes [0, 1]
  pixels). Its convolutions are DGM's whatever `--architecture` says
  (`mlp` or `lenet`); `resnet18` is refused (batch normalization has no
  place in a WGAN-GP critic, whose penalty is per example).

Distribution: every loss is a per-replica mean divided by the replica count
(the optimizers sum over replicas), the gradient gates are linear (they may
act before the all-reduce), and the noise of each step is drawn for the
global batch from a stateless seed (seed, step) and sliced per replica, so
one and two replicas take the same steps.
"""

from __future__ import annotations

import io
import math
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from keras import ops

from cl_zoo.augment import jitter
from cl_zoo.layers.initialization import DEFAULT_INITIALIZER
from cl_zoo.layers.masked import MaskedConv2DTranspose
from cl_zoo.methods.base import ContinualModel, reset_optimizer_slots
from cl_zoo.methods.registry import register
from cl_zoo.replicas import replica_share
from cl_zoo.rules import GradientRule, apply_rules
from cl_zoo.settings import ConfigError, Setting

# DGM's schedules of the gate scale s within a task (`--s_anneal`).
S_ANNEAL_SCHEDULES = ("step", "epoch")


def float_tuple(value):
    """A number, or a sequence of them, as a tuple of floats."""
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(v) for v in value)


class MaskGateRule(GradientRule):
    """HAT's gating of the generator's gradients (linear: each weight's
    gradient times its multiplier, see `MaskedConv2DTranspose`)."""

    linear = True
    name = "mask_gates"

    def __init__(self, variables, multipliers):
        self.multipliers = multipliers
        self._variables = [v for v in variables if id(v) in multipliers]

    def variables(self):
        return self._variables

    def rewrite(self, model, grads):
        return [
            g * ops.cast(self.multipliers[id(v)], g.dtype)
            for g, v in zip(grads, self._variables)
        ]


# The paper's lambda_G is 0.01 and its replay as many per class as the
# batch; lambda_G 0.1 with room to grow kept every class's generator intact
# (docs/RESULTS.md).
DGM_SETTINGS = (
    Setting("generator_units", (int,), (64, 32),
            "DGM: initial units (channels) of the generator's masked "
            "layers, from the projection to the last hidden layer; the "
            "image side must divide by 2**len. Growth keeps this much free "
            "capacity after every task.", minimum=1),
    Setting("generator_capacity", (float,), (8.0, 2.5),
            "DGM: units allocated per masked layer, as a multiple of its "
            "initial units: the room growth has. One number for every "
            "layer, or one per entry of --generator_units. A full layer "
            "stops growing (with a warning).", minimum=1,
            expected="numbers >= 1 (units allocated per initial unit): one "
            "for every masked layer, or one per entry of --generator_units"),
    Setting("noise_dim", int, 128, "DGM: size of the generator's noise z.",
            minimum=1),
    Setting("generator_batch_norm", bool, True,
            "DGM: batch normalization in the generator's masked layers, one "
            "set of scale, offset and statistics per task (the authors')."),
    Setting("s_max", float, 1e5,
            "DGM: final scale of the mask gates sigmoid(s * e); s is "
            "annealed linearly from 1/s_max (see --s_anneal).", minimum=1),
    Setting("s_anneal", str, "step",
            "DGM: how s grows within a task. step: linearly over the task's "
            "steps; epoch: the paper's per-epoch schedule, so the whole "
            "first epoch trains soft gates.", choices=S_ANNEAL_SCHEDULES),
    Setting("mask_lambda", float, 0.1,
            "DGM: weight lambda_G of the mask sparsity regularizer (the "
            "paper's 0.01 let the first tasks take nearly all free units).",
            minimum=0),
    Setting("gp_weight", float, 1.0,
            "DGM: weight of the WGAN-GP gradient penalty.", minimum=0),
    Setting("replay_per_class", int, 32,
            "DGM: generated examples of every earlier class per training "
            "step for the classifier (over all replicas). 0: as many as the "
            "batch size, the authors' balance.", minimum=0,
            expected="a non-negative integer (0: the batch size)"),
    Setting("replay_jitter", float, 1.0,
            "DGM: strength of a random affine jitter of the replayed "
            "examples the classifier learns from (at 1: shifts up to 8 % of "
            "the side, rotations up to 14.4 degrees, zooms up to 10 %). "
            "0: none (the authors').", minimum=0),
    Setting("balance_classes", bool, True,
            "DGM: every class seen weighs the same in the classifier's "
            "loss (without it the current class outweighs each replayed "
            "one, 2 to 1 at the defaults)."),
    Setting("classifier_dropout", float, 0.0,
            "DGM: dropout rate on the input of the classifier head, in the "
            "discriminator's step.", minimum=0, below=1,
            expected="a rate in [0, 1)"),
    Setting("reinit_discriminator", bool, True,
            "DGM: draw the discriminator (critic and classifier) afresh for "
            "each task, as the authors do on MNIST and SVHN."),
    Setting("classify_fakes", bool, False,
            "DGM: the classifier head also learns the current task's "
            "generated examples (AC-GAN's classifier loss)."),
)

_MASKED_LOGIT = -1e9
# Samples over which a finished task's batch-norm statistics are measured.
STATISTICS_SAMPLES = 1024


@keras.saving.register_keras_serializable(package="cl_zoo")
class DGMGenerator(keras.layers.Layer):
    """The conditional generator: (class, noise) -> image.

    A projection of `[z, one_hot(class)]` to `H/2^k x W/2^k x units[0]` by a
    transposed convolution (the authors replace DCGAN's dense projection by
    a convolution), then one stride-2 transposed convolution per further
    entry of `units`, then a stride-2 transposed convolution to the image's
    channels with a sigmoid. Every layer but the last is masked per task.

    Args:
        image_shape: `(H, W, C)`; H and W divisible by `2 ** len(units)`.
        num_classes: classes the generator is conditioned on.
        num_tasks: tasks (mask rows).
        units: initial units (free capacity) of the masked layers.
        capacity: units allocated per masked layer, as a multiple of its
            initial units (room to grow): one number for every layer, or
            one per entry of `units`.
        noise_dim: size of z.
    """

    def __init__(self, image_shape, num_classes, num_tasks, units=(64, 32),
                 capacity=3.0, noise_dim=128, batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.num_classes = int(num_classes)
        self.num_tasks = int(num_tasks)
        self.units = tuple(int(u) for u in units)
        self.capacity = float_tuple(capacity)
        self.noise_dim = int(noise_dim)
        self.batch_norm = bool(batch_norm)
        if len(self.image_shape) != 3:
            raise ValueError(
                "DGM generates images: expected image_shape (H, W, C). "
                f"Received: image_shape={image_shape!r}"
            )
        if not self.units or min(self.units) < 1:
            raise ValueError(
                f"Expected positive generator units. Received: units={units!r}"
            )
        if (len(self.capacity) not in (1, len(self.units))
                or not min(self.capacity) >= 1.0):
            raise ValueError(
                "Expected capacity >= 1 (a multiple of the initial units), "
                "one number or one per layer. "
                f"Received: capacity={capacity!r}"
            )
        if len(self.capacity) == 1:
            self.capacity = self.capacity * len(self.units)
        scale = 2 ** len(self.units)
        height, width, channels = self.image_shape
        if height % scale or width % scale or height != width:
            raise ValueError(
                f"DGM's generator needs square images whose side divides by "
                f"{scale} (2 ** number of generator layers); received image "
                f"shape {self.image_shape}"
            )
        self.masked_layers = []
        for i, n in enumerate(self.units):
            first = i == 0
            self.masked_layers.append(MaskedConv2DTranspose(
                n,
                self.num_tasks,
                kernel_size=height // scale if first else 4,
                strides=1 if first else 2,
                padding="valid" if first else "same",
                capacity=int(math.ceil(n * self.capacity[i])),
                activation="relu",
                batch_norm=self.batch_norm,
                name="project" if first else f"up_{i}",
            ))
        self.output_layer = MaskedConv2DTranspose(
            channels, self.num_tasks, kernel_size=4, strides=2,
            padding="same", masked=False, activation="sigmoid", name="image",
        )

    @property
    def layers_in_order(self):
        return [*self.masked_layers, self.output_layer]

    def build(self, input_shape=None):
        shape = (None, 1, 1, self.noise_dim + self.num_classes)
        for layer in self.layers_in_order:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, labels, noise, task_ids, current_task=-1, s=1.0,
             batch_stats=False, record=False):
        labels = ops.cast(labels, "int32")
        h = ops.concatenate(
            [noise, ops.one_hot(labels, self.num_classes, dtype=noise.dtype)],
            axis=-1,
        )
        h = ops.reshape(h, (-1, 1, 1, self.noise_dim + self.num_classes))
        # The masked layers pass on their active units only: the spare
        # ones are zeros, and leaving them out saves most of the work.
        for layer in self.masked_layers:
            h = layer(h, task_ids, current_task=current_task, s=s,
                      batch_stats=batch_stats, record=record, compact=True)
        return self.output_layer(h, task_ids)

    def gradient_multipliers(self, s, s_max):
        rules, previous = {}, None
        for layer in self.layers_in_order:
            rules.update(layer.gradient_multipliers(previous, s, s_max))
            previous = getattr(layer, "cumulative", None)
        return rules

    def sparsity(self, task, s):
        """Share of the free units the task's gates take (DGM's R_t)."""
        taken, free = 0.0, 0.0
        for layer in self.masked_layers:
            a, b = layer.sparsity_terms(task, s)
            taken, free = taken + a, free + b
        return taken / ops.maximum(free, 1.0)

    def get_config(self):
        return {
            **super().get_config(),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "num_tasks": self.num_tasks,
            "units": list(self.units),
            "capacity": list(self.capacity),
            "noise_dim": self.noise_dim,
            "batch_norm": self.batch_norm,
        }


@register("dgm")
class DGM(ContinualModel):
    """Dynamic Generative Memory: see the module docstring.

    Args:
        generator_units: initial units of the generator's masked layers.
        generator_capacity: units allocated per masked layer, as a multiple
            of its initial units (one number, or one per layer); growth
            past it is refused with a warning (the free capacity then
            shrinks).
        noise_dim: size of the generator's noise.
        generator_batch_norm: per-task batch normalization in the
            generator's masked layers (the authors').
        s_max: final scale of the mask gates.
        s_anneal: "step" (s linear in the task's steps) or "epoch" (the
            paper's: s constant within an epoch, `1/s_max + (s_max -
            1/s_max) * i / I` in the task's epoch i of I).
        mask_lambda: weight of the sparsity regularizer (lambda_G).
        gp_weight: weight of the WGAN-GP gradient penalty.
        replay_per_class: generated examples per earlier class and step
            (0: the batch size, the authors' balance).
        replay_jitter: strength of a random affine jitter (shift, rotation,
            zoom; see `jitter`) of the replayed examples the classifier
            learns from (0: none, the authors').
        classifier_dropout: dropout rate on the classifier head's input
            in the discriminator's step (the critic's input is left
            whole).
        balance_classes: weigh every class equally in the classifier's
            loss (see `_current_weight`); without it, each current class
            weighs batch / replay_per_class times a replayed class.
        reinit_discriminator: draw the discriminator afresh for each task.
        classify_fakes: the classifier also learns the current task's
            generated examples (AC-GAN's loss; the DGM paper names real
            current and generated past examples only).
        seed: seed of the noise and of the discriminator's re-draws.
    """

    SETTINGS = DGM_SETTINGS
    # The GAN's step has its own losses: a penalty would never be applied.
    takes_consolidation = False

    @classmethod
    def dense_network(cls, config):
        return False  # transposed convolutions and a convolutional critic

    @classmethod
    def check_config(cls, values):
        units, capacity = values["generator_units"], values[
            "generator_capacity"]
        if len(capacity) not in (1, len(units)):
            raise ConfigError(
                f"--generator_capacity={','.join(map(str, capacity))} is "
                "not allowed: expected one number for every masked layer, "
                "or one per entry of --generator_units."
            )
        if values["head"] != "single":
            raise ConfigError(
                f"--head={values['head']} is not allowed with --method=dgm: "
                "DGM is class-incremental, with one head over all classes."
            )
        if values["architecture"] == "resnet18":
            raise ConfigError(
                "--architecture=resnet18 is not allowed with --method=dgm: "
                "its discriminator is DGM's own conv stack (a WGAN-GP critic "
                "takes no batch normalization); use mlp or lenet."
            )

    @classmethod
    def default_config(cls, benchmark):
        del benchmark
        # The authors' Adam lr is 2e-3 (with ~100 epochs per task on a GPU);
        # with 10 epochs a quarter of it gave A10 94.96 % against 87.03 %
        # on class-incremental MNIST (docs/RESULTS.md).
        return {
            "optimizer": "adam",
            "lr": 5e-4,
            "adam_beta1": 0.5,
            "batch_size": 64,
            "epochs": 10,
            "head": "single",
            "hidden_units": (256,),
            "activation": "leaky_relu",
        }

    @classmethod
    def fast_config(cls, benchmark):
        """`--fast`: 2 epochs per task and a lighter replay (about 11
        minutes of training on class-incremental MNIST with 2 CPU cores)."""
        del benchmark
        return {"epochs": 2, "replay_per_class": 16}

    @classmethod
    def init_args_from_config(cls, config):
        return {
            "generator_units": config.generator_units,
            "generator_capacity": config.generator_capacity,
            "noise_dim": config.noise_dim,
            "generator_batch_norm": config.generator_batch_norm,
            "s_max": config.s_max,
            "s_anneal": config.s_anneal,
            "mask_lambda": config.mask_lambda,
            "gp_weight": config.gp_weight,
            "replay_per_class": config.replay_per_class,
            "replay_jitter": config.replay_jitter,
            "balance_classes": config.balance_classes,
            "classifier_dropout": config.classifier_dropout,
            "reinit_discriminator": config.reinit_discriminator,
            "classify_fakes": config.classify_fakes,
            "seed": config.seed,
            "epochs_per_task": config.epochs,
        }

    def __init__(
        self,
        *args,
        generator_units=(64, 32),
        generator_capacity=(8.0, 2.5),
        noise_dim=128,
        generator_batch_norm=True,
        s_max=1e5,
        s_anneal="step",
        mask_lambda=0.1,
        gp_weight=1.0,
        replay_per_class=32,
        replay_jitter=1.0,
        balance_classes=True,
        classifier_dropout=0.0,
        reinit_discriminator=True,
        classify_fakes=False,
        seed=0,
        epochs_per_task=1,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if self.architecture == "resnet18":
            raise ValueError(
                "DGM's discriminator is its own conv stack: "
                "architecture='resnet18' does not apply (a WGAN-GP critic "
                "takes no batch normalization). Received: "
                f"architecture={self.architecture!r}"
            )
        if self.head_mode != "single":
            raise ValueError(
                "DGM is class-incremental: it needs one head over all "
                f"classes (head='single'). Received: head={self.head_mode!r}"
            )
        if len(self.example_shape) != 3:
            raise ValueError(
                "DGM needs image inputs of shape (H, W, C). Received: "
                f"input_shape={self.example_shape}"
            )
        for name, value in (("s_max", s_max), ("noise_dim", noise_dim)):
            if not value >= 1:
                raise ValueError(
                    f"Expected `{name}` >= 1. Received: {name}={value!r}"
                )
        for name, value in (("mask_lambda", mask_lambda),
                            ("gp_weight", gp_weight),
                            ("replay_jitter", replay_jitter),
                            ("replay_per_class", replay_per_class)):
            if not value >= 0:
                raise ValueError(
                    f"Expected a non-negative `{name}`. "
                    f"Received: {name}={value!r}"
                )
        self.generator_units = tuple(int(u) for u in generator_units)
        self.generator_capacity = float_tuple(generator_capacity)
        self.noise_dim = int(noise_dim)
        self.generator_batch_norm = bool(generator_batch_norm)
        if s_anneal not in S_ANNEAL_SCHEDULES:
            raise ValueError(
                f"Expected s_anneal in {S_ANNEAL_SCHEDULES}. Received: "
                f"s_anneal={s_anneal!r}"
            )
        self.s_max = float(s_max)
        self.s_anneal = s_anneal
        self.mask_lambda = float(mask_lambda)
        self.gp_weight = float(gp_weight)
        self.replay_per_class = int(replay_per_class)
        self.replay_jitter = float(replay_jitter)
        self.balance_classes = bool(balance_classes)
        if not 0.0 <= classifier_dropout < 1.0:
            raise ValueError(
                "Expected a classifier_dropout rate in [0, 1). Received: "
                f"classifier_dropout={classifier_dropout!r}"
            )
        self.classifier_dropout = float(classifier_dropout)
        self.reinit_discriminator = bool(reinit_discriminator)
        self.classify_fakes = bool(classify_fakes)
        self.seed = int(seed)
        # For the annealing of s over the task's steps.
        self.epochs_per_task = int(epochs_per_task)

        self.generator = DGMGenerator(
            self.example_shape, self.num_classes, self.num_tasks,
            units=self.generator_units, capacity=self.generator_capacity,
            noise_dim=self.noise_dim, batch_norm=self.generator_batch_norm,
            name="generator",
        )
        self.critic = keras.layers.Dense(1, name="critic")
        # Task of each class (-1: in no task), a constant of the graph.
        class_task = np.full(self.num_classes, -1, np.int32)
        for t, classes in enumerate(self.task_classes):
            class_task[classes] = t
        self._class_task = class_task
        # 1.0 for the classes of the tasks begun so far: the classifier's
        # output space (every class before the first task, so that the
        # untrained model's accuracy is a guess's, not class 0's).
        self.seen = keras.Variable(
            np.ones(self.num_classes, np.float32), trainable=False,
            name="seen_classes",
        )
        # The optimizer step at which the task began, and the steps of an
        # epoch: the gate scale s is annealed over the task's
        # `epochs_per_task` epochs.
        self.task_start = keras.Variable(
            0, dtype="int64", trainable=False, name="task_start"
        )
        self.steps_per_epoch = keras.Variable(
            1.0, trainable=False, name="steps_per_epoch"
        )
        # Weight of the sparsity term: network size / free units.
        self.reg_weight = keras.Variable(
            1.0, trainable=False, name="reg_weight"
        )
        self.tasks_done = keras.Variable(
            0, dtype="int32", trainable=False, name="tasks_done"
        )
        self.generator_optimizer = None
        self._trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("d_loss", "g_loss", "wasserstein", "gp",
                         "class_loss", "mask_reg", "accuracy", "s")
        }

    # ------------------------------------------------------------------
    # Construction.
    def make_feature_layers(self):
        """The discriminator's convolutions (DCGAN, leaky ReLU), whatever
        the architecture (`"mlp"` and `"lenet"` both give these)."""
        return [
            keras.layers.Conv2D(64, 4, strides=2, padding="same",
                                activation="leaky_relu", name="conv1"),
            keras.layers.Conv2D(128, 4, strides=2, padding="same",
                                activation="leaky_relu", name="conv2"),
            keras.layers.Flatten(name="flatten"),
        ]

    def build(self, input_shape=None):
        # The discriminator's layers, both heads and the generator (Keras
        # would otherwise build only what `call` reaches).
        del input_shape
        h = self.features(ops.zeros((1, *self.example_shape)),
                          ops.zeros((1,), "int32"))
        self.classify(h)
        self.critic(h)
        self.generator.build()
        self.built = True

    def compile(self, optimizer="adam", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        # The generator's optimizer: the same kind and settings.
        self.generator_optimizer = self.optimizer.__class__.from_config(
            self.optimizer.get_config()
        )

    def backbone_layers(self):
        """The discriminator: its body, the class head and the critic
        (`initializer` draws these; the generator keeps its own)."""
        return [*super().backbone_layers(), self.critic]

    def discriminator_variables(self):
        layers = [*self.feature_layers, *self.hidden_layers, self.head,
                  self.critic]
        return [v for layer in layers for v in layer.trainable_variables]

    def generator_variables(self):
        return list(self.generator.trainable_variables)

    def optimizer_variables(self):
        return self.discriminator_variables()

    def extra_optimizers(self):
        return [self.generator_optimizer] if self.generator_optimizer else []

    def build_optimizers(self):
        super().build_optimizers()
        if not self.generator_optimizer.built:
            self.generator_optimizer.build(self.generator_variables())

    def inference_variables(self):
        """The classifier: the discriminator's body and class head."""
        layers = [*self.feature_layers, *self.hidden_layers, self.head]
        return [v for layer in layers for v in layer.variables] + [self.seen]

    # ------------------------------------------------------------------
    # Forward pass.
    def classify(self, h):
        logits = self.head(h, ops.zeros((ops.shape(h)[0],), "int32"))
        return ops.where(self.seen[None, :] > 0, logits, _MASKED_LOGIT)

    def call(self, inputs, training=False):
        x, task_ids = self.unpack_inputs(inputs)
        return self.classify(self.features(x, task_ids, training))

    def generate(self, labels, noise, current_task=-1, s=None,
                 batch_stats=False, record=False):
        """Images of classes `labels`, each with its task's mask.

        `current_task` and `s`: the task trained (soft gates at scale s);
        `batch_stats`: batch normalization with the batch's statistics (a
        batch of the current task); `record`: store them (see
        `cl_zoo.layers.masked`).
        """
        labels = ops.cast(labels, "int32")
        task_ids = ops.take(ops.convert_to_tensor(self._class_task), labels)
        return self.generator(
            labels, noise, task_ids, current_task=current_task,
            s=self.s_max if s is None else s, batch_stats=batch_stats,
            record=record,
        )

    # ------------------------------------------------------------------
    # Training.
    @property
    def metrics(self):
        return list(self._trackers.values())

    def gate_scale(self):
        """s, from 1/s_max to s_max: linear in the task's steps, or (the
        paper's) in its epochs, constant within each."""
        step = ops.cast(self.optimizer.iterations - self.task_start, "float32")
        if self.s_anneal == "epoch":
            epoch = ops.floor(step / ops.maximum(self.steps_per_epoch, 1.0))
            progress = ops.minimum(epoch / max(self.epochs_per_task, 1), 1.0)
        else:
            steps = self.steps_per_epoch * self.epochs_per_task
            progress = ops.minimum(step / ops.maximum(steps - 1, 1), 1.0)
        low = 1.0 / self.s_max
        return low + (self.s_max - low) * progress

    def _noise(self, local_n, dim, salt, kind="normal"):
        """Noise for this replica's share of a global draw.

        The global draw depends on (seed, salt, step) only, so the steps of
        one replica and of several are the same.
        """
        replicas, rid = _replica()
        seed = tf.stack([
            tf.constant(self.seed * 1009 + salt, tf.int64),
            ops.cast(self.optimizer.iterations, "int64"),
        ])
        shape = tf.stack([local_n * replicas, dim])
        if kind == "normal":
            draw = tf.random.stateless_normal(shape, seed)
        else:
            draw = tf.random.stateless_uniform(shape, seed)
        start = rid * local_n
        return draw[start:start + local_n]

    def _replay_labels(self, local_batch):
        """Labels of this replica's share of the replayed examples."""
        replicas, rid = _replica()
        class_task = ops.convert_to_tensor(self._class_task)
        past = tf.where((class_task >= 0) & (class_task < self.task))[:, 0]
        per_class = self.replay_per_class or local_batch * replicas
        labels = tf.repeat(ops.cast(past, "int32"), per_class)
        local_n = tf.size(labels) // replicas
        start = rid * local_n
        return labels[start:start + local_n], local_n

    def _current_weight(self, local_batch):
        """Weight of a current-task example in the classifier's loss.

        With `balance_classes`, every current class weighs as much as a
        replayed one (`replay_per_class` examples per step): the current
        classes share the batch, so each of their examples counts
        `per_class * classes / batch`. Otherwise 1.
        """
        if not self.balance_classes:
            return 1.0
        replicas, _ = _replica()
        global_batch = ops.cast(local_batch * replicas, "float32")
        per_class = (float(self.replay_per_class) if self.replay_per_class
                     else global_batch)
        class_task = ops.convert_to_tensor(self._class_task)
        current = ops.sum(ops.cast(class_task == self.task, "float32"))
        return per_class * current / global_batch

    def _head_dropout(self, h, salt):
        """Dropout of the classifier head's input (not the critic's), with
        masks from the step's global draw (see `_noise`)."""
        if not self.classifier_dropout:
            return h
        rate = self.classifier_dropout
        keep = self._noise(ops.shape(h)[0], h.shape[-1], salt, "uniform")
        return ops.where(keep >= rate, h / (1.0 - rate), 0.0)

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, dict):
            x = x["x"]
        x = ops.cast(x, "float32")
        y = ops.cast(ops.reshape(y, (-1,)), "int32")
        batch = tf.shape(x)[0]
        s = self.gate_scale()
        task = self.task
        unused = ops.zeros((batch,), "int32")

        # Critic and classifier.
        fake = self.generate(y, self._noise(batch, self.noise_dim, 1),
                             task, s, batch_stats=True)
        replay_y, replay_n = self._replay_labels(batch)
        replay = self.generate(
            replay_y, self._noise(replay_n, self.noise_dim, 2)
        )
        if self.replay_jitter > 0:
            replay = jitter(replay, self._noise(replay_n, 4, 5, "uniform"),
                            self.replay_jitter)
        fake, replay = ops.stop_gradient(fake), ops.stop_gradient(replay)
        mix = self._noise(batch, 1, 3, kind="uniform")[:, :, None, None]
        x_hat = mix * x + (1.0 - mix) * fake
        with tf.GradientTape() as tape:
            h = self.features(ops.concatenate([x, fake, replay], axis=0),
                              ops.zeros((2 * batch + replay_n,), "int32"),
                              training=True)
            h_real, h_fake = h[:batch], h[batch:2 * batch]
            h_replay = h[2 * batch:]
            wasserstein = (ops.mean(self.critic(h_fake))
                           - ops.mean(self.critic(h_real)))
            with tf.GradientTape() as inner:
                inner.watch(x_hat)
                critic_hat = self.critic(self.features(x_hat, unused,
                                                       training=True))
            slopes = inner.gradient(critic_hat, x_hat)
            norms = ops.sqrt(ops.sum(ops.square(slopes), axis=(1, 2, 3))
                             + 1e-12)
            gp = ops.mean(ops.square(norms - 1.0))
            logits_real = self.classify(self._head_dropout(h_real, 6))
            logits_replay = self.classify(self._head_dropout(h_replay, 7))
            weight = self._current_weight(batch)
            class_loss = (weight * _summed_cross_entropy(y, logits_real)
                          + _summed_cross_entropy(replay_y, logits_replay))
            count = weight * ops.cast(batch, "float32") + ops.cast(
                replay_n, "float32")
            if self.classify_fakes:
                # AC-GAN's classifier loss on the current task's fakes too:
                # otherwise "real-looking" alone marks the current class.
                class_loss += weight * _summed_cross_entropy(
                    y, self.classify(self._head_dropout(h_fake, 8)))
                count += weight * ops.cast(batch, "float32")
            class_loss = class_loss / count
            d_loss = wasserstein + self.gp_weight * gp + class_loss
            scaled = replica_share(d_loss)
        d_vars = self.discriminator_variables()
        grads = tape.gradient(scaled, d_vars)
        self.optimizer.apply(grads, d_vars)

        # Generator: fool the critic, be classified as its class, and take
        # few free units.
        with tf.GradientTape() as tape:
            fake = self.generate(y, self._noise(batch, self.noise_dim, 4),
                                 task, s, batch_stats=True)
            h = self.features(fake, unused, training=True)
            adversarial = -ops.mean(self.critic(h))
            auxiliary = ops.mean(keras.losses.sparse_categorical_crossentropy(
                y, self.classify(h), from_logits=True))
            mask_reg = self.reg_weight * self.generator.sparsity(task, s)
            g_loss = adversarial + auxiliary + self.mask_lambda * mask_reg
            scaled = replica_share(g_loss)
        g_vars = self.generator_variables()
        grads = tape.gradient(scaled, g_vars)
        gates = MaskGateRule(
            g_vars, self.generator.gradient_multipliers(s, self.s_max))
        grads = apply_rules(self, [gates], grads, g_vars)
        self.generator_optimizer.apply(grads, g_vars)

        predicted = ops.cast(ops.argmax(logits_real, axis=-1), "int32")
        accuracy = ops.mean(ops.cast(ops.equal(predicted, y), "float32"))
        values = {
            "d_loss": d_loss, "g_loss": g_loss, "wasserstein": wasserstein,
            "gp": gp, "class_loss": class_loss, "mask_reg": mask_reg,
            "accuracy": accuracy, "s": s,
        }
        for name, value in values.items():
            self._trackers[name].update_state(value)
        return {name: t.result() for name, t in self._trackers.items()}

    # ------------------------------------------------------------------
    # Task hooks.
    def begin_task(self, task, benchmark=None):
        super().begin_task(task, benchmark)
        reset_optimizer_slots(self.generator_optimizer)
        if self.reinit_discriminator and task > 0:
            self._redraw_discriminator(task)
        seen = np.zeros(self.num_classes, np.float32)
        for t in range(task + 1):
            seen[self.task_classes[t]] = 1.0
        self.seen.assign(seen)
        if self.optimizer is not None:
            self.task_start.assign(self.optimizer.iterations)
        self.generator.output_layer.start_task(task)
        size, free = 0, 0
        for layer in self.generator.masked_layers:
            layer.start_task(task)
            active = int(layer.active.numpy())
            size += active
            free += active - int(layer.cumulative.numpy()[:active].sum())
        self.reg_weight.assign(size / max(free, 1))

    def _redraw_discriminator(self, task):
        """Fresh Glorot kernels and zero biases for the discriminator (or
        a fresh draw of the `initializer` scheme)."""
        if self.initializer != DEFAULT_INITIALIZER:
            self.initialize_weights(seed=self.seed * 7919 + task * 131)
            return
        for i, var in enumerate(self.discriminator_variables()):
            if len(var.shape) == 1:
                var.assign(ops.zeros(var.shape))
            else:
                init = keras.initializers.GlorotUniform(
                    seed=self.seed * 7919 + task * 131 + i
                )
                var.assign(init(var.shape))

    def train_dataset(self, task, benchmark, batch_size, seed=0):
        dataset = super().train_dataset(task, benchmark, batch_size, seed)
        steps = int(dataset.cardinality())
        if steps > 0:
            self.steps_per_epoch.assign(float(steps))
        return dataset

    def end_task(self, task, benchmark=None):
        """Binarises the task's masks, then grows every masked layer."""
        super().end_task(task, benchmark)
        last = task == self.num_tasks - 1
        reserved = [layer.finish_task(task)
                    for layer in self.generator.masked_layers]
        if self.generator_batch_norm:
            # The task's batch-norm statistics, over 1024 samples drawn with
            # its final (binary) masks.
            classes = np.asarray(self.task_classes[task], np.int32)
            labels = np.resize(classes, STATISTICS_SAMPLES)
            noise = tf.random.stateless_normal(
                (STATISTICS_SAMPLES, self.noise_dim),
                seed=[self.seed * 1009 + 5, task],
            )
            self.generate(labels, noise, record=True)
        for layer, newly in zip(self.generator.masked_layers, reserved):
            granted = 0 if last else layer.grow(newly)
            if granted < newly and not last:
                logging.warning(
                    "DGM: layer %s is full (capacity %d): grew by %d of %d "
                    "units; raise --generator_capacity to keep the free "
                    "capacity constant.",
                    layer.name, layer.capacity, granted, newly,
                )
        self.tasks_done.assign(task + 1)

    @property
    def growth_log(self):
        """Per finished task and masked layer: units in use, free, reused,
        newly reserved, and grown after it (from the layers' state, so a
        resumed run reports every task)."""
        done = int(self.tasks_done.numpy())
        log = []
        for task in range(done):
            layers = {}
            for layer in self.generator.masked_layers:
                counts = layer.unit_counts(task)
                after = (int(layer.sizes.numpy()[task + 1])
                         if task + 1 < done else int(layer.active.numpy()))
                counts["grown"] = after - counts["size"]
                layers[layer.name] = counts
            log.append({"task": task, "layers": layers})
        return log

    # ------------------------------------------------------------------
    # Inspection, export and results.
    def sample_grid(self, classes, per_class=8, seed=0):
        """A uint8 image grid: one row of `per_class` samples per class."""
        labels = np.repeat(np.asarray(classes, np.int32), per_class)
        noise = tf.random.stateless_normal(
            (len(labels), self.noise_dim), seed=[seed, 0]
        )
        images = self.generate(labels, noise).numpy()
        h, w, c = self.example_shape
        grid = images.reshape(len(classes), per_class, h, w, c)
        grid = grid.transpose(0, 2, 1, 3, 4).reshape(
            len(classes) * h, per_class * w, c
        )
        return (np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)

    def log_task_summaries(self, task, step, model_dir):
        """Called by the trainer inside its writer: samples, units, masks."""
        classes = [c for t in range(task + 1) for c in self.task_classes[t]]
        grid = self.sample_grid(classes, seed=self.seed)
        tf.summary.image("generated/samples", grid[None], step=step)
        png = tf.io.encode_png(grid).numpy()
        with open(os.path.join(model_dir, f"generated_task{task + 1}.png"),
                  "wb") as f:
            f.write(png)
        growth_log = self.growth_log  # Fig. 6 of the paper
        for name, counts in growth_log[task]["layers"].items():
            for key in ("free", "reused", "new"):
                tf.summary.scalar(f"units/{name}/{key}", counts[key],
                                  step=step)
        for layer in self.generator.masked_layers:
            active = int(layer.active.numpy())
            e = layer.embedding[task][:active]
            tf.summary.histogram(f"mask_embedding/{layer.name}", e, step=step)
            tf.summary.histogram(
                f"mask_gate/{layer.name}", ops.sigmoid(self.s_max * e),
                step=step,
            )
        png = _unit_counts_png(growth_log)
        if png is not None:
            with open(os.path.join(model_dir, "dgm_units.png"), "wb") as f:
                f.write(png)
            tf.summary.image("units/counts",
                             tf.image.decode_png(png, channels=4)[None],
                             step=step)

    def extra_results(self, matrix, benchmark):
        """`a5` and `a10`: accuracy over the first 5 / 10 tasks' classes
        right after task 5 / 10 (weighted by test examples)."""
        out = {}
        sizes = [benchmark.test_size(t) for t in range(benchmark.num_tasks)]
        for k in (5, 10):
            if len(matrix) >= k:
                row = matrix[k - 1]
                out[f"a{k}"] = float(
                    sum(row[j] * sizes[j] for j in range(k))
                    / sum(sizes[:k])
                )
        out["generator_units"] = {
            layer.name: int(layer.active.numpy())
            for layer in self.generator.masked_layers
        }
        out["unit_counts"] = self.growth_log
        return out

    def export_extras(self, export_dir, save):
        """`export_dir/generator/`: images from (class, noise)."""
        module = tf.Module()
        module.generator_variables = [v.value for v in
                                      self.generator.variables]
        num_classes, noise_dim = self.num_classes, self.noise_dim
        trained = ops.convert_to_tensor(self.seen.numpy())

        @tf.function(input_signature=[
            tf.TensorSpec((None,), tf.int32, name="label"),
            tf.TensorSpec((None, noise_dim), tf.float32, name="noise"),
        ])
        def serve(label, noise):
            message = (f"label must be a class the generator learned "
                       f"(0 <= label < {num_classes}, seen in training)")
            checks = [
                tf.debugging.assert_non_negative(label, message=message),
                tf.debugging.assert_less(label, num_classes, message=message),
                tf.debugging.assert_equal(
                    tf.shape(label)[0], tf.shape(noise)[0],
                    message="label and noise need the same batch size"),
            ]
            with tf.control_dependencies(checks):
                ok = tf.debugging.assert_positive(
                    tf.gather(trained, tf.clip_by_value(
                        label, 0, num_classes - 1)),
                    message=message,
                )
            with tf.control_dependencies([ok]):
                return {"images": self.generate(label, noise)}

        module.serve = serve
        save(module, os.path.join(export_dir, "generator"),
             {"serving_default": serve})

    def storage_bytes_per_task(self):
        """Per task: one mask row per masked layer, one output bias row."""
        return sum(layer.per_task_bytes()
                   for layer in self.generator.layers_in_order)

    def get_config(self):
        return {
            **super().get_config(),
            "generator_units": list(self.generator_units),
            "generator_capacity": list(self.generator_capacity),
            "noise_dim": self.noise_dim,
            "generator_batch_norm": self.generator_batch_norm,
            "s_max": self.s_max,
            "s_anneal": self.s_anneal,
            "mask_lambda": self.mask_lambda,
            "gp_weight": self.gp_weight,
            "replay_per_class": self.replay_per_class,
            "replay_jitter": self.replay_jitter,
            "balance_classes": self.balance_classes,
            "classifier_dropout": self.classifier_dropout,
            "reinit_discriminator": self.reinit_discriminator,
            "classify_fakes": self.classify_fakes,
            "seed": self.seed,
            "epochs_per_task": self.epochs_per_task,
        }


def _replica():
    """(replicas in sync, this replica's index as an int32 tensor)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return 1, tf.constant(0, tf.int32)
    rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    return ctx.num_replicas_in_sync, rid


def _summed_cross_entropy(labels, logits):
    return ops.sum(keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True))


def _unit_counts_png(growth_log):
    """Stacked bars of reused / new / still free units per layer and task."""
    if not growth_log:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(growth_log[0]["layers"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2),
                             squeeze=False)
    for ax, name in zip(axes[0], names):
        tasks = [e["task"] + 1 for e in growth_log]
        rows = [e["layers"][name] for e in growth_log]
        reused = np.array([r["reused"] for r in rows])
        new = np.array([r["new"] for r in rows])
        left = np.array([r["free"] - r["new"] for r in rows])
        ax.bar(tasks, reused, label="reused", color="tab:blue")
        ax.bar(tasks, new, bottom=reused, label="newly reserved",
               color="tab:orange")
        ax.bar(tasks, left, bottom=reused + new, label="free, unused",
               color="lightgray")
        ax.set_title(f"generator layer {name}")
        ax.set_xlabel("task")
        ax.set_ylabel("units")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
