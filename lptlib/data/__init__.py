"""Data: long-tail profiles, the miniature and paper-scale datasets, transforms and samplers."""

from lptlib.data.datasets import (FASHION_MNIST_CLASSES, FASHION_MNIST_COARSE, FASHION_MNIST_COARSE_NAMES,
                                  ArrayDataset, DataError, FileListDataset, ImageDataset, LTData, build_data,
                                  find_fashion_mnist, lt_subsample, read_idx, read_split_file)
from lptlib.data.profiles import lt_counts
from lptlib.data.samplers import (SAMPLING_MODES, ClassAwareSampler, DualSampling, InfiniteLoader, ShuffleSampler,
                                  SingleSampling, dual_sampling, eval_loaders, make_dual_sampling, make_loader, make_sampler)
from lptlib.data.transforms import Normalization, build_transforms

__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_COARSE", "FASHION_MNIST_COARSE_NAMES", "ArrayDataset", "DataError",
    "FileListDataset", "ImageDataset", "LTData", "build_data", "find_fashion_mnist", "lt_subsample", "read_idx",
    "read_split_file", "lt_counts", "SAMPLING_MODES", "ClassAwareSampler", "DualSampling", "InfiniteLoader",
    "ShuffleSampler", "SingleSampling", "dual_sampling", "eval_loaders", "make_dual_sampling", "make_loader", "make_sampler", "Normalization", "build_transforms",
]
