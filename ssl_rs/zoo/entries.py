"""The registered weights.

Community weights: torchgeo's SSL4EO-S12 Sentinel-2 ResNets (Wang et al. 2022,
https://arxiv.org/abs/2211.07044), URLs as pinned in torchgeo's ``torchgeo/models/resnet.py``
(commit 7ea0616d). They are plain state dicts of timm ResNets on 13 L1C bands (B10 included),
pretrained on inputs divided by 10000 and resized/cropped to 224 px.

Each sha256 and size is the ``oid sha256`` / ``size`` of the file's Git-LFS pointer on Hugging
Face (``sha256_source`` says which commit). torchgeo publishes no ResNet-18 DINO Sentinel-2 weights,
so there is no such entry.

Weights trained with ssl-rs join here through ``ssl-rs zoo export RUN_DIR`` (it writes the entry).
"""

from __future__ import annotations

from .weights import ZOO, WeightsEntry

# torchgeo's ``_sentinel2_toa_bands`` with canonical names (equal to ssl_rs.data.bands.S2_BANDS; not
# imported from there because ssl_rs.data loads h5py and torch, and `ssl-rs --help` should not wait).
_SSL4EO_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

_SSL4EO_DATA = "SSL4EO-S12 v1: Sentinel-2 L1C top-of-atmosphere, 13 bands, 4 seasonal dates per location"
_SSL4EO_NORM = {"type": "scale", "divisor": 10000.0, "note": "reflectance / 10000, no per-band standardisation"}
_SSL4EO_LICENSE = "CC-BY-4.0"
_SSL4EO_SOURCE = "torchgeo (https://github.com/microsoft/torchgeo), SSL4EO-S12 (https://github.com/zhu-xlab/SSL4EO-S12)"
_TORCHGEO_TABLE = "torchgeo docs/api/weights/sentinel2.csv (numbers from the SSL4EO-S12 paper)"
_HF = "https://huggingface.co/torchgeo"

ZOO.register(WeightsEntry(
    name="resnet18_ssl4eo_s12_moco",
    url="https://hf.co/torchgeo/resnet18_sentinel2_all_moco/resolve/5b8cddc9a14f3844350b7f40b85bcd32aed75918/"
        "resnet18_sentinel2_all_moco-59bfdff9.pth",
    sha256="59bfdff99c7af41adfa2557e684ec59aec79f4cf6bb1a2e9714b802f08e2222e",
    size=44915225,
    sha256_source=f"{_HF}/resnet18_sentinel2_all_moco/commit/27d5271cd96587bea99eafe40fec9d1f75488160 "
                  "(LFS pointer of resnet18_sentinel2_all_moco.pth; the pinned -59bfdff9 file is named after "
                  "the first 8 hex digits of the same hash)",
    backbone="resnet18",
    bands=_SSL4EO_BANDS,
    method="mocov2",
    pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_NORM,
    image_size=224,
    license=_SSL4EO_LICENSE,
    key_layout="timm",
    source=_SSL4EO_SOURCE,
    summary="ResNet-18 MoCo-v2 on SSL4EO-S12, all 13 Sentinel-2 bands (torchgeo ResNet18_Weights.SENTINEL2_ALL_MOCO)",
))

ZOO.register(WeightsEntry(
    name="resnet50_ssl4eo_s12_moco",
    url="https://hf.co/torchgeo/resnet50_sentinel2_all_moco/resolve/da4f3c9dbe09272eb902f3b37f46635fa4726879/"
        "resnet50_sentinel2_all_moco-df8b932e.pth",
    sha256="df8b932e2a23a0773febedf3f650aa7d342b805f7876ca5ed6b139d7245d7c09",
    size=94487109,
    sha256_source=f"{_HF}/resnet50_sentinel2_all_moco/commit/da4f3c9dbe09272eb902f3b37f46635fa4726879 "
                  "(LFS pointer of the pinned file)",
    backbone="resnet50",
    bands=_SSL4EO_BANDS,
    method="mocov2",
    pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_NORM,
    image_size=224,
    license=_SSL4EO_LICENSE,
    key_layout="timm",
    published_metrics={"BigEarthNet": 91.8, "EuroSAT": 99.1, "So2Sat": 60.9},
    source=f"{_SSL4EO_SOURCE}; published metrics: {_TORCHGEO_TABLE}",
    summary="ResNet-50 MoCo-v2 on SSL4EO-S12, all 13 Sentinel-2 bands (torchgeo ResNet50_Weights.SENTINEL2_ALL_MOCO)",
))

ZOO.register(WeightsEntry(
    name="resnet50_ssl4eo_s12_dino",
    url="https://hf.co/torchgeo/resnet50_sentinel2_all_dino/resolve/d7f14bf5530d70ac69d763e58e77e44dbecfec7c/"
        "resnet50_sentinel2_all_dino-d6c330e9.pth",
    sha256="d6c330e99fb65d7a8ed9cdf06f6ec752b9db74718fa2edf42314bf3fdf132dd4",
    size=94470597,
    sha256_source=f"{_HF}/resnet50_sentinel2_all_dino/commit/d7f14bf5530d70ac69d763e58e77e44dbecfec7c "
                  "(LFS pointer of the pinned file)",
    backbone="resnet50",
    bands=_SSL4EO_BANDS,
    method="dino",
    pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_NORM,
    image_size=224,
    license=_SSL4EO_LICENSE,
    key_layout="timm",
    published_metrics={"BigEarthNet": 90.7, "EuroSAT": 99.1, "So2Sat": 63.6},
    source=f"{_SSL4EO_SOURCE}; published metrics: {_TORCHGEO_TABLE}",
    summary="ResNet-50 DINO on SSL4EO-S12, all 13 Sentinel-2 bands (torchgeo ResNet50_Weights.SENTINEL2_ALL_DINO)",
))
