"""A synthetic "geo-world": the embedded default data for the demo and the tests.

It is synthetic, and says so in its ``source`` attribute, but it has the structure that makes
geography-aware SSL worth having:

* locations cluster in regions spread over a large part of the sphere (latitudes -50..65,
  all longitudes), with tight sub-clusters so some places have neighbours within ~15 km;
* a land-cover class field that is spatially correlated on the sphere: each class owns a few
  smooth von Mises-Fisher "bumps" at two scales (continental and ~150 km) and a place takes the
  class with the largest field value, so nearby places tend to share a class, as on Earth;
* per-class spectral signatures over the Sentinel-2 bands (mixtures of water, forest, crop,
  grass, urban, soil and snow reflectance curves), a per-class texture (stripes, blobs, grid or
  speckle) mixing in a secondary material, latitude-dependent illumination, seasonal
  vegetation change between dates, and sensor noise;
* optionally several dates per place (``group`` ids), for temporal positives: the dates of a
  place show the same ground (texture and clutter layout), with their own season, light, haze
  and noise, as co-registered cloud-free acquisitions do;
* optionally each place as a larger scene cut into ``tiles`` x ``tiles`` adjacent tiles, each with
  its own centre lat/lon, whose content continues across tile borders (neighbouring pairs);
* optionally per-pixel masks (semantic segmentation, ``masks=True``): each ground is split into
  two smooth regions, the place's class and a second class, each drawn with its own class's
  recipe (spectrum, texture, seasonal change), and the mask records which class each pixel shows;
  clutter pixels (a material of no particular class laid over the ground) are no-data (255).

Everything is deterministic given the seed.
"""

from __future__ import annotations

import os
from datetime import date, timedelta
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..files import check_output
from ..geodesy import EARTH_RADIUS_KM, unit_vectors
from .bands import S2_BANDS, S2_BANDS_L2A, normalize_band_name
from .columns import MASK_NODATA
from .writer import STATS_MAX_PIXELS, STATS_SAMPLE_PIXELS, H5Writer

# Reflectance (0..1) of archetypal materials in S2_BANDS order
# (B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12), after typical library spectra.
MATERIALS: Dict[str, Sequence[float]] = {
    "water": [0.08, 0.07, 0.06, 0.04, 0.03, 0.02, 0.02, 0.02, 0.015, 0.01, 0.005, 0.01, 0.005],
    "forest": [0.03, 0.03, 0.05, 0.03, 0.08, 0.25, 0.32, 0.35, 0.36, 0.30, 0.010, 0.15, 0.07],
    "crop": [0.05, 0.05, 0.09, 0.06, 0.13, 0.30, 0.38, 0.42, 0.43, 0.35, 0.010, 0.22, 0.12],
    "grass": [0.05, 0.05, 0.08, 0.07, 0.12, 0.22, 0.27, 0.30, 0.31, 0.27, 0.010, 0.26, 0.16],
    "urban": [0.10, 0.11, 0.13, 0.15, 0.17, 0.19, 0.20, 0.22, 0.22, 0.20, 0.010, 0.25, 0.22],
    "soil": [0.08, 0.09, 0.12, 0.16, 0.19, 0.21, 0.23, 0.25, 0.26, 0.25, 0.010, 0.32, 0.28],
    "snow": [0.90, 0.90, 0.88, 0.85, 0.83, 0.80, 0.78, 0.75, 0.74, 0.60, 0.050, 0.10, 0.08],
}
VEGETATION = {"forest", "crop", "grass"}
# Relative path radiance of atmospheric haze per band (S2_BANDS order): falls with wavelength.
HAZE = [1.0, 0.9, 0.7, 0.5, 0.4, 0.32, 0.27, 0.22, 0.21, 0.15, 0.0, 0.05, 0.03]
TEXTURES = ("stripes", "blobs", "grid", "speckle")
CHUNK = 256  # samples (tiles) rendered at once; bounds memory for large n
GSD = 10.0  # metres per pixel


