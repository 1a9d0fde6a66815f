"""The frozen configuration of a run, and the defaults of each method.

Defaults come in three layers, later ones winning: the generic values of
`RunConfig`, the benchmark's protocol (`BENCHMARK_DEFAULTS`, from the papers
that use it), then the method's own settings for that benchmark
(`ContinualModel.default_config(benchmark)`); whatever the user sets on the
command line wins over all three. `resolve_config` applies them and checks
every value, so a bad setting ends the run before any training.
"""

from __future__ import annotations

import dataclasses
import json
import math

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
HEADS = ("single", "multi", "shared")
LOSSES = ("softmax", "sigmoid")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says why."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a continual-learning run."""

    method: str = "ewc"
    benchmark: str = "split_mnist"
    model_dir: str = ""
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    adam_beta1: float = 0.9
    seed: int = 0
    num_tasks: int | None = None
    head: str = "single"
    hidden_units: tuple[int, ...] = (100, 100)
    architecture: str = "mlp"
    activation: str = "relu"
    data_dir: str | None = None
    strategy: str = "default"
    num_cpu_devices: int = 1
    # Consolidation.
    consolidation: str = "none"
    ewc_lambda: float = 100.0
    fisher_samples: int = 1024
    fisher_mode: str = "empirical"
    ewc_gamma: float = 1.0
    fisher_normalize: str = "none"
    # Bias units (BPN).
    bias_hidden: int = 200
    bias_update: str = "sign"
    epsilon: float = 0.01
    bias_layers: str = "all"
    # Memory units (AMN); `epsilon` is also their sign step.
    memory_units: int = 9
    memory_update: str = "sign"
    # Importance-based consolidations (SPP, SI, MAS).
    spp_lambda: float = 4.0
    spp_group: int = 1
    si_lambda: float = 1.0
    si_damping: float = 0.1
    mas_lambda: float = 1.0
    # LwF: distillation of the old heads' outputs.
    lwf_lambda: float = 1.0
    lwf_temperature: float = 2.0
    # GEM: episodic memory per task and the QP's margin.
    memory_size: int = 256
    gem_margin: float = 0.5
    # DGM: the generator, its masks and the GAN's losses. The paper's λ_G
    # is 0.01 and its replay as many per class as the batch; λ_G 0.1 with
    # room to grow kept every class's generator intact (docs/RESULTS.md).
    generator_units: tuple[int, ...] = (64, 32)
    generator_capacity: tuple[float, ...] = (8.0, 2.5)
    noise_dim: int = 128
    generator_batch_norm: bool = True
    s_max: float = 1e5
    s_anneal: str = "step"
    mask_lambda: float = 0.1
    gp_weight: float = 1.0
    replay_per_class: int = 32
    replay_jitter: float = 1.0
    balance_classes: bool = True
    classifier_dropout: float = 0.0
    reinit_discriminator: bool = True
    classify_fakes: bool = False
    # `--fast`: the method's quick preset (DGM's 15-minute MNIST run).
    fast: bool = False
    # Training loss over the logits.
    loss: str = "softmax"
    # Learning-rate decay per epoch (1.0: constant) and hidden dropout.
    lr_decay: float = 1.0
    dropout: float = 0.0
    # Evaluation and outputs.
    eval_batch_size: int = 1000
    eval_examples: int = 0
    export: bool = True
    verbose: int = 1
    overwrite: bool = False

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["hidden_units"] = list(self.hidden_units)
        out["generator_units"] = list(self.generator_units)
        out["generator_capacity"] = list(self.generator_capacity)
        return out

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


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

_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}

_BOOLEANS = {"1": True, "true": True, "yes": True,
             "0": False, "false": False, "no": False}
_PARSERS = {"int": int, "int | None": int, "float": float, "str": str,
            "str | None": str}
_ITEM_PARSERS = {"tuple[int, ...]": int, "tuple[float, ...]": float}
# DGM's schedules of the gate scale s within a task (`--s_anneal`).
S_ANNEAL_SCHEDULES = ("step", "epoch")


