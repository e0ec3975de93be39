"""The registered weights.

Community weights: the Sentinel-2 weights torchgeo publishes for architectures ssl-rs has
(timm ResNet-18 / ResNet-50 / ViT-S), with URLs, band orders and input normalisations as in
torchgeo's ``torchgeo/models/resnet.py`` and ``vit.py`` at commit
7ea0616ded0cc27a8feb8b2aafefd7c14155f6fb (tests/zoo/fixtures/torchgeo_weights.json holds what
was read there, and the tests compare every entry with it). Each file is a plain state dict of
the timm model (torchgeo loads it with ``timm.create_model(...).load_state_dict``).

Hashes: the three SSL4EO-S12 MoCo/DINO ResNets carry the full sha256 and size of the file's
Git-LFS pointer on Hugging Face (``sha256_source`` says which commit). For the others only the
8 hex digits in torchgeo's file name are known (``sha256_prefix``, checked the way torch.hub
checks it); files published without a hash in their name (MAE, FG-MAE, SoftCon) have none, and
downloading them needs ``--sha256`` or ``--allow-unverified``. When a full hash becomes known
(the cache's ``<file>.sha256`` records it after a download), it goes into ``sha256``.

``eval_transforms`` are torchgeo's resize/crop for the weights; the harness applies them.
torchgeo's Sentinel-2 weights that are not here, and why, are listed in docs/zoo.md.

Weights trained with ssl-rs join here through ``ssl-rs zoo export RUN_DIR`` (it writes the entry).
"""

from __future__ import annotations

from .weights import ZOO, WeightsEntry

# torchgeo's ``_sentinel2_toa_bands`` with canonical names (equal to ssl_rs.data.bands.S2_BANDS; not
# imported from there because ssl_rs.data loads h5py and torch, and `ssl-rs --help` should not wait).
_SSL4EO_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_RGB_BANDS = ("B04", "B03", "B02")  # torchgeo's _sentinel2_rgb_bands: red, green, blue

_SSL4EO_DATA = "SSL4EO-S12 v1: Sentinel-2 L1C top-of-atmosphere, 13 bands, 4 seasonal dates per location"
_SSL4EO_NORM = {"type": "scale", "divisor": 10000.0, "note": "reflectance / 10000, no per-band standardisation"}
_SSL4EO_LICENSE = "CC-BY-4.0"
_SSL4EO_SOURCE = "torchgeo (https://github.com/microsoft/torchgeo), SSL4EO-S12 (https://github.com/zhu-xlab/SSL4EO-S12)"
_TORCHGEO_TABLE = "torchgeo docs/api/weights/sentinel2.csv (numbers from the SSL4EO-S12 paper)"
_HF = "https://huggingface.co/torchgeo"
# torchgeo's _ssl4eo_s12_transforms_s2_10k / _zhu_xlab_transforms / _s2_stats: K.Resize((256, 256)),
# K.CenterCrop(224), then the normalisation.
_RESIZE_256_CROP_224 = {"resize": 256, "center_crop": 224}
_PREFIX_SOURCE = ("torchgeo's file name (torch.hub convention: the first 8 hex digits of the file's sha256); "
                  "the full hash is not known yet")
_NO_HASH_SOURCE = "none known: the published file name carries no hash, and torchgeo checks none"

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
    eval_transforms=_RESIZE_256_CROP_224,
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
    eval_transforms=_RESIZE_256_CROP_224,
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
    eval_transforms=_RESIZE_256_CROP_224,
    license=_SSL4EO_LICENSE,
    key_layout="timm",
    published_metrics={"BigEarthNet": 90.7, "EuroSAT": 99.1, "So2Sat": 63.6},
    source=f"{_SSL4EO_SOURCE}; published metrics: {_TORCHGEO_TABLE}",
    summary="ResNet-50 DINO on SSL4EO-S12, all 13 Sentinel-2 bands (torchgeo ResNet50_Weights.SENTINEL2_ALL_DINO)",
))


# ----------------------------------------------------------------------------- added from torchgeo 7ea0616d
# Each is ``<torchgeo enum>.<member>``; what torchgeo's source says about it is in
# tests/zoo/fixtures/torchgeo_weights.json.

