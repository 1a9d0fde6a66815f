"""The frozen configuration of a run: its generic settings and the resolver.

The run's generic settings (`RUN_SETTINGS`: epochs, batch, optimizer, seed,
strategy, data, outputs) are the only shared table. Every other setting is
declared by the method, consolidation or gradient rule that reads it, in its
own file (`cl_zoo.settings.Setting`), and a run's config holds exactly the
settings that its method and consolidation read.

Defaults come in layers, later ones winning: each setting's declared
default, the benchmark's protocol (`BENCHMARK_DEFAULTS`, from the papers
that use it), the method's own values for that benchmark
(`ContinualModel.default_config(benchmark)`), its `--fast` preset, then
whatever the user set. `resolve_config` applies them and checks every value,
so a bad setting, or one that the method would ignore, ends the run before
any training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cl_zoo.benchmarks import (
    BENCHMARKS,
    all_benchmark_settings,
    benchmark_settings,
    readers_of,
)
from cl_zoo.consolidation.registry import (
    consolidation_names,
    get_consolidation,
)
from cl_zoo.losses import LOSSES
from cl_zoo.methods import get_method, method_names
from cl_zoo.methods.base import ARCHITECTURES
from cl_zoo.settings import ConfigError, Setting, merge

__all__ = ["ConfigError", "RunConfig", "resolve_config", "RUN_SETTINGS"]

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
HEADS = ("single", "multi", "shared")
INITIALIZERS = ("glorot_uniform", "he_uniform", "torch_default")
NORMALIZATIONS = ("none", "standard")

# The run's generic settings, in the order `--help` lists them. `method`
# and `benchmark` are the two required names, resolved apart.
RUN_SETTINGS = (
    Setting("model_dir", str, "", "Directory of the run: results.json, "
            "summaries/ (TensorBoard), export/ (SavedModels), checkpoints. "
            "Rerunning the same command on an unfinished run resumes it."),
    Setting("epochs", int, 1, "Epochs per task.", minimum=1),
    Setting("batch_size", int, 128, "Training batch size (global, over all "
            "replicas).", minimum=1),
    Setting("lr", float, 1e-3, "Learning rate of the main optimizer.",
            above=0, expected="a positive finite number"),
    Setting("optimizer", str, "adam", "Optimizer (momentum = SGD with "
            "momentum 0.9). Its slots are reset at the start of every task.",
            choices=OPTIMIZERS),
    Setting("adam_beta1", float, 0.9, "Adam's beta_1 (--optimizer=adam "
            "only).", minimum=0, below=1, expected="a number in [0, 1)"),
    Setting("lr_decay", float, 1.0, "Multiply the learning rate by this "
            "factor after every epoch, over the whole run (the SPP paper: "
            "0.96); 1 is constant.", above=0, maximum=1,
            expected="a number in (0, 1] (1: constant)"),
    Setting("steps_per_task", int, None, "Train each task for N steps "
            "(batches) instead of --epochs epochs: the task's data repeats "
            "as often as needed. Unset: --epochs decides.", minimum=1),
    Setting("seed", int, 0, "Seed of initialization, data order and "
            "permutations."),
    Setting("num_tasks", int, None, "Number of tasks of permuted_mnist, "
            "permuted and rotated (default 10); class_split: its first N "
            "tasks. The other benchmarks have a fixed number.", minimum=1),
    Setting("head", str, "single", "Output layer: 'single' (one head over "
            "all classes of the benchmark, the incremental setting), 'multi' "
            "(one head per task) or 'shared' (one head as wide as the widest "
            "task, shared by all tasks, labels indexing each task's classes; "
            "the AMN paper's '3 shared outputs').", choices=HEADS),
    Setting("hidden_units", (int,), (100, 100), "Comma-separated widths of "
            "the hidden dense layers (empty, --hidden_units=, for none: the "
            "head reads the backbone's features).", minimum=1, min_items=0),
    Setting("architecture", str, "mlp", "'mlp'; 'lenet' (LeNet conv/pool "
            "layers before the dense ones); or 'resnet18', the reduced "
            "ResNet-18 of GEM / A-GEM / Mammoth for colour images (its "
            "global-pooled features feed the dense layers; "
            "--hidden_units= for none).", choices=ARCHITECTURES),
    Setting("resnet_width", int, 20, "Channels of the first stage of "
            "--architecture=resnet18 (the reduced ResNet-18 of GEM, A-GEM "
            "and Mammoth uses 20; the stages double it).", minimum=1),
    Setting("initializer", str, "glorot_uniform", "Weight initializer of "
            "the backbone (hidden layers, convolutions and heads): Keras's "
            "glorot_uniform, he_uniform, or torch_default (PyTorch's "
            "nn.Linear / nn.Conv2d scheme: weights and biases uniform in "
            "+-1/sqrt(fan_in)).", choices=INITIALIZERS),
    Setting("normalize", str, "none", "Input normalisation inside the "
            "model: 'standard' subtracts the per-channel mean and divides by "
            "the per-channel std of the training split, so exports still "
            "take [0, 1] pixels.", choices=NORMALIZATIONS),
    Setting("activation", str, "relu", "Hidden activation (a Keras name)."),
    Setting("dropout", float, 0.0, "Dropout rate after every hidden layer "
            "during training.", minimum=0, below=1,
            expected="a rate in [0, 1)"),
    Setting("loss", str, "softmax", "Training loss over the logits: softmax "
            "cross-entropy, or 'sigmoid' (one-hot targets and binary "
            "cross-entropy per output, compared in the AMN paper).",
            choices=LOSSES),
    Setting("consolidation", str, "none", "Penalty protecting old tasks "
            "(see --help of a method for what it takes)."),
    Setting("fast", bool, False, "Use the method's quick preset (dgm: 2 "
            "epochs per task and 16 replayed examples per class, about 12 "
            "minutes on class-incremental MNIST with 2 CPU cores). Flags you "
            "set still win."),
    Setting("data_dir", str, None, "Where data sets are read from: mnist.npz "
            "(keys x_train, y_train, x_test, y_test) for MNIST, a "
            "tensorflow-datasets data_dir for CIFAR/SVHN. Default: the "
            "cl_zoo cache (~/.cache/cl_zoo)."),
    Setting("strategy", str, "default", "tf.distribute strategy.",
            choices=STRATEGIES),
    Setting("num_cpu_devices", int, 1, "Split the CPU into N logical "
            "devices, so that --strategy=mirrored runs N replicas without "
            "GPUs.", minimum=1),
    Setting("threads", int, None, "TensorFlow's intra-op threads (the "
            "threads one op, a matmul, is split over). Unset: 1 for a dense "
            "network on one replica per process (a second thread costs more "
            "CPU than it saves there), TensorFlow's default (every core) "
            "otherwise; 0: TensorFlow's default. Results depend on it at the "
            "level of float rounding.", minimum=0),
    Setting("eval_batch_size", int, 1000, "Evaluation batch size.",
            minimum=1),
    Setting("eval_examples", int, 0, "Test examples per task for the "
            "accuracy matrix: the first N of each task's test split (0 = "
            "all). Makes the full matrix of long sequences affordable.",
            minimum=0, expected="a non-negative integer (0: the whole test "
            "split)"),
    Setting("export", bool, True, "Write the SavedModels of export/ at the "
            "end."),
    Setting("verbose", int, 1, "Keras progress output: 0 silent, 1 progress "
            "bar, 2 one line per epoch (the trainer's default when its "
            "output is a file or a pipe).", minimum=0, maximum=2),
    Setting("overwrite", bool, False, "Replace a finished (or any) run in "
            "--model_dir instead of refusing."),
)
RUN_SETTING_NAMES = tuple(s.name for s in RUN_SETTINGS)
# How `--help` groups the run's settings (a test checks that each is in
# exactly one group).
RUN_GROUPS = {
    "Training": ("epochs", "steps_per_task", "batch_size", "lr",
                 "optimizer", "adam_beta1", "lr_decay", "seed", "fast"),
    "Network": ("head", "hidden_units", "architecture", "resnet_width",
                "initializer", "normalize", "activation", "dropout", "loss"),
    "Method": ("consolidation",),
    "Benchmark": ("num_tasks", "data_dir"),
    "Distribution": ("strategy", "num_cpu_devices", "threads"),
    "Output": ("model_dir", "eval_batch_size", "eval_examples", "export",
               "verbose", "overwrite"),
}

# The protocols of the papers. split_mnist: BPN (5x300, 5 epochs per task);
# permuted_mnist: BPN's 100-task experiment (4x128); disjoint_mnist: AMN
# (5-layer MLP, 20 epochs per task).
BENCHMARK_DEFAULTS = {
    "split_mnist": {"hidden_units": (300,) * 5, "epochs": 5},
    "disjoint_mnist": {"hidden_units": (300,) * 5, "epochs": 20},
    "permuted_mnist": {"hidden_units": (128,) * 4, "epochs": 1},
    "class_incremental_mnist": {"hidden_units": (300,) * 5, "epochs": 5},
    "gaussian_clusters": {
        "hidden_units": (64, 64),
        "epochs": 20,
        "batch_size": 32,
    },
    "split_cifar10": {"hidden_units": (300,) * 5, "epochs": 5},
    "split_cifar100": {"hidden_units": (300,) * 5, "epochs": 5},
    "disjoint_cifar10": {"architecture": "lenet", "hidden_units": (300,) * 3,
                         "epochs": 20},
    "class_incremental_svhn": {"hidden_units": (300,) * 5, "epochs": 5},
    "class_incremental_cifar10": {"hidden_units": (300,) * 5, "epochs": 5},
}


class RunConfig(Mapping):
    """The resolved settings of one run, read as attributes or by key.

    Holds the generic settings, `method`, `benchmark`, and exactly the
    settings that the method and its consolidation declare: reading any
    other is an AttributeError that names the method, so code cannot
    silently use a setting the run never resolved.
    """

    def __init__(self, values):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(
                f"{name!r} is not a setting of this run (method "
                f"{self._values.get('method')!r}, consolidation "
                f"{self._values.get('consolidation')!r})."
            ) from None

    def __setattr__(self, name, value):
        raise AttributeError("RunConfig is frozen; use `replace`.")

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __eq__(self, other):
        return isinstance(other, RunConfig) and self._values == other._values

    def __hash__(self):
        return hash(self.to_json())

    def __repr__(self):
        return f"RunConfig({self._values!r})"

    def replace(self, **changes):
        """A copy with `changes` (not re-checked: use `resolve_config`)."""
        return RunConfig({**self._values, **changes})

    def to_dict(self):
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in self._values.items()
        }

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ----------------------------------------------------------------------
# Who reads what.
def run_settings():
    return {s.name: s for s in RUN_SETTINGS}


def applicable_settings(method_cls, consolidation, benchmark=None):
    """`{name: Setting}` a run of `method_cls` with `consolidation` (on
    `benchmark`, whose own settings join when it is given) reads."""
    groups = [RUN_SETTINGS, method_cls.settings()]
    cls = get_consolidation(consolidation)
    if cls is not None:
        groups.append(cls.SETTINGS)
    if benchmark in BENCHMARKS:
        # A benchmark made in Python (a `Benchmark` of your own) reads none.
        groups.append(benchmark_settings(benchmark))
    return merge(groups)


def all_settings():
    """`{name: Setting}` of the run, every method, consolidation and
    benchmark."""
    groups = [RUN_SETTINGS]
    groups += [get_method(m).settings() for m in method_names()]
    groups += [
        get_consolidation(c).SETTINGS for c in consolidation_names()
        if c != "none"
    ]
    groups.append(tuple(all_benchmark_settings().values()))
    return merge(groups)


def owners_of(name):
    """`(methods, consolidations, benchmarks)` that declare setting
    `name`."""
    methods = [m for m in method_names()
               if name in {s.name for s in get_method(m).settings()}]
    consolidations = [
        c for c in consolidation_names() if c != "none"
        and name in {s.name for s in get_consolidation(c).SETTINGS}
    ]
    return methods, consolidations, readers_of(name)


def owners_phrase(name):
    """`--method=a/b and --consolidation=c`: who reads setting `name`."""
    methods, consolidations, benchmarks = owners_of(name)
    users = []
    if methods:
        users.append("--method=" + "/".join(methods))
    if consolidations:
        users.append("--consolidation=" + "/".join(consolidations))
    if benchmarks:
        users.append("--benchmark=" + "/".join(benchmarks))
    return " and ".join(users)


def _not_read(name, method, consolidation, benchmark):
    if name in all_benchmark_settings():
        return ConfigError(
            f"--{name} is not read by --benchmark={benchmark}; it is a "
            f"setting of {owners_phrase(name)}."
        )
    return ConfigError(
        f"--{name} is not read by --method={method} with "
        f"--consolidation={consolidation}; it is a setting of "
        f"{owners_phrase(name)}."
    )


def parse_setting(key, text):
    """`text` (one command-line word) as the value of setting `key`;
    ValueError when it does not read as the setting's type. List settings
    take ':' between items (`hidden_units=200:100`)."""
    settings = all_settings()
    if key not in settings:
        raise ValueError(f"unknown setting {key!r}")
    return settings[key].parse(text)


def resolve_config(method_cls, benchmark: str, overrides: dict, *,
                   skip_unread=False) -> RunConfig:
    """Layers the defaults and the user's values into a checked RunConfig.

    Args:
        method_cls: the registered model class of the method.
        benchmark: benchmark name.
        overrides: values the user set (`None` values are ignored). With
            `fast=True`, the method's `fast_config` preset comes between its
            defaults and the user's values.
        skip_unread: leave out the overrides that this method's run does
            not read, instead of refusing them: for one dict of settings
            shared by several methods (a comparison script). The command
            line never does.

    Raises:
        ConfigError: an unknown setting, a value out of its range, a setting
            that neither the method nor its consolidation reads, or a
            consolidation the method cannot apply.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    given.pop("method", None)
    given.pop("benchmark", None)
    method = method_cls.method_name
    layered = dict(BENCHMARK_DEFAULTS.get(benchmark, {}))
    layered.update(method_cls.default_config(benchmark))
    if given.get("fast"):
        preset = method_cls.fast_config(benchmark)
        if not preset:
            raise ConfigError(
                f"--fast: method {method} has no quick preset; set --epochs "
                "and the other settings instead."
            )
        layered.update(preset)
    layered.update(given)
    consolidation = layered.get("consolidation", "none")
    if consolidation not in consolidation_names():
        raise ConfigError(
            f"--consolidation={consolidation} is not allowed: expected one "
            f"of {', '.join(consolidation_names())}."
        )
    if consolidation != "none" and not method_cls.takes_consolidation:
        raise ConfigError(
            f"--consolidation={consolidation} cannot work with "
            f"--method={method}: its train step applies no consolidation "
            "penalty."
        )
    applicable = applicable_settings(method_cls, consolidation, benchmark)
    architecture = layered.get("architecture", "mlp")
    if architecture != "resnet18":
        # Read by the ResNet-18 backbone only: absent from other runs.
        del applicable["resnet_width"]
        if "resnet_width" in given:
            raise ConfigError(
                f"--resnet_width is read with --architecture=resnet18 only "
                f"(this run: --architecture={architecture})."
            )
    known = all_settings()
    for key in sorted(given):
        if key not in known:
            raise ConfigError(f"Unknown setting --{key}.")
        if key not in applicable:
            if not skip_unread:
                raise _not_read(key, method, consolidation, benchmark)
            del given[key]
            layered.pop(key)
    if given.get("steps_per_task") is not None:
        if "epochs" in given:
            raise ConfigError(
                "--epochs and --steps_per_task both set the training length; "
                "give one."
            )
        layered["epochs"] = 1  # one pass of steps_per_task batches
    optimizer = layered.get("optimizer", run_settings()["optimizer"].default)
    if "adam_beta1" in given and optimizer != "adam":
        raise ConfigError(
            f"--adam_beta1 is read with --optimizer=adam only (this run: "
            f"--optimizer={optimizer})."
        )
    values = {"method": method, "benchmark": benchmark}
    for name, setting in applicable.items():
        value = setting.normalize(layered.get(name, setting.default))
        setting.check(value)
        values[name] = value
    _check_run(values)
    method_cls.check_config(values)
    return RunConfig(values)


def _check_run(values):
    """Checks across the generic settings."""
    if (values["strategy"] == "multi_worker_mirrored"
            and values["num_cpu_devices"] > 1):
        raise ConfigError(
            "--num_cpu_devices is read with --strategy=mirrored only: a "
            "multi-worker run has one CPU replica per worker (or one per GPU)."
        )
    if values["strategy"] == "default" and values["num_cpu_devices"] > 1:
        raise ConfigError(
            "--num_cpu_devices > 1 needs --strategy=mirrored to use the extra "
            "devices."
        )

