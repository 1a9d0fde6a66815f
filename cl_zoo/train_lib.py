"""Runs a method over a benchmark's task sequence: the library behind
`python -m trainers.train`.

A run trains tasks 0..T-1 in turn with `model.fit`, evaluates every task's
test split after each task (and once before any training), and leaves in
`model_dir`: `results.json`, `config.json`, TensorBoard `summaries/`,
`export/task_<t>/` and `export/all_tasks/` SavedModels, and PNG plots.

It checkpoints after every epoch; started again on the same `model_dir`, an
unfinished run resumes from its last completed epoch, and a finished one is
refused unless `overwrite=True`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.plugins.histogram import summary_v2 as histogram_summary

from cl_zoo import benchmarks as benchmarks_lib
from cl_zoo import export as export_lib
from cl_zoo import metrics as metrics_lib
from cl_zoo import multi_worker, optimizers, plots
from cl_zoo import task_inference as task_inference_lib
from cl_zoo.config import ConfigError, RunConfig
from cl_zoo.losses import make_loss
from cl_zoo.methods import get_method

PROGRESS_FILE = "progress.json"
RESULTS_FILE = "results.json"


class RunStateError(RuntimeError):
    """The model_dir holds a run that cannot be resumed or overwritten."""


# ----------------------------------------------------------------------
# Files.
def write_json_atomically(path, payload):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_progress(model_dir):
    path = os.path.join(model_dir, PROGRESS_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            progress = json.load(f)
        if not isinstance(progress, dict):
            raise ValueError("not a JSON object")
        return progress
    except (OSError, ValueError) as e:  # JSON and UTF-8 errors too
        raise RunStateError(
            f"{path} is unreadable ({e}); delete the run directory or pass "
            "--overwrite to start again."
        ) from e


LOCK_FILE = ".lock"


class RunLock:
    """Holds a run directory for one process at a time.

    An advisory lock (`fcntl.flock`) on `MODEL_DIR/.lock`, which holds the
    holder's pid and start time: a second run on the directory fails at
    once, naming the holder. The system drops the lock when its process
    ends, however it ends, so a killed run never blocks the rerun that
    resumes it.
    """

    def __init__(self, model_dir):
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._file = None

    def holder(self):
        """The holder's line (pid, start) if another process holds the
        lock, else None."""
        if not os.path.exists(self.path):
            return None
        with open(self.path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return f.read().strip() or "another process"
            fcntl.flock(f, fcntl.LOCK_UN)
        return None

    def acquire(self):
        """Takes the lock; RunStateError if another process holds it."""
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunStateError(
                f"{os.path.dirname(self.path)} is in use by another run "
                f"({holder}); wait for it to end or pick another "
                "--model_dir."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._file = f

    def release(self):
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __del__(self):
        # A run object dropped without `run()` (or after an error).
        self.release()


def _check_writable_dir(model_dir):
    """RunStateError unless `model_dir` is, or can become, a directory."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise RunStateError(
            f"--model_dir={model_dir} is a file, not a directory; pick "
            "another --model_dir."
        )
    parent = os.path.dirname(os.path.abspath(model_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise RunStateError(
            f"--model_dir={model_dir} cannot be made: {parent} is a file, "
            "not a directory."
        )
    if not os.access(parent if not os.path.isdir(model_dir) else model_dir,
                     os.W_OK):
        raise RunStateError(
            f"--model_dir={model_dir} is not writable; pick another "
            "--model_dir."
        )


def prepare_model_dir(config: RunConfig, lock=None):
    """Checks model_dir: returns the progress to resume, or None to start.

    Raises RunStateError for a path that cannot be a directory, a directory
    another run holds (`lock`, a `RunLock`, is taken), a finished run
    (without overwrite) or an unfinished run of a different configuration.
    """
    model_dir = config.model_dir
    if not model_dir:
        raise ConfigError("--model_dir is required: where the run writes.")
    _check_writable_dir(model_dir)
    if lock is not None:
        holder = lock.holder()
        if holder is not None:
            raise RunStateError(
                f"{model_dir} is in use by another run ({holder}); wait for "
                "it to end or pick another --model_dir."
            )
    if config.overwrite and os.path.isdir(model_dir):
        # Before reading progress.json: --overwrite also replaces a run
        # whose progress.json is unreadable.
        shutil.rmtree(model_dir)
    progress = read_progress(model_dir)
    if progress is None:
        if os.path.isdir(model_dir) and os.listdir(model_dir):
            # What a run writes before its first checkpoint.
            leftovers = set(os.listdir(model_dir)) - {
                "summaries", "config.json", "checkpoints", LOCK_FILE
            }
            if leftovers:
                raise RunStateError(
                    f"{model_dir} is not empty and holds no cl_zoo run; pick "
                    "another --model_dir or pass --overwrite."
                )
        os.makedirs(model_dir, exist_ok=True)
        if lock is not None:
            lock.acquire()
        return None
    if progress.get("status") == "finished":
        raise RunStateError(
            f"{model_dir} holds a finished run; pass --overwrite to replace "
            "it or pick another --model_dir."
        )
    saved = dict(progress.get("config", {}))
    current = config.to_dict()
    ignore = {"overwrite", "verbose", "model_dir"}
    diff = sorted(
        k for k in current
        if k not in ignore and saved.get(k) != current[k]
    )
    if diff:
        raise RunStateError(
            f"{model_dir} holds an unfinished run with other settings "
            f"({', '.join(diff)}); rerun the same command to resume it, or "
            "pass --overwrite to start again."
        )
    if lock is not None:
        lock.acquire()
    return progress


# ----------------------------------------------------------------------
# Distribution.
def make_strategy(config: RunConfig):
    if config.strategy == "default":
        return tf.distribute.get_strategy()
    if config.strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = tf.config.list_logical_devices("CPU")
        if len(cpus) < config.num_cpu_devices:
            raise ConfigError(
                f"--num_cpu_devices={config.num_cpu_devices} but TensorFlow "
                f"has {len(cpus)} logical CPU devices; the trainer must split "
                "the CPU before any TensorFlow op runs."
            )
        return tf.distribute.MirroredStrategy(
            [d.name for d in cpus[: config.num_cpu_devices]]
        )
    return multi_worker.make_strategy()


def worker_progress(config: RunConfig):
    """What a worker other than the chief resumes from: the chief's
    progress, read only (None with --overwrite: the chief starts afresh)."""
    if config.overwrite:
        return None
    progress = read_progress(config.model_dir)
    if progress is not None and progress.get("status") == "finished":
        raise RunStateError(
            f"{config.model_dir} holds a finished run; pass --overwrite to "
            "replace it or pick another --model_dir."
        )
    return progress


def intra_op_threads(config: RunConfig):
    """The intra-op thread count of `--threads` (0: TensorFlow's default).

    Unset, it is 1 for a dense network with one replica per process: its
    matmuls are too small for a second thread to pay for the CPU time it
    spends (trainers/bench_vs_torch.py), and TensorFlow's default, every
    core, otherwise (convolutions, several replicas in one process).
    """
    if config.threads is not None:
        return config.threads
    one_replica = config.strategy != "mirrored"
    dense = get_method(config.method).dense_network(config)
    return 1 if one_replica and dense else 0


def set_threads(config: RunConfig):
    """Applies `--threads`; call before any TensorFlow op."""
    threads = intra_op_threads(config)
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    return threads


def split_cpu(num_devices):
    """Splits the CPU into logical devices; call before any TensorFlow op."""
    if num_devices <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0],
        [tf.config.LogicalDeviceConfiguration()] * num_devices,
    )


