"""Frozen-backbone feature extraction for the k-NN and linear-probe protocols."""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..progress import Progress

TARGET_KEYS = ("label", "labels")


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _pick_target_key(batch: dict) -> str:
    for key in TARGET_KEYS:
        if key in batch:
            return key
    raise DataError(f"batch has no {' or '.join(map(repr, TARGET_KEYS))} key (keys: {sorted(batch)}); pass target_key")


def extract_features(
    model: nn.Module,
    loader: Iterable[dict],
    preprocess: Optional[Callable[[Tensor], Tensor]] = None,
    device: Union[str, torch.device, None] = None,
    target_key: Optional[str] = None,
    progress: bool = True,
) -> Tuple[Tensor, Tensor]:
    """Run ``model`` over every batch of ``loader`` and collect features and targets.

    Args:
        model: maps a (B, C, H, W) float batch to (B, D) features, or to a tuple whose
            first element is (B, D). Run in eval mode under ``torch.inference_mode()``;
            the train/eval mode of every submodule is restored afterwards.
        loader: yields dicts with ``image`` (B, C, H, W, uint16 or float) and a target key.
        preprocess: applied to the image batch on the device (e.g. band normalisation);
            without it, non-float images are only cast to float32.
        device: where to run (default: the device of the model's parameters).
        target_key: ``"label"`` ((B,) int64) or ``"labels"`` ((B, K) multi-hot); default:
            whichever the first batch has.
        progress: show progress on stderr (a bar on a terminal, else a line now and then;
            :mod:`ssl_rs.progress`).

    Returns:
        ``(features, targets)``: (N, D) float32 and (N,) or (N, K), both on the CPU.
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    modes = [(module, module.training) for module in model.modules()]
    features: List[Tensor] = []
    targets: List[Tensor] = []
    key = target_key
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:  # a loader without a length: counted without a total
        total = None
    try:
        model.eval()
        with torch.inference_mode(), Progress(total, "features", "batch", enabled=progress) as shown:
            for batch in loader:
                if not isinstance(batch, dict) or "image" not in batch:
                    raise DataError("loader: each batch must be a dict with an 'image' entry")
                if key is None:
                    key = _pick_target_key(batch)
                elif key not in batch:
                    raise DataError(f"batch has no {key!r} key (keys: {sorted(batch)})")
                images = torch.as_tensor(batch["image"]).to(dev, non_blocking=True)
                if preprocess is not None:
                    images = preprocess(images)
                elif not images.is_floating_point():
                    images = images.float()
                out = model(images)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
                    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ConfigError(f"model: expected (B, D) features for a batch of {images.shape[0]}, got {shape}")
                features.append(out.float().cpu())
                targets.append(torch.as_tensor(batch[key]).cpu())
                shown.update()
    finally:
        for module, was_training in modes:
            module.training = was_training
    if not features:
        raise DataError("loader: yielded no batches")
    # Concatenating outside inference mode gives ordinary tensors, usable with autograd.
    return torch.cat(features), torch.cat(targets)
