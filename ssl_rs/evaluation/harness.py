"""One call that scores a backbone on an HDF5 file: the CLI, the demo and the benchmark
runner all go through :func:`evaluate`, so every number ssl-rs reports is computed the same way."""

from __future__ import annotations

import logging
import numbers
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError, SslRsError
from ..data.dataset import GeoDataset
from ..data.loader import make_loader  # workers hand batches over through a shared-memory ring
from ..text import one_line

#: ``geo``: the geo probes (:mod:`ssl_rs.evaluation.geo_probes`), which need lat/lon, not labels
PROTOCOLS = ("knn", "linear", "geo", "finetune", "segmentation")
LABEL_PROTOCOLS = ("knn", "linear", "finetune")
#: protocols that train their own copy of the module on the datasets instead of scoring frozen
#: features (``finetune``: :mod:`ssl_rs.evaluation.finetune`)
TRAINED_PROTOCOLS = ("finetune",)
#: protocols that score per-pixel masks from spatial feature maps, not pooled features
#: (``segmentation``: :mod:`ssl_rs.evaluation.segmentation`)
DENSE_PROTOCOLS = ("segmentation",)
DEVICE_TYPES = ("cpu", "cuda", "mps")

log = logging.getLogger(__name__)


def default_device(device: Optional[Union[str, torch.device]] = None, option: str = "device") -> torch.device:
    """``device`` checked against this machine (``cuda`` without a GPU is a ConfigError naming
    ``option``); ``None``: cuda when available, else cpu."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{option}: {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type not in DEVICE_TYPES:
        raise ConfigError(f"{option}: {device!r}: evaluation runs on cpu, cuda or cuda:N, not {dev.type!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option}: {device!r}: no CUDA GPU is available on this machine (use cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{option}: {device!r}: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{option}: {device!r}: MPS is not available on this machine (use cpu)")
    return dev


def check_eval_options(*, size: Optional[int] = None, batch_size: int = 1, num_workers: int = 0, knn_k: int = 1,
                       knn_temperature: float = 1.0, linear_epochs: int = 1, knn_votes: str = "mean",
                       linear_recipe: str = "ssl-rs", names: Optional[Dict[str, str]] = None) -> None:
    """One-line ConfigError for a value no evaluation can use (``names`` maps a parameter to the
    option it came from, e.g. ``{"batch_size": "--batch-size"}``)."""
    names = names or {}

    def fail(param: str, rule: str, value: Any) -> None:
        raise ConfigError(f"{names.get(param, param)}: must be {rule}, got {value!r}")

    def whole(value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if size is not None and not (whole(size) and size >= 1):
        fail("size", "a side in pixels >= 1 (leave it out for the data's size)", size)
    if not (whole(batch_size) and batch_size >= 1):
        fail("batch_size", "an integer >= 1", batch_size)
    if not (whole(num_workers) and num_workers >= 0):
        fail("num_workers", "an integer >= 0", num_workers)
    if not (whole(knn_k) and knn_k >= 1):
        fail("knn_k", "an integer >= 1", knn_k)
    if not (isinstance(knn_temperature, numbers.Real) and not isinstance(knn_temperature, bool) and knn_temperature > 0):
        fail("knn_temperature", "> 0", knn_temperature)
    if not (whole(linear_epochs) and linear_epochs >= 1):
        fail("linear_epochs", "an integer >= 1", linear_epochs)
    from .knn import VOTES
    from .linear import RECIPES

    for param, value, allowed in (("knn_votes", knn_votes, VOTES), ("linear_recipe", linear_recipe, tuple(RECIPES))):
        if value not in allowed:
            raise ConfigError(f"{names.get(param, param)}: unknown {value!r} (use {', '.join(allowed)})")


def check_backbone_args(name: str, args: Any, option: str = "backbone_args") -> Dict[str, Any]:
    """The arguments of a registered backbone, checked without building it for real: an unknown
    key (or a value its constructor rejects) is a one-line ConfigError naming ``option``."""
    import inspect

    from ..config import check_args
    from ..registry import BACKBONES

    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ConfigError(f"{option}: expected a JSON object of backbone arguments, got {type(args).__name__}")
    factory = BACKBONES.get(name).factory  # an unknown name raises, suggesting the closest one
    if "in_chans" in args:
        raise ConfigError(f"{option}: in_chans is set from the data's bands, not by the backbone arguments")
    try:
        check_args("backbone", name, factory, args, reserved=("in_chans",))
    except ConfigError as e:
        raise ConfigError(f"{option}: {str(e).split(': ', 1)[-1]}") from None
    if args and any(p.kind == p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values()):
        # timm takes **kwargs: only its constructor knows them. Build on the meta device (no memory, no compute).
        try:
            with torch.device("meta"):
                factory(in_chans=3, **args)
        except SslRsError as e:
            raise ConfigError(f"{option}: {e}") from None
        except (TypeError, ValueError, AssertionError, KeyError) as e:
            raise ConfigError(f"{option}: backbone {name!r} rejects {args} ({one_line(e)})") from None
    return dict(args)


def load_checkpoint_backbone(path: Union[str, os.PathLike]) -> Tuple[nn.Module, Dict[str, Any]]:
    """:func:`ssl_rs.checkpoint.load_encoder` (tensors only, ``weights_only=True``), with a
    checkpoint whose config does not fit its weights (another backbone, other arguments, a
    missing key) reported as one line instead of a traceback."""
    from ..checkpoint import CONFIG_KEY as CHECKPOINT_CONFIG_KEY
    from ..checkpoint import load_encoder

    try:
        return load_encoder(path)
    except SslRsError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        backbone = "?"
        try:  # the file loaded once already; mmap makes the second look cheap
            cfg = torch.load(path, map_location="cpu", weights_only=True, mmap=True)[CHECKPOINT_CONFIG_KEY]
            backbone = cfg["backbone"]["name"]
        except Exception:
            pass
        what = f"KeyError {e}" if isinstance(e, KeyError) else one_line(e, 160)
        raise ConfigError(f"{path}: {CHECKPOINT_CONFIG_KEY}: its config (backbone {backbone!r}) does not fit the "
                          f"checkpoint's weights ({what})") from None


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
    knn_votes: str = "mean",
    linear_epochs: int = 100,
    linear_recipe: str = "ssl-rs",
    finetune_epochs: int = 30,
    finetune_lr: float = 1e-3,
    finetune_backbone_lr_scale: float = 0.1,
    finetune_layer_decay: Optional[float] = None,
    finetune_weight_decay: float = 0.01,
    finetune_schedule: str = "ssl-rs",
    segmentation_epochs: int = 20,
    segmentation_lr: Optional[float] = None,
    segmentation_decoder: str = "auto",
    segmentation_recipe: str = "ssl-rs",
    finetune_task: str = "classification",
    progress: bool = True,
    precision: Optional[str] = None,
) -> Dict[str, Any]:
    """Extract frozen features of the train and ``eval_split`` samples and score them; ``finetune``
    instead trains a copy of the whole backbone with a head (``finetune_*``: its recipe,
    :func:`ssl_rs.evaluation.finetune.finetune`) and needs no frozen features; ``segmentation`` trains a
    decoder on the frozen backbone's feature maps against the file's per-pixel masks
    (``segmentation_*``, :func:`ssl_rs.evaluation.segmentation.segmentation_probe`; ``segmentation_lr``
    None: the recipe's; ``segmentation_recipe``: ``ssl-rs`` (default) or ``georank``, the GeoRank
    authors' UPerNet recipe, with ``segmentation_decoder="upernet"`` their whole evaluation).

    ``precision``: ``32-true`` (default, ``None``), ``bf16-mixed`` or ``16-mixed`` (CUDA): the
    forward passes of every protocol run under ``torch.autocast`` in a mixed precision, while the
    stored features, losses and metrics stay float32 (:mod:`ssl_rs.evaluation.features`).

    ``knn_votes``: ``mean`` (default) or ``sum``, the GeoRank authors' raw vote sums
    (:func:`ssl_rs.evaluation.knn.knn_scores`); ``linear_recipe``: ``ssl-rs`` (default) or
    ``georank`` (:data:`ssl_rs.evaluation.linear.RECIPES`).

    ``backbone`` is a module (``forward(x) -> (B, D)``) or a registered backbone name, built
    randomly initialised with ``seed`` and the data's band count. Returns a JSON-ready dict with
    ``metrics`` per protocol (percent), the sample counts and what was evaluated.
    """
    from ..augmentations import Preprocess
    from ..augmentations.pipelines import eval_geometry
    from .features import check_precision, extract_features
    from .knn import knn_evaluate
    from .linear import RECIPES, linear_probe

    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ConfigError(f"unknown evaluation protocol(s) {unknown} (use {', '.join(PROTOCOLS)})")
    check_eval_options(size=size, batch_size=batch_size, num_workers=num_workers, knn_k=knn_k,
                       knn_temperature=knn_temperature, linear_epochs=linear_epochs, knn_votes=knn_votes,
                       linear_recipe=linear_recipe)
    finetune_options = dict(epochs=finetune_epochs, lr=finetune_lr, backbone_lr_scale=finetune_backbone_lr_scale,
                            layer_decay=finetune_layer_decay, weight_decay=finetune_weight_decay,
                            schedule=finetune_schedule)
    finetune_names = {k: f"finetune_{k}" for k in finetune_options}
    if "finetune" in protocols:
        from .finetune import check_finetune_options

        check_finetune_options(**finetune_options, names=finetune_names)
        if finetune_task not in ("classification", "segmentation"):
            raise ConfigError(f"finetune_task: unknown task {finetune_task!r} (use classification, segmentation)")
    if "segmentation" in protocols:
        from .segmentation import check_segmentation_options

        check_segmentation_options(epochs=segmentation_epochs, lr=segmentation_lr, decoder=segmentation_decoder,
                                   recipe=segmentation_recipe,
                                   names={k: f"segmentation_{k}" for k in ("epochs", "lr", "decoder", "recipe")})
    dev = default_device(device)
    precision = check_precision(precision, dev)
    if isinstance(backbone, str):
        backbone_args = check_backbone_args(backbone, backbone_args)
    train = GeoDataset(data, split="train", scheme=scheme, bands=bands)
    test = GeoDataset(data, split=eval_split, scheme=scheme, bands=bands)
    left_out = [b for b in train.file_bands if b not in train.bands]
    if left_out:  # a checkpoint's bands are picked from the file by name: say which ones it never sees
        log.info("bands: evaluating on %d of the %d bands of %s, matched by name; left out: %s",
                 len(train.bands), len(train.file_bands), data, ", ".join(left_out))
    # fine-tuning for segmentation learns from the masks, not the labels
    needs_labels = any(p in LABEL_PROTOCOLS and not (p == "finetune" and finetune_task == "segmentation")
                       for p in protocols)
    if "finetune" in protocols and finetune_task == "segmentation":
        from .segmentation import check_masks

        check_masks(train, data)
    if needs_labels and train.target_key is None:
        raise ConfigError(f"{data}: label/labels: the file has no labels to evaluate against")
    if "geo" in protocols:  # before any long work: a file without lat/lon is evaluation-only data
        train.require_location("the geo evaluation protocol (geo probes)")
    if "segmentation" in protocols:
        from .segmentation import check_masks

        check_masks(train, data)
    name = backbone if isinstance(backbone, str) else getattr(backbone, "name", type(backbone).__name__)
    if isinstance(backbone, str):
        from ..backbones import create_backbone

        torch.manual_seed(seed)
        backbone = create_backbone(backbone, in_chans=train.in_chans, **(backbone_args or {}))
    in_chans = getattr(backbone, "in_chans", None)
    if in_chans is not None:
        train.check_bands(in_chans, f"backbone {name!r}")
    if "finetune" in protocols:  # before any long work
        from .finetune import check_layer_decay

        check_layer_decay(backbone, finetune_layer_decay, "finetune_layer_decay")
    backbone = backbone.to(dev)
    # zoo weights carry their source's evaluation transforms (torchgeo's Resize(256) + CenterCrop(224))
    side, resize = eval_geometry(backbone, size, train.size[0])
    preprocess = Preprocess(side, train.band_mean, train.band_std, resize=resize).to(dev)
    loaders = [
        make_loader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                    pin_memory=dev.type == "cuda", persistent_workers=False)
        for ds in (train, test)
    ]
    frozen = [p for p in protocols if p not in TRAINED_PROTOCOLS + DENSE_PROTOCOLS]
    if frozen:  # the frozen-feature protocols share one extraction
        (x_train, y_train), (x_test, y_test) = [
            # without label protocols the sample index stands in for the target (a file may have no labels)
            extract_features(backbone, loader, preprocess=preprocess, device=dev, progress=progress,
                             precision=precision,
                             target_key=None if any(p in LABEL_PROTOCOLS for p in frozen) else "index")
            for loader in loaders
        ]
    metrics: Dict[str, Dict[str, float]] = {}
    if "knn" in protocols:
        metrics["knn"] = knn_evaluate(
            x_train, y_train, x_test, y_test, k=knn_k, temperature=knn_temperature,
            num_classes=train.num_classes or None, device=dev, votes=knn_votes,
        )
    if "geo" in protocols:
        from .geo_probes import geo_probes

        metrics["geo"] = geo_probes(x_train, train.lat, train.lon, x_test, test.lat, test.lon, seed=seed, device=dev)
    if "linear" in protocols:
        metrics["linear"] = linear_probe(
            x_train, y_train, x_test, y_test, multi_label=train.multi_label, epochs=linear_epochs,
            seed=seed, device=dev, **RECIPES[linear_recipe],
        )
    if "finetune" in protocols:
        from .finetune import finetune
        from .segmentation import segmentation_task

        metrics["finetune"] = finetune(
            backbone, train, test, preprocess=preprocess, batch_size=batch_size, num_workers=num_workers,
            seed=seed, device=dev, progress=progress, names=finetune_names, precision=precision, **finetune_options,
            **({"task": segmentation_task(train, preprocess=preprocess, decoder=segmentation_decoder)}
               if finetune_task == "segmentation" else {}),
        )
    if "segmentation" in protocols:
        from .segmentation import evaluate_segmentation

        metrics["segmentation"] = evaluate_segmentation(
            backbone, train, test, preprocess=preprocess, batch_size=batch_size, num_workers=num_workers,
            epochs=segmentation_epochs, lr=segmentation_lr, decoder=segmentation_decoder,
            recipe=segmentation_recipe, seed=seed, device=dev,
            progress=progress, precision=precision,
        )
    return {
        "backbone": name,
        "data": str(data),
        "scheme": train.split_scheme,
        "eval_split": eval_split,
        "precision": precision,
        "n_train": len(train),
        "n_test": len(test),
        "feature_dim": int(x_train.shape[1]) if frozen else int(getattr(backbone, "num_features", 0)),
        "task": ("multi-label" if train.multi_label else "single-label") if train.target_key else "unlabelled",
        "metrics": {k: {m: float(v) for m, v in d.items()} for k, d in metrics.items()},
    }
