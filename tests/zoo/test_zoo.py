"""The checkpoint zoo, offline: verified downloads from a local server, safe loading, band
adaptation, torchgeo-layout import, run export round trip, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import ssl_rs.zoo.cache as cache_module
import ssl_rs.zoo.weights as weights_module
from ssl_rs.backbones import create_backbone
from ssl_rs.cli import main
from ssl_rs.data.bands import S2_BANDS, S2_BANDS_L2A
from ssl_rs.errors import ConfigError, DataError
from ssl_rs.zoo import (
    ZOO,
    UnsafeCheckpointError,
    UnverifiedWeightsError,
    adapt_first_conv,
    cache_dir,
    download,
    export_run,
    load_backbone,
    read_weights_file,
)
from ssl_rs.zoo.weights import WeightsEntry, WeightsZoo

B10 = S2_BANDS.index("B10")


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- registry
def test_registered_entries_are_complete_and_verified():
    full = {"resnet18_ssl4eo_s12_moco", "resnet50_ssl4eo_s12_moco", "resnet50_ssl4eo_s12_dino"}
    assert full <= set(ZOO)
    for entry in ZOO.entries():
        assert entry.url.startswith("https://") and entry.license and entry.key_layout == "timm"
        assert entry.verification in ("verified", "prefix", "NONE") and entry.sha256_source
    for entry in map(ZOO.get, full):
        assert entry.sha256 is not None and len(entry.sha256) == 64 and entry.verification == "verified"
        # torchgeo names its files after the first 8 hex digits of their sha256
        assert entry.filename.rsplit("-", 1)[1].startswith(entry.sha256[:8])
        assert entry.size > 1_000_000 and entry.image_size == 224
        assert list(entry.bands) == S2_BANDS and entry.in_chans == 13
        assert entry.normalization["divisor"] == 10000.0
        assert entry.eval_transforms == {"resize": 256, "center_crop": 224}


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'resnet50_ssl4eo_s12_dino'"):
        ZOO.get("resnet50_ssl4eo_dino")


def test_entry_rejects_a_malformed_sha256():
    with pytest.raises(ValueError, match="64 lowercase hex"):
        WeightsEntry(name="x", url="http://x/y.pth", sha256="abc", size=1, backbone="resnet18", bands=("B02",),
                     method="m", pretraining_data="d", normalization={}, image_size=1, license="MIT")


def test_cache_dir_follows_ssl_rs_home_else_torch_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_RS_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "weights"
    monkeypatch.delenv("SSL_RS_HOME")
    assert cache_dir() == Path(torch.hub.get_dir()) / "ssl_rs"


# ----------------------------------------------------------------------------- download
def test_download_verifies_then_a_second_call_is_a_cache_hit(file_server, ssl_rs_home, entry_for):
    body = b"weights" * 100_000
    entry = entry_for(file_server.serve("/w.pth", body), body)
    path = download(entry, progress=False)
    assert path == ssl_rs_home / "weights" / "test_weights" / "w.pth"
    assert path.read_bytes() == body
    assert path.with_name("w.pth.sha256").read_text().strip() == entry.sha256
    assert download(entry, progress=False) == path
    assert file_server.requests["/w.pth"] == 1  # the second call never reached the server


def test_cached_file_without_sidecar_is_hashed_and_a_corrupt_one_replaced(file_server, ssl_rs_home, entry_for):
    body = bytes(range(256)) * 1000
    entry = entry_for(file_server.serve("/w.pth", body), body)
    path = download(entry, progress=False)
    path.with_name("w.pth.sha256").unlink()
    assert download(entry, progress=False) == path and file_server.requests["/w.pth"] == 1  # re-hashed, kept
    path.with_name("w.pth.sha256").unlink()
    path.write_bytes(b"\0" * len(body))  # same size, wrong content
    assert download(entry, progress=False).read_bytes() == body
    assert file_server.requests["/w.pth"] == 2


def test_wrong_sha256_leaves_nothing_in_the_cache(file_server, ssl_rs_home, entry_for, cache_files):
    body = b"a" * 5000
    entry = entry_for(file_server.serve("/w.pth", body), body, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(DataError, match="sha256: got .* expected"):
        download(entry, progress=False)
    assert cache_files(ssl_rs_home) == []


@pytest.mark.parametrize("mode", ["truncate", "truncate_no_length"])
def test_truncated_transfer_leaves_nothing_in_the_cache(file_server, ssl_rs_home, entry_for, cache_files, mode):
    body = b"b" * 200_000
    entry = entry_for(file_server.serve("/w.pth", body, mode), body)
    with pytest.raises(DataError, match="cut short|size: got 100000 bytes, expected 200000"):
        download(entry, progress=False)
    assert cache_files(ssl_rs_home) == []


def test_http_404_is_one_line_and_caches_nothing(file_server, ssl_rs_home, entry_for, cache_files):
    entry = entry_for(file_server.url("/missing.pth"), b"x")
    with pytest.raises(DataError, match="HTTP 404") as info:
        download(entry, progress=False)
    assert "\n" not in str(info.value)
    assert cache_files(ssl_rs_home) == []


def test_interrupted_download_leaves_nothing(file_server, ssl_rs_home, entry_for, cache_files, monkeypatch):
    body = b"c" * 10_000
    entry = entry_for(file_server.serve("/w.pth", body), body)

    def interrupted(entry, out, progress):
        out.write(body[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_stream", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download(entry, progress=False)
    assert cache_files(ssl_rs_home) == []


def test_entry_without_sha256_needs_the_user_to_decide(file_server, ssl_rs_home, entry_for):
    body = b"d" * 3000
    digest = hashlib.sha256(body).hexdigest()
    entry = entry_for(file_server.serve("/w.pth", body), body, sha256=None)
    with pytest.raises(UnverifiedWeightsError, match="--sha256"):
        download(entry, progress=False)
    with pytest.raises(DataError, match="sha256"):
        download(entry, sha256=hashlib.sha256(b"no").hexdigest(), progress=False)
    assert download(entry, sha256=digest.upper(), progress=False).read_bytes() == body


def test_allow_unverified_warns_and_records_the_hash(file_server, ssl_rs_home, entry_for, capsys):
    body = b"e" * 3000
    entry = entry_for(file_server.serve("/w.pth", body), body, sha256=None)
    with pytest.warns(UserWarning, match="WITHOUT verification"):
        path = download(entry, allow_unverified=True, progress=False)
    assert "WARNING" in capsys.readouterr().err
    assert path.with_name("w.pth.sha256").read_text().strip() == hashlib.sha256(body).hexdigest()


# ----------------------------------------------------------------------------- safe loading
class RunsCode:
    """Unpickling this writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_a_pickle_that_would_run_code_is_refused(tmp_path, file_server, ssl_rs_home, entry_for):
    marker = tmp_path / "marker"
    body = torch_bytes({"conv1.weight": torch.zeros(1), "payload": RunsCode(marker)})
    evil = tmp_path / "evil.pth"
    evil.write_bytes(body)
    with pytest.raises(UnsafeCheckpointError, match="refused: loading it would run pickled code") as info:
        read_weights_file(evil)
    assert "\n" not in str(info.value)
    # through the zoo: the download verifies, then loading refuses
    entry = entry_for(file_server.serve("/evil.pth", body), body, key_layout="timm")
    with pytest.raises(UnsafeCheckpointError):
        load_backbone(entry, progress=False)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load would have run it
    assert marker.read_text() == "pwned"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dumps"])
