"""The per-sample columns of the ssl-rs HDF5 layout, declared once.

:data:`COLUMNS` is the one list of what a file may hold per sample. It drives writing
(:class:`~ssl_rs.data.writer.H5Writer` takes one ``append`` keyword per column), validation
(:func:`~ssl_rs.data.reader.check_file`), reading (:class:`~ssl_rs.data.dataset.GeoDataset`
puts a column under its ``sample_key``), the summary of ``ssl-rs data info``, and the table in
``docs/data_format.md`` (:func:`markdown_table`; a test keeps the two equal). A new column is
one more :class:`Column` here.

``python -m ssl_rs.data.columns_table`` prints the docs' table.
"""

from __future__ import annotations

import json
import logging
import operator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from ..errors import DataError

if TYPE_CHECKING:  # torch is imported where items are made, not by writers (converter workers)
    import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLIT_CODES = ("train", "val", "test")  # stored as uint8 0, 1, 2 in splits/<scheme>
SPLIT_UNUSED = 255  # a sample left out of a scheme (e.g. a buffer zone between blocks)
OFFICIAL_SPLIT = "official"  # the scheme H5Writer stores the ``split`` it is given as
STRING = "UTF-8 string"  # the dtype of text columns (HDF5 variable-length UTF-8)
MASK_NODATA = 255  # the default ``mask_nodata``: mask pixels without a label
#: ``ssl-rs data info`` counts the mask pixels of every sample up to this many pixels, else of a
#: random subset of whole samples holding about this many (and says so)
MASK_SUMMARY_PIXELS = 1 << 24
#: what needs lat/lon (the docs' "required" cell of lat and lon; error messages)
LOCATION_USES = "pretraining with geo regularizers, geo probes, block splits"


def string_dtype():
    return h5py.string_dtype(encoding="utf-8")


@dataclass(frozen=True)
class Column:
    """One per-sample dataset of the layout.

    Hooks (plain functions, so that the table stays a list of declarations):

    * ``encode(column, values, writer) -> array``: values given to ``H5Writer.append`` (a list,
      one per sample) as the array stored; wrong types are a :class:`DataError`. ``writer``
      has ``path``, ``size``, ``class_names``, ``multi_label``, ``mask_classes`` and ``mask_nodata``.
    * ``validate(column, values, where, first)``: raises :class:`DataError` for stored values
      that are wrong (``where`` is ``"FILE: NAME"``; row 0 of ``values`` is sample ``first``).
      Runs on every appended sample and on every file that is opened.
    * ``warn(column, stored, where, classes)``: logs what is valid but probably a mistake
      (``ssl-rs data info``); ``stored`` is the HDF5 object (the group for ``splits``).
    * ``summary(column, stored, classes) -> dict``: entries of ``ssl-rs data info``'s summary.
    * ``to_sample(row)``: one stored row as the value of a GeoDataset item.
    """

    name: str  # HDF5 path; "splits/<scheme>": one dataset per split scheme in the group splits
    dtype: str  # dtype written: a numpy dtype name, or STRING
    shape: Tuple[str, ...]  # axes; N: samples (rows of images), C: bands, K: class_names
    required: bool
    description: str  # the docs' "meaning" (markdown)
    append_arg: Optional[str]  # H5Writer.append keyword; None: not one (images is the positional argument)
    sample_key: Optional[str] = None  # key of a GeoDataset item; None: not in items
    sample: str = ""  # what the item holds under sample_key (docs)
    required_for: str = ""  # data that needs an optional column (docs' "required" cell)
    accepts: str = ""  # numpy dtype kinds accepted when reading; "" only dtype, STRING any HDF5 string
    per_scheme: bool = False
    # written sample by sample into a dataset of one chunk per sample, and read per batch like
    # images, instead of being held in memory (per-pixel columns: mask)
    streamed: bool = False
    encode: Optional[Callable[..., np.ndarray]] = None
    validate: Optional[Callable[..., None]] = None
    warn: Optional[Callable[..., None]] = None
    summary: Optional[Callable[..., Dict[str, Any]]] = None
    to_sample: Optional[Callable[[Any], Any]] = None

    @property
    def chunks(self) -> Optional[Tuple[str, ...]]:
        """The chunk shape of a streamed column, in axis names (one sample per chunk)."""
        return ("1",) + self.shape[1:] if self.streamed else None

    @property
    def key(self) -> str:
        """What the file holds at the top level: the dataset, or the group of split schemes."""
        return self.name.split("/")[0]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_string(self) -> bool:
        return self.dtype == STRING

    @property
    def h5_dtype(self):
        return string_dtype() if self.is_string else np.dtype(self.dtype)

    @property
    def shape_text(self) -> str:
        return "(" + ", ".join(self.shape) + ("," if self.rank == 1 else "") + ")"

    @property
    def expected_dtype(self) -> str:
        """The dtypes read, in words, for error messages."""
        if self.accepts == STRING:
            return "strings (UTF-8)"
        if not self.accepts:
            return self.dtype
        return f"{kind_name(self.accepts)} ({self.dtype} when written by ssl-rs)"

    def accepts_dtype(self, dtype: np.dtype) -> bool:
        if self.accepts == STRING:
            return h5py.check_string_dtype(dtype) is not None
        if not self.accepts:
            return dtype == np.dtype(self.dtype)
        return dtype.kind in self.accepts

    def display_name(self, scheme: str = OFFICIAL_SPLIT) -> str:
        return self.name.replace("<scheme>", scheme) if self.per_scheme else self.name

    def encode_values(self, values: Sequence[Any], writer) -> np.ndarray:
        if self.encode is not None:
            return self.encode(self, values, writer)
        return _encode_numbers(self, values, writer)

    def check_values(self, values: np.ndarray, where: str, first: int = 0) -> None:
        if self.validate is not None and len(values):
            self.validate(self, values, where, first)


