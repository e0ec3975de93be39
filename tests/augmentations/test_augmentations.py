"""Augmentation presets and transforms: shapes, randomness, seeding, normalisation, exactness."""

from __future__ import annotations

import pytest
import torch

from ssl_rs.augmentations import (
    AUGMENTATIONS,
    Preprocess,
    RandomBandMeanGrayscale,
    RandomBrightnessContrast,
    RandomFlipRot90,
    RandomRot90,
    ViewPipeline,
    default_local_size,
)
from ssl_rs.config import check_args
from ssl_rs.errors import ConfigError

PRESETS = ["geometric", "standard", "multicrop", "eval"]
SIZE = 24


def stats(bands: int):
    mean = [1000.0 + 100 * b for b in range(bands)]
    std = [400.0 + 10 * b for b in range(bands)]
    return mean, std


def raw_images(batch: int = 4, bands: int = 13, side: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 10_000, (batch, bands, side, side), generator=g, dtype=torch.int32).to(torch.uint16)


def build(name: str, bands: int = 13, **kwargs) -> ViewPipeline:
    mean, std = stats(bands)
    return AUGMENTATIONS.create(name, size=SIZE, mean=mean, std=std, **kwargs)


def test_registry_lists_all_presets():
    assert set(PRESETS) <= set(AUGMENTATIONS.names())
    for name in PRESETS:
        assert AUGMENTATIONS.get(name).summary


@pytest.mark.parametrize("bands", [3, 4, 12, 13])
@pytest.mark.parametrize("name", PRESETS)
def test_views_have_the_right_count_shape_and_dtype(name, bands):
    pipeline = build(name, bands)
    for images in (raw_images(bands=bands), raw_images(bands=bands).to(torch.float64)):
        views = pipeline(images)
        assert isinstance(views, list) and len(views) == pipeline.n_views == len(pipeline.sizes)
        for view, size in zip(views, pipeline.sizes):
            assert view.shape == (4, bands, size, size)
            assert view.dtype == torch.float32
            assert torch.isfinite(view).all()


@pytest.mark.parametrize("name", ["geometric", "standard", "multicrop"])
def test_views_and_samples_are_augmented_independently(name):
    torch.manual_seed(0)
    # the same image 8 times: any difference between samples comes from their own parameters
    images = raw_images(batch=1).expand(8, -1, -1, -1)
    views = build(name)(images)
    assert not torch.equal(views[0], views[1])
    for view in views:
        assert not torch.equal(view[0], view[1:].mean(0))
        assert len({tuple(v.flatten()[:50].tolist()) for v in view}) > 1


def test_same_seed_same_views_different_seed_different_views():
    images = raw_images()
    a = build("standard", seed=7)(images)
    b = build("standard", seed=7)(images)
    c = build("standard", seed=8)(images)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_seeded_pipeline_draws_anew_each_call_and_leaves_the_global_rng_alone():
    images = raw_images()
    pipeline = build("standard", seed=3)
    state = torch.get_rng_state()
    first, second = pipeline(images), pipeline(images)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(first[0], second[0])
    pipeline.calls = 0  # replay the stream from the start
    assert torch.equal(pipeline(images)[0], first[0])