def test_load_backbone_refuses_a_local_pickle_that_runs_code(tmp_path, writer):
    import pickle

    marker = tmp_path / "marker"
    payload = {"model.conv1.weight": torch.zeros(1), "x": RunsCode(marker)}
    evil = tmp_path / "evil.pth"
    evil.write_bytes(torch_bytes(payload) if writer == "torch.save" else pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_backbone(str(evil))
    assert not marker.exists()


# ----------------------------------------------------------------------------- band adaptation
@pytest.fixture(scope="module")
def resnet13():
    torch.manual_seed(0)
    return create_backbone("resnet18", in_chans=13).eval()


def test_dropping_b10_equals_the_13_band_model_with_b10_zero(resnet13):
    state = adapt_first_conv(resnet13.state_dict(), S2_BANDS, S2_BANDS_L2A)
    resnet12 = create_backbone("resnet18", in_chans=12).eval()
    resnet12.load_state_dict(state)
    x12 = torch.randn(3, 12, 32, 32)
    x13 = torch.cat([x12[:, :B10], torch.zeros(3, 1, 32, 32), x12[:, B10:]], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(resnet12(x12), resnet13(x13), rtol=1e-5, atol=1e-5)


def test_band_subset_is_selected_by_name_in_the_users_order(resnet13):
    wanted = ["B4", "b03", "B02", "B8a"]
    state = adapt_first_conv(resnet13.state_dict(), S2_BANDS, wanted)
    small = create_backbone("resnet18", in_chans=4).eval()
    small.load_state_dict(state)
    x = torch.randn(2, 4, 32, 32)
    x13 = torch.zeros(2, 13, 32, 32)
    for i, band in enumerate(["B04", "B03", "B02", "B8A"]):
        x13[:, S2_BANDS.index(band)] = x[:, i]
    with torch.no_grad():
        torch.testing.assert_close(small(x), resnet13(x13), rtol=1e-5, atol=1e-5)


def test_a_band_the_weights_lack_is_an_error_or_a_zero_filter():
    torch.manual_seed(0)
    l2a = create_backbone("resnet18", in_chans=12).eval()
    with pytest.raises(ConfigError, match="no filters for B10"):
        adapt_first_conv(l2a.state_dict(), S2_BANDS_L2A, S2_BANDS)
    state = adapt_first_conv(l2a.state_dict(), S2_BANDS_L2A, S2_BANDS, missing="zero")
    assert state["model.conv1.weight"][:, B10].abs().sum() == 0
    with pytest.raises(ConfigError, match="missing"):
        adapt_first_conv(l2a.state_dict(), S2_BANDS_L2A, S2_BANDS, missing="mean")


# ----------------------------------------------------------------------------- torchgeo layout
def test_torchgeo_ssl4eo_layout_loads_and_adapts_to_12_bands(file_server, ssl_rs_home, entry_for):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", in_chans=13, num_classes=1000).eval()  # torchgeo keeps fc.*
    body = torch_bytes(reference.state_dict())
    entry = entry_for(file_server.serve("/resnet18_sentinel2_all_moco.pth", body), body, bands=tuple(S2_BANDS),
                      key_layout="timm", name="fake_ssl4eo")
    x13 = torch.randn(2, 13, 32, 32)
    x13[:, B10] = 0
    x12 = torch.cat([x13[:, :B10], x13[:, B10 + 1:]], dim=1)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x13), pre_logits=True)
        full = load_backbone(entry, progress=False)
        assert full.bands == S2_BANDS and full.in_chans == 13 and not full.training
        torch.testing.assert_close(full(x13), expected)
        l2a = load_backbone(entry, bands=S2_BANDS_L2A, progress=False)
        assert l2a.bands == S2_BANDS_L2A and l2a.in_chans == 12
        assert l2a.normalization["divisor"] == 10000.0 and l2a.image_size == 32
        torch.testing.assert_close(l2a(x12), expected, rtol=1e-5, atol=1e-5)
    assert file_server.requests["/resnet18_sentinel2_all_moco.pth"] == 1


