"""The result table of ``ssl-rs eval``: counts print as whole numbers, measures with two decimals."""

from __future__ import annotations

import json
import re

from ssl_rs.cli import main


def test_eval_geo_prints_the_pair_count_as_an_integer(capsys, tiny_world, tmp_path):
    out_json = tmp_path / "geo.json"
    assert main(["eval", "geo", "--backbone", "tiny_cnn", "--backbone-args", '{"width": 8}',
                 "--data", str(tiny_world), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out_json.read_text())["metrics"]["geo"]
    pairs = int(metrics["corr_pairs"])
    assert pairs == metrics["corr_pairs"] == 24 * 23 // 2  # every pair of the 24 test samples
    # the table: the count as it is, never "276.00"; the measures beside it keep two decimals
    assert re.search(rf"\| corr_pairs +\| {pairs} +\|", out), out
    assert f"{pairs}.00" not in out
    assert re.search(r"\| corr_median_pair_km +\| \d+\.\d\d +\|", out), out
    # --json keeps the harness' types: every metric a float, the count included
    assert all(isinstance(v, float) for v in metrics.values())
