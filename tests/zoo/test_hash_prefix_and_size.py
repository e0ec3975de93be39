"""Downloads checked against a hash prefix (torch.hub's check_hash: the sha256 must start with the
hex digits in the file name), upgraded by a full sha256, and a registered size compared with the
server's Content-Length before the body is read. All against a local server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

import ssl_rs.zoo.cache as cache_module
from ssl_rs.errors import ConfigError, DataError
from ssl_rs.zoo import download

BODY = b"torchgeo-style weights " * 20_000
DIGEST = hashlib.sha256(BODY).hexdigest()
WRONG_PREFIX = "0" * 8 if not DIGEST.startswith("0" * 8) else "f" * 8


def _prefix_entry(file_server, entry_for, prefix=DIGEST[:8], **overrides):
    url = file_server.serve(f"/resnet_sentinel2-{prefix}.pth", BODY)
    return entry_for(url, BODY, sha256=None, sha256_prefix=prefix, **overrides)


def test_prefix_entry_downloads_like_torch_hub_and_records_the_full_hash(file_server, ssl_rs_home, entry_for,
                                                                          capsys):
    entry = _prefix_entry(file_server, entry_for)
    assert entry.verification == "prefix" and not entry.verified
    path = download(entry, progress=False)  # no --sha256 / allow_unverified needed
    assert path.read_bytes() == BODY
    assert path.with_name(path.name + ".sha256").read_text().strip() == DIGEST  # the full hash, now known
    assert "WARNING" not in capsys.readouterr().err
    assert download(entry, progress=False) == path
    assert file_server.requests[f"/resnet_sentinel2-{DIGEST[:8]}.pth"] == 1


def test_a_file_whose_hash_does_not_start_with_the_prefix_is_refused(file_server, ssl_rs_home, entry_for,
                                                                      cache_files):
    url = file_server.serve("/weights.pth", BODY)  # no hash in the name: the entry's prefix alone decides
    entry = entry_for(url, BODY, sha256=None, sha256_prefix=WRONG_PREFIX)
    with pytest.raises(DataError, match=f"expected one starting with {WRONG_PREFIX}; the file was not cached"):
        download(entry, progress=False)
    assert cache_files(ssl_rs_home) == []


def test_prefix_and_file_name_must_agree(file_server, entry_for):
    url = file_server.url(f"/resnet_sentinel2-{DIGEST[:8]}.pth")
    with pytest.raises(ConfigError, match=f"sha256_prefix {WRONG_PREFIX} differs from the {DIGEST[:8]}"):
        entry_for(url, BODY, sha256=None, sha256_prefix=WRONG_PREFIX)
    with pytest.raises(ConfigError, match="8 to 63 lowercase hex"):
        entry_for(url, BODY, sha256=None, sha256_prefix="abc")
    with pytest.raises(ConfigError, match="does not start with sha256_prefix"):
        entry_for(url, BODY, sha256="1" * 64, sha256_prefix=DIGEST[:8])


def test_a_full_sha256_upgrades_a_prefix_entry(file_server, ssl_rs_home, entry_for):
    entry = _prefix_entry(file_server, entry_for)
    other = "a" * 64 if not DIGEST.startswith("a" * 8) else "b" * 64
    with pytest.raises(DataError, match=f"does not start with the registered prefix {DIGEST[:8]}"):
        download(entry, sha256=other, progress=False)
    path = download(entry, sha256=DIGEST, progress=False)
    # the registry entry upgraded with the hash the cache recorded: a cache hit, nothing fetched again
    upgraded = dataclasses.replace(entry, sha256=path.with_name(path.name + ".sha256").read_text().strip())
    assert upgraded.verification == "verified"
    assert download(upgraded, progress=False) == path
    assert file_server.requests[f"/resnet_sentinel2-{DIGEST[:8]}.pth"] == 1


def test_a_size_mismatch_is_refused_from_content_length_before_the_body(file_server, ssl_rs_home, entry_for,
                                                                        cache_files, monkeypatch):
    written = []
    original = cache_module._CheckedWriter.write
    monkeypatch.setattr(cache_module._CheckedWriter, "write", lambda self, chunk: written.append(len(chunk))
                        or original(self, chunk))
    entry = entry_for(file_server.serve("/w.pth", BODY), BODY, size=len(BODY) + 1)
    with pytest.raises(DataError, match=f"announces {len(BODY)} bytes, expected {len(BODY) + 1}.*nothing was "
                                        "downloaded"):
        download(entry, progress=False)
    assert written == []  # not one byte of the body was read into the cache
    assert cache_files(ssl_rs_home) == []


def test_without_content_length_the_size_is_checked_after_the_transfer(file_server, ssl_rs_home, entry_for,
                                                                       cache_files):
    entry = entry_for(file_server.serve("/w.pth", BODY, mode="ok_no_length"), BODY, size=len(BODY) + 1)
    with pytest.raises(DataError, match=f"size: got {len(BODY)} bytes, expected {len(BODY) + 1}"):
        download(entry, progress=False)
    assert cache_files(ssl_rs_home) == []
    good = entry_for(file_server.serve("/v.pth", BODY, mode="ok_no_length"), BODY, name="good")
    assert download(good, progress=False).read_bytes() == BODY