def kind_name(kinds: str) -> str:
    """numpy dtype kinds in words: ``"f"`` is "a float type"."""
    names = {"f": "a float type", "i": "an integer type", "iu": "an integer type", "ui": "an integer type",
             "u": "an unsigned integer type", "uib": "an integer or bool type"}
    return names.get(kinds, f"dtype kind {kinds!r}")


# ----------------------------------------------------------------------------- writing hooks
def _where(column: Column, writer) -> str:
    return f"{writer.path}: {column.display_name()}"


def _first(writer) -> int:
    """The sample number of the first value being encoded: ``append`` encodes each sample as it comes."""
    return writer.n


def _encode_numbers(column: Column, values, writer) -> np.ndarray:
    """Floats for float columns, exact integers for integer columns (3.0 is 3; 3.5 is an error)."""
    kind = np.dtype(column.dtype).kind
    out = np.empty(len(values), column.dtype)
    for i, value in enumerate(values):
        try:
            if kind == "f":
                out[i] = float(value)
                continue
            try:
                out[i] = operator.index(value)
            except TypeError:
                number = float(value)
                if not number.is_integer():
                    raise ValueError from None
                out[i] = int(number)
        except (TypeError, ValueError, OverflowError):
            expected = "a number" if kind == "f" else "an integer"
            raise DataError(f"{_where(column, writer)}: sample {_first(writer) + i} is {shown(value)}, "
                            f"expected {expected}") from None
    return out


def _encode_label(column: Column, values, writer) -> np.ndarray:
    if writer.multi_label:
        raise DataError(f"{_where(column, writer)}: single labels given to a multi-label writer (use labels=)")
    return _encode_numbers(column, values, writer)


def _encode_multi_hot(column: Column, values, writer) -> np.ndarray:
    """Lists of class indices as multi-hot rows over the writer's class_names."""
    k = len(writer.class_names or [])
    hot = np.zeros((len(values), k), np.uint8)
    for i, indices in enumerate(values):
        try:
            idx = [operator.index(j) for j in indices]
        except TypeError:
            raise DataError(f"{_where(column, writer)}: sample {_first(writer) + i} is {shown(indices)}, "
                            "expected a list of class indices") from None
        bad = [j for j in idx if not 0 <= j < k]
        if bad:
            raise DataError(f"{_where(column, writer)}: sample {_first(writer) + i} has class index {bad[0]}, "
                            f"expected 0 .. {k - 1} (one per class_names entry)")
        hot[i, idx] = 1
    return hot


def _encode_strings(column: Column, values, writer) -> np.ndarray:
    out = np.empty(len(values), object)
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            raise DataError(f"{_where(column, writer)}: sample {_first(writer) + i} is {shown(value)}, "
                            "expected a string")
        out[i] = value
    return out


