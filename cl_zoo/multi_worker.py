"""`--strategy=multi_worker_mirrored`: the strategy, the cluster's roles, and
the one workaround of Keras internals that lets `model.fit` run under it.

`model.fit` fails under `tf.distribute.MultiWorkerMirroredStrategy` in Keras
3.15 (keras-team/keras#20585, tensorflow/tensorflow#72388), in two spots of
`keras/src/backend/tensorflow/trainer.py`:

1. `TensorFlowTrainer._maybe_symbolic_build` reduces the first batch with
   `strategy.reduce("MEAN", batch, axis=None)`, which cannot convert a
   nested `PerReplica` ("Attempt to convert a value (PerReplica...)");
2. `_make_function` reduces the step's logs with `reduce_per_replica(...,
   reduction="auto")`, which under multi-worker becomes
   `strategy.reduce("MEAN", v, axis=0)` on scalars ("Invalid reduction
   dimension 0 for input with 0 dimensions").

`install()` replaces exactly these two, and only while a multi-worker
strategy is in use: the first with the same build on the first replica's
slice of the batch (`experimental_local_results`, public), the second with
`strategy.reduce("MEAN", v, axis=None)` for scalars. It refuses Keras
versions other than the verified ones (`VERIFIED_KERAS`), saying so in one
line. Everything else (the steps, the gradients, the collectives) is
TensorFlow's public multi-worker engine. Tests: `tests/test_multi_worker.py`.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from cl_zoo.settings import ConfigError

# Keras releases whose trainer the workaround was read against and tested
# with (major.minor.patch prefixes).
VERIFIED_KERAS = ("3.15.",)
UPSTREAM_ISSUE = "keras-team/keras#20585"
# No per-collective timeout (CommunicationOptions.timeout_seconds): TF 2.21
# keeps a timer thread alive for the whole timeout of every collective that
# has one; with a 120 s timeout two workers held 4,900 threads each after
# two tasks of split MNIST, and then pthread_create failed. A dead worker is
# found by the strategy's own health check instead (it pings every peer
# every 30 s and aborts the collectives when one does not answer within
# 10 s).

_installed = []


def is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def cluster_spec():
    """`(workers, index)` from TF_CONFIG; ConfigError when it is missing
    or malformed."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ConfigError(
            "--strategy=multi_worker_mirrored needs TF_CONFIG (the cluster "
            "and this worker's index, one per worker); to try it on one "
            "machine: python -m trainers.launch_local --workers=2 -- "
            "<train flags>."
        )
    try:
        spec = json.loads(text)
        workers = list(spec["cluster"]["worker"])
        kind, index = spec["task"]["type"], int(spec["task"]["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"TF_CONFIG is malformed ({type(e).__name__}: {e}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
            '"worker", "index": I}}'
        ) from None
    if kind != "worker" or not 0 <= index < len(workers):
        raise ConfigError(
            f"TF_CONFIG's task is {kind!r} {index}; expected a worker index "
            f"in 0..{len(workers) - 1} (worker 0 is the chief)"
        )
    return workers, index


def check_keras_version(version=None):
    version = version or keras.__version__
    if not version.startswith(VERIFIED_KERAS):
        raise ConfigError(
            f"--strategy=multi_worker_mirrored relies on a workaround of "
            f"{UPSTREAM_ISSUE} verified on Keras "
            f"{', '.join(v.rstrip('.') for v in VERIFIED_KERAS)} only; this "
            f"is Keras {version}. Use --strategy=mirrored, or check "
            "cl_zoo/multi_worker.py against this version."
        )


def make_strategy():
    """The multi-worker strategy of TF_CONFIG's cluster, with the
    workaround installed. Call before any other TensorFlow op."""
    cluster_spec()
    check_keras_version()
    install()
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """Worker 0 writes the run's files; single-machine strategies always."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


# ----------------------------------------------------------- workaround
def install():
    """Replaces the two spots (see the module docstring); idempotent."""
    if _installed:
        return
    check_keras_version()
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if not is_multi_worker(strategy) or iterator is None:
            return original_build(self, iterator=iterator,
                                  data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tree.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v,
                batch,
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if not is_multi_worker(strategy) or reduction not in ("auto",
                                                              "mean"):
            return original_reduce(values, strategy, reduction)

        def mean(v):
            local = strategy.experimental_local_results(v)[0]
            if getattr(local, "shape", None) is None:
                return v
            return strategy.reduce(
                "MEAN", v, axis=None if local.shape.rank == 0 else 0
            )

        return tree.map_structure(mean, values)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _installed.append((original_build, original_reduce))


def uninstall():
    """Restores Keras's own functions (tests)."""
    if not _installed:
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_build, original_reduce = _installed.pop()
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = original_build
    tf_trainer.reduce_per_replica = original_reduce
