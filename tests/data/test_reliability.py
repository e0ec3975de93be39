"""Writing files (one policy for every writer) and one-line errors of the ``data`` commands.

Every writer goes through ssl_rs.files: a deterministic ``.NAME.part`` beside the output, moved
into place atomically, stale ones removed, the umask's mode, ``ssl-rs: replaced OUT`` when an
output is replaced, and one line (exit 2, nothing left) for a full disk or an unwritable place.
Bad input to ``data convert | synth | info | split`` is one line naming the file, field or option.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssl_rs.cli import main
from ssl_rs.data.layout import H5Writer, check_file
from ssl_rs.errors import DataError

REPO = Path(__file__).resolve().parents[2]
EUROSAT = REPO.parent / "shared" / "data" / "eurosat_ms_subset"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------- helpers
def eurosat_source(tmp_path: Path, n: int = 3) -> Path:
    """A small EuroSAT-MS folder of ``n`` real GeoTIFFs (copied from ../shared/data)."""
    if not EUROSAT.is_dir():
        pytest.skip(f"real Sentinel-2 samples not found at {EUROSAT}")
    src = tmp_path / "src"
    for i, tif in enumerate(sorted((EUROSAT / "train" / "SeaLake").glob("*.tif"))[:n]):
        (src / "train" / "SeaLake").mkdir(parents=True, exist_ok=True)
        shutil.copy(tif, src / "train" / "SeaLake" / f"s{i}.tif")
        os.chmod(src / "train" / "SeaLake" / f"s{i}.tif", 0o644)
    return src


def one_error_line(capsys) -> str:
    """The CLI's stderr, asserted to be exactly one ``ssl-rs: error:`` line; returns it."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssl-rs: error: "), err[-3000:]
    assert "Traceback" not in err
    return lines[0]


def synth_args(out: Path, n: int = 30, *extra: str):
    return ["data", "synth", "-o", str(out), "--n", str(n), "--size", "8", "--bands", "B02,B03", "--classes", "2",
            *extra]


