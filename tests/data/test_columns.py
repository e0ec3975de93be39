"""The table of per-sample columns (ssl_rs.data.columns) drives writing, validation, reading and
``data info``: every column of the table goes through all four, and a wrong dtype, rank, row count
or value of any column is one line naming the file and the column. The docs' table is the code's."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import h5py
import numpy as np
import pytest
import torch

from ssl_rs.data.columns import APPEND_ARGS, COLUMNS, OFFICIAL_SPLIT, Column, markdown_table
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.data.layout import H5Writer, check_file
from ssl_rs.errors import DataError

REPO = Path(__file__).resolve().parents[2]
N = 6
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 3000, (N, 3, 8, 8)).astype(np.uint16)
LAT = np.linspace(-10, 10, N)
LON = np.linspace(20, 30, N)
CLASSES = ["a", "b", "c"]
MASK_CLASSES = ["background", "cashew", "road"]
MASKS = np.stack([(np.arange(64).reshape(8, 8) + i) % 4 for i in range(N)]).astype(np.uint8)
MASKS[MASKS == 3] = 255  # no data


@dataclass
class Example:
    """How one column is given to H5Writer.append, what a GeoDataset item then holds and what
    ``data info`` says, and a value append must refuse."""

    values: Optional[List[Any]]  # None: images, the positional argument
    item: Optional[Callable[[int], Any]]  # expected item value of sample i; None: not in items
    info: Dict[str, Any]
    bad: Any
    writer: Dict[str, Any] = field(default_factory=dict)


EXAMPLES: Dict[str, Example] = {
    "images": Example(None, lambda i: torch.from_numpy(IMAGES[i]), {"n": N, "size": [8, 8]}, np.zeros((2, 8, 8))),
    "lat": Example(list(LAT), lambda i: torch.tensor(LAT[i], dtype=torch.float64), {"lat_range": [-10.0, 10.0]}, 95.0),
    "lon": Example(list(LON), lambda i: torch.tensor(LON[i], dtype=torch.float64), {"lon_range": [20.0, 30.0]},
                   "east"),
    "label": Example([0, 1, 2, 0, 1, 2], lambda i: torch.tensor(i % 3), {"task": "single-label",
                     "class_counts": {"a": 2, "b": 2, "c": 2}}, 2.5, {"class_names": CLASSES}),
    "labels": Example([[0], [1, 2], [], [2], [0, 1], [1]],
                      lambda i: torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 0, 1], [1, 1, 0], [0, 1, 0]][i],
                                             dtype=torch.float32),
                      {"task": "multi-label", "class_counts": {"a": 2, "b": 3, "c": 2}}, [5],
                      {"class_names": CLASSES, "multi_label": True}),
    "mask": Example(list(MASKS.astype(np.int64)), lambda i: torch.from_numpy(MASKS[i]),
                    {"mask_classes": MASK_CLASSES, "mask_nodata": 255, "mask_pixels_sampled": None,
                     "mask_pixel_counts": {"background": int((MASKS == 0).sum()), "cashew": int((MASKS == 1).sum()),
                                           "road": int((MASKS == 2).sum()), "no-data": int((MASKS == 255).sum())}},
                    np.full((8, 8), 7), {"mask_classes": MASK_CLASSES}),
    "time": Example([f"2020-01-0{i + 1}" for i in range(N)], lambda i: f"2020-01-0{i + 1}",
                    {"time_range": ["2020-01-01", "2020-01-06"]}, 20200101),
    "group": Example([0, 0, 1, 1, 2, 2], lambda i: torch.tensor(i // 2), {"groups": 3}, "g1"),
    "name": Example([f"s{i}" for i in range(N)], None, {}, 3),
    "splits/<scheme>": Example(["train", "train", "val", "test", "test", "train"], None,
                               {"splits": {OFFICIAL_SPLIT: {"train": 3, "val": 1, "test": 2}},
                                "default_split": OFFICIAL_SPLIT}, "dev"),
}
IDS = [c.name for c in COLUMNS]


def test_every_column_has_an_example():
    assert sorted(EXAMPLES) == sorted(IDS)


def write(path: Path, columns: List[Column]) -> Path:
    """A file with lat, lon and ``columns``, each given as its example."""
    kwargs: Dict[str, Any] = {}
    for column in columns:
        kwargs.update(EXAMPLES[column.name].writer)
    args = [c.append_arg for c in columns if c.append_arg not in (None, "lat", "lon")]
    with H5Writer(path, bands=["B02", "B03", "B04"], size=(8, 8), gsd=10.0, source="test", **kwargs) as w:
        for i in range(N):
            w.append(IMAGES[i], lat=LAT[i], lon=LON[i], **{a: EXAMPLES[APPEND_ARGS[a].name].values[i] for a in args})
    return path


def all_columns_file(path: Path) -> Path:
    """Every column but labels (a file holds label or labels), then labels added by hand."""
    write(path, [c for c in COLUMNS if c.name != "labels"])
    with h5py.File(path, "r+") as f:
        f.create_dataset("labels", data=np.stack([EXAMPLES["labels"].item(i).numpy() for i in range(N)]).astype(np.uint8))
    return path


# ----------------------------------------------------------------------------- the happy path
@pytest.mark.parametrize("column", COLUMNS, ids=IDS)
def test_a_column_is_written_validated_read_and_shown(tmp_path, column):
    example = EXAMPLES[column.name]
    path = write(tmp_path / "c.h5", [column])
    stored = column.display_name(OFFICIAL_SPLIT)
    with h5py.File(path) as f:  # written: the declared dtype and shape rule
        ds = f[stored]
        assert ds.ndim == column.rank and ds.shape[0] == N
        assert column.accepts_dtype(ds.dtype)
        if column.is_string:
            assert h5py.check_string_dtype(ds.dtype).encoding == "utf-8"
        else:
            assert ds.dtype == np.dtype(column.dtype)
        if column.name == "labels":
            assert ds.shape == (N, len(CLASSES))
    info = check_file(path)  # validated, and shown by data info
    assert info["columns"][stored]["shape"][0] == N
    assert set(info["columns"]) == {"images", "lat", "lon", stored}
    for key, value in example.info.items():
        assert info[key] == value, key
    ds = GeoDataset(path)  # read
    for i in (0, 4):
        item = ds[i]
        if column.sample_key is None:
            assert not set(item) - {"image", "lat", "lon", "index"}
            continue
        expected, got = example.item(i), item[column.sample_key]
        if isinstance(expected, torch.Tensor):
            assert got.dtype == expected.dtype and torch.equal(got, expected)
        else:
            assert got == expected
    if column.sample_key is not None:
        assert column.sample_key in ds.keys


def test_a_file_with_every_column(tmp_path):
    path = all_columns_file(tmp_path / "all.h5")
    info = check_file(path)
    assert list(info["columns"]) == [c.display_name(OFFICIAL_SPLIT) for c in COLUMNS]
    assert info["task"] == "single-label"  # label comes before labels in the table
    item = GeoDataset(path)[1]
    assert set(item) == {"index"} | {c.sample_key for c in COLUMNS if c.sample_key}
    assert item["label"].item() == 1 and item["labels"].tolist() == [0.0, 1.0, 1.0]


# ----------------------------------------------------------------------------- bad files
def _replace(path: Path, name: str, make: Callable[[np.ndarray], np.ndarray]) -> None:
    with h5py.File(path, "r+") as f:
        data = f[name][()]
        del f[name]
        new = make(data)
        dtype = h5py.string_dtype() if new.dtype == object else None
        f.create_dataset(name, data=new, dtype=dtype)


def _assert_one_line(path: Path, pattern: str) -> None:
    for read in (check_file, GeoDataset):
        with pytest.raises(DataError, match=pattern) as e:
            read(path)
        assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def _wrong_dtype(column: Column):
    # strings where numbers belong, numbers where strings belong
    if column.is_string:
        return lambda data: np.zeros(data.shape, np.float32)
    return lambda data: np.full(data.shape, "x", dtype=object)


@pytest.mark.parametrize("column", COLUMNS, ids=IDS)
def test_a_wrong_dtype_is_one_line_naming_the_column(tmp_path, column):
    path = all_columns_file(tmp_path / "bad.h5")
    name = column.display_name(OFFICIAL_SPLIT)
    _replace(path, name, _wrong_dtype(column))
    _assert_one_line(path, rf"{re.escape(name)}: has dtype \S+, expected ")


@pytest.mark.parametrize("column", COLUMNS, ids=IDS)
def test_a_wrong_shape_is_one_line_naming_the_column(tmp_path, column):
    path = all_columns_file(tmp_path / "bad.h5")
    name = column.display_name(OFFICIAL_SPLIT)
    _replace(path, name, lambda data: data[..., None])
    _assert_one_line(path, rf"{re.escape(name)}: has rank {column.rank + 1} .*, expected rank {column.rank} ")


@pytest.mark.parametrize("column", [c for c in COLUMNS if c.name != "images"], ids=IDS[1:])
def test_a_wrong_row_count_is_one_line_naming_the_column(tmp_path, column):
    path = all_columns_file(tmp_path / "bad.h5")
    name = column.display_name(OFFICIAL_SPLIT)
    _replace(path, name, lambda data: data[:-1])
    _assert_one_line(path, rf"{re.escape(name)}: has {N - 1} rows but images has {N}")


def test_a_missing_required_column_is_one_line(tmp_path):
    for column in (c for c in COLUMNS if c.required):
        path = all_columns_file(tmp_path / f"{column.name}.h5")
        with h5py.File(path, "r+") as f:
            del f[column.name]
        _assert_one_line(path, rf"{column.name}: required dataset is missing")


# ----------------------------------------------------------------------------- bad input to the writer
@pytest.mark.parametrize("column", COLUMNS, ids=IDS)
def test_a_wrong_value_given_to_the_writer_is_one_line_naming_the_column(tmp_path, column):
    example = EXAMPLES[column.name]
    out = tmp_path / "w.h5"
    args = {} if column.append_arg in (None, "lat", "lon") else {column.append_arg: example.values[0]}
    with pytest.raises(DataError) as e:
        with H5Writer(out, bands=["B02", "B03", "B04"], size=(8, 8), gsd=10.0, source="t", **example.writer) as w:
            w.append(IMAGES[0], lat=LAT[0], lon=LON[0], **args)
            second = {"lat": LAT[1], "lon": LON[1], **{k: EXAMPLES[APPEND_ARGS[k].name].values[1] for k in args}}
            image = IMAGES[1]
            if column.append_arg is None:
                image = example.bad
            else:
                second[column.append_arg] = example.bad
            w.append(image, **second)
    message = str(e.value)
    assert message.startswith(f"{out}: {column.display_name(OFFICIAL_SPLIT)}: ") and "\n" not in message
    assert "sample 1" in message or "unknown split" in message
    assert list(tmp_path.iterdir()) == []  # nothing left behind


OPTIONAL = [c for c in COLUMNS if not c.required]


@pytest.mark.parametrize("column", OPTIONAL, ids=[c.name for c in OPTIONAL])
def test_an_optional_column_is_given_for_all_samples_or_none(tmp_path, column):
    example = EXAMPLES[column.name]
    located = column.append_arg in ("lat", "lon")  # lat and lon go together: the second sample has neither
    name = "lat/lon" if located else column.display_name(OFFICIAL_SPLIT)
    with pytest.raises(DataError, match=rf"{re.escape(name)}: given for some samples but not for sample 1"):
        with H5Writer(tmp_path / "w.h5", bands=["B02", "B03", "B04"], size=(8, 8), gsd=10.0, source="t",
                      **example.writer) as w:
            w.append(IMAGES[0], lat=LAT[0], lon=LON[0], **({} if located else {column.append_arg: example.values[0]}))
            w.append(IMAGES[1], **({} if located else {"lat": LAT[1], "lon": LON[1]}))


def test_an_unknown_column_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        with H5Writer(tmp_path / "w.h5", bands=["B02"], size=(8, 8), gsd=10.0, source="t") as w:
            w.append(IMAGES[0][:1], lat=0.0, lon=0.0, colour="red")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- docs
def test_the_docs_table_is_the_code_table():
    text = (REPO / "docs" / "data_format.md").read_text()
    start = text.index("| name | shape | dtype | required | GeoDataset item | meaning |")
    end = text.index("\n\n", start)
    assert text[start:end] == markdown_table(), "update docs/data_format.md with `python -m ssl_rs.data.columns_table`"
