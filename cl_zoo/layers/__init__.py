"""Keras layers of cl_zoo."""

from cl_zoo.layers.bias_units import BiasUnitDense, SuperpositionDense
from cl_zoo.layers.heads import HEAD_MODES, TaskHead
from cl_zoo.layers.initialization import INITIALIZERS, reinitialize
from cl_zoo.layers.masked import MaskedConv2DTranspose, MaskedDense
from cl_zoo.layers.memory_units import MemoryNeuronDense
from cl_zoo.layers.resnet import BasicBlock, ConvBatchNorm, resnet18_layers
from cl_zoo.layers.task_dense import TaskDense

__all__ = [
    "HEAD_MODES",
    "INITIALIZERS",
    "BasicBlock",
    "BiasUnitDense",
    "ConvBatchNorm",
    "MaskedConv2DTranspose",
    "MaskedDense",
    "MemoryNeuronDense",
    "SuperpositionDense",
    "TaskDense",
    "TaskHead",
    "reinitialize",
    "resnet18_layers",
]
