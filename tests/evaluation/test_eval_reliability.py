"""``ssl-rs eval``: bad input is one line (``ssl-rs: error: ...``, exit 2), found before the
evaluation runs, and nothing is written; checkpoints load as tensors only."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from ssl_rs.cli import main
from ssl_rs.errors import ConfigError

L2A = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("ssl-rs: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def no_evaluation(monkeypatch):
    """Make any evaluation that starts fail loudly: the checks must come first."""
    import ssl_rs.evaluation.harness as harness

    calls = []

    def extract(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the evaluation ran before the bad option was reported")

    monkeypatch.setattr("ssl_rs.evaluation.features.extract_features", extract)
    return calls


class RunsCode:
    """Unpickling this writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def fake_checkpoint(path: Path, config_backbone: str, weights_backbone: str = "tiny_cnn") -> Path:
    """A training checkpoint of the ssl-rs layout whose config names ``config_backbone`` while
    its weights are those of ``weights_backbone``."""
    from ssl_rs.backbones import create_backbone

    torch.manual_seed(0)
    weights = create_backbone(weights_backbone, in_chans=len(L2A), **({"width": 8} if weights_backbone == "tiny_cnn" else {}))
    torch.save({
        "ssl_rs_config": {"backbone": {"name": config_backbone, "args": {}},
                          "method": {"name": "mocov2", "args": {}}, "augmentation": {"size": None}},
        "ssl_rs_bands": L2A,
        "state_dict": {"backbone." + k: v for k, v in weights.state_dict().items()},
    }, path)
    return path


# ----------------------------------------------------------------------------- tensors only
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_eval_checkpoint_with_a_pickle_payload_is_refused_even_when_torch_is_told_to_unpickle(
        capsys, tmp_path, tiny_world, monkeypatch, no_evaluation):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    torch.save({"ssl_rs_config": {"x": RunsCode(marker)}, "state_dict": {}}, evil)
    code, _, err = run_cli(capsys, "eval", "knn", "--checkpoint", str(evil), "--data", str(tiny_world),
                           "--device", "cpu")
    assert_one_line_error(code, err, "evil.ckpt")
    assert not marker.exists() and not no_evaluation
    # the payload is live: loading it the unsafe way runs it
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "pwned"


# ----------------------------------------------------------------------------- checkpoint vs its config
def test_checkpoint_whose_config_names_another_backbone_is_one_line(capsys, tmp_path, tiny_world, no_evaluation):
    ckpt = fake_checkpoint(tmp_path / "other.ckpt", config_backbone="resnet18")
    code, _, err = run_cli(capsys, "eval", "knn", "--checkpoint", str(ckpt), "--data", str(tiny_world),
                           "--device", "cpu")
    assert_one_line_error(code, err, "other.ckpt", "backbone 'resnet18'", "does not fit")
    assert not no_evaluation


def test_backbone_and_checkpoint_together_are_refused(capsys, tmp_path, tiny_world):
    ckpt = fake_checkpoint(tmp_path / "ok.ckpt", config_backbone="tiny_cnn")
    with pytest.raises(SystemExit) as e:  # argparse: the two options are mutually exclusive
        main(["eval", "knn", "--backbone", "resnet18", "--checkpoint", str(ckpt), "--data", str(tiny_world)])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_backbone_args_with_a_checkpoint_are_refused(capsys, tmp_path, tiny_world, no_evaluation):
    ckpt = fake_checkpoint(tmp_path / "ok.ckpt", config_backbone="tiny_cnn")
    code, _, err = run_cli(capsys, "eval", "knn", "--checkpoint", str(ckpt), "--data", str(tiny_world),
                           "--backbone-args", '{"width": 8}')
    assert_one_line_error(code, err, "--backbone-args", "--backbone only")