def split_codes(values, where: str) -> np.ndarray:
    """Split names (``"train"``, ``"val"``, ``"test"``) or codes as uint8 codes (see SPLIT_CODES)."""
    codes = np.empty(len(values), np.uint8)
    known = list(range(len(SPLIT_CODES))) + [SPLIT_UNUSED]
    for i, value in enumerate(values):
        value = value.item() if isinstance(value, np.generic) else value
        value = value.decode() if isinstance(value, bytes) else value
        if isinstance(value, str):
            if value not in SPLIT_CODES:
                raise DataError(f"{where}: unknown split name {value!r} (use {SPLIT_CODES})")
            codes[i] = SPLIT_CODES.index(value)
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value in known:
            codes[i] = value
        else:
            raise DataError(f"{where}: unknown split {shown(value)} (use {SPLIT_CODES} or codes {known})")
    return codes


def _encode_split(column: Column, values, writer) -> np.ndarray:
    return split_codes(values, _where(column, writer))


def _encode_mask(column: Column, values, writer) -> np.ndarray:
    """(H, W) arrays of integer class indices into the writer's ``mask_classes`` (or its
    ``mask_nodata``) as uint8 rows (1, H, W)."""
    where = _where(column, writer)
    if writer.mask_classes is None:
        raise DataError(f"{where}: given for sample {_first(writer)}, but the writer has no mask_classes "
                        "(H5Writer(..., mask_classes=[class names]))")
    out = np.empty((len(values),) + tuple(writer.size), np.uint8)
    for i, value in enumerate(values):
        sample = _first(writer) + i
        mask = np.asarray(value)
        if mask.shape != tuple(writer.size):
            raise DataError(f"{where}: sample {sample} has shape {mask.shape}, expected {tuple(writer.size)} "
                            "(the image's height and width)")
        if mask.dtype.kind not in "iu":
            raise DataError(f"{where}: sample {sample} has dtype {mask.dtype}, expected integer class indices")
        if mask.size and (int(mask.min()) < 0 or int(mask.max()) > np.iinfo(np.uint8).max):
            bad = int(mask.min()) if int(mask.min()) < 0 else int(mask.max())
            raise DataError(f"{where}: sample {sample} has value {bad}, outside uint8 (0 .. 255)")
        out[i] = mask
        check_mask_values(out[i], writer.mask_classes, writer.mask_nodata, f"{where}: sample {sample}")
    return out


def check_mask_values(mask: np.ndarray, classes: Sequence[str], nodata: int, where: str) -> None:
    """A mask's values are class indices (< len(classes)) or ``nodata``, else a DataError at the
    first other pixel."""
    bad = (mask >= len(classes)) & (mask != nodata)
    if bad.any():
        pixel = np.unravel_index(int(np.argmax(bad)), mask.shape)
        raise DataError(f"{where} has value {int(mask[pixel])} at pixel {tuple(int(p) for p in pixel)}, expected "
                        f"a class index 0 .. {len(classes) - 1} (mask_classes) or {nodata} (mask_nodata)")


