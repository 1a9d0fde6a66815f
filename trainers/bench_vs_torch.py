r"""Training throughput of cl_zoo against a hand-written PyTorch loop.

    python -m trainers.bench_vs_torch [--methods=sgd,ewc,bd_ewc] \
        [--rounds=5] [--epochs=1] [--torch_threads=1] [--json=PATH]

Needs PyTorch, an optional extra: `pip install -e ".[bench]"`.

Each round runs, in alternation and each in a fresh process, the cl_zoo
trainer for every method (`python -m trainers.train --method=M
--benchmark=split_mnist --epochs=E --export=false`) and a plain PyTorch
loop of the same network (the split-MNIST MLP, 784-300x5-10, ReLU, one
head over the ten classes), optimizer, learning rate, batch size and data
order: it indexes each task's examples (float32 arrays in memory) with
the order of cl_zoo's own pipeline, batch by batch, as a hand-written
loop over a random permutation does.
The PyTorch loops are `sgd` (plain cross-entropy), `ewc` (the same plus
EWC's quadratic penalty, with the empirical Fisher of 1,024 examples
merged into one importance and one anchor after each task, as cl_zoo
does) and `bd_ewc` (EWC plus BPN's bias units in every layer: `M_t W_t`
added to each pre-activation, `W_t` trained by Adam, `M_t` by
`eps * sign(grad)`, the product frozen per task). Like cl_zoo, every loop
zeroes Adam's moments when a task starts.

Throughput is training examples per second of training time: the fits'
epochs for cl_zoo (`extra.train_cpu_seconds` / `train_seconds` in
results.json: every batch, trace and compile, the input pipeline, progress
and per-batch callbacks; not the Fisher, evaluation, checkpoints or
summaries), the batch loops for PyTorch (not its Fisher). CPU time is the
process's (every thread), the steadier figure on a shared machine; wall
time is printed too. Ratios are medians over the rounds of each round's
cl_zoo / PyTorch pair.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCHMARK = "split_mnist"
# The PyTorch loop each cl_zoo method is compared with.
BASELINES = {"sgd": "sgd", "ewc": "ewc", "bd_ewc": "bd_ewc"}
TORCH_MISSING = ("PyTorch is not installed; this benchmark compares with "
                 "it: pip install -e \".[bench]\"")


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------
# The data and settings both sides use (written by the parent process).
def write_data(methods, epochs, seed, path):
    """cl_zoo's training batches in its order, the test sets and each
    method's resolved settings, to `path` (npz) and `path`.json."""
    import numpy as np

    from cl_zoo.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from cl_zoo import benchmarks
    from cl_zoo.config import resolve_config
    from cl_zoo.methods import get_method

    configs = {
        m: resolve_config(get_method(m), BENCHMARK,
                          {"epochs": epochs, "seed": seed})
        for m in {*methods, *BASELINES.values()}
    }
    reference = configs["ewc"]
    benchmark = benchmarks.run_benchmark(reference.to_dict())
    model = get_method("sgd").from_run_config(configs["sgd"], benchmark)
    arrays, samples = {}, 0
    for task in range(benchmark.num_tasks):
        # The task's examples as arrays, and each epoch's order of them in
        # cl_zoo's pipeline, which the PyTorch loop indexes batch by batch.
        x, y = benchmark.train_arrays(task)
        arrays[f"train_x_{task}"], arrays[f"train_y_{task}"] = x, y
        rows = {}
        for i, key in enumerate(_row_keys(x, y)):
            rows.setdefault(key, []).append(i)
        dataset = model.train_dataset(task, benchmark, reference.batch_size,
                                      seed=reference.seed + task)
        for epoch in range(epochs):
            seen = {key: list(i) for key, i in rows.items()}
            order = [seen[key].pop() for inputs, labels in dataset
                     for key in _row_keys(inputs["x"].numpy(),
                                          labels.numpy())]
            arrays[f"order_{task}_{epoch}"] = np.asarray(order, np.int64)
            samples += len(order)
        x, y = benchmark.test_arrays(task)
        arrays[f"test_x_{task}"], arrays[f"test_y_{task}"] = x, y
    np.savez(path, **arrays)
    settings = {
        "num_tasks": benchmark.num_tasks,
        "epochs": epochs,
        "samples": samples,
        "methods": {m: c.to_dict() for m, c in configs.items()},
    }
    with open(path + ".json", "w") as f:
        json.dump(settings, f)
    return settings


