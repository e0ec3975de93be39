"""benchmarks/suites/georank_paper.yaml (the GeoRank paper's geo-aware methods table, for a GPU
cluster) validates in a dry run, and its -small variant has the same tasks, protocols and published
values on synthetic stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_rs.bench import load_suite
from ssl_rs.cli import main

SUITES = Path(__file__).resolve().parents[2] / "benchmarks" / "suites"
DATA_FILES = ["ssl4eo_s12_l2a", "bigearthnet_v2", "eurosat", "sen4agrinet", "so2sat_random", "so2sat_block", "cashew"]
TASKS = [("bigearthnet", [None]), ("eurosat", [None]), ("sen4agri", ["random", "tile"]),
         ("so2sat_random", ["random"]), ("so2sat_block", ["block"]), ("cashew", [None])]  # seven (dataset, split) tasks
# EuroSAT k-NN of the paper's comparison, as quoted in issue #14 §4
EUROSAT_KNN = {"none": 82.42, "tile2vec": 73.39, "ayush": 84.34, "geobasic": 82.05, "georank": 85.09}
BEN_V2_KNN = {"none": 58.14, "tile2vec": 54.95, "ayush": 58.41, "geobasic": 57.86, "georank": 59.19}


def layout(suite):
    return {
        "tasks": [(d.name, d.schemes) for d in suite.eval_datasets],
        "protocols": {d.name: d.protocols for d in suite.eval_datasets},
        "regularizers": [v.label for v in suite.matrix["regularizer"]],
        "references": {v.label: dict(v.reference) for v in suite.matrix["regularizer"]},
    }


def test_georank_paper_dry_run(tmp_path, monkeypatch, capsys):
    # the suite names its data files by path, relative to where it runs; empty stand-ins suffice to list the cells
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name in DATA_FILES:
        (tmp_path / "data" / f"{name}.h5").touch()
    assert main(["bench", "run", str(SUITES / "georank_paper.yaml"), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "suite georank_paper: 5 cells, 0 finished, 5 to run" in out
    for label in ("mocov2 seed=1", "mocov2+tile2vec seed=1", "mocov2+ayush seed=1", "mocov2+geobasic seed=1",
                  "mocov2+georank seed=1"):
        assert label in out
    assert not (tmp_path / "out").exists()


def test_georank_paper_dry_run_names_a_missing_data_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "run", str(SUITES / "georank_paper.yaml"), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    assert "data.path: " in capsys.readouterr().err


def test_georank_paper_tasks_protocols_and_references():
    suite = load_suite(SUITES / "georank_paper.yaml")
    got = layout(suite)
    assert got["tasks"] == TASKS and sum(len(s) for _, s in TASKS) == 7
    assert got["protocols"] == {"bigearthnet": ["knn", "linear", "finetune"], "eurosat": ["knn", "linear", "finetune"],
                                "sen4agri": ["knn", "linear", "finetune"], "so2sat_random": ["knn", "linear", "finetune"],
                                "so2sat_block": ["knn", "linear", "finetune"],
                                "cashew": ["segmentation"]}
    assert got["regularizers"] == ["none", "tile2vec", "ayush", "geobasic", "georank"]
    assert got["references"] == {k: {("eurosat", None, "knn", "acc_micro"): v,
                                     ("bigearthnet", None, "knn", "ap_macro"): BEN_V2_KNN[k]}
                                 for k, v in EUROSAT_KNN.items()}
    assert all("arXiv:2601.02289" in v.source for v in suite.matrix["regularizer"])
    assert suite.eval_options == {"finetune_epochs": 30, "finetune_backbone_lr_scale": 1.0, "segmentation_epochs": 20,
                                  "segmentation_decoder": "upernet", "segmentation_recipe": "georank",
                                  "knn_votes": "sum", "linear_recipe": "georank", "size": "data",
                                  "batch_size": 512, "finetune_schedule": "georank"}
    assert (suite.linear_epochs, suite.knn_k, suite.knn_temperature) == (30, 10, 0.9)
    assert suite.base_config.parent.name == "ssl4eo"  # the authors' SSL4EO-S12 recipe


def test_georank_paper_small_mirrors_the_full_suite():
    small, full = load_suite(SUITES / "georank_paper-small.yaml"), load_suite(SUITES / "georank_paper.yaml")
    assert layout(small) == layout(full)
    assert all(d.data is not None and d.data.kind == "synth" for d in small.eval_datasets)
    cashew = next(d for d in small.eval_datasets if d.name == "cashew")
    assert dict(cashew.data.params)["masks"] is True
    assert len(small.cells()) == 5


@pytest.mark.slow
def test_georank_paper_small_runs_end_to_end_with_the_paper_column(tmp_path, capsys):
    """The -small twin trains its 5 cells, runs every protocol on its 7 stand-in tasks (about 1.5 min
    on 2 cores) and reports the published values beside the measured ones."""
    out = tmp_path / "out"
    assert main(["bench", "run", str(SUITES / "georank_paper-small.yaml"), "--out", str(out)]) == 0
    assert main(["bench", "report", str(out)]) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 * (6 * 3 + 1)  # 6 classification tasks x 3 protocols + segmentation, per cell
    table = (out / "results.md").read_text()
    assert "| eurosat/random knn paper |" in table
    for published in EUROSAT_KNN.values():
        assert f"{published:.2f} acc_micro (" in table
    assert "cashew/random segmentation miou" in table
    assert "references with no measured value" in table and "bigearthnet knn ap_macro" in table
