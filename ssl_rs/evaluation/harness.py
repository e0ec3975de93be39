"""One call that scores a backbone on an HDF5 file: the CLI, the demo and the benchmark
runner all go through :func:`evaluate`, so every number ssl-rs reports is computed the same way."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import ConfigError
from ..data.dataset import GeoDataset

PROTOCOLS = ("knn", "linear")


def default_device(device: Optional[str] = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate(
    backbone: Union[str, nn.Module],
    data: str | os.PathLike,
    *,
    scheme: Optional[str] = None,
    protocols: Sequence[str] = ("knn",),
    eval_split: str = "test",
    size: Optional[int] = None,
    bands: Optional[Sequence[str]] = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: Optional[str] = None,
    backbone_args: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    linear_epochs: int = 100,
    progress: bool = True,
) -> Dict[str, Any]:
    """Extract frozen features of the train and ``eval_split`` samples and score them.

    ``backbone`` is a module (``forward(x) -> (B, D)``) or a registered backbone name, built
    randomly initialised with ``seed`` and the data's band count. Returns a JSON-ready dict with
    ``metrics`` per protocol (percent), the sample counts and what was evaluated.
    """
    from ..augmentations import Preprocess
    from .features import extract_features
    from .knn import knn_evaluate
    from .linear import linear_probe

    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ConfigError(f"unknown evaluation protocol(s) {unknown} (use {', '.join(PROTOCOLS)})")
    train = GeoDataset(data, split="train", scheme=scheme, bands=bands)
    test = GeoDataset(data, split=eval_split, scheme=scheme, bands=bands)
    if train.target_key is None:
        raise ConfigError(f"{data}: label/labels: the file has no labels to evaluate against")
    name = backbone if isinstance(backbone, str) else getattr(backbone, "name", type(backbone).__name__)
    if isinstance(backbone, str):
        from ..backbones import create_backbone

        torch.manual_seed(seed)
        backbone = create_backbone(backbone, in_chans=train.in_chans, **(backbone_args or {}))
    in_chans = getattr(backbone, "in_chans", None)
    if in_chans is not None:
        train.check_bands(in_chans, f"backbone {name!r}")
    dev = default_device(device)
    backbone = backbone.to(dev)
    preprocess = Preprocess(size or train.size[0], train.band_mean, train.band_std).to(dev)
    loaders = [
        DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                   pin_memory=dev.type == "cuda", persistent_workers=False)
        for ds in (train, test)
    ]
    (x_train, y_train), (x_test, y_test) = [
        extract_features(backbone, loader, preprocess=preprocess, device=dev, progress=progress) for loader in loaders
    ]
    metrics: Dict[str, Dict[str, float]] = {}
    if "knn" in protocols:
        metrics["knn"] = knn_evaluate(
            x_train, y_train, x_test, y_test, k=knn_k, temperature=knn_temperature,
            num_classes=train.num_classes or None, device=dev,
        )
    if "linear" in protocols:
        metrics["linear"] = linear_probe(
            x_train, y_train, x_test, y_test, multi_label=train.multi_label, epochs=linear_epochs,
            seed=seed, device=dev,
        )
    return {
        "backbone": name,
        "data": str(data),
        "scheme": train.split_scheme,
        "eval_split": eval_split,
        "n_train": len(train),
        "n_test": len(test),
        "feature_dim": int(x_train.shape[1]),
        "task": "multi-label" if train.multi_label else "single-label",
        "metrics": {k: {m: float(v) for m, v in d.items()} for k, d in metrics.items()},
    }