# SSL4EO-S12 statistics of the 13 L1C bands (torchgeo's _mean_s2 / _std_s2, from the SoftCon and
# DeCUR evaluation code), for weights pretrained on standardised inputs.
_SSL4EO_MEAN = [1612.9, 1397.6, 1322.3, 1373.1, 1561.0, 2108.4, 2390.7, 2318.7, 2581.0, 837.7, 22.0, 2195.2, 1537.4]
_SSL4EO_STD = [791.0, 854.3, 878.7, 1144.9, 1127.5, 1164.2, 1276.0, 1249.5, 1345.9, 577.5, 47.5, 1340.0, 1142.9]
_SSL4EO_STATS = {"type": "standardize", "mean": _SSL4EO_MEAN, "std": _SSL4EO_STD,
                 "note": "per-band (x - mean) / std with SSL4EO-S12 statistics (reflectance x 10000 units)"}

# ViT-S/16 as timm's vit_small_patch16_224 (what torchgeo builds): our vit_small at 224 px.
_VITS16 = {"img_size": 224, "patch_size": 16}
# timm's vit_small_patch14_dinov2 is vit_small_patch16_224 with 14 px patches and LayerScale
# (init_values=1e-5); torchgeo builds it at img_size 224 for SoftCon.
_VITS14_DINOV2 = {"img_size": 224, "patch_size": 14, "init_values": 1e-5}

_CLOSP_DATA = "CrisisLandMark: Sentinel-2, 13 bands (B10 included)"
_CLOSP_SOURCE = "torchgeo (https://github.com/microsoft/torchgeo), CLOSP (https://github.com/DarthReca/closp)"
_SSL4ECO_DATA = "SSL4Eco: Sentinel-2, 12 bands (no B10)"


def _torchgeo(enum: str, **fields) -> WeightsEntry:
    fields.setdefault("key_layout", "timm")
    fields.setdefault("summary", "")
    fields["summary"] = f"{fields['summary']} (torchgeo {enum})"
    if fields.get("sha256_prefix") is not None:
        fields.setdefault("sha256_source", _PREFIX_SOURCE)
    elif fields.get("sha256") is None:
        fields.setdefault("sha256_source", _NO_HASH_SOURCE)
    return ZOO.register(WeightsEntry(sha256=fields.pop("sha256", None), size=fields.pop("size", None), **fields))


_torchgeo(
    "ResNet18_Weights.SENTINEL2_RGB_MOCO",
    name="resnet18_ssl4eo_s12_rgb_moco",
    url="https://hf.co/torchgeo/resnet18_sentinel2_rgb_moco/resolve/e1c032e7785fd0625224cdb6699aa138bb304eec/"
        "resnet18_sentinel2_rgb_moco-e3a335e3.pth",
    sha256_prefix="e3a335e3",
    backbone="resnet18", bands=_RGB_BANDS, method="moco", pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_NORM, image_size=224, eval_transforms=_RESIZE_256_CROP_224,
    license=_SSL4EO_LICENSE, source=_SSL4EO_SOURCE,
    summary="ResNet-18 MoCo on SSL4EO-S12, RGB (B04, B03, B02)",
)

_torchgeo(
    "ResNet50_Weights.SENTINEL2_RGB_MOCO",
    name="resnet50_ssl4eo_s12_rgb_moco",
    url="https://hf.co/torchgeo/resnet50_sentinel2_rgb_moco/resolve/efd9723b59a88e9dc1420dc1e96afb25b0630a3c/"
        "resnet50_sentinel2_rgb_moco-2b57ba8b.pth",
    sha256_prefix="2b57ba8b",
    backbone="resnet50", bands=_RGB_BANDS, method="moco", pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_NORM, image_size=224, eval_transforms=_RESIZE_256_CROP_224,
    license=_SSL4EO_LICENSE, source=_SSL4EO_SOURCE,
    summary="ResNet-50 MoCo on SSL4EO-S12, RGB (B04, B03, B02)",
)

_torchgeo(
    "ResNet50_Weights.SENTINEL2_ALL_DECUR",
    name="resnet50_ssl4eo_s12_decur",
    url="https://huggingface.co/torchgeo/decur/resolve/eba7ae5945d482a4319be046d34b552db5dd9950/"
        "rn50_ssl4eo-s12_ms_decur_ep100-fc6b09ff.pth",
    sha256_prefix="fc6b09ff",
    backbone="resnet50", bands=_SSL4EO_BANDS, method="decur", pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_NORM, image_size=224, eval_transforms=_RESIZE_256_CROP_224, license="Apache-2.0",
    source="torchgeo (https://github.com/microsoft/torchgeo), DeCUR (https://github.com/zhu-xlab/DeCUR, "
           "https://arxiv.org/abs/2309.05300)",
    summary="ResNet-50 DeCUR on SSL4EO-S12 (SAR-optical pretraining), its 13-band optical encoder",
)

