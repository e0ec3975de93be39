"""Data layer: the HDF5 layout, the lazy GeoDataset, converters, the synthetic geo-world, splits.

``GeoDataset`` is imported on first use, not with the package: the converters' worker processes
import the writer and the layout only, and do not pay for torch (~3 s and 0.7 GB each)."""

from .layout import H5Writer, check_file, write_dataset

__all__ = ["GeoDataset", "H5Writer", "check_file", "write_dataset"]


def __getattr__(name: str):
    if name == "GeoDataset":
        from .dataset import GeoDataset

        return GeoDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