# Training steps per call of Keras's train function with one replica: the
# steps run in a loop inside one graph, which saves Keras's per-call work
# (about 10 % of an MLP step on 2 cores) and gives the same updates.
STEPS_PER_EXECUTION = 32


def steps_per_execution(strategy):
    """`STEPS_PER_EXECUTION` with one replica; 1 with several, where the
    multi-step loop is not what the replica tests check."""
    if strategy.num_replicas_in_sync == 1 and not multi_worker.is_multi_worker(
            strategy):
        return STEPS_PER_EXECUTION
    return 1


def make_optimizer(config: RunConfig):
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.lr)
    if config.optimizer == "momentum":
        return keras.optimizers.SGD(config.lr, momentum=0.9)
    if config.optimizer == "adam":
        return optimizers.Adam(config.lr, beta_1=config.adam_beta1)
    return keras.optimizers.RMSprop(config.lr)


# Training examples per task that task inference's statistics are fit on.
INFERENCE_EXAMPLES = 10000


# ----------------------------------------------------------------------
# Evaluation.
class Evaluator:
    """Test accuracy of each task, with one traced function for all tasks."""

    def __init__(self, model, benchmark, batch_size, max_examples=0):
        self.model = model
        self.benchmark = benchmark
        self.batch_size = batch_size
        self.max_examples = max_examples
        self._datasets = {}
        self._agnostic = None

        @tf.function(reduce_retracing=True, autograph=False)
        def correct(inputs, y):
            logits = model(inputs, training=False)
            pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
            hits = tf.cast(pred == tf.cast(y, tf.int32), tf.int64)
            return tf.reduce_sum(hits)

        self._correct = correct

    def _dataset(self, task):
        if task not in self._datasets:
            dataset = self.benchmark.test_dataset(
                task,
                self.batch_size,
                head=self.model.label_mode,
                with_task_id=True,
            )
            if self.max_examples:
                # The first examples of the test split: the same every time.
                dataset = dataset.unbatch().take(self.max_examples).batch(
                    self.batch_size
                )
            self._datasets[task] = dataset.cache()
        return self._datasets[task]

    def task_accuracy(self, task):
        hits, total = 0, 0
        for inputs, y in self._dataset(task):
            hits += int(self._correct(inputs, y))
            total += int(tf.shape(y)[0])
        return hits / max(total, 1)

    def all_tasks(self):
        return [
            self.task_accuracy(t) for t in range(self.benchmark.num_tasks)
        ]

    def task_agnostic(self, inference, learned):
        """Accuracy of each task learned so far without its id: the task
        is inferred among the `learned` first ones, then its mode predicts
        a class of the whole sequence. Returns `(row, task_accuracy)`: the
        fraction classified right for tasks 0..learned-1, and how often the
        inferred task was the true one over their test sets."""
        if self._agnostic is None:
            table = task_inference_lib.class_table(self.model)
            model = self.model

            @tf.function(reduce_retracing=True, autograph=False)
            def step(x, task, y, learned):
                inferred = inference.infer(x, learned)
                scores = task_inference_lib.global_scores(
                    model, x, inferred, table)
                pred = tf.argmax(scores, axis=-1, output_type=tf.int32)
                hits = tf.reduce_sum(tf.cast(pred == y, tf.int64))
                right = tf.reduce_sum(tf.cast(inferred == task, tf.int64))
                return hits, right

            self._agnostic = step
        row, right, total = [], 0, 0
        for t in range(learned):
            hits = count = 0
            for inputs, y in self._global_dataset(t):
                h, r = self._agnostic(inputs["x"], inputs["task"],
                                      tf.cast(y, tf.int32),
                                      tf.constant(learned, tf.int32))
                hits += int(h)
                count += int(tf.shape(y)[0])
                right += int(r)
            total += count
            row.append(hits / max(count, 1))
        return row, right / max(total, 1)

    def _global_dataset(self, task):
        key = ("global", task)
        if key not in self._datasets:
            dataset = self.benchmark.test_dataset(
                task, self.batch_size, head="single", with_task_id=True)
            if self.max_examples:
                dataset = dataset.unbatch().take(self.max_examples).batch(
                    self.batch_size)
            self._datasets[key] = dataset.cache()
        return self._datasets[key]


