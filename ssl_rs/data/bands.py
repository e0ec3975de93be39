"""Sentinel-2 band names and their native ground sample distances (metres)."""

from __future__ import annotations

from typing import Dict, List, Sequence

# MSI bands in wavelength order (B8A sits after B08 here; EuroSAT files store it last).
S2_BANDS: List[str] = [
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
]
S2_BANDS_L2A: List[str] = [b for b in S2_BANDS if b != "B10"]  # L2A products drop the cirrus band

S2_GSD: Dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}


def normalize_band_name(name: str) -> str:
    """'B2', 'b02', 'B8a' -> 'B02', 'B02', 'B8A'."""
    n = name.strip().upper()
    if not n.startswith("B"):
        raise ValueError(f"not a Sentinel-2 band name: {name!r}")
    digits = n[1:]
    if digits == "8A":
        return "B8A"
    if not digits.isdigit():
        raise ValueError(f"not a Sentinel-2 band name: {name!r}")
    canonical = f"B{int(digits):02d}"
    if canonical not in S2_GSD:
        raise ValueError(f"not a Sentinel-2 band name: {name!r}")
    return canonical


def band_indices(available: Sequence[str], wanted: Sequence[str]) -> List[int]:
    """Positions of ``wanted`` bands in ``available`` (names normalised); KeyError names the missing one."""
    index = {normalize_band_name(b): i for i, b in enumerate(available)}
    out = []
    for b in wanted:
        key = normalize_band_name(b)
        if key not in index:
            raise KeyError(f"band {b} not in {list(available)}")
        out.append(index[key])
    return out
