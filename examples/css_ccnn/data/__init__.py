"""Data for the CSS-CCNN example: dataset readers, synthetic crowds, transforms, pseudo density.

Importing this package imports numpy and torch; OpenCV, SciPy and Pillow are imported by the
functions that need them.
"""

from .datasets import (
    KINDS,
    CrowdDataset,
    DatasetError,
    Sample,
    open_dataset,
    read_image,
    require_labeled,
    require_unlabeled,
)
from .pseudo_density import canny_pseudo_density
from .synthetic import make_synthetic, render_crowd
from .transforms import (
    cell_counts,
    density_map,
    gaussian_kernel_1d,
    hflip,
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
    "density_map",
    "gaussian_kernel_1d",
    "hflip",
    "make_synthetic",
    "open_dataset",
    "read_image",
    "render_crowd",
    "require_labeled",
    "require_unlabeled",
    "resize_for_test",
    "resized_shape",
    "to_tensor",
]