# ----------------------------------------------------------------------
# Checkpoints.
class RunCheckpoint:
    """Every variable of the run: model, optimizer, consolidation state.

    Written to a fresh directory and then named in progress.json (written
    atomically), so a run killed mid-write resumes from the previous one.
    """

    def __init__(self, model, model_dir, restore_dir=None, extra=None):
        self.model = model
        self.root = os.path.join(model_dir, "checkpoints")
        # Where `restore` reads when not `root`: the chief's directory, for
        # the other workers of a multi-worker run.
        self.restore_root = (os.path.join(restore_dir, "checkpoints")
                             if restore_dir else None)
        # Explicit lists, in a fixed order: tf.train.Checkpoint(model=model)
        # does not reach Keras layers held in Python lists.
        consolidation = model.consolidation
        groups = {
            "model": model.variables,
            "optimizer": model.optimizer.variables,
            "rules": [v for r in model.gradient_rules
                      for v in (r.optimizer.variables if r.optimizer else [])],
            "consolidation": (
                consolidation.state_variables() if consolidation else []
            ),
            "method_state": model.method_state.variables,
            "extra_optimizers": [
                v for opt in model.extra_optimizers() for v in opt.variables
            ],
        }
        if extra is not None:  # task inference's statistics
            groups["task_inference"] = extra.variables_to_save
        self.checkpoint = tf.train.Checkpoint(
            **{k: [v.value if isinstance(v, keras.Variable) else v
                   for v in vs] for k, vs in groups.items()}
        )

    def save(self, name):
        path = os.path.join(self.root, name)
        if os.path.exists(path):
            shutil.rmtree(path)
        self.checkpoint.write(os.path.join(path, "ckpt"))
        return name

    def restore(self, name):
        path = os.path.join(self.restore_root or self.root, name, "ckpt")
        try:
            self.checkpoint.read(path).assert_consumed()
        except (tf.errors.OpError, AssertionError, ValueError, IndexError,
                OSError) as e:  # IndexError: a truncated data file
            reason = " ".join(str(e).split())  # one line
            raise RunStateError(
                f"Checkpoint {path} is corrupt or from another model "
                f"({reason}); pass --overwrite to start the run again."
            ) from e

    def prune(self, keep):
        if not os.path.isdir(self.root):
            return
        for entry in os.listdir(self.root):
            if entry != keep:
                shutil.rmtree(os.path.join(self.root, entry),
                              ignore_errors=True)


