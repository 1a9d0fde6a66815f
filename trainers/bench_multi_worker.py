r"""Step cost of `multi_worker_mirrored` against one device and `mirrored`.

    python -m trainers.bench_multi_worker [--method=sgd] [--batch_size=128] \
        [--steps=100,400] [--rounds=3]

Runs split MNIST (5 tasks, the 784-300x5-10 network of its protocol) in
three set-ups with the same global batch: one device; `--strategy=mirrored
--num_cpu_devices=2` (two replicas in one process); and two workers of
`trainers.launch_local` (two processes, RING all-reduce over gRPC on
loopback). Each set-up runs twice, with the two step counts of `--steps`,
in alternation over `--rounds` rounds; the per-step cost is the difference
of the two runs' CPU time (user + system, every process of the set-up)
divided by the difference of steps, which cancels start-up, data loading
and evaluation. Prints the medians, per step and per worker, and their
ratios to one device measured in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

SETUPS = {
    "one device": ([], 1),
    "mirrored x2": (["--strategy=mirrored", "--num_cpu_devices=2"], 1),
    "2 workers": (None, 2),  # launch_local
}


def children_cpu():
    """User + system CPU seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(setup, method, batch_size, steps, root):
    """`(cpu_seconds, wall_seconds)` of one run of `setup`."""
    extra, workers = SETUPS[setup]
    model_dir = tempfile.mkdtemp(dir=root)
    flags = [f"--method={method}", "--benchmark=split_mnist",
             f"--batch_size={batch_size}", f"--steps_per_task={steps}",
             "--export=false", "--verbose=0", f"--model_dir={model_dir}"]
    if workers > 1:
        command = [sys.executable, "-m", "trainers.launch_local",
                   f"--workers={workers}", "--", *flags]
    else:
        command = [sys.executable, "-m", "trainers.train", *flags, *extra]
    cpu, wall = children_cpu(), time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True,
                          check=False)
    cpu, wall = children_cpu() - cpu, time.perf_counter() - wall
    if proc.returncode != 0:
        sys.exit(f"{setup} failed ({proc.returncode}): "
                 f"{proc.stderr.strip().splitlines()[-1:]}")
    return cpu, wall


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m trainers.bench_multi_worker",
        description=__doc__.split("\n\n")[1])
    parser.add_argument("--method", default="sgd")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", default="100,400",
                        help="two step counts per task, e.g. 100,400")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    low, high = (int(v) for v in args.steps.split(","))
    per_step = {s: [] for s in SETUPS}
    wall_step = {s: [] for s in SETUPS}
    with tempfile.TemporaryDirectory(prefix="bench_mw_") as root:
        for round_ in range(args.rounds):
            for setup in SETUPS:
                short = run_once(setup, args.method, args.batch_size, low,
                                 root)
                long = run_once(setup, args.method, args.batch_size, high,
                                root)
                # The run trains split MNIST's 5 tasks, `steps` steps each.
                steps = 5 * (high - low)
                per_step[setup].append((long[0] - short[0]) / steps)
                wall_step[setup].append((long[1] - short[1]) / steps)
                print(f"round {round_ + 1} {setup}: "
                      f"{1e3 * per_step[setup][-1]:.2f} ms CPU/step, "
                      f"{1e3 * wall_step[setup][-1]:.2f} ms wall/step",
                      flush=True)
    base = statistics.median(per_step["one device"])
    base_wall = statistics.median(wall_step["one device"])
    print(f"\n{args.method}, global batch {args.batch_size}, split MNIST "
          f"(5x300), median of {args.rounds} rounds, steps {low}->{high}:")
    print("| set-up | CPU ms/step (all processes) | per worker | ratio to "
          "one device (CPU) | wall ms/step | ratio (wall) |")
    print("|---|---|---|---|---|---|")
    for setup, (_, workers) in SETUPS.items():
        cpu = statistics.median(per_step[setup])
        wall = statistics.median(wall_step[setup])
        print(f"| {setup} | {1e3 * cpu:.2f} | {1e3 * cpu / workers:.2f} | "
              f"{cpu / base:.2f} | {1e3 * wall:.2f} | {wall / base_wall:.2f} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
