"""A Keras user's sequence API: train and evaluate a whole task sequence.

    model.compile(optimizer="adam", loss=..., metrics=["accuracy"])
    result = cl_zoo.fit_tasks(model, bm, epochs=1)
    print(result.accuracy_matrix, result.acc)
    cl_zoo.evaluate_tasks(model, bm)          # accuracy of every task now

`fit_tasks` is what `python -m trainers.train` does without the run
directory (no checkpoints, summaries or exports): for each task,
`begin_task`, `fit` on the task's data (shuffled with seed `seed + t`, as the
trainer does), `end_task`, then the accuracy of every task. The datasets
carry the task id, so each task is scored in its own mode whatever
`model.task` holds.
"""

from __future__ import annotations

import dataclasses

from cl_zoo import metrics as metrics_lib


@dataclasses.dataclass
class SequenceResult:
    """What `fit_tasks` measured.

    Attributes:
        accuracy_matrix: `R[i][j]`, test accuracy on task j after training
            task i (every j, future tasks included).
        initial_accuracy: `b_j`, accuracy on task j before any training.
        histories: the `keras.callbacks.History` of each task's `fit`.
    """

    accuracy_matrix: list
    initial_accuracy: list
    histories: list

    @property
    def metrics(self):
        """ACC, BWT, FWT and forgetting (the contract's definitions)."""
        return metrics_lib.summarize(self.accuracy_matrix,
                                     self.initial_accuracy)

    @property
    def acc(self):
        return self.metrics["acc"]


def evaluate_tasks(model, benchmark, batch_size=1000):
    """Test accuracy of every task of `benchmark`, each in its own mode."""
    from cl_zoo.train_lib import Evaluator

    return Evaluator(model, benchmark, batch_size).all_tasks()


def fit_tasks(model, benchmark, epochs=1, batch_size=128, callbacks=None,
              verbose="auto", seed=0, eval_batch_size=1000):
    """Trains a compiled `ContinualModel` on each task of `benchmark`.

    Args:
        model: a compiled `ContinualModel` (any registered method).
        benchmark: a `cl_zoo.benchmarks` Benchmark.
        epochs: epochs per task.
        batch_size: training batch size.
        callbacks: Keras callbacks for every task's `fit` (epochs are
            counted over the whole sequence, as in the trainer).
        verbose: `fit`'s verbosity.
        seed: seed of each task's data order (`seed + t`).
        eval_batch_size: batch size of the accuracy evaluations.

    Returns:
        A `SequenceResult`.
    """
    from cl_zoo.train_lib import Evaluator

    if model.optimizer is None:
        raise ValueError(
            "Expected a compiled model: call `model.compile(optimizer=..., "
            "loss=...)` before `fit_tasks`."
        )
    if not model.built:
        model.build_for_inputs()
    model.build_optimizers()
    evaluator = Evaluator(model, benchmark, eval_batch_size)
    initial = evaluator.all_tasks()
    matrix, histories = [], []
    for task in range(benchmark.num_tasks):
        model.begin_task(task, benchmark)
        dataset = model.train_dataset(task, benchmark, batch_size,
                                      seed=seed + task)
        histories.append(model.fit(
            dataset, initial_epoch=task * epochs, epochs=(task + 1) * epochs,
            callbacks=callbacks, verbose=verbose, shuffle=False,
        ))
        model.end_task(task, benchmark)
        matrix.append(evaluator.all_tasks())
    return SequenceResult(matrix, initial, histories)
