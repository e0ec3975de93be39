"""Frozen-backbone feature extraction for the k-NN and linear-probe protocols, and the evaluation
precision every protocol runs its forward passes in.

Precision (:data:`~ssl_rs.precision.PRECISIONS`, named as Lightning's ``trainer.precision``): ``32-true`` (the
default) runs everything in float32; ``bf16-mixed`` and ``16-mixed`` run the forward passes
(feature extraction, the fine-tuned model, the segmentation decoder) under ``torch.autocast`` on
the device. What needs the precision stays float32 whatever is chosen: the features kept for
k-NN, the linear probe and the geo probes are cast to float32 when stored, and losses, metrics,
the k-NN votes and the probes' optimisation run in float32. ``16-mixed`` trains with loss scaling
(:func:`grad_scaler`) and runs on CUDA only.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, ContextManager, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..precision import DEFAULT_PRECISION, precision_name
from ..progress import Progress

log = logging.getLogger(__name__)

TARGET_KEYS = ("label", "labels")

_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
_warned_emulated_bf16 = False


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); without, oneDNN emulates it."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except Exception:  # private API: absent on other builds
        return False


def check_precision(precision: Any, device: Union[str, torch.device, None] = None, option: str = "precision") -> str:
    """``precision`` as one of :data:`~ssl_rs.precision.PRECISIONS` (``None``: :data:`~ssl_rs.precision.DEFAULT_PRECISION`; ``32``,
    ``bf16`` and ``16`` as Lightning reads them), checked against ``device`` when given; a one-line
    ConfigError naming ``option`` for a value no evaluation there can use."""
    name = precision_name(precision, option)
    if device is None or name == DEFAULT_PRECISION:
        return name
    kind = torch.device(device).type
    if name == "16-mixed" and kind != "cuda":
        raise ConfigError(f"{option}: 16-mixed (float16 with loss scaling) runs on CUDA only, not on {kind}; "
                          "use bf16-mixed or 32-true")
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"{option}: {name} is not supported on {kind}; use 32-true")
    if name == "bf16-mixed" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{option}: this GPU has no bfloat16 support; use 16-mixed or 32-true")
    global _warned_emulated_bf16
    if name == "bf16-mixed" and kind == "cpu" and not _warned_emulated_bf16 and not cpu_has_bf16():
        _warned_emulated_bf16 = True  # once per process: every protocol checks its precision again
        log.warning("%s: this CPU has no bfloat16 instructions (AVX512-BF16, AMX): bf16-mixed is emulated and "
                    "can be many times slower than 32-true here", option)
    return name


def autocast(precision: Optional[str], device: Union[str, torch.device]) -> ContextManager:
    """``torch.autocast`` on ``device``'s type for a mixed ``precision``; for ``32-true`` nothing
    (the forward runs as the module's parameters are, float32)."""
    dtype = _AUTOCAST_DTYPES.get(check_precision(precision))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(precision: Optional[str], device: Union[str, torch.device]) -> Optional["torch.amp.GradScaler"]:
    """A loss scaler for ``16-mixed`` training, whose small float16 gradients would otherwise
    underflow to zero; None for the other precisions (bfloat16 has float32's range)."""
    if check_precision(precision) != "16-mixed":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, scaler: Optional["torch.amp.GradScaler"]) -> None:
    """Backward and step, through ``scaler`` when there is one (it skips a step whose gradients
    overflowed and lowers its scale)."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


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
    precision: Optional[str] = DEFAULT_PRECISION,
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
        precision: ``32-true``, or ``bf16-mixed`` / ``16-mixed`` to run the model under
            ``torch.autocast`` (module docstring); the features are float32 either way.

    Returns:
        ``(features, targets)``: (N, D) float32 and (N,) or (N, K), both on the CPU.
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    precision = check_precision(precision, dev)
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
                with autocast(precision, dev):
                    out = model(images)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
                    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ConfigError(f"model: expected (B, D) features for a batch of {images.shape[0]}, got {shape}")
                features.append(out.float().cpu())  # k-NN and the probes need float32
                targets.append(torch.as_tensor(batch[key]).cpu())
                shown.update()
    finally:
        for module, was_training in modes:
            module.training = was_training
    if not features:
        raise DataError("loader: yielded no batches")
    # Concatenating outside inference mode gives ordinary tensors, usable with autograd.
    return torch.cat(features), torch.cat(targets)
