"""Training data: file lists, on-the-fly mixing, datasets, and the resumable sharded sampler.

Every example is a pure function of (seed, epoch, index); the data position is the number of examples
of the current epoch the job has trained on. See the module docstrings for details.
"""

from steadyvoice.data.build import TrainingData, build_training_data
from steadyvoice.data.config import DataConfig
from steadyvoice.data.datasets import MixingDataset, PairDataset, ValidationSet, collate
from steadyvoice.data.sampler import DataPosition, ShardedBatchSampler, epoch_permutation, usable_examples

__all__ = [
    "DataConfig",
    "DataPosition",
    "MixingDataset",
    "PairDataset",
    "ShardedBatchSampler",
    "TrainingData",
    "ValidationSet",
    "build_training_data",
    "collate",
    "epoch_permutation",
    "usable_examples",
]