def test_data_stats_map_harness_inputs_to_the_pretraining_normalisation(
        file_server, ssl_rs_home, entry_for, tiny_world):
    from ssl_rs.data.dataset import GeoDataset

    torch.manual_seed(2)
    body = torch_bytes(timm.create_model("resnet18", in_chans=13).state_dict())
    entry = entry_for(file_server.serve("/w.pth", body), body, bands=tuple(S2_BANDS), key_layout="timm")
    plain = load_backbone(entry, bands=S2_BANDS_L2A, progress=False)
    matched = load_backbone(entry, bands=S2_BANDS_L2A, data=tiny_world, progress=False)
    assert matched.state_dict().keys() == plain.state_dict().keys()
    stats = GeoDataset(tiny_world, bands=S2_BANDS_L2A)
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (stats.band_mean, stats.band_std))
    raw = torch.rand(2, 12, 16, 16) * 3000
    with torch.no_grad():
        torch.testing.assert_close(matched((raw - mean) / std), plain(raw / 10000), rtol=1e-4, atol=1e-4)
        with pytest.raises(ConfigError, match="expects"):
            matched(torch.zeros(1, 13, 16, 16))


def test_readme_example_downloads_loads_and_knn_evaluates(file_server, ssl_rs_home, entry_for, tiny_world,
                                                          monkeypatch):
    from ssl_rs.evaluation.harness import evaluate

    body = torch_bytes(timm.create_model("resnet18", in_chans=13).state_dict())
    entry = entry_for(file_server.serve("/w.pth", body), body, bands=tuple(S2_BANDS), key_layout="timm")
    monkeypatch.setitem(ZOO._entries, entry.name, entry)
    backbone = load_backbone(entry.name, bands=S2_BANDS_L2A, data=tiny_world, progress=False)
    result = evaluate(backbone, tiny_world, bands=backbone.bands, size=16, progress=False, device="cpu")
    assert result["feature_dim"] == 512 and 0 <= result["metrics"]["knn"]["acc_macro"] <= 100


def test_weights_for_another_backbone_are_refused(file_server, ssl_rs_home, entry_for):
    body = torch_bytes(timm.create_model("resnet18", in_chans=13).state_dict())
    entry = entry_for(file_server.serve("/w.pth", body), body, bands=tuple(S2_BANDS), key_layout="timm",
                      backbone="resnet50")
    with pytest.raises(DataError, match="do not fit backbone 'resnet50'"):
        load_backbone(entry, progress=False)


