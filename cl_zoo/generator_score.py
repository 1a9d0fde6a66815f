"""Scoring a generator (`trainers.score_generator`).

Two measures, after Shmelkov et al. (2018), "How good is my GAN?":

- `score` ("GAN-test"): a reference CNN trained on a benchmark's whole
  training set (every class at once, so it is a yardstick, not a continual
  learner) classifies the generator's images; the score of a class is the
  share of its images the reference assigns to it. It tells whether the
  samples look like their class, not whether they cover its variety.
- `train_on_samples` ("GAN-train"): a fresh CNN of the same shape learns
  from generated images only and is tested on the real test set: what a
  classifier can learn from the generator, variety included.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from cl_zoo import augment


def reference_classifier(benchmark, path, epochs=3, seed=0, verbose=2):
    """A CNN trained on every task's training data of `benchmark` at once,
    loaded from `path` if it is there, else trained and saved there."""
    if os.path.exists(path):
        return keras.models.load_model(path)
    keras.utils.set_random_seed(seed)
    tasks = range(benchmark.num_tasks)
    data = benchmark.joint_train_dataset(tasks, 128, seed=seed).map(
        lambda inputs, y: (inputs["x"], y))
    model = _cnn(benchmark.input_shape, benchmark.num_classes)
    model.fit(data, epochs=epochs, verbose=verbose, shuffle=False)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    model.save(path)
    return model


def _cnn(input_shape, num_classes):
    model = keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(num_classes),
    ])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def reference_test_accuracy(reference, benchmark):
    return per_class_test_accuracy(reference, benchmark)[0]


def per_class_test_accuracy(model, benchmark, classes=None):
    """`(accuracy, {class: accuracy})` of `model`'s logits on the real test
    examples of `classes` (default: all)."""
    xs, ys = zip(*(benchmark.test_arrays(t)
                   for t in range(benchmark.num_tasks)))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if classes is not None:
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
    predicted = np.argmax(model.predict(x, verbose=0), axis=-1)
    per_class = {int(c): float(np.mean(predicted[y == c] == c))
                 for c in np.unique(y)}
    return float(np.mean(predicted == y)), per_class


def train_on_samples(generate, classes, benchmark, noise_dim,
                     per_class=3000, epochs=3, seed=0, jitter=0.0):
    """GAN-train: a fresh CNN learns `per_class` generated images of every
    class in `classes` (`epochs` passes, Adam, batch 64) and is tested on
    the real test examples of those classes. `jitter` > 0 jitters the
    images as DGM's `--replay_jitter` does, anew in every batch.

    Returns `(accuracy, {class: accuracy})`.
    """
    images, labels = [], []
    for c in classes:
        noise = tf.random.stateless_normal((per_class, noise_dim),
                                           seed=[seed + 1, int(c)])
        for start in range(0, per_class, 1000):
            chunk = noise[start:start + 1000]
            images.append(np.asarray(generate(
                tf.fill([tf.shape(chunk)[0]], tf.constant(int(c))), chunk)))
        labels.append(np.full(per_class, int(c), np.int32))
    x, y = np.concatenate(images), np.concatenate(labels)
    keras.utils.set_random_seed(seed)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(y), seed=seed).batch(64)
    if jitter > 0:
        data = data.enumerate().map(
            lambda i, batch: (augment.jitter(
                batch[0], tf.random.stateless_uniform(
                    (tf.shape(batch[0])[0], 4), seed=[seed, i]), jitter),
                batch[1]))
    model = _cnn(benchmark.input_shape, benchmark.num_classes)
    model.fit(data.prefetch(tf.data.AUTOTUNE), epochs=epochs, verbose=0,
              shuffle=False)
    return per_class_test_accuracy(model, benchmark, classes)


def score(generate, classes, reference, noise_dim, samples=1000, seed=0):
    """`{class: share of its generated images the reference calls it}`.

    `generate(labels, noise)` returns images; the noise of class c is drawn
    from the stateless seed (seed, c), so scores are repeatable.
    """
    out = {}
    for c in classes:
        noise = tf.random.stateless_normal((samples, noise_dim),
                                           seed=[seed, int(c)])
        images = generate(tf.fill([samples], tf.constant(int(c))), noise)
        predicted = np.argmax(reference.predict(images, verbose=0), axis=-1)
        out[int(c)] = float(np.mean(predicted == c))
    return out
