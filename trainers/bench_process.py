r"""Whole-process CPU and wall time of a trainer command, this checkout
against another commit, in alternation.

    python -m trainers.bench_process --baseline=REV [--rounds=5] \
        -- --method=ewc --benchmark=split_mnist --epochs=1 --export=false

Checks REV out into a temporary git worktree and runs `python -m
trainers.train FLAGS --model_dir=<fresh dir>` from it and from this
checkout, alternating which goes first, for `--rounds` rounds. Each run is
a fresh process, so imports, data loading, tracing, training, evaluation,
summaries and plots all count. CPU time is the process's user + system
time (every thread), the steadier figure on a shared machine; prints the
medians and their ratios (this checkout / baseline).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from trainers.bench_multi_worker import children_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(checkout, flags, root):
    """`(cpu_seconds, wall_seconds)` of one trainer process."""
    model_dir = tempfile.mkdtemp(dir=root)
    command = [sys.executable, "-m", "trainers.train", *flags,
               f"--model_dir={model_dir}", "--verbose=0"]
    cpu, wall = children_cpu(), time.perf_counter()
    proc = subprocess.run(command, cwd=checkout, capture_output=True,
                          text=True, check=False)
    cpu, wall = children_cpu() - cpu, time.perf_counter() - wall
    shutil.rmtree(model_dir, ignore_errors=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:]
        raise SystemExit(f"the trainer failed in {checkout} "
                         f"({proc.returncode}): {tail}")
    return cpu, wall


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("error: give the trainer's flags after --, e.g. -- "
              "--method=ewc --benchmark=split_mnist --epochs=1 "
              "--export=false", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(
        prog="python -m trainers.bench_process",
        description="Whole-process CPU and wall time of a trainer command: "
                    "this checkout against --baseline.")
    parser.add_argument("--baseline", required=True,
                        help="a git commit (hash, tag, HEAD~3, ...)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv[:split])
    flags = argv[split + 1:]
    if any(f.startswith("--model_dir") for f in flags):
        print("error: --model_dir is chosen by the benchmark (a fresh "
              "directory per run).", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("error: --rounds must be at least 1.", file=sys.stderr)
        return 2
    figures = {"baseline": [], "this checkout": []}
    with tempfile.TemporaryDirectory(prefix="bench_process_") as root:
        worktree = os.path.join(root, "baseline")
        made = subprocess.run(
            ["git", "-C", REPO, "worktree", "add", "--detach", worktree,
             args.baseline], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            print(f"error: cannot check out {args.baseline}: "
                  f"{made.stderr.strip()}", file=sys.stderr)
            return 2
        try:
            checkouts = {"baseline": worktree, "this checkout": REPO}
            for index in range(args.rounds):
                order = list(checkouts)[:: 1 if index % 2 == 0 else -1]
                for name in order:
                    figures[name].append(
                        run_once(checkouts[name], flags, root))
                shown = ", ".join(
                    f"{name} {figures[name][-1][0]:.2f} s CPU "
                    f"{figures[name][-1][1]:.2f} s wall" for name in order)
                print(f"round {index + 1}/{args.rounds}: {shown}",
                      flush=True)
        finally:
            subprocess.run(["git", "-C", REPO, "worktree", "remove",
                            "--force", worktree], capture_output=True,
                           check=False)
    medians = {name: [statistics.median(v[k] for v in runs)
                      for k in (0, 1)]
               for name, runs in figures.items()}
    print(f"\npython -m trainers.train {' '.join(flags)}, medians of "
          f"{args.rounds} rounds:")
    for name, (cpu, wall) in medians.items():
        print(f"  {name:<14} {cpu:7.2f} s CPU  {wall:7.2f} s wall")
    base, new = medians["baseline"], medians["this checkout"]
    print(f"  ratio (this checkout / baseline): CPU {new[0] / base[0]:.3f}, "
          f"wall {new[1] / base[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
