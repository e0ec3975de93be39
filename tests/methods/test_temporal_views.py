"""``augmentation.temporal_views``: on multi-date data the second view of a two-view method comes
from the same date, another date of the place, or per sample from either."""

from __future__ import annotations

import pytest
import torch

from ssl_rs.augmentations import eval_views
from ssl_rs.backbones import create_backbone
from ssl_rs.config import load_config, packaged_config_dir
from ssl_rs.data.temporal import TemporalPositives
from ssl_rs.errors import ConfigError
from ssl_rs.methods.simclr import SimCLR


def method(temporal_views):
    # the eval preset is deterministic: each view is the normalised image itself
    aug = eval_views(size=8, mean=[0.0] * 3, std=[1.0] * 3, n_views=2)
    return SimCLR(create_backbone("tiny_cnn", in_chans=3, width=8), augmentation=aug,
                  proj_hidden_dim=16, proj_output_dim=8, temporal_views=temporal_views)


BATCH = {"image": torch.zeros(64, 3, 8, 8), "image_positive": torch.ones(64, 3, 8, 8)}


@pytest.mark.parametrize("views, expected_second", [("same", 0.0), ("different", 1.0)])
def test_second_view_source(views, expected_second):
    first, second = method(views).make_views(BATCH)
    assert torch.all(first == 0) and torch.all(second == expected_second)


def test_mixed_takes_each_date_for_about_half_the_samples_reproducibly():
    m = method("mixed")
    torch.manual_seed(0)
    first, second = m.make_views(BATCH)
    from_other_date = second.flatten(1).mean(1)
    assert set(from_other_date.tolist()) == {0.0, 1.0}  # whole samples, never a blend
    assert 16 < int(from_other_date.sum()) < 48 and torch.all(first == 0)
    torch.manual_seed(0)
    assert torch.equal(m.make_views(BATCH)[1], second)  # drawn from the (step-seeded) generator


def test_without_positives_every_setting_uses_the_image():
    for views in ("same", "different", "mixed"):
        _, second = method(views).make_views({"image": torch.zeros(4, 3, 8, 8)})
        assert torch.all(second == 0)


def test_config_value_is_checked_and_different_or_mixed_load_the_other_dates(tmp_path):
    from ssl_rs.data.synth import synthesize
    from ssl_rs.train import build

    world = synthesize(tmp_path / "dates.h5", n=96, size=16, seed=2, dates=2, num_classes=4, progress=False)
    common = [f"data.path={world}", f"output.dir={tmp_path}/runs", "data.batch_size=16", "data.num_workers=0",
              "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0",
              "eval.schemes=null", "backbone.args.width=8"]
    config = packaged_config_dir() / "synthetic" / "simclr.yaml"
    with pytest.raises(ConfigError, match="augmentation.temporal_views: must be one of same, different, mixed"):
        build(load_config(config, [*common, "augmentation.temporal_views=sometimes"]))
    mixed = build(load_config(config, [*common, "augmentation.temporal_views=mixed"]))
    assert isinstance(mixed.train_loader.dataset, TemporalPositives) and mixed.method.temporal_views == "mixed"
    same = build(load_config(config, [*common, "augmentation.temporal_views=same"]))
    assert not isinstance(same.train_loader.dataset, TemporalPositives)


def test_places_sampler_trains_each_place_once_per_epoch_as_the_authors(tmp_path):
    """``data.sampler: places``: an epoch is one pass over the places, each as one of its dates (the
    GeoRank authors' SSL4EO-S12 pretraining); with ``temporal_views: different`` the two views are two
    distinct dates of the place, as their temporal dataset draws them."""
    import numpy as np

    from ssl_rs.data.synth import synthesize
    from ssl_rs.train import build

    world = synthesize(tmp_path / "dates.h5", n=96, size=16, seed=2, dates=4, num_classes=4, progress=False)
    common = [f"data.path={world}", f"output.dir={tmp_path}/runs", "data.batch_size=4", "data.num_workers=0",
              "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0",
              "eval.schemes=null", "backbone.args.width=8", "augmentation.temporal_views=different"]
    config = packaged_config_dir() / "synthetic" / "simclr.yaml"
    with pytest.raises(ConfigError, match=r"^data.sampler: unknown sampler 'place' \(use geo_neighbors, places"):
        build(load_config(config, [*common, "data.sampler=place"]))
    built = build(load_config(config, [*common, "data.sampler=places"]))
    train = built.train_loader.dataset.dataset  # TemporalPositives over the train split
    groups = np.asarray(train.group_all)[train.indices]
    places = len(np.unique(groups))
    assert places < len(groups)  # several dates per place
    epochs = []
    for epoch in range(2):
        built.train_loader.sampler.set_epoch(epoch)
        seen = [(int(i), int(j)) for batch in built.train_loader
                for i, j in zip(batch["index"], batch["index_positive"])]
        assert len(built.train_loader) == places // 4 and len(seen) == places // 4 * 4
        anchors = np.array([i for i, _ in seen])
        file_groups = np.asarray(train.group_all)
        assert len(np.unique(file_groups[anchors])) == len(seen)  # no place twice in an epoch
        assert all(file_groups[i] == file_groups[j] and i != j for i, j in seen)  # two distinct dates
        epochs.append(anchors)
    assert not np.array_equal(np.sort(epochs[0]), np.sort(epochs[1]))  # the dates drawn differ between epochs
