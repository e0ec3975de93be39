"""Shared set-up of the method tests."""

from __future__ import annotations

import pytest

from ssl_rs.config import load_config, packaged_config_dir

CONFIGS = packaged_config_dir() / "synthetic"


@pytest.fixture
def tiny_mim_config(tmp_path):
    """``make(world, name, *overrides)``: the synthetic zoo config ``name`` shrunk for a CPU test
    (one epoch, batch 32, a 2-block ViT, a 32-d one-block decoder, no monitoring)."""

    def make(world, name, *overrides):
        return load_config(CONFIGS / f"{name}.yaml", [
            f"data.path={world}", f"output.dir={tmp_path}/runs", "data.batch_size=32", "data.num_workers=0",
            "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0",
            "eval.schemes=null", "backbone.args.depth=2", "method.args.decoder_dim=32",
            "method.args.decoder_depth=1", "method.args.decoder_heads=2", *overrides,
        ])

    return make
