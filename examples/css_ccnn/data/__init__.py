"""Data for the CSS-CCNN example: dataset readers, synthetic crowds, transforms, pseudo density.

Importing this package imports numpy only; torch, OpenCV and SciPy are imported by the functions
that need them.
"""

from .datasets import KINDS, CrowdDataset, DatasetError, Sample, open_dataset, read_image
from .pseudo_density import canny_pseudo_density
from .synthetic import make_synthetic, render_crowd
from .transforms import (
    cell_counts,
    crop,
    density_map,
    gaussian_kernel_1d,
    hflip,
    random_crop,
    random_crop_position,
    resize_for_test,
    resized_shape,
    to_tensor,
)

__all__ = [
    "KINDS",
    "CrowdDataset",
    "DatasetError",
    "Sample",
    "canny_pseudo_density",
    "cell_counts",
    "crop",
    "density_map",
    "gaussian_kernel_1d",
    "hflip",
    "make_synthetic",
    "open_dataset",
    "random_crop",
    "random_crop_position",
    "read_image",
    "render_crowd",
    "resize_for_test",
    "resized_shape",
    "to_tensor",
]