_torchgeo(
    "ResNet50_Weights.SENTINEL2_ALL_SOFTCON",
    name="resnet50_ssl4eo_s12_softcon",
    url="https://huggingface.co/wangyi111/softcon/resolve/62ff465b2e7467dbfc70758ec1e9d08ab87fc46b/"
        "B13_rn50_softcon.pth",
    backbone="resnet50", bands=_SSL4EO_BANDS, method="softcon", pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_STATS, image_size=224, eval_transforms=_RESIZE_256_CROP_224, license="CC-BY-4.0",
    source="torchgeo (https://github.com/microsoft/torchgeo), SoftCon (https://github.com/zhu-xlab/softcon, "
           "https://arxiv.org/abs/2405.20462)",
    summary="ResNet-50 SoftCon on SSL4EO-S12, 13 bands",
)

_torchgeo(
    "ResNet50_Weights.SENTINEL2_ALL_SECO_ECO",
    name="resnet50_ssl4eco_seco_eco",
    url="https://hf.co/torchgeo/seco-eco/resolve/aea279ea46572cfca5876ac1f9d8d8595fcdeb3b/"
        "resnet50_sentinel2_all_seco_eco-90ec322f.pth",
    sha256_prefix="90ec322f",
    backbone="resnet50",
    bands=("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
    method="seco-eco", pretraining_data=_SSL4ECO_DATA,
    normalization={"type": "scale", "divisor": 10000.0, "note": "reflectance / 10000"},
    # torchgeo's _seco_eco_transforms: K.Resize((224, 224)), no crop
    image_size=224, eval_transforms={"resize": 224}, license="MIT",
    source="torchgeo (https://github.com/microsoft/torchgeo), SSL4Eco (https://github.com/PlekhanovaElena/ssl4eco, "
           "https://arxiv.org/abs/2504.18256)",
    summary="ResNet-50 SeCo-Eco on SSL4Eco, 12 bands",
)

_torchgeo(
    "ResNet50_Weights.SENTINEL2_ALL_CLOSP",
    name="resnet50_crisislandmark_closp",
    url="https://huggingface.co/DarthReca/CLOSP-Visual/resolve/3bb8677c21dac56bea2dd7baa08d7871272db440/"
        "closp-rn_s2_encoder-183922a5.pth",
    sha256_prefix="183922a5",
    backbone="resnet50", bands=_SSL4EO_BANDS, method="closp", pretraining_data=_CLOSP_DATA,
    normalization={"type": "scale", "divisor": 10000.0, "note": "reflectance / 10000"},
    # torchgeo applies only Normalize(0, 10000): no resize, so no size is recorded
    image_size=None, license="OpenRAIL", source=_CLOSP_SOURCE,
    summary="ResNet-50 CLOSP Sentinel-2 encoder, 13 bands",
)

_torchgeo(
    "ResNet50_Weights.SENTINEL2_ALL_GEOCLOSP",
    name="resnet50_crisislandmark_geoclosp",
    url="https://huggingface.co/DarthReca/CLOSP-Visual/resolve/3bb8677c21dac56bea2dd7baa08d7871272db440/"
        "geoclosp-rn_s2_encoder-94c37f4a.pth",
    sha256_prefix="94c37f4a",
    backbone="resnet50", bands=_SSL4EO_BANDS, method="geoclosp", pretraining_data=_CLOSP_DATA,
    normalization={"type": "scale", "divisor": 10000.0, "note": "reflectance / 10000"},
    image_size=None, license="OpenRAIL", source=_CLOSP_SOURCE,
    summary="ResNet-50 GeoCLOSP Sentinel-2 encoder, 13 bands",
)

_torchgeo(
    "ViTSmall16_Weights.SENTINEL2_ALL_DINO",
    name="vit_small_ssl4eo_s12_dino",
    url="https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_dino/resolve/"
        "5b41dd418a79de47ac9f5be3e035405a83818a62/vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth",
    sha256_prefix="36bcc127",
    backbone="vit_small", backbone_args=_VITS16, bands=_SSL4EO_BANDS, method="dino", pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_NORM, image_size=224, eval_transforms=_RESIZE_256_CROP_224, license=_SSL4EO_LICENSE,
    published_metrics={"BigEarthNet": 90.5, "EuroSAT": 99.0, "So2Sat": 62.2},
    source=f"{_SSL4EO_SOURCE}; published metrics: {_TORCHGEO_TABLE}",
    summary="ViT-S/16 DINO on SSL4EO-S12, 13 bands",
)

_torchgeo(
    "ViTSmall16_Weights.SENTINEL2_ALL_MOCO",
    name="vit_small_ssl4eo_s12_moco",
    url="https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_moco/resolve/"
        "1cb683f6c14739634cdfaaceb076529adf898c74/vit_small_patch16_224_sentinel2_all_moco-67c9032d.pth",
    sha256_prefix="67c9032d",
    backbone="vit_small", backbone_args=_VITS16, bands=_SSL4EO_BANDS, method="moco", pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_NORM, image_size=224, eval_transforms=_RESIZE_256_CROP_224, license=_SSL4EO_LICENSE,
    published_metrics={"BigEarthNet": 89.9, "EuroSAT": 98.6, "So2Sat": 61.6},
    source=f"{_SSL4EO_SOURCE}; published metrics: {_TORCHGEO_TABLE}",
    summary="ViT-S/16 MoCo on SSL4EO-S12, 13 bands",
)

_torchgeo(
    "ViTSmall16_Weights.SENTINEL2_ALL_MAE",
    name="vit_small_ssl4eo_s12_mae",
    url="https://huggingface.co/wangyi111/SSL4EO-S12/resolve/75c72195d35201dc1fb210818993518c25da566b/"
        "B13_vits16_mae_ep99_enc.pth",
    backbone="vit_small", backbone_args=_VITS16, bands=_SSL4EO_BANDS, method="mae", pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_NORM, image_size=224, eval_transforms=_RESIZE_256_CROP_224, license=_SSL4EO_LICENSE,
    source=_SSL4EO_SOURCE,
    summary="ViT-S/16 MAE encoder on SSL4EO-S12, 13 bands",
)

_torchgeo(
    "ViTSmall16_Weights.SENTINEL2_ALL_FGMAE",
    name="vit_small_ssl4eo_s12_fgmae",
    url="https://huggingface.co/wangyi111/FGMAE/resolve/24dd3077d7a99ecd454eaec7adb83d045d7fa122/"
        "B13_vits16_fgmae_ep99_enc.pth",
    backbone="vit_small", backbone_args=_VITS16, bands=_SSL4EO_BANDS, method="fg-mae", pretraining_data=_SSL4EO_DATA,
    normalization=_SSL4EO_NORM, image_size=224, eval_transforms=_RESIZE_256_CROP_224, license="CC-BY-4.0",
    source="torchgeo (https://github.com/microsoft/torchgeo), FG-MAE (https://github.com/zhu-xlab/FGMAE, "
           "https://arxiv.org/abs/2310.18653)",
    summary="ViT-S/16 FG-MAE (feature-guided MAE) encoder on SSL4EO-S12, 13 bands",
)

_torchgeo(
    "ViTSmall16_Weights.SENTINEL2_ALL_CLOSP",
    name="vit_small_crisislandmark_closp",
    url="https://huggingface.co/DarthReca/CLOSP-Visual/resolve/3bb8677c21dac56bea2dd7baa08d7871272db440/"
        "closp-vs_s2_encoder-1a3ee5a5.pth",
    sha256_prefix="1a3ee5a5",
    backbone="vit_small", backbone_args=_VITS16, bands=_SSL4EO_BANDS, method="closp", pretraining_data=_CLOSP_DATA,
    normalization={"type": "scale", "divisor": 10000.0, "note": "reflectance / 10000"},
    # torchgeo: K.Normalize(0, 10000), K.Resize(224) (the shorter side; ssl-rs tiles are square)
    image_size=224, eval_transforms={"resize": 224}, license="OpenRAIL", source=_CLOSP_SOURCE,
    summary="ViT-S/16 CLOSP Sentinel-2 encoder, 13 bands",
)

_torchgeo(
    "ViTSmall14_DINOv2_Weights.SENTINEL2_ALL_SOFTCON",
    name="vit_small_p14_ssl4eo_s12_softcon",
    url="https://huggingface.co/wangyi111/softcon/resolve/bae909781911f8ec034b4b959992fae17b973c0c/"
        "B13_vits14_softcon_enc.pth",
    backbone="vit_small", backbone_args=_VITS14_DINOV2, bands=_SSL4EO_BANDS, method="softcon",
    pretraining_data=_SSL4EO_DATA, normalization=_SSL4EO_STATS, image_size=224,
    eval_transforms=_RESIZE_256_CROP_224, license="CC-BY-4.0",
    source="torchgeo (https://github.com/microsoft/torchgeo), SoftCon (https://github.com/zhu-xlab/softcon, "
           "https://arxiv.org/abs/2405.20462)",
    summary="ViT-S/14 (DINOv2 layout) SoftCon encoder on SSL4EO-S12, 13 bands",
)