# ----------------------------------------------------------------------------- validation hooks
def _within(limit: float, column: Column, values: np.ndarray, where: str, first: int) -> None:
    """Finite and within [-limit, limit] (bound with functools.partial: columns are pickled with
    the GeoDataset that holds them, and a closure could not be)."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"{where}: sample {first + int(np.argmax(bad))} is NaN or infinite")
    out = np.abs(values) > limit
    if out.any():
        i = int(np.argmax(out))
        raise DataError(f"{where}: sample {first + i} = {values[i]} is outside [-{limit:g}, {limit:g}]")


def _non_negative(column: Column, values: np.ndarray, where: str, first: int) -> None:
    negative = values < 0
    if negative.any():
        i = int(np.argmax(negative))
        raise DataError(f"{where}: sample {first + i} = {int(values[i])} is negative (class indices start at 0)")


def _warn_label(column: Column, ds, where: str, classes: Optional[List[str]]) -> None:
    if classes is None:
        return
    labels = ds[()]
    beyond = labels >= len(classes)
    if beyond.any():
        i = int(np.argmax(beyond))
        log.warning("%s: %d samples have a class index beyond the %d class_names (sample %d = %d)",
                    where, int(beyond.sum()), len(classes), i, int(labels[i]))


def _warn_multi_hot(column: Column, ds, where: str, classes: Optional[List[str]]) -> None:
    if classes is not None and ds.shape[1] != len(classes):
        log.warning("%s: %d columns but %d class_names", where, ds.shape[1], len(classes))


def _warn_split(column: Column, group, where: str, classes) -> None:
    known = list(range(len(SPLIT_CODES))) + [SPLIT_UNUSED]
    for scheme, ds in group.items():
        codes = ds[()]
        unknown = ~np.isin(codes, known)
        if unknown.any():
            i = int(np.argmax(unknown))
            log.warning("%s/%s: %d samples have an unknown split code (sample %d = %d; known: 0 train, "
                        "1 val, 2 test, %d none)", where, scheme, int(unknown.sum()), i, int(codes[i]), SPLIT_UNUSED)


def _warn_mask(column: Column, ds, where: str, classes) -> None:
    names, nodata = mask_attrs(ds.file.attrs, where.rsplit(": ", 1)[0])
    counts, _ = mask_value_counts(ds)
    other = [v for v in np.flatnonzero(counts) if v >= len(names) and v != nodata]
    if other:
        log.warning("%s: %d pixels have a value that is neither a class index (0 .. %d) nor mask_nodata %d "
                    "(values %s)", where, int(counts[other].sum()), len(names) - 1, nodata,
                    ", ".join(str(int(v)) for v in other[:5]))


# ----------------------------------------------------------------------------- summary hooks
def _range(column: Column, ds, classes) -> Dict[str, Any]:
    values = ds[()]
    return {f"{column.name}_range": [float(values.min()), float(values.max())]}


def _class_name(classes: List[str], i: int) -> str:
    return classes[i] if i < len(classes) else str(i)


def _single_label_counts(column: Column, ds, classes) -> Dict[str, Any]:
    counts = np.bincount(ds[()], minlength=len(classes))
    return {"task": "single-label", "class_counts": {_class_name(classes, i): int(c) for i, c in enumerate(counts)}}


def _multi_label_counts(column: Column, ds, classes) -> Dict[str, Any]:
    counts = ds[()].sum(axis=0)
    return {"task": "multi-label", "class_counts": {_class_name(classes, i): int(c) for i, c in enumerate(counts)}}


def _group_count(column: Column, ds, classes) -> Dict[str, Any]:
    return {"groups": int(len(np.unique(ds[()])))}


def _time_range(column: Column, ds, classes) -> Dict[str, Any]:
    times = sorted(as_text(t) for t in ds[()])
    return {"time_range": [times[0], times[-1]]}


def mask_value_counts(ds) -> Tuple[np.ndarray, Optional[List[int]]]:
    """(256,) pixel counts per mask value of a mask dataset (N, H, W): over every sample when it
    holds at most :data:`MASK_SUMMARY_PIXELS` pixels, else over a random subset (seed 0) of whole
    samples holding about that many; and ``[samples counted, samples]`` when sampled, else None."""
    n, h, w = ds.shape
    per_sample = max(1, h * w)
    counts = np.zeros(256, np.int64)
    if n * per_sample <= MASK_SUMMARY_PIXELS:
        step = max(1, (1 << 20) // per_sample)  # about 1 MB read at once
        for start in range(0, n, step):
            counts += np.bincount(ds[start:start + step].reshape(-1), minlength=256)[:256]
        return counts, None
    take = max(1, MASK_SUMMARY_PIXELS // per_sample)
    rows = np.sort(np.random.default_rng(0).choice(n, size=take, replace=False))
    for row in rows.tolist():
        counts += np.bincount(ds[row].reshape(-1), minlength=256)[:256]
    return counts, [int(take), int(n)]


def _mask_summary(column: Column, ds, classes) -> Dict[str, Any]:
    names, nodata = mask_attrs(ds.file.attrs, ds.file.filename)
    counts, sampled = mask_value_counts(ds)
    pixels = {name: int(counts[i]) for i, name in enumerate(names)}
    pixels["no-data"] = int(counts[nodata])
    for value in np.flatnonzero(counts).tolist():  # neither a class nor no-data (warned about)
        if value >= len(names) and value != nodata:
            pixels[f"value {value}"] = int(counts[value])
    return {"mask_classes": names, "mask_nodata": nodata, "mask_pixel_counts": pixels, "mask_pixels_sampled": sampled}


def _split_counts(column: Column, group, classes) -> Dict[str, Any]:
    splits = {}
    for scheme, ds in group.items():
        codes = ds[()]
        splits[scheme] = {name: int((codes == i).sum()) for i, name in enumerate(SPLIT_CODES)}
    return {"splits": splits}


# ----------------------------------------------------------------------------- reading hooks
def _image(row: np.ndarray) -> "torch.Tensor":
    import torch

    return torch.from_numpy(np.ascontiguousarray(row))  # raw uint16: normalised later, on the device


def _float64(row) -> "torch.Tensor":
    import torch

    return torch.tensor(row, dtype=torch.float64)


def _int64(row) -> "torch.Tensor":
    import torch

    return torch.tensor(int(row), dtype=torch.int64)


def _mask(row: np.ndarray) -> "torch.Tensor":
    import torch

    return torch.from_numpy(np.ascontiguousarray(row))  # uint8 class indices, as stored


def _multi_hot(row: np.ndarray) -> "torch.Tensor":
    import torch

    return torch.from_numpy(row.astype(np.float32))


def list_attr(attrs, key: str) -> Optional[List[str]]:
    """A list-of-strings attribute (``bands``, ``class_names``, ``mask_classes``): an array of
    strings, or a JSON list in one string; None when absent."""
    if key not in attrs:
        return None
    value = attrs[key]
    if isinstance(value, (str, bytes)):
        text = as_text(value)
        value = json.loads(text) if text.startswith("[") else [text]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value)]


def check_mask_classes(classes: Any, where: str) -> List[str]:
    """``mask_classes`` as a list of 1 .. 255 distinct class names, else a DataError."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) and not isinstance(classes, np.ndarray):
        raise DataError(f"{where}: mask_classes: expected a list of class names, got {shown(classes)}")
    names = [as_text(c) if isinstance(c, (str, bytes, np.str_)) else c for c in classes]
    if not names or not all(isinstance(c, str) and c for c in names):
        raise DataError(f"{where}: mask_classes: expected a non-empty list of class names, got {shown(list(names))}")
    if len(names) > 255:
        raise DataError(f"{where}: mask_classes: {len(names)} classes, at most 255 fit a uint8 mask")
    if len(set(names)) != len(names):
        twice = next(c for c in names if names.count(c) > 1)
        raise DataError(f"{where}: mask_classes: {twice!r} is listed twice")
    return list(names)