def listing(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def umask():
    """Set the umask for one test (restored afterwards)."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def fail_writes_of_part_files(monkeypatch, error: int, after_bytes: int = 0) -> None:
    """Make writes to ``*.part`` files fail with ``error`` once ``after_bytes`` were written (a
    full disk), whatever writes them; other writes are untouched."""
    real_pwrite, real_write = os.pwrite, os.write
    written = {"n": 0}

    def is_part(fd) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").endswith(".part")
        except OSError:
            return False

    def check(fd, n):
        if is_part(fd):
            written["n"] += n
            if written["n"] > after_bytes:
                raise OSError(error, os.strerror(error))

    def pwrite(fd, data, offset):
        check(fd, len(data))
        return real_pwrite(fd, data, offset)

    def write(fd, data):
        check(fd, len(data))
        return real_write(fd, data)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "write", write)


def refuse_part_files(monkeypatch, error: int = errno.EACCES) -> None:
    """Emulate a directory that refuses new files (root ignores chmod): creating a ``*.part``
    file fails with ``error``, whichever call creates it."""
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if str(path).endswith(".part"):
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


# ----------------------------------------------------------------------------- 1. atomic writes
def test_writer_uses_one_deterministic_part_file_beside_the_output(tmp_path):
    out = tmp_path / "w.h5"
    with H5Writer(out, bands=["B02"], size=(4, 4), gsd=10.0, source="t") as writer:
        writer.append(np.ones((1, 4, 4), np.uint16), lat=1.0, lon=2.0)
        assert listing(tmp_path) == [".w.h5.part"]  # a rerun finds (and replaces) the same name
    assert listing(tmp_path) == ["w.h5"]


def test_stale_part_files_of_an_output_are_removed_when_it_is_written(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for stale in (".w.h5.part", ".w.h5.k2j4_x9q.part"):  # this naming, and mkstemp's of old versions
        (out_dir / stale).write_bytes(b"left by a killed run")
    (out_dir / ".other.h5.part").write_bytes(b"another output's: kept")
    assert main(synth_args(out_dir / "w.h5")) == 0
    assert listing(out_dir) == [".other.h5.part", "w.h5"]
    src = eurosat_source(tmp_path)
    (out_dir / ".e.h5.part").write_bytes(b"stale")
    (out_dir / ".e.h5.abcdefgh.part").write_bytes(b"stale")
    assert main(["data", "convert", "eurosat-ms", str(src), "-o", str(out_dir / "e.h5")]) == 0
    assert listing(out_dir) == [".other.h5.part", "e.h5", "w.h5"]


def test_a_second_writer_of_the_same_output_is_refused_not_let_to_remove_the_first(tmp_path):
    out = tmp_path / "w.h5"
    with H5Writer(out, bands=["B02"], size=(4, 4), gsd=10.0, source="t") as first:
        first.append(np.ones((1, 4, 4), np.uint16), lat=1.0, lon=2.0)
        with pytest.raises(DataError, match=r"w\.h5: another process is writing this file"):
            with H5Writer(out, bands=["B02"], size=(4, 4), gsd=10.0, source="t"):
                pass
        assert (tmp_path / ".w.h5.part").exists()
    assert check_file(out)["n"] == 1 and listing(tmp_path) == ["w.h5"]


@pytest.mark.slow
def test_sigterm_during_synth_leaves_no_part_file(tmp_path):
    out = tmp_path / "w.h5"
    cmd = [sys.executable, "-m", "ssl_rs.cli", *synth_args(out, 60000, "--block-km", "0")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ,
                            "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".w.h5*.part")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "synth ended before it could be interrupted"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (143, 130, -signal.SIGTERM), err.decode()[-2000:]
    assert listing(tmp_path) == [], "a terminated synth left files behind"


# ----------------------------------------------------------------------------- 2. modes
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_get_the_mode_of_the_umask(tmp_path, umask, mask, mode):
    src = eurosat_source(tmp_path)
    umask(mask)
    assert main(synth_args(tmp_path / "w.h5")) == 0
    assert main(["data", "convert", "eurosat-ms", str(src), "-o", str(tmp_path / "e.h5")]) == 0
    assert main(synth_args(tmp_path / "w.h5")) == 0  # replacing keeps the umask's mode, too
    for name in ("w.h5", "e.h5"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(mode), name


def test_text_outputs_get_the_mode_of_the_umask(tmp_path, umask):
    from ssl_rs.files import copy_file, write_bytes, write_text

    umask(0o027)
    write_text(tmp_path / "a.md", "card\n")
    write_bytes(tmp_path / "b.safetensors", b"\0" * 10)
    copy_file(tmp_path / "a.md", tmp_path / "c.yaml")
    for name in ("a.md", "b.safetensors", "c.yaml"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o640), name
    assert listing(tmp_path) == ["a.md", "b.safetensors", "c.yaml"]


# ----------------------------------------------------------------------------- 3. replacing
def test_replacing_an_output_is_atomic_and_said(tmp_path, capsys):
    out = tmp_path / "w.h5"
    assert main(synth_args(out)) == 0
    assert "replaced" not in capsys.readouterr().err
    inode = out.stat().st_ino
    assert main(synth_args(out, 60, "--seed", "3")) == 0
    assert f"ssl-rs: replaced {out}" in capsys.readouterr().err.splitlines()
    assert out.stat().st_ino != inode and check_file(out)["n"] == 60  # a new file moved into place
    src = eurosat_source(tmp_path)
    for i in range(2):
        assert main(["data", "convert", "eurosat-ms", str(src), "-o", str(tmp_path / "e.h5")]) == 0
        said = f"ssl-rs: replaced {tmp_path / 'e.h5'}" in capsys.readouterr().err.splitlines()
        assert said == (i == 1)
    assert listing(tmp_path) == ["e.h5", "src", "w.h5"]


def test_data_split_says_when_it_replaces_a_split(world_copy, capsys):
    assert main(["data", "split", str(world_copy), "--scheme", "random", "--name", "mine"]) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main(["data", "split", str(world_copy), "--scheme", "random", "--name", "mine", "--seed", "4"]) == 0
    assert f"ssl-rs: replaced splits/mine in {world_copy}" in capsys.readouterr().err.splitlines()


def test_synth_writes_its_splits_before_the_file_is_moved_into_place(tmp_path, monkeypatch):
    import ssl_rs.data.splits as splits

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(splits, "spatial_block_split", boom)
    out = tmp_path / "w.h5"
    assert main(synth_args(out)) == 130  # interrupted while adding the spatial-block split
    assert listing(tmp_path) == []  # not a file with only some of its splits


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run directory export accepts (config.yaml, checkpoints/last.ckpt), without training."""
    import torch
    import yaml

    from ssl_rs.backbones import create_backbone

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = {"backbone": {"name": "tiny_cnn", "args": {"width": 4}}, "method": {"name": "mocov2", "args": {}},
           "augmentation": {"size": 16}, "data": {"path": None}, "output": {"dir": "runs"}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    backbone = create_backbone("tiny_cnn", in_chans=2, width=4)
    state = {"backbone." + k: v for k, v in backbone.state_dict().items()}
    torch.save({"state_dict": state, "ssl_rs_bands": ["B02", "B03"]}, run / "checkpoints" / "last.ckpt")
    return run


def test_zoo_export_follows_the_policy(fake_run, tmp_path, umask, capsys):
    out = tmp_path / "release"
    umask(0o027)
    names = ["MODEL_CARD.md", "config.yaml", "entry.py", "tiny.safetensors"]
    assert main(["zoo", "export", str(fake_run), "-o", str(out), "--name", "tiny"]) == 0
    assert "replaced" not in capsys.readouterr().err
    assert listing(out) == names
    for name in names:
        assert oct((out / name).stat().st_mode & 0o777) == oct(0o640), name
    assert main(["zoo", "export", str(fake_run), "-o", str(out), "--name", "tiny"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "replaced" in line]
    assert said == [f"ssl-rs: replaced {out / name}" for name in ("tiny.safetensors", "config.yaml", "entry.py",
                                                                  "MODEL_CARD.md")]
    assert listing(out) == names


def test_weights_cache_follows_the_policy(tmp_path, umask, monkeypatch):
    import hashlib

    from ssl_rs.zoo import WeightsEntry, cached_path, download

    body = b"weights" * 1000
    source = tmp_path / "w.pth"
    source.write_bytes(body)
    entry = WeightsEntry(name="w", url=source.as_uri(), sha256=hashlib.sha256(body).hexdigest(), size=len(body),
                         backbone="resnet18", bands=("B02",), method="m", pretraining_data="d", normalization={},
                         image_size=1, license="MIT")
    monkeypatch.setenv("SSL_RS_HOME", str(tmp_path / "home"))
    path = cached_path(entry)
    path.parent.mkdir(parents=True)
    (path.parent / f".{path.name}.part").write_bytes(b"a killed download")
    (path.parent / f".{path.name}.x1y2z3_4.part").write_bytes(b"a killed download of an older version")
    umask(0o022)
    assert download(entry, progress=False) == path and path.read_bytes() == body
    assert listing(path.parent) == [path.name, path.name + ".sha256"]
    for p in path.parent.iterdir():
        assert oct(p.stat().st_mode & 0o777) == oct(0o644), p.name


def test_geo_cluster_cache_follows_the_policy(tmp_path, umask, monkeypatch, caplog):
    from ssl_rs.geo import clusters

    umask(0o022)
    path = tmp_path / "d.h5.geoclusters-K2-seed0-abc.npz"
    (tmp_path / f".{path.name}.part").write_bytes(b"stale")
    centroids = np.eye(3)[:2]
    clusters._write_cache(path, centroids, 0)
    assert listing(tmp_path) == [path.name] and oct(path.stat().st_mode & 0o777) == oct(0o644)
    np.testing.assert_array_equal(clusters._read_cache(path, 2), centroids)
    fail_writes_of_part_files(monkeypatch, errno.ENOSPC)  # a full disk costs a refit, not the run
    other = tmp_path / "e.h5.geoclusters-K2-seed0-abc.npz"
    with caplog.at_level("WARNING", logger="ssl_rs.geo.clusters"):
        clusters._write_cache(other, centroids, 0)
    assert f"{other}: no space left on device" in caplog.text
    assert listing(tmp_path) == [path.name]


def test_the_policy_is_documented():
    text = (REPO / "docs" / "data_format.md").read_text()
    assert "## Writing files" in text
    for phrase in (".NAME.part", "ssl-rs: replaced", "umask", "no space left on device", "data split"):
        assert phrase in text, phrase


# ----------------------------------------------------------------------------- 4. disk full
def test_convert_with_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    src = eurosat_source(tmp_path, n=4)
    out = tmp_path / "out" / "e.h5"
    fail_writes_of_part_files(monkeypatch, errno.ENOSPC, after_bytes=150_000)
    assert main(["data", "convert", "eurosat-ms", str(src), "-o", str(out)]) == 2
    assert one_error_line(capsys) == f"ssl-rs: error: {out}: no space left on device"
    assert listing(out.parent) == []


def test_synth_with_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "w.h5"
    assert main(synth_args(out)) == 0
    before = out.read_bytes()
    capsys.readouterr()
    fail_writes_of_part_files(monkeypatch, errno.ENOSPC, after_bytes=2000)
    assert main(synth_args(out, 60)) == 2
    assert one_error_line(capsys) == f"ssl-rs: error: {out}: no space left on device"
    assert listing(tmp_path) == ["w.h5"] and out.read_bytes() == before


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 200 kB tmpfs (root only; skipped where it cannot be mounted)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_convert_onto_a_really_full_disk(tiny_tmpfs):
    if not EUROSAT.is_dir():
        pytest.skip(f"real Sentinel-2 samples not found at {EUROSAT}")
    out = tiny_tmpfs / "e.h5"
    done = subprocess.run([sys.executable, "-m", "ssl_rs.cli", "data", "convert", "eurosat-ms", str(EUROSAT),
                           "-o", str(out)], capture_output=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = done.stderr.decode()
    assert done.returncode == 2, err[-2000:]  # was: ~1,300 lines of h5py tracebacks, then a segfault
    assert err.strip().splitlines() == [f"ssl-rs: error: {out}: no space left on device"]
    assert listing(tiny_tmpfs) == []


# ----------------------------------------------------------------------------- 5. convert
def test_convert_truncated_geotiff_is_one_line(tmp_path, capsys):
    src = eurosat_source(tmp_path, n=3)
    broken = src / "train" / "SeaLake" / "s1.tif"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # the header is intact, the pixels are cut
    out = tmp_path / "out" / "e.h5"
    assert main(["data", "convert", "eurosat-ms", str(src), "-o", str(out)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"ssl-rs: error: {broken}: pixels: ") and "truncated" in line
    assert listing(out.parent) == []


def test_convert_into_a_directory_that_refuses_files_is_one_line(tmp_path, monkeypatch, capsys):
    src = eurosat_source(tmp_path)
    out = tmp_path / "out" / "e.h5"
    out.parent.mkdir()
    refuse_part_files(monkeypatch)  # root ignores chmod 0555: emulate the refusal
    assert main(["data", "convert", "eurosat-ms", str(src), "-o", str(out)]) == 2
    assert one_error_line(capsys) == f"ssl-rs: error: {out}: permission denied"
    assert listing(out.parent) == []


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only bind mount: refuses writes even to root (skipped where it
    cannot be mounted)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root")
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_convert_and_synth_into_a_read_only_mount(tmp_path, read_only_dir, capsys):
    src = eurosat_source(tmp_path)
    out = read_only_dir / "e.h5"
    assert main(["data", "convert", "eurosat-ms", str(src), "-o", str(out)]) == 2
    assert one_error_line(capsys) == f"ssl-rs: error: {out}: read-only file system"
    out = read_only_dir / "sub" / "w.h5"
    assert main(synth_args(out)) == 2
    assert one_error_line(capsys) == f"ssl-rs: error: {out}: read-only file system"
    assert listing(read_only_dir) == []


@pytest.mark.skipif(IS_ROOT, reason="root writes into a chmod 0555 directory anyway (emulated above)")
def test_convert_and_synth_into_a_read_only_directory(tmp_path, capsys):  # pragma: no cover - not root
    src = eurosat_source(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["data", "convert", "eurosat-ms", str(src), "-o", str(ro / "e.h5")]) == 2
        assert one_error_line(capsys) == f"ssl-rs: error: {ro / 'e.h5'}: permission denied"
        assert main(synth_args(ro / "w.h5")) == 2
        assert one_error_line(capsys) == f"ssl-rs: error: {ro / 'w.h5'}: permission denied"
        assert listing(ro) == []
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- 6. synth
def test_synth_into_a_directory_that_refuses_files_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "w.h5"
    refuse_part_files(monkeypatch)
    assert main(synth_args(out)) == 2
    assert one_error_line(capsys) == f"ssl-rs: error: {out}: permission denied"
    refuse_part_files(monkeypatch, errno.EROFS)
    assert main(synth_args(out)) == 2
    assert one_error_line(capsys) == f"ssl-rs: error: {out}: read-only file system"
    assert listing(tmp_path) == []


def test_synth_output_whose_parent_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "w.h5"
    assert main(synth_args(out)) == 2
    assert one_error_line(capsys) == f"ssl-rs: error: {out}: output: {tmp_path / 'notes.txt'} is not a directory"
    assert listing(tmp_path) == ["notes.txt"]


def test_synth_output_that_is_a_directory_is_refused_up_front(tmp_path, capsys):
    (tmp_path / "w.h5").mkdir()
    assert main(synth_args(tmp_path / "w.h5")) == 2
    line = one_error_line(capsys)
    assert line == f"ssl-rs: error: {tmp_path / 'w.h5'}: output: is a directory, expected a file path"
    assert listing(tmp_path) == ["w.h5"] and listing(tmp_path / "w.h5") == []


def test_synth_that_cannot_fit_in_memory_is_refused_up_front(tmp_path, monkeypatch, capsys):
    import ssl_rs.data.synth as synth

    monkeypatch.setattr(synth, "available_memory", lambda: 20_000_000, raising=False)
    monkeypatch.setattr(synth, "render", lambda *a, **k: pytest.fail("rendered despite the memory check"))
    out = tmp_path / "w.h5"
    assert main(synth_args(out, 12000)) == 2
    line = one_error_line(capsys)
    assert line.startswith("ssl-rs: error: --n 12000: synthesising needs about ") and "available" in line
    assert listing(tmp_path) == []


def test_synth_that_cannot_fit_on_the_disk_is_refused_up_front(tmp_path, monkeypatch, capsys):
    import ssl_rs.data.synth as synth

    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    monkeypatch.setattr(synth, "render", lambda *a, **k: pytest.fail("rendered despite the disk check"))
    out = tmp_path / "w.h5"
    assert main(synth_args(out, 3000)) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"ssl-rs: error: {out}: needs about ") and "of disk space, only" in line
    assert listing(tmp_path) == []


def test_synth_memory_estimate_of_two_billion_samples():
    from ssl_rs.data.synth import memory_needed

    per_n, per_size = memory_needed(2_000_000_000, size=32, bands=12)
    assert per_n > 1e13 and per_size < 1e9  # tens of TB: refused on any machine
    small = sum(memory_needed(2000, size=32, bands=12))
    assert 1e7 < small < 2e9  # the default request fits anywhere


# ----------------------------------------------------------------------------- 7. info
def run_info(path: Path, capsys):
    code = main(["data", "info", str(path)])
    return code, capsys.readouterr()


def test_info_file_without_samples_is_one_line(tmp_path, capsys):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", shape=(0, 2, 4, 4), dtype=np.uint16)
        f.create_dataset("lat", shape=(0,), dtype=np.float64)
        f.create_dataset("lon", shape=(0,), dtype=np.float64)
        f.attrs["bands"] = ["B02", "B03"]
    assert main(["data", "info", str(path)]) == 2
    assert one_error_line(capsys) == f"ssl-rs: error: {path}: images: the file has no samples"


def test_info_negative_label_is_one_line(world_copy, capsys):
    with h5py.File(world_copy, "r+") as f:
        f["label"][3] = -1
    assert main(["data", "info", str(world_copy)]) == 2
    line = one_error_line(capsys)
    assert line == f"ssl-rs: error: {world_copy}: label: sample 3 = -1 is negative (class indices start at 0)"


def test_info_splits_stored_as_a_dataset_is_one_line(world_copy, capsys):
    with h5py.File(world_copy, "r+") as f:
        codes = f["splits"]["random"][:]
        del f["splits"]
        f.create_dataset("splits", data=codes)
    assert main(["data", "info", str(world_copy)]) == 2
    assert one_error_line(capsys).startswith(f"ssl-rs: error: {world_copy}: splits: expected a group")


@pytest.mark.parametrize("gsd", ["ten", b"10 m", -10.0])
def test_info_non_numeric_gsd_is_one_line(world_copy, capsys, gsd):
    with h5py.File(world_copy, "r+") as f:
        f.attrs["gsd"] = gsd
    assert main(["data", "info", str(world_copy)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"ssl-rs: error: {world_copy}: gsd: attribute is ") and "expected a positive number" in line


def test_info_warns_about_labels_beyond_the_class_names_and_unknown_split_codes(world_copy, capsys):
    with h5py.File(world_copy, "r+") as f:
        n_classes = len(f.attrs["class_names"])
        f["label"][5] = n_classes + 3
        f["splits"]["random"][7] = 9
    code, captured = run_info(world_copy, capsys)
    assert code == 0
    warnings = [line for line in captured.err.splitlines() if line.startswith("ssl-rs: warning: ")]
    assert len(warnings) == 2, captured.err
    assert warnings[0].startswith(f"ssl-rs: warning: {world_copy}: label: 1 samples have a class index beyond "
                                  f"the {n_classes} class_names (sample 5 = {n_classes + 3})")
    assert warnings[1].startswith(f"ssl-rs: warning: {world_copy}: splits/random: 1 samples have an unknown "
                                  "split code (sample 7 = 9")
    assert "samples   120" in captured.out


# ----------------------------------------------------------------------------- 8. split
@pytest.mark.parametrize("block_km", ["nan", "inf", "-inf", "0", "-5"])
def test_split_refuses_block_sizes_that_are_not_positive_and_finite(world_copy, capsys, block_km):
    before = world_copy.read_bytes()
    assert main(["data", "split", str(world_copy), "--scheme", "spatial-block", f"--block-km={block_km}"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("ssl-rs: error: --block-km must be positive and finite (a cell size in km), got ")
    assert world_copy.read_bytes() == before  # nothing written


@pytest.mark.parametrize("block_km", ["nan", "inf", "-1"])
def test_synth_refuses_block_sizes_that_are_not_positive_and_finite(tmp_path, capsys, block_km):
    assert main(synth_args(tmp_path / "w.h5", 30, f"--block-km={block_km}")) == 2
    line = one_error_line(capsys)
    assert line.startswith("ssl-rs: error: --block-km must be positive and finite (a cell size in km), got ")
    assert listing(tmp_path) == []