# ----------------------------------------------------------------------------- export
# (tiny_run: tests/zoo/conftest.py)
def test_export_round_trip_gives_identical_features(tiny_run, tmp_path, monkeypatch):
    from ssl_rs.checkpoint import load_encoder

    out = export_run(tiny_run, tmp_path / "release")
    entry = out["entry"]
    weights = out["weights"]
    assert weights.name == "tiny_cnn_mocov2.safetensors"
    assert entry.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest() and entry.size == weights.stat().st_size
    assert entry.metrics and all(k.startswith("random/knn_") for k in entry.metrics)
    assert entry.normalization["type"] == "standardize" and len(entry.normalization["mean"]) == 12

    original, cfg = load_encoder(tiny_run / "checkpoints" / "last.ckpt")
    exported = load_backbone(str(weights))
    assert exported.bands == cfg["data_bands"] and not exported.training
    x = torch.randn(4, 12, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), original(x), rtol=0, atol=0)

    with torch.no_grad():  # a training checkpoint loads through the same call
        from_ckpt = load_backbone(str(tiny_run / "checkpoints" / "last.ckpt"))
        torch.testing.assert_close(from_ckpt(x), original(x), rtol=0, atol=0)

    from ssl_rs.config import load_config

    assert load_config(out["config"]).backbone.name == "tiny_cnn"  # the card's reproduce command reads it
    card = out["model_card"].read_text()
    for text in ("## Reproduce", "ssl-rs pretrain -c config.yaml", entry.sha256, "random/knn_acc_macro", "mocov2"):
        assert text in card
    # entry.py registers the same entry, which downloads (file:// until published) and loads
    monkeypatch.setattr(weights_module, "ZOO", WeightsZoo())
    exec(compile(out["entry_file"].read_text(), str(out["entry_file"]), "exec"), {})
    pasted = weights_module.ZOO.get(entry.name)
    assert pasted == entry
    monkeypatch.setenv("SSL_RS_HOME", str(tmp_path / "home"))
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(pasted, progress=False)(x), original(x), rtol=0, atol=0)


def test_export_of_a_non_run_is_one_line(tmp_path, capsys):
    assert main(["zoo", "export", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssl-rs: error:") and "config.yaml not found" in err and "\n" not in err


def test_cli_export(tiny_run, tmp_path, capsys):
    assert main(["zoo", "export", str(tiny_run), "-o", str(tmp_path), "--name", "tiny", "--license", "MIT",
                 "--url", "https://example.org/tiny.safetensors"]) == 0
    assert "sha256" in capsys.readouterr().out
    assert "url='https://example.org/tiny.safetensors'" in (tmp_path / "entry.py").read_text()
    assert "license='MIT'" in (tmp_path / "entry.py").read_text()


# ----------------------------------------------------------------------------- CLI
def test_cli_list_and_info(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "resnet50_ssl4eo_s12_dino" in out and "verified" in out and "CC-BY-4.0" in out
    assert main(["zoo", "info", "resnet18_ssl4eo_s12_moco"]) == 0
    out = capsys.readouterr().out
    assert ZOO.get("resnet18_ssl4eo_s12_moco").sha256 in out and "B10" in out
    assert main(["zoo", "info", "resnet18_ssl4eo_s12_moco", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == 44915225


def test_cli_unknown_name_exits_2_with_one_line(capsys):
    assert main(["zoo", "info", "resnet18_moco"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'resnet18_ssl4eo_s12_moco'" in err


def test_cli_download(file_server, ssl_rs_home, entry_for, monkeypatch, capsys):
    body = b"f" * 4000
    good = entry_for(file_server.serve("/good.pth", body), body, name="cli_good", sha256=None)
    missing = entry_for(file_server.url("/gone.pth"), body, name="cli_missing")
    monkeypatch.setitem(ZOO._entries, good.name, good)
    monkeypatch.setitem(ZOO._entries, missing.name, missing)

    assert main(["zoo", "download", "cli_missing", "--no-progress"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["zoo", "download", "cli_good", "--no-progress"]) == 2
    assert "no verified sha256" in capsys.readouterr().err
    digest = hashlib.sha256(body).hexdigest()
    assert main(["zoo", "download", "cli_good", "--sha256", digest, "--no-progress"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.read_bytes() == body and path.is_relative_to(ssl_rs_home)


def test_sigterm_during_export_leaves_nothing_behind(tiny_run, tmp_path):
    """``zoo export`` handles SIGTERM like ``data convert``: exit 143, no part file, no output."""
    out = tmp_path / "release"
    script = f"""
import os, signal, sys
import ssl_rs.files as files
import ssl_rs.zoo.export as export

def write_bytes(path, data, **kw):  # a SIGTERM arrives halfway through writing the weights
    with files.atomic_output(path) as part:
        part.file.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGTERM)
        part.file.write(data[len(data) // 2:])
    return path

export.write_bytes = write_bytes
from ssl_rs.cli import main
sys.exit(main(["zoo", "export", {str(tiny_run)!r}, "-o", {str(out)!r}, "--name", "tiny"]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 143, done.stderr[-2000:]
    assert "interrupted (SIGTERM)" in done.stderr
    left = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert not [name for name in left if name.endswith(".part") or name.endswith(".safetensors")], left
