"""The continual learner every method of the zoo extends.

`ContinualModel` is a `keras.Model` with:

- an active task held in a `keras.Variable` (`model.task`), so that
  `model.task.assign(t)` between fits switches task without retracing; inputs
  may also carry a task id per example (`{"x": x, "task": ids}`);
- a backbone (an MLP; LeNet's conv/pool stack or GEM's reduced ResNet-18
  followed by dense layers) whose dense layers are made by
  `make_hidden_layer`, which methods override to put in their own layers
  (bias units, memory units...); an optional input normalization inside
  the model, and an initialization scheme for the backbone's weights;
- a head over all classes (`head="single"`), one per task (`"multi"`), or
  one as wide as the widest task shared by all tasks (`"shared"`);
- begin-task / end-task hooks (`begin_task`, `end_task`) for what a method
  does between tasks (consolidation state, freezing, new tables);
- a place for consolidation penalties (`compute_loss`, through a pluggable
  `Consolidation` object) and one for gradient rules (`transform_gradients`,
  between `tape.gradient` and `optimizer.apply` in `train_step`).

Users call `model.fit` task after task:

    model.begin_task(0, benchmark)
    model.fit(benchmark.train_dataset(0, 128), epochs=5)
    model.end_task(0, benchmark)
"""

from __future__ import annotations

import random

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from cl_zoo.layers.heads import HEAD_MODES, TaskHead
from cl_zoo.layers.initialization import (
    DEFAULT_INITIALIZER,
    check_initializer,
    reinitialize,
)
from cl_zoo.layers.resnet import resnet18_layers
from cl_zoo.replicas import num_replicas, replica_share
from cl_zoo.rules import FreezeRule, apply_rules
from cl_zoo.settings import ConfigError

ARCHITECTURES = ("mlp", "lenet", "resnet18")


