"""Flags every cl_zoo trainer shares (the contract's command line).

Flags left unset take the defaults of the (method, benchmark) pair, from the
papers' protocols: see `cl_zoo.config`. Library code never reads FLAGS; the
trainer turns them into a frozen `RunConfig`.
"""

from __future__ import annotations

from absl import flags

from cl_zoo.config import (
    BENCHMARK_DEFAULTS,
    LOSSES,
    OPTIMIZERS,
    STRATEGIES,
    ConfigError,
    parse_list_setting,
)

# Flags whose value becomes the RunConfig field of the same name.
CONFIG_FLAGS = (
    "epochs", "batch_size", "lr", "optimizer", "seed", "num_tasks", "head",
    "hidden_units", "architecture", "activation", "data_dir", "strategy",
    "num_cpu_devices", "consolidation", "ewc_lambda", "fisher_samples",
    "fisher_mode", "fisher_normalize", "ewc_gamma", "bias_hidden",
    "bias_update", "epsilon",
    "bias_layers", "memory_units", "memory_update", "loss",
    "spp_lambda", "spp_group", "si_lambda", "si_damping", "mas_lambda",
    "lwf_lambda",
    "lwf_temperature", "memory_size", "gem_margin", "lr_decay", "dropout",
    "adam_beta1", "generator_units", "generator_capacity", "noise_dim",
    "generator_batch_norm",
    "s_max", "s_anneal", "mask_lambda", "gp_weight", "replay_per_class",
    "replay_jitter", "balance_classes", "classifier_dropout",
    "reinit_discriminator",
    "classify_fakes", "fast",
    "eval_batch_size", "eval_examples", "export", "verbose",
    "overwrite", "model_dir",
)