def check_mask_nodata(nodata: Any, classes: Sequence[str], where: str) -> int:
    """``mask_nodata`` as an int in 0 .. 255 that is not a class index, else a DataError."""
    value = nodata.item() if isinstance(nodata, np.generic) else nodata
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise DataError(f"{where}: mask_nodata: expected an integer 0 .. 255, got {shown(value)}")
    if value < len(classes):
        raise DataError(f"{where}: mask_nodata: {value} is a class index (mask_classes has {len(classes)} classes); "
                        f"use a value >= {len(classes)}, e.g. {MASK_NODATA}")
    return int(value)


def mask_attrs(attrs, where: str) -> Tuple[List[str], int]:
    """``(mask_classes, mask_nodata)`` of a file's attributes, checked (``mask_nodata`` defaults to
    :data:`MASK_NODATA`); ``where`` names the file in errors."""
    classes = list_attr(attrs, "mask_classes")
    if classes is None:
        raise DataError(f"{where}: mask_classes: required attribute is missing (the file has a mask dataset)")
    classes = check_mask_classes(classes, str(where))
    nodata = attrs.get("mask_nodata", MASK_NODATA)
    return classes, check_mask_nodata(nodata, classes, str(where))


def as_text(value) -> str:
    """An HDF5 string value (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def shown(value) -> str:
    """A value for an error message: its repr, cut at 60 characters."""
    value = value.decode(errors="replace") if isinstance(value, bytes) else value
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- the table
IMAGES = Column(
    "images", "uint16", ("N", "C", "H", "W"), True,
    "reflectance (x 10000 for Sentinel-2), one chunk per sample `(1, C, H, W)` so random access reads one sample",
    append_arg=None, sample_key="image", sample="(C, H, W) uint16 tensor, bands as asked for", to_sample=_image,
)
LAT = Column(
    "lat", "float64", ("N",), False,
    "WGS84 latitude of the sample's centre, degrees, in [-90, 90]; a file has lat and lon for every sample, "
    "or neither (evaluation-only data)",
    append_arg="lat", sample_key="lat", sample="float64 tensor (absent without locations)",
    required_for=LOCATION_USES, accepts="f",
    validate=partial(_within, 90.0), summary=_range, to_sample=_float64,
)
LON = Column(
    "lon", "float64", ("N",), False, "WGS84 longitude of the sample's centre, degrees, in [-180, 180]",
    append_arg="lon", sample_key="lon", sample="float64 tensor (absent without locations)",
    required_for=LOCATION_USES, accepts="f",
    validate=partial(_within, 180.0), summary=_range, to_sample=_float64,
)
LABEL = Column(
    "label", "int64", ("N",), False, "class index into the `class_names` attribute",
    append_arg="label", sample_key="label", sample="int64 tensor", required_for="single-label data", accepts="iu",
    encode=_encode_label, validate=_non_negative, warn=_warn_label, summary=_single_label_counts, to_sample=_int64,
)
LABELS = Column(
    "labels", "uint8", ("N", "K"), False,
    "multi-hot over the `class_names` attribute (`append(labels=[class indices])`)",
    append_arg="labels", sample_key="labels", sample="float32 multi-hot tensor (K,)",
    required_for="multi-label data", accepts="uib",
    encode=_encode_multi_hot, warn=_warn_multi_hot, summary=_multi_label_counts, to_sample=_multi_hot,
)
MASK = Column(
    "mask", "uint8", ("N", "H", "W"), False,
    "per-pixel class index into the `mask_classes` attribute, or the `mask_nodata` attribute (default "
    f"{MASK_NODATA}) for a pixel without a label; H, W as images, one chunk per sample `(1, H, W)`",
    append_arg="mask", sample_key="mask", sample="(H, W) uint8 tensor", required_for="semantic segmentation",
    streamed=True, encode=_encode_mask, warn=_warn_mask, summary=_mask_summary, to_sample=_mask,
)
TIME = Column(
    "time", STRING, ("N",), False, "acquisition date, ISO 8601 (`2020-06-04`)",
    append_arg="time", sample_key="time", sample="str", accepts=STRING,
    encode=_encode_strings, summary=_time_range, to_sample=as_text,
)
GROUP = Column(
    "group", "int64", ("N",), False,
    "place id shared by several dates of the same place (temporal positives, split grouping)",
    append_arg="group", sample_key="group", sample="int64 tensor", accepts="iu",
    summary=_group_count, to_sample=_int64,
)
NAME = Column(
    "name", STRING, ("N",), False, "the sample's id in its source distribution (file stem, patch name)",
    append_arg="name", accepts=STRING, encode=_encode_strings,
)
SPLITS = Column(
    "splits/<scheme>", "uint8", ("N",), False,
    ", ".join(f"{i} = {name}" for i, name in enumerate(SPLIT_CODES))
    + f", {SPLIT_UNUSED} = in no split; attribute `codes` = `{json.dumps(list(SPLIT_CODES))}` "
    f"(`append(split=...)` is stored as `splits/{OFFICIAL_SPLIT}`)",
    append_arg="split", accepts="ui", per_scheme=True,
    encode=_encode_split, warn=_warn_split, summary=_split_counts,
)

#: Every per-sample column, in the order files are written, checked and summarised (``label``
#: before ``labels``: a file with both is summarised as single-label).
COLUMNS: Tuple[Column, ...] = (IMAGES, LAT, LON, LABEL, LABELS, MASK, TIME, GROUP, NAME, SPLITS)
BY_NAME: Dict[str, Column] = {c.name: c for c in COLUMNS}
#: ``H5Writer.append`` keywords, one per column but images (the positional argument)
APPEND_ARGS: Dict[str, Column] = {c.append_arg: c for c in COLUMNS if c.append_arg is not None}


def markdown_table() -> str:
    """The table of ``docs/data_format.md`` ("Datasets (per sample, N rows)")."""
    rows = ["| name | shape | dtype | required | GeoDataset item | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    for c in COLUMNS:
        required = "yes" if c.required else (c.required_for or "no")
        item = f"`{c.sample_key}`: {c.sample}" if c.sample_key else "-"
        rows.append(f"| `{c.name}` | {c.shape_text} | {c.dtype} | {required} | {item} | {c.description} |")
    return "\n".join(rows)
