r"""How often task inference finds the task, by subspace rank.

    python -m trainers.bench_task_inference \
        [--benchmarks=split_mnist,disjoint_mnist] [--ranks=0,5,10,20,30,50]

For each benchmark and rank, fits `cl_zoo.task_inference.SubspaceTaskInference`
on each task's training inputs (the first 10,000, as a run does) and prints
the fraction of all test inputs whose task it infers, with the bytes it
stores per task. Rank 0 keeps the task means only. No training: inference
reads inputs only, so the figure holds for every method on the benchmark.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m trainers.bench_task_inference",
        description=__doc__.split("\n\n")[1])
    parser.add_argument("--benchmarks", default="split_mnist,disjoint_mnist")
    parser.add_argument("--ranks", default="0,5,10,20,30,50")
    args = parser.parse_args(argv)

    import numpy as np

    from cl_zoo import benchmarks
    from cl_zoo.task_inference import SubspaceTaskInference
    from cl_zoo.train_lib import INFERENCE_EXAMPLES

    print("| benchmark | rank | task inferred right | bytes per task |")
    print("|---|---|---|---|")
    for name in args.benchmarks.split(","):
        bm = benchmarks.get_benchmark(name)
        for rank in (int(r) for r in args.ranks.split(",")):
            inference = SubspaceTaskInference(bm.num_tasks, bm.input_shape,
                                              rank=max(rank, 1))
            for t in range(bm.num_tasks):
                inference.fit_task(t, bm.train_arrays(
                    t, limit=INFERENCE_EXAMPLES)[0])
            if rank == 0:  # the means alone
                inference.bases.assign(np.zeros(inference.bases.shape))
            right = total = 0
            for t in range(bm.num_tasks):
                x, _ = bm.test_arrays(t)
                right += int((inference.infer(x).numpy() == t).sum())
                total += len(x)
            size = 4 * (rank + 1) * inference.input_size
            print(f"| {name} | {rank} | {100 * right / total:.2f} % | "
                  f"{size:,} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