def _random_sphere(rng: np.random.Generator, n: int, lat_range=(-50.0, 65.0)):
    """Uniform on the sphere between two latitudes: (lat, lon) in degrees."""
    z = rng.uniform(np.sin(np.radians(lat_range[0])), np.sin(np.radians(lat_range[1])), n)
    return np.degrees(np.arcsin(z)), rng.uniform(-180.0, 180.0, n)


def _offset(lat, lon, north_km, east_km):
    """Move points by small offsets in km (local tangent plane), keeping lon in [-180, 180)."""
    lat2 = np.clip(lat + np.degrees(north_km / EARTH_RADIUS_KM), -89.0, 89.0)
    lon2 = lon + np.degrees(east_km / (EARTH_RADIUS_KM * np.cos(np.radians(lat2))))
    return lat2, (lon2 + 180.0) % 360.0 - 180.0


def sample_locations(rng: np.random.Generator, n: int):
    """Regions over the sphere; places scattered ~60 km around region centres, and a third of
    them in tight (~5 km) sub-clusters around another place so close neighbours exist."""
    n_regions = max(4, n // 40)
    c_lat, c_lon = _random_sphere(rng, n_regions)
    region = rng.integers(0, n_regions, n)
    lat, lon = _offset(c_lat[region], c_lon[region], rng.normal(0, 60, n), rng.normal(0, 60, n))
    tight = rng.random(n) < 1 / 3
    anchor = rng.integers(0, n, n)
    t_lat, t_lon = _offset(lat[anchor], lon[anchor], rng.normal(0, 5, n), rng.normal(0, 5, n))
    return np.where(tight, t_lat, lat), np.where(tight, t_lon, lon)


def class_field(rng: np.random.Generator, num_classes: int, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Land-cover class per place from smooth per-class fields on the sphere (argmax)."""
    p = unit_vectors(lat, lon)
    score = np.zeros((len(lat), num_classes))
    for kappa, bumps, weight in ((30.0, 5, 1.0), (1500.0, 40, 0.8)):  # ~10 deg and ~150 km scales
        b_lat, b_lon = _random_sphere(rng, num_classes * bumps, (-60.0, 75.0))
        centres = unit_vectors(b_lat, b_lon).reshape(num_classes, bumps, 3)
        cos = np.einsum("nd,kbd->nkb", p, centres)
        score += weight * np.exp(kappa * (cos - 1.0)).sum(axis=-1)
    score += rng.normal(0, 0.05, score.shape)  # small per-place variation breaks exact ties
    return score.argmax(axis=1)


def _class_recipes(rng: np.random.Generator, num_classes: int):
    """Each class mixes two materials (so classes overlap spectrally, as real land cover does),
    with its own texture, mixing strength and a small spectral tint."""
    names = list(MATERIALS)
    recipes = []
    for k in range(num_classes):
        main = names[k % len(names)]
        second = names[(k + 1 + rng.integers(0, len(names) - 1)) % len(names)]
        recipes.append(
            {
                "name": f"{main}_{k}" if num_classes > len(names) else main,
                "main": main,
                "second": second,
                "texture": TEXTURES[k % len(TEXTURES)],
                "mix": float(rng.uniform(0.3, 0.6)),
                "tint": rng.normal(1.0, 0.05, len(S2_BANDS)),  # per-class spectral perturbation
                "freq": float(rng.uniform(2.0, 6.0)),
            }
        )
    return recipes


def _textures(rng: np.random.Generator, n: int, size: int, recipes, cls: np.ndarray, tiles: int = 1) -> np.ndarray:
    """A (n, tiles * size, tiles * size) map in [0, 1] of where the secondary material shows; the
    texture scale is per ``size`` pixels, so a larger scene shows more ground, not a zoom."""
    side = tiles * size
    yy, xx = np.meshgrid(np.linspace(0, tiles, side), np.linspace(0, tiles, side), indexing="ij")
    angle = rng.uniform(0, np.pi, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    freq = np.array([recipes[c]["freq"] for c in cls])[:, None, None]
    along = xx[None] * np.cos(angle) + yy[None] * np.sin(angle)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * along + phase)
    coarse = torch.from_numpy(rng.random((n, 1, 6 * tiles, 6 * tiles)).astype(np.float32))
    blobs = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)[:, 0].clamp(0, 1).numpy()
    grid = ((np.sin(2 * np.pi * 2 * freq * xx[None] + phase) > 0.6) | (np.sin(2 * np.pi * 2 * freq * yy[None] + phase) > 0.6))
    speckle = rng.random((n, side, side))
    kind = np.array([TEXTURES.index(recipes[c]["texture"]) for c in cls])[:, None, None]
    return np.select([kind == 0, kind == 1, kind == 2], [stripes, blobs, grid.astype(np.float64)], speckle)


def render(
    rng: np.random.Generator,
    cls: np.ndarray,
    lat: np.ndarray,
    day_of_year: np.ndarray,
    recipes,
    band_idx: Sequence[int],
    size: int,
    tiles: int = 1,
    layout: Optional[np.ndarray] = None,
    masks: bool = False,
):
    """Images (n, C, tiles * size, tiles * size) uint16 (reflectance x 10000) for places of class
    ``cls``: one scene per place and date, with the texture and clutter scale of a ``size`` image
    (``tiles`` > 1 renders more ground around the place, not a magnified view). ``layout`` (n,)
    says which scenes share their ground (texture and clutter: the dates of one place); default:
    none do. ``masks``: also return (n, tiles * size, tiles * size) uint8 masks, ``(images,
    masks)``: the ground of each layout is split into a region of the place's class and one of a
    second class, each drawn with its class's recipe; clutter is no-data (:data:`MASK_NODATA`).
    Without ``masks`` the random draws, and so the images, are those of earlier versions."""
    n = len(cls)
    layout = np.arange(n) if layout is None else np.asarray(layout)
    first = np.unique(layout, return_index=True)[1]  # one texture per layout, drawn in order
    side = tiles * size
    spectra = np.asarray([[MATERIALS[m] for m in (r["main"], r["second"])] for r in recipes])  # K, 2, 13
    # Vegetation greens up in the local summer: stronger NIR / red-edge.
    season = np.sin(2 * np.pi * (day_of_year - 80) / 365.25) * np.sign(lat + 1e-9)
    green = np.zeros(len(S2_BANDS))
    green[[4, 5, 6, 7, 8]] = 0.25
    m, shared = len(first), np.searchsorted(layout[first], layout)  # layouts, and each scene's

    def ground(classes: np.ndarray) -> np.ndarray:
        """(n, 13, side, side) reflectance of scenes wholly of ``classes`` (n,): the class's two
        materials mixed by its texture (one texture per layout)."""
        main = spectra[classes, 0] * np.stack([r["tint"] for r in recipes])[classes]
        second = spectra[classes, 1]
        veg = np.array([recipes[c]["main"] in VEGETATION for c in classes])
        main = main * (1 + np.where(veg, season, 0.0)[:, None] * green[None])
        texture = _textures(rng, m, size, recipes, classes[first], tiles)[shared]
        texture = texture * np.array([recipes[c]["mix"] for c in classes])[:, None, None]
        return main[:, :, None, None] * (1 - texture[:, None]) + second[:, :, None, None] * texture[:, None]

    image = ground(cls)
    if masks:
        # a second class per layout over a smooth region of the ground, drawn with its own recipe
        other = (cls[first] + rng.integers(1, len(recipes), m)) % len(recipes)
        coarse = torch.from_numpy(rng.random((m, 1, 3 * tiles, 3 * tiles)).astype(np.float32))
        field = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)[:, 0].numpy()
        region = (field > rng.uniform(0.35, 0.65, (m, 1, 1)))[shared]
        image = np.where(region[:, None], ground(other[shared]), image)
        mask = np.where(region, other[shared][:, None, None], cls[:, None, None]).astype(np.uint8)
    # Clutter: a random material (any class's) over random blobs, so appearance alone is ambiguous;
    # part of the ground, so shared by the dates of a place like the texture.
    clutter_spec = spectra.reshape(-1, len(S2_BANDS))[rng.integers(0, spectra.shape[0] * 2, m)][shared]
    coarse = torch.from_numpy(rng.random((m, 1, 4 * tiles, 4 * tiles)).astype(np.float32))
    blobs = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)[:, 0].clamp(0, 1).numpy()
    threshold = rng.uniform(0.35, 0.9, (m, 1, 1))
    if masks:  # sparser clutter, so that most pixels keep a label
        threshold = np.maximum(threshold, 0.65)
    clutter = ((blobs > threshold) * rng.uniform(0.5, 1.0, (m, 1, 1)))[shared]
    image = image * (1 - clutter[:, None]) + clutter_spec[:, :, None, None] * clutter[:, None]
    illumination = 0.7 + 0.3 * np.cos(np.radians(lat))  # lower sun at high latitudes
    image = image * illumination[:, None, None, None] * rng.uniform(0.6, 1.4, (n, 1, 1, 1))
    haze = rng.uniform(0.0, 0.06, (n, 1)) * np.array(HAZE)[None]  # scattering: strongest in the blue
    image = image + haze[:, :, None, None]
    image = image + rng.normal(0, 0.015, image.shape)  # sensor noise
    image = image[:, list(band_idx)]
    image = np.clip(image * 10000.0, 0, 65535).astype(np.uint16)
    if masks:
        mask[clutter > 0] = MASK_NODATA  # a material of no class: no label
        return image, mask
    return image


def cut_tiles(scenes: np.ndarray, tiles: int) -> np.ndarray:
    """(n, C, t*s, t*s) scenes -> (n * t * t, C, s, s) tiles, scene-major, tiles row-major within a
    scene (row 0 is the northernmost, column 0 the westernmost)."""
    n, c, h, w = scenes.shape
    if h != w or h % tiles:
        raise ValueError(f"cut_tiles: a {h}x{w} scene cannot be cut into {tiles}x{tiles} square tiles")
    s = h // tiles
    out = scenes.reshape(n, c, tiles, s, tiles, s).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(out.reshape(n * tiles * tiles, c, s, s))


def tile_centres(lat: np.ndarray, lon: np.ndarray, tiles: int, tile_km: float):
    """(lat, lon) of shape (n, t * t) of the tile centres of scenes centred at (lat, lon): tile
    (row, col) lies ((t - 1) / 2 - row) * tile_km north and (col - (t - 1) / 2) * tile_km east."""
    row, col = np.divmod(np.arange(tiles * tiles), tiles)
    north = ((tiles - 1) / 2.0 - row) * tile_km
    east = (col - (tiles - 1) / 2.0) * tile_km
    return _offset(np.asarray(lat)[:, None], np.asarray(lon)[:, None], north[None], east[None])


def available_memory() -> Optional[int]:
    """Bytes this process can still allocate (Linux: MemAvailable + SwapFree, capped by the
    cgroup's memory limit); None where it cannot be told."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        free = info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            free = min(free, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return free


def memory_needed(n: int, *, size: int, bands: int, dates: int = 1, tiles: int = 1, num_classes: int = 8):
    """Rough peak of the memory :func:`synthesize` needs, in bytes, split into the part that grows
    with ``n`` (per-place class fields, the writer's per-sample columns) and the part that grows
    with the image size (one chunk of scenes rendered in float64, the statistics' pixel sample).
    Measured: ~1 kB per place and class (the class field's (places, classes, 40) intermediates)
    and ~450 B per rendered pixel of the 13 bands; the estimate adds a margin to both."""
    places = n // max(1, dates * tiles * tiles)
    per_n = places * (1300 * num_classes + 200) + n * 250
    step = max(dates, (CHUNK // (tiles * tiles)) // dates * dates)
    render = step * (tiles * size) ** 2 * len(S2_BANDS) * 8 * 6
    reservoir = min(n * min(STATS_SAMPLE_PIXELS, size * size), STATS_MAX_PIXELS + STATS_SAMPLE_PIXELS) * bands * 4 * 3
    return per_n, render + reservoir


def _gb(n_bytes: float) -> str:
    """``n_bytes`` for people: 512 MB, 22.5 GB, 21.7 TB."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale or unit == "MB":
            return f"{n_bytes / scale:.3g} {unit}" if n_bytes < 1000 * scale else f"{n_bytes / scale:,.0f} {unit}"
    raise AssertionError  # pragma: no cover


def _check_resources(out, n: int, size: int, bands: int, dates: int, tiles: int, num_classes: int) -> None:
    """Refuse up front what cannot fit in memory or on the output's disk."""
    per_n, per_size = memory_needed(n, size=size, bands=bands, dates=dates, tiles=tiles, num_classes=num_classes)
    free = available_memory()
    if free is not None and per_n + per_size > free:
        option = f"--n {n}" if per_n >= per_size else f"--size {size}" + (f" --tiles {tiles}" if tiles > 1 else "")
        raise ConfigError(f"{option}: synthesising needs about {_gb(per_n + per_size)} of memory, "
                          f"only {_gb(free)} is available")
    disk = n * bands * size * size * 2  # uncompressed uint16 images
    parent = next((p for p in Path(out).absolute().parents if p.is_dir()), None)
    if parent is not None:
        try:
            st = os.statvfs(parent)
        except (OSError, AttributeError):
            return
        if disk > st.f_bavail * st.f_frsize:
            raise DataError(f"{out}: needs about {_gb(disk)} of disk space, only {_gb(st.f_bavail * st.f_frsize)} "
                            f"free in {parent}")


def synthesize(
    out: str | os.PathLike,
    n: int = 2000,
    bands: Optional[Sequence[str]] = None,
    size: int = 32,
    seed: int = 0,
    dates: int = 1,
    num_classes: int = 8,
    split: bool = True,
    progress: bool = True,
    tiles: int = 1,
    block_km: float = 0.0,
    masks: bool = False,
) -> str:
    """Write a synthetic geo-world of ``n`` samples: ``n // (dates * tiles**2)`` places x ``dates``
    x ``tiles**2`` tiles. With ``tiles`` = t > 1 each place and date is rendered once as a scene of
    ``t * size`` px and cut into t x t adjacent ``size`` px tiles, each with its own centre lat/lon
    (``size * 10`` m apart, row 0 northernmost), the place's label and the scene's ``time``.
    ``group`` (only with ``dates`` > 1) is one footprint over its dates: tiles of one scene never
    share it. Samples are place-major, then date, then tile (row-major).

    ``split`` stores a random split (the default scheme); ``block_km`` > 0 also a spatial-block
    one with cells of that size. Both are written before the file is moved into place. A request
    that cannot fit in the available memory or on the output's disk is refused before any work.

    ``masks`` also writes a per-pixel ``mask`` (semantic segmentation; see :func:`render`): its
    ``mask_classes`` are the class names, ``mask_nodata`` 255 (clutter). Without it the file is
    byte for byte what earlier versions wrote."""
    if n < 3:
        raise ConfigError(f"--n must be at least 3, got {n}")
    if size < 8:
        raise ConfigError(f"--size must be at least 8, got {size}")
    if dates < 1 or n % dates:
        raise ConfigError(f"--dates must be >= 1 and divide --n ({n}), got {dates}")
    if isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or tiles < 1:
        raise ConfigError(f"--tiles must be a whole number >= 1 (tiles per scene side), got {tiles!r}")
    tiles = int(tiles)
    per_place = dates * tiles * tiles
    if n % per_place:
        raise ConfigError(
            f"--n ({n}) must be a multiple of --dates x --tiles^2 = {dates} x {tiles * tiles} = {per_place} "
            f"(samples per place), e.g. --n {max(per_place, n - n % per_place)}"
        )
    if not 2 <= num_classes <= 64:
        raise ConfigError(f"--classes must be between 2 and 64, got {num_classes}")
    try:
        band_names = [normalize_band_name(b) for b in (bands or S2_BANDS_L2A)]
    except ValueError as e:
        raise ConfigError(f"--bands: {e}") from None
    band_idx = [S2_BANDS.index(b) for b in band_names]
    if block_km:
        from .splits import check_block_km

        block_km = check_block_km(block_km)
    out = check_output(out)
    _check_resources(out, n, size, len(band_names), dates, tiles, num_classes)
    rng = np.random.default_rng(seed)
    places = n // per_place
    p_lat, p_lon = sample_locations(rng, places)
    p_cls = class_field(rng, num_classes, p_lat, p_lon)
    recipes = _class_recipes(rng, num_classes)
    # Scenes (one per place and date) are place-major, so the dates of one place are consecutive;
    # each scene gives tiles * tiles consecutive samples.
    scenes = places * dates
    place = np.repeat(np.arange(places), dates)
    start = date(2021, 1, 1)
    offsets = (np.tile(np.arange(dates), places) * (365 // dates) + rng.integers(0, 30, scenes)) % 365
    day_of_year = offsets + 1
    n_tiles = tiles * tiles
    if tiles == 1:
        t_lat, t_lon = p_lat[:, None], p_lon[:, None]
    else:
        t_lat, t_lon = tile_centres(p_lat, p_lon, tiles, size * GSD / 1000.0)
    from ..progress import Progress

    attrs = {"synthetic": True, "seed": seed, "num_places": places, "tiles_per_side": tiles}

    def add_splits(f, path):
        from .splits import store_split

        if split:
            store_split(f, path, "random", seed=seed, make_default=True)
        if block_km:
            store_split(f, path, "spatial-block", block_km=block_km, seed=seed)

    with H5Writer(
        out,
        bands=band_names,
        size=(size, size),
        gsd=GSD,
        source=f"ssl-rs synthetic geo-world (seed={seed}); not real imagery",
        class_names=[r["name"] for r in recipes],
        attrs=attrs,
        seed=seed,
        before_commit=add_splits,
        mask_classes=[r["name"] for r in recipes] if masks else None,
    ) as writer:
        # a bar on a terminal, plain periodic lines in a log (ssl_rs.progress: the rule of every command)
        bar = Progress(n, "synthesising", "img", enabled=progress)
        # scenes rendered at once: about CHUNK tiles' worth of pixels, whole places (their dates
        # share one ground texture)
        step = max(dates, (CHUNK // n_tiles) // dates * dates)
        for lo in range(0, scenes, step):
            idx = np.arange(lo, min(scenes, lo + step))
            pl = place[idx]
            images = render(rng, p_cls[pl], p_lat[pl], day_of_year[idx], recipes, band_idx, size, tiles, layout=pl,
                            masks=masks)
            labels = None
            if masks:
                images, labels = images
                if tiles > 1:
                    labels = cut_tiles(labels[:, None], tiles)[:, 0]
            if tiles > 1:
                images = cut_tiles(images, tiles)
            for j, i in enumerate(idx):
                when = (start + timedelta(days=int(offsets[i]))).isoformat()
                for k in range(n_tiles):
                    writer.append(
                        images[j * n_tiles + k],
                        lat=t_lat[pl[j], k],
                        lon=t_lon[pl[j], k],
                        label=int(p_cls[pl[j]]),
                        time=when,
                        group=int(pl[j]) * n_tiles + k if dates > 1 else None,
                        mask=None if labels is None else labels[j * n_tiles + k],
                    )
            bar.update(len(idx) * n_tiles)
        bar.close()
    return str(out)