def float_tuple(value):
    """A number, or a sequence of them, as a tuple of floats."""
    if isinstance(value, (int, float)):
        return (float(value),)
    return tuple(float(v) for v in value)


def setting_type(key):
    """The type of setting `key` as `RunConfig` declares it, e.g. "int"."""
    return _FIELDS[key].type


def parse_list_setting(key, items):
    """The words `items` as the value of list setting `key` (e.g.
    `hidden_units`); raises ValueError when an item does not read as the
    setting's item type."""
    return tuple(_ITEM_PARSERS[setting_type(key)](item) for item in items)


def parse_setting(key, text):
    """`text` (a command-line word) as the value of setting `key`.

    Numbers, booleans (1/true/yes, 0/false/no), strings, and lists of
    numbers with ':' between the items (`hidden_units=200:100`, since the
    callers split their words at commas); raises ValueError when `text`
    does not read as the setting's type.
    """
    kind = setting_type(key)
    if kind == "bool":
        if text.lower() not in _BOOLEANS:
            raise ValueError(f"{text!r} is not a boolean")
        return _BOOLEANS[text.lower()]
    if kind in _ITEM_PARSERS:
        return parse_list_setting(key, text.split(":"))
    if kind not in _PARSERS:
        raise ValueError(f"{key} cannot be read from one word")
    return _PARSERS[kind](text)