class _LearningRateDecay(keras.callbacks.Callback):
    """lr * decay**epoch on the model's optimizer and on its extra ones
    (DGM's generator optimizer), unlike Keras's LearningRateScheduler,
    which sets `model.optimizer` only."""

    def __init__(self, base, decay):
        super().__init__()
        self.base, self.decay = base, decay

    def on_epoch_begin(self, epoch, logs=None):
        lr = self.base * self.decay**epoch
        for opt in (self.model.optimizer, *self.model.extra_optimizers()):
            opt.learning_rate = lr

    def on_epoch_end(self, epoch, logs=None):
        # In the epoch's logs (TensorBoard's epoch_learning_rate), as
        # Keras's scheduler does.
        if logs is not None:
            # The rate this callback set (reading the optimizer's variable
            # back is a MirroredVariable under multi_worker_mirrored).
            logs["learning_rate"] = float(self.base * self.decay**epoch)


class StopRequest:
    """A request to stop the run (Ctrl-C), honoured where it is safe.

    A signal handler calls `request()`; while `fit` runs, the run stops at
    the end of the current batch by raising KeyboardInterrupt from Python
    code (`_StopOnRequest`), never from inside TensorFlow's C++ ops, where
    an interrupt can crash the process. Outside `fit` the handler raises at
    once. The run keeps what its last finished epoch checkpointed.
    """

    requested = False
    fitting = False

    @classmethod
    def request(cls):
        if not cls.fitting:
            raise KeyboardInterrupt
        cls.requested = True