def test_unseeded_pipeline_follows_the_global_rng():
    images = raw_images()
    pipeline = build("multicrop")
    torch.manual_seed(5)
    a = pipeline(images)
    torch.manual_seed(5)
    b = pipeline(images)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_eval_is_deterministic_and_normalises_per_band():
    images = raw_images(side=SIZE)
    mean, std = stats(13)
    pipeline = build("eval", seed=1)
    (view,) = pipeline(images)
    expected = (images.double() - torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)) / torch.tensor(
        std, dtype=torch.float64
    ).view(1, -1, 1, 1)
    torch.testing.assert_close(view.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(pipeline(images)[0], view)
    assert pipeline.n_views == 1 and pipeline.sizes == [SIZE]
    torch.testing.assert_close(Preprocess(SIZE, mean, std)(images), view)


def test_preprocess_resizes_and_centre_crops():
    mean, std = stats(4)
    images = raw_images(bands=4, side=32)
    assert Preprocess(16, mean, std)(images).shape == (4, 4, 16, 16)
    # cropping half of each side of a 32 px image keeps exactly the central 16 x 16 pixels
    cropped = Preprocess(16, mean, std, crop_fraction=0.5)(images)
    full = Preprocess(32, mean, std)(images)
    torch.testing.assert_close(cropped, full[..., 8:24, 8:24])
    (view,) = AUGMENTATIONS.create("eval", size=16, mean=mean, std=std, crop_fraction=0.5)(images)
    torch.testing.assert_close(view, cropped)


def test_normalisation_buffers_move_with_the_module():
    pipeline = build("geometric")
    buffers = dict(pipeline.named_buffers())
    assert buffers["normalize.mean"].shape == (1, 13, 1, 1)
    assert "normalize.mean" in pipeline.state_dict() and "normalize.std" in pipeline.state_dict()
    assert pipeline.double().normalize.mean.dtype == torch.float64  # .to()/.double() reach them


def test_wrong_band_count_raises_config_error():
    message = r"augmentation 'geometric': input has 12 bands but normalisation statistics have 13"
    with pytest.raises(ConfigError, match=message):
        build("geometric")(raw_images(bands=12))
    with pytest.raises(ConfigError, match="preprocess: input has 4 bands"):
        Preprocess(SIZE, *stats(13))(raw_images(bands=4))
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\)"):
        build("eval")(raw_images()[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_views=0), "n_views"),
        (dict(scale=(0.5, 0.2)), "scale"),
        (dict(scale=(0.0, 1.5)), "scale"),
        (dict(blur_p=1.5), "blur_p"),
        (dict(contrast=1.0), "contrast"),
        (dict(blur_sigma=0.5), "blur_sigma"),
        (dict(seed="x"), "seed"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build("standard", **kwargs)


def test_bad_statistics_raise_config_error():
    with pytest.raises(ConfigError, match="mean has 13 bands but std has 12"):
        AUGMENTATIONS.create("standard", size=SIZE, mean=[0.0] * 13, std=[1.0] * 12)
    with pytest.raises(ConfigError, match="std"):
        AUGMENTATIONS.create("eval", size=SIZE, mean=[0.0] * 3, std=[1.0, 0.0, 1.0])
    with pytest.raises(ConfigError, match="size"):
        AUGMENTATIONS.create("geometric", size=0, mean=[0.0], std=[1.0])


def test_multicrop_makes_two_global_and_n_local_views():
    views = build("multicrop")(raw_images())
    assert len(views) == 8
    assert [v.shape[-1] for v in views] == [SIZE, SIZE] + [default_local_size(SIZE)] * 6
    pipeline = build("multicrop", n_local=3, local_size=12, colour=False)
    assert pipeline.n_views == 5 and pipeline.sizes == [SIZE, SIZE, 12, 12, 12]
    assert [v.shape[-1] for v in pipeline(raw_images())] == pipeline.sizes
    assert build("multicrop", n_views=4).sizes == [SIZE, SIZE] + [default_local_size(SIZE)] * 2
    with pytest.raises(ConfigError, match="n_views=4 does not match"):
        build("multicrop", n_views=4, n_local=6)
    with pytest.raises(ConfigError, match="local_scale"):
        build("multicrop", local_scale=(0.5, 0.1))


def test_default_local_size_follows_dino():
    assert default_local_size(224) == 96
    assert default_local_size(120) == 48
    assert default_local_size(16) == 8


def test_eval_repeats_its_single_view_for_two_view_methods():
    views = build("eval", n_views=2)(raw_images(side=SIZE))
    assert len(views) == 2 and torch.equal(views[0], views[1])


def test_band_mean_grayscale_makes_all_bands_equal():
    x = torch.randn(5, 13, 8, 8)
    out = RandomBandMeanGrayscale(p=1.0)(x)
    torch.testing.assert_close(out, x.mean(1, keepdim=True).expand_as(x))
    assert out.is_contiguous()
    torch.manual_seed(0)
    mixed = RandomBandMeanGrayscale(p=0.5)(torch.randn(64, 3, 4, 4))
    gray = (mixed == mixed[:, :1]).flatten(1).all(1)
    assert 0 < int(gray.sum()) < 64  # each sample decides on its own


def test_rot90_is_an_exact_uniform_turn():
    torch.manual_seed(0)
    x = torch.randn(64, 4, 9, 9)
    aug = RandomRot90(p=1.0)
    out = aug(x)
    codes = aug._params["code"]
    for i in range(len(x)):
        k = int(codes[i]) // 4
        assert torch.equal(out[i], torch.rot90(x[i], k, dims=(-2, -1)))
        assert torch.equal(out[i].flatten().sort().values, x[i].flatten().sort().values)
    counts = torch.bincount(aug.generate_parameters((40_000,))["code"] // 4, minlength=4)
    assert counts.min() > 9_500 and counts.max() < 10_500  # 10_000 each if uniform


def test_flip_rot90_matches_its_parts_and_its_matrix():
    torch.manual_seed(1)
    x = torch.randn(32, 3, 7, 7)
    aug = RandomFlipRot90(hflip_p=0.5, vflip_p=0.5)
    out = aug(x)
    codes = aug._params["code"]
    assert len(set(codes.tolist())) > 8
    for i, code in enumerate(codes.tolist()):
        expected = torch.rot90(x[i], code // 4, dims=(-2, -1))
        if code & 2:
            expected = expected.flip(-1)
        if code & 1:
            expected = expected.flip(-2)
        assert torch.equal(out[i], expected)
        # the matrix sends each input pixel (x, y) to where the image puts it
        m = aug.transform_matrix[i]
        for y0, x0 in [(0, 0), (1, 5), (6, 2)]:
            xo, yo, _ = (m @ torch.tensor([x0, y0, 1.0])).round().long().tolist()
            assert out[i, :, yo, xo].equal(x[i, :, y0, x0])
    torch.testing.assert_close(aug.inverse(out), x)


def test_brightness_contrast_follows_its_formula():
    torch.manual_seed(0)
    x = torch.randn(6, 12, 8, 8)
    aug = RandomBrightnessContrast(brightness=0.4, contrast=0.4, p=1.0)
    out = aug(x)
    b = aug._params["brightness"].view(-1, 1, 1, 1)
    c = aug._params["contrast"].view(-1, 1, 1, 1)
    assert (b.abs() <= 0.4).all() and ((c - 1).abs() <= 0.4).all()
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (x - m) * c + m + b)


def test_factories_accept_config_style_arguments():
    # config files deliver lists, and train.py validates options against the factory signature
    for name, args in [("standard", {"scale": [0.3, 1.0], "blur_sigma": [0.1, 1.0]}), ("multicrop", {"n_local": 2})]:
        check_args("augmentation", name, AUGMENTATIONS.get(name).factory, args,
                   reserved=("size", "mean", "std", "n_views", "seed"))
        assert build(name, **args)(raw_images())[0].shape[-1] == SIZE


@pytest.mark.cuda
@pytest.mark.parametrize("name", PRESETS)
def test_runs_on_cuda_and_is_reproducible_there(name):
    images = raw_images().cuda()
    a = build(name, seed=0).cuda()(images)
    b = build(name, seed=0).cuda()(images)
    assert all(v.is_cuda and v.dtype == torch.float32 for v in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
