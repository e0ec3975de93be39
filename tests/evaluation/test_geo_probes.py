"""Geo probes: Spearman correlation of feature similarity with great-circle distance, and the
location probe's great-circle error; values checked against scipy and against features that do
or do not carry the location."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from ssl_rs.errors import ConfigError
from ssl_rs.evaluation.geo_probes import (
    latlon_of_vectors,
    location_probe,
    sample_pairs,
    similarity_distance_correlation,
    spearman,
)
from ssl_rs.geodesy import unit_vectors


def places(n, seed=0, lat=(35.0, 60.0), lon=(-10.0, 30.0)):
    rng = np.random.default_rng(seed)
    return rng.uniform(*lat, n), rng.uniform(*lon, n)


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, 200).astype(float)  # many ties
    b = a + rng.normal(0, 2, 200)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(10), b[:10]))


def test_pairs_are_all_pairs_or_a_uniform_sample():
    pairs = sample_pairs(5, 100, seed=0)
    assert sorted(map(tuple, pairs.tolist())) == [(i, j) for i in range(5) for j in range(i + 1, 5)]
    drawn = sample_pairs(1000, 5000, seed=0)
    assert drawn.shape == (5000, 2) and (drawn[:, 0] < drawn[:, 1]).all() and drawn.max() < 1000
    # every sample takes part about equally often
    counts = np.bincount(drawn.ravel(), minlength=1000)
    assert counts.min() > 0 and counts.max() < 40


def test_features_that_are_the_location_correlate_negatively_random_ones_do_not():
    lat, lon = places(400)
    located = torch.from_numpy(unit_vectors(lat, lon)).float()
    geo = similarity_distance_correlation(located, lat, lon)
    assert geo["spearman"] < -0.99  # cosine of unit vectors is monotone in great-circle distance
    assert geo["pairs"] == 400 * 399 / 2
    assert any(k.startswith("spearman_") and k != "spearman" for k in geo)
    random = similarity_distance_correlation(torch.randn(400, 32, generator=torch.Generator().manual_seed(0)), lat, lon)
    assert abs(random["spearman"]) < 0.05


def test_vectors_round_trip_to_latlon():
    lat, lon = places(50, lat=(-89.0, 89.0), lon=(-179.0, 179.0))
    back_lat, back_lon = latlon_of_vectors(torch.from_numpy(unit_vectors(lat, lon)))
    np.testing.assert_allclose(back_lat.numpy(), lat, atol=1e-9)
    np.testing.assert_allclose(back_lon.numpy(), lon, atol=1e-9)


def test_location_probe_finds_places_from_located_features_only():
    lat, lon = places(600, seed=2)
    g = torch.Generator().manual_seed(0)
    located = torch.cat([torch.from_numpy(unit_vectors(lat, lon)).float() * 10, torch.randn(600, 8, generator=g)], 1)
    good = location_probe(located[:400], lat[:400], lon[:400], located[400:], lat[400:], lon[400:], epochs=100)
    noise = torch.randn(600, 11, generator=g)
    bad = location_probe(noise[:400], lat[:400], lon[:400], noise[400:], lat[400:], lon[400:], epochs=100)
    assert good["median_km"] < 150 < 500 < bad["median_km"]
    assert good["within_500km"] > 95 and bad["within_100km"] < 5
    assert set(good) == {"median_km", "mean_km", "within_100km", "within_500km", "within_2500km"}
    again = location_probe(located[:400], lat[:400], lon[:400], located[400:], lat[400:], lon[400:], epochs=100)
    assert again == good  # deterministic for a seed


def test_bad_input_is_one_line():
    lat, lon = places(10)
    with pytest.raises(ConfigError, match="10 feature rows but 9 lat"):
        similarity_distance_correlation(torch.randn(10, 4), lat[:9], lon)
    with pytest.raises(ConfigError, match="bands_km: must be increasing"):
        similarity_distance_correlation(torch.randn(10, 4), lat, lon, bands_km=[0, 100, 50])
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1"):
        location_probe(torch.randn(10, 4), lat, lon, torch.randn(10, 4), lat, lon, epochs=0)


def test_harness_reports_geo_probes_without_labels(tiny_world, tmp_path):
    """``protocols=["geo"]`` needs lat/lon, not labels: it runs on a file without labels."""
    import h5py
    import shutil

    from ssl_rs.evaluation.harness import evaluate

    res = evaluate("tiny_cnn", tiny_world, protocols=["geo", "knn"], backbone_args={"width": 8}, progress=False)
    assert res["metrics"]["geo"]["corr_pairs"] > 0 and "loc_median_km" in res["metrics"]["geo"]
    unlabelled = tmp_path / "unlabelled.h5"
    shutil.copy(tiny_world, unlabelled)
    with h5py.File(unlabelled, "a") as f:
        del f["label"]
    res = evaluate("tiny_cnn", unlabelled, protocols=["geo"], backbone_args={"width": 8}, progress=False)
    assert res["task"] == "unlabelled" and set(res["metrics"]) == {"geo"}
    with pytest.raises(ConfigError, match="no labels"):
        evaluate("tiny_cnn", unlabelled, protocols=["knn"], backbone_args={"width": 8}, progress=False)


def test_pretrain_final_evaluation_runs_the_configured_protocols(tiny_world, tmp_path, capsys):
    import json

    from ssl_rs.cli import main

    common = ["pretrain", "-c", "synthetic/mocov2", f"data.path={tiny_world}", f"output.dir={tmp_path}",
              "data.batch_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
              "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "backbone.args.width=8",
              "method.args.queue_size=64", "eval.schemes=null"]
    assert main([*common, "eval.protocols=[knn,bogus]"]) == 2
    err = capsys.readouterr().err
    assert "eval.protocols: unknown protocol 'bogus'" in err and not list(tmp_path.iterdir())
    assert main([*common, "eval.protocols=[knn,geo]"]) == 0
    results = json.loads(next(tmp_path.glob("*/results.json")).read_text())
    (evaluation,) = results["eval"].values()
    assert set(evaluation["metrics"]) == {"knn", "geo"} and "corr_spearman" in evaluation["metrics"]["geo"]