class _StopOnRequest(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        StopRequest.fitting = True

    def on_train_end(self, logs=None):
        StopRequest.fitting = False

    def on_train_batch_end(self, batch, logs=None):
        if StopRequest.requested:
            StopRequest.fitting = False
            raise KeyboardInterrupt


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint and the progress after every epoch."""

    def __init__(self, run, task):
        super().__init__()
        self.run = run
        self.task = task

    def on_epoch_end(self, epoch, logs=None):
        epochs_done = epoch + 1 - self.task * self.run.config.epochs
        self.run.save_progress(self.task, epochs_done)


class _Timer(keras.callbacks.Callback):
    def __init__(self, run):
        super().__init__()
        self.run = run
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        wall, cpu = self._start
        self.run.train_seconds += time.perf_counter() - wall
        # This process's CPU time (every thread): the steadier measure on a
        # shared machine (trainers/bench_vs_torch.py compares with it).
        self.run.train_cpu_seconds += time.process_time() - cpu


def check_data(config, benchmark):
    """Refuses a run that the data cannot feed (BenchmarkError): a batch
    larger than a task's training set would train on nothing."""
    sizes = [benchmark.train_size(t) for t in range(benchmark.num_tasks)]
    smallest = min(range(len(sizes)), key=sizes.__getitem__)
    if config.batch_size > sizes[smallest]:
        raise benchmarks_lib.BenchmarkError(
            f"--batch_size={config.batch_size} is larger than task "
            f"{smallest}'s training set ({sizes[smallest]} examples), so "
            f"that task would train on nothing; use --batch_size <= "
            f"{sizes[smallest]}."
        )


# ----------------------------------------------------------------------
# The run.
class ContinualRun:
    """One method on one benchmark, task after task."""

    def __init__(self, config: RunConfig, benchmark=None, strategy=None):
        self.config = config
        # The data first: bad data must leave --model_dir untouched.
        self.benchmark = benchmark or benchmarks_lib.run_benchmark(config)
        check_data(config, self.benchmark)
        self.strategy = strategy or make_strategy(config)
        # Under multi_worker_mirrored only worker 0 (the chief) writes
        # --model_dir; the others take part in every collective and keep
        # their files in a scratch directory removed at the end.
        self.chief = multi_worker.is_chief(self.strategy)
        self._scratch = None
        restore_dir = config.model_dir
        if self.chief:
            self.lock = RunLock(config.model_dir)
            self.progress = prepare_model_dir(config, self.lock)
        else:
            self.progress = worker_progress(config)
            self._scratch = tempfile.mkdtemp(prefix="cl_zoo_worker_")
            self.config = config = config.replace(
                model_dir=self._scratch, verbose=0)
            self.lock = RunLock(self._scratch)
            self.lock.acquire()
        keras.utils.set_random_seed(config.seed)
        method_cls = get_method(config.method)
        with self.strategy.scope():
            self.model = method_cls.from_run_config(config, self.benchmark)
            self.model.build_for_inputs()
            optimizer = make_optimizer(config)
            self.model.compile(
                optimizer=optimizer,
                loss=make_loss(config.loss),
                metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
                steps_per_execution=steps_per_execution(self.strategy),
            )
            self.model.build_optimizers()
        # --steps_per_task: one "epoch" of that many batches per task.
        self.model.steps_per_task = config.steps_per_task
        # Task-conditioned models are also evaluated without task ids.
        self.inference = (
            task_inference_lib.SubspaceTaskInference(
                self.benchmark.num_tasks, self.benchmark.input_shape)
            if self.model.task_conditioned else None
        )
        self.agnostic = []  # rows of the task-agnostic accuracy matrix
        self.task_right = []  # per row: how often the task was inferred
        self.checkpoint = RunCheckpoint(
            self.model, config.model_dir,
            restore_dir=None if self.chief else restore_dir,
            extra=self.inference)
        self.evaluator = Evaluator(
            self.model, self.benchmark, config.eval_batch_size,
            config.eval_examples,
        )
        summaries = os.path.join(config.model_dir, "summaries")
        self.summary_dir = summaries
        self.writer = tf.summary.create_file_writer(
            os.path.join(summaries, "eval")
        )
        self.matrix = []
        self.initial = None
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0
        self._ckpt_counter = 0
        self._png_cache = (None, None)

    # Progress -----------------------------------------------------------
    def save_progress(self, task, epochs_done, status="running"):
        self._ckpt_counter += 1
        name = self.checkpoint.save(f"ckpt-{self._ckpt_counter}")
        write_json_atomically(
            os.path.join(self.config.model_dir, PROGRESS_FILE),
            {
                "status": status,
                "task": task,
                "epochs_done": epochs_done,
                "checkpoint": name,
                "accuracy_matrix": self.matrix,
                "initial_accuracy": self.initial,
                "task_agnostic_matrix": self.agnostic,
                "task_agnostic_task_accuracy": self.task_right,
                "train_seconds": self.train_seconds,
                "train_cpu_seconds": self.train_cpu_seconds,
                "config": self.config.to_dict(),
            },
        )
        self.checkpoint.prune(keep=name)

    def _resume_point(self):
        """(task, epochs already done in it), restoring state if resuming."""
        p = self.progress
        if p is None:
            return 0, 0
        try:
            self.matrix = [list(r) for r in p["accuracy_matrix"]]
            self.initial = p["initial_accuracy"]
            self.agnostic = [list(r) for r in p.get("task_agnostic_matrix",
                                                    [])]
            self.task_right = list(p.get("task_agnostic_task_accuracy", []))
            self.train_seconds = float(p["train_seconds"])
            self.train_cpu_seconds = float(p.get("train_cpu_seconds", 0.0))
            self._ckpt_counter = int(p["checkpoint"].split("-")[-1])
            task, done = int(p["task"]), int(p["epochs_done"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RunStateError(
                f"{os.path.join(self.config.model_dir, PROGRESS_FILE)} is "
                f"malformed ({type(e).__name__}: {e}); pass --overwrite to "
                "start the run again."
            ) from e
        self.checkpoint.restore(p["checkpoint"])
        if done >= self.config.epochs and len(self.matrix) > task:
            return task + 1, 0
        return task, done

    # Main loop ----------------------------------------------------------
    def run(self):
        try:
            return self._run()
        finally:
            self.lock.release()
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)

    def _run(self):
        config, bm = self.config, self.benchmark
        write_json_atomically(
            os.path.join(config.model_dir, "config.json"), config.to_dict()
        )
        start_task, start_epoch = self._resume_point()
        if self.progress is not None:
            logging.info(
                "Resuming %s at task %d, epoch %d.",
                config.model_dir, start_task, start_epoch,
            )
            if config.verbose:
                print(f"Resuming {config.model_dir} at task "
                      f"{start_task + 1}/{bm.num_tasks}, epoch "
                      f"{start_epoch + 1}/{config.epochs}.", flush=True)
        if self.initial is None:
            self.initial = self.evaluator.all_tasks()
            self._log_text()
        for task in range(start_task, bm.num_tasks):
            self._train_task(task, start_epoch if task == start_task else 0)
        return self.finish()

    def _train_task(self, task, first_epoch):
        config, model = self.config, self.model
        if first_epoch == 0:
            model.begin_task(task, self.benchmark)
        else:
            # Resuming mid-task: the optimizer slots and the task's state
            # were restored from the checkpoint; only re-activate the task.
            model.task.assign(task)
        if config.verbose:
            print(
                f"Task {task + 1}/{self.benchmark.num_tasks}: classes "
                f"{self.benchmark.task_classes[task]}",
                flush=True,
            )
        dataset = model.train_dataset(
            task, self.benchmark, config.batch_size, seed=config.seed + task
        )
        if multi_worker.is_multi_worker(self.strategy):
            # Each worker takes its share of every global batch, as the
            # replicas of one machine do (the data is in memory, not files).
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA)
            dataset = dataset.with_options(options)
        for _ in range(2 * first_epoch):
            # Every new iterator reshuffles, and Keras 3.15's fit makes two
            # per epoch (one at its start, one when an epoch ends): pass the
            # orders of the epochs done, so that a resumed task sees the
            # data of the uninterrupted run (tests/test_reliability.py).
            iter(dataset)
        if first_epoch < config.epochs:
            model.fit(
                dataset,
                initial_epoch=task * config.epochs + first_epoch,
                epochs=(task + 1) * config.epochs,
                verbose=config.verbose,
                shuffle=False,  # the dataset is shuffled by the benchmark
                callbacks=[
                    # First, so the epoch's rate is in the logs the others
                    # (TensorBoard) see.
                    *self._lr_schedule(),
                    _StopOnRequest(),
                    _Timer(self),
                    keras.callbacks.TensorBoard(
                        self.summary_dir, write_graph=False
                    ),
                    _EpochCheckpoint(self, task),
                ],
            )
        model.end_task(task, self.benchmark)
        row = self.evaluator.all_tasks()
        self.matrix = self.matrix[:task] + [row]
        if self.inference is not None:
            self.inference.fit_task(task, self.benchmark.train_arrays(
                task, limit=INFERENCE_EXAMPLES)[0])
            agnostic, right = self.evaluator.task_agnostic(
                self.inference, task + 1)
            self.agnostic = self.agnostic[:task] + [agnostic]
            self.task_right = self.task_right[:task] + [right]
        self._log_task(task, row)
        self.save_progress(task, config.epochs)

    def _lr_schedule(self):
        """`--lr_decay`: lr * decay**epoch, epochs counted over the run.

        Fit's epoch index runs on across tasks (and survives a resume), so
        the rate is a function of it alone.
        """
        base, decay = self.config.lr, self.config.lr_decay
        if decay == 1.0:
            return []
        return [_LearningRateDecay(base, decay)]

    # Logging ------------------------------------------------------------
    def _log_text(self):
        from tensorboard.plugins.hparams import api as hparams_api

        # TensorBoard's HPARAMS view: one row per run, its settings beside
        # its test accuracy, so a sweep compares there.
        hparams = {
            key: (",".join(map(str, value)) if isinstance(value, tuple)
                  else "none" if value is None else value)
            for key, value in self.config.items()
            if key not in ("model_dir", "overwrite", "verbose")
        }
        with self.writer.as_default():
            hparams_api.hparams(hparams, trial_id=self.config.model_dir)
            tf.summary.text(
                "config", f"```\n{self.config.to_json()}\n```", step=0
            )
            for j, acc in enumerate(self.initial):
                tf.summary.scalar(f"test_accuracy/task_{j}", acc, step=0)
        self.writer.flush()

    def _log_task(self, task, row):
        seen = float(np.mean(row[: task + 1]))
        if self.config.verbose:
            shown = " ".join(f"{a:.4f}" for a in row)
            print(
                f"After task {task + 1}: test accuracy per task [{shown}], "
                f"mean over tasks seen {seen:.4f}",
                flush=True,
            )
            if self.inference is not None:
                # The same test data with the task inferred from the input.
                agnostic = float(np.mean(self.agnostic[task]))
                print(f"  without task ids: mean over tasks seen "
                      f"{agnostic:.4f}, task inferred right "
                      f"{self.task_right[task]:.4f}", flush=True)
        with self.writer.as_default():
            step = task + 1
            for j, acc in enumerate(row):
                tf.summary.scalar(f"test_accuracy/task_{j}", acc, step=step)
            tf.summary.scalar("test_accuracy/mean_seen", seen, step=step)
            if self.inference is not None:
                # Both curves: with the task oracle (above) and without.
                tf.summary.scalar("task_agnostic/mean_seen",
                                  float(np.mean(self.agnostic[task])),
                                  step=step)
                tf.summary.scalar("task_agnostic/task_accuracy",
                                  self.task_right[task], step=step)
            self._log_importances(step)
            if hasattr(self.model, "log_task_summaries"):
                self.model.log_task_summaries(
                    task, step, self.config.model_dir
                )
            image = self._matrix_png()
            tf.summary.image(
                "accuracy_matrix",
                tf.image.decode_png(image, channels=4)[None],
                step=step,
            )
        if tuple(self.benchmark.input_shape) == (2,):
            self._log_decision_boundary(task)
        self.writer.flush()

    def _log_importances(self, step):
        """The consolidation's importances per layer (SPP paper, Fig. 6)."""
        consolidation = self.model.consolidation
        if consolidation is None:
            return
        for path, importance in consolidation.importances():
            # TensorBoard's histogram of the values computed with NumPy:
            # tf.summary.histogram traces a function per variable shape.
            summary = histogram_summary.histogram_pb(
                f"importance/{path}", np.asarray(importance))
            tf.summary.experimental.write_raw_pb(
                summary.SerializeToString(), step=step)

    def _log_decision_boundary(self, task):
        """BPN Fig. 5: P(class 0) over the plane in each task's mode."""
        bm = self.benchmark
        xs, ys = zip(*(bm.test_arrays(j) for j in range(bm.num_tasks)))
        allx = np.concatenate(xs)
        lo, hi = allx.min(axis=0) - 1.0, allx.max(axis=0) + 1.0
        n = 120
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], n),
                             np.linspace(lo[1], hi[1], n))
        grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype("float32")
        grids = []
        for j in range(task + 1):
            ids = np.full(len(grid), j, "int32")
            logits = self.model({"x": grid, "task": ids}, training=False)
            grids.append(tf.nn.softmax(logits)[:, 0].numpy().reshape(n, n))
        png = plots.decision_boundary_png(
            grids, (lo[0], hi[0], lo[1], hi[1]),
            [(xs[j], ys[j]) for j in range(task + 1)],
            title=f"{self._title()}, after task {task + 1}",
        )
        path = os.path.join(
            self.config.model_dir, f"decision_boundary_task{task + 1}.png"
        )
        with open(path, "wb") as f:
            f.write(png)
        tf.summary.image(
            "decision_boundary",
            tf.image.decode_png(png, channels=4)[None],
            step=task + 1,
        )

    def _matrix_png(self):
        """The accuracy matrix's heatmap, drawn once per matrix (the last
        task's TensorBoard image is the run's accuracy_matrix.png)."""
        key = json.dumps(self.matrix)
        if self._png_cache[0] != key:
            self._png_cache = (key, plots.accuracy_matrix_png(
                self.matrix, self.benchmark.num_tasks, title=self._title()))
        return self._png_cache[1]

    def _title(self):
        return f"{self.config.method} on {self.config.benchmark}"

    # End ------------------------------------------------------------------
    def finish(self):
        config, model = self.config, self.model
        summary = metrics_lib.summarize(self.matrix, self.initial)
        results = {
            "method": config.method,
            "benchmark": config.benchmark,
            "num_tasks": self.benchmark.num_tasks,
            "seed": config.seed,
            "task_classes": self.benchmark.task_classes,
            "data": self.benchmark.describe(),
            "accuracy_matrix": self.matrix,
            "initial_accuracy": self.initial,
            **summary,
            "storage_bytes_per_task": int(
                model.storage_bytes_per_task()
                + (self.inference.per_task_bytes() if self.inference else 0)),
            "num_params": int(
                sum(int(np.prod(v.shape)) for v in model.inference_variables())
            ),
            "train_seconds": self.train_seconds,
            "extra": {
                "average_accuracy_curve": metrics_lib.average_accuracy_curve(
                    self.matrix
                ),
                "head": model.head_mode,
                "train_cpu_seconds": self.train_cpu_seconds,
                # 0: TensorFlow's default (--threads).
                "intra_op_threads":
                    tf.config.threading.get_intra_op_parallelism_threads(),
                "eval_examples_per_task": config.eval_examples or "all",
                **({"task_agnostic": {
                    "accuracy_matrix": self.agnostic,
                    "acc": float(np.mean(self.agnostic[-1])),
                    "task_accuracy": self.task_right[-1],
                    "task_accuracy_per_task": self.task_right,
                    "inference": "subspace",
                    "bytes_per_task": self.inference.per_task_bytes(),
                }} if self.inference is not None else {}),
                **model.extra_results(self.matrix, self.benchmark),
            },
            "config": config.to_dict(),
        }
        with open(
            os.path.join(config.model_dir, "accuracy_matrix.png"), "wb"
        ) as f:
            f.write(self._matrix_png())
        with open(
            os.path.join(config.model_dir, "average_accuracy.png"), "wb"
        ) as f:
            f.write(
                plots.curve_png(
                    results["extra"]["average_accuracy_curve"],
                    title=self._title(),
                )
            )
        if config.export:
            export_lib.export_all(
                model, os.path.join(config.model_dir, "export"),
                inference=self.inference,
            )
        write_json_atomically(
            os.path.join(config.model_dir, RESULTS_FILE), results
        )
        self.save_progress(self.benchmark.num_tasks - 1, config.epochs,
                           status="finished")
        if config.verbose:
            print(
                f"ACC {summary['acc']:.4f}  BWT {summary['bwt']:+.4f}  "
                f"FWT {summary['fwt']:+.4f}  forgetting "
                f"{summary['forgetting']:.4f}  ({self.train_seconds:.1f} s "
                f"training); results in {config.model_dir}",
                flush=True,
            )
        return results


def run(config: RunConfig, benchmark=None, strategy=None):
    """Trains `config.method` on the benchmark's tasks; returns results.

    `benchmark` and `strategy` default to the ones `config` names.
    """
    return ContinualRun(config, benchmark=benchmark, strategy=strategy).run()
