"""Image jitter: random affine transforms from given uniform draws."""

from __future__ import annotations

import math

from keras import ops


def jitter(images, uniform, strength):
    """Random affine jitter of a batch of images (NHWC).

    `uniform`: `(N, 4)` draws in [0, 1) (shift in x and y, rotation, zoom);
    at `strength` 1 the shifts reach 8 % of the side, the rotation 14.4
    degrees and the zoom 10 % either way (Keras's RandomTranslation(0.08),
    RandomRotation(0.04) and RandomZoom(0.1)). Border pixels come in black.
    """
    u = 2.0 * ops.cast(uniform, "float32") - 1.0
    height, width = int(images.shape[1]), int(images.shape[2])
    shift_x = 0.08 * strength * width * u[:, 0]
    shift_y = 0.08 * strength * height * u[:, 1]
    angle = 0.04 * strength * 2.0 * math.pi * u[:, 2]
    scale = 1.0 / (1.0 + 0.1 * strength * u[:, 3])  # input per output px
    cos, sin = scale * ops.cos(angle), scale * ops.sin(angle)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # Output pixel p reads input A (p - c) + c - shift.
    zeros = ops.zeros_like(cos)
    transform = ops.stack([
        cos, -sin, cx - cos * cx + sin * cy - shift_x,
        sin, cos, cy - sin * cx - cos * cy - shift_y,
        zeros, zeros,
    ], axis=1)
    return ops.image.affine_transform(images, transform,
                                      interpolation="bilinear",
                                      fill_mode="constant",
                                      data_format="channels_last")
