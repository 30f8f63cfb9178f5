"""Cryo-EM data layer: MRC/STAR datasets as lazy index tables, and preprocessing.

See :mod:`biocnn.data.datasets` (datasets, builders, stratified split),
:mod:`biocnn.data.loader` (the one sampler and loader) and
:mod:`biocnn.data.preprocess` (:class:`PreprocessConfig`, :class:`Standardize`);
:class:`ViewSpec` and :func:`iter_images` are re-exported from :mod:`biocnn.io.mrc`.
"""

from biocnn.data.datasets import (
    ImageIndex,
    MrcDataset,
    build_dataset,
    files_dataset,
    folder_dataset,
    star_dataset,
    stratified_split,
)
from biocnn.data.loader import EpochBatches, Loader, TensorData, make_loader
from biocnn.data.preprocess import (
    PreprocessConfig,
    Standardize,
    preprocess_images,
    resample_images,
)
from biocnn.io.mrc import ViewSpec, iter_images

__all__ = [
    "EpochBatches",
    "Loader",
    "TensorData",
    "make_loader",
    "Standardize",
    "resample_images",
    "ImageIndex",
    "MrcDataset",
    "PreprocessConfig",
    "ViewSpec",
    "build_dataset",
    "files_dataset",
    "folder_dataset",
    "iter_images",
    "preprocess_images",
    "star_dataset",
    "stratified_split",
]
