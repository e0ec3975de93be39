"""ssl-rs: self-supervised learning for multispectral remote sensing, geography-aware."""

__version__ = "0.1.0"
