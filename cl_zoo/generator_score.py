"""Scoring a generator with a reference classifier (`trainers.score_generator`).

The reference is a small CNN trained on a benchmark's whole training set
(every class at once, so it is a yardstick, not a continual learner); the
score of a class is the share of the generator's images of that class that
the reference assigns to it.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf


def reference_classifier(benchmark, path, epochs=3, seed=0, verbose=2):
    """A CNN trained on every task's training data of `benchmark` at once,
    loaded from `path` if it is there, else trained and saved there."""
    if os.path.exists(path):
        return keras.models.load_model(path)
    keras.utils.set_random_seed(seed)
    tasks = range(benchmark.num_tasks)
    data = benchmark.joint_train_dataset(tasks, 128, seed=seed).map(
        lambda inputs, y: (inputs["x"], y))
    model = keras.Sequential([
        keras.Input(benchmark.input_shape),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(benchmark.num_classes),
    ])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(data, epochs=epochs, verbose=verbose, shuffle=False)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    model.save(path)
    return model


def reference_test_accuracy(reference, benchmark):
    hits, total = 0, 0
    for t in range(benchmark.num_tasks):
        x, y = benchmark.test_arrays(t)
        predicted = np.argmax(reference.predict(x, verbose=0), axis=-1)
        hits += int(np.sum(predicted == y))
        total += len(y)
    return hits / total


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
