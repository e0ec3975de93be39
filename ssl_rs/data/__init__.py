"""Data layer: the HDF5 layout, the lazy GeoDataset, converters, the synthetic geo-world, splits."""

from .dataset import GeoDataset
from .layout import H5Writer, check_file, write_dataset

__all__ = ["GeoDataset", "H5Writer", "check_file", "write_dataset"]