def test_checkpoint_with_other_backbone_args_is_one_line_and_a_fitting_one_evaluates(capsys, tmp_path, tiny_world):
    ckpt = fake_checkpoint(tmp_path / "ok.ckpt", config_backbone="tiny_cnn")
    # width 8 is not the factory default (32): the config says {} so this one does not fit either
    code, _, err = run_cli(capsys, "eval", "knn", "--checkpoint", str(ckpt), "--data", str(tiny_world),
                           "--device", "cpu")
    assert_one_line_error(code, err, "backbone 'tiny_cnn'", "does not fit")
    from ssl_rs.backbones import create_backbone

    torch.manual_seed(0)
    weights = create_backbone("tiny_cnn", in_chans=len(L2A))
    torch.save({"ssl_rs_config": {"backbone": {"name": "tiny_cnn", "args": {}},
                                  "method": {"name": "mocov2", "args": {}}, "augmentation": {"size": 12}},
                "ssl_rs_bands": L2A,
                "state_dict": {"backbone." + k: v for k, v in weights.state_dict().items()}}, ckpt)
    out_json = tmp_path / "r.json"
    code, out, err = run_cli(capsys, "eval", "knn", "--checkpoint", str(ckpt), "--data", str(tiny_world),
                             "--device", "cpu", "--json", str(out_json))
    assert code == 0, err
    assert json.loads(out_json.read_text())["metrics"]["knn"]["acc_macro"] >= 0



def test_checkpoint_may_be_a_run_directory(capsys, tmp_path, tiny_world):
    from ssl_rs.backbones import create_backbone

    run = tmp_path / "runs" / "mocov2"
    (run / "checkpoints").mkdir(parents=True)
    code, _, err = run_cli(capsys, "eval", "knn", "--checkpoint", str(run), "--data", str(tiny_world))
    assert_one_line_error(code, err, f"{run}: a directory without checkpoints/last.ckpt")
    torch.manual_seed(0)
    weights = create_backbone("tiny_cnn", in_chans=len(L2A))
    torch.save({"ssl_rs_config": {"backbone": {"name": "tiny_cnn", "args": {}},
                                  "method": {"name": "mocov2", "args": {}}, "augmentation": {"size": 12}},
                "ssl_rs_bands": L2A,
                "state_dict": {"backbone." + k: v for k, v in weights.state_dict().items()}},
               run / "checkpoints" / "last.ckpt")
    out_json = tmp_path / "r.json"
    code, _, err = run_cli(capsys, "eval", "knn", "--checkpoint", str(run), "--data", str(tiny_world),
                           "--device", "cpu", "--json", str(out_json))
    assert code == 0, err
    assert json.loads(out_json.read_text())["metrics"]["knn"]["acc_macro"] >= 0


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", "0", "--batch-size: must be an integer >= 1, got 0"),
    ("--size", "0", "--size: must be a side in pixels >= 1"),
    ("--size", "-3", "--size: must be a side in pixels >= 1"),
    ("--workers", "-1", "--workers: must be an integer >= 0"),
    ("--k", "0", "--k: must be an integer >= 1"),
    ("--temperature", "0", "--temperature: must be > 0"),
    ("--epochs", "0", "--epochs: must be an integer >= 1"),
    ("--backbone-args", '{"widht": 8}', "--backbone-args: 'tiny_cnn' has no argument 'widht'; did you mean 'width'?"),
    ("--backbone-args", "[8]", "--backbone-args: expected a JSON object"),
    ("--backbone-args", "{width: 8}", "--backbone-args: not valid JSON"),
    ("--device", "gpu", "--device: 'gpu' is not a device"),
])
def test_bad_option_is_one_line_before_the_evaluation(capsys, tmp_path, tiny_world, no_evaluation, option, value,
                                                      message):
    out_json = tmp_path / "r.json"
    protocol = "linear" if option == "--epochs" else "knn"  # each option exists only where it acts
    code, _, err = run_cli(capsys, "eval", protocol, "--backbone", "tiny_cnn", "--data", str(tiny_world),
                           "--json", str(out_json), option, value)
    assert_one_line_error(code, err, message)
    assert not no_evaluation and not out_json.exists()


def test_unknown_argument_of_a_timm_backbone_is_one_line(capsys, tmp_path, tiny_world, no_evaluation):
    code, _, err = run_cli(capsys, "eval", "linear", "--backbone", "resnet18", "--data", str(tiny_world),
                           "--backbone-args", '{"no_such_arg": 1}', "--device", "cpu")
    assert_one_line_error(code, err, "--backbone-args", "no_such_arg")
    assert not no_evaluation