def _check(config: RunConfig):
    def fail(name, value, allowed):
        raise ConfigError(
            f"--{name}={value} is not allowed: expected {allowed}."
        )

    for name in ("epochs", "batch_size", "num_cpu_devices",
                 "fisher_samples", "eval_batch_size", "bias_hidden",
                 "memory_units", "memory_size", "spp_group", "noise_dim"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            fail(name, value, "a positive integer")
    if not isinstance(config.eval_examples, int) or config.eval_examples < 0:
        fail("eval_examples", config.eval_examples,
             "a non-negative integer (0: the whole test split)")
    if config.num_tasks is not None and config.num_tasks < 1:
        fail("num_tasks", config.num_tasks, "a positive integer")
    if not (math.isfinite(config.lr) and config.lr > 0):
        fail("lr", config.lr, "a positive finite number")
    if not (math.isfinite(config.ewc_lambda) and config.ewc_lambda >= 0):
        fail("ewc_lambda", config.ewc_lambda, "a non-negative number")
    for name in ("spp_lambda", "si_lambda", "mas_lambda", "lwf_lambda",
                 "gem_margin"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            fail(name, value, "a non-negative number")
    for name in ("si_damping", "lwf_temperature"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            fail(name, value, "a positive number")
    if not 0.0 <= config.adam_beta1 < 1.0:
        fail("adam_beta1", config.adam_beta1, "a number in [0, 1)")
    if not config.generator_units or min(config.generator_units) < 1:
        fail("generator_units", ",".join(map(str, config.generator_units)),
             "a comma-separated list of positive integers")
    capacity = config.generator_capacity
    if (not capacity
            or len(capacity) not in (1, len(config.generator_units))
            or not all(math.isfinite(c) and c >= 1.0 for c in capacity)):
        fail("generator_capacity", ",".join(map(str, capacity)),
             "numbers >= 1 (units allocated per initial unit): one for "
             "every masked layer, or one per entry of --generator_units")
    if not (math.isfinite(config.s_max) and config.s_max >= 1.0):
        fail("s_max", config.s_max, "a number >= 1")
    if config.s_anneal not in S_ANNEAL_SCHEDULES:
        fail("s_anneal", config.s_anneal, " or ".join(S_ANNEAL_SCHEDULES))
    for name in ("mask_lambda", "gp_weight", "replay_jitter"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            fail(name, value, "a non-negative number")
    if not isinstance(config.replay_per_class, int) or \
            config.replay_per_class < 0:
        fail("replay_per_class", config.replay_per_class,
             "a non-negative integer (0: the batch size)")
    if not 0.0 < config.lr_decay <= 1.0:
        fail("lr_decay", config.lr_decay, "a number in (0, 1] (1: constant)")
    for name in ("dropout", "classifier_dropout"):
        if not 0.0 <= getattr(config, name) < 1.0:
            fail(name, getattr(config, name), "a rate in [0, 1)")
    if config.fisher_normalize not in ("none", "max"):
        fail("fisher_normalize", config.fisher_normalize, "none or max")
    if not 0.0 <= config.ewc_gamma <= 1.0:
        fail("ewc_gamma", config.ewc_gamma, "a number in [0, 1]")
    if not (math.isfinite(config.epsilon) and config.epsilon > 0):
        fail("epsilon", config.epsilon, "a positive number")
    if config.bias_update not in ("sign", "grad"):
        fail("bias_update", config.bias_update, "sign or grad")
    if config.bias_layers not in ("all", "last"):
        fail("bias_layers", config.bias_layers, "all or last")
    if config.memory_update not in ("sign", "grad"):
        fail("memory_update", config.memory_update, "sign or grad")
    if config.loss not in LOSSES:
        fail("loss", config.loss, " or ".join(LOSSES))
    if config.optimizer not in OPTIMIZERS:
        fail("optimizer", config.optimizer, f"one of {', '.join(OPTIMIZERS)}")
    if config.strategy not in STRATEGIES:
        fail("strategy", config.strategy, f"one of {', '.join(STRATEGIES)}")
    if config.head not in HEADS:
        fail("head", config.head, "single, multi or shared")
    if config.architecture not in ("mlp", "lenet"):
        fail("architecture", config.architecture, "mlp or lenet")
    if config.fisher_mode not in ("empirical", "true", "expected"):
        fail("fisher_mode", config.fisher_mode, "empirical, true or expected")
    if not config.hidden_units or min(config.hidden_units) < 1:
        fail("hidden_units", ",".join(map(str, config.hidden_units)),
             "a comma-separated list of positive integers")
    if config.strategy == "multi_worker_mirrored":
        # A contract name, refused before anything runs (README,
        # "Distributed training").
        raise ConfigError(
            "--strategy=multi_worker_mirrored is not supported: model.fit "
            "fails under MultiWorkerMirroredStrategy in Keras 3.15 "
            "(keras-team/keras#20585); use --strategy=mirrored (every GPU "
            "of one machine, or --num_cpu_devices=N CPU replicas)."
        )
    if config.strategy == "default" and config.num_cpu_devices > 1:
        raise ConfigError(
            "--num_cpu_devices > 1 needs --strategy=mirrored (or "
            "multi_worker_mirrored) to use the extra devices."
        )


def resolve_config(method_cls, benchmark: str, overrides: dict) -> RunConfig:
    """Layers the defaults and the user's values into a checked RunConfig.

    Args:
        method_cls: the registered model class of the method.
        benchmark: benchmark name.
        overrides: values the user set (`None` values are ignored). With
            `fast=True`, the method's `fast_config` preset comes between its
            defaults and the user's values.
    """
    values = {}
    values.update(BENCHMARK_DEFAULTS.get(benchmark, {}))
    values.update(method_cls.default_config(benchmark))
    if overrides.get("fast"):
        preset = method_cls.fast_config(benchmark)
        if not preset:
            raise ConfigError(
                f"--fast: method {method_cls.method_name} has no quick "
                "preset; set --epochs and the other settings instead."
            )
        values.update(preset)
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    values["benchmark"] = benchmark
    values["method"] = method_cls.method_name
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"Unknown settings: {', '.join(sorted(unknown))}.")
    for key in ("hidden_units", "generator_units"):
        if key in values:
            values[key] = tuple(int(u) for u in values[key])
    if "generator_capacity" in values:
        values["generator_capacity"] = float_tuple(
            values["generator_capacity"])
    config = RunConfig(**values)
    _check(config)
    return config
