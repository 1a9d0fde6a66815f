r"""Kills a training run with SIGKILL mid-sequence, reruns it, checks it.

    python -m trainers.kill_resume [--model_dir=runs/issue7/killed] \
        [--kill_at_task=2] [--reference=runs/issue7/bd_ewc_single/results.json]\
        [--tolerance=0.03] [-- TRAINER FLAGS]

Starts `python -m trainers.train TRAINER FLAGS --model_dir=DIR` (default
flags: `--method=bd_ewc --benchmark=split_mnist`) on a fresh DIR, waits until
progress.json shows that task KILL_AT_TASK (counted from 0) has started (one
of its epochs is checkpointed), sends `kill -9`, and runs the same command
again. Passes (exit 0) when the rerun

- finishes (exit 0) and says "Resuming DIR at task KILL_AT_TASK";
- trains none of the tasks finished before the kill (no "Task i/T" line for
  them) and keeps their rows of the accuracy matrix as they were;
- reaches an ACC within TOLERANCE of the reference run's results.json (the
  same command run without interruption), when one is given.

Logs: DIR.first.log and DIR.resume.log. Needs only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

DEFAULT_FLAGS = ["--method=bd_ewc", "--benchmark=split_mnist"]


def read_progress(model_dir):
    try:
        with open(os.path.join(model_dir, "progress.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", default="runs/issue7/killed")
    parser.add_argument("--kill_at_task", type=int, default=2)
    parser.add_argument("--reference",
                        default="runs/issue7/bd_ewc_single/results.json")
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds each of the two runs may take")
    parser.add_argument("trainer_flags", nargs="*")
    args = parser.parse_args()
    model_dir = args.model_dir.rstrip("/")
    command = [sys.executable, "-m", "trainers.train",
               *(args.trainer_flags or DEFAULT_FLAGS),
               f"--model_dir={model_dir}"]
    if os.path.exists(model_dir):
        shutil.rmtree(model_dir)
    print("command:", " ".join(command[1:]), flush=True)

    # 1. Start, wait for the kill point, kill -9.
    with open(f"{model_dir}.first.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        start = time.monotonic()
        while True:
            progress = read_progress(model_dir)
            if progress and progress.get("task", -1) >= args.kill_at_task:
                break
            if proc.poll() is not None:
                sys.exit(f"FAIL: the run ended (exit {proc.returncode}) "
                         f"before task {args.kill_at_task}; see "
                         f"{model_dir}.first.log")
            if time.monotonic() - start > args.timeout:
                proc.kill()
                sys.exit("FAIL: timed out before the kill point")
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = read_progress(model_dir)
    elapsed = time.monotonic() - start
    print(f"killed (exit {proc.returncode}) after {elapsed:.0f} s at task "
          f"{killed['task']}, epoch {killed['epochs_done']} done; "
          f"checkpoint {killed['checkpoint']}", flush=True)

    # 2. The same command again.
    with open(f"{model_dir}.resume.log", "w") as log:
        rerun = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                               timeout=args.timeout)
    with open(f"{model_dir}.resume.log") as f:
        resumed_log = f.read()
    problems = []
    if rerun.returncode != 0:
        problems.append(f"the rerun exited {rerun.returncode}")
    expected = f"Resuming {model_dir} at task {killed['task']}"
    if expected not in resumed_log:
        problems.append(f"the rerun's log lacks {expected!r}")
    results_path = os.path.join(model_dir, "results.json")
    results = None
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    else:
        problems.append("no results.json")
    if results:
        num_tasks = results["num_tasks"]
        retrained = [t for t in range(killed["task"])
                     if f"Task {t + 1}/{num_tasks}:" in resumed_log]
        if retrained:
            problems.append(f"the rerun trained finished tasks {retrained}")
        before = killed["accuracy_matrix"][: killed["task"]]
        after = results["accuracy_matrix"][: killed["task"]]
        if before != after:
            problems.append("the finished tasks' rows changed")
        print(f"rows of the finished tasks kept: {before == after}")
        print(f"resumed run: ACC {results['acc']:.4f}")
        if args.reference and os.path.exists(args.reference):
            with open(args.reference) as f:
                reference = json.load(f)
            gap = abs(results["acc"] - reference["acc"])
            print(f"uninterrupted run ({args.reference}): ACC "
                  f"{reference['acc']:.4f}; difference {gap:.4f} "
                  f"(tolerance {args.tolerance})")
            if gap > args.tolerance:
                problems.append(f"ACC differs by {gap:.4f}")
    if problems:
        sys.exit("FAIL: " + "; ".join(problems))
    print("PASS")


if __name__ == "__main__":
    main()
