"""The reduced ResNet-18 of GEM, A-GEM and Mammoth, as Keras layers.

Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning"
(NeurIPS 2017), `model/common.py` of facebookresearch/GradientEpisodicMemory
(`ResNet18(nclasses, nf=20)`), the backbone of split CIFAR in GEM, A-GEM
(Chaudhry et al., ICLR 2019) and Mammoth (Buzzega et al., NeurIPS 2020):
a 3x3 convolution to `nf` channels with batch normalization and ReLU, then
four stages of two `BasicBlock`s with `nf`, `2 nf`, `4 nf` and `8 nf`
channels and strides 1, 2, 2, 2, then average pooling (here global, so
that any image size works; on 32x32 inputs it is GEM's `avg_pool2d(4)`).
The linear layer on top is the model's head.

As in PyTorch, convolutions pad their input by `(kernel_size - 1) // 2` on
every side (TensorFlow's `"same"` pads the bottom and right only for even
sizes at stride 2, which would shift the strided path against its 1x1
shortcut) and have no bias; batch normalization uses PyTorch's momentum
(0.1 of the new batch, Keras's 0.9) and epsilon (1e-5). Its batch
statistics are synchronized across replicas, so two replicas normalize a
global batch as one device does, and every replica's moving averages get
the same update.
"""

from __future__ import annotations

import keras
from keras import ops

from cl_zoo.layers.masked import check_positive_int

# PyTorch's nn.BatchNorm2d defaults, in Keras's terms.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# GEM's ResNet18: two BasicBlocks per stage; stage widths are multiples of
# nf, with these strides.
RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET18_STAGES = ((1, 1), (2, 2), (4, 2), (8, 2))


@keras.saving.register_keras_serializable(package="cl_zoo")
class ConvBatchNorm(keras.layers.Layer):
    """A convolution without bias, then batch normalization (then ReLU).

    PyTorch's `nn.Conv2d(..., padding=(k - 1) // 2, bias=False)` followed by
    `nn.BatchNorm2d`: the input is zero-padded by `(kernel_size - 1) // 2`
    on every side before a `"valid"` convolution.

    Args:
        filters: output channels.
        kernel_size: int, square kernel.
        strides: int.
        relu: apply a ReLU after the normalization.
        kernel_initializer: initializer of the convolution's kernel.

    Call arguments:
        inputs: images `(batch, height, width, channels)`.
        training: normalize with the batch's statistics (and update the
            moving ones) or with the moving ones.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        `(batch, ceil(height / strides), ceil(width / strides), filters)`
        for odd kernels.
    """

    def __init__(self, filters, kernel_size=3, strides=1, relu=False,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.filters = check_positive_int("filters", filters)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.strides = check_positive_int("strides", strides)
        self.relu = bool(relu)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.padding = (self.kernel_size - 1) // 2
        self.conv = keras.layers.Conv2D(
            self.filters, self.kernel_size, strides=self.strides,
            padding="valid", use_bias=False,
            kernel_initializer=self.kernel_initializer, name="conv",
        )
        self.norm = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=True,
            name="norm",
        )

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "Expected images of shape (batch, height, width, channels). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        shape = self._padded_shape(input_shape)
        self.conv.build(shape)
        self.norm.build(self.conv.compute_output_shape(shape))

    def _padded_shape(self, input_shape):
        p = 2 * self.padding
        batch, height, width, channels = input_shape
        return (batch, None if height is None else height + p,
                None if width is None else width + p, channels)

    def call(self, inputs, training=False):
        x = inputs
        if self.padding:
            p = self.padding
            x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        x = self.norm(self.conv(x), training=training)
        return ops.relu(x) if self.relu else x

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(self._padded_shape(input_shape))

    def sublayers(self):
        """The convolution and the normalization (for `initialization`)."""
        return [self.conv, self.norm]

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "relu": self.relu,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
        }


@keras.saving.register_keras_serializable(package="cl_zoo")
class BasicBlock(keras.layers.Layer):
    """ResNet's basic block, as in GEM's `model/common.py`.

    He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016).
    `relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))`, where the
    shortcut is the identity, or a 1x1 convolution without bias followed by
    batch normalization (`projection=True`; GEM uses it when the block
    strides or changes the number of channels).

    Args:
        filters: output channels.
        strides: stride of the first convolution and of the projection.
        projection: whether the shortcut is a 1x1 convolution with batch
            normalization (needed when `strides != 1` or the input has
            another number of channels than `filters`).
        kernel_initializer: initializer of the convolutions' kernels.

    Call arguments:
        inputs: images `(batch, height, width, channels)`.
        training: batch statistics (training) or moving ones.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        `(batch, ceil(height / strides), ceil(width / strides), filters)`.
    """

    def __init__(self, filters, strides=1, projection=False,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.filters = check_positive_int("filters", filters)
        self.strides = check_positive_int("strides", strides)
        self.projection = bool(projection)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        init = self.kernel_initializer
        self.conv1 = ConvBatchNorm(filters, 3, strides, relu=True,
                                   kernel_initializer=init, name="conv1")
        self.conv2 = ConvBatchNorm(filters, 3, 1,
                                   kernel_initializer=init, name="conv2")
        self.shortcut = (
            ConvBatchNorm(filters, 1, strides, kernel_initializer=init,
                          name="shortcut")
            if self.projection else None
        )

    def build(self, input_shape):
        channels = input_shape[-1]
        if not self.projection and (self.strides != 1
                                    or channels != self.filters):
            raise ValueError(
                "A BasicBlock that strides or changes the number of "
                "channels needs projection=True. Received: "
                f"strides={self.strides}, input channels={channels}, "
                f"filters={self.filters}"
            )
        self.conv1.build(input_shape)
        middle = self.conv1.compute_output_shape(input_shape)
        self.conv2.build(middle)
        if self.shortcut is not None:
            self.shortcut.build(input_shape)

    def call(self, inputs, training=False):
        out = self.conv2(self.conv1(inputs, training=training),
                         training=training)
        shortcut = (inputs if self.shortcut is None
                    else self.shortcut(inputs, training=training))
        return ops.relu(out + shortcut)

    def compute_output_shape(self, input_shape):
        return self.conv1.compute_output_shape(input_shape)

    def sublayers(self):
        """The block's `ConvBatchNorm`s (for `initialization`)."""
        return [self.conv1, self.conv2] + (
            [self.shortcut] if self.shortcut is not None else []
        )

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "projection": self.projection,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
        }


def resnet18_layers(width=20):
    """The trunk of GEM's `ResNet18(nclasses, nf=width)`, without its
    linear layer: a list of layers from images (of any number of channels;
    GEM's have 3) to `8 * width` features.

    Args:
        width: `nf`, the channels of the first stage.
    """
    check_positive_int("width", width)
    layers = [ConvBatchNorm(width, 3, 1, relu=True, name="resnet_stem")]
    channels = width
    for stage, ((multiple, stride), blocks) in enumerate(
        zip(RESNET18_STAGES, RESNET18_BLOCKS), start=1
    ):
        filters = multiple * width
        for block in range(blocks):
            strides = stride if block == 0 else 1
            layers.append(BasicBlock(
                filters, strides,
                projection=strides != 1 or channels != filters,
                name=f"resnet_stage{stage}_block{block + 1}",
            ))
            channels = filters
    layers.append(keras.layers.GlobalAveragePooling2D(name="resnet_pool"))
    return layers