def check_choice(name, value, allowed):
    """Raises a Keras-style ValueError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(
            f"Expected `{name}` in {tuple(allowed)}. "
            f"Received: {name}={value!r}"
        )
    return value


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"Expected a positive integer for `{name}`. "
            f"Received: {name}={value!r}"
        )


def check_normalization(normalization, example_shape):
    """`None`, or `(mean, std)` as two lists of floats of one length: one
    value per channel for images `(H, W, C)`, or a single value."""
    if normalization is None:
        return None
    try:
        mean, std = normalization
        mean = [float(v) for v in np.ravel(mean)]
        std = [float(v) for v in np.ravel(std)]
    except (TypeError, ValueError):
        mean = std = None
    channels = {1}
    if len(example_shape) == 3:
        channels.add(int(example_shape[-1]))
    if (mean is None or len(mean) != len(std) or len(mean) not in channels
            or not all(np.isfinite(mean + std)) or min(std) <= 0):
        raise ValueError(
            "Expected `normalization` as (mean, std): lists of "
            f"{' or '.join(map(str, sorted(channels)))} finite values, "
            "std > 0. Received: "
            f"normalization={normalization!r}"
        )
    return [mean, std]


def reset_optimizer_slots(optimizer):
    """Zeroes an optimizer's slots (momentum, Adam moments), keeping its
    step count and learning rate; a no-op before it is built."""
    if optimizer is None or not optimizer.built:
        return
    keep = {id(optimizer.iterations)}
    lr = getattr(optimizer, "_learning_rate", None)
    if isinstance(lr, keras.Variable):
        keep.add(id(lr))
    for var in optimizer.variables:
        if id(var) not in keep:
            var.assign(ops.zeros_like(var))


class MethodState:
    """Variables a method keeps between tasks that inference never reads.

    LwF's copy of the previous network, GEM's episodic memory: the run's
    checkpoints hold them (`RunCheckpoint`), exports and `num_params` leave
    them out. A plain object, so Keras does not track its variables as
    weights of the model (keep them here, not in attributes of the model).
    Groups of variables are read back by key: `model.method_state["old"]`.
    """

    def __init__(self):
        self.groups = {}

    def add(self, key, shapes, dtype="float32", initializer="zeros"):
        """A list of non-trainable variables, one per shape, under `key`."""
        if key in self.groups:
            raise ValueError(f"Method state {key!r} exists already.")
        self.groups[key] = [
            keras.Variable(
                initializer=initializer,
                shape=shape,
                dtype=dtype,
                trainable=False,
                name=f"{key}_{i}",
            )
            for i, shape in enumerate(shapes)
        ]
        return self.groups[key]

    def __getitem__(self, key):
        return self.groups[key]

    @property
    def variables(self):
        return [v for vs in self.groups.values() for v in vs]

    @property
    def built(self):
        return bool(self.groups)


@keras.saving.register_keras_serializable(package="cl_zoo")
class ContinualModel(keras.Model):
    """A classifier trained on a sequence of tasks.

    Args:
        input_shape: shape of one example, e.g. `(28, 28, 1)`.
        num_classes: classes of the whole benchmark (the single head's width).
        task_classes: global class ids of each task; its length is the
            number of tasks.
        head: `"single"` (one head over all classes; labels are global class
            ids), `"multi"` (one head per task; labels index
            `task_classes[t]`) or `"shared"` (one head of the widest task's
            width shared by all tasks; labels index `task_classes[t]`).
        hidden_units: widths of the dense hidden layers.
            May be empty: the head then reads the backbone's features.
        architecture: `"mlp"`, `"lenet"` (two conv/pool blocks before the
            dense layers) or `"resnet18"` (GEM's reduced ResNet-18, see
            `cl_zoo.layers.resnet`, its globally pooled features before the
            dense layers).
        activation: activation of the hidden layers.
        dropout: dropout rate after every hidden layer while training.
        resnet_width: channels of the first stage of `"resnet18"` (GEM's
            `nf`, 20).
        initializer: scheme of the backbone's kernels and biases (hidden
            layers, convolutions, head): `"glorot_uniform"` (the layers'
            own), `"he_uniform"` or `"torch_default"`; see
            `cl_zoo.layers.initialization`. Applied by `build_for_inputs`.
        normalization: `None`, or `(mean, std)` per channel (images) or
            single values: inputs become `(x - mean) / std` first thing in
            `features`, so that the model (and its exports) still take
            float32 pixels in [0, 1].
        consolidation: optional `Consolidation` whose penalty is added to the
            loss during training. Not serialized: it is training state.

    Call arguments:
        inputs: a batch of examples, or a dict `{"x": batch, "task": ids}`
            with an int32 task id per example (or one for the whole batch).
            Without ids the batch belongs to `model.task`. Inputs are
            float32; integer inputs are cast as they are (not scaled),
            strings are a TypeError, a wrong shape a ValueError. Called
            eagerly, non-finite inputs and task ids out of range are a
            ValueError / IndexError; `predict` checks them too.
        training: whether the call is part of a training step.
    """

    method_name = "base"
    # The settings this class reads beyond the run's generic ones
    # (`cl_zoo.settings.Setting`); subclasses add theirs, see `settings()`.
    SETTINGS = ()
    # False for methods whose train step applies no consolidation penalty
    # (DGM): `--consolidation` is then refused.
    takes_consolidation = True

    @classmethod
    def settings(cls):
        """The settings of this method: its class's and its bases'."""
        out = {}
        for klass in reversed(cls.__mro__):
            for setting in vars(klass).get("SETTINGS", ()):
                out[setting.name] = setting
        return tuple(out.values())

    @classmethod
    def default_config(cls, benchmark):
        """This method's values for `benchmark`: of its own settings, of
        its consolidation's and of the run's generic ones."""
        del benchmark
        return {}

    @classmethod
    def check_config(cls, values):
        """Checks across this method's resolved settings (a dict); raises
        `ConfigError`. Single values are checked by their declarations."""
        del values

    @classmethod
    def check_hidden_layers(cls, values, what):
        """Refuses an empty `hidden_units` for a method whose per-task
        units (`what`) live in the dense hidden layers."""
        if not values["hidden_units"]:
            raise ConfigError(
                f"--method={values['method']} needs at least one hidden "
                f"layer (--hidden_units): its {what} live there."
            )

    @classmethod
    def fast_config(cls, benchmark):
        """`--fast`: settings of a quick run (empty: the method has none)."""
        del benchmark
        return {}

    @classmethod
    def from_run_config(cls, config, benchmark):
        """Builds the model a run of `config` trains on `benchmark`."""
        from cl_zoo.consolidation.registry import make_consolidation

        return cls(
            input_shape=benchmark.input_shape,
            num_classes=benchmark.num_classes,
            task_classes=benchmark.task_classes,
            head=config.head,
            hidden_units=config.hidden_units,
            architecture=config.architecture,
            activation=config.activation,
            dropout=config.dropout,
            consolidation=make_consolidation(config.consolidation, config),
            initializer=config.initializer,
            normalization=(
                benchmark.channel_stats()
                if config.normalize == "standard" else None
            ),
            name=cls.method_name,
            # A resnet18 run's width (other runs' configs do not hold it).
            **{k: config[k] for k in ("resnet_width",) if k in config},
            **cls.init_args_from_config(config),
        )

    @classmethod
    def init_args_from_config(cls, config):
        """Method-specific constructor arguments taken from a RunConfig:
        by default each of the method's settings, under its own name."""
        return {s.name: config[s.name] for s in cls.settings()}

    def __init__(
        self,
        input_shape,
        num_classes,
        task_classes,
        head="single",
        hidden_units=(100, 100),
        architecture="mlp",
        activation="relu",
        dropout=0.0,
        consolidation=None,
        resnet_width=20,
        initializer=DEFAULT_INITIALIZER,
        normalization=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(
                f"Expected 0 <= dropout < 1. Received: dropout={dropout!r}"
            )
        self.example_shape = tuple(int(d) for d in input_shape)
        _positive_int("num_classes", num_classes)
        self.task_classes = [[int(c) for c in cls] for cls in task_classes]
        if not self.task_classes or not all(self.task_classes):
            raise ValueError(
                "Expected a non-empty list of non-empty class lists for "
                f"`task_classes`. Received: task_classes={task_classes!r}"
            )
        if head not in HEAD_MODES:
            raise ValueError(
                f"Expected `head` in {HEAD_MODES}. Received: head={head!r}"
            )
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"Expected `architecture` in {ARCHITECTURES}. "
                f"Received: architecture={architecture!r}"
            )
        hidden_units = tuple(int(u) for u in hidden_units)
        for units in hidden_units:
            _positive_int("hidden_units", units)
        _positive_int("resnet_width", resnet_width)
        if architecture == "resnet18" and len(input_shape) != 3:
            raise ValueError(
                "architecture='resnet18' needs image inputs (H, W, C). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.num_classes = int(num_classes)
        self.head_mode = head
        self.hidden_units = hidden_units
        self.architecture = architecture
        self.activation = activation
        self.dropout_rate = float(dropout)
        self.resnet_width = int(resnet_width)
        self.initializer = check_initializer(initializer)
        self.normalization = check_normalization(
            normalization, self.example_shape
        )
        self.consolidation = consolidation
        # Rules that update some variables in place of the main optimizer
        # (eps * sign for BPN / AMN); see `cl_zoo.rules`.
        self.gradient_rules = []
        # Between-task state outside the weights (see `MethodState`).
        self.method_state = MethodState()
        # Training length per task in batches (None: one pass of the data);
        # a run sets it from --steps_per_task (see `limit_steps`).
        self.steps_per_task = None

        self.task = keras.Variable(
            0, dtype="int32", trainable=False, name="task"
        )
        # 1.0 from the second task on: gradients of `frozen_variables()` are
        # multiplied by `1 - frozen` (a variable, so freezing needs no
        # recompile or retrace).
        self.frozen = keras.Variable(
            0.0, dtype="float32", trainable=False, name="frozen"
        )
        self.feature_layers = self.make_feature_layers()
        self.hidden_layers = [
            self.make_hidden_layer(units, index)
            for index, units in enumerate(hidden_units)
        ]
        self.head = self.make_head()
        self.dropout = (
            keras.layers.Dropout(self.dropout_rate, name="dropout")
            if self.dropout_rate > 0 else None
        )
        self._penalty_tracker = keras.metrics.Mean(name="penalty")

    # ------------------------------------------------------------------
    # Construction hooks for methods.
    @property
    def num_tasks(self):
        return len(self.task_classes)

    @property
    def task_conditioned(self):
        """Whether the outputs depend on the task id: per-task units in the
        hidden layers (BPN, AMN, PSP) or a head per task. Such models are
        also evaluated and exported with the task inferred from the input
        (`cl_zoo.task_inference`)."""
        return self.head_mode != "single" or any(
            getattr(layer, "task_conditioned", False)
            for layer in self.hidden_layers
        )

    @property
    def label_mode(self):
        """The benchmark's label mode for this head (its `head=` argument).

        `"single"`: global class ids; `"multi"`: indices into
        `task_classes[t]` (for one head per task and for a shared head).
        """
        return "single" if self.head_mode == "single" else "multi"

    def make_feature_layers(self):
        """Layers before the dense stack (LeNet's conv/pool blocks, the
        ResNet-18 trunk)."""
        if self.architecture == "mlp":
            return [keras.layers.Flatten(name="flatten")]
        if self.architecture == "resnet18":
            return resnet18_layers(self.resnet_width)
        return [
            keras.layers.Conv2D(20, 5, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(50, 5, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
        ]

    def make_hidden_layer(self, units, index):
        """The `index`-th dense hidden layer; methods override this."""
        return keras.layers.Dense(
            units, activation=self.activation, name=f"dense_{index}"
        )

    def make_head(self):
        return TaskHead(
            self.head_mode,
            self.num_classes,
            [len(c) for c in self.task_classes],
            name="head",
        )

    # ------------------------------------------------------------------
    # Forward pass.
    def unpack_inputs(self, inputs):
        """Returns `(x, task_ids)` with one int32 task id per example."""
        if isinstance(inputs, dict):
            unknown = set(inputs) - {"x", "task"}
            if "x" not in inputs or unknown:
                raise ValueError(
                    "Expected inputs as a tensor or a dict with keys 'x' and "
                    f"optionally 'task'. Received keys: {sorted(inputs)}"
                )
            x, task = inputs["x"], inputs.get("task")
        else:
            x, task = inputs, None
        x = ops.convert_to_tensor(x)
        expected = (None, *self.example_shape)
        if not tf.TensorShape(x.shape).is_compatible_with(expected):
            raise ValueError(
                f"Expected inputs of shape (batch, "
                f"{', '.join(map(str, self.example_shape))}) for this model. "
                f"Received: shape={tuple(x.shape)}"
            )
        if not tf.TensorShape(x.shape)[1:].is_fully_defined():
            # A retrace with relaxed shapes (predict): check when it runs.
            x = tf.ensure_shape(x, expected)
        dtype = tf.as_dtype(x.dtype)
        if not (dtype.is_floating or dtype.is_integer or dtype.is_bool):
            raise TypeError(
                "Expected real-valued inputs (float32 pixels in [0, 1]). "
                f"Received: dtype={dtype.name}"
            )
        if x.dtype != "float32":
            # Integers are cast as they are, not scaled: uint8 pixels must
            # be divided by 255 first.
            x = ops.cast(x, "float32")
        if task is None:
            task = self.task
        task = ops.cast(task, "int32")
        task_ids = ops.broadcast_to(task, (ops.shape(x)[0],))
        if tf.executing_eagerly():
            self._check_values(x, task_ids)
        return x, task_ids

    def _check_values(self, x, task_ids):
        """Eager calls: non-finite inputs and unknown task ids are errors."""
        bad = int(tf.size(x)) - int(tf.math.count_nonzero(
            tf.math.is_finite(x)))
        if bad:
            raise ValueError(
                "Expected finite inputs (float32 pixels in [0, 1]). "
                f"Received: {bad} NaN or infinite values"
            )
        outside = tf.boolean_mask(
            task_ids, (task_ids < 0) | (task_ids >= self.num_tasks)
        )
        if int(tf.size(outside)):
            self._check_task(int(outside[0]))

    def predict_step(self, data):
        """`predict` with the checks of eager calls, as graph assertions.

        Non-finite inputs and task ids (given or `model.task`) outside
        `0 <= task < num_tasks` raise InvalidArgumentError. Under XLA
        (`jit_compile=True`, Keras's default on a GPU) the assertions are
        compiled away.
        """
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x, task_ids = self.unpack_inputs(x)
        message = (
            f"task id out of range: this model has {self.num_tasks} tasks "
            f"(0 <= task < {self.num_tasks})"
        )
        checks = [
            tf.debugging.assert_non_negative(task_ids, message=message),
            tf.debugging.assert_less(task_ids, self.num_tasks,
                                     message=message),
        ]
        with tf.control_dependencies(checks):
            # Both inputs wait for the checks (a gather by task id would
            # otherwise fail first, with its own message).
            task_ids = tf.identity(task_ids)
            x = tf.debugging.assert_all_finite(
                x, "inputs must be finite (float32 pixels in [0, 1])"
            )
        return self({"x": x, "task": task_ids}, training=False)

    def call(self, inputs, training=False):
        x, task_ids = self.unpack_inputs(inputs)
        return self.head(self.features(x, task_ids, training), task_ids)

    def features(self, x, task_ids, training=False):
        """The input of the head: the backbone's last hidden activations
        (of the normalized inputs, with `normalization`)."""
        h = self.normalize(x)
        for layer in self.feature_layers:
            h = layer(h, training=training)
        for layer in self.hidden_layers:
            if getattr(layer, "task_conditioned", False):
                h = layer(h, task_ids, training=training)
            else:
                h = layer(h, training=training)
            if self.dropout is not None:
                h = self.dropout(h, training=training)
        return h

    def normalize(self, x):
        """`(x - mean) / std` with `normalization`, else `x` itself."""
        if self.normalization is None:
            return x
        mean, std = (np.asarray(v, "float32") for v in self.normalization)
        if len(self.example_shape) != 3:
            mean, std = mean[0], std[0]
        return (x - mean) / std

    @classmethod
    def dense_network(cls, config):
        """Whether the run's network is dense layers only (it then trains
        on one intra-op thread unless `--threads` says otherwise)."""
        return config.architecture == "mlp"

    def build_for_inputs(self):
        """Creates every weight with a dummy batch of the expected shape.

        A model built here for the first time then gets its `initializer`
        (`initialize_weights`); a built one (loaded, trained) is left as
        it is.
        """
        fresh = not self.built
        self(ops.zeros((1, *self.example_shape)))
        if fresh:
            self.initialize_weights()

    def backbone_layers(self):
        """The layers whose kernels and biases `initializer` draws: the
        feature layers, the dense hidden layers and the head."""
        return [*self.feature_layers, *self.hidden_layers, self.head]

    def initialize_weights(self, seed=None):
        """Redraws `backbone_layers()` with `initializer` (nothing for
        `"glorot_uniform"`, the layers' own initialization).

        Args:
            seed: seed of the draws; by default one number from Python's
                `random` (seeded by `keras.utils.set_random_seed`), drawn
                only for the schemes that redraw.
        """
        if self.initializer == DEFAULT_INITIALIZER:
            return
        if seed is None:
            seed = random.randint(1, 2**31 - 1)
        reinitialize(self.backbone_layers(), self.initializer, seed)

    # ------------------------------------------------------------------
    # Training.
    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        loss = super().compute_loss(
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
        consolidation = self.consolidation
        if (training and consolidation is not None
                and consolidation.has_penalty
                and not consolidation.closed_form_gradient):
            # The batch reaches penalties that need it (LwF's distillation).
            penalty = consolidation.batch_penalty(self, x)
            self._penalty_tracker.update_state(penalty)
            # Keras divides compiled losses by the replica count before the
            # gradients are summed across replicas; a penalty added by hand
            # must be divided too, or it counts once per replica.
            loss = loss + replica_share(ops.cast(penalty, loss.dtype))
        return loss

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(
                x=x,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                training=True,
            )
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        replicas = num_replicas()
        if (self.consolidation is not None
                and self.consolidation.closed_form_gradient):
            loss, grads = self._add_penalty_gradients(
                loss, grads, variables, replicas
            )
        self._loss_tracker.update_state(
            loss * replicas,
            sample_weight=tf.shape(tf.nest.flatten(x)[0])[0],
        )
        grads = self.transform_gradients(grads, variables)
        self.apply_gradients(grads, variables)
        self.after_apply(grads, variables)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if self.consolidation is not None:
            if self.consolidation.has_penalty:
                logs["penalty"] = self._penalty_tracker.result()
            for tracker in self.consolidation.metrics:
                logs[tracker.name] = tracker.result()
        return logs

    def _add_penalty_gradients(self, loss, grads, variables, replicas):
        """The consolidation's penalty and its closed-form gradient.

        The same as differentiating `loss + penalty / replicas` with the
        tape (see `compute_loss`), with fewer ops per weight: the penalty's
        gradient is scaled as the loss is (replica count, loss scale) and
        added to the tape's.
        """
        penalty, penalty_grads = self.consolidation.penalty_and_gradients()
        self._penalty_tracker.update_state(penalty)
        coef = self.optimizer.scale_loss(
            ops.convert_to_tensor(1.0 / replicas, "float32")
        )
        by_id = {
            id(p): g
            for p, g in zip(self.consolidation.params, penalty_grads)
        }
        grads = [
            g if id(v) not in by_id
            else coef * by_id[id(v)] if g is None
            else g + ops.cast(coef * by_id[id(v)], g.dtype)
            for g, v in zip(grads, variables)
        ]
        loss = loss + ops.cast(penalty, loss.dtype) / replicas
        return loss, grads

    def rules(self):
        """Every gradient rule of a train step, in the order they apply:
        freezing, the method's own (`gradient_rules`), the
        consolidation's (GEM's projection)."""
        rules = []
        frozen = self.frozen_variables()
        if frozen:
            rules.append(FreezeRule(frozen, self.frozen))
        rules += self.gradient_rules
        if self.consolidation is not None:
            rules += self.consolidation.gradient_rules(self)
        return rules

    def transform_gradients(self, grads, variables):
        """Gradient rules between `tape.gradient` and `optimizer.apply`,
        through `cl_zoo.rules.apply_rules` (which all-reduces for the rules
        that are not linear in the gradient)."""
        grads = [
            g if g is not None else ops.zeros_like(v)
            for g, v in zip(grads, variables)
        ]
        return apply_rules(self, self.rules(), grads, variables)

    def frozen_variables(self):
        """Variables that stop training after the first task (none here).

        SGD-F freezes the shared layers, AD the normal weights; their
        gradients are zeroed from the second task on.
        """
        return []

    def apply_gradients(self, grads, variables):
        """Main optimizer for most variables, each rule for its own."""
        owned = self._owning_rules()
        owner = {id(v) for rule in owned for v in rule.variables()}
        main = [(g, v) for g, v in zip(grads, variables) if id(v) not in owner]
        self.optimizer.apply([g for g, _ in main], [v for _, v in main])
        by_id = {id(v): g for g, v in zip(grads, variables)}
        for rule in owned:
            rule.optimizer.apply(
                [by_id[id(v)] for v in rule.variables()], rule.variables()
            )

    def _owning_rules(self):
        """The rules that apply their variables with their own optimizer."""
        return [r for r in self.gradient_rules if r.optimizer is not None]

    def extra_optimizers(self):
        """Optimizers besides `self.optimizer` and the rules' (DGM's
        generator optimizer); the run's checkpoints hold their state."""
        return []

    def extra_results(self, matrix, benchmark):
        """Method-specific figures for results.json's `extra` (DGM's a5)."""
        del matrix, benchmark
        return {}

    def optimizer_variables(self):
        """Trainable variables the main optimizer updates."""
        owned = {id(v) for r in self.gradient_rules for v in r.variables()}
        return [v for v in self.trainable_variables if id(v) not in owned]

    def build_optimizers(self):
        """Builds the main optimizer's and the rules' state up front.

        Call after `compile`: an optimizer's first `apply` otherwise builds
        state for the variables of that call only. A second call does
        nothing.
        """
        if not self.optimizer.built:
            self.optimizer.build(self.optimizer_variables())
        for rule in self.gradient_rules:
            if rule.optimizer is None:
                rule.build()
        if self.consolidation is not None and not self.consolidation.built:
            self.consolidation.build(self)
        if not self.method_state.built:
            self.build_method_state()

    def compile_from_config(self, config):
        """Compiles a loaded `.keras` model as it was saved.

        Keras's own builds the optimizer for every trainable variable; here
        the main optimizer is built for the variables it updates (the
        rules' variables have their own optimizers), as `build_optimizers`
        does before training, so the saved optimizer state loads.
        """
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.build_optimizers()

    def build_method_state(self):
        """Creates `self.method_state`'s variables (none here).

        Called once the weights exist, by `build_optimizers` and otherwise
        by the first `begin_task`, under the strategy's scope.
        """

    def after_apply(self, grads, variables):
        """Runs after the optimizer step (online importance estimates)."""
        if self.consolidation is not None:
            self.consolidation.after_apply(self, grads, variables)

    @property
    def metrics(self):
        metrics = super().metrics
        if self.consolidation is not None:
            if self.consolidation.has_penalty:
                metrics = [*metrics, self._penalty_tracker]
            metrics = [*metrics, *self.consolidation.metrics]
        return metrics

    # ------------------------------------------------------------------
    # Task hooks.
    def begin_task(self, task, benchmark=None):
        """Called before training `task`: activates it, resets the optimizer.

        Optimizer slots (momentum, Adam moments) are zeroed so that one
        task's statistics do not push another task's parameters; the number
        of iterations is kept.
        """
        self._check_task(task)
        if not self.method_state.built:
            self.build_method_state()
        self.task.assign(task)
        self.frozen.assign(1.0 if task > 0 else 0.0)
        reset_optimizer_slots(self.optimizer)
        if self.consolidation is not None:
            self.consolidation.begin_task(self, task, benchmark)

    def end_task(self, task, benchmark=None):
        """Called after training `task`: updates consolidation state."""
        self._check_task(task)
        if self.consolidation is not None:
            self.consolidation.end_task(self, task, benchmark)

    def train_dataset(self, task, benchmark, batch_size, seed=0):
        """The data the method trains on while learning `task`: one pass,
        or `steps_per_task` batches."""
        return self.limit_steps(benchmark.train_dataset(
            task, batch_size, head=self.label_mode, seed=seed
        ))

    def limit_steps(self, dataset):
        """`dataset` repeated and cut to `self.steps_per_task` batches (the
        run's `--steps_per_task`), reshuffled at every pass; as is when
        that is None. Its cardinality is then the task's step count."""
        if not self.steps_per_task:
            return dataset
        return dataset.repeat().take(self.steps_per_task)

    def _check_task(self, task):
        if not 0 <= int(task) < self.num_tasks:
            raise IndexError(
                f"Task {task} is out of range: this model has "
                f"{self.num_tasks} tasks (0 <= task < {self.num_tasks})."
            )

    # ------------------------------------------------------------------
    # Introspection.
    def shared_trainable_variables(self):
        """Trainable variables a consolidation penalty protects."""
        return list(self.trainable_variables)

    def storage_bytes_per_task(self):
        """Bytes of parameters that one more task adds to the model.

        The sum of the layers' `per_task_bytes()`: frozen bias rows (BPN),
        memory units and weights (AMN), PSP key rows, per-task heads; plus
        what the consolidation keeps per task (GEM's episodic memory).
        """
        total = 0
        if self.consolidation is not None:
            total += self.consolidation.per_task_bytes(self)
        for layer in [*self.hidden_layers, self.head]:
            if hasattr(layer, "per_task_bytes"):
                total += layer.per_task_bytes()
        return total

    def inference_variables(self):
        """Every variable inference reads (exported SavedModels hold these)."""
        return list(self.variables)

    def get_config(self):
        return {
            **super().get_config(),
            "input_shape": list(self.example_shape),
            "num_classes": self.num_classes,
            "task_classes": self.task_classes,
            "head": self.head_mode,
            "hidden_units": list(self.hidden_units),
            "architecture": self.architecture,
            "activation": self.activation,
            "dropout": self.dropout_rate,
            "resnet_width": self.resnet_width,
            "initializer": self.initializer,
            "normalization": self.normalization,
        }