def test_library_evaluate_checks_backbone_args_and_size(tiny_world):
    from ssl_rs.evaluation.harness import evaluate

    with pytest.raises(ConfigError, match="backbone_args: backbone 'resnet18' rejects"):
        evaluate("resnet18", tiny_world, backbone_args={"no_such_arg": 1}, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="size: must be"):
        evaluate("tiny_cnn", tiny_world, size=0, device="cpu", progress=False)


def test_device_cuda_without_a_gpu_is_one_line(capsys, tmp_path, tiny_world, monkeypatch, no_evaluation):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out_json = tmp_path / "r.json"
    for device in ("cuda", "cuda:1"):
        code, _, err = run_cli(capsys, "eval", "knn", "--backbone", "tiny_cnn", "--data", str(tiny_world),
                               "--device", device, "--json", str(out_json))
        assert_one_line_error(code, err, f"--device: '{device}': no CUDA GPU is available")
    assert not no_evaluation and not out_json.exists()


def test_size_is_used_not_replaced_by_the_datas(tiny_world, monkeypatch):
    """size=12 resizes (the data is 16 px), None takes the data's size (0 is refused, above)."""
    from ssl_rs import augmentations
    from ssl_rs.evaluation.harness import evaluate

    sizes = []
    real = augmentations.Preprocess

    def spy(size, *args, **kwargs):
        sizes.append(size)
        return real(size, *args, **kwargs)

    monkeypatch.setattr(augmentations, "Preprocess", spy)
    evaluate("tiny_cnn", tiny_world, size=12, device="cpu", progress=False, backbone_args={"width": 8})
    evaluate("tiny_cnn", tiny_world, device="cpu", progress=False, backbone_args={"width": 8})
    assert sizes == [12, 16]


# ----------------------------------------------------------------------------- --json
def test_json_under_a_file_fails_before_the_evaluation(capsys, tmp_path, tiny_world, no_evaluation):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "eval", "knn", "--backbone", "tiny_cnn", "--data", str(tiny_world),
                           "--json", str(blocker / "sub" / "r.json"), "--device", "cpu")
    assert_one_line_error(code, err, "--json", "is not a directory")
    assert not no_evaluation and blocker.read_text() == "x"


def test_json_that_is_a_directory_fails_before_the_evaluation(capsys, tmp_path, tiny_world, no_evaluation):
    code, _, err = run_cli(capsys, "eval", "knn", "--backbone", "tiny_cnn", "--data", str(tiny_world),
                           "--json", str(tmp_path), "--device", "cpu")
    assert_one_line_error(code, err, "--json", "is a directory")
    assert not no_evaluation


def test_json_in_a_read_only_directory_fails_before_the_evaluation(capsys, tmp_path, tiny_world, read_only,
                                                                    no_evaluation):
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    code, _, err = run_cli(capsys, "eval", "knn", "--backbone", "tiny_cnn", "--data", str(tiny_world),
                           "--json", str(locked / "r.json"), "--device", "cpu")
    assert_one_line_error(code, err, "--json: cannot write", "Permission denied")
    assert not no_evaluation and list(locked.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a chmod 0555 directory anyway")
def test_json_in_a_chmod_read_only_directory(capsys, tmp_path, tiny_world, no_evaluation):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "eval", "knn", "--backbone", "tiny_cnn", "--data", str(tiny_world),
                               "--json", str(locked / "r.json"), "--device", "cpu")
    finally:
        locked.chmod(0o755)
    assert_one_line_error(code, err, "--json: cannot write")
    assert not no_evaluation and list(locked.iterdir()) == []


def test_eval_json_is_written_atomically(capsys, tmp_path, tiny_world, monkeypatch):
    """A full disk while ``--json`` is written leaves the previous file whole and is one line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_reliability import fail_writes_of_part_files  # the data tests' full-disk injector

    out_json = tmp_path / "r.json"
    out_json.write_text('{"previous": true}\n')
    fail_writes_of_part_files(monkeypatch, errno.ENOSPC)
    code, _, err = run_cli(capsys, "eval", "knn", "--backbone", "tiny_cnn", "--backbone-args", '{"width": 8}',
                           "--data", str(tiny_world), "--device", "cpu", "--json", str(out_json))
    assert_one_line_error(code, err, f"{out_json}: no space left on device")
    assert json.loads(out_json.read_text()) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no part file left