def _row_keys(x, y):
    """One hashable key per example (its pixels and label)."""
    flat = x.reshape(len(x), -1)
    return [(row.tobytes(), int(label)) for row, label in zip(flat, y)]


# ----------------------------------------------------------------------
# The PyTorch loops (run in their own process: no TensorFlow imported).
def _torch_network(config, num_tasks):
    """The MLP of `config`; with BPN's bias units in every layer for
    `bd_ewc`: `act(x W + b + M_t W_t)`, M_t (1 x H) and W_t (H x units)
    live while task t trains, their product frozen in a table after it."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            sizes = [784, *config["hidden_units"], 10]
            self.linears = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
            self.bias_units = "bias_hidden" in config
            if self.bias_units:
                hidden = config["bias_hidden"]
                self.factor_m = nn.ParameterList(
                    nn.Parameter(torch.zeros(1, hidden)) for _ in sizes[1:])
                self.factor_w = nn.ParameterList(
                    nn.Parameter(torch.zeros(hidden, b)) for b in sizes[1:])
                for i, b in enumerate(sizes[1:]):
                    self.register_buffer(f"table_{i}",
                                         torch.zeros(num_tasks, b))

        def start_task(self):
            with torch.no_grad():
                for m, w in zip(self.factor_m, self.factor_w):
                    limit = (6.0 / (w.shape[0] + w.shape[1])) ** 0.5
                    m.zero_()
                    w.uniform_(-limit, limit)

        def freeze_task(self, task):
            with torch.no_grad():
                for i, (m, w) in enumerate(zip(self.factor_m,
                                               self.factor_w)):
                    getattr(self, f"table_{i}")[task] = (m @ w)[0]

        def forward(self, x, task=None):
            """`task=None`: the live factors (training)."""
            h = x.flatten(1)
            last = len(self.linears) - 1
            for i, linear in enumerate(self.linears):
                z = linear(h)
                if self.bias_units:
                    z = z + (self.factor_m[i] @ self.factor_w[i]
                             if task is None
                             else getattr(self, f"table_{i}")[task])
                h = torch.relu(z) if i < last else z
            return h

    return Net()


def torch_worker(method, data_path, threads, out):
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with open(data_path + ".json") as f:
        settings = json.load(f)
    config = settings["methods"][method]
    data = np.load(data_path)
    if (config["activation"] != "relu" or config["head"] != "single"
            or config.get("bias_layers", "all") != "all"
            or config.get("bias_update", "sign") != "sign"):
        raise SystemExit(f"the PyTorch loop is a single-head ReLU MLP "
                         f"(with sign-updated bias units in every layer); "
                         f"{method}'s settings differ")
    net = _torch_network(config, settings["num_tasks"])
    weights = list(net.linears.parameters())  # what EWC protects
    trained = weights + (list(net.factor_w) if net.bias_units else [])
    if config["optimizer"] == "adam":
        opt = torch.optim.Adam(trained, lr=config["lr"],
                               betas=(config["adam_beta1"], 0.999),
                               eps=1e-7)
    elif config["optimizer"] == "sgd":
        opt = torch.optim.SGD(trained, lr=config["lr"])
    else:
        raise SystemExit(f"no PyTorch optimizer for {config['optimizer']}")
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = config["batch_size"]
    ewc = "ewc_lambda" in config
    importance = [torch.zeros_like(p) for p in weights]
    anchor = [p.detach().clone() for p in weights]
    strength = config.get("ewc_lambda", 0.0)
    epsilon = config.get("epsilon", 0.0)

    cpu = wall = 0.0
    rows = []
    for task in range(settings["num_tasks"]):
        # As cl_zoo does at every task: zeroed moments, the step count kept.
        for state in opt.state.values():
            for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                if key in state:
                    state[key].zero_()
        if net.bias_units:
            net.start_task()
        x = torch.from_numpy(data[f"train_x_{task}"])
        y = torch.from_numpy(data[f"train_y_{task}"]).long()
        for epoch in range(settings["epochs"]):
            order = torch.from_numpy(data[f"order_{task}_{epoch}"])
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            net.train()
            for i in range(0, len(order) - batch + 1, batch):
                opt.zero_grad(set_to_none=True)
                if net.bias_units:
                    for m in net.factor_m:
                        m.grad = None
                picked = order[i:i + batch]
                loss = loss_fn(net(x[picked]), y[picked])
                if ewc:
                    penalty = sum(
                        (f * (p - a).square()).sum()
                        for f, p, a in zip(importance, weights, anchor))
                    loss = loss + strength / 2 * penalty
                loss.backward()
                opt.step()
                if net.bias_units:
                    with torch.no_grad():
                        for m in net.factor_m:
                            m -= epsilon * m.grad.sign()
            cpu += time.process_time() - start_cpu
            wall += time.perf_counter() - start_wall
        if net.bias_units:
            net.freeze_task(task)
        if ewc:
            first = data[f"order_{task}_0"][:config["fisher_samples"]]
            fisher = _empirical_fisher(
                net, weights, data[f"train_x_{task}"][first],
                data[f"train_y_{task}"][first])
            with torch.no_grad():
                for new, imp, a, p in zip(fisher, importance, anchor,
                                          weights):
                    total = imp + new
                    safe = torch.where(total > 0, total,
                                       torch.ones_like(total))
                    a.copy_(torch.where(total > 0,
                                        (imp * a + new * p) / safe, p))
                    imp.copy_(total)
        rows.append(_accuracies(net, data, task + 1))
    with open(out, "w") as f:
        json.dump({"train_cpu_seconds": cpu, "train_seconds": wall,
                   "accuracy_matrix": rows}, f)


def _empirical_fisher(net, weights, x, y):
    """Mean squared per-example gradients of log p(y | x) of `weights`."""
    import torch
    from torch.func import functional_call, grad, vmap

    names = {id(p): n for n, p in net.named_parameters()}
    params = {n: p.detach() for n, p in net.named_parameters()}

    def nll(p, xi, yi):
        logits = functional_call(net, p, (xi[None],))
        return torch.nn.functional.cross_entropy(logits, yi[None])

    grads = vmap(grad(nll), in_dims=(None, 0, 0))(
        params, torch.from_numpy(x), torch.from_numpy(y).long())
    return [grads[names[id(w)]].square().mean(0) for w in weights]


def _accuracies(net, data, seen):
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for task in range(seen):
            x = torch.from_numpy(data[f"test_x_{task}"])
            y = torch.from_numpy(data[f"test_y_{task}"]).long()
            logits = net(x, task if net.bias_units else None)
            out.append(float((logits.argmax(-1) == y).float().mean()))
    return out


# ----------------------------------------------------------------------
# The parent: rounds of fresh processes, then the table.
def run_cl_zoo(method, epochs, seed, root, extra_flags):
    model_dir = tempfile.mkdtemp(dir=root)
    command = [sys.executable, "-m", "trainers.train", f"--method={method}",
               f"--benchmark={BENCHMARK}", f"--epochs={epochs}",
               f"--seed={seed}", "--export=false", "--verbose=0",
               f"--model_dir={model_dir}", *extra_flags]
    proc = subprocess.run(command, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"cl_zoo {method} failed ({proc.returncode}): "
                         f"{proc.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    return {"train_cpu_seconds": results["extra"]["train_cpu_seconds"],
            "train_seconds": results["train_seconds"],
            "accuracy_matrix": results["accuracy_matrix"]}


def run_torch(method, data_path, threads, root):
    out = tempfile.mktemp(dir=root, suffix=".json")
    command = [sys.executable, "-m", "trainers.bench_vs_torch",
               f"--worker=torch:{method}", f"--data={data_path}",
               f"--torch_threads={threads}", f"--out={out}"]
    proc = subprocess.run(command, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"PyTorch {method} failed ({proc.returncode}): "
                         f"{proc.stderr.strip().splitlines()[-1:]}")
    with open(out) as f:
        return json.load(f)


def summarize(rounds, methods, samples):
    """Per contender: median samples/s (CPU, wall); per method: median
    per-round ratios to its PyTorch loop."""
    rates = {}
    for name in rounds[0]:
        cpu = [samples / r[name]["train_cpu_seconds"] for r in rounds]
        wall = [samples / r[name]["train_seconds"] for r in rounds]
        rates[name] = {"cpu": statistics.median(cpu),
                       "wall": statistics.median(wall)}
    ratios = {}
    for method in methods:
        base = f"torch {BASELINES[method]}"
        ratios[method] = {
            clock: statistics.median(
                r[base][key] / r[f"cl_zoo {method}"][key] for r in rounds)
            for clock, key in (("cpu", "train_cpu_seconds"),
                               ("wall", "train_seconds"))
        }
    return rates, ratios


def print_table(rates, ratios, methods, rounds):
    print(f"\nsplit MNIST, {len(rounds)} rounds, training examples per "
          "second (medians):")
    print(f"{'contender':<16} {'CPU':>9} {'wall':>9} {'ACC':>7} "
          f"{'vs loop CPU':>12} {'vs loop wall':>13}")
    for name, rate in rates.items():
        acc = statistics.mean(rounds[-1][name]["accuracy_matrix"][-1])
        method = name.split(" ", 1)[1]
        vs = ("", "")
        if name.startswith("cl_zoo") and method in ratios:
            vs = (f"{ratios[method]['cpu']:.2f}",
                  f"{ratios[method]['wall']:.2f}")
        print(f"{name:<16} {rate['cpu']:>9,.0f} {rate['wall']:>9,.0f} "
              f"{100 * acc:>6.2f}% {vs[0]:>12} {vs[1]:>13}")
    print("(vs loop: the PyTorch loop's training time over cl_zoo's, median "
          "of the rounds' ratios; above 1 means cl_zoo is faster)")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m trainers.bench_vs_torch",
        description="cl_zoo's training throughput against a plain PyTorch "
                    "loop of the same network, data order, optimizer and "
                    "batch (split MNIST).")
    parser.add_argument("--methods", default="sgd,ewc,bd_ewc",
                        help="cl_zoo methods, each compared with its "
                             f"PyTorch loop ({BASELINES})")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch_threads", type=int, default=1,
                        help="torch.set_num_threads for the PyTorch loop")
    parser.add_argument("--cl_zoo_flags", default="",
                        help="extra trainer flags for every cl_zoo run, "
                             "space-separated (e.g. --threads=1)")
    parser.add_argument("--json", default=None,
                        help="also write every round's figures here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        torch_worker(args.worker.split(":", 1)[1], args.data,
                     args.torch_threads, args.out)
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        print(f"error: no PyTorch loop for {', '.join(unknown)}; --methods "
              f"takes {', '.join(BASELINES)}.", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.epochs < 1:
        print("error: --rounds and --epochs must be at least 1.",
              file=sys.stderr)
        return 2
    if not torch_available():
        print(f"error: {TORCH_MISSING}", file=sys.stderr)
        return 2
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench_vs_torch_") as root:
        data_path = os.path.join(root, "data.npz")
        settings = write_data(methods, args.epochs, args.seed, data_path)
        loops = sorted({BASELINES[m] for m in methods})
        for index in range(args.rounds):
            figures = {}
            # Alternate who goes first, so drift of the machine's load
            # falls on both sides.
            sides = ["cl_zoo", "torch"][:: 1 if index % 2 == 0 else -1]
            for side in sides:
                if side == "cl_zoo":
                    for m in methods:
                        figures[f"cl_zoo {m}"] = run_cl_zoo(
                            m, args.epochs, args.seed, root,
                            args.cl_zoo_flags.split())
                else:
                    for m in loops:
                        figures[f"torch {m}"] = run_torch(
                            m, data_path, args.torch_threads, root)
            rounds.append(figures)
            shown = ", ".join(
                f"{k} {settings['samples'] / v['train_cpu_seconds']:,.0f}"
                for k, v in figures.items())
            print(f"round {index + 1}/{args.rounds} (examples per CPU "
                  f"second): {shown}", flush=True)
    rates, ratios = summarize(rounds, methods, settings["samples"])
    print_table(rates, ratios, methods, rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": settings["samples"], "rounds": rounds,
                       "rates": rates, "ratios": ratios,
                       "torch_threads": args.torch_threads,
                       "cl_zoo_flags": args.cl_zoo_flags}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
