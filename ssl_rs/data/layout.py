"""The one HDF5 layout of ssl-rs (documented in ``docs/data_format.md``).

The layout is declared in :mod:`ssl_rs.data.columns` (one table of per-sample columns), written
by :mod:`ssl_rs.data.writer` (:class:`H5Writer`: atomic, with per-band statistics) and read and
validated by :mod:`ssl_rs.data.reader` (:func:`open_h5`, :func:`check_file`: one-line
:class:`~ssl_rs.errors.DataError` naming the file and the field). This module keeps the names
that converters and other callers import from it.
"""

from __future__ import annotations

from .columns import COLUMNS, FORMAT_VERSION, SPLIT_CODES, SPLIT_UNUSED, Column, kind_name
from .reader import attr_list, check_file, check_open, describe, open_h5, read_split
from .writer import STATS_MAX_PIXELS, STATS_SAMPLE_PIXELS, H5Writer, write_dataset, write_split

# (rank, accepted dtype kinds) of the required and the optional numeric columns, as this module
# once declared them; derived from the table
REQUIRED = {c.name: (c.rank, c.accepts or c.dtype) for c in COLUMNS if c.required}
OPTIONAL = {c.name: (c.rank, c.accepts) for c in COLUMNS if not c.required and not c.is_string and not c.per_scheme}

__all__ = [
    "COLUMNS", "Column", "FORMAT_VERSION", "OPTIONAL", "REQUIRED", "SPLIT_CODES", "SPLIT_UNUSED",
    "STATS_MAX_PIXELS", "STATS_SAMPLE_PIXELS", "H5Writer", "attr_list", "check_file", "check_open", "describe",
    "kind_name", "open_h5", "read_split", "write_dataset", "write_split",
]
