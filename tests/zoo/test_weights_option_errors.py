"""``--weights X`` where X is neither a file nor a zoo entry: one line that says both were tried
and names the closest entry, as ``ssl-rs zoo info`` does."""

from __future__ import annotations

import pytest

from ssl_rs.cli import main
from ssl_rs.errors import DataError
from ssl_rs.zoo import ZOO, load_backbone


@pytest.mark.parametrize("weights", [
    "ssl4eo-s12/resnet18-moco",  # the docs' old spelling: a path to the old code, with no hint
    "resnet18-moco",
    "resnet18_moco.pth",
])
def test_weights_neither_file_nor_entry_is_one_line_with_the_closest_name(weights, tiny_world, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no file of that name can exist here
    assert main(["eval", "knn", "--weights", weights, "--data", str(tiny_world)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (f"{weights}: neither a weights file nor a zoo entry; did you mean 'resnet18_ssl4eo_s12_moco'? "
            "(see `ssl-rs zoo list`)") in err


def test_weights_far_from_every_entry_gets_no_guess(tmp_path):
    missing = tmp_path / "nothing_alike.safetensors"
    with pytest.raises(DataError) as info:
        load_backbone(str(missing))
    assert str(info.value) == f"{missing}: neither a weights file nor a zoo entry (see `ssl-rs zoo list`)"


def test_zoo_info_finds_an_entry_whose_words_are_reordered(capsys):
    assert ZOO.closest_name("ssl4eo-s12/resnet18-moco") == "resnet18_ssl4eo_s12_moco"
    assert ZOO.closest_name("vit-small/ssl4eo-s12/dino") == "vit_small_ssl4eo_s12_dino"
    assert main(["zoo", "info", "ssl4eo-s12/resnet18-moco"]) == 2
    assert "did you mean 'resnet18_ssl4eo_s12_moco'?" in capsys.readouterr().err
