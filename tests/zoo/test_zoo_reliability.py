"""The zoo's reliability: entry names and URLs cannot reach outside the cache, weights load as
tensors only whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, and ``zoo export`` reports bad
runs and unwritable outputs in one line before writing anything."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from ssl_rs.cli import main
from ssl_rs.errors import ConfigError, DataError
from ssl_rs.zoo import UnsafeCheckpointError, download, export_run, load_backbone, read_weights_file


@pytest.fixture(autouse=True)
def _helpers(entry_for, cache_files):
    """The zoo conftest's helpers, as module globals."""
    global make_entry, files_under
    make_entry, files_under = entry_for, cache_files

L2A = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class RunsCode:
    """Unpickling this writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


# ----------------------------------------------------------------------------- names and URLs
@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", "/abs", "..", ".", ".hidden", "a\\b", "", "x\0y"])
def test_entry_name_that_is_not_one_path_component_is_refused(name):
    with pytest.raises(ConfigError, match="weights name") as info:
        make_entry("http://127.0.0.1:1/w.pth", b"w", name=name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/..", "http://127.0.0.1:1/a/..", "http://127.0.0.1:1/.",
                                 "http://127.0.0.1:1/a/.secret", "file:///tmp/x/../..", "w.pth",
                                 "ftp://127.0.0.1/w.pth", "http://127.0.0.1:1/w.pth?x=/../../y#/.."])
def test_entry_url_whose_file_name_is_not_a_plain_file_is_refused(url):
    if url.endswith("#/.."):  # query and fragment are not part of the file name: this one is fine
        assert make_entry(url, b"w").filename == "w.pth"
        return
    with pytest.raises(ConfigError, match="url") as info:
        make_entry(url, b"w")
    assert "\n" not in str(info.value)


def test_traversal_name_built_through_the_python_api_writes_nothing_outside_the_cache(
        tmp_path, file_server, ssl_rs_home):
    body = b"weights" * 100
    url = file_server.serve("/w.pth", body)
    outside = tmp_path / "x"
    with pytest.raises(ConfigError):
        entry = make_entry(url, body, name="../../x")
        download(entry, progress=False)  # before: wrote tmp_path/x/w.pth, outside $SSL_RS_HOME/weights
    assert not outside.exists() and files_under(tmp_path / "home") == []
    assert file_server.requests["/w.pth"] == 0


def test_good_names_and_urls_still_work(file_server, ssl_rs_home):
    body = b"weights" * 100
    entry = make_entry(file_server.serve("/dir/resnet18_all-59bf.pth", body), body, name="my.weights_v1-2")
    path = download(entry, progress=False)
    assert path == ssl_rs_home / "weights" / "my.weights_v1-2" / "resnet18_all-59bf.pth"
    assert path.read_bytes() == body


# ----------------------------------------------------------------------------- tensors only
@pytest.fixture
def unpickling_forced(monkeypatch):
    """The environment variable that makes torch.load unpickle anything when weights_only is not given."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_local_pickle_payload_is_refused_under_force_no_weights_only(tmp_path, unpickling_forced, suffix):
    marker = tmp_path / "marker"
    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(torch_bytes({"model.conv1.weight": torch.zeros(1), "x": RunsCode(marker)}))
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_weights_file(evil)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_backbone(str(evil))
    assert not marker.exists()
    torch.load(evil)  # the variable is in force: a load without weights_only=True would run the payload
    assert marker.read_text() == "pwned"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_downloaded_pickle_payload_is_refused_under_force_no_weights_only(tmp_path, file_server, ssl_rs_home,
                                                                          unpickling_forced):
    marker = tmp_path / "marker"
    body = torch_bytes({"conv1.weight": torch.zeros(1), "x": RunsCode(marker)})
    entry = make_entry(file_server.serve("/evil.pt", body), body, key_layout="timm")
    with pytest.raises(UnsafeCheckpointError):
        load_backbone(entry, progress=False)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_export_of_a_pickle_payload_checkpoint_is_refused_under_force_no_weights_only(
        tmp_path, capsys, unpickling_forced):
    marker = tmp_path / "marker"
    run = fake_run(tmp_path / "run")
    (run / "checkpoints" / "last.ckpt").write_bytes(torch_bytes({"state_dict": {}, "x": RunsCode(marker)}))
    assert main(["zoo", "export", str(run), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssl-rs: error:") and err.count("\n") == 1 and "last.ckpt" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- export
def fake_run(run: Path, config=None, results=None) -> Path:
    """A run directory as ``ssl-rs pretrain`` leaves it: config.yaml, checkpoints/last.ckpt, results.json."""
    from ssl_rs.backbones import create_backbone

    (run / "checkpoints").mkdir(parents=True)
    cfg = config if config is not None else {
        "backbone": {"name": "tiny_cnn", "args": {"width": 8}}, "method": {"name": "mocov2", "args": {}},
        "geo": {"name": None}, "augmentation": {"size": 16}, "data": {"path": None}, "output": {"dir": "runs"}}
    (run / "config.yaml").write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    torch.manual_seed(0)
    backbone = create_backbone("tiny_cnn", in_chans=len(L2A), width=8)
    torch.save({"state_dict": {"backbone." + k: v for k, v in backbone.state_dict().items()},
                "ssl_rs_bands": L2A}, run / "checkpoints" / "last.ckpt")
    results = results if results is not None else {"epochs": 1, "steps": 3, "train_seconds": 1.5,
                                                   "eval": {"random": {"metrics": {"knn": {"acc_macro": 50.0}}}}}
    (run / "results.json").write_text(results if isinstance(results, str) else json.dumps(results))
    return run


def export_cli(capsys, run: Path, out: Path, *extra):
    code = main(["zoo", "export", str(run), "-o", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("ssl-rs: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_fake_run_exports(tmp_path, capsys):
    code, out, err = export_cli(capsys, fake_run(tmp_path / "run"), tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "MODEL_CARD.md", "config.yaml", "entry.py", "tiny_cnn_run.safetensors"]


@pytest.mark.parametrize("config, message", [
    ("backbone: {name: tiny_cnn\nmethod: [", "config.yaml: not a readable run config"),
    ("key: value\n  bad: indentation\n", "config.yaml: not a readable run config"),
    ("- a\n- b\n", "config.yaml: expected a mapping of config sections, got list"),
    ("just a string\n", "config.yaml: backbone.name: missing"),  # OmegaConf reads it as {"just a string": None}
    ({"backbone": {"name": "tiny_cnn"}}, "config.yaml: method.name: missing"),
    ({"backbone": "tiny_cnn", "method": {"name": "mocov2"}}, "config.yaml: backbone.name: missing"),
    ({"backbone": {"name": "tiny_cnn", "args": [1]}, "method": {"name": "mocov2"}}, "backbone.args: expected a mapping"),
    ({"backbone": {"name": "tiny_cnn"}, "method": {"name": "mocov2"}, "augmentation": {"size": "big"}},
     "augmentation.size: expected a side in pixels"),
    ({"backbone": {"name": "tiny_cnn"}, "method": {"name": "mocov2"}, "geo": [1]}, "geo: expected a mapping"),
    ("a: ${missing.key}\nbackbone: {name: tiny_cnn}\nmethod: {name: mocov2}\n", "config.yaml: not a readable run config"),
])
def test_malformed_config_yaml_is_one_line_and_writes_nothing(tmp_path, capsys, config, message):
    run = fake_run(tmp_path / "run", config=config)
    code, _, err = export_cli(capsys, run, tmp_path / "out")
    assert_one_line(code, err, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("results, message", [
    ("{not json", "results.json: not valid JSON"),
    ("", "results.json: not valid JSON"),
    ("[1, 2]", "results.json: expected a JSON object, got list"),
    ({"eval": [1]}, "results.json: eval: expected an object per split scheme"),
    ({"eval": {"random": {"metrics": [1]}}}, "results.json: eval.random.metrics"),
    ({"eval": {"random": 3}}, "results.json: eval.random.metrics"),
    ({"train_seconds": "soon"}, "results.json: train_seconds: expected a number"),
])
def test_malformed_results_json_is_one_line_and_writes_nothing(tmp_path, capsys, results, message):
    run = fake_run(tmp_path / "run", results=results)
    code, _, err = export_cli(capsys, run, tmp_path / "out")
    assert_one_line(code, err, message)
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_or_under_a_file_is_one_line(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = export_cli(capsys, run, blocker)
    assert_one_line(code, err, "file.txt: output directory: exists and is not a directory")
    code, _, err = export_cli(capsys, run, blocker / "release")
    assert_one_line(code, err, "is not a directory")
    assert blocker.read_text() == "x"


def test_bad_url_is_refused_before_anything_is_written(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    code, _, err = export_cli(capsys, run, tmp_path / "out", "--url", "https://example.org/weights/..")
    assert_one_line(code, err, "--url")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["locked", "locked/release"])
def test_output_in_a_read_only_directory_is_one_line(tmp_path, capsys, read_only, where):
    run = fake_run(tmp_path / "run")
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    code, _, err = export_cli(capsys, run, tmp_path / where)
    assert_one_line(code, err, "output directory: cannot write in", "Permission denied")
    assert files_under(locked) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a chmod 0555 directory anyway")
def test_output_in_a_chmod_read_only_directory_is_one_line(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = export_cli(capsys, run, locked / "release")
    finally:
        locked.chmod(0o755)
    assert_one_line(code, err, "cannot write")
    assert files_under(locked) == []


def test_export_run_library_errors_are_data_errors(tmp_path):
    run = fake_run(tmp_path / "run", results="{broken")
    with pytest.raises(DataError, match="results.json: not valid JSON"):
        export_run(run, tmp_path / "out")


def test_training_checkpoint_whose_config_does_not_fit_its_weights_is_one_line(tmp_path):
    from ssl_rs.backbones import create_backbone

    weights = create_backbone("tiny_cnn", in_chans=len(L2A), width=8)
    ckpt = tmp_path / "other.ckpt"
    torch.save({"ssl_rs_config": {"backbone": {"name": "resnet18", "args": {}}, "method": {"name": "mocov2", "args": {}},
                                  "augmentation": {"size": None}},
                "ssl_rs_bands": L2A, "state_dict": {"backbone." + k: v for k, v in weights.state_dict().items()}}, ckpt)
    with pytest.raises(ConfigError, match=r"other.ckpt: ssl_rs_config: its config \(backbone 'resnet18'\) does not fit") as info:
        load_backbone(str(ckpt))
    assert "\n" not in str(info.value)
