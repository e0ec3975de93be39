"""PlaceSampler (data.sampler: places): one random date per place and epoch."""

import numpy as np
import pytest

from ssl_rs.data.samplers import PlaceSampler
from ssl_rs.errors import ConfigError


def test_each_place_once_per_epoch_with_a_varying_date():
    groups = np.repeat(np.arange(50), 4)[np.random.default_rng(0).permutation(200)]  # 50 places x 4 dates
    sampler = PlaceSampler(groups, len(groups), seed=3)
    assert len(sampler) == 50
    seen = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        positions = list(sampler)
        assert len(positions) == 50
        assert sorted(groups[positions].tolist()) == list(range(50))  # every place once: no repeat in a batch
        seen.append(positions)
    assert len(set(sum(seen, []))) > 100  # the date changes between epochs (50 of 200 per epoch)
    sampler.set_epoch(2)
    assert list(sampler) == seen[2]  # a function of (seed, epoch): a resumed run repeats it
    assert list(PlaceSampler(groups, len(groups), seed=4)) != seen[0]


def test_places_of_unequal_size_and_no_groups():
    groups = np.array([7, 7, 7, 2, 9, 9])
    sampler = PlaceSampler(groups, 6, seed=0)
    for epoch in range(20):
        sampler.set_epoch(epoch)
        positions = list(sampler)
        assert sorted(groups[positions].tolist()) == [2, 7, 9]
    assert sorted(PlaceSampler(None, 5)) == [0, 1, 2, 3, 4]  # one date per place: every sample
    with pytest.raises(ConfigError, match="data.sampler"):
        PlaceSampler(groups, 5)