def _fmt(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def _join(words):
    words = list(words)
    return words[0] if len(words) == 1 else (
        ", ".join(words[:-1]) + " and " + words[-1])


def method_defaults_help(key):
    """`"Default D (V1 for M1 and M2 on B1, M3; V2 for ...)."` for a
    flag's help, read from the RunConfig default, the benchmarks' protocols
    and every method's `default_config`, so the help cannot drift from the
    code."""
    from cl_zoo.benchmarks import BENCHMARKS
    from cl_zoo.config import RunConfig
    from cl_zoo.methods import get_method, method_names

    base = getattr(RunConfig(), key)
    found = {}  # value -> method -> benchmarks where the method uses it
    for name in method_names():
        cls = get_method(name)
        for benchmark in BENCHMARKS:
            value = {**BENCHMARK_DEFAULTS.get(benchmark, {}),
                     **cls.default_config(benchmark)}.get(key, base)
            if value != base:
                found.setdefault(value, {}).setdefault(name, []).append(
                    benchmark)
    parts = []
    for value, methods in sorted(found.items()):
        groups = {}  # the same benchmarks -> the methods
        for name, where in methods.items():
            groups.setdefault(tuple(where), []).append(name)
        phrases = []
        for where, names in groups.items():
            rest = [b for b in BENCHMARKS if b not in where]
            if not rest:
                phrases.append(_join(names))
            elif len(rest) < len(where):
                phrases.append(f"{_join(names)} except on {_join(rest)}")
            else:
                phrases.append(f"{_join(names)} on {_join(where)}")
        parts.append(f"{_fmt(value)} for {', '.join(phrases)}")
    text = f"Default {_fmt(base)}"
    return text + (" (" + "; ".join(parts) + ")." if parts else ".")


def define_run_flags():
    """Defines the flags of `python -m trainers.train`."""
    from cl_zoo.benchmarks import BENCHMARKS
    from cl_zoo.consolidation.registry import CONSOLIDATIONS
    from cl_zoo.methods import method_names

    flags.DEFINE_string(
        "method", None,
        f"Continual-learning method, one of: {', '.join(method_names())}.",
    )
    flags.DEFINE_string(
        "benchmark", None,
        f"Task sequence, one of: {', '.join(BENCHMARKS)}.",
    )
    flags.DEFINE_string(
        "model_dir", None,
        "Directory of the run: results.json, summaries/ (TensorBoard), "
        "export/ (SavedModels), checkpoints. Rerunning the same command on "
        "an unfinished run resumes it.",
    )
    flags.DEFINE_integer(
        "epochs", None,
        "Epochs per task. Default: the benchmark's protocol ("
        + ", ".join(
            f"{k} {v['epochs']}" for k, v in BENCHMARK_DEFAULTS.items()
            if k.endswith("mnist")
        )
        + ").",
    )
    flags.DEFINE_integer("batch_size", None, "Training batch size "
                         "(global, over all replicas). Default 128.")
    flags.DEFINE_float(
        "lr", None,
        "Learning rate of the main optimizer. "
        + method_defaults_help("lr"),
    )
    flags.DEFINE_string(
        "optimizer", None,
        f"Optimizer, one of: {', '.join(OPTIMIZERS)} (momentum = SGD with "
        "momentum 0.9). Its slots are reset at the start of every task. "
        + method_defaults_help("optimizer"),
    )
    flags.DEFINE_integer("seed", None, "Seed of initialization, data order "
                         "and permutations. Default 0.")
    flags.DEFINE_integer(
        "num_tasks", None,
        "Number of tasks; only permuted_mnist lets you choose (default 10).",
    )
    flags.DEFINE_string(
        "head", None,
        "Output layer: 'single' (one head over all classes of the benchmark, "
        "the incremental setting; the AMN paper's '9 individual outputs'), "
        "'multi' (one head per task) or 'shared' (one head as wide as the "
        "widest task, shared by all tasks, labels indexing each task's "
        "classes; the AMN paper's '3 shared outputs'). Default: the "
        "method's (single for sgd/ewc/joint/ad/ad_ewc, multi for finetune, "
        "sgd_freeze, stl).",
    )
    flags.DEFINE_list(
        "hidden_units", None,
        "Comma-separated widths of the hidden dense layers. Default: the "
        "benchmark's protocol (split/disjoint MNIST 5x300, permuted MNIST "
        "4x128).",
    )
    flags.DEFINE_string(
        "architecture", None,
        "'mlp', or 'lenet' (LeNet conv/pool layers before the dense ones).",
    )
    flags.DEFINE_string("activation", None, "Hidden activation. Default relu.")
    flags.DEFINE_string(
        "data_dir", None,
        "Where data sets are read from: mnist.npz (keys x_train, y_train, "
        "x_test, y_test) for MNIST, a tensorflow-datasets data_dir for "
        "CIFAR/SVHN. Default: the cl_zoo cache (~/.cache/cl_zoo).",
    )
    flags.DEFINE_string(
        "strategy", None,
        f"tf.distribute strategy, one of: {', '.join(STRATEGIES)}. Default "
        "'default' (one device).",
    )
    flags.DEFINE_integer(
        "num_cpu_devices", None,
        "Split the CPU into N logical devices, so that --strategy=mirrored "
        "runs N replicas without GPUs. Default 1.",
    )
    flags.DEFINE_string(
        "consolidation", None,
        f"Penalty protecting old tasks, one of: {', '.join(CONSOLIDATIONS)}. "
        "Default: the method's (ewc for ewc, none for sgd...).",
    )
    flags.DEFINE_float("ewc_lambda", None, "EWC strength lambda in "
                       "lambda/2 * sum F (w - w*)^2. Default 100.")
    flags.DEFINE_integer("fisher_samples", None, "Training examples per task "
                         "for the diagonal Fisher (EWC) and the importances "
                         "of SPP and MAS. Default 1024.")
    flags.DEFINE_string(
        "fisher_mode", None,
        "Fisher estimate: 'empirical' (true labels), 'true' (labels sampled "
        "from the model) or 'expected' (exact expectation over classes). "
        "Default empirical.",
    )
    flags.DEFINE_string(
        "fisher_normalize", None,
        "'none', or 'max': divide each task's Fisher (EWC) or importance "
        "(SPP, MAS) by its largest entry, so every task is protected on one "
        "scale. Default none (max for bd_ewc, bd_psp, gd_ewc, ad_ewc).",
    )
    flags.DEFINE_float("ewc_gamma", None, "Online EWC's decay of the old "
                       "Fisher, in [0, 1]. Default 0.9 for online_ewc.")
    flags.DEFINE_integer(
        "bias_hidden", None,
        "BPN: H, the inner size of the bias-unit factors M_t (1xH) @ W_t "
        "(HxK). " + method_defaults_help("bias_hidden"),
    )
    flags.DEFINE_string(
        "bias_update", None,
        "BPN: how M_t moves: 'sign' (beneficial direction, "
        "M -= epsilon * sign(grad)) or 'grad' (M -= epsilon * grad, the GD "
        "ablation). Default: sign for bd_*, grad for gd_ewc.",
    )
    flags.DEFINE_float(
        "epsilon", None,
        "Step of the sign updates: BPN's bias-unit factors M_t (beneficial "
        "direction) and AMN's memory units X_t (adversarial direction), "
        "v -= epsilon * sign(grad) per training step (the papers do not "
        "give it). " + method_defaults_help("epsilon"),
    )
    flags.DEFINE_string(
        "bias_layers", None,
        "BPN: 'all' (bias units in every dense layer and the single head) or "
        "'last' (the last hidden layer only, as in BPN-2019). Default all.",
    )
    flags.DEFINE_integer(
        "memory_units", None,
        "AMN (ad, ad_ewc): memory units per task in every memory layer "
        "(each with memory weights into the layer's neurons). The paper "
        "finds 6 to 9 best. Default 9.",
    )
    flags.DEFINE_string(
        "memory_update", None,
        "AMN: how the memory units move: 'sign' (adversarial direction, "
        "X -= epsilon * sign(grad), the paper's method) or 'grad' "
        "(X -= epsilon * grad, the paper's 'gradient memory units' "
        "ablation). "
        "Memory weights always take optimizer steps. Default sign.",
    )
    flags.DEFINE_string(
        "loss", None,
        f"Training loss over the logits, one of: {', '.join(LOSSES)}. "
        "'softmax': softmax cross-entropy; 'sigmoid': one-hot targets and "
        "binary cross-entropy per output (mean over outputs), compared in "
        "the AMN paper. Default softmax.",
    )
    flags.DEFINE_float(
        "spp_lambda", None,
        "SPP strength lambda in lambda * sum Omega (w - w*)^2, Omega the "
        "label-free entropy importance summed over tasks. The paper sweeps "
        "0.01-12 and finds 4 best; with this importance's scale 100-300 is "
        "the useful range on permuted MNIST. Default 4 (100 on "
        "permuted_mnist).",
    )
    flags.DEFINE_integer(
        "spp_group", None,
        "SPP: examples per entropy gradient. 1: each example's own gradient "
        "(vectorized). G > 1: the gradient of the entropy summed over G "
        "examples, the importance averaged over such batches (the scale of "
        "code that differentiates a batch's summed entropy; the paper's "
        "lambda range fits it). Default 1.",
    )
    flags.DEFINE_float("si_lambda", None, "SI strength c in c * sum Omega "
                       "(w - w*)^2 (Zenke et al. 2017). Default 1.")
    flags.DEFINE_float("si_damping", None, "SI's xi in Omega += omega / "
                       "(delta_w^2 + xi). Default 0.1.")
    flags.DEFINE_float("mas_lambda", None, "MAS strength lambda in lambda * "
                       "sum Omega (w - w*)^2 (Aljundi et al. 2018). Default 1.")
    flags.DEFINE_float("lwf_lambda", None, "LwF: weight of the distillation "
                       "loss on the old heads' outputs. Default 1.")
    flags.DEFINE_float("lwf_temperature", None, "LwF: distillation "
                       "temperature. Default 2.")
    flags.DEFINE_integer(
        "memory_size", None,
        "GEM: training examples of each finished task kept in the episodic "
        "memory (the BPN tables' GEM(10)...GEM(256)). Default 256.",
    )
    flags.DEFINE_float("gem_margin", None, "GEM: the QP's margin (memory "
                       "strength) gamma. Default 0.5.")
    flags.DEFINE_float(
        "lr_decay", None,
        "Multiply the learning rate by this factor after every epoch, over "
        "the whole run (the SPP paper: 0.96). Default 1 (constant).",
    )
    flags.DEFINE_float("dropout", None, "Dropout rate after every hidden "
                       "layer during training. Default 0.")
    flags.DEFINE_float("adam_beta1", None, "Adam's beta_1. Default 0.9 "
                       "(0.5 for dgm, the GAN setting).")
    flags.DEFINE_list(
        "generator_units", None,
        "DGM: initial units (channels) of the generator's masked layers, "
        "from the projection to the last hidden layer; the image side must "
        "divide by 2**len. Growth keeps this much free capacity after every "
        "task. Default 64,32.",
    )
    flags.DEFINE_list(
        "generator_capacity", None,
        "DGM: units allocated per masked layer, as a multiple of its "
        "initial units: the room growth has. One number for every layer, "
        "or one per entry of --generator_units. A full layer stops growing "
        "(with a warning). The compute is that of the allocated units. "
        "Default 8,2.5 (the first layer reserves the most units per task; "
        "the second's compute grows with the first's size).",
    )
    flags.DEFINE_integer("noise_dim", None, "DGM: size of the generator's "
                         "noise z. Default 128.")
    flags.DEFINE_boolean(
        "generator_batch_norm", None,
        "DGM: batch normalization in the generator's masked layers, one set "
        "of scale, offset and statistics per task (the authors'). Default "
        "true.",
    )
    flags.DEFINE_float(
        "s_max", None,
        "DGM: final scale of the mask gates sigmoid(s * e); s is annealed "
        "linearly from 1/s_max (see --s_anneal). Default 1e5 (the "
        "authors' MNIST setting).",
    )
    flags.DEFINE_string(
        "s_anneal", None,
        "DGM: how s grows within a task. step: linearly over the task's "
        "steps, so the gates are nearly binary after a few steps; epoch: "
        "the paper's s = 1/s_max + (s_max - 1/s_max) * i / I with i the "
        "task's epoch and I its epochs, so the whole first epoch trains "
        "soft gates. Default step.",
    )
    flags.DEFINE_float(
        "mask_lambda", None,
        "DGM: weight lambda_G of the mask sparsity regularizer (itself "
        "weighted by network size / free units). Default 0.1 (the "
        "paper's 0.01 let the first tasks take nearly all free units).",
    )
    flags.DEFINE_float("gp_weight", None, "DGM: weight of the WGAN-GP "
                       "gradient penalty. Default 1 (the authors').")
    flags.DEFINE_integer(
        "replay_per_class", None,
        "DGM: generated examples of every earlier class per training step "
        "for the classifier (over all replicas). 0: as many as the batch "
        "size, the authors' balance. Default 32 (16 with --fast).",
    )
    flags.DEFINE_float(
        "replay_jitter", None,
        "DGM: strength of a random affine jitter of the replayed examples "
        "the classifier learns from: at 1, shifts up to 8 % of the side, "
        "rotations up to 14.4 degrees and zooms up to 10 % either way. "
        "It widens the generated classes towards the real data's variety. "
        "0: none (the authors'). Default 1.",
    )
    flags.DEFINE_boolean(
        "balance_classes", None,
        "DGM: every class seen weighs the same in the classifier's loss: "
        "when --replay_per_class is below a current class's share of the "
        "batch, its real examples count less each. Without it the current "
        "class outweighs each replayed one (2 to 1 at the defaults) and "
        "draws old classes' test examples to it. Default true.",
    )
    flags.DEFINE_float(
        "classifier_dropout", None,
        "DGM: dropout rate on the input of the classifier head (the "
        "critic head's input is left whole), in the discriminator's step. "
        "Default 0.",
    )
    flags.DEFINE_boolean(
        "reinit_discriminator", None,
        "DGM: draw the discriminator (critic and classifier) afresh for "
        "each task, as the authors do on MNIST and SVHN. Default true.",
    )
    flags.DEFINE_boolean(
        "classify_fakes", None,
        "DGM: the classifier head also learns the current task's generated "
        "examples (AC-GAN's classifier loss). Without it, only real "
        "examples of the current class and generated ones of earlier "
        "classes (the paper's wording). Default false.",
    )
    flags.DEFINE_boolean(
        "fast", False,
        "Use the method's quick preset (dgm: 2 epochs per task and 16 "
        "replayed examples per class, about 15 minutes on class-incremental "
        "MNIST with 2 CPU cores). Flags you set still win.",
    )
    flags.DEFINE_integer("eval_batch_size", None, "Evaluation batch size. "
                         "Default 1000.")
    flags.DEFINE_integer(
        "eval_examples", None,
        "Test examples per task for the accuracy matrix: the first N of "
        "each task's test split (0 = all, the default). Makes the full "
        "matrix of long sequences (100 permuted-MNIST tasks) affordable.",
    )
    flags.DEFINE_boolean("export", None, "Write the SavedModels of "
                         "export/ at the end. Default true.")
    flags.DEFINE_integer("verbose", None, "Keras progress output: 0 silent, "
                         "1 progress bar, 2 one line per epoch. Default 1.")
    flags.DEFINE_boolean("overwrite", False, "Replace a finished (or any) "
                         "run in --model_dir instead of refusing.")


# List flags: what their items must be (for the error message).
_LIST_ITEMS = {
    "hidden_units": "positive integers",
    "generator_units": "positive integers",
    "generator_capacity": "numbers >= 1",
}


def config_overrides(flag_values):
    """The RunConfig fields the user set on the command line."""
    out = {}
    for name in CONFIG_FLAGS:
        value = flag_values[name].value
        if name in _LIST_ITEMS and value is not None:
            try:
                value = parse_list_setting(name, value)
            except ValueError:
                raise ConfigError(
                    f"--{name}={','.join(value)} is not allowed: "
                    f"expected a comma-separated list of {_LIST_ITEMS[name]}."
                ) from None
        out[name] = value
    return out
